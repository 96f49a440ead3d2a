//! `tributary doctor` on the three-node Apache Kafka cluster (`scripts/services.sh
//! up --brokers 3`), against the sample shop's topics as its processors create
//! them: every broker, replication, `min.insync.replicas`, retention and
//! co-partitioning check passes. What is left to warn about is the cluster's own
//! plaintext listener and the ACLs the CLI cannot read. (On one node the same
//! layout warns about the broker count and replication: the `cli` tests.)
//!
//! Run with `bash scripts/test.sh` (which starts the cluster for this binary) or
//! after `eval "$(scripts/services.sh up --brokers 3)"`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use example_shop::inventory::Inventory;
use example_shop::order::Order;
use serde_json::Value;
use tributary::command::{TopicSettings, ensure_topics};
use tributary::{Aggregate, KafkaConfig};
use tributary_cli::Exit;
use tributary_integration_tests::cluster::cluster_bootstrap;
use tributary_integration_tests::{database_url, pg_store, unique_prefix};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_is_green_on_the_shops_topics_on_three_brokers() {
    let bootstrap = cluster_bootstrap();
    let prefix = unique_prefix("doctor3");
    let store = pg_store(&prefix).await;
    // The shop's processors create their topics so (`ShopConfig::partitions`).
    let settings = TopicSettings {
        partitions: 4,
        ..TopicSettings::default()
    };
    for aggregate in [Order::NAME, Inventory::NAME] {
        ensure_topics(&KafkaConfig::new(&bootstrap), &prefix, aggregate, &settings)
            .await
            .unwrap();
    }

    let mut out = Vec::new();
    let exit = tributary_cli::run(
        [
            "tributary",
            "--json",
            "--bootstrap-servers",
            &bootstrap,
            "--database-url",
            &database_url(),
            "--schema",
            store.schema(),
            "doctor",
            "--prefix",
            &prefix,
        ],
        &mut out,
    )
    .await;
    let report: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(exit, Exit::Ok, "{report:#}");
    let statuses: BTreeMap<String, String> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let not_ok: Vec<(&String, &String)> = statuses.iter().filter(|(_, s)| *s != "ok").collect();
    assert_eq!(
        not_ok,
        [
            (&"acls".to_owned(), &"warn".to_owned()),
            (&"security".to_owned(), &"warn".to_owned())
        ],
        "{report:#}"
    );
    assert_eq!(
        report["aggregates"],
        serde_json::json!([Inventory::NAME, Order::NAME])
    );
    for aggregate in [Order::NAME, Inventory::NAME] {
        for topic in ["events", "commands", "outcomes"] {
            let topic = format!("{prefix}.{aggregate}.{topic}");
            for check in ["replication", "min.insync.replicas"] {
                let name = format!("{topic} {check}");
                assert_eq!(
                    statuses.get(&name).map(String::as_str),
                    Some("ok"),
                    "{name}"
                );
            }
        }
    }
    assert_eq!(statuses["brokers"], "ok");
}

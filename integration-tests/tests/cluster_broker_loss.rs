//! Broker loss on the three-node Apache Kafka cluster (`scripts/services.sh up
//! --brokers 3`): replication factor 3 and `min.insync.replicas` 2, chosen by the
//! framework from the broker count, with acks=all producers.
//!
//! - Under a sustained command load with a projection running, the leader of an
//!   events partition is SIGKILLed, then the active controller. Every command
//!   answered `Accepted` appears exactly once in the committed log, gapless per
//!   aggregate; the read model ends complete; the brokers restart and rejoin.
//! - Two of the three brokers stop: commands fail with an error that says there are
//!   not enough in-sync replicas, nothing is half-written, and service resumes when
//!   one broker is back.
//!
//! Run with `bash scripts/test.sh` (which starts the cluster for this binary) or
//! after `eval "$(scripts/services.sh up --brokers 3)"`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use tributary::KafkaConfig;
use tributary::command::{CommandGateway, CommandOutcome, GatewayError, SendOptions};
use tributary_integration_tests::cluster::{
    cluster_bootstrap, leader_of, live_brokers, partitions, quorum_leader, services, wait_in_sync,
};
use tributary_integration_tests::command_support::{
    Increment, counter_log_worker, counter_processor,
};
use tributary_integration_tests::load::{
    Load, assert_exactly_the_accepted, assert_read_model_is_the_log,
};
use tributary_integration_tests::raw_log::{self, Isolation};
use tributary_integration_tests::{pg_store, unique_prefix};

/// Restarts any node a failed test left down, so the next test finds three.
struct Heal;

impl Drop for Heal {
    fn drop(&mut self) {
        for node in ["1", "2", "3"] {
            let _ = std::process::Command::new("bash")
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../scripts/services.sh"
                ))
                .args(["start-broker", node])
                .env("TRIBUTARY_BROKERS", "3")
                .output();
        }
    }
}

fn topics(prefix: &str) -> Vec<String> {
    ["events", "commands", "outcomes"]
        .iter()
        .map(|t| format!("{prefix}.counter.{t}"))
        .chain([format!("{prefix}.replies")])
        .collect()
}

/// The topic's `min.insync.replicas`, as the broker reports it.
async fn min_insync_replicas(bootstrap: &str, topic: &str) -> String {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .unwrap();
    described[0]
        .as_ref()
        .unwrap()
        .get("min.insync.replicas")
        .and_then(|e| e.value.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_a_partition_leader_then_the_controller_loses_nothing() {
    let bootstrap = cluster_bootstrap();
    let _heal = Heal;
    let prefix = unique_prefix("cluster-loss");
    let processor = counter_processor(&bootstrap, &prefix, 6)
        .start()
        .await
        .expect("processor");
    let gateway = CommandGateway::connect_with_timeout(
        KafkaConfig::new(&bootstrap),
        &prefix,
        Duration::from_secs(10),
    )
    .await
    .expect("gateway");
    // The framework chose the durable layout itself from the broker count.
    let events = format!("{prefix}.counter.events");
    for (partition, (_, replicas, isr)) in partitions(&bootstrap, &events) {
        assert_eq!((replicas, isr), (3, 3), "events partition {partition}");
    }
    assert_eq!(min_insync_replicas(&bootstrap, &events).await, "2");

    let store = pg_store(&prefix).await;
    let projection = counter_log_worker(&bootstrap, &prefix, store.clone()).spawn();
    let load = Load::start(&gateway, 8, 24);
    load.progress(100, "before any fault").await;

    let leader = leader_of(&bootstrap, &events, 0);
    eprintln!("SIGKILL node {leader}, leader of {events}/0");
    services(&["kill-broker", &leader.to_string()]);
    load.progress(150, "with the partition leader dead").await;
    services(&["start-broker", &leader.to_string()]);
    wait_in_sync(&bootstrap, &topics(&prefix), 3, Duration::from_secs(120)).await;
    load.progress(50, "after the leader rejoined").await;

    let controller = quorum_leader();
    eprintln!("SIGKILL node {controller}, the active controller");
    services(&["kill-broker", &controller.to_string()]);
    load.progress(150, "with the controller dead").await;
    services(&["start-broker", &controller.to_string()]);
    wait_in_sync(&bootstrap, &topics(&prefix), 3, Duration::from_secs(120)).await;
    load.progress(50, "after the controller rejoined").await;

    let accepted = load.finish().await;
    eprintln!("{} commands accepted", accepted.len());
    assert_exactly_the_accepted(&bootstrap, &prefix, &accepted);
    assert_eq!(live_brokers(&bootstrap), vec![1, 2, 3]);

    // The read model ends complete: every committed event, once.
    assert_read_model_is_the_log(&bootstrap, &prefix, &store, accepted.len()).await;
    projection.shutdown().await.expect("projection");
    processor.shutdown().await.expect("processor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_two_brokers_fails_commands_clearly_and_service_resumes() {
    let bootstrap = cluster_bootstrap();
    let _heal = Heal;
    let prefix = unique_prefix("cluster-two");
    let processor = counter_processor(&bootstrap, &prefix, 3)
        .start()
        .await
        .expect("processor");
    let gateway = CommandGateway::connect_with_timeout(
        KafkaConfig::new(&bootstrap),
        &prefix,
        Duration::from_secs(8),
    )
    .await
    .expect("gateway");
    let send = |id: &str, aggregate: &str| {
        let gateway = gateway.clone();
        let options = SendOptions {
            command_id: Some(id.to_owned()),
            ..Default::default()
        };
        let command = Increment {
            id: aggregate.to_owned(),
            by: 1,
        };
        async move { gateway.send_with(command, options).await }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..10 {
        loop {
            match send(&format!("before-{i}"), &format!("b{}", i % 3)).await {
                Ok(outcome) => break assert!(outcome.is_accepted()),
                Err(e) => assert!(Instant::now() < deadline, "before the outage: {e}"),
            }
        }
    }

    // Two of three brokers gone: one in-sync replica is fewer than the two that
    // acks=all needs, so Kafka refuses every write.
    services(&["stop-broker", "2"]);
    services(&["stop-broker", "3"]);
    let mut errors = Vec::new();
    for i in 0..3 {
        let error = send(&format!("during-{i}"), &format!("b{i}"))
            .await
            .expect_err("a write with one in-sync replica of three");
        eprintln!("during the outage: {error}");
        errors.push(error);
    }
    for error in &errors {
        assert!(
            matches!(error, GatewayError::NotEnoughReplicas { .. }),
            "not a clear error: {error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains("in-sync replica") && message.contains("min.insync.replicas"),
            "{message}"
        );
    }

    // One broker back: two in-sync replicas, writes go through again. The commands
    // that failed are resent with their ids; each takes effect once.
    services(&["start-broker", "2"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut accepted = Vec::new();
    for i in 0..3 {
        let id = format!("during-{i}");
        loop {
            match send(&id, &format!("b{i}")).await {
                Ok(CommandOutcome::Accepted { version, .. }) => {
                    accepted.push((id, format!("b{i}"), version));
                    break;
                }
                Ok(CommandOutcome::Rejected(e)) => panic!("{e}"),
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "{id} after one broker came back: {e}"
                ),
            }
        }
    }
    let events = raw_log::read(
        &bootstrap,
        &format!("{prefix}.counter.events"),
        Isolation::Committed,
    );
    raw_log::assert_single_writer(&events);
    assert_eq!(events.len(), 13, "10 before, 3 after the outage, once each");
    for (id, aggregate, version) in &accepted {
        let event = events.iter().find(|e| &e.causation_id == id).expect(id);
        assert_eq!((&event.aggregate_id, event.sequence), (aggregate, *version));
    }
    services(&["start-broker", "3"]);
    wait_in_sync(&bootstrap, &topics(&prefix), 3, Duration::from_secs(120)).await;
    processor.shutdown().await.expect("processor");
}

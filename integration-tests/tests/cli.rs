//! The `tributary` CLI against the real broker and Postgres, run in process
//! (`tributary_cli::run` with a buffer): doctor, topics, projections, dead letters,
//! events and config, their text and `--json` output and their exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;
use tributary::command::wire::partition_for;
use tributary::command::{TopicSettings, ensure_topics};
use tributary::projection::{ProjectionError, ProjectionWorker};
use tributary::{EventEnvelope, KafkaConfig};
use tributary_cli::Exit;
use tributary_integration_tests::projection_support::{
    AccountEvent, EventsTopic, RawRecord, Totals, kafka_config, produce, test_config,
    wait_caught_up,
};
use tributary_integration_tests::{
    create_topic, create_topic_with, database_url, kafka_bootstrap, pg_store, unique_prefix,
};

/// Runs `tributary <args>` in process: the exit code and everything it printed.
async fn cli(args: &[&str]) -> (Exit, String) {
    let mut out = Vec::new();
    let argv = std::iter::once("tributary").chain(args.iter().copied());
    let exit = tributary_cli::run(argv, &mut out).await;
    (exit, String::from_utf8(out).expect("the CLI prints UTF-8"))
}

/// The connection options of a test: the test broker, Postgres and the test's schema.
struct Target {
    bootstrap: String,
    url: String,
    schema: String,
}

impl Target {
    async fn new(prefix: &str) -> Self {
        let store = pg_store(prefix).await;
        Self {
            bootstrap: kafka_bootstrap(),
            url: database_url(),
            schema: store.schema().to_owned(),
        }
    }

    async fn run(&self, args: &[&str]) -> (Exit, String) {
        let mut all: Vec<&str> = vec![
            "--bootstrap-servers",
            &self.bootstrap,
            "--database-url",
            &self.url,
            "--schema",
            &self.schema,
        ];
        all.extend_from_slice(args);
        cli(&all).await
    }

    async fn json(&self, args: &[&str]) -> (Exit, Value) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let (exit, out) = self.run(&all).await;
        let json = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
        (exit, json)
    }
}

fn line<'a>(out: &'a str, start: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting with {start:?} in:\n{out}"))
}

fn check<'a>(json: &'a Value, name: &str) -> &'a Value {
    json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {json:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_a_layout_made_by_ensure_topics_with_warnings_on_one_broker() {
    let prefix = unique_prefix("cli-doctor-ok");
    let target = Target::new(&prefix).await;
    let settings = TopicSettings {
        partitions: 3,
        ..TopicSettings::default()
    };
    ensure_topics(
        &KafkaConfig::new(&target.bootstrap),
        &prefix,
        "account",
        &settings,
    )
    .await
    .unwrap();

    let (exit, out) = target.run(&["doctor", "--prefix", &prefix]).await;
    assert_eq!(exit, Exit::Ok, "{out}");
    assert!(!out.lines().any(|l| l.starts_with("fail")), "{out}");
    assert!(line(&out, "warn  brokers").contains("1 broker(s)"), "{out}");
    let events = format!("{prefix}.account.events");
    assert!(
        line(&out, &format!("ok    {events} retention")).contains("forever"),
        "{out}"
    );
    assert!(line(&out, "ok    account co-partitioning").ends_with("3 partitions each"));
    assert!(line(&out, "ok    transactions").contains("initialized"));
    assert!(line(&out, "warn  security").contains("plaintext listener"));
    assert!(line(&out, "ok    migrations").contains("current (version 3)"));

    let (exit, json) = target.json(&["doctor", "--prefix", &prefix]).await;
    assert_eq!(exit, Exit::Ok);
    assert_eq!(json["aggregates"], serde_json::json!(["account"]));
    assert_eq!(json["summary"]["fail"], 0);
    assert_eq!(
        check(&json, &format!("{events} cleanup.policy"))["status"],
        "ok"
    );
    assert_eq!(
        check(&json, &format!("{events} replication"))["status"],
        "warn"
    );
    assert_eq!(
        check(&json, &format!("{prefix}.account.commands retention"))["detail"],
        "retention.ms 7d (604800000 ms)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_and_validate_fail_on_a_compacted_events_topic_and_name_the_fix() {
    let prefix = unique_prefix("cli-doctor-fail");
    let target = Target::new(&prefix).await;
    let events = format!("{prefix}.order.events");
    create_topic_with(
        &target.bootstrap,
        &events,
        2,
        &[("cleanup.policy", "compact")],
    )
    .await;
    create_topic(&target.bootstrap, &format!("{prefix}.order.commands"), 2).await;
    create_topic(&target.bootstrap, &format!("{prefix}.order.outcomes"), 3).await;

    let (exit, out) = target
        .run(&["doctor", "--prefix", &prefix, "--aggregate", "order"])
        .await;
    assert_eq!(exit, Exit::Failed, "{out}");
    let compacted = line(&out, &format!("fail  {events} cleanup.policy"));
    assert!(
        compacted.contains(&format!(
            "--entity-name {events} --add-config cleanup.policy=delete"
        )),
        "{compacted}"
    );
    assert!(line(&out, "fail  order co-partitioning").contains("events 2, commands 2, outcomes 3"));
    assert!(line(&out, &format!("fail  {prefix}.replies")).contains("missing"));

    let (exit, json) = target
        .json(&[
            "topics",
            "validate",
            "--prefix",
            &prefix,
            "--aggregate",
            "order",
        ])
        .await;
    assert_eq!(exit, Exit::Failed);
    assert_eq!(
        check(&json, &format!("{events} cleanup.policy"))["status"],
        "fail"
    );
    // Compacted, finite retention, co-partitioning, no replies topic.
    assert_eq!(
        check(&json, &format!("{events} retention"))["status"],
        "fail"
    );
    assert_eq!(json["summary"]["fail"], 4, "{json:#}");

    // A prefix without any events topic: nothing to check is a failure too.
    let (exit, out) = target
        .run(&["doctor", "--prefix", &format!("{prefix}-none")])
        .await;
    assert_eq!(exit, Exit::Failed);
    assert!(line(&out, "fail  aggregates").contains("no `"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_create_prints_the_layout_and_then_validates() {
    let prefix = unique_prefix("cli-topics");
    let target = Target::new(&prefix).await;
    let (exit, json) = target
        .json(&[
            "topics",
            "create",
            "--prefix",
            &prefix,
            "--aggregate",
            "stock",
            "--partitions",
            "2",
        ])
        .await;
    assert_eq!(exit, Exit::Ok, "{json:#}");
    assert_eq!(json["events"], format!("{prefix}.stock.events"));
    assert_eq!(json["replies"], format!("{prefix}.replies"));
    assert_eq!(json["partitions"], 2);
    assert_eq!(json["brokers"], 1);

    let (exit, out) = target
        .run(&[
            "topics",
            "validate",
            "--prefix",
            &prefix,
            "--aggregate",
            "stock",
        ])
        .await;
    assert_eq!(exit, Exit::Ok, "{out}");
    assert!(line(&out, "ok    stock co-partitioning").ends_with("2 partitions each"));
    let (exit, out) = target
        .run(&[
            "topics",
            "create",
            "--prefix",
            &prefix,
            "--aggregate",
            "st.ock",
        ])
        .await;
    assert_eq!(exit, Exit::Usage, "{out}");
}

/// 5 deposits of account `a` with a record that is not JSON after the third.
fn first_load(topic: &EventsTopic<AccountEvent>) -> Vec<RawRecord> {
    let mut records: Vec<RawRecord> = (1..=5)
        .map(|seq| {
            let event = EventEnvelope::new("a", seq, AccountEvent::Deposited { amount: 10 });
            topic.encode(&event).into()
        })
        .collect();
    let mut poison: RawRecord = topic
        .encode(&EventEnvelope::new(
            "b",
            1,
            AccountEvent::Deposited { amount: 1 },
        ))
        .into();
    poison.value = Some(b"{\"amount\": 1".to_vec());
    records.insert(3, poison);
    for record in &mut records {
        record.partition = Some(0);
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn projections_lag_status_and_dead_letters_from_a_real_worker() {
    let prefix = unique_prefix("cli-proj");
    let target = Target::new(&prefix).await;
    let topic = EventsTopic::<AccountEvent>::new(&prefix);
    create_topic(&target.bootstrap, &topic.name, 1).await;
    produce(&target.bootstrap, &topic.name, first_load(&topic)).await;

    let store = pg_store(&prefix).await;
    let worker = ProjectionWorker::new(
        Totals::default(),
        store.clone(),
        kafka_config(&target.bootstrap),
    )
    .subscribe(&prefix, topic.codec.clone())
    .settings(test_config());
    let handle = worker.clone().spawn();
    wait_caught_up(
        &store,
        &target.bootstrap,
        &topic.name,
        Duration::from_secs(60),
    )
    .await;
    handle.shutdown().await.unwrap();
    // Three more while no worker runs: the lag.
    let more: Vec<RawRecord> = (6..=8)
        .map(|seq| {
            let event = EventEnvelope::new("a", seq, AccountEvent::Deposited { amount: 10 });
            let mut record: RawRecord = topic.encode(&event).into();
            record.partition = Some(0);
            record
        })
        .collect();
    produce(&target.bootstrap, &topic.name, more).await;

    let (exit, json) = target.json(&["projections", "lag", "account_totals"]).await;
    assert_eq!(exit, Exit::Ok, "{json:#}");
    let partition = &json["projections"][0]["partitions"][0];
    assert_eq!(partition["topic"], topic.name.as_str());
    assert_eq!(
        (
            &partition["checkpoint"],
            &partition["high_watermark"],
            &partition["lag"]
        ),
        (&Value::from(6), &Value::from(9), &Value::from(3))
    );
    assert_eq!(json["total_lag"], 3);
    let (_, out) = target.run(&["projections", "lag"]).await;
    assert!(
        line(&out, "account_totals  total").ends_with("  3"),
        "{out}"
    );
    assert_eq!(line(&out, "total lag"), "total lag 3");

    let (exit, out) = target.run(&["projections", "status"]).await;
    assert_eq!(exit, Exit::Ok);
    let row: Vec<&str> = line(&out, "account_totals").split_whitespace().collect();
    assert_eq!(&row[..3], &["account_totals", "3", "1"], "{out}");
    let (exit, out) = target.run(&["projections", "status", "nope"]).await;
    assert_eq!(exit, Exit::Failed);
    assert!(
        out.contains("unknown projection `nope`; known projections: account_totals"),
        "{out}"
    );

    // The poison record is the one open dead letter.
    let (exit, json) = target.json(&["dead-letters", "list"]).await;
    assert_eq!(exit, Exit::Ok);
    let letters = json["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{json:#}");
    assert_eq!(
        (
            &letters[0]["reason"],
            &letters[0]["offset"],
            &letters[0]["state"]
        ),
        (
            &Value::from("undecodable"),
            &Value::from(3),
            &Value::from("open")
        )
    );
    let id = letters[0]["id"].as_i64().unwrap();
    let id_arg = id.to_string();
    let (exit, out) = target.run(&["dead-letters", "show", &id_arg]).await;
    assert_eq!(exit, Exit::Ok);
    assert_eq!(line(&out, "payload"), "payload         {\"amount\": 1");
    assert_eq!(line(&out, "key"), "key             b");
    assert_eq!(line(&out, "  ce_type"), "  ce_type: account.deposited.v1");
    assert!(line(&out, "error").contains("not valid JSON"), "{out}");

    let (exit, out) = target
        .run(&[
            "dead-letters",
            "discard",
            &id_arg,
            "--reason",
            "a test producer wrote it",
        ])
        .await;
    assert_eq!(exit, Exit::Ok, "{out}");
    assert!(out.starts_with(&format!(
        "discarded dead letter {id} of projection `account_totals`"
    )));
    let (_, out) = target.run(&["dead-letters", "list"]).await;
    assert_eq!(out, "no open dead letters\n");
    let (_, json) = target
        .json(&[
            "dead-letters",
            "list",
            "--all",
            "--projection",
            "account_totals",
        ])
        .await;
    assert_eq!(json["dead_letters"][0]["state"], "discarded");
    assert_eq!(
        json["dead_letters"][0]["discard_reason"],
        "a test producer wrote it"
    );
    let (exit, out) = target.run(&["dead-letters", "discard", &id_arg]).await;
    assert_eq!(exit, Exit::Failed);
    assert!(out.contains("already discarded"), "{out}");
    assert!(matches!(
        worker.replay_dead_letter(id).await,
        Err(ProjectionError::Discarded { .. })
    ));
    assert!(worker.dead_letters().await.unwrap().is_empty());
    let (_, json) = target
        .json(&["projections", "status", "account_totals"])
        .await;
    assert_eq!(json["projections"][0]["open_dead_letters"], 0);

    let (exit, out) = target.run(&["dead-letters", "show", "999999999"]).await;
    assert_eq!(exit, Exit::Failed, "{out}");
    let (exit, out) = target.run(&["dead-letters", "replay", &id_arg]).await;
    assert_eq!(exit, Exit::Usage);
    assert!(
        out.contains("not available in the generic `tributary` binary"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_scans_the_partition_of_an_aggregate_in_order() {
    let prefix = unique_prefix("cli-events");
    let target = Target::new(&prefix).await;
    let topic = EventsTopic::<AccountEvent>::new(&prefix);
    create_topic(&target.bootstrap, &topic.name, 3).await;
    let mut records = Vec::new();
    let mut ids = Vec::new();
    for seq in 1..=3 {
        for account in ["acc-1", "acc-2"] {
            let event =
                EventEnvelope::new(account, seq, AccountEvent::Deposited { amount: seq as i64 });
            if account == "acc-1" {
                ids.push(event.id.to_string());
            }
            let mut record: RawRecord = topic.encode(&event).into();
            // Where the command processor writes it.
            record.partition = Some(partition_for(account.as_bytes(), 3));
            records.push(record);
        }
    }
    produce(&target.bootstrap, &topic.name, records).await;

    let (exit, json) = target
        .json(&["events", "--prefix", &prefix, "account", "acc-1"])
        .await;
    assert_eq!(exit, Exit::Ok, "{json:#}");
    assert_eq!(json["partition"], partition_for(b"acc-1", 3));
    let events = json["events"].as_array().unwrap();
    let seen: Vec<(String, u64, i64)> = events
        .iter()
        .map(|e| {
            (
                e["ce_id"].as_str().unwrap().to_owned(),
                e["sequence"].as_u64().unwrap(),
                e["payload"]["amount"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (ids[0].clone(), 1, 1),
            (ids[1].clone(), 2, 2),
            (ids[2].clone(), 3, 3),
        ]
    );
    assert!(
        events
            .iter()
            .all(|e| e["ce_type"] == "account.deposited.v1")
    );

    let (exit, out) = target
        .run(&[
            "events",
            "--prefix",
            &prefix,
            "account",
            "acc-1",
            "--from-offset",
            "1",
        ])
        .await;
    assert_eq!(exit, Exit::Ok, "{out}");
    assert!(
        out.lines()
            .next()
            .unwrap()
            .ends_with("2 event(s) of `acc-1`"),
        "{out}"
    );
    let (exit, out) = target
        .run(&["events", "--prefix", &prefix, "account", "nobody"])
        .await;
    assert_eq!(exit, Exit::Failed);
    assert!(out.starts_with("error: no events of `nobody`"), "{out}");
    let (exit, _) = target
        .run(&["events", "--prefix", &prefix, "missing", "x"])
        .await;
    assert_eq!(exit, Exit::Failed);
}

#[tokio::test]
async fn config_shows_the_settings_without_secrets() {
    let (exit, out) = cli(&[
        "config",
        "-X",
        "security.protocol=sasl_ssl",
        "-X",
        "sasl.password=hunter2",
        "--database-url",
        "postgres://app:s3cret@db:5432/shop",
    ])
    .await;
    assert_eq!(exit, Exit::Ok);
    assert!(!out.contains("hunter2") && !out.contains("s3cret"), "{out}");
    assert_eq!(
        line(&out, "  sasl.password"),
        "  sasl.password = <redacted>"
    );
    assert_eq!(
        line(&out, "  DATABASE_URL"),
        "  DATABASE_URL = postgres://app:<redacted>@db:5432/shop"
    );
    let (_, out) = cli(&["--json", "config", "-X", "sasl.password=hunter2"]).await;
    assert!(!out.contains("hunter2"));
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["kafka"]["sasl.password"], "<redacted>");
}

#[tokio::test]
async fn unreachable_services_and_bad_usage_have_their_exit_codes() {
    let (exit, out) = cli(&[
        "--bootstrap-servers",
        "127.0.0.1:1",
        "--timeout",
        "2",
        "topics",
        "validate",
        "--prefix",
        "p",
        "--aggregate",
        "a",
    ])
    .await;
    assert_eq!(exit, Exit::Unreachable, "{out}");
    assert!(out.contains("fetch metadata"), "{out}");
    let (exit, out) = cli(&[
        "--json",
        "--database-url",
        "postgres://postgres@127.0.0.1:1/test",
        "dead-letters",
        "list",
    ])
    .await;
    assert_eq!(exit, Exit::Unreachable, "{out}");
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["exit_code"], 3);
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .starts_with("Postgres connect failed"),
        "{json}"
    );
    // A schema Tributary never migrated: the CLI does not migrate it, and says so.
    let url = database_url();
    let (exit, out) = cli(&[
        "--database-url",
        &url,
        "--schema",
        "cli_never_migrated",
        "projections",
        "status",
    ])
    .await;
    assert_eq!(exit, Exit::Failed, "{out}");
    assert!(
        out.contains("schema `cli_never_migrated` lacks Tributary migrations 1 (snapshots)"),
        "{out}"
    );
    let (exit, out) = cli(&["doctor"]).await;
    assert_eq!(exit, Exit::Usage);
    assert!(out.contains("--prefix"), "{out}");
    let (exit, out) = cli(&["--help"]).await;
    assert_eq!(exit, Exit::Ok);
    assert!(
        out.contains("3  Kafka or Postgres cannot be reached"),
        "{out}"
    );
}

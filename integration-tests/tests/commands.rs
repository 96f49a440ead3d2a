//! The command side against the real broker and Postgres: G1 (one writer), G2
//! (exactly-once command effect), G3 (the caller learns the outcome) and G6
//! (bounded restore).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tributary::KafkaConfig;
use tributary::command::{CommandGateway, CommandOutcome, SendOptions};
use tributary_integration_tests::command_support::{
    Check, Counter, CounterError, Increment, assert_gapless, counter_processor, read_counter_events,
};
use tributary_integration_tests::{kafka_bootstrap, unique_prefix};

async fn gateway(bootstrap: &str, prefix: &str) -> CommandGateway {
    CommandGateway::connect_with_timeout(
        KafkaConfig::new(bootstrap),
        prefix,
        Duration::from_secs(30),
    )
    .await
    .expect("gateway")
}

async fn expect_value(gateway: &CommandGateway, id: &str, expected: u64) {
    match gateway
        .send(Check {
            id: id.into(),
            expected,
        })
        .await
        .expect("check")
    {
        CommandOutcome::Accepted { events, .. } => assert!(events.is_empty()),
        CommandOutcome::Rejected(e) => panic!("aggregate {id}: {e}"),
    }
}

/// G1 + G3: 50 concurrent callers × 20 commands on one aggregate, plus traffic on
/// 100 others. Every aggregate's sequences are exactly 1..=n and the processor's
/// state equals the number of accepted commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_on_one_aggregate_get_gapless_sequences() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("cmd-conc");
    let processor = counter_processor(&bootstrap, &prefix, 4)
        .start()
        .await
        .expect("processor");
    let gateway = gateway(&bootstrap, &prefix).await;

    let mut tasks = Vec::new();
    for caller in 0..50 {
        let gateway = gateway.clone();
        tasks.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for i in 0..20 {
                // Every 10th command of a caller is rejected by the handler.
                let by = if i % 10 == 9 { 0 } else { 1 };
                match gateway
                    .send(Increment {
                        id: "hot".into(),
                        by,
                    })
                    .await
                    .expect("send")
                {
                    CommandOutcome::Accepted { version, events } => {
                        assert_eq!(events.len(), 1);
                        assert_eq!(events[0].sequence, version);
                        versions.push(version);
                    }
                    CommandOutcome::Rejected(e) => {
                        assert_eq!(e, CounterError::Zero, "caller {caller}")
                    }
                }
                let other = format!("cold-{}", (caller * 20 + i) % 100);
                let outcome = gateway
                    .send(Increment { id: other, by: 2 })
                    .await
                    .expect("send");
                assert!(outcome.is_accepted());
            }
            versions
        }));
    }
    let mut versions = Vec::new();
    for task in tasks {
        versions.extend(task.await.expect("caller"));
    }
    // Accepted versions of the hot aggregate are exactly 1..=n: no two callers got
    // the same version, none was skipped.
    versions.sort_unstable();
    assert_eq!(versions, (1..=900).collect::<Vec<u64>>());
    expect_value(&gateway, "hot", 900).await;
    expect_value(&gateway, "cold-0", 2 * 10).await;

    let events = read_counter_events(&bootstrap, &prefix);
    let counts = assert_gapless(&events);
    assert_eq!(counts.get("hot"), Some(&900));
    assert_eq!(counts.len(), 101);
    assert_eq!(counts.values().sum::<u64>(), 900 + 1000);
    processor.shutdown().await.expect("shutdown");
}

/// G2 across a restart: 100 already-processed command ids resent to a new
/// processor return identical outcomes and write no event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resent_command_ids_return_the_original_outcome_after_a_restart() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("cmd-idem");
    let first = counter_processor(&bootstrap, &prefix, 2)
        .start()
        .await
        .expect("processor");
    let gateway = gateway(&bootstrap, &prefix).await;

    let send = |gateway: CommandGateway, i: u32| async move {
        let by = if i.is_multiple_of(5) { 0 } else { i };
        let options = SendOptions {
            command_id: Some(format!("{i}-cmd")),
            ..Default::default()
        };
        gateway
            .send_with(
                Increment {
                    id: format!("c-{}", i % 7),
                    by,
                },
                options,
            )
            .await
            .expect("send")
    };
    let describe = |o: CommandOutcome<Counter>| match o {
        CommandOutcome::Accepted { version, events } => {
            format!(
                "accepted v{version} {:?}",
                events
                    .iter()
                    .map(|e| (e.id, e.sequence, e.event.clone()))
                    .collect::<Vec<_>>()
            )
        }
        CommandOutcome::Rejected(e) => format!("rejected {e:?}"),
    };
    let mut original = BTreeMap::new();
    for i in 0..100 {
        original.insert(i, describe(send(gateway.clone(), i).await));
    }
    assert_eq!(
        original
            .values()
            .filter(|o| o.starts_with("rejected"))
            .count(),
        20
    );
    // Abrupt stop: no graceful hand-over, no final snapshot.
    drop(first);
    let before = read_counter_events(&bootstrap, &prefix);
    let before_count: usize = before.values().map(Vec::len).sum();
    assert_eq!(before_count, 80);

    let second = counter_processor(&bootstrap, &prefix, 2)
        .start()
        .await
        .expect("processor");
    for i in 0..100 {
        let again = describe(send(gateway.clone(), i).await);
        assert_eq!(again, original[&i], "command {i}-cmd");
    }
    let after = read_counter_events(&bootstrap, &prefix);
    assert_eq!(
        after.values().map(Vec::len).sum::<usize>(),
        before_count,
        "resends wrote events"
    );
    assert_eq!(second.stats().counters().duplicates, 100);
    second.shutdown().await.expect("shutdown");
}

/// The counter as an older deployment knows it: the same aggregate name and events,
/// but `Check` is not in its command list yet. A rolling deploy where the gateway is
/// newer than the processor is the one way a command type can still reach a
/// processor that does not handle it (the gateway only compiles for declared
/// commands).
mod old_deployment {
    use serde::{Deserialize, Serialize};
    use tributary::{Aggregate, Apply, Command, Handle};
    use tributary_integration_tests::command_support::{CounterError, CounterEvent};

    #[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
    #[aggregate(name = "counter", event = CounterEvent, error = CounterError)]
    #[aggregate(commands(Increment))]
    pub(crate) struct OldCounter {
        value: u64,
    }

    impl Apply<CounterEvent> for OldCounter {
        fn apply(&mut self, event: &CounterEvent) {
            if let CounterEvent::Incremented { by } = event {
                self.value += u64::from(*by);
            }
        }
    }

    #[derive(Debug, Serialize, Deserialize, Command)]
    #[command(aggregate = OldCounter)]
    pub(crate) struct Increment {
        #[aggregate_id]
        id: String,
        by: u32,
    }

    impl Handle<Increment> for OldCounter {
        fn handle(&self, c: Increment) -> Result<Vec<CounterEvent>, CounterError> {
            Ok(vec![CounterEvent::Incremented { by: c.by }])
        }
    }
}

/// G3: an unknown command type is reported to the caller, not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_the_processor_does_not_handle_fails_loudly() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("cmd-unknown");
    // This processor is the older deployment's: it handles `increment` only.
    let processor = tributary::command::CommandProcessor::<old_deployment::OldCounter>::new(
        KafkaConfig::new(&bootstrap),
        &prefix,
    )
    .unwrap()
    .settings(tributary::command::ProcessorSettings {
        session_timeout: Duration::from_secs(6),
        ..Default::default()
    })
    .topics(tributary::command::TopicSettings {
        partitions: 1,
        reply_partitions: 1,
        ..Default::default()
    })
    .start()
    .await
    .unwrap();
    let gateway = gateway(&bootstrap, &prefix).await;
    let err = gateway
        .send(Check {
            id: "x".into(),
            expected: 0,
        })
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown command type `counter.check`"),
        "{err}"
    );
    let _ = Arc::new(());
    processor.shutdown().await.unwrap();
}

/// G6 + G7: restore reads at most N events past the snapshot; an unreadable or
/// incompatible snapshot is discarded with a warning and the aggregate rebuilt
/// from all its events.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restore_starts_from_the_snapshot_and_survives_a_bad_one() {
    const N: u64 = 10; // Counter's snapshot_every

    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("cmd-snap");
    let store = tributary_integration_tests::pg_store(&prefix).await;
    let start = || {
        counter_processor(&bootstrap, &prefix, 1)
            .snapshots(store.clone())
            .start()
    };

    let first = start().await.expect("processor");
    let gateway = gateway(&bootstrap, &prefix).await;
    let total = N * 5 + 3;
    for _ in 0..total {
        assert!(
            gateway
                .send(Increment {
                    id: "s".into(),
                    by: 1
                })
                .await
                .unwrap()
                .is_accepted()
        );
    }
    // Crash: no snapshot on revoke; the per-aggregate snapshot at version 50 exists.
    first.abort();
    let _ = first.join().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT version FROM tributary_snapshots WHERE aggregate_id = 's'")
                .fetch_optional(store.pool())
                .await
                .unwrap();
        if v == Some(50) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "snapshot at version 50 not written: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let second = start().await.expect("processor");
    expect_value(&gateway, "s", total).await;
    let applied = second.stats().counters().restore_events_applied;
    assert!(
        applied <= N,
        "restore applied {applied} events past the snapshot, more than N = {N}"
    );
    assert_eq!(applied, 3);
    // Graceful hand-over snapshots everything: the next restore reads nothing.
    second.shutdown().await.expect("shutdown");
    let third = start().await.expect("processor");
    expect_value(&gateway, "s", total).await;
    assert_eq!(third.stats().counters().restore_records_read, 0);
    third.abort();
    let _ = third.join().await;

    for corruption in [
        "UPDATE tributary_snapshots SET state = '{\"value\": \"not a number\"}' WHERE aggregate_id = 's'",
        "UPDATE tributary_snapshots SET state_version = 99 WHERE aggregate_id = 's'",
    ] {
        sqlx::query(corruption).execute(store.pool()).await.unwrap();
        let next = start().await.expect("processor");
        expect_value(&gateway, "s", total).await;
        assert_eq!(
            next.stats().counters().snapshots_discarded,
            1,
            "{corruption}"
        );
        assert_eq!(
            next.stats().counters().restore_events_applied,
            total,
            "{corruption}"
        );
        next.shutdown().await.expect("shutdown");
    }
    // Deleting every snapshot loses nothing.
    sqlx::query("DELETE FROM tributary_snapshots")
        .execute(store.pool())
        .await
        .unwrap();
    let last = start().await.expect("processor");
    expect_value(&gateway, "s", total).await;
    last.shutdown().await.expect("shutdown");
}

/// Topic validation: misconfigured topics stop the start-up with the documented error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misconfigured_topics_are_refused_with_a_fix() {
    use tributary::command::{TopicError, TopicSettings, ensure_topics};
    use tributary_integration_tests::create_topic;

    let bootstrap = kafka_bootstrap();
    let config = KafkaConfig::new(&bootstrap);
    let settings = TopicSettings {
        partitions: 2,
        reply_partitions: 1,
        ..Default::default()
    };

    // Commands topic with another partition count than the events topic.
    let prefix = unique_prefix("cmd-topics");
    create_topic(&bootstrap, &format!("{prefix}.counter.events"), 2).await;
    create_topic(&bootstrap, &format!("{prefix}.counter.commands"), 3).await;
    let err = ensure_topics(&config, &prefix, "counter", &settings)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            TopicError::PartitionMismatch {
                found: 3,
                expected: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("co-partitioned"), "{err}");

    // Compacted or finite-retention events topic.
    for (config_key, value, expect) in [
        ("cleanup.policy", "compact", "never be compacted"),
        ("retention.ms", "86400000", "events must be kept forever"),
    ] {
        let prefix = unique_prefix("cmd-topics");
        tributary_integration_tests::create_topic_with(
            &bootstrap,
            &format!("{prefix}.counter.events"),
            2,
            &[(config_key, value)],
        )
        .await;
        let err = ensure_topics(&config, &prefix, "counter", &settings)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                TopicError::Compacted { .. } | TopicError::FiniteRetention { .. }
            ),
            "{config_key}={value}: {err}"
        );
        assert!(err.to_string().contains(expect), "{err}");
        assert!(
            err.to_string().contains("kafka-configs.sh"),
            "says how to fix it: {err}"
        );
    }

    // A correct layout passes and reports what it found.
    let prefix = unique_prefix("cmd-topics");
    let layout = ensure_topics(&config, &prefix, "counter", &settings)
        .await
        .expect("valid topics");
    assert_eq!(layout.partitions, 2);
}

/// Settings librdkafka would refuse, or that would overflow a deadline, are refused
/// by name before the processor creates a topic or joins its group.
#[tokio::test]
async fn settings_out_of_range_are_refused_by_name() {
    use tributary::command::{ProcessorError, ProcessorSettings};
    use tributary_integration_tests::command_support::counter_processor;

    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("cmd-settings");
    for (settings, field) in [
        (
            ProcessorSettings {
                max_batch: 0,
                ..ProcessorSettings::default()
            },
            "max_batch",
        ),
        (
            ProcessorSettings {
                restore_timeout: Duration::MAX,
                ..ProcessorSettings::default()
            },
            "restore_timeout",
        ),
    ] {
        let started = counter_processor(&bootstrap, &prefix, 1)
            .settings(settings)
            .start()
            .await;
        match started {
            Err(ProcessorError::Settings(e)) => assert_eq!(e.name, field),
            Err(other) => panic!("expected a settings error for {field}, got {other}"),
            Ok(_) => panic!("a processor with an invalid {field} started"),
        }
    }
}

//! G1 and G2 where Kafka's transactions do the work, on Apache Kafka: a zombie
//! frozen with its transaction open, a crash inside a transaction (recovered through
//! the same transactional id, and through the broker's transaction timeout), and a
//! member that lost the consumer group trying to commit (KIP-447).
//!
//! Every result is checked with a plain consumer of our own (`raw_log`), not with
//! the framework's decoder: the committed log (read_committed) must be gapless with
//! one effect per command id, and the records of the failed transaction must be in
//! the log (read_uncommitted) without ever reaching a reader: not the projection,
//! not a caller's reply, not a restore.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tributary::KafkaConfig;
use tributary::command::{CommandGateway, CommandOutcome, FaultPoint, SendOptions};
use tributary_integration_tests::command_support::{
    Check, Increment, counter_log_ids, counter_log_worker, counter_processor,
};
use tributary_integration_tests::node::Node;
use tributary_integration_tests::projection_support::wait_until;
use tributary_integration_tests::raw_log::{self, Isolation, LoggedEvent};
use tributary_integration_tests::{kafka_bootstrap, pg_store, unique_prefix};

const NODE: &str = env!("CARGO_BIN_EXE_counter_node");
/// Commands per test, over two aggregates.
const COMMANDS: u32 = 6;

/// What a caller learned: command id → (aggregate, version, event ids).
type Accepted = BTreeMap<String, (String, u64, Vec<String>)>;

fn events_topic(prefix: &str) -> String {
    format!("{prefix}.counter.events")
}

async fn gateway(bootstrap: &str, prefix: &str) -> CommandGateway {
    CommandGateway::connect_with_timeout(
        &KafkaConfig::new(bootstrap),
        prefix,
        Duration::from_secs(20),
    )
    .await
    .expect("gateway")
}

/// Sends `COMMANDS` increments concurrently (`cmd-{i}` adds `i + 1` to `z{i % 2}`),
/// each resent with the same id until its outcome is known.
fn send_commands(gateway: &CommandGateway) -> tokio::task::JoinHandle<Accepted> {
    let gateway = gateway.clone();
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for i in 0..COMMANDS {
            let gateway = gateway.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("cmd-{i}");
                let aggregate = format!("z{}", i % 2);
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let options = SendOptions {
                        command_id: Some(id.clone()),
                        ..Default::default()
                    };
                    let command = Increment {
                        id: aggregate.clone(),
                        by: i + 1,
                    };
                    match gateway.send_with(command, options).await {
                        Ok(CommandOutcome::Accepted { version, events }) => {
                            let ids = events.iter().map(|e| e.id.to_string()).collect();
                            return (id, (aggregate, version, ids));
                        }
                        Ok(CommandOutcome::Rejected(e)) => panic!("{id} rejected: {e}"),
                        Err(e) => assert!(Instant::now() < deadline, "{id}: no outcome: {e}"),
                    }
                }
            }));
        }
        let mut accepted = Accepted::new();
        for task in tasks {
            let (id, outcome) = task.await.expect("caller");
            accepted.insert(id, outcome);
        }
        accepted
    })
}

/// The value each aggregate must have after all commands.
fn expected_values() -> BTreeMap<String, u64> {
    let mut values = BTreeMap::new();
    for i in 0..COMMANDS {
        *values.entry(format!("z{}", i % 2)).or_default() += u64::from(i + 1);
    }
    values
}

/// The processor's state of every aggregate, through `Check` commands (which read
/// the state the processor restored or kept).
async fn assert_state(gateway: &CommandGateway) {
    for (id, expected) in expected_values() {
        match gateway
            .send(Check {
                id: id.clone(),
                expected,
            })
            .await
            .expect("check")
        {
            CommandOutcome::Accepted { .. } => {}
            CommandOutcome::Rejected(e) => panic!("aggregate {id}: {e}"),
        }
    }
}

/// Waits until a transaction of the frozen or crashed processor holds events in the
/// log that no read_committed reader can see yet.
fn assert_open_transaction(bootstrap: &str, prefix: &str) -> usize {
    let topic = events_topic(prefix);
    let uncommitted = raw_log::read(bootstrap, &topic, Isolation::Uncommitted);
    let committed = raw_log::read(bootstrap, &topic, Isolation::Committed);
    assert!(
        !uncommitted.is_empty(),
        "the paused processor had produced no events: the scenario is not the one under test"
    );
    assert!(
        committed.is_empty(),
        "events of an open transaction are visible to read_committed readers: {committed:?}"
    );
    uncommitted.len()
}

/// The checks shared by every scenario: the committed log is gapless with one
/// effect per command, it is exactly what the callers were told, and the records of
/// the failed transaction are in the log but reached no reader (the projection's
/// rows are the committed events, nothing else).
async fn assert_log(
    bootstrap: &str,
    prefix: &str,
    accepted: &Accepted,
    projection: Option<&tributary::PgStore>,
) {
    let topic = events_topic(prefix);
    let committed = raw_log::read(bootstrap, &topic, Isolation::Committed);
    let per_aggregate = raw_log::assert_single_writer(&committed);
    let uncommitted = raw_log::read(bootstrap, &topic, Isolation::Uncommitted);
    let committed_ids: BTreeSet<&str> = committed.iter().map(|e| e.event_id.as_str()).collect();
    let aborted: Vec<&LoggedEvent> = uncommitted
        .iter()
        .filter(|e| !committed_ids.contains(e.event_id.as_str()))
        .collect();
    assert!(
        !aborted.is_empty(),
        "no aborted records in the log: the failed transaction was not exercised"
    );

    // One event per command, and the callers heard of exactly those events.
    assert_eq!(committed.len(), COMMANDS as usize, "{committed:?}");
    for (command_id, (aggregate, version, ids)) in accepted {
        let event = committed
            .iter()
            .find(|e| &e.causation_id == command_id)
            .unwrap_or_else(|| panic!("{command_id} was accepted but has no event"));
        assert_eq!(
            (&event.aggregate_id, event.sequence),
            (aggregate, *version),
            "{command_id}: the reply and the log disagree"
        );
        assert_eq!(
            ids,
            &vec![event.event_id.clone()],
            "{command_id}: reply's event ids"
        );
    }
    for (aggregate, expected) in expected_values() {
        let sum: u64 = per_aggregate[&aggregate]
            .iter()
            .map(|e| e.data["by"].as_u64().expect("by"))
            .sum();
        assert_eq!(sum, expected, "aggregate {aggregate} in the log");
    }

    if let Some(store) = projection {
        wait_until(
            Duration::from_secs(60),
            "the projection to apply every committed event",
            || async { counter_log_ids(store).await.len() >= committed.len() },
        )
        .await;
        // Give a wrongly delivered aborted record time to show up, then compare.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let seen = counter_log_ids(store).await;
        let expected: Vec<String> = committed.iter().map(|e| e.event_id.clone()).collect();
        let mut seen_sorted = seen.clone();
        seen_sorted.sort();
        let mut expected_sorted = expected;
        expected_sorted.sort();
        assert_eq!(
            seen_sorted, expected_sorted,
            "the projection applied something other than the committed events"
        );
        for event in &aborted {
            assert!(
                !seen.contains(&event.event_id),
                "the projection saw an aborted event"
            );
        }
    }
}

/// A processor frozen (SIGSTOP) after producing a batch's events, before its
/// commit. A new owner takes the partition and decides the same commands; after
/// SIGCONT the zombie's commit is refused. No reader ever sees the zombie's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_zombie_with_an_open_transaction_never_becomes_visible() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("txn-zombie");
    let release = std::env::temp_dir().join(format!("{prefix}.release"));
    let mut zombie = Node::counter(
        NODE,
        &bootstrap,
        &prefix,
        1,
        &[
            ("TRIBUTARY_PAUSE_FILE", release.to_str().unwrap()),
            ("TRIBUTARY_PAUSE_AT", "before_commit"),
        ],
    );
    let gateway = gateway(&bootstrap, &prefix).await;
    let sends = send_commands(&gateway);
    zombie.expect_line("paused", Duration::from_secs(90)).await;
    let in_flight = assert_open_transaction(&bootstrap, &prefix);
    zombie.signal("-STOP");

    // Readers run while the zombie's transaction is open, and afterwards.
    let store = pg_store(&prefix).await;
    let projection = counter_log_worker(&bootstrap, &prefix, store.clone()).spawn();
    let owner = counter_processor(&bootstrap, &prefix, 1)
        .start()
        .await
        .expect("processor");
    let accepted = sends.await.expect("callers");
    assert_eq!(accepted.len(), COMMANDS as usize);

    // Wake the zombie: it carries on with its commit, which the broker refuses.
    std::fs::write(&release, b"go").unwrap();
    zombie.signal("-CONT");
    zombie.expect_line("fenced", Duration::from_secs(60)).await;
    zombie.kill();
    let _ = std::fs::remove_file(&release);

    assert!(in_flight > 0);
    assert_log(&bootstrap, &prefix, &accepted, Some(&store)).await;
    assert_state(&gateway).await;
    // A restore from the log alone (no snapshots) skips the aborted records too.
    owner.shutdown().await.expect("shutdown");
    let restored = counter_processor(&bootstrap, &prefix, 1)
        .start()
        .await
        .expect("processor");
    assert_state(&gateway).await;
    restored.shutdown().await.expect("shutdown");
    projection.shutdown().await.expect("projection");
}

/// SIGKILL inside a transaction (events produced, not committed). The next owner
/// initialises the same transactional id, which aborts the open transaction at once,
/// and handles the commands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_inside_a_transaction_is_rolled_back_by_the_next_owner() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("txn-crash");
    let release = std::env::temp_dir().join(format!("{prefix}.release"));
    let mut crashed = Node::counter(
        NODE,
        &bootstrap,
        &prefix,
        1,
        &[
            ("TRIBUTARY_PAUSE_FILE", release.to_str().unwrap()),
            ("TRIBUTARY_PAUSE_AT", "before_commit"),
        ],
    );
    let gateway = gateway(&bootstrap, &prefix).await;
    let sends = send_commands(&gateway);
    crashed.expect_line("paused", Duration::from_secs(90)).await;
    assert_open_transaction(&bootstrap, &prefix);
    crashed.kill();

    let store = pg_store(&prefix).await;
    let projection = counter_log_worker(&bootstrap, &prefix, store.clone()).spawn();
    let owner = counter_processor(&bootstrap, &prefix, 1)
        .start()
        .await
        .expect("processor");
    let accepted = sends.await.expect("callers");
    assert_log(&bootstrap, &prefix, &accepted, Some(&store)).await;
    assert_state(&gateway).await;
    owner.shutdown().await.expect("shutdown");
    projection.shutdown().await.expect("projection");
}

/// SIGKILL inside a transaction, and no other owner for a while: the broker aborts
/// the transaction when its timeout (8 s here) runs out, so read_committed readers
/// of the partition are held back only that long. The next owner then handles the
/// commands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_inside_a_transaction_is_aborted_by_the_broker_after_its_timeout() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("txn-timeout");
    let release = std::env::temp_dir().join(format!("{prefix}.release"));
    let mut crashed = Node::counter(
        NODE,
        &bootstrap,
        &prefix,
        1,
        &[
            ("TRIBUTARY_PAUSE_FILE", release.to_str().unwrap()),
            ("TRIBUTARY_PAUSE_AT", "before_commit"),
            ("TRIBUTARY_TRANSACTION_TIMEOUT_MS", "8000"),
        ],
    );
    let gateway = gateway(&bootstrap, &prefix).await;
    let sends = send_commands(&gateway);
    crashed.expect_line("paused", Duration::from_secs(90)).await;
    let paused = Instant::now();
    crashed.kill();
    assert_open_transaction(&bootstrap, &prefix);

    // Nobody owns the partition now. The open transaction holds the last stable
    // offset back until the broker aborts it.
    let topic = events_topic(&prefix);
    let (_, lso) = raw_log::end_offsets(&bootstrap, &topic, 0, Isolation::Committed);
    let (_, high) = raw_log::end_offsets(&bootstrap, &topic, 0, Isolation::Uncommitted);
    assert!(
        lso < high,
        "no open transaction after the crash (LSO {lso}, high {high})"
    );
    loop {
        let (_, lso) = raw_log::end_offsets(&bootstrap, &topic, 0, Isolation::Committed);
        let (_, high) = raw_log::end_offsets(&bootstrap, &topic, 0, Isolation::Uncommitted);
        if lso == high {
            break;
        }
        assert!(
            paused.elapsed() < Duration::from_secs(30),
            "the broker did not abort the transaction within 30 s (timeout 8 s)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let aborted_after = paused.elapsed();
    assert!(
        aborted_after >= Duration::from_secs(5),
        "the transaction ended {aborted_after:?} after the crash, before its timeout: something else ended it"
    );
    assert!(
        raw_log::read(&bootstrap, &topic, Isolation::Committed).is_empty(),
        "the aborted transaction's events are visible"
    );

    let owner = counter_processor(&bootstrap, &prefix, 1)
        .start()
        .await
        .expect("processor");
    let accepted = sends.await.expect("callers");
    assert_log(&bootstrap, &prefix, &accepted, None).await;
    assert_state(&gateway).await;
    owner.shutdown().await.expect("shutdown");
}

/// KIP-447: a processor stalls inside its transaction longer than
/// `max.poll.interval.ms`, so its consumer leaves the group. No other instance takes
/// the partition (so nothing fences its transactional id); the group coordinator
/// alone must refuse its offsets. The batch aborts, and once the processor has
/// rejoined the group it handles the commands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_lost_the_group_cannot_commit_its_offsets() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("txn-deposed");
    let stalled = Arc::new(AtomicBool::new(false));
    let processor = counter_processor(&bootstrap, &prefix, 1)
        .settings(tributary::command::ProcessorSettings {
            max_poll_interval: Duration::from_secs(7),
            ..tributary_integration_tests::command_support::test_settings()
        })
        .fault_hook({
            let stalled = Arc::clone(&stalled);
            move |point, _| {
                // Longer than max_poll_interval (7 s in the test settings).
                if point == FaultPoint::BeforeOffsets && !stalled.swap(true, Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_secs(10));
                }
            }
        })
        .start()
        .await
        .expect("processor");
    let gateway = gateway(&bootstrap, &prefix).await;
    let accepted = send_commands(&gateway).await.expect("callers");
    assert!(stalled.load(Ordering::SeqCst));
    assert_eq!(
        processor.stats().deposed.load(Ordering::Relaxed),
        1,
        "the stale member's offsets were not refused by the group coordinator"
    );
    assert_log(&bootstrap, &prefix, &accepted, None).await;
    assert_state(&gateway).await;
    processor.shutdown().await.expect("shutdown");
}

//! G1 and G2 where Kafka's transactions do the work, on Apache Kafka: a zombie
//! frozen with its transaction open, a crash inside a transaction (recovered through
//! the same transactional id, and through the broker's transaction timeout), a
//! member that lost the consumer group while its transaction ran, and partitions
//! whose transactions run without waiting for each other, at most
//! `max_transactions_at_once` of them at once.
//!
//! Every result is checked with a plain consumer of our own (`raw_log`), not with
//! the framework's decoder: the committed log (read_committed) must be gapless with
//! one effect per command id, and the records of the failed transaction must be in
//! the log (read_uncommitted) without ever reaching a reader: not the projection,
//! not a caller's reply, not a restore.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tributary::command::FaultPoint;
use tributary_integration_tests::command_support::{counter_log_worker, counter_processor};
use tributary_integration_tests::node::Node;
use tributary_integration_tests::raw_log::{self, Isolation};
use tributary_integration_tests::transaction_support::{
    COMMANDS, assert_log, assert_open_transaction, assert_state, events_topic, expected_values,
    gateway, send_commands,
};
use tributary_integration_tests::{kafka_bootstrap, pg_store, unique_prefix};

const NODE: &str = env!("CARGO_BIN_EXE_counter_node");
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

/// The same crash inside the partition's *second* transaction, which its second
/// transactional producer (`….alt`) runs: the processor's producers take the
/// partition's transactions in turn. The next owner must initialise that id too,
/// or the open transaction would hold every read_committed reader of the partition
/// back until its timeout (60 s here), and the callers' events with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_inside_the_second_producers_transaction_is_rolled_back_by_the_next_owner() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("txn-crash-alt");
    let release = std::env::temp_dir().join(format!("{prefix}.release"));
    let mut crashed = Node::counter(
        NODE,
        &bootstrap,
        &prefix,
        1,
        &[
            ("TRIBUTARY_PAUSE_FILE", release.to_str().unwrap()),
            ("TRIBUTARY_PAUSE_AT", "before_commit"),
            ("TRIBUTARY_PAUSE_BATCH", "2"),
            // One command per batch: the first commits, the second stays open.
            ("TRIBUTARY_MAX_BATCH", "1"),
            ("TRIBUTARY_TRANSACTION_TIMEOUT_MS", "60000"),
        ],
    );
    let gateway = gateway(&bootstrap, &prefix).await;
    let sends = send_commands(&gateway);
    crashed.expect_line("paused", Duration::from_secs(90)).await;
    let topic = events_topic(&prefix);
    let (lso, high) = raw_log::stable_and_high(&bootstrap, &topic, 0);
    assert!(
        lso > 0 && lso < high,
        "expected a committed first batch and an open second one (LSO {lso}, high {high})"
    );
    crashed.kill();
    let killed = Instant::now();

    let owner = counter_processor(&bootstrap, &prefix, 1)
        .start()
        .await
        .expect("processor");
    let accepted = sends.await.expect("callers");
    loop {
        let (lso, high) = raw_log::stable_and_high(&bootstrap, &topic, 0);
        if lso == high {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Without the new owner initialising the second id, the callers' commands and
    // the readers wait for the broker to abort the transaction (60 s).
    let recovered = killed.elapsed();
    assert!(
        recovered < Duration::from_secs(30),
        "the commands were answered and the readers released only {recovered:?} after the \
         crash: the new owner did not end the crashed transaction of its second id"
    );
    assert_log(&bootstrap, &prefix, &accepted, None).await;
    assert_state(&gateway).await;
    owner.shutdown().await.expect("shutdown");
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
    let (lso, high) = raw_log::stable_and_high(&bootstrap, &topic, 0);
    assert!(
        lso < high,
        "no open transaction after the crash (LSO {lso}, high {high})"
    );
    loop {
        let (lso, high) = raw_log::stable_and_high(&bootstrap, &topic, 0);
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

/// A processor stalls inside its transaction while a rebalance waits for it longer
/// than `max.poll.interval.ms` (the rebalance timeout), so it leaves the group. The
/// rebalance is started by a plain consumer of the same group that reads another
/// topic: no other instance takes the commands partition, so nobody fences its
/// transactional ids and nobody wrote the partition meanwhile. Its commit stands:
/// the position is in its outcomes, not in the group's offsets (which KIP-447 would
/// refuse from a member that left, aborting the batch). Once it has
/// rejoined the group and restored the partition, it goes on from that position,
/// and every command takes effect exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_lost_the_group_mid_transaction_commits_once_and_goes_on() {
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("txn-deposed");
    let stalled = Arc::new(AtomicBool::new(false));
    let processor = counter_processor(&bootstrap, &prefix, 1)
        .settings(tributary::command::ProcessorSettings {
            max_poll_interval: Duration::from_secs(7),
            transaction_timeout: Duration::from_secs(40),
            ..tributary_integration_tests::command_support::test_settings()
        })
        .fault_hook({
            let stalled = Arc::clone(&stalled);
            move |point, _| {
                // Past the joiner's rebalance, which waits 7 s at most for this member.
                if point == FaultPoint::BeforeOffsets && !stalled.swap(true, Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_secs(15));
                }
            }
        })
        .start()
        .await
        .expect("processor");
    let gateway = gateway(&bootstrap, &prefix).await;
    let sends = send_commands(&gateway);
    while !stalled.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = Arc::new(AtomicBool::new(false));
    let joiner = std::thread::spawn({
        let (bootstrap, prefix, done) = (bootstrap.clone(), prefix.clone(), Arc::clone(&done));
        move || {
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", format!("{prefix}.counter.processor"))
                .set("partition.assignment.strategy", "range")
                .set("enable.auto.commit", "false")
                .create()
                .expect("joiner");
            consumer
                .subscribe(&[events_topic(&prefix).as_str()])
                .expect("subscribe");
            while !done.load(Ordering::SeqCst) {
                let _ = consumer.poll(Duration::from_millis(100));
            }
        }
    });
    let accepted = sends.await.expect("callers");
    // Back in the group, with the partition restored again.
    let deadline = Instant::now() + Duration::from_secs(60);
    while processor.stats().counters().restores < 2 {
        assert!(Instant::now() < deadline, "the processor never rejoined");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The stalled batch committed (nothing aborted), once, as the callers were told.
    let topic = events_topic(&prefix);
    let committed = raw_log::read(&bootstrap, &topic, Isolation::Committed);
    raw_log::assert_single_writer(&committed);
    assert_eq!(committed.len(), COMMANDS as usize, "{committed:?}");
    assert_eq!(
        raw_log::read(&bootstrap, &topic, Isolation::Uncommitted).len(),
        COMMANDS as usize,
        "records of an aborted transaction in the log"
    );
    for (command_id, (aggregate, version, ids)) in &accepted {
        assert!(
            committed.iter().any(|e| &e.causation_id == command_id
                && (&e.aggregate_id, e.sequence) == (aggregate, *version)
                && ids == &vec![e.event_id.clone()]),
            "{command_id}: the reply and the log disagree: {committed:?}"
        );
    }
    assert_state(&gateway).await;
    let counters = processor.stats().counters();
    // Every increment decided once, with one event; the checks of `assert_state`
    // are accepted with none.
    assert_eq!(
        (counters.aborted, counters.accepted, counters.events),
        (
            0,
            u64::from(COMMANDS) + expected_values().len() as u64,
            u64::from(COMMANDS)
        ),
        "the stalled transaction did not commit, or a command was decided twice: {counters:?}"
    );
    done.store(true, Ordering::SeqCst);
    joiner.join().expect("joiner");
    processor.shutdown().await.expect("shutdown");
}

/// Partitions do not wait for each other: while one partition's transaction is
/// stalled before its commit (until the other partition's commands are answered,
/// 20 s at most), commands of the other partition are decided and answered. A poll
/// loop that waited for every transaction of a batch before starting the next
/// would answer them only after the stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_partition_does_not_hold_up_the_others() {
    use tributary::command::CommandOutcome;
    use tributary::command::wire::partition_for;
    use tributary_integration_tests::command_support::Increment;

    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("txn-pipeline");
    let ids_of = |partition: i32, count: usize| -> Vec<String> {
        (0..)
            .map(|i| format!("agg-{i}"))
            .filter(|id| partition_for(id.as_bytes(), 2) == partition)
            .take(count)
            .collect()
    };
    let (slow, fast) = (ids_of(0, 1).remove(0), ids_of(1, 5));
    let armed = Arc::new(AtomicBool::new(false));
    let stalling = Arc::new(AtomicBool::new(false));
    let released = Arc::new(AtomicBool::new(false));
    let go_on = Arc::new(AtomicBool::new(false));
    let processor = counter_processor(&bootstrap, &prefix, 2)
        .fault_hook({
            let (armed, stalling, released, go_on) = (
                Arc::clone(&armed),
                Arc::clone(&stalling),
                Arc::clone(&released),
                Arc::clone(&go_on),
            );
            move |point, partition| {
                if point == FaultPoint::BeforeCommit
                    && partition == 0
                    && armed.load(Ordering::SeqCst)
                    && !stalling.swap(true, Ordering::SeqCst)
                {
                    // Well inside the transaction timeout (30 s).
                    let until = Instant::now() + Duration::from_secs(20);
                    while !go_on.load(Ordering::SeqCst) && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    released.store(true, Ordering::SeqCst);
                }
            }
        })
        .start()
        .await
        .expect("processor");
    let gateway = gateway(&bootstrap, &prefix).await;
    let increment = |id: &str| Increment {
        id: id.to_owned(),
        by: 1,
    };
    // Both partitions restored and warm.
    for id in std::iter::once(&slow).chain(&fast) {
        gateway.send(increment(id)).await.expect("warm-up");
    }
    armed.store(true, Ordering::SeqCst);
    let stalled = tokio::spawn({
        let (gateway, command) = (gateway.clone(), increment(&slow));
        async move { gateway.send(command).await }
    });
    while !stalling.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let sends: Vec<_> = fast
        .iter()
        .map(|id| {
            let (gateway, command) = (gateway.clone(), increment(id));
            tokio::spawn(async move { gateway.send(command).await })
        })
        .collect();
    for (id, send) in fast.iter().zip(sends) {
        match send.await.expect("task").expect("fast command") {
            CommandOutcome::Accepted { version, .. } => assert_eq!(version, 2),
            CommandOutcome::Rejected(e) => panic!("{id}: {e}"),
        }
    }
    let fast_took = started.elapsed();
    assert!(
        !released.load(Ordering::SeqCst),
        "partition 1's commands were answered only after partition 0's stalled \
         transaction went on ({fast_took:?}): one partition held up the others"
    );
    go_on.store(true, Ordering::SeqCst);
    match stalled.await.expect("task").expect("stalled command") {
        CommandOutcome::Accepted { version, .. } => assert_eq!(version, 2),
        CommandOutcome::Rejected(e) => panic!("{slow}: {e}"),
    }
    processor.shutdown().await.expect("shutdown");
}

/// At most `max_transactions_at_once` partitions run a transaction at once, and the
/// partitions waiting for a slot take turns: with 4 busy partitions and a limit of
/// 2, exactly 2 transactions overlap at the peak (each one is slowed to 40 ms so
/// that they would all overlap without the limit), and every command of every
/// partition is answered with its version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_most_max_transactions_at_once_run_and_the_waiting_partitions_take_turns() {
    use std::sync::atomic::AtomicUsize;
    use tributary::command::CommandOutcome;
    use tributary::command::wire::partition_for;
    use tributary_integration_tests::command_support::{Increment, test_settings};

    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("txn-slots");
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let processor = counter_processor(&bootstrap, &prefix, 4)
        .settings(tributary::command::ProcessorSettings {
            max_transactions_at_once: 2,
            ..test_settings()
        })
        .fault_hook({
            let (running, peak) = (Arc::clone(&running), Arc::clone(&peak));
            move |point, _partition| match point {
                FaultPoint::BeforeTransaction => {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(40));
                }
                FaultPoint::AfterCommit => {
                    running.fetch_sub(1, Ordering::SeqCst);
                }
                _ => {}
            }
        })
        .start()
        .await
        .expect("processor");
    let gateway = gateway(&bootstrap, &prefix).await;
    // Five aggregates in each of the 4 partitions, 4 commands each, all at once.
    let ids: Vec<String> = (0..4)
        .flat_map(|partition| {
            (0..)
                .map(|i| format!("agg-{i}"))
                .filter(move |id| partition_for(id.as_bytes(), 4) == partition)
                .take(5)
        })
        .collect();
    let callers: Vec<_> = ids
        .iter()
        .map(|id| {
            let (gateway, id) = (gateway.clone(), id.clone());
            tokio::spawn(async move {
                let mut versions = Vec::new();
                for _ in 0..4 {
                    let command = Increment {
                        id: id.clone(),
                        by: 1,
                    };
                    match gateway.send(command).await.expect("command") {
                        CommandOutcome::Accepted { version, .. } => versions.push(version),
                        CommandOutcome::Rejected(e) => panic!("{id}: {e}"),
                    }
                }
                versions
            })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.expect("caller"), [1, 2, 3, 4]);
    }
    assert_eq!(
        peak.load(Ordering::SeqCst),
        2,
        "transactions running at once at the peak, with max_transactions_at_once 2 \
         and 4 busy partitions"
    );
    processor.shutdown().await.expect("shutdown");
}

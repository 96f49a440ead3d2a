//! G4 under crashes: a projection worker is aborted (its task dropped mid-await, as a
//! crash would) many times while a 10,000-event load is written in Kafka
//! transactions (some aborted), a slice per round; half the aborts happen at a random
//! moment, half while a handler is stalled in the middle of a batch. At the end the
//! read model equals the one computed from the log by a plain consumer: no event
//! applied twice, none missed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use tributary::EventEnvelope;
use tributary::projection::{ProjectionSettings, ProjectionWorker};
use tributary_integration_tests::projection_support::EventsTopic;
use tributary_integration_tests::projection_support::{
    AccountEvent, RawRecord, Totals, expected_totals, kafka_config, produce_transactional,
    read_log, read_totals, test_config, test_store, wait_caught_up, wait_until,
};
use tributary_integration_tests::{create_topic, kafka_bootstrap, unique_prefix};

const EVENTS: usize = 10_000;
const ACCOUNTS: usize = 97;
const ABORTS: usize = 12;

/// A small deterministic PRNG (xorshift), so a failure can be reproduced.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aborted_workers_apply_every_event_exactly_once() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("proj-crash");
    let codec = EventsTopic::<AccountEvent>::new(&prefix);
    let topic = codec.name.clone();
    create_topic(&bootstrap, &topic, 3).await;
    let store = test_store(&prefix).await;

    let seed = 0x5eed_u64
        ^ u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos(),
        );
    let mut rng = Rng(seed | 1);
    let mut sequences = vec![0u64; ACCOUNTS];
    let records: Vec<RawRecord> = (0..EVENTS)
        .map(|i| {
            let account = (rng.next() as usize) % ACCOUNTS;
            sequences[account] += 1;
            let amount = (rng.next() % 1000) as i64 + 1;
            let event = if i % 4 == 3 {
                AccountEvent::Withdrawn { amount }
            } else {
                AccountEvent::Deposited { amount }
            };
            let envelope = EventEnvelope::new(format!("acc-{account}"), sequences[account], event);
            codec.encode(&envelope).into()
        })
        .collect();

    // The load: transactions of 50 records, every 7th aborted, in ABORTS + 1 slices.
    // The first slice is written up front; each round starts the next slice as soon
    // as its worker applies, so records keep arriving while that worker is killed and
    // the next incarnation always finds work, however fast the worker is.
    let (go, slices) = std::sync::mpsc::channel::<()>();
    let loader = {
        let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
        let slice_len = EVENTS.div_ceil(ABORTS + 1);
        std::thread::spawn(move || {
            for slice in records.chunks(slice_len) {
                if slices.recv().is_err() {
                    break;
                }
                produce_transactional(
                    &bootstrap,
                    &topic,
                    slice,
                    50,
                    Some(7),
                    Duration::from_millis(15),
                );
            }
        })
    };
    go.send(()).unwrap();

    let totals = Totals::default();
    let worker = ProjectionWorker::new(totals.clone(), store.clone(), kafka_config(&bootstrap))
        .subscribe(&codec.prefix, codec.codec.clone())
        .settings(ProjectionSettings {
            batch_size: 100,
            // Batches of the three partitions applied at once: an abort then hits
            // several open transactions (the default applies one after the other).
            max_partitions_at_once: 3,
            ..test_config()
        });

    let mut aborts_mid_batch = 0;
    for round in 0..ABORTS {
        let calls_before = totals.calls.load(Ordering::SeqCst);
        let applied_before = worker.status().applied;
        let handle = worker.clone().spawn();
        // Wait until this incarnation is applying, then kill it at a random moment.
        wait_until(
            Duration::from_secs(60),
            "the worker to apply events",
            || {
                let status = worker.status();
                async move { status.applied > applied_before }
            },
        )
        .await;
        go.send(()).unwrap();
        if round % 2 == 0 {
            // Half the rounds kill the worker at a random moment...
            tokio::time::sleep(Duration::from_millis(rng.next() % 40)).await;
        } else {
            // ...and half while a handler call, its rows written, is in the middle of
            // a batch: the batch's writes must all be rolled back.
            let stall_at = totals.calls.load(Ordering::SeqCst) + 1 + rng.next() % 20;
            totals.stall_at.store(stall_at, Ordering::SeqCst);
            tokio::time::timeout(Duration::from_secs(60), totals.stalled.notified())
                .await
                .expect("the worker reached the stalling handler call");
        }
        handle.abort();
        let calls = totals.calls.load(Ordering::SeqCst) - calls_before;
        let applied = worker.status().applied - applied_before;
        if calls > applied {
            aborts_mid_batch += 1;
        }
        let _ = handle.join().await;
        totals.stall_at.store(0, Ordering::SeqCst);
        eprintln!("round {round}: handler calls {calls}, committed {applied}");
    }
    drop(go);
    loader.join().expect("loader panicked");

    // A last worker catches up; the projection must then match the log exactly.
    let handle = worker.clone().spawn();
    wait_caught_up(&store, &bootstrap, &topic, Duration::from_secs(120)).await;
    handle.shutdown().await.expect("graceful shutdown");

    let log = read_log(&bootstrap, &topic).await;
    let expected = expected_totals(&log);
    let actual = read_totals(&store).await;
    let committed: i64 = expected.values().map(|(n, _)| n).sum();
    assert!(
        committed > 8_000 && committed < EVENTS as i64,
        "aborted transactions are in the log: {committed}"
    );
    if actual != expected {
        let applied: std::collections::HashSet<uuid::Uuid> =
            tributary_integration_tests::projection_support::read_log_ids(&store)
                .await
                .into_iter()
                .collect();
        for record in &log {
            let event = codec
                .codec
                .decode(&tributary::kafka::record_ref(record))
                .unwrap();
            if !applied.contains(&event.id) {
                eprintln!(
                    "missing: partition {} offset {} ({})",
                    rdkafka::Message::partition(record),
                    rdkafka::Message::offset(record),
                    event.aggregate_id
                );
            }
        }
        let checkpoints: Vec<(String, i32, i64)> =
            sqlx::query_as("SELECT topic, partition, next_offset FROM tributary_checkpoints")
                .fetch_all(store.pool())
                .await
                .unwrap();
        eprintln!("checkpoints: {checkpoints:?}");
    }
    assert_eq!(
        actual, expected,
        "read model differs from the log (seed {seed})"
    );
    let applied_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM account_log")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(
        applied_rows, committed,
        "every committed event applied exactly once"
    );
    assert!(
        aborts_mid_batch >= ABORTS / 3,
        "only {aborts_mid_batch} of {ABORTS} aborts hit an open batch; the test would not catch a non-atomic batch"
    );
    assert!(worker.dead_letters().await.unwrap().is_empty());
}

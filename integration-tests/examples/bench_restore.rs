//! Restore benchmark (G6): time to restore one events partition with a short and a
//! long history, with and without snapshots. With snapshots the restore reads only
//! the events after the partition's snapshot watermark, so it must not grow with
//! history. Beside the events, the outcomes topic holds `--outcomes N` records
//! (default 1,000,000), all older than the dedup window (24 h) but the last 10,000:
//! the restore must read only those 10,000, so it must not grow with the outcomes'
//! history either.
//!
//! ```text
//! cargo run --release -p tributary-integration-tests --example bench_restore -- [--small N] [--large N] [--outcomes N]
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Duration;
use tributary::kafka::EncodedRecordExt as _;

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tributary::EventEnvelope;
use tributary_integration_tests::command_support::{CounterEvent, counter_processor};
use tributary_integration_tests::projection_support::EventsTopic;
use tributary_integration_tests::{kafka_bootstrap, pg_store, unique_prefix};

const AGGREGATES: u64 = 100;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Writes `events` counter events round-robin over 100 aggregates into partition 0.
fn write_history(bootstrap: &str, prefix: &str, events: u64) {
    let codec = EventsTopic::<CounterEvent>::new(prefix);
    let topic = codec.name.clone();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    for i in 0..events {
        let envelope = EventEnvelope::new(
            format!("agg-{}", i % AGGREGATES),
            i / AGGREGATES + 1,
            CounterEvent::Incremented { by: 1 },
        );
        let record = codec.encode(&envelope);
        let mut r = BaseRecord::to(&topic)
            .partition(0)
            .key(record.key.as_slice())
            .payload(record.value.as_slice())
            .headers(record.owned_headers());
        loop {
            match producer.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    producer.poll(Duration::from_millis(5));
                    r = back;
                }
            }
        }
        if i % 10_000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();
}

/// Outcome records in the dedup window (the newest ones).
const RECENT_OUTCOMES: u64 = 10_000;

/// Writes `outcomes` outcome records into partition 0 of the outcomes topic: all
/// but the last [`RECENT_OUTCOMES`] timestamped 2 days ago (outside the 24 h dedup
/// window), the rest now. Each carries one event, as a real outcome does.
fn write_outcomes(bootstrap: &str, prefix: &str, outcomes: u64) {
    let topic = tributary::command::wire::outcomes_topic(prefix, "counter");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let old = now - 48 * 3600 * 1000;
    for i in 0..outcomes {
        let payload = format!(
            r#"{{"command_id":"bench-{i}","outcome":"accepted","version":{v},"events":[{{"id":"00000000-0000-7000-8000-{i:012}","sequence":{v},"type":"counter.incremented","time":"2026-11-30T00:00:00Z","data":{{"Incremented":{{"by":1}}}}}}]}}"#,
            v = i / AGGREGATES + 1
        );
        let key = format!("agg-{}", i % AGGREGATES);
        let recent = i + RECENT_OUTCOMES >= outcomes;
        let mut r = BaseRecord::to(&topic)
            .partition(0)
            .key(key.as_str())
            .payload(payload.as_str())
            .timestamp(if recent { now } else { old });
        loop {
            match producer.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    producer.poll(Duration::from_millis(5));
                    r = back;
                }
            }
        }
        if i % 10_000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();
}

/// Starts a processor, waits for its restore of partition 0, returns (ms, records read).
async fn restore(
    bootstrap: &str,
    prefix: &str,
    store: Option<tributary::PgStore>,
    graceful: bool,
) -> (u64, u64, u64) {
    // Restores run inside the rebalance; allow a long one (1M events without snapshots).
    let mut processor =
        counter_processor(bootstrap, prefix, 1).settings(tributary::command::ProcessorSettings {
            session_timeout: Duration::from_secs(6),
            max_poll_interval: Duration::from_secs(600),
            ..Default::default()
        });
    if let Some(store) = store {
        processor = processor.snapshots(store);
    }
    let handle = processor.start().await.expect("processor");
    // Restored and owned (a restore runs on its own thread; the partition is
    // served, and snapshotted on shutdown, once the processor took it over).
    while handle.stats().counters().restores == 0 || handle.stats().owned_partitions().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ms = handle.stats().counters().restore_millis;
    let read = handle.stats().counters().restore_records_read;
    let outcomes = handle.stats().counters().restore_outcomes_read;
    if graceful {
        handle.shutdown().await.expect("shutdown");
    } else {
        handle.abort();
        let _ = handle.join().await;
    }
    (ms, read, outcomes)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bootstrap = kafka_bootstrap();
    let small = arg("--small", 10_000);
    let large = arg("--large", 1_000_000);
    let outcomes = arg("--outcomes", 1_000_000);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!("# bench_restore");
    println!(
        "machine: {cores} cores; broker: {}; Postgres: {}",
        tributary_integration_tests::describe_broker(&bootstrap),
        tributary_integration_tests::database_url()
    );
    println!(
        "settings: 1 partition, {AGGREGATES} aggregates, Counter snapshot_every = 10, flush_every = 1000, release build"
    );
    println!(
        "command: cargo run --release -p tributary-integration-tests --example bench_restore -- --small {small} --large {large} --outcomes {outcomes}"
    );
    println!();
    println!(
        "outcomes beside the events: {outcomes}, of which {RECENT_OUTCOMES} in the 24 h dedup window"
    );
    println!();
    println!(
        "| history (events) | without snapshots: ms / events read / outcomes read | with snapshots: ms / events read / outcomes read |"
    );
    println!("|---|---|---|");
    for history in [small, large] {
        let prefix = unique_prefix("bench-restore");
        // Create the topics with a processor, then write the history directly.
        restore(&bootstrap, &prefix, None, false).await;
        {
            let (b, p) = (bootstrap.clone(), prefix.clone());
            tokio::task::spawn_blocking(move || {
                write_history(&b, &p, history);
                write_outcomes(&b, &p, outcomes);
            })
            .await
            .unwrap();
        }
        let without = restore(&bootstrap, &prefix, None, false).await;
        // A processor with snapshots restores fully once and snapshots on hand-over…
        let store = pg_store(&prefix).await;
        restore(&bootstrap, &prefix, Some(store.clone()), true).await;
        // …so the next restore starts from the snapshots.
        let with = restore(&bootstrap, &prefix, Some(store), false).await;
        println!(
            "| {history} | {} ms / {} / {} | {} ms / {} / {} |",
            without.0, without.1, without.2, with.0, with.1, with.2
        );
    }
}

//! Point reads of one aggregate's history through the event index
//! (`tributary::history`): one events partition of `--events` events (default
//! 1,000,000) over `--aggregates` aggregates (default 100,000), written round-robin
//! so each aggregate's events are spread over the whole partition. The index is
//! built by the `EventIndex` projection (its rate is printed), then `--reads`
//! random aggregates (default 2,000) are read with `history(id, 1)` and with
//! `load(id)`, one after the other: p50, p99 and records fetched per read. The
//! baseline is what a read costs without the index: scanning the partition for the
//! aggregate's key (timed a few times, it does not depend on the aggregate).
//!
//! ```text
//! cargo run --release -p tributary-integration-tests --example bench_history -- [--events N] [--aggregates N] [--reads N]
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tributary::EventCodec;
use tributary::EventEnvelope;
use tributary::history::{EventIndex, History};
use tributary::kafka::EncodedRecordExt as _;
use tributary::projection::{ProjectionSettings, ProjectionWorker};
use tributary_integration_tests::command_support::{Counter, CounterEvent};
use tributary_integration_tests::projection_support::{EventsTopic, kafka_config};
use tributary_integration_tests::{
    create_topic, describe_broker, kafka_bootstrap, pg_store, unique_prefix,
};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn id(n: u64) -> String {
    format!("agg-{n:06}")
}

/// Writes `events` counter events round-robin over `aggregates` into partition 0.
fn write_log(bootstrap: &str, topic: &EventsTopic<CounterEvent>, events: u64, aggregates: u64) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    for i in 0..events {
        let envelope = EventEnvelope::new(
            id(i % aggregates),
            i / aggregates + 1,
            CounterEvent::Incremented { by: 1 },
        );
        let record = topic.encode(&envelope);
        let mut r = BaseRecord::to(&topic.name)
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
    producer.flush(Duration::from_secs(300)).unwrap();
}

/// Without an index: read the whole partition, keeping one key's records.
fn scan_for(bootstrap: &str, topic: &str, key: &str) -> (usize, Duration) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-history-scan")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let started = Instant::now();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut found = 0;
    loop {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) if m.key() == Some(key.as_bytes()) => found += 1,
            Some(Ok(_)) => {}
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => panic!("{e}"),
            None => panic!("the scan stalled"),
        }
    }
    (found, started.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// A cheap deterministic sequence of aggregate numbers.
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let events = arg("--events", 1_000_000);
    let aggregates = arg("--aggregates", 100_000);
    let reads = arg("--reads", 2_000) as usize;
    let bootstrap = kafka_bootstrap();
    println!("broker: {}", describe_broker(&bootstrap));
    let prefix = unique_prefix("bench-history");
    let store = pg_store(&prefix).await;
    let topic = EventsTopic::<CounterEvent>::new(&prefix);
    create_topic(&bootstrap, &topic.name, 1).await;

    let started = Instant::now();
    {
        let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
        tokio::task::spawn_blocking(move || write_log(&bootstrap, &topic, events, aggregates))
            .await
            .unwrap();
    }
    println!(
        "wrote {events} events over {aggregates} aggregates to one partition in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let report = ProjectionWorker::new(EventIndex, store.clone(), kafka_config(&bootstrap))
        .index::<Counter>(&prefix)
        .settings(ProjectionSettings {
            batch_size: 5_000,
            ..ProjectionSettings::default()
        })
        .rebuild()
        .await
        .unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "indexed {} events in {elapsed:.1} s: {:.0} events/s",
        report.events,
        report.events as f64 / elapsed
    );

    let history =
        History::<Counter>::connect(&kafka_config(&bootstrap), store, &prefix, EventCodec::new())
            .await
            .unwrap();
    let per_aggregate = events / aggregates;
    let mut rng = SplitMix(42);
    for (name, load) in [("history(id, 1)", false), ("load(id)", true)] {
        let before = history.records_read();
        let mut times = Vec::with_capacity(reads);
        for _ in 0..reads {
            let id = id(rng.below(aggregates));
            let started = Instant::now();
            let version = if load {
                history.load(&id).await.unwrap().1
            } else {
                history.history(&id, 1).await.unwrap().len() as u64
            };
            times.push(started.elapsed());
            assert_eq!(version, per_aggregate, "{id}");
        }
        times.sort();
        let mean = times.iter().sum::<Duration>().as_secs_f64() * 1000.0 / reads as f64;
        println!(
            "{name}: {reads} random aggregates of {per_aggregate} events: p50 {:.2} ms, p99 {:.2} ms, mean {mean:.2} ms, {:.1} records fetched per read",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            (history.records_read() - before) as f64 / reads as f64
        );
    }

    let mut scans = Vec::new();
    for n in [0, aggregates / 2, aggregates - 1] {
        let (bootstrap, topic, key) = (bootstrap.clone(), topic.name.clone(), id(n));
        let (found, took) = tokio::task::spawn_blocking(move || scan_for(&bootstrap, &topic, &key))
            .await
            .unwrap();
        assert_eq!(found as u64, per_aggregate);
        scans.push(took.as_secs_f64() * 1000.0);
    }
    println!(
        "baseline, no index: scanning the partition for one aggregate: {:.0} / {:.0} / {:.0} ms",
        scans[0], scans[1], scans[2]
    );
}

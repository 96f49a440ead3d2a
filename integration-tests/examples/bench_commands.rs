//! Command-side benchmark: sustained accepted commands/s and send latency at 1, 10
//! and 100 concurrent callers over 1,000 aggregates, and in the same run the
//! ceiling: a raw rdkafka transactional producer writing the same number of equally
//! sized records in equally sized transactions.
//!
//! ```text
//! cargo run --release -p tributary-integration-tests --example bench_commands -- [--commands N]
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tributary::kafka::EncodedRecordExt as _;

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tributary::command::{CommandGateway, ProcessorSettings, TopicSettings};
use tributary::{EventEnvelope, KafkaConfig};
use tributary_integration_tests::bench_load::{arg, machine};
use tributary_integration_tests::command_support::{Counter, CounterEvent, Increment};
use tributary_integration_tests::projection_support::EventsTopic;
use tributary_integration_tests::{create_topic, kafka_bootstrap, unique_prefix};

const AGGREGATES: usize = 1000;
const PARTITIONS: i32 = 4;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Run {
    callers: usize,
    commands: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    commands_per_txn: f64,
}

async fn framework_run(bootstrap: &str, callers: usize, commands: usize) -> Run {
    let prefix = unique_prefix("bench-cmd");
    let processor =
        tributary::command::CommandProcessor::<Counter>::new(KafkaConfig::new(bootstrap), &prefix)
            .unwrap()
            .settings(ProcessorSettings {
                session_timeout: Duration::from_secs(6),
                ..Default::default()
            })
            .topics(TopicSettings {
                partitions: PARTITIONS,
                reply_partitions: 4,
                ..Default::default()
            })
            .start()
            .await
            .expect("processor");
    let gateway = CommandGateway::connect_with_timeout(
        KafkaConfig::new(bootstrap),
        &prefix,
        Duration::from_secs(60),
    )
    .await
    .expect("gateway");
    // Warm up: the group's first assignment and every partition's restore.
    for i in 0..AGGREGATES.min(50) {
        gateway
            .send(Increment {
                id: format!("agg-{i}"),
                by: 1,
            })
            .await
            .expect("warm-up");
    }
    let (tx0, c0) = (
        processor.stats().counters().transactions,
        processor.stats().counters().commands,
    );
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let gateway = gateway.clone();
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= commands {
                    break latencies;
                }
                let t = Instant::now();
                let outcome = gateway
                    .send(Increment {
                        id: format!("agg-{}", i % AGGREGATES),
                        by: 1,
                    })
                    .await
                    .expect("send");
                assert!(outcome.is_accepted());
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut latencies = Vec::with_capacity(commands);
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let txns = processor.stats().counters().transactions - tx0;
    let cmds = processor.stats().counters().commands - c0;
    processor.shutdown().await.expect("shutdown");
    Run {
        callers,
        commands,
        elapsed,
        latencies,
        commands_per_txn: cmds as f64 / txns.max(1) as f64,
    }
}

/// The raw ceiling: the same number of records the framework writes per command
/// (event + outcome + reply), each of an event record's size, in transactions of
/// the framework's measured batch size.
fn raw_run(
    bootstrap: &str,
    topic: &str,
    records: usize,
    per_txn: usize,
    record: &tributary::EncodedRecord,
) -> Duration {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", format!("{topic}.raw"))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .create()
        .expect("producer");
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init");
    let started = Instant::now();
    let mut written = 0;
    while written < records {
        producer.begin_transaction().expect("begin");
        for _ in 0..per_txn.min(records - written) {
            let headers = record.owned_headers();
            let mut r = BaseRecord::to(topic)
                .partition((written % PARTITIONS as usize) as i32)
                .key(record.key.as_slice())
                .payload(record.value.as_slice())
                .headers(headers);
            loop {
                match producer.send(r) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        producer.poll(Duration::from_millis(1));
                        r = back;
                    }
                }
            }
            written += 1;
        }
        // Same delivery-report draining as the processor (rdkafka's flush polls in
        // 100 ms steps).
        while producer.in_flight_count() > 0 {
            producer.poll(Duration::from_millis(1));
        }
        producer
            .commit_transaction(Duration::from_secs(30))
            .expect("commit");
    }
    started.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bootstrap = kafka_bootstrap();
    let commands = arg("--commands", 20_000);
    println!("# bench_commands");
    println!("machine: {}", machine());
    println!(
        "broker: {}",
        tributary_integration_tests::describe_broker(&bootstrap)
    );
    println!(
        "settings: {PARTITIONS} partitions, {AGGREGATES} aggregates, {commands} commands per run, processor defaults \
         (max_batch 500, batch_linger 2 ms, linger.ms 1, fetch.wait.max.ms 5), one processor instance"
    );
    println!(
        "command: cargo run --release -p tributary-integration-tests --example bench_commands -- --commands {commands}"
    );
    println!();
    println!(
        "| callers | commands/s | p50 ms | p99 ms | max ms | commands/txn | raw records/s | raw commands/s equiv. | framework / raw |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let codec = EventsTopic::<CounterEvent>::new("bench");
    let sample = codec.encode(&EventEnvelope::new(
        "agg-123",
        42,
        CounterEvent::Incremented { by: 1 },
    ));
    for callers in [1, 10, 100] {
        let n = if callers == 1 {
            commands / 10
        } else {
            commands
        };
        let run = framework_run(&bootstrap, callers, n).await;
        let rate = run.commands as f64 / run.elapsed.as_secs_f64();
        // Same run, same broker: the raw transactional ceiling.
        let topic = format!("{}.raw", unique_prefix("bench-raw"));
        create_topic(&bootstrap, &topic, PARTITIONS).await;
        let per_txn = run.commands_per_txn.round().max(1.0) as usize;
        let records = run.commands * 3;
        let raw_elapsed = {
            let (b, t, s) = (bootstrap.clone(), topic.clone(), sample.clone());
            tokio::task::spawn_blocking(move || raw_run(&b, &t, records, per_txn * 3, &s))
                .await
                .unwrap()
        };
        let raw_rate = records as f64 / raw_elapsed.as_secs_f64();
        let raw_cmds = raw_rate / 3.0;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.2} |",
            run.callers,
            rate,
            ms(percentile(&run.latencies, 0.5)),
            ms(percentile(&run.latencies, 0.99)),
            ms(*run.latencies.last().unwrap()),
            run.commands_per_txn,
            raw_rate,
            raw_cmds,
            rate / raw_cmds,
        );
    }
}

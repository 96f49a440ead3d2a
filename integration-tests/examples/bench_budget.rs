//! The latency budget of one command: where the time of a single caller's command
//! goes, hop by hop, and the floor that Kafka itself sets on this machine.
//!
//! 1. The framework: one caller sends `--commands` commands (default 500) one after
//!    the other, on one processor instance with default settings. Besides the
//!    end-to-end latency at the gateway, the processor's own histograms
//!    (`tributary::telemetry`) split its share: deciding the batch (handler calls and
//!    the produce calls of events and outcomes) and `commit_transaction`.
//! 2. The same hops with bare rdkafka clients configured as the framework's
//!    (`linger.ms` 1, `acks` all, idempotence, `fetch.wait.max.ms` 5), one at a time
//!    on the same broker: a record produced and seen by an assigned consumer (the
//!    command's way to the processor, and the reply's way back), and a transaction
//!    like the processor's, step by step (begin, an event and an outcome produced
//!    and delivered, commit). Then the way in of records produced the moment such
//!    a transaction commits, as a hot round's commands are: one record, and
//!    `--callers` records at once (the first and the last seen).
//!
//! The sum of the bare hops is the floor of one command with a Kafka transaction
//! per command on this broker; the framework's median is compared with it. It is
//! also the floor of a closed-loop caller's round on a hot aggregate: each command
//! goes in, is decided in a transaction that begins after it arrived, and comes
//! back. The program prints what `--callers` callers (default 50, as in
//! `bench_peer`'s hot scenario) would do with rounds at that floor.
//!
//! 3. The broker's transaction capacity: the same bare transactions, back to back,
//!    by 1, 2 and 4 producers at once (`--parallel`), each on partitions of its
//!    own, as a processor's partitions run theirs: transactions per second in all
//!    and the latency of one. Under load a processor commits one transaction per
//!    owned partition per batch, so this bounds how often each partition can
//!    commit, and so the batching delay a command sees.
//!
//! ```text
//! cargo run --release -p tributary-integration-tests --example bench_budget -- [--commands N] [--parallel 1,2,4] [--linger MS] [--callers N]
//! ```
//!
//! `--linger` sets `linger.ms` of every producer, the framework's included (default:
//! the framework's 1 ms).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tributary::command::{CommandGateway, CommandProcessor, ProcessorSettings, TopicSettings};
use tributary::{KafkaConfig, telemetry};
use tributary_integration_tests::bench_load::{arg, arg_list, arg_millis};
use tributary_integration_tests::command_support::{Counter, Increment};
use tributary_integration_tests::{create_topic, describe_broker, kafka_bootstrap, unique_prefix};

/// p50 and p99 of samples in seconds, in milliseconds.
fn quantiles(samples: &mut [f64]) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    samples.sort_by(f64::total_cmp);
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize] * 1000.0;
    (at(0.5), at(0.99))
}

/// Every sample of each histogram recorded since the last call, by metric name.
fn histograms(snapshotter: &Snapshotter) -> HashMap<String, Vec<f64>> {
    let mut out: HashMap<String, Vec<f64>> = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if let DebugValue::Histogram(samples) = value {
            out.entry(key.key().name().to_owned())
                .or_default()
                .extend(samples.into_iter().map(|s| s.into_inner()));
        }
    }
    out
}

struct Row {
    hop: &'static str,
    p50: f64,
    p99: f64,
    moved_by: &'static str,
}

fn print_rows(rows: &[Row]) {
    println!("| hop | p50 ms | p99 ms | what moves it |");
    println!("|---|---:|---:|---|");
    for r in rows {
        println!(
            "| {} | {:.2} | {:.2} | {} |",
            r.hop, r.p50, r.p99, r.moved_by
        );
    }
}

/// The framework's Kafka settings, with `linger.ms` when `--linger` is given.
fn kafka_config(bootstrap: &str, linger: Option<f64>) -> KafkaConfig {
    let kafka = KafkaConfig::new(bootstrap);
    match linger {
        Some(ms) => kafka.set("linger.ms", ms.to_string()),
        None => kafka,
    }
}

async fn framework(
    bootstrap: &str,
    commands: usize,
    linger: Option<f64>,
    snapshotter: &Snapshotter,
) -> Vec<Row> {
    let prefix = unique_prefix("bench-budget");
    let processor = CommandProcessor::<Counter>::new(kafka_config(bootstrap, linger), &prefix)
        .unwrap()
        .settings(ProcessorSettings {
            session_timeout: Duration::from_secs(6),
            ..Default::default()
        })
        .topics(TopicSettings {
            partitions: 4,
            reply_partitions: 1,
            ..Default::default()
        })
        .start()
        .await
        .expect("processor");
    let gateway = CommandGateway::connect_with_timeout(
        kafka_config(bootstrap, linger),
        &prefix,
        Duration::from_secs(60),
    )
    .await
    .expect("gateway");
    // Warm up: the group's assignment, every partition's restore, the connections.
    for i in 0..50 {
        let id = format!("agg-{i}");
        gateway
            .send(Increment { id, by: 1 })
            .await
            .expect("warm-up");
    }
    let _ = histograms(snapshotter);
    let mut end_to_end = Vec::with_capacity(commands);
    for i in 0..commands {
        let started = Instant::now();
        let id = format!("agg-{}", i % 1000);
        let outcome = gateway.send(Increment { id, by: 1 }).await.expect("send");
        assert!(outcome.is_accepted());
        end_to_end.push(started.elapsed().as_secs_f64());
    }
    let mut recorded = histograms(snapshotter);
    processor.shutdown().await.expect("shutdown");
    let mut take =
        |name: &str| quantiles(recorded.get_mut(name).map_or(&mut [][..], |v| &mut v[..]));
    let (e50, e99) = quantiles(&mut end_to_end);
    let (d50, d99) = take(telemetry::DECIDE_BATCH_SECONDS);
    let (c50, c99) = take(telemetry::TRANSACTION_COMMIT_SECONDS);
    vec![
        Row {
            hop: "**framework: one command, end to end at the caller**",
            p50: e50,
            p99: e99,
            moved_by: "the sum of the hops below",
        },
        Row {
            hop: "processor: begin + decide + produce events and outcome (`decide_batch`)",
            p50: d50,
            p99: d99,
            moved_by: "handler cost; the first produce of a transaction adds the partition to it (one round trip)",
        },
        Row {
            hop: "processor: `commit_transaction`",
            p50: c50,
            p99: c99,
            moved_by: "broker: transaction markers and the transaction log write; `linger.ms` of the transactional producer",
        },
    ]
}

fn producer(bootstrap: &str, linger: f64, extra: &[(&str, &str)]) -> BaseProducer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger.to_string());
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config.create().expect("producer")
}

/// A transactional producer with `transactional_id`, its transactions initialised.
fn transactional(bootstrap: &str, transactional_id: &str, linger: f64) -> BaseProducer {
    let producer = producer(
        bootstrap,
        linger,
        &[
            ("transactional.id", transactional_id),
            ("transaction.timeout.ms", "10000"),
        ],
    );
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init transactions");
    producer
}

/// Produces `payload` to partition 0 of `topic`.
fn send(producer: &BaseProducer, topic: &str, payload: &str) {
    producer
        .send(BaseRecord::to(topic).partition(0).key("k").payload(payload))
        .map_err(|(e, _)| e)
        .unwrap();
}

fn wait_delivered(producer: &BaseProducer) {
    while producer.in_flight_count() > 0 {
        producer.poll(Duration::from_millis(1));
    }
}

/// A consumer configured as the processor's (`read_committed`, `fetch.wait.max.ms`
/// 5), assigned to the end of partition 0 of `topic` in a group named after it and
/// `role`, and polled until it has found that end.
fn reader(bootstrap: &str, topic: &str, role: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}.{role}"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::End).unwrap();
    consumer.assign(&tpl).unwrap();
    // Let the consumer find the end of the partition before the first record.
    for _ in 0..20 {
        consumer.poll(Duration::from_millis(50));
    }
    consumer
}

/// A record produced and seen by an assigned consumer: `(produce → delivery report,
/// produce → consumed)` per record.
fn produce_and_fetch(bootstrap: &str, topic: &str, n: usize, linger: f64) -> (Vec<f64>, Vec<f64>) {
    let producer = producer(bootstrap, linger, &[]);
    let consumer = reader(bootstrap, topic, "reader");
    let (mut delivered, mut consumed) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n + 10 {
        let payload = i.to_string();
        let started = Instant::now();
        send(&producer, topic, &payload);
        let mut delivery = None;
        loop {
            if delivery.is_none() {
                producer.poll(Duration::ZERO);
                if producer.in_flight_count() == 0 {
                    delivery = Some(started.elapsed());
                }
            }
            match consumer.poll(Duration::from_micros(200)) {
                Some(Ok(m)) if m.payload() == Some(payload.as_bytes()) => break,
                Some(Ok(_)) | None => {}
                Some(Err(e)) => panic!("{e}"),
            }
        }
        let seen = started.elapsed();
        wait_delivered(&producer);
        let delivery = delivery.unwrap_or_else(|| started.elapsed());
        if i >= 10 {
            delivered.push(delivery.as_secs_f64());
            consumed.push(seen.as_secs_f64());
        }
    }
    (delivered, consumed)
}

/// A transaction like the processor's, `n` times: begin, an event and an outcome
/// produced and delivered, commit. (The processor keeps its position in the
/// outcome's header, so it sends no offsets to the transaction.) Samples of each
/// step and of the whole.
fn transactions(bootstrap: &str, prefix: &str, n: usize, linger: f64) -> [Vec<f64>; 3] {
    let (events, outcomes) = (format!("{prefix}.events"), format!("{prefix}.outcomes"));
    let producer = transactional(bootstrap, &format!("{prefix}.tx"), linger);
    let mut steps: [Vec<f64>; 3] = Default::default();
    let timeout = Duration::from_secs(10);
    for i in 0..n + 10 {
        let payload = i.to_string();
        let started = Instant::now();
        producer.begin_transaction().unwrap();
        for topic in [&events, &outcomes] {
            send(&producer, topic, &payload);
        }
        wait_delivered(&producer);
        let produced = started.elapsed();
        producer.commit_transaction(timeout).unwrap();
        let committed = started.elapsed();
        if i >= 10 {
            steps[0].push(produced.as_secs_f64());
            steps[1].push((committed - produced).as_secs_f64());
            steps[2].push(committed.as_secs_f64());
        }
    }
    steps
}

/// The way in of commands sent the moment a transaction commits, as in a hot
/// round: a transaction like the processor's (begin, an event and an outcome,
/// commit), then at once `count` records produced by a plain producer and read by an
/// assigned consumer. Per sample: produce → the first seen, produce → the last seen.
/// Alternates with `count` = 1 on odd rounds, returned apart: `(one, first, last)`.
fn way_in_after_commit(
    bootstrap: &str,
    prefix: &str,
    n: usize,
    count: usize,
    linger: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (events, outcomes, records) = (
        format!("{prefix}.events"),
        format!("{prefix}.outcomes"),
        format!("{prefix}.records"),
    );
    let tx = transactional(bootstrap, &format!("{prefix}.after-commit"), linger);
    let plain = producer(bootstrap, linger, &[]);
    let consumer = reader(bootstrap, &records, "after-commit");
    let (mut one, mut first, mut last) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..2 * (n + 10) {
        tx.begin_transaction().unwrap();
        for topic in [&events, &outcomes] {
            send(&tx, topic, "e");
        }
        wait_delivered(&tx);
        tx.commit_transaction(Duration::from_secs(10)).unwrap();
        let round = if i % 2 == 1 { 1 } else { count };
        let started = Instant::now();
        for j in 0..round {
            send(&plain, &records, &format!("{i}-{j}"));
        }
        let (mut seen, mut first_seen) = (0, None);
        let tag = format!("{i}-");
        while seen < round {
            plain.poll(Duration::ZERO);
            match consumer.poll(Duration::from_micros(200)) {
                Some(Ok(m)) if m.payload().is_some_and(|p| p.starts_with(tag.as_bytes())) => {
                    seen += 1;
                    first_seen.get_or_insert_with(|| started.elapsed());
                }
                Some(Ok(_)) | None => {}
                Some(Err(e)) => panic!("{e}"),
            }
        }
        let all_seen = started.elapsed();
        wait_delivered(&plain);
        if i >= 20 {
            let first_seen = first_seen.unwrap_or(all_seen).as_secs_f64();
            if round == 1 {
                one.push(first_seen);
            } else {
                first.push(first_seen);
                last.push(all_seen.as_secs_f64());
            }
        }
    }
    (one, first, last)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let commands = arg("--commands", 500);
    let callers = arg("--callers", 50);
    let linger = arg_millis("--linger");
    let bare_linger = linger.unwrap_or(1.0);
    let bootstrap = kafka_bootstrap();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("metrics recorder");
    println!("# bench_budget");
    println!("broker: {}", describe_broker(&bootstrap));
    println!(
        "command: cargo run --release -p tributary-integration-tests --example bench_budget -- --commands {commands} --callers {callers}{}",
        linger.map_or(String::new(), |ms| format!(" --linger {ms}"))
    );
    println!("linger.ms of every producer: {bare_linger}");
    println!();

    let mut rows = framework(&bootstrap, commands, linger, &snapshotter).await;

    let prefix = unique_prefix("bench-budget-raw");
    for topic in ["records", "events", "outcomes"] {
        create_topic(&bootstrap, &format!("{prefix}.{topic}"), 1).await;
    }
    let (mut delivered, mut consumed, mut steps, (mut one, mut first, mut last)) = {
        let (b, p) = (bootstrap.clone(), prefix.clone());
        tokio::task::spawn_blocking(move || {
            let (d, c) = produce_and_fetch(&b, &format!("{p}.records"), commands, bare_linger);
            let steps = transactions(&b, &p, commands, bare_linger);
            let after = way_in_after_commit(&b, &p, commands, callers, bare_linger);
            (d, c, steps, after)
        })
        .await
        .unwrap()
    };
    let (d50, d99) = quantiles(&mut delivered);
    let (f50, f99) = quantiles(&mut consumed);
    let [produce, commit, whole] = &mut steps;
    let (p50, p99) = quantiles(produce);
    let (c50, c99) = quantiles(commit);
    let (t50, t99) = quantiles(whole);
    let (o50, o99) = quantiles(&mut one);
    let (a50, a99) = quantiles(&mut first);
    let (l50, l99) = quantiles(&mut last);
    let floor = f50 + t50 + f50;
    rows.extend([
        Row {
            hop: "bare: produce → delivery report (`acks` all, idempotent)",
            p50: d50,
            p99: d99,
            moved_by: "`linger.ms`; `acks`; the broker's request handling",
        },
        Row {
            hop: "bare: produce → seen by an assigned consumer (the command's way in; the reply's way back)",
            p50: f50,
            p99: f99,
            moved_by: "`linger.ms`; `fetch.wait.max.ms` (5) only when the fetch was parked before the record came",
        },
        Row {
            hop: "bare: right after a commit, 1 record produced → seen",
            p50: o50,
            p99: o99,
            moved_by: "as above, and the broker still finishing the transaction it just committed",
        },
        Row {
            hop: "bare: right after a commit, `--callers` records produced at once → the first seen",
            p50: a50,
            p99: a99,
            moved_by: "as above, with the records of a hot round's callers",
        },
        Row {
            hop: "bare: right after a commit, `--callers` records produced at once → the last seen",
            p50: l50,
            p99: l99,
            moved_by: "as above; the gap to the first is what gathering a round waits for",
        },
        Row {
            hop: "bare transaction: begin + 2 records produced and delivered",
            p50,
            p99,
            moved_by: "adding the partitions to the transaction (one round trip to the coordinator) + the produce",
        },
        Row {
            hop: "bare transaction: `commit_transaction`",
            p50: c50,
            p99: c99,
            moved_by: "the coordinator's prepare/complete writes and markers",
        },
        Row {
            hop: "bare transaction, whole",
            p50: t50,
            p99: t99,
            moved_by: "",
        },
        Row {
            hop: "**floor: way in + transaction + way back (sum of the bare medians)**",
            p50: floor,
            p99: f64::NAN,
            moved_by: "the broker and the machine",
        },
    ]);
    print_rows(&rows);
    println!();
    println!(
        "a round at the floor: {callers} closed-loop callers on one aggregate ÷ {floor:.2} ms = {:.0} commands/s",
        callers as f64 * 1000.0 / floor
    );
    capacity(&bootstrap, commands, bare_linger).await;
}

/// Section 3: `p` bare transaction loops at once, each with its own topics, for
/// each `p` of `--parallel`.
async fn capacity(bootstrap: &str, commands: usize, linger: f64) {
    println!();
    println!(
        "| transactional producers at once | transactions/s in all | one transaction p50 / p99 ms |"
    );
    println!("|---:|---:|---:|");
    for parallel in arg_list("--parallel", &[1, 2, 4]) {
        let mut prefixes = Vec::with_capacity(parallel);
        for _ in 0..parallel {
            let prefix = unique_prefix("bench-budget-cap");
            for topic in ["events", "outcomes"] {
                create_topic(bootstrap, &format!("{prefix}.{topic}"), 1).await;
            }
            prefixes.push(prefix);
        }
        let started = Instant::now();
        let loops: Vec<_> = prefixes
            .into_iter()
            .map(|prefix| {
                let b = bootstrap.to_owned();
                tokio::task::spawn_blocking(move || transactions(&b, &prefix, commands, linger))
            })
            .collect();
        let mut whole = Vec::new();
        for l in loops {
            let [_, _, w] = l.await.unwrap();
            whole.extend(w);
        }
        // A loop's set-up (init_transactions) is no transaction
        // time: the window is the mean time the loops spent in transactions.
        let wall = started.elapsed().as_secs_f64();
        let busy = whole.iter().sum::<f64>() / parallel as f64;
        let (p50, p99) = quantiles(&mut whole);
        println!(
            "| {parallel} | {:.0} | {p50:.2} / {p99:.2} |",
            whole.len() as f64 / busy.min(wall)
        );
    }
}

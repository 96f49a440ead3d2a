//! Projection throughput: a full rebuild of a simple upsert read model, against two
//! ceilings measured in the same run on the same records: a raw rdkafka consumer
//! (Kafka ceiling) and raw sqlx batch upserts of the same rows (Postgres ceiling).
//!
//! ```text
//! cargo run --release -p tributary-integration-tests --example bench_projection -- --events 1000000
//! ```
//!
//! Options: `--events N` (default 200000), `--partitions P` (default 2),
//! `--batch-size B` (default 2000), `--accounts K` (default 10000),
//! `--at-once A`: the worker's `max_partitions_at_once` (default: P).
//! Needs the services (`eval "$(scripts/services.sh up)"`).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sqlx::PgConnection;
use tributary::EventEnvelope;
use tributary::projection::{
    HandlerError, Handles, Projection, ProjectionSettings, ProjectionWorker,
};
use tributary_integration_tests::bench_load::process_cpu;
use tributary_integration_tests::projection_support::{
    AccountEvent, EventsTopic, RawRecord, database_url, kafka_config, produce, test_store,
};
use tributary_integration_tests::{create_topic, kafka_bootstrap, unique_prefix};

/// The read model: per account the number of events and the balance, one upsert
/// per event (pre-aggregated per account within a batch, which has the same effect).
struct Balances;

impl Projection for Balances {
    const NAME: &'static str = "bench_balances";

    async fn migrate(&self, tx: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS bench_balances (
                id text PRIMARY KEY, events bigint NOT NULL, balance bigint NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query("TRUNCATE bench_balances")
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

impl Handles<AccountEvent> for Balances {
    const BATCHED: bool = true;

    async fn handle(
        &self,
        event: &EventEnvelope<AccountEvent>,
        tx: &mut PgConnection,
    ) -> Result<(), HandlerError> {
        upsert(
            tx,
            &[(
                event.aggregate_id.as_str().to_owned(),
                1,
                event.event.delta(),
            )],
        )
        .await?;
        Ok(())
    }

    async fn handle_batch(
        &self,
        events: &[&EventEnvelope<AccountEvent>],
        tx: &mut PgConnection,
    ) -> Result<(), HandlerError> {
        let rows = aggregate(
            events
                .iter()
                .map(|e| (e.aggregate_id.as_str(), e.event.delta())),
        );
        upsert(tx, &rows).await?;
        Ok(())
    }
}

fn aggregate<'a>(rows: impl Iterator<Item = (&'a str, i64)>) -> Vec<(String, i64, i64)> {
    let mut by_id: HashMap<&str, (i64, i64)> = HashMap::new();
    for (id, delta) in rows {
        let entry = by_id.entry(id).or_insert((0, 0));
        entry.0 += 1;
        entry.1 += delta;
    }
    by_id
        .into_iter()
        .map(|(id, (n, b))| (id.to_owned(), n, b))
        .collect()
}

async fn upsert(tx: &mut PgConnection, rows: &[(String, i64, i64)]) -> Result<(), sqlx::Error> {
    let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let counts: Vec<i64> = rows.iter().map(|r| r.1).collect();
    let deltas: Vec<i64> = rows.iter().map(|r| r.2).collect();
    sqlx::query(
        "INSERT INTO bench_balances (id, events, balance)
         SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[])
         ON CONFLICT (id) DO UPDATE SET events = bench_balances.events + EXCLUDED.events,
             balance = bench_balances.balance + EXCLUDED.balance",
    )
    .bind(ids)
    .bind(counts)
    .bind(deltas)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

struct Args {
    events: usize,
    partitions: i32,
    batch_size: usize,
    accounts: usize,
    /// `max_partitions_at_once`; `None`: one per partition.
    at_once: Option<usize>,
}

fn parse_args() -> Args {
    let mut args = Args {
        events: 200_000,
        partitions: 2,
        batch_size: 2000,
        accounts: 10_000,
        at_once: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let number: usize = value
            .parse()
            .unwrap_or_else(|_| panic!("{flag}: not a number: {value}"));
        match flag.as_str() {
            "--events" => args.events = number,
            "--partitions" => args.partitions = i32::try_from(number).expect("partitions"),
            "--batch-size" => args.batch_size = number,
            "--accounts" => args.accounts = number,
            "--at-once" => args.at_once = Some(number),
            other => panic!("unknown option {other}; see the file's header"),
        }
    }
    args
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let at_once = args
        .at_once
        .unwrap_or(usize::try_from(args.partitions).unwrap_or(1).max(1));
    // The worker's per-event spans are DEBUG in the default build. This crate
    // builds the framework with `otel` (for the trace test), which makes them INFO,
    // and a fmt subscriber at INFO would record a million of them: what an `otel`
    // user with an exporter pays, not what the default build does. Leave them off
    // unless RUST_LOG asks for them.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(
                    "tributary=info,tributary::projection::worker::apply=warn",
                )
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("bench").replace("it-", "");
    let codec = EventsTopic::<AccountEvent>::new(&prefix);
    let topic = codec.name.clone();
    let store = test_store(&prefix.replace('-', "_")).await;
    let pg_version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(store.pool())
        .await
        .expect("postgres version");

    println!("# bench_projection");
    println!(
        "command:   cargo run --release -p tributary-integration-tests --example bench_projection -- {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    println!(
        "machine:   {} CPUs ({}), {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model(),
        std::env::consts::OS
    );
    println!(
        "broker:    {}",
        tributary_integration_tests::describe_broker(&bootstrap)
    );
    println!(
        "postgres:  {} (server {pg_version}), schema {}",
        database_url(),
        store.schema()
    );
    println!(
        "settings:  events={} partitions={} batch_size={} accounts={} max_partitions_at_once={} topic={topic}",
        args.events, args.partitions, args.batch_size, args.accounts, at_once
    );

    // Load.
    create_topic(&bootstrap, &topic, args.partitions).await;
    let mut seq = vec![0u64; args.accounts];
    let records: Vec<RawRecord> = (0..args.events)
        .map(|i| {
            let account = (i * 7919) % args.accounts;
            seq[account] += 1;
            let event = if i % 3 == 0 {
                AccountEvent::Withdrawn {
                    amount: (i % 17) as i64,
                }
            } else {
                AccountEvent::Deposited {
                    amount: (i % 101) as i64,
                }
            };
            codec
                .encode(&EventEnvelope::new(
                    format!("acc-{account}"),
                    seq[account],
                    event,
                ))
                .into()
        })
        .collect();
    let expected_rows = aggregate(records.iter().map(|r| {
        let json: serde_json::Value =
            serde_json::from_slice(r.value.as_deref().unwrap_or_default()).expect("json");
        let amount = json["amount"].as_i64().unwrap_or(0);
        let ce_type = r
            .headers
            .iter()
            .find(|(n, _)| n == "ce_type")
            .map(|(_, v)| v.as_slice());
        let delta = if ce_type == Some(b"account.withdrawn.v1") {
            -amount
        } else {
            amount
        };
        (std::str::from_utf8(&r.key).unwrap_or_default(), delta)
    }));
    let bytes: usize = records
        .iter()
        .map(|r| {
            r.key.len()
                + r.value.as_ref().map_or(0, Vec::len)
                + r.headers
                    .iter()
                    .map(|(n, v)| n.len() + v.len())
                    .sum::<usize>()
        })
        .sum();
    let started = Instant::now();
    produce(&bootstrap, &topic, records).await;
    let produce_time = started.elapsed();
    println!(
        "load:      {} records ({:.0} bytes/record) produced in {:.1} s ({:.0}/s)",
        args.events,
        bytes as f64 / args.events as f64,
        produce_time.as_secs_f64(),
        rate(args.events, produce_time)
    );

    // Kafka ceiling: a raw consumer reading the same records.
    let kafka_time = {
        let (bootstrap, topic, events, partitions) = (
            bootstrap.clone(),
            topic.clone(),
            args.events,
            args.partitions,
        );
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", format!("{topic}-raw"))
                .set("enable.auto.commit", "false")
                .set("isolation.level", "read_committed")
                .create()
                .expect("consumer");
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition_offset(&topic, p, Offset::Beginning)
                    .expect("tpl");
            }
            consumer.assign(&tpl).expect("assign");
            let started = Instant::now();
            let (mut n, mut sum) = (0usize, 0usize);
            while n < events {
                match consumer.poll(Duration::from_secs(10)) {
                    Some(Ok(m)) => {
                        n += 1;
                        sum += m.payload().map_or(0, <[u8]>::len);
                    }
                    Some(Err(KafkaError::PartitionEOF(_))) => {}
                    Some(Err(e)) => panic!("raw consumer: {e}"),
                    None => panic!("raw consumer: no record for 10 s after {n}"),
                }
            }
            assert!(sum > 0);
            started.elapsed()
        })
        .await
        .expect("raw consumer thread")
    };

    // Postgres ceiling: the same rows, batch upserts of `batch_size` events per
    // transaction, plus the checkpoint-like single-row update the worker does.
    let pg_time = {
        let mut conn = store.pool().acquire().await.expect("connection");
        sqlx::query("CREATE TABLE IF NOT EXISTS bench_balances_raw (id text PRIMARY KEY, events bigint NOT NULL, balance bigint NOT NULL)")
            .execute(&mut *conn)
            .await
            .expect("create");
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS bench_cursor (id int PRIMARY KEY, at bigint NOT NULL)",
        )
        .execute(&mut *conn)
        .await
        .expect("create");
        sqlx::query("INSERT INTO bench_cursor VALUES (1, 0) ON CONFLICT DO NOTHING")
            .execute(&mut *conn)
            .await
            .expect("cursor");
        // Rebuild the per-event rows in log order to batch them as the worker does.
        let per_event: Vec<(String, i64)> = (0..args.events)
            .map(|i| {
                let account = (i * 7919) % args.accounts;
                let delta = if i % 3 == 0 {
                    -((i % 17) as i64)
                } else {
                    (i % 101) as i64
                };
                (format!("acc-{account}"), delta)
            })
            .collect();
        let started = Instant::now();
        for (n, chunk) in per_event.chunks(args.batch_size).enumerate() {
            let rows = aggregate(chunk.iter().map(|(id, d)| (id.as_str(), *d)));
            let mut tx = store.pool().begin().await.expect("begin");
            let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
            let counts: Vec<i64> = rows.iter().map(|r| r.1).collect();
            let deltas: Vec<i64> = rows.iter().map(|r| r.2).collect();
            sqlx::query(
                "INSERT INTO bench_balances_raw (id, events, balance)
                 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[])
                 ON CONFLICT (id) DO UPDATE SET events = bench_balances_raw.events + EXCLUDED.events,
                     balance = bench_balances_raw.balance + EXCLUDED.balance",
            )
            .bind(ids)
            .bind(counts)
            .bind(deltas)
            .execute(&mut *tx)
            .await
            .expect("upsert");
            sqlx::query("UPDATE bench_cursor SET at = $1 WHERE id = 1 AND at = $2")
                .bind(((n + 1) * args.batch_size) as i64)
                .bind((n * args.batch_size) as i64)
                .execute(&mut *tx)
                .await
                .expect("cursor");
            tx.commit().await.expect("commit");
        }
        started.elapsed()
    };

    // The projection: a full rebuild (reset, checkpoints deleted, replay).
    let worker = ProjectionWorker::new(Balances, store.clone(), kafka_config(&bootstrap))
        .subscribe(&codec.prefix, codec.codec.clone())
        .settings(ProjectionSettings {
            batch_size: args.batch_size,
            max_partitions_at_once: at_once,
            progress_interval: Duration::from_secs(5),
            ..ProjectionSettings::default()
        });
    let cpu_before = process_cpu();
    let report = worker.rebuild().await.expect("rebuild");
    let projection_time = report.elapsed;
    let cpu = cpu_before.zip(process_cpu()).map(|(a, b)| b - a);

    // The read model must be right, or the numbers mean nothing.
    let mut actual: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT id, events, balance FROM bench_balances")
            .fetch_all(store.pool())
            .await
            .expect("read model");
    let mut expected = expected_rows;
    actual.sort();
    expected.sort();
    assert_eq!(
        actual.len(),
        expected.len(),
        "read model has the wrong number of accounts"
    );
    assert!(actual == expected, "read model differs from the events");
    assert_eq!(report.events, args.events as u64);

    let projection = rate(args.events, projection_time);
    let kafka = rate(args.events, kafka_time);
    let postgres = rate(args.events, pg_time);
    println!();
    println!("| measurement | time (s) | events/s |");
    println!("|---|---:|---:|");
    println!(
        "| projection rebuild (decode + batch upsert + checkpoint, reset included) | {:.2} | {:.0} |",
        projection_time.as_secs_f64(),
        projection
    );
    println!(
        "| Kafka ceiling: raw rdkafka BaseConsumer, same records | {:.2} | {:.0} |",
        kafka_time.as_secs_f64(),
        kafka
    );
    println!(
        "| Postgres ceiling: raw sqlx UNNEST upserts, same rows, {} per transaction | {:.2} | {:.0} |",
        args.batch_size,
        pg_time.as_secs_f64(),
        postgres
    );
    println!();
    println!("ratio to Kafka ceiling:    {:.2}", projection / kafka);
    println!("ratio to Postgres ceiling: {:.2}", projection / postgres);
    println!(
        "ratio to slower ceiling:   {:.2}",
        projection / kafka.min(postgres)
    );
    if let Some(cpu) = cpu {
        println!(
            "rebuild CPU of this process: {:.2} s, {:.2} µs/event",
            cpu.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / args.events as f64
        );
    }
    println!(
        "read model verified: {} accounts, {} events",
        actual.len(),
        args.events
    );

    let _ = sqlx::query(&format!("DROP SCHEMA {} CASCADE", store.schema()))
        .execute(store.pool())
        .await;
}

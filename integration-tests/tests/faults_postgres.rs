//! A Postgres outage (issue 9, scenario 12): the network to Postgres is cut for
//! 10 s by a TCP proxy while commands flow. The command processor (whose snapshot
//! writer uses Postgres) must go on accepting commands, and its snapshots catch up
//! after the heal; the projection worker must stall, retry, and resume on its own
//! without parking anything. Nothing is lost: the read model ends equal to the log,
//! and a restarted processor restores every aggregate at its last version.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tributary::command::{CommandGateway, CommandOutcome, ProcessorSettings};
use tributary::projection::WorkerState;
use tributary::{KafkaConfig, PgStore};
use tributary_integration_tests::command_support::{
    Check, counter_log_ids, counter_log_worker, counter_processor, increment, test_settings,
};
use tributary_integration_tests::projection_support::wait_until;
use tributary_integration_tests::proxy::Proxy;
use tributary_integration_tests::raw_log::{self, Isolation};
use tributary_integration_tests::{database_url, kafka_bootstrap, pg_store, unique_prefix};

const AGGREGATES: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_outage_loses_nothing_and_recovers_on_its_own() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("fault-pg");
    let direct = pg_store(&prefix).await; // creates and migrates the schema
    let schema = prefix.replace('-', "_").to_ascii_lowercase();

    // Everything of the framework reaches Postgres through the proxy.
    let url = database_url();
    let upstream = {
        let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
        format!("{}:{}", options.get_host(), options.get_port())
    };
    let proxy = Proxy::start("127.0.0.1:0", &upstream).await;
    let proxied_url = url.replacen(&upstream, &proxy.addr().to_string(), 1);
    assert_ne!(proxied_url, url, "DATABASE_URL names host:port explicitly");
    let store = PgStore::connect(&proxied_url, &schema)
        .await
        .expect("proxied store");

    let settings = ProcessorSettings {
        flush_every: 20,
        ..test_settings()
    };
    let start = || {
        counter_processor(&bootstrap, &prefix, 2)
            .settings(settings.clone())
            .snapshots(store.clone())
            .start()
    };
    let processor = start().await.expect("processor");
    let worker = counter_log_worker(&bootstrap, &prefix, store.clone());
    let projection = worker.clone().spawn();
    let gateway = CommandGateway::connect_with_timeout(
        KafkaConfig::new(&bootstrap),
        &prefix,
        Duration::from_secs(20),
    )
    .await
    .expect("gateway");

    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    let send_round = async |versions: &mut BTreeMap<String, u64>| {
        for a in 0..AGGREGATES {
            let id = format!("agg-{a}");
            let version = increment(&gateway, &id).await;
            versions.insert(id, version);
        }
    };
    for _ in 0..5 {
        send_round(&mut versions).await;
    }

    // The cut: 10 s, with commands flowing all along.
    proxy.cut();
    let cut_at = Instant::now();
    let mut during = 0;
    while cut_at.elapsed() < Duration::from_secs(10) {
        send_round(&mut versions).await;
        during += AGGREGATES;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stalled = worker.status();
    proxy.heal();
    eprintln!(
        "{during} commands accepted during the 10 s cut; worker during the cut: {:?} / {:?}",
        stalled.state, stalled.last_error
    );
    assert!(
        during >= 10 * AGGREGATES,
        "commands stalled during the outage"
    );
    for _ in 0..5 {
        send_round(&mut versions).await;
    }
    let total: u64 = versions.values().sum();

    // The read model catches up by itself, with nothing parked.
    wait_until(
        Duration::from_secs(90),
        "the projection to catch up",
        || {
            let direct = direct.clone();
            async move { counter_log_ids(&direct).await.len() as u64 == total }
        },
    )
    .await;
    let status = worker.status();
    assert_eq!(status.state, WorkerState::Running);
    assert_eq!(status.parked, 0, "events parked during the outage");
    let ids = counter_log_ids(&direct).await;
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "an event applied twice");

    // The snapshots recover too: flushes after the heal write every partition's
    // watermark again (a flush writes the dirty aggregates' rows and the watermark
    // in one transaction, so the rows lost in the outage are in it).
    let healed_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(direct.pool())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let flushed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tributary_snapshots WHERE aggregate_id = '' AND taken_at > $1",
        )
        .bind(healed_at)
        .fetch_one(direct.pool())
        .await
        .unwrap();
        if flushed == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot flush succeeded after the heal ({flushed} of 2 partitions)"
        );
        send_round(&mut versions).await;
    }
    let total: u64 = versions.values().sum();
    wait_until(
        Duration::from_secs(60),
        "the projection to catch up again",
        || {
            let direct = direct.clone();
            async move { counter_log_ids(&direct).await.len() as u64 == total }
        },
    )
    .await;

    // A crash and a restart restore every aggregate at its last version.
    processor.abort();
    let _ = processor.join().await;
    let again = start().await.expect("processor");
    for (id, version) in &versions {
        match gateway
            .send(Check {
                id: id.clone(),
                expected: *version,
            })
            .await
            .expect("check")
        {
            CommandOutcome::Accepted { .. } => {}
            CommandOutcome::Rejected(e) => panic!("after the restart, {id}: {e}"),
        }
    }
    let events = raw_log::read(
        &bootstrap,
        &format!("{prefix}.counter.events"),
        Isolation::Committed,
    );
    raw_log::assert_single_writer(&events);
    assert_eq!(events.len() as u64, total);
    projection.abort();
    again.shutdown().await.expect("shutdown");
}

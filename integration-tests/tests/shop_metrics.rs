//! The shop's `/metrics` after a load: Tributary's metrics, scraped in the
//! Prometheus text format, agree with what the load did and with each other.
//!
//! The recorder is global to the process; nextest runs each test in its own
//! process, so these numbers are this test's alone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use example_shop::api::{ApiState, router};
use example_shop::app::Role;
use example_shop::load::{self, LoadPlan};
use tower::ServiceExt as _;
use tributary::telemetry;
use tributary_integration_tests::shop_support::shop_config;
use tributary_integration_tests::{pg_store, unique_prefix};

const ORDERS: usize = 60;
const CLIENTS: usize = 6;
const SKUS: usize = 5;
const PARTITIONS: i32 = 4;

/// One scrape: `name{sorted labels}` → value, for every sample line.
#[derive(Debug)]
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut samples = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let key = match series.split_once('{') {
                Some((name, labels)) => {
                    let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                    labels.sort_unstable();
                    format!("{name}{{{}}}", labels.join(","))
                }
                None => series.to_owned(),
            };
            samples.insert(key, value.parse().expect("a number"));
        }
        Self(samples)
    }

    /// The value of `name` with exactly these labels (`key="value"`), 0 if absent.
    fn get(&self, name: &str, labels: &[&str]) -> f64 {
        let mut labels = labels.to_vec();
        labels.sort_unstable();
        self.0
            .get(&format!("{name}{{{}}}", labels.join(",")))
            .copied()
            .unwrap_or(0.0)
    }

    /// Every series of `name`, with its labels.
    fn series(&self, name: &str) -> Vec<(&str, f64)> {
        self.0
            .iter()
            .filter(|(k, _)| {
                k.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{'))
            })
            .map(|(k, v)| (k.as_str(), *v))
            .collect()
    }
}

async fn scrape(api: &axum::Router) -> Scrape {
    let response = api
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    Scrape::parse(std::str::from_utf8(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_after_a_load_match_what_it_did() {
    // Installed before anything starts, as the shop's main does.
    let handle = example_shop::metrics::install().unwrap();
    let prefix = unique_prefix("shopmetrics");
    let store = pg_store(&prefix).await;
    let config = shop_config(&prefix, &store, PARTITIONS);
    let running = config.start(&Role::ALL, &store).await.unwrap();
    let plan = LoadPlan::half_stocked(ORDERS, CLIENTS, SKUS, &prefix);
    let api = router(
        ApiState::new(config.gateway().await.unwrap(), store.pool().clone())
            .with_roles(&running)
            .with_metrics(handle)
            .with_keys(plan.tokens.api_keys().unwrap()),
    );

    load::seed_catalogue(&api, store.pool(), &plan)
        .await
        .unwrap();
    let report = load::place_orders(&api, &plan, std::sync::Arc::new(|_| {}))
        .await
        .unwrap();
    assert_eq!(report.accepted, ORDERS, "refused: {:?}", report.refused);
    let settled = load::wait_settled(store.pool(), ORDERS, Duration::from_secs(120))
        .await
        .unwrap();
    assert!(settled.settled, "the read models did not settle");

    // Quiet: no command in flight and every partition of every projection at lag
    // 0, twice, 1.5 s apart (the lag gauges follow the client statistics, every
    // second), with no event written in between.
    fn quiet(s: &Scrape) -> bool {
        let lags = s.series(telemetry::PROJECTION_LAG);
        // order_summaries, notifications: order; stock_levels: inventory;
        // order_fulfilment: both.
        lags.len() == 5 * PARTITIONS as usize
            && lags.iter().all(|(_, v)| *v == 0.0)
            && s.series(telemetry::GATEWAY_IN_FLIGHT)
                .iter()
                .all(|(_, v)| *v == 0.0)
    }
    fn events(s: &Scrape) -> Vec<(&str, f64)> {
        s.series(telemetry::EVENTS_WRITTEN)
    }
    let mut metrics = scrape(&api).await;
    for _ in 0..60 {
        if quiet(&metrics) {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let again = scrape(&api).await;
            let unchanged = events(&again) == events(&metrics);
            metrics = again;
            if unchanged && quiet(&metrics) {
                break;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            metrics = scrape(&api).await;
        }
    }
    assert!(
        quiet(&metrics),
        "not quiet: {:?} {:?}",
        metrics.series(telemetry::PROJECTION_LAG),
        metrics.series(telemetry::GATEWAY_IN_FLIGHT)
    );
    println!("{} series scraped", metrics.0.len());

    let m = &metrics;
    let order = "aggregate=\"order\"";
    let inventory = "aggregate=\"inventory\"";
    let accepted = "outcome=\"accepted\"";
    // Every order the load placed was accepted by the order processor, and every
    // accepted command reached its caller: the processors' and the gateways'
    // counts agree (the load made no retries, so there were no duplicates).
    assert_eq!(report.retries, 0);
    let decided = m.get(telemetry::COMMANDS, &[order, accepted]);
    assert!(decided >= ORDERS as f64, "{decided} < {ORDERS}");
    let answered = format!("{}_count", telemetry::GATEWAY_COMMAND_SECONDS);
    assert_eq!(m.get(&answered, &[order, accepted]), decided);
    assert_eq!(
        m.get(&answered, &[inventory, accepted]),
        m.get(telemetry::COMMANDS, &[inventory, accepted])
    );
    // The catalogue's restocks, the saga's reservations: inventory commands too.
    assert!(m.get(telemetry::COMMANDS, &[inventory, accepted]) >= SKUS as f64);
    assert_eq!(m.get(telemetry::GATEWAY_IN_FLIGHT, &[order]), 0.0);
    assert_eq!(m.get(telemetry::GATEWAY_TIMEOUTS, &[order]), 0.0);

    // Every event written was applied exactly once by each projection reading it.
    let written = |a| m.get(telemetry::EVENTS_WRITTEN, &[a]);
    let applied = |p: &str| {
        m.get(
            telemetry::PROJECTION_EVENTS_APPLIED,
            &[&format!("projection=\"{p}\"")],
        )
    };
    assert!(written(order) >= ORDERS as f64);
    assert_eq!(applied("order_summaries"), written(order));
    assert_eq!(applied("notifications"), written(order));
    assert_eq!(applied("stock_levels"), written(inventory));
    assert_eq!(
        applied("order_fulfilment"),
        written(order) + written(inventory)
    );
    let batches = format!("{}_count", telemetry::PROJECTION_BATCH_SECONDS);
    let events_in_batches = format!("{}_sum", telemetry::PROJECTION_BATCH_SIZE);
    let summaries = "projection=\"order_summaries\"";
    assert!(m.get(&batches, &[summaries]) >= 1.0);
    assert_eq!(m.get(&events_in_batches, &[summaries]), written(order));

    // Each committed transaction was timed; each partition was restored once.
    let committed = m.get(telemetry::TRANSACTIONS, &[order, "result=\"committed\""]);
    assert!(committed >= 1.0);
    let commit_times = format!("{}_count", telemetry::TRANSACTION_COMMIT_SECONDS);
    assert_eq!(m.get(&commit_times, &[order]), committed);
    assert!(m.get(telemetry::RESTORES, &[order]) >= f64::from(PARTITIONS));
    assert_eq!(
        m.get(&format!("{}_count", telemetry::RESTORE_SECONDS), &[order]),
        m.get(telemetry::RESTORES, &[order])
    );
    assert_eq!(m.get(telemetry::PROJECTION_DEAD_LETTERS, &[summaries]), 0.0);

    running.shutdown().await.unwrap();
}

//! The sample shop end to end on the real broker and Postgres: 1,000 orders from
//! 50 concurrent clients over 20 SKUs stocked for about half of them, through the
//! HTTP API, the two command processors, the fulfilment process manager and the
//! three read models. Then the invariants, checked against the read models and
//! against the event log itself. The second test kills and restarts processors and
//! projection workers while the orders come in.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use example_shop::api::{ApiState, router};
use example_shop::app::{Component, Role, Running, ShopConfig};
use example_shop::inventory::InventoryEvent;
use example_shop::load::{self, LoadPlan, Settled};
use example_shop::order::OrderEvent;
use tokio::sync::mpsc;
use tributary::PgStore;
use tributary_integration_tests::command_support::{assert_gapless, read_events};
use tributary_integration_tests::shop_support::shop_config;
use tributary_integration_tests::{kafka_bootstrap, pg_store, unique_prefix};

const ORDERS: usize = 1000;
const CLIENTS: usize = 50;
const SKUS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_orders_keep_every_invariant() {
    let prefix = unique_prefix("shop");
    let store = pg_store(&prefix).await;
    let config = shop_config(&prefix, &store, 4);
    let running = config.start(&Role::ALL, &store).await.unwrap();
    let (plan, settled) = run_load(&config, &store, &prefix, None).await;
    if !settled.settled {
        diagnose(&running).await;
    }
    check(&plan, &settled, &prefix);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_processors_and_workers_midway_changes_nothing() {
    let prefix = unique_prefix("shopkill");
    let store = pg_store(&prefix).await;
    let config = shop_config(&prefix, &store, 4);
    let running = config.start(&Role::ALL, &store).await.unwrap();

    let (tx, mut rx) = mpsc::unbounded_channel();
    let killer = async {
        // After a third of the orders: the order processor and the process manager
        // die without any hand-over and are restarted; after two thirds, the
        // inventory processor and the order-summaries worker.
        while let Some(round) = rx.recv().await {
            let killed = if round == 1 {
                [Component::OrderProcessor, Component::Fulfilment]
            } else {
                [Component::InventoryProcessor, Component::OrderSummaries]
            };
            for component in killed {
                assert!(running.kill(component).await, "{component} was not running");
            }
            println!("killed {killed:?}");
            for component in killed {
                running.restart(component).await.unwrap();
            }
        }
    };
    let on_placed = Arc::new(move |n: usize| {
        if n == ORDERS / 3 {
            let _ = tx.send(1);
        } else if n == 2 * ORDERS / 3 {
            let _ = tx.send(2);
        }
    });
    let ((plan, settled), ()) =
        tokio::join!(run_load(&config, &store, &prefix, Some(on_placed)), killer);
    if !settled.settled {
        diagnose(&running).await;
    }
    check(&plan, &settled, &prefix);
    running.shutdown().await.unwrap();
}

/// What each part was doing, for a run that did not settle.
async fn diagnose(running: &Running) {
    for component in running.health().await {
        println!("{component:?}");
    }
}

/// Seeds the catalogue, places the orders, waits for the read models to settle.
async fn run_load(
    config: &ShopConfig,
    store: &PgStore,
    run: &str,
    on_placed: Option<Arc<dyn Fn(usize) + Send + Sync>>,
) -> (LoadPlan, Settled) {
    let plan = LoadPlan::half_stocked(ORDERS, CLIENTS, SKUS, run);
    let api = router(
        ApiState::new(config.gateway().await.unwrap(), store.pool().clone())
            .with_keys(plan.tokens.api_keys().unwrap()),
    );
    load::seed_catalogue(&api, store.pool(), &plan)
        .await
        .unwrap();
    let report = load::place_orders(&api, &plan, on_placed.unwrap_or_else(|| Arc::new(|_| {})))
        .await
        .unwrap();
    // The on_placed sender lives in the closure: drop it so the killer ends.
    assert!(report.refused.is_empty(), "refused: {:?}", report.refused);
    assert_eq!(report.accepted, ORDERS);
    println!(
        "placed {ORDERS} orders in {:.2} s ({} retries)",
        report.elapsed.as_secs_f64(),
        report.retries
    );
    let settled = load::wait_settled(store.pool(), ORDERS, Duration::from_secs(120))
        .await
        .unwrap();
    println!(
        "settled: {} after {:.2} s",
        settled.settled,
        settled.waited.as_secs_f64()
    );
    (plan, settled)
}

fn check(plan: &LoadPlan, settled: &Settled, prefix: &str) {
    assert!(
        settled.settled,
        "the read models did not settle: {settled:#?}"
    );
    // Every order ends confirmed or cancelled.
    assert_eq!(
        settled.count("confirmed") + settled.count("cancelled"),
        ORDERS as i64,
        "{:?}",
        settled.orders_by_status
    );
    assert!(settled.count("confirmed") > 0 && settled.count("cancelled") > 0);
    // Stock: confirmed units never exceed the initial stock, and the stock read
    // model equals initial − confirmed.
    assert_eq!(settled.skus.len(), SKUS);
    for (sku, line) in &settled.skus {
        let initial = plan.stock_per_sku as i64;
        assert!(line.confirmed_units <= initial, "{sku} oversold: {line:?}");
        assert_eq!(
            line.available,
            initial - line.confirmed_units,
            "{sku}: {line:?}"
        );
        assert_eq!(line.reserved, line.confirmed_units, "{sku}: {line:?}");
    }
    // Exactly one notification per decided order.
    assert_eq!(settled.notifications_per_order.len(), ORDERS);
    assert!(
        settled.notifications_per_order.values().all(|n| *n == 1),
        "orders with several notifications: {:?}",
        settled
            .notifications_per_order
            .iter()
            .filter(|(_, n)| **n != 1)
            .collect::<Vec<_>>()
    );

    // The log itself: gapless sequences per aggregate, and no effect twice.
    let bootstrap = kafka_bootstrap();
    let orders = read_events::<OrderEvent>(&bootstrap, prefix);
    let inventory = read_events::<InventoryEvent>(&bootstrap, prefix);
    assert_eq!(assert_gapless(&orders).len(), ORDERS);
    assert_eq!(assert_gapless(&inventory).len(), SKUS);
    for (order, events) in &orders {
        let decisions = events
            .iter()
            .filter(|e| {
                matches!(
                    e.event,
                    OrderEvent::Confirmed { .. } | OrderEvent::Cancelled { .. }
                )
            })
            .count();
        assert_eq!(decisions, 1, "order {order}: {events:#?}");
    }
    for (sku, events) in &inventory {
        let mut reserved = BTreeSet::new();
        let mut released = BTreeSet::new();
        let mut held: BTreeMap<&str, u64> = BTreeMap::new();
        let mut available: i64 = 0;
        for e in events {
            match &e.event {
                InventoryEvent::Restocked { quantity } => available += *quantity as i64,
                InventoryEvent::Reserved { order_id, quantity } => {
                    assert!(
                        reserved.insert(order_id),
                        "{sku}: {order_id} reserved twice"
                    );
                    available -= *quantity as i64;
                    held.insert(order_id, *quantity);
                }
                InventoryEvent::Released { order_id, quantity } => {
                    assert!(
                        released.insert(order_id),
                        "{sku}: {order_id} released twice"
                    );
                    available += *quantity as i64;
                    held.remove(order_id.as_str());
                }
                _ => {}
            }
            assert!(
                available >= 0,
                "{sku}: stock went negative at #{}",
                e.sequence
            );
        }
        assert_eq!(
            held.values().sum::<u64>() as i64,
            settled.skus[sku].confirmed_units,
            "{sku}: the log's open reservations differ from the confirmed units"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    use axum::http::StatusCode;
    use serde_json::json;

    let prefix = unique_prefix("shopbad");
    let store = pg_store(&prefix).await;
    let config = shop_config(&prefix, &store, 4);
    let running = config.start(&Role::ALL, &store).await.unwrap();
    let plan = LoadPlan {
        skus: 1,
        stock_per_sku: 5,
        ..LoadPlan::half_stocked(1, 1, 1, &prefix)
    };
    let api = router(
        ApiState::new(config.gateway().await.unwrap(), store.pool().clone())
            .with_keys(plan.tokens.api_keys().unwrap()),
    );
    // Orders as customer-00, the rest as the admin.
    let customer = plan.tokens.customer("customer-00");
    let admin = Some(plan.tokens.admin());
    let bearer = format!("Bearer {}", customer.unwrap());
    load::seed_catalogue(&api, store.pool(), &plan)
        .await
        .unwrap();

    let raw = |body: &'static str, content_type: Option<&'static str>| {
        let mut request = axum::http::Request::builder()
            .method("POST")
            .uri("/orders")
            .header("authorization", &bearer);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        request.body(axum::body::Body::from(body)).unwrap()
    };
    let send_raw = |request: axum::http::Request<axum::body::Body>| {
        let api = api.clone();
        async move {
            use tower::ServiceExt;
            let response = api.oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        }
    };
    let line =
        |sku: &str, quantity: i64| json!({"sku": sku, "quantity": quantity, "price_cents": 100});
    let order = |lines: Vec<serde_json::Value>| json!({"customer": "customer-00", "lines": lines});

    let mut cases: Vec<(&str, StatusCode, &str, (StatusCode, String))> = Vec::new();
    cases.push((
        "bad JSON",
        StatusCode::BAD_REQUEST,
        "error",
        send_raw(raw("{\"customer\": ", Some("application/json"))).await,
    ));
    cases.push((
        "no content type",
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "Content-Type",
        send_raw(raw("{}", None)).await,
    ));
    let huge = Box::leak(format!("{{\"customer\": \"{}\"}}", "x".repeat(100_000)).into_boxed_str());
    cases.push((
        "huge payload",
        StatusCode::PAYLOAD_TOO_LARGE,
        "error",
        send_raw(raw(huge, Some("application/json"))).await,
    ));
    for (what, body, status, message) in [
        (
            "unknown field",
            json!({"customer": "customer-00", "lines": [], "coupon": 1}),
            StatusCode::BAD_REQUEST,
            "unknown field `coupon`",
        ),
        (
            "unknown SKU",
            order(vec![line("sku-00", 1), line("nope", 1)]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown SKU: nope",
        ),
        (
            "zero quantity",
            order(vec![line("sku-00", 0)]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "between 1 and 10000",
        ),
        (
            "negative quantity",
            order(vec![line("sku-00", -2)]),
            StatusCode::BAD_REQUEST,
            "quantity",
        ),
        (
            "no lines",
            order(vec![]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "at least one line",
        ),
        (
            "duplicate SKU",
            order(vec![line("sku-00", 1), line("sku-00", 2)]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "appears twice",
        ),
        (
            "another customer",
            json!({"customer": "a b", "lines": [line("sku-00", 1)]}),
            StatusCode::FORBIDDEN,
            "cannot place an order for customer a b",
        ),
    ] {
        cases.push((what, status, message, {
            let (s, v) = load::call(&api, customer, "POST", "/orders", Some(&body))
                .await
                .unwrap();
            (s, v.to_string())
        }));
    }
    for (what, path, body, status, message) in [
        (
            "restock zero",
            "/stock/sku-00/restock",
            Some(json!({"quantity": 0})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "quantity must be",
        ),
        (
            "cancel unknown order",
            "/orders/nope/cancel",
            Some(json!({})),
            StatusCode::NOT_FOUND,
            "no such order",
        ),
        (
            "get unknown order",
            "/orders/nope",
            None,
            StatusCode::NOT_FOUND,
            "no order nope",
        ),
        (
            "get unknown SKU",
            "/stock/nope",
            None,
            StatusCode::NOT_FOUND,
            "unknown SKU",
        ),
    ] {
        let method = if body.is_some() { "POST" } else { "GET" };
        cases.push((what, status, message, {
            let (s, v) = load::call(&api, admin, method, path, body.as_ref())
                .await
                .unwrap();
            (s, v.to_string())
        }));
    }
    for (what, status, message, (got_status, got_body)) in &cases {
        assert_eq!(got_status, status, "{what}: {got_body}");
        assert!(
            got_body.contains(message),
            "{what}: {got_body:?} should mention {message:?}"
        );
    }

    // Nothing changed: after one valid order settles, it is the only order in the
    // log, and the stock moved by its quantity only.
    let (status, body) = load::call(
        &api,
        customer,
        "POST",
        "/orders",
        Some(&order(vec![line("sku-00", 2)])),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let settled = load::wait_settled(store.pool(), 1, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(settled.settled, "{settled:#?}");
    assert_eq!(settled.count("confirmed"), 1);
    assert_eq!(settled.skus["sku-00"].available, 3);
    let orders = read_events::<OrderEvent>(&kafka_bootstrap(), &prefix);
    assert_eq!(orders.len(), 1, "{orders:#?}");
    let inventory = read_events::<InventoryEvent>(&kafka_bootstrap(), &prefix);
    assert_eq!(inventory["sku-00"].len(), 2, "restock + one reservation");
    running.shutdown().await.unwrap();
}

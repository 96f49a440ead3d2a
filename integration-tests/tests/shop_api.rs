//! The sample shop's HTTP API contract (issue 9, scenario 13):
//!
//! 1. every mutating endpoint is idempotent with an `Idempotency-Key`: a retry
//!    answers the same and has one effect;
//! 2. `/health` names every role of the process and answers 503 when one is dead;
//! 3. a SKU restocked a moment ago is not refused as unknown by the order path;
//! 4. access control: 401 without a known bearer token, customers act on their own
//!    orders only, restock/pay/ship are for admins, and error bodies carry no SQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use example_shop::api::{ApiState, router};
use example_shop::app::{Component, Role, ShopConfig};
use example_shop::auth::ApiKeys;
use example_shop::inventory::InventoryEvent;
use example_shop::order::OrderEvent;
use serde_json::{Value, json};
use tower::ServiceExt;
use tributary::PgStore;
use tributary_integration_tests::command_support::read_events;
use tributary_integration_tests::shop_support::shop_config;
use tributary_integration_tests::{kafka_bootstrap, pg_store, unique_prefix};

/// The admin's token in the tests' key table.
const ADMIN: &str = "test-admin-token-0123456789";

/// The token of `customer` in the tests' key table.
fn customer_token(customer: &str) -> String {
    format!("test-token-of-{customer}")
}

/// The tests' key table: the admin `ops` and the customers ada and bob.
fn keys() -> ApiKeys {
    let spec = format!(
        "{ADMIN}=admin:ops,{}=customer:ada,{}=customer:bob",
        customer_token("ada"),
        customer_token("bob")
    );
    ApiKeys::parse(&spec).unwrap()
}

/// The API of `config` on `store`, with the tests' key table.
async fn api_state(config: &ShopConfig, store: &PgStore) -> ApiState {
    ApiState::new(config.gateway().await.unwrap(), store.pool().clone()).with_keys(keys())
}

/// `method path` with an optional JSON body and an optional `Idempotency-Key`,
/// as the principal who may send it: `POST /orders` as the body's customer,
/// everything else as the admin.
async fn call(
    api: &Router,
    method: &str,
    path: &str,
    body: Option<&Value>,
    key: Option<&str>,
) -> (StatusCode, Value) {
    let token = match (method, path, body.and_then(|b| b["customer"].as_str())) {
        ("POST", "/orders", Some(customer)) => customer_token(customer),
        _ => ADMIN.to_owned(),
    };
    call_as(api, Some(&token), method, path, body, key).await
}

/// [`call`] as the principal of `token` (none: anonymous).
async fn call_as(
    api: &Router,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
    key: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let request = request
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let response = api.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Polls `GET /orders/{id}` until the order has `status`.
async fn wait_status(api: &Router, order_id: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = call(api, "GET", &format!("/orders/{order_id}"), None, None).await;
        if code == StatusCode::OK && body["status"] == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "order {order_id} not {status} after 60 s: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends the same request twice; records a failure unless both answers are equal
/// and `want`.
async fn twice(
    api: &Router,
    failures: &mut Vec<String>,
    what: &str,
    path: &str,
    body: Option<&Value>,
    key: &str,
    want: StatusCode,
) -> Value {
    let first = call(api, "POST", path, body, Some(key)).await;
    let retry = call(api, "POST", path, body, Some(key)).await;
    if first.0 != want {
        failures.push(format!("{what}: first answer {} {}", first.0, first.1));
    }
    if first != retry {
        failures.push(format!(
            "{what}: the retry with the same Idempotency-Key answered {} {} instead of {} {}",
            retry.0, retry.1, first.0, first.1
        ));
    }
    first.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_with_the_same_idempotency_key_have_one_effect() {
    let prefix = unique_prefix("shopidem");
    let store = pg_store(&prefix).await;
    let config = shop_config(&prefix, &store, 4);
    let running = config.start(&Role::ALL, &store).await.unwrap();
    let api = router(api_state(&config, &store).await);
    let mut failures = Vec::new();

    // Restock: the retry must not add the quantity again.
    let restock = json!({"quantity": 5});
    twice(
        &api,
        &mut failures,
        "restock",
        "/stock/tea/restock",
        Some(&restock),
        "restock-tea-1",
        StatusCode::OK,
    )
    .await;
    // Another key is another restock.
    let (status, body) = call(
        &api,
        "POST",
        "/stock/tea/restock",
        Some(&restock),
        Some("restock-tea-2"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The same key with another body is refused, not silently answered.
    let (status, body) = call(
        &api,
        "POST",
        "/stock/tea/restock",
        Some(&json!({"quantity": 7})),
        Some("restock-tea-1"),
    )
    .await;
    if status != StatusCode::UNPROCESSABLE_ENTITY {
        failures.push(format!(
            "restock: reusing a key with another quantity answered {status} {body}"
        ));
    }

    // Concurrent retries with one key: each answers as the first did, or 409
    // while the first is still waiting; one restock in all.
    let (a, b, c) = tokio::join!(
        call(
            &api,
            "POST",
            "/stock/tea/restock",
            Some(&restock),
            Some("restock-tea-3")
        ),
        call(
            &api,
            "POST",
            "/stock/tea/restock",
            Some(&restock),
            Some("restock-tea-3")
        ),
        call(
            &api,
            "POST",
            "/stock/tea/restock",
            Some(&restock),
            Some("restock-tea-3")
        ),
    );
    let answers = [a, b, c];
    let ok: Vec<&(StatusCode, Value)> = answers.iter().filter(|a| a.0 == StatusCode::OK).collect();
    assert!(
        !ok.is_empty() && ok.iter().all(|a| *a == ok[0]),
        "{answers:?}"
    );
    assert!(
        answers
            .iter()
            .all(|a| a.0 == StatusCode::OK || a.0 == StatusCode::CONFLICT),
        "{answers:?}"
    );
    // A malformed key is refused before anything is sent.
    for bad in ["", "caf\u{e9}", &"k".repeat(256)] {
        let request = Request::builder()
            .method("POST")
            .uri("/stock/tea/restock")
            .header("content-type", "application/json")
            .header("idempotency-key", bad.as_bytes())
            .header("authorization", format!("Bearer {ADMIN}"))
            .body(Body::from(restock.to_string()))
            .unwrap();
        let status = api.clone().oneshot(request).await.unwrap().status();
        assert_eq!(status, StatusCode::BAD_REQUEST, "key {bad:?}");
    }

    // Place without an order id: the key decides the order id.
    let order =
        json!({"customer": "ada", "lines": [{"sku": "tea", "quantity": 1, "price_cents": 450}]});
    let placed = twice(
        &api,
        &mut failures,
        "place",
        "/orders",
        Some(&order),
        "place-1",
        StatusCode::ACCEPTED,
    )
    .await;
    let order_id = placed["order_id"].as_str().unwrap().to_owned();
    wait_status(&api, &order_id, "confirmed").await;
    twice(
        &api,
        &mut failures,
        "pay",
        &format!("/orders/{order_id}/pay"),
        None,
        "pay-1",
        StatusCode::OK,
    )
    .await;
    twice(
        &api,
        &mut failures,
        "ship",
        &format!("/orders/{order_id}/ship"),
        None,
        "ship-1",
        StatusCode::OK,
    )
    .await;

    let (status, body) = call(
        &api,
        "POST",
        "/orders",
        Some(&json!({"order_id": "o-cancel", "customer": "bob",
            "lines": [{"sku": "tea", "quantity": 1, "price_cents": 450}]})),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    twice(
        &api,
        &mut failures,
        "cancel",
        "/orders/o-cancel/cancel",
        Some(&json!({"reason": "changed my mind"})),
        "cancel-1",
        StatusCode::OK,
    )
    .await;

    // Without a key every request is a new command (documented): a second
    // restock adds again.
    let (s1, b1) = call(&api, "POST", "/stock/mug/restock", Some(&restock), None).await;
    let (s2, b2) = call(&api, "POST", "/stock/mug/restock", Some(&restock), None).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK), "{b1} {b2}");
    assert_eq!(
        (b1["version"].as_u64(), b2["version"].as_u64()),
        (Some(1), Some(2))
    );

    // The log: tea restocked three times (keys 1, 2 and 3), one order from
    // "place-1" and "o-cancel".
    let bootstrap = kafka_bootstrap();
    let inventory = read_events::<InventoryEvent>(&bootstrap, &prefix);
    let restocks = inventory["tea"]
        .iter()
        .filter(|e| matches!(e.event, InventoryEvent::Restocked { .. }))
        .count();
    if restocks != 3 {
        failures.push(format!("tea was restocked {restocks} times, not 3"));
    }
    let orders = read_events::<OrderEvent>(&bootstrap, &prefix);
    if orders.len() != 2 {
        failures.push(format!(
            "{} orders in the log, not 2: {:?}",
            orders.len(),
            orders.keys().collect::<Vec<_>>()
        ));
    }
    for (order, events) in &orders {
        let paid = events
            .iter()
            .filter(|e| e.event == OrderEvent::Paid)
            .count();
        assert!(paid <= 1, "order {order} paid {paid} times");
    }
    assert!(
        failures.is_empty(),
        "not idempotent:\n  {}",
        failures.join("\n  ")
    );
    running.shutdown().await.unwrap();
}

/// `GET /health` until its status is `want` (or 10 s passed); the last answer.
async fn health_until(api: &Router, want: StatusCode) -> (StatusCode, Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = call(api, "GET", "/health", None, None).await;
        if answer.0 == want || Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_names_every_role_and_fails_when_one_dies() {
    let prefix = unique_prefix("shophealth");
    let store = pg_store(&prefix).await;
    let config = shop_config(&prefix, &store, 4);
    let running = config.start(&Role::ALL, &store).await.unwrap();
    let api = router(api_state(&config, &store).await.with_roles(&running));
    let mut failures = Vec::new();

    let (status, body) = health_until(&api, StatusCode::OK).await;
    println!("all up: {status} {body:#}");
    let text = body.to_string();
    if status != StatusCode::OK {
        failures.push(format!("all roles up: {status} {text}"));
    }
    for role in [
        "order-processor",
        "inventory-processor",
        "order_summaries",
        "stock_levels",
        "notifications",
        "order_fulfilment",
    ] {
        if !text.contains(role) {
            failures.push(format!("all roles up: {role} missing from {text}"));
        }
    }
    if !text.contains("lag") {
        failures.push(format!("all roles up: no projection lag in {text}"));
    }

    // A projection worker's task ends (aborted, as a panic would end it).
    assert!(running.kill(Component::StockLevels).await);
    let (status, body) = health_until(&api, StatusCode::SERVICE_UNAVAILABLE).await;
    if status != StatusCode::SERVICE_UNAVAILABLE || !body.to_string().contains("stock_levels") {
        failures.push(format!(
            "stock_levels worker aborted: {status} {body}, want 503 naming stock_levels"
        ));
    }

    // The process notices: what `example-shop` without the API waits for to exit.
    let (dead, why) = tokio::time::timeout(Duration::from_secs(5), running.first_death())
        .await
        .expect("the death of stock_levels went unnoticed");
    assert_eq!(dead, Component::StockLevels, "{why}");

    // A command processor dies.
    assert!(running.kill(Component::InventoryProcessor).await);
    let (status, body) = health_until(&api, StatusCode::SERVICE_UNAVAILABLE).await;
    if status != StatusCode::SERVICE_UNAVAILABLE
        || !body.to_string().contains("inventory-processor")
    {
        failures.push(format!(
            "inventory processor killed: {status} {body}, want 503 naming inventory-processor"
        ));
    }
    println!("two dead: {status} {body:#}");
    assert!(
        failures.is_empty(),
        "health is wrong:\n  {}",
        failures.join("\n  ")
    );
    let components: Vec<&str> = body["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["alive"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        components,
        ["inventory-processor", "stock_levels"],
        "{body}"
    );

    // Restarted, the process is healthy again.
    running.restart(Component::StockLevels).await.unwrap();
    running
        .restart(Component::InventoryProcessor)
        .await
        .unwrap();
    let (status, body) = health_until(&api, StatusCode::OK).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    running.shutdown().await.unwrap();
    // Shut down, it is not.
    let (status, body) = call(&api, "GET", "/health", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sku_restocked_a_moment_ago_is_not_unknown() {
    let prefix = unique_prefix("shopnewsku");
    let store = pg_store(&prefix).await;
    let config = shop_config(&prefix, &store, 4);
    // The processors only: the stock read model lags behind the inventory as far
    // as it can (its worker is not running yet).
    let processors = config
        .start(&[Role::OrderProcessor, Role::InventoryProcessor], &store)
        .await
        .unwrap();
    config.migrate_read_models(&store).await.unwrap();
    let api = router(api_state(&config, &store).await);

    let (status, body) = call(
        &api,
        "POST",
        "/stock/brand-new/restock",
        Some(&json!({"quantity": 3})),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let order = json!({"order_id": "o-new", "customer": "ada",
        "lines": [{"sku": "brand-new", "quantity": 2, "price_cents": 100}]});
    let (status, body) = call(&api, "POST", "/orders", Some(&order), None).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "an order for a SKU restocked a moment ago was refused: {body}"
    );
    // A SKU nobody restocked is still refused at once.
    let (status, body) = call(
        &api,
        "POST",
        "/orders",
        Some(&json!({"customer": "ada",
            "lines": [{"sku": "never-stocked", "quantity": 1, "price_cents": 100}]})),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body.to_string().contains("unknown SKU: never-stocked"),
        "{body}"
    );

    // With the projections running the order goes through.
    let projections = config.start(&[Role::Projections], &store).await.unwrap();
    wait_status(&api, "o-new", "confirmed").await;

    // All roles running: restock and order at once, several times.
    for n in 0..5 {
        let sku = format!("fresh-{n}");
        let (status, body) = call(
            &api,
            "POST",
            &format!("/stock/{sku}/restock"),
            Some(&json!({"quantity": 1})),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = call(
            &api,
            "POST",
            "/orders",
            Some(&json!({"customer": "ada",
                "lines": [{"sku": sku, "quantity": 1, "price_cents": 100}]})),
            None,
        )
        .await;
        assert_eq!(
            status,
            StatusCode::ACCEPTED,
            "an order for {sku}, restocked a moment ago, was refused: {body}"
        );
    }
    projections.shutdown().await.unwrap();
    processors.shutdown().await.unwrap();
}

/// Asserts a 401 with `WWW-Authenticate: Bearer` and an `error` for `request`.
async fn assert_unauthorized(api: &Router, request: Request<Body>) {
    let what = format!("{} {}", request.method(), request.uri());
    let response = api.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
    assert_eq!(
        response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap()),
        Some("Bearer"),
        "{what}"
    );
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(body["error"].is_string(), "{what}: {body}");
}

/// Polls `GET /orders/{id}` as `token` until the order has `status`.
async fn wait_status_as(api: &Router, token: &str, order_id: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let path = format!("/orders/{order_id}");
        let (code, body) = call_as(api, Some(token), "GET", &path, None, None).await;
        if code == StatusCode::OK && body["status"] == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "order {order_id} not {status} after 60 s: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn customers_act_on_their_own_orders_and_admins_run_the_shop() {
    let prefix = unique_prefix("shopauth");
    let store = pg_store(&prefix).await;
    let config = shop_config(&prefix, &store, 4);
    let running = config.start(&Role::ALL, &store).await.unwrap();
    let api = router(api_state(&config, &store).await.with_roles(&running));
    let (ada, bob) = (customer_token("ada"), customer_token("bob"));
    let (ada, bob, admin) = (Some(ada.as_str()), Some(bob.as_str()), Some(ADMIN));
    let line = json!([{"sku": "tea", "quantity": 1, "price_cents": 450}]);

    // No token, a malformed header, an unknown token: 401, before anything else.
    for (method, path) in [
        ("GET", "/orders"),
        ("GET", "/orders/o-1"),
        ("POST", "/orders"),
        ("POST", "/stock/tea/restock"),
        ("GET", "/stock"),
        ("GET", "/customers/ada/notifications"),
    ] {
        for authorization in [None, Some("Basic YWRhOg=="), Some("Bearer not-a-token")] {
            let mut request = Request::builder()
                .method(method)
                .uri(path)
                .header("content-type", "application/json");
            if let Some(value) = authorization {
                request = request.header("authorization", value);
            }
            let request = request.body(Body::from("{}")).unwrap();
            assert_unauthorized(&api, request).await;
        }
    }
    // Probes and scrapers need none.
    let (status, _) = call_as(&api, None, "GET", "/health", None, None).await;
    assert_ne!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = call_as(&api, None, "GET", "/metrics", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}"); // no exporter installed here

    // Restock, pay and ship are for admins.
    let restock = json!({"quantity": 10});
    let (status, body) = call_as(
        &api,
        ada,
        "POST",
        "/stock/tea/restock",
        Some(&restock),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "restocking needs the admin role");
    let (status, body) = call_as(
        &api,
        admin,
        "POST",
        "/stock/tea/restock",
        Some(&restock),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 1);

    // A customer places its own orders: the body may name itself, no one else.
    let mine = json!({"order_id": "o-ada-1", "lines": line});
    let (status, body) = call_as(&api, ada, "POST", "/orders", Some(&mine), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let for_bob = json!({"order_id": "o-ada-2", "customer": "bob", "lines": line});
    let (status, body) = call_as(&api, ada, "POST", "/orders", Some(&for_bob), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let by_admin = json!({"order_id": "o-ops-1", "customer": "ada", "lines": line});
    let (status, body) = call_as(&api, admin, "POST", "/orders", Some(&by_admin), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let bobs = json!({"order_id": "o-bob-1", "customer": "bob", "lines": line});
    let (status, body) = call_as(&api, bob, "POST", "/orders", Some(&bobs), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    wait_status_as(&api, ADMIN, "o-ada-1", "confirmed").await;
    wait_status_as(&api, ADMIN, "o-bob-1", "confirmed").await;

    // Reading: one's own orders; another's order is not found (its id does not leak).
    let (status, body) = call_as(&api, ada, "GET", "/orders/o-ada-1", None, None).await;
    assert_eq!((status, &body["customer"]), (StatusCode::OK, &json!("ada")));
    let (status, body) = call_as(&api, bob, "GET", "/orders/o-ada-1", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"], "no order o-ada-1 (yet)");
    let (status, body) = call_as(&api, bob, "GET", "/orders", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ids = |body: &Value| -> Vec<String> {
        body.as_array()
            .unwrap()
            .iter()
            .map(|o| o["order_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&body), ["o-bob-1"]);
    let (status, _) = call_as(&api, bob, "GET", "/orders?customer=ada", None, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = call_as(&api, admin, "GET", "/orders?customer=ada", None, None).await;
    assert_eq!(
        (status, ids(&body)),
        (StatusCode::OK, vec!["o-ada-1".to_owned()])
    );
    let (status, body) = call_as(&api, admin, "GET", "/orders", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let mut all = ids(&body);
    all.sort();
    assert_eq!(all, ["o-ada-1", "o-bob-1"]);
    let (status, _) = call_as(&api, bob, "GET", "/customers/ada/notifications", None, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) =
        call_as(&api, ada, "GET", "/customers/ada/notifications", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.is_array(), "{body}");
    let (status, body) = call_as(&api, bob, "GET", "/stock/tea", None, None).await;
    assert_eq!((status, &body["sku"]), (StatusCode::OK, &json!("tea")));

    // Pay and ship: admins only. Cancel: the order's customer (another: not found).
    for action in ["pay", "ship"] {
        let path = format!("/orders/o-ada-1/{action}");
        let (status, body) = call_as(&api, ada, "POST", &path, None, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{action}: {body}");
    }
    let cancel = json!({});
    let path = "/orders/o-ada-1/cancel";
    let (status, body) = call_as(&api, bob, "POST", path, Some(&cancel), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = call_as(&api, ada, "POST", path, Some(&cancel), None).await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("cancelled")),
        "{body}"
    );
    let (status, body) = call_as(&api, admin, "POST", "/orders/o-bob-1/pay", None, None).await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("paid")),
        "{body}"
    );

    // A failing query answers 500 with a correlation id, not the SQL error.
    sqlx::query("DROP TABLE order_summaries")
        .execute(store.pool())
        .await
        .unwrap();
    for (token, path) in [
        (ada, "/orders/o-ada-1"),
        (admin, "/orders"),
        (ada, "/orders/o-ada-1/cancel"),
    ] {
        let method = if path.ends_with("cancel") {
            "POST"
        } else {
            "GET"
        };
        let (status, body) = call_as(&api, token, method, path, Some(&cancel), None).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{path}: {body}");
        let text = body.to_string();
        for internal in [
            "relation \"", // ("correlation id" contains "relation")
            "order_summaries",
            "SELECT",
            "does not exist",
            "42P01",
        ] {
            assert!(!text.contains(internal), "{path}: {internal} in {text}");
        }
        let id = body["correlation_id"].as_str().unwrap();
        assert_eq!(
            body["error"],
            format!("internal error reading the read models (correlation id {id})")
        );
    }
    // (The order_summaries worker may have failed on the missing table.)
    let _ = running.shutdown().await;
}

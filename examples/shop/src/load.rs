//! A load generator and the settle check, shared by `--demo` and the end-to-end
//! test: seeds a catalogue through the HTTP API, places orders from concurrent
//! clients, then waits until the read models agree with each other.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

use crate::app::ShopError;
use crate::auth::{ApiKeys, Principal, generate_token};

/// Customers of the generated orders (`customer-00` … `customer-49`).
pub const CUSTOMERS: usize = 50;

/// The bearer tokens of a load: an admin's for the restocks and one per customer
/// for its orders, new random ones per plan. `Debug` shows no token.
#[derive(Clone)]
pub struct LoadTokens {
    admin: String,
    customers: BTreeMap<String, String>,
}

impl LoadTokens {
    /// New random tokens for the admin `load` and the customers of the plan.
    pub fn generate() -> Self {
        Self {
            admin: generate_token(),
            customers: (0..CUSTOMERS)
                .map(|n| (customer_name(n), generate_token()))
                .collect(),
        }
    }

    /// The admin's token.
    pub fn admin(&self) -> &str {
        &self.admin
    }

    /// The token of `customer`, if it is one of the load's.
    pub fn customer(&self, customer: &str) -> Option<&str> {
        self.customers.get(customer).map(String::as_str)
    }

    /// These tokens as a `SHOP_API_KEYS` value (see [`crate::auth`]), for an API
    /// in another process. It holds the tokens: do not log it.
    pub fn spec(&self) -> String {
        let mut entries = vec![format!("{}=admin:load", self.admin)];
        entries.extend(
            self.customers
                .iter()
                .map(|(customer, token)| format!("{token}=customer:{customer}")),
        );
        entries.join(",")
    }

    /// The key table with these tokens, for [`crate::api::ApiState::with_keys`].
    pub fn api_keys(&self) -> Result<ApiKeys, ShopError> {
        let mut keys = ApiKeys::new().with(&self.admin, Principal::Admin("load".into()));
        for (customer, token) in &self.customers {
            keys = keys.and_then(|k| k.with(token, Principal::Customer(customer.clone())));
        }
        keys.map_err(|e| ShopError::Usage(e.to_string()))
    }
}

impl std::fmt::Debug for LoadTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadTokens")
            .field("customers", &self.customers.len())
            .finish_non_exhaustive()
    }
}

fn customer_name(n: usize) -> String {
    format!("customer-{:02}", n % CUSTOMERS)
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Orders to place.
    pub orders: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// SKUs in the catalogue (`sku-00`, `sku-01`, …).
    pub skus: usize,
    /// Units of each SKU restocked at the start.
    pub stock_per_sku: u64,
    /// Makes order ids unique per run (`order-{run}-{n}`).
    pub run: String,
    /// Seed of the order generator.
    pub seed: u64,
    /// The tokens the load sends: give the API [`LoadTokens::api_keys`].
    pub tokens: LoadTokens,
}

impl LoadPlan {
    /// `orders` orders from `clients` clients over `skus` SKUs, each stocked with
    /// about half of the units the orders will ask for (orders have 1–3 lines of
    /// 1–3 units), so that roughly half of them fail on stock.
    pub fn half_stocked(orders: usize, clients: usize, skus: usize, run: &str) -> Self {
        let expected_units_per_sku = orders as u64 * 4 / skus.max(1) as u64;
        Self {
            orders,
            clients,
            skus,
            stock_per_sku: (expected_units_per_sku / 2).max(1),
            run: run.to_owned(),
            seed: 42,
            tokens: LoadTokens::generate(),
        }
    }

    /// The SKU names.
    pub fn sku_names(&self) -> Vec<String> {
        (0..self.skus).map(|i| format!("sku-{i:02}")).collect()
    }

    /// The `n`-th order's request body (deterministic).
    pub fn order(&self, n: usize) -> Value {
        let mut rng = SplitMix(self.seed ^ (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let line_count = 1 + rng.below(3) as usize;
        let mut skus: Vec<usize> = Vec::new();
        while skus.len() < line_count.min(self.skus) {
            let s = rng.below(self.skus as u64) as usize;
            if !skus.contains(&s) {
                skus.push(s);
            }
        }
        let lines: Vec<Value> = skus
            .iter()
            .map(|&s| {
                json!({
                    "sku": format!("sku-{s:02}"),
                    "quantity": 1 + rng.below(3),
                    "price_cents": 199 + 100 * s as u64,
                })
            })
            .collect();
        json!({
            "order_id": format!("order-{}-{n:05}", self.run),
            "customer": customer_name(n),
            "lines": lines,
        })
    }
}

/// A tiny deterministic generator (SplitMix64), so runs are reproducible without
/// a dependency.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Calls the API in-process (no socket): `method path` with an optional JSON body,
/// as the principal of the bearer `token` (none: anonymous).
pub async fn call(
    router: &Router,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(StatusCode, Value), ShopError> {
    call_keyed(router, token, method, path, body, None).await
}

/// [`call`] with an optional `Idempotency-Key` header.
pub async fn call_keyed(
    router: &Router,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
    idempotency_key: Option<&str>,
) -> Result<(StatusCode, Value), ShopError> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if let Some(key) = idempotency_key {
        request = request.header(crate::api::IDEMPOTENCY_KEY, key);
    }
    let request = request
        .body(match body {
            Some(v) => Body::from(v.to_string()),
            None => Body::empty(),
        })
        .map_err(|e| ShopError::Usage(format!("bad request {method} {path}: {e}")))?;
    let response = router
        .clone()
        .oneshot(request)
        .await
        .map_err(|e| ShopError::Usage(format!("{method} {path}: {e}")))?;
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .map_err(|e| ShopError::Usage(format!("{method} {path}: reading the body: {e}")))?;
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok((status, value))
}

/// Restocks every SKU of the plan through the API as the plan's admin (retrying while the
/// processors start, with an `Idempotency-Key` per SKU and run so that a retry
/// never restocks twice), then waits until the stock read model lists them all.
pub async fn seed_catalogue(
    router: &Router,
    pool: &PgPool,
    plan: &LoadPlan,
) -> Result<(), ShopError> {
    for sku in plan.sku_names() {
        let body = json!({ "quantity": plan.stock_per_sku });
        let path = format!("/stock/{sku}/restock");
        let key = format!("seed-{}-{sku}", plan.run);
        let admin = Some(plan.tokens.admin());
        let (status, value, _) = retrying(router, admin, "POST", &path, &body, Some(&key)).await?;
        if status != StatusCode::OK {
            return Err(ShopError::Usage(format!(
                "restocking {sku} failed: {status} {value}"
            )));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let listed: i64 =
            sqlx::query_scalar("SELECT count(*) FROM stock_levels WHERE sku = ANY($1)")
                .bind(plan.sku_names())
                .fetch_one(pool)
                .await?;
        if listed == plan.skus as i64 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(ShopError::Usage(format!(
                "the stock read model lists {listed} of {} SKUs after 120 s; are the projections running?",
                plan.skus
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends until the API gives a definite answer: 503/504 (broker or processor
/// unavailable, outcome unknown) are retried, up to 60 times, with the same body
/// and `Idempotency-Key` (an order's body carries its id), so a retry never acts
/// twice. Returns the answer and the number of retries.
async fn retrying(
    router: &Router,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &Value,
    key: Option<&str>,
) -> Result<(StatusCode, Value, usize), ShopError> {
    let mut retries = 0;
    loop {
        let (status, value) = call_keyed(router, token, method, path, Some(body), key).await?;
        let transient =
            status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::GATEWAY_TIMEOUT;
        if !transient || retries >= 60 {
            return Ok((status, value, retries));
        }
        retries += 1;
        tracing::info!(%status, path, retries, "retrying: {value}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What placing the orders did.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Orders the API accepted (202).
    pub accepted: usize,
    /// Orders refused with a 4xx (should be none for generated orders).
    pub refused: Vec<String>,
    /// Retries after 503/504.
    pub retries: usize,
    /// Wall time of placing all orders.
    pub elapsed: Duration,
}

/// Places the plan's orders from `plan.clients` concurrent clients, each order
/// with the token of its customer. `on_placed`
/// is called with the count after each accepted order (the tests kill and restart
/// parts of the shop from it).
pub async fn place_orders(
    router: &Router,
    plan: &LoadPlan,
    on_placed: Arc<dyn Fn(usize) + Send + Sync>,
) -> Result<LoadReport, ShopError> {
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..plan.clients {
        let (router, plan, next, accepted, on_placed) = (
            router.clone(),
            plan.clone(),
            Arc::clone(&next),
            Arc::clone(&accepted),
            Arc::clone(&on_placed),
        );
        clients.spawn(async move {
            let mut report = LoadReport::default();
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= plan.orders {
                    return Ok::<_, ShopError>(report);
                }
                let body = plan.order(n);
                let token = plan.tokens.customer(&customer_name(n));
                let (status, value, retries) =
                    retrying(&router, token, "POST", "/orders", &body, None).await?;
                report.retries += retries;
                if status == StatusCode::ACCEPTED {
                    report.accepted += 1;
                    on_placed(accepted.fetch_add(1, Ordering::SeqCst) + 1);
                } else {
                    report.refused.push(format!("order {n}: {status} {value}"));
                }
            }
        });
    }
    let mut total = LoadReport::default();
    while let Some(joined) = clients.join_next().await {
        let report = joined.map_err(|e| ShopError::Usage(format!("client task failed: {e}")))??;
        total.accepted += report.accepted;
        total.retries += report.retries;
        total.refused.extend(report.refused);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// One SKU in the [`Settled`] picture.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkuLine {
    /// Units available in the stock read model.
    pub available: i64,
    /// Units reserved in the stock read model.
    pub reserved: i64,
    /// Units of confirmed orders, from the order summaries.
    pub confirmed_units: i64,
}

/// The read models once they agree (or when waiting gave up).
#[derive(Debug, Clone, Default)]
pub struct Settled {
    /// Orders per status.
    pub orders_by_status: BTreeMap<String, i64>,
    /// Per SKU.
    pub skus: BTreeMap<String, SkuLine>,
    /// Notifications per order (orders without any are absent).
    pub notifications_per_order: BTreeMap<String, i64>,
    /// Whether every condition held before the deadline.
    pub settled: bool,
    /// How long after the call the conditions held (or the wait gave up).
    pub waited: Duration,
}

impl Settled {
    /// Orders in a final status (confirmed, cancelled, paid or shipped).
    pub fn decided(&self) -> i64 {
        self.orders_by_status
            .iter()
            .filter(|(s, _)| s.as_str() != "placed")
            .map(|(_, n)| n)
            .sum()
    }

    /// Orders in `status`.
    pub fn count(&self, status: &str) -> i64 {
        self.orders_by_status.get(status).copied().unwrap_or(0)
    }
}

/// Reads the read models once.
pub async fn read_models(pool: &PgPool) -> Result<Settled, ShopError> {
    let mut picture = Settled::default();
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM order_summaries GROUP BY status")
            .fetch_all(pool)
            .await?;
    picture.orders_by_status = rows.into_iter().collect();
    let stock: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT sku, available, reserved FROM stock_levels")
            .fetch_all(pool)
            .await?;
    for (sku, available, reserved) in stock {
        let line = picture.skus.entry(sku).or_default();
        line.available = available;
        line.reserved = reserved;
    }
    let confirmed: Vec<(String, i64)> = sqlx::query_as(
        "SELECT l->>'sku', sum((l->>'quantity')::bigint)::bigint
         FROM order_summaries o, jsonb_array_elements(o.lines) l
         WHERE o.status = 'confirmed' GROUP BY 1",
    )
    .fetch_all(pool)
    .await?;
    for (sku, units) in confirmed {
        picture.skus.entry(sku).or_default().confirmed_units = units;
    }
    let notes: Vec<(String, i64)> =
        sqlx::query_as("SELECT order_id, count(*) FROM notifications GROUP BY order_id")
            .fetch_all(pool)
            .await?;
    picture.notifications_per_order = notes.into_iter().collect();
    Ok(picture)
}

/// Waits (up to `timeout`) until `expected_orders` orders are decided, each has
/// a notification, and every SKU's reserved units equal its confirmed units (so
/// every cancelled order's reservations are released).
pub async fn wait_settled(
    pool: &PgPool,
    expected_orders: usize,
    timeout: Duration,
) -> Result<Settled, ShopError> {
    let started = Instant::now();
    loop {
        let mut picture = read_models(pool).await?;
        let decided = picture.decided();
        let notified = picture.notifications_per_order.len() as i64;
        let released = picture
            .skus
            .values()
            .all(|s| s.reserved == s.confirmed_units);
        picture.waited = started.elapsed();
        if decided == expected_orders as i64 && notified == decided && released {
            picture.settled = true;
            return Ok(picture);
        }
        if started.elapsed() > timeout {
            return Ok(picture);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_load_tokens_make_a_key_table_in_process_and_as_shop_api_keys() {
        let plan = LoadPlan::half_stocked(10, 2, 3, "t");
        let tokens = &plan.tokens;
        let in_process = tokens.api_keys().unwrap();
        let parsed = ApiKeys::parse(&tokens.spec()).unwrap();
        for keys in [&in_process, &parsed] {
            assert_eq!(keys.len(), CUSTOMERS + 1);
            assert_eq!(
                keys.authenticate(tokens.admin()),
                Some(&Principal::Admin("load".into()))
            );
            let customer = plan.order(7)["customer"].as_str().unwrap().to_owned();
            assert_eq!(customer, "customer-07");
            assert_eq!(
                keys.authenticate(tokens.customer(&customer).unwrap()),
                Some(&Principal::Customer(customer.clone()))
            );
        }
        assert_eq!(tokens.customer("ada"), None);
        assert!(!format!("{tokens:?}").contains(tokens.admin()));
        assert_ne!(tokens.admin(), LoadTokens::generate().admin());
    }
}

//! The HTTP API (axum, JSON). Commands go through the [`CommandGateway`]; queries
//! read the Postgres read models.
//!
//! | method and path | what | Auth | `Idempotency-Key` |
//! |---|---|---|---|
//! | `POST /orders` | place an order `{order_id?, customer?, lines: [{sku, quantity, price_cents}]}` → 202 | customer: the order is the caller's; `customer`, if sent, must be the caller's id (403 otherwise); admins: 403 | optional; without `order_id` the key decides the order id |
//! | `POST /orders/{id}/cancel` | cancel `{reason?}` | the order's customer (another's order: 404), or admin | optional |
//! | `POST /orders/{id}/pay`, `POST /orders/{id}/ship` | mark a confirmed order paid, a paid one shipped | admin (customer: 403) | optional |
//! | `GET /orders/{id}` | the order's summary | the order's customer (another's: 404), or admin | |
//! | `GET /orders?customer=&status=&limit=` | list summaries, newest first | customer: its own (another `customer`: 403); admin: all | |
//! | `POST /stock/{sku}/restock` | add stock `{quantity}` | admin (customer: 403) | optional |
//! | `GET /stock`, `GET /stock/{sku}` | stock levels | any principal | |
//! | `GET /customers/{customer}/notifications` | the customer's notifications | that customer (another: 403), or admin | |
//! | `GET /health` | 200 when Postgres answers and every component of this process (each command processor, each projection worker) runs and can read all its partitions; 503 naming what is wrong otherwise. Lists the components, each projection's lag | open | |
//! | `GET /metrics` | Prometheus metrics of this process: Tributary's (`tributary::telemetry`, listed in docs/operations.md) | open | |
//!
//! **Authentication.** Every route but `/health` and `/metrics` needs
//! `Authorization: Bearer <token>`; the token maps to a customer or an admin
//! through the key table ([`crate::auth::ApiKeys`], from `SHOP_API_KEYS`; the api
//! role refuses to start without it). No token, a malformed header or an unknown
//! token is 401 with `WWW-Authenticate: Bearer`; a principal without the right is
//! 403 — except for another customer's order, which is 404 so that order ids do
//! not leak. The rules are in [`crate::auth`]. `/health` and `/metrics` stay open
//! for load-balancer probes and Prometheus scrapers, which carry no token: serve
//! the API behind a proxy that exposes only the other routes (and terminates TLS),
//! and keep the probe and scrape paths on the internal network — `/health` names
//! the failing components and their errors.
//!
//! **Retries.** Every mutating request takes an `Idempotency-Key` header (1–255
//! printable ASCII characters, chosen by the client, e.g. a UUID; the quoted form
//! `"…"` of the IETF draft is accepted too). The key becomes the command id, a
//! UUIDv5 of the endpoint, its target (the SKU or order id) and the key
//! ([`keyed_command_id`]), so resending a request with the same key — after a
//! timeout, a 503, a dropped connection — returns the first request's answer and
//! has its effect once, whichever API process receives it. A key is bound to the
//! first outcome, a rejection included (send a new key to try again after a 409),
//! for as long as the processors remember command ids (24 h by default); reusing a
//! key with a different body is refused with 422 when the first outcome shows it
//! (a different restock quantity, cancel reason or order), and a retry that arrives
//! while the first request with the key is still waiting gets 409.
//!
//! Without a key the API keeps working, but a request is a new command each time:
//! a retried restock adds its quantity again, and a retried cancel, pay or ship
//! that had succeeded answers 409. `POST /orders` is idempotent per `order_id`
//! with or without a key (its command id is derived from the order id); without
//! either, every request places a new order under a new id.
//!
//! Every error is `{"error": "..."}` with a 4xx/5xx status; a request that fails
//! validation changes nothing. Failures of the service itself (Postgres, Kafka, the
//! command processors) never show their details: the body is a generic message and a
//! `correlation_id`, and the details are logged (`tracing::error!`) with that id.

use axum::extract::rejection::JsonRejection;
use axum::extract::{
    DefaultBodyLimit, FromRef, FromRequest, FromRequestParts, Path, Query, Request, State,
};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::time::Duration;

use tributary::command::{CommandGateway, CommandOutcome, GatewayError, SendOptions};
use tributary::{Command, DeclaresCommand, EventEnvelope};
use uuid::Uuid;

use crate::app::{ComponentHealth, Role, Running};
use crate::auth::{ApiKeys, Principal};
use crate::inventory::{InventoryError, InventoryEvent, Restock, VerifySku};
use crate::order::{
    CancelOrder, Line, MarkPaid, MarkShipped, Order, OrderError, OrderEvent, PlaceOrder,
    validate_lines,
};

/// Largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest unit price accepted, in cents.
pub const MAX_PRICE_CENTS: u64 = 100_000_000;

/// The header that makes a mutating request safe to retry (see the module
/// documentation).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Longest `Idempotency-Key` accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;
/// Namespace of the command ids and order ids derived from idempotency keys
/// (UUIDv5). Changing it would make retries across a deployment act twice.
pub const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0xb259_49c0_987c_40bd_bd51_620d_1ed2_f40b);
/// How long `/health` waits for Postgres.
const HEALTH_DB_TIMEOUT: Duration = Duration::from_secs(2);

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    gateway: CommandGateway,
    pool: PgPool,
    running: Option<Running>,
    metrics: Option<PrometheusHandle>,
    keys: ApiKeys,
}

impl ApiState {
    /// Handlers send through `gateway` and read the read models from `pool`. The
    /// key table is empty until [`ApiState::with_keys`]: every route but `/health`
    /// and `/metrics` answers 401.
    pub fn new(gateway: CommandGateway, pool: PgPool) -> Self {
        Self {
            gateway,
            pool,
            running: None,
            metrics: None,
            keys: ApiKeys::new(),
        }
    }

    /// Authenticates requests with `keys` (see [`crate::auth`]).
    #[must_use]
    pub fn with_keys(mut self, keys: ApiKeys) -> Self {
        self.keys = keys;
        self
    }

    /// Serves the metrics of `handle` on `GET /metrics` (Prometheus text format);
    /// without it `/metrics` answers 404. See [`crate::metrics::install`].
    #[must_use]
    pub fn with_metrics(mut self, handle: PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }

    /// Reports the components running in this process (its command processors
    /// and projection workers) in `/health`, which answers 503 when one of them
    /// is dead.
    #[must_use]
    pub fn with_roles(mut self, running: &Running) -> Self {
        self.running = Some(running.clone());
        self
    }
}

impl FromRef<ApiState> for ApiKeys {
    fn from_ref(state: &ApiState) -> Self {
        state.keys.clone()
    }
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/orders", post(place_order).get(list_orders))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/cancel", post(cancel_order))
        .route("/orders/{id}/pay", post(pay_order))
        .route("/orders/{id}/ship", post(ship_order))
        .route("/stock", get(list_stock))
        .route("/stock/{sku}", get(get_stock))
        .route("/stock/{sku}/restock", post(restock))
        .route("/customers/{customer}/notifications", get(notifications))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// An error response: a status and `{"error": message}`, plus `correlation_id`
/// for failures of the service (whose details are only logged) and
/// `WWW-Authenticate: Bearer` for a 401.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    correlation_id: Option<Uuid>,
}

impl ApiError {
    /// An error answered with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            correlation_id: None,
        }
    }

    /// A failure of the service: answers `status` with the generic `public`
    /// message and a new correlation id; `detail` (which may name tables, queries,
    /// brokers) is only logged, with the id.
    pub fn internal(status: StatusCode, public: &str, detail: &dyn std::fmt::Display) -> Self {
        let id = Uuid::now_v7();
        tracing::error!(correlation_id = %id, error = %detail, status = status.as_u16(), "{public}");
        Self {
            status,
            message: format!("{public} (correlation id {id})"),
            correlation_id: Some(id),
        }
    }

    /// A 401: no usable credentials.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The id under which the details of a service failure were logged.
    pub fn correlation_id(&self) -> Option<Uuid> {
        self.correlation_id
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.correlation_id {
            Some(id) => json!({ "error": self.message, "correlation_id": id }),
            None => json!({ "error": self.message }),
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        // Postgres out of reach: retrying helps. Anything else (a failing query, a
        // missing table, a row that does not decode) is a fault of the service.
        let unreachable = matches!(
            error,
            sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
        );
        if unreachable {
            Self::internal(
                StatusCode::SERVICE_UNAVAILABLE,
                "the read models are unavailable; try again",
                &error,
            )
        } else {
            Self::internal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error reading the read models",
                &error,
            )
        }
    }
}

/// What a client retries with so that the retry cannot act twice.
const RETRY_HINT: &str = "retry with the same Idempotency-Key (or, for POST /orders, the same order_id): the retry answers with the outcome and acts at most once";

impl From<GatewayError> for ApiError {
    fn from(error: GatewayError) -> Self {
        match error {
            GatewayError::Timeout { .. } => Self::internal(
                StatusCode::GATEWAY_TIMEOUT,
                &format!("no outcome in time; the command may still be applied: {RETRY_HINT}"),
                &error,
            ),
            GatewayError::AlreadyPending(_) => Self::new(
                StatusCode::CONFLICT,
                "a request with the same Idempotency-Key (or order_id) is still waiting for its outcome; retry once it has answered",
            ),
            other => Self::internal(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("the command could not be sent; {RETRY_HINT}"),
                &other,
            ),
        }
    }
}

/// The request's `Idempotency-Key`, if it has one: see the module documentation.
/// A malformed or repeated header is a 400.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let mut values = parts.headers.get_all(IDEMPOTENCY_KEY).iter();
        let Some(value) = values.next() else {
            return Ok(Self(None));
        };
        if values.next().is_some() {
            return Err(ApiError::bad_request(
                "send one Idempotency-Key header, not several",
            ));
        }
        let value = value
            .to_str()
            .map_err(|_| ApiError::bad_request(KEY_FORMAT))?;
        parse_idempotency_key(value)
            .map(|key| Self(Some(key)))
            .map_err(ApiError::bad_request)
    }
}

const KEY_FORMAT: &str =
    "Idempotency-Key must be 1-255 printable ASCII characters (unique per request, e.g. a UUID)";

/// Checks an `Idempotency-Key` value: 1–[`MAX_IDEMPOTENCY_KEY_BYTES`] printable
/// ASCII characters (space included), optionally in double quotes, which are
/// removed.
pub fn parse_idempotency_key(value: &str) -> Result<String, String> {
    let key = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    let printable = key.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if key.trim().is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES || !printable {
        return Err(KEY_FORMAT.to_owned());
    }
    Ok(key.to_owned())
}

/// The command id of the request `endpoint` (its route, e.g.
/// `POST /stock/{sku}/restock`) on `target` (the SKU or order id) with the
/// idempotency `key`: the same three always give the same id, and changing any of
/// them gives another. (`\n` separates them: no part can contain one.)
pub fn keyed_command_id(endpoint: &str, target: &str, key: &str) -> String {
    Uuid::new_v5(
        &IDEMPOTENCY_NAMESPACE,
        format!("{endpoint}\n{target}\n{key}").as_bytes(),
    )
    .to_string()
}

/// The order id `POST /orders` gives an order sent with the idempotency `key` and
/// no `order_id`, so that a retry places the same order.
pub fn keyed_order_id(key: &str) -> String {
    Uuid::new_v5(
        &IDEMPOTENCY_NAMESPACE,
        format!("POST /orders\n{key}").as_bytes(),
    )
    .to_string()
}

/// The command id of `endpoint` on `target`: derived from the key when there is
/// one, a new one (the gateway's) otherwise.
fn command_id(key: &IdempotencyKey, endpoint: &str, target: &str) -> Option<String> {
    key.0
        .as_deref()
        .map(|key| keyed_command_id(endpoint, target, key))
}

/// The 422 of a key (or order id) reused for a different request: the outcome
/// returned is the first request's, which did something else.
fn reused(key: &IdempotencyKey, first: String) -> ApiError {
    ApiError::unprocessable(match &key.0 {
        Some(key) => format!(
            "Idempotency-Key {key:?} was already used for a different request ({first}); send a new key"
        ),
        None => format!("{first}, not as in this request; use another order_id"),
    })
}

/// `Json<T>` whose rejections (bad JSON, wrong fields, too large, wrong content
/// type) are [`ApiError`]s with the same status.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = match rejection.status() {
        // A body that is valid JSON of the wrong shape is still a bad request.
        StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
        other => other,
    };
    ApiError::new(status, rejection.body_text())
}

/// Ids of orders, SKUs and customers: 1–64 of `A-Z a-z 0-9 . _ -`.
fn valid_id(kind: &str, id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::unprocessable(format!(
            "{kind} must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-', not {id:?}"
        )))
    }
}

/// The command id of placing `order_id`: placing the same order id again (a
/// client retry) returns the first outcome instead of failing or acting twice.
pub fn place_command_id(order_id: &str) -> String {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("shop/place/{order_id}").as_bytes(),
    )
    .to_string()
}

async fn send<C>(
    state: &ApiState,
    command: C,
    command_id: Option<String>,
) -> Result<CommandOutcome<C::Aggregate>, ApiError>
where
    C: Command,
    C::Aggregate: DeclaresCommand<C>,
{
    let options = SendOptions {
        command_id,
        ..SendOptions::default()
    };
    Ok(state.gateway.send_with(command, options).await?)
}

/// Body of `POST /orders`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderRequest {
    /// Chosen by the client for safe retries; derived from the `Idempotency-Key`
    /// when absent ([`keyed_order_id`]), a new UUID when there is no key either.
    pub order_id: Option<String>,
    /// Who orders: the caller, a customer. Optional; when sent it must be the
    /// caller's customer id (403 otherwise).
    pub customer: Option<String>,
    /// What.
    pub lines: Vec<Line>,
}

async fn place_order(
    State(state): State<ApiState>,
    principal: Principal,
    key: IdempotencyKey,
    JsonBody(req): JsonBody<PlaceOrderRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let customer = principal.ordering_customer(req.customer.as_deref())?;
    let order_id = match (req.order_id, &key.0) {
        (Some(order_id), _) => order_id,
        (None, Some(key)) => keyed_order_id(key),
        (None, None) => Uuid::now_v7().to_string(),
    };
    valid_id("order_id", &order_id)?;
    valid_id("customer", &customer)?;
    validate_lines(&req.lines).map_err(ApiError::unprocessable)?;
    for line in &req.lines {
        valid_id("sku", &line.sku)?;
        if line.price_cents > MAX_PRICE_CENTS {
            return Err(ApiError::unprocessable(format!(
                "price_cents of {} must be at most {MAX_PRICE_CENTS}",
                line.sku
            )));
        }
    }
    let skus: Vec<&str> = req.lines.iter().map(|l| l.sku.as_str()).collect();
    let unknown = unknown_skus(&state, &skus).await?;
    if !unknown.is_empty() {
        return Err(ApiError::unprocessable(format!(
            "unknown SKU: {}",
            unknown.join(", ")
        )));
    }
    let command = PlaceOrder {
        order_id: order_id.clone(),
        customer,
        lines: req.lines,
    };
    let (customer, lines) = (command.customer.clone(), command.lines.clone());
    match send(&state, command, Some(place_command_id(&order_id))).await? {
        CommandOutcome::Accepted { version, events } => {
            // A retry gets the first outcome: make sure it was this order.
            first_mismatch(&events, |event| match event {
                OrderEvent::Placed {
                    customer: c,
                    lines: l,
                } if *c != customer || *l != lines => Some(format!(
                    "order {order_id} was placed by {c} with {} line(s)",
                    l.len()
                )),
                _ => None,
            })
            .map_or(Ok(()), |first| Err(reused(&key, first)))?;
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "order_id": order_id, "status": "placed", "version": version })),
            ))
        }
        CommandOutcome::Rejected(error) => Err(order_rejection(error)),
    }
}

/// The first event that `differs` says shows another request than this one.
fn first_mismatch<E>(
    events: &[EventEnvelope<E>],
    differs: impl Fn(&E) -> Option<String>,
) -> Option<String> {
    events.iter().find_map(|e| differs(&e.event))
}

/// The SKUs among `skus` that the inventory does not know, in request order.
///
/// The `stock_levels` read model answers for the SKUs it lists. It lags behind
/// the inventory's events, so a SKU it does not list may have been restocked a
/// moment ago: for those the inventory aggregate itself is asked
/// ([`VerifySku`], a command without effect), which knows every restock that was
/// accepted. If the inventory processor cannot answer that command (an older
/// version without it), the SKU is treated as pending rather than unknown: the
/// order is placed, and its reservation is rejected if the SKU really is unknown.
async fn unknown_skus(state: &ApiState, skus: &[&str]) -> Result<Vec<String>, ApiError> {
    let listed: Vec<String> =
        sqlx::query_scalar("SELECT sku FROM stock_levels WHERE sku = ANY($1)")
            .bind(skus)
            .fetch_all(&state.pool)
            .await?;
    let mut checks = tokio::task::JoinSet::new();
    for sku in skus.iter().filter(|s| !listed.iter().any(|l| l == *s)) {
        let (gateway, sku) = (state.gateway.clone(), (*sku).to_owned());
        checks.spawn(async move {
            let outcome = gateway.send(VerifySku { sku: sku.clone() }).await;
            (sku, outcome)
        });
    }
    let mut unknown = Vec::new();
    while let Some(joined) = checks.join_next().await {
        let (sku, outcome) = joined.map_err(|error| {
            tracing::error!(%error, "SKU check task failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "could not check the SKUs; try again",
            )
        })?;
        match outcome {
            Ok(CommandOutcome::Accepted { .. }) => {}
            Ok(CommandOutcome::Rejected(InventoryError::UnknownSku(_))) => unknown.push(sku),
            Ok(CommandOutcome::Rejected(error)) => {
                tracing::warn!(sku, %error, "unexpected answer to VerifySku; treating the SKU as pending");
            }
            Err(GatewayError::Failed { reason, .. }) => {
                tracing::warn!(
                    sku,
                    reason,
                    "the inventory processor cannot verify SKUs; treating the SKU as pending"
                );
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(skus
        .iter()
        .filter(|s| unknown.iter().any(|u| u == *s))
        .map(|s| (*s).to_owned())
        .collect())
}

fn order_rejection(error: OrderError) -> ApiError {
    let status = match error {
        OrderError::NotFound => StatusCode::NOT_FOUND,
        OrderError::Invalid(_) | OrderError::UnknownLine(_) => StatusCode::UNPROCESSABLE_ENTITY,
        OrderError::AlreadyPlaced | OrderError::WrongStatus { .. } => StatusCode::CONFLICT,
    };
    ApiError::new(status, error.to_string())
}

/// Body of `POST /orders/{id}/cancel`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// Why; "cancelled by the customer" when absent.
    pub reason: Option<String>,
}

async fn cancel_order(
    State(state): State<ApiState>,
    principal: Principal,
    Path(order_id): Path<String>,
    key: IdempotencyKey,
    JsonBody(req): JsonBody<CancelRequest>,
) -> Result<Json<Value>, ApiError> {
    valid_id("order_id", &order_id)?;
    if let Some(customer) = principal.customer() {
        // The order summaries say whose the order is. They lag the order's events by
        // a moment: an order placed a moment ago may be "not found (yet)".
        let owner: Option<String> =
            sqlx::query_scalar("SELECT customer FROM order_summaries WHERE order_id = $1")
                .bind(&order_id)
                .fetch_optional(&state.pool)
                .await?;
        if owner.as_deref() != Some(customer) {
            return Err(ApiError::not_found(format!("no order {order_id} (yet)")));
        }
    }
    let reason = req
        .reason
        .unwrap_or_else(|| "cancelled by the customer".into());
    if reason.len() > 500 {
        return Err(ApiError::unprocessable("reason is at most 500 bytes"));
    }
    let command = CancelOrder {
        order_id: order_id.clone(),
        reason: reason.clone(),
    };
    let endpoint = "POST /orders/{id}/cancel";
    change_order(
        &state,
        &order_id,
        command,
        "cancelled",
        (&key, endpoint),
        |event| match event {
            OrderEvent::Cancelled { reason: r, .. } if *r != reason => {
                Some(format!("a cancel with reason {r:?}"))
            }
            _ => None,
        },
    )
    .await
}

async fn pay_order(
    State(state): State<ApiState>,
    principal: Principal,
    Path(order_id): Path<String>,
    key: IdempotencyKey,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin("paying an order")?;
    valid_id("order_id", &order_id)?;
    let command = MarkPaid {
        order_id: order_id.clone(),
    };
    let endpoint = "POST /orders/{id}/pay";
    change_order(&state, &order_id, command, "paid", (&key, endpoint), |_| {
        None
    })
    .await
}

async fn ship_order(
    State(state): State<ApiState>,
    principal: Principal,
    Path(order_id): Path<String>,
    key: IdempotencyKey,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin("shipping an order")?;
    valid_id("order_id", &order_id)?;
    let command = MarkShipped {
        order_id: order_id.clone(),
    };
    let endpoint = "POST /orders/{id}/ship";
    change_order(
        &state,
        &order_id,
        command,
        "shipped",
        (&key, endpoint),
        |_| None,
    )
    .await
}

/// Sends a command that moves an existing order to `status`, with the command id
/// of `(key, endpoint)` on the order. `differs` tells, from the outcome's events,
/// whether the outcome is that of another request sent with the same key.
async fn change_order<C>(
    state: &ApiState,
    order_id: &str,
    command: C,
    status: &str,
    (key, endpoint): (&IdempotencyKey, &str),
    differs: impl Fn(&OrderEvent) -> Option<String>,
) -> Result<Json<Value>, ApiError>
where
    C: Command<Aggregate = Order>,
    Order: DeclaresCommand<C>,
{
    match send(state, command, command_id(key, endpoint, order_id)).await? {
        CommandOutcome::Accepted { version, events } => {
            if let Some(first) = first_mismatch(&events, differs) {
                return Err(reused(key, first));
            }
            Ok(Json(
                json!({ "order_id": order_id, "status": status, "version": version }),
            ))
        }
        CommandOutcome::Rejected(error) => Err(order_rejection(error)),
    }
}

/// One row of `order_summaries`.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct OrderSummary {
    /// The order.
    pub order_id: String,
    /// Who.
    pub customer: String,
    /// `placed`, `confirmed`, `cancelled`, `paid`, `shipped`.
    pub status: String,
    /// Sum of the lines.
    pub total_cents: i64,
    /// The lines.
    pub lines: sqlx::types::Json<Vec<Line>>,
    /// Lines reserved so far.
    pub reserved_lines: i32,
    /// Why it was cancelled.
    pub reason: Option<String>,
    /// The order's version the row reflects.
    pub version: i64,
}

const SUMMARY_COLUMNS: &str =
    "order_id, customer, status, total_cents, lines, reserved_lines, reason, version";

async fn get_order(
    State(state): State<ApiState>,
    principal: Principal,
    Path(order_id): Path<String>,
) -> Result<Json<OrderSummary>, ApiError> {
    valid_id("order_id", &order_id)?;
    // Another customer's order is "not found", as one that does not exist.
    let row: Option<OrderSummary> = sqlx::query_as(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM order_summaries
         WHERE order_id = $1 AND ($2::text IS NULL OR customer = $2)"
    ))
    .bind(&order_id)
    .bind(principal.customer())
    .fetch_optional(&state.pool)
    .await?;
    row.map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no order {order_id} (yet)")))
}

/// Query of `GET /orders`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListOrders {
    /// Only this customer's orders (a customer lists only its own: see the
    /// module documentation).
    pub customer: Option<String>,
    /// Only orders in this status.
    pub status: Option<String>,
    /// At most this many (1–1000, default 100).
    pub limit: Option<i64>,
}

async fn list_orders(
    State(state): State<ApiState>,
    principal: Principal,
    query: Result<Query<ListOrders>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<OrderSummary>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let customer = principal.orders_filter(q.customer)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::unprocessable("limit must be between 1 and 1000"));
    }
    let rows: Vec<OrderSummary> = sqlx::query_as(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM order_summaries
         WHERE ($1::text IS NULL OR customer = $1) AND ($2::text IS NULL OR status = $2)
         ORDER BY placed_at DESC, order_id LIMIT $3"
    ))
    .bind(customer)
    .bind(q.status)
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(rows))
}

/// Body of `POST /stock/{sku}/restock`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestockRequest {
    /// Units to add (≥ 1).
    pub quantity: u64,
}

async fn restock(
    State(state): State<ApiState>,
    principal: Principal,
    Path(sku): Path<String>,
    key: IdempotencyKey,
    JsonBody(req): JsonBody<RestockRequest>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin("restocking")?;
    valid_id("sku", &sku)?;
    if req.quantity == 0 || req.quantity > 1_000_000_000 {
        return Err(ApiError::unprocessable(
            "quantity must be between 1 and 1000000000",
        ));
    }
    let command = Restock {
        sku: sku.clone(),
        quantity: req.quantity,
    };
    let id = command_id(&key, "POST /stock/{sku}/restock", &sku);
    match send(&state, command, id).await? {
        CommandOutcome::Accepted { version, events } => {
            first_mismatch(&events, |event| match event {
                InventoryEvent::Restocked { quantity } if *quantity != req.quantity => {
                    Some(format!("a restock of {quantity}"))
                }
                _ => None,
            })
            .map_or(Ok(()), |first| Err(reused(&key, first)))?;
            Ok(Json(json!({ "sku": sku, "version": version })))
        }
        CommandOutcome::Rejected(error) => Err(inventory_rejection(error)),
    }
}

fn inventory_rejection(error: InventoryError) -> ApiError {
    let status = match error {
        InventoryError::UnknownSku(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::CONFLICT,
    };
    ApiError::new(status, error.to_string())
}

/// One row of `stock_levels`.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct StockLevel {
    /// The SKU.
    pub sku: String,
    /// Units that can be reserved.
    pub available: i64,
    /// Units held for orders.
    pub reserved: i64,
    /// Units shipped.
    pub shipped: i64,
}

async fn list_stock(
    State(state): State<ApiState>,
    _principal: Principal,
) -> Result<Json<Vec<StockLevel>>, ApiError> {
    let rows =
        sqlx::query_as("SELECT sku, available, reserved, shipped FROM stock_levels ORDER BY sku")
            .fetch_all(&state.pool)
            .await?;
    Ok(Json(rows))
}

async fn get_stock(
    State(state): State<ApiState>,
    _principal: Principal,
    Path(sku): Path<String>,
) -> Result<Json<StockLevel>, ApiError> {
    valid_id("sku", &sku)?;
    let row: Option<StockLevel> =
        sqlx::query_as("SELECT sku, available, reserved, shipped FROM stock_levels WHERE sku = $1")
            .bind(&sku)
            .fetch_optional(&state.pool)
            .await?;
    row.map(Json)
        .ok_or_else(|| ApiError::not_found(format!("unknown SKU {sku}")))
}

/// One row of `notifications`.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Notification {
    /// The order concerned.
    pub order_id: String,
    /// `order_confirmed`, `order_cancelled`, `order_shipped`.
    pub kind: String,
    /// The text.
    pub message: String,
    /// When the event happened.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

async fn notifications(
    State(state): State<ApiState>,
    principal: Principal,
    Path(customer): Path<String>,
) -> Result<Json<Vec<Notification>>, ApiError> {
    valid_id("customer", &customer)?;
    if !principal.may_access(&customer) {
        return Err(crate::auth::Denied(format!(
            "you cannot read the notifications of customer {customer}"
        ))
        .into());
    }
    let rows = sqlx::query_as(
        "SELECT order_id, kind, message, created_at FROM notifications
         WHERE customer = $1 ORDER BY created_at, order_id",
    )
    .bind(&customer)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(rows))
}

async fn metrics(State(state): State<ApiState>) -> Response {
    match &state.metrics {
        Some(handle) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            handle.render(),
        )
            .into_response(),
        None => ApiError::not_found("metrics are not enabled in this process").into_response(),
    }
}

/// The body of `GET /health`.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    /// `ok` (200) or `unhealthy` (503).
    pub status: &'static str,
    /// What makes the process unhealthy, each naming the part concerned.
    pub problems: Vec<String>,
    /// `ok`, or why Postgres did not answer.
    pub postgres: String,
    /// The roles this process runs (`api`, `order-processor`,
    /// `inventory-processor`, `projections`).
    pub roles: Vec<&'static str>,
    /// Each command processor and projection worker of the process.
    pub components: Vec<ComponentHealth>,
}

async fn health(State(state): State<ApiState>) -> Response {
    let postgres = match tokio::time::timeout(
        HEALTH_DB_TIMEOUT,
        sqlx::query("SELECT 1").execute(&state.pool),
    )
    .await
    {
        Ok(Ok(_)) => None,
        Ok(Err(error)) => Some(error.to_string()),
        Err(_) => Some(format!("no answer within {HEALTH_DB_TIMEOUT:?}")),
    };
    let components = match &state.running {
        Some(running) => running.health().await,
        None => Vec::new(),
    };
    let mut problems: Vec<String> = postgres
        .iter()
        .map(|error| format!("Postgres: {error}"))
        .collect();
    // A processor that cannot read one of its partitions serves the others, but the
    // commands of that partition fail: the process is not healthy either.
    problems.extend(components.iter().filter_map(ComponentHealth::problem));
    let mut roles = vec![Role::Api.name()];
    if let Some(running) = &state.running {
        for component in running.components() {
            let role = component.role().name();
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
    }
    let healthy = problems.is_empty();
    let report = HealthReport {
        status: if healthy { "ok" } else { "unhealthy" },
        problems,
        postgres: postgres.unwrap_or_else(|| "ok".to_owned()),
        roles,
        components,
    };
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_checked() {
        assert_eq!(parse_idempotency_key("abc-1"), Ok("abc-1".to_owned()));
        assert_eq!(
            parse_idempotency_key("\"8e03978e-40d5\""),
            Ok("8e03978e-40d5".to_owned())
        );
        assert_eq!(parse_idempotency_key("a b"), Ok("a b".to_owned()));
        for bad in ["", " ", "\"\"", "tab\there", "é"] {
            assert!(parse_idempotency_key(bad).is_err(), "{bad:?}");
        }
        let longest = "k".repeat(MAX_IDEMPOTENCY_KEY_BYTES);
        assert!(parse_idempotency_key(&longest).is_ok());
        assert!(parse_idempotency_key(&format!("{longest}k")).is_err());
        assert!(KEY_FORMAT.contains(&format!("1-{MAX_IDEMPOTENCY_KEY_BYTES} ")));
    }

    #[test]
    fn keyed_ids_depend_on_endpoint_target_and_key_only() {
        let id = |e, t, k| keyed_command_id(e, t, k);
        let restock = "POST /stock/{sku}/restock";
        assert_eq!(id(restock, "tea", "k1"), id(restock, "tea", "k1"));
        assert_ne!(id(restock, "tea", "k1"), id(restock, "tea", "k2"));
        assert_ne!(id(restock, "tea", "k1"), id(restock, "mug", "k1"));
        assert_ne!(
            id("POST /orders/{id}/pay", "o-1", "k1"),
            id("POST /orders/{id}/ship", "o-1", "k1")
        );
        assert_eq!(keyed_order_id("k1"), keyed_order_id("k1"));
        assert_ne!(keyed_order_id("k1"), keyed_order_id("k2"));
        assert!(valid_id("order_id", &keyed_order_id("k1")).is_ok());
    }
}

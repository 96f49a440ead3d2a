//! The HTTP API (axum, JSON). Commands go through the [`CommandGateway`]; queries
//! read the Postgres read models.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /orders` | place an order `{order_id?, customer, lines: [{sku, quantity, price_cents}]}` → 202 |
//! | `POST /orders/{id}/cancel` | cancel `{reason?}` |
//! | `POST /orders/{id}/pay`, `POST /orders/{id}/ship` | mark a confirmed order paid, a paid one shipped |
//! | `GET /orders/{id}` | the order's summary |
//! | `GET /orders?customer=&status=&limit=` | list summaries, newest first |
//! | `POST /stock/{sku}/restock` | add stock `{quantity}` |
//! | `GET /stock`, `GET /stock/{sku}` | stock levels |
//! | `GET /customers/{customer}/notifications` | the customer's notifications |
//! | `GET /health` | 200 when Postgres is reachable and no processor of this process has a quarantined partition (one whose events it cannot read), 503 with the details otherwise |
//!
//! Every error is `{"error": "..."}` with a 4xx/5xx status; a request that fails
//! validation changes nothing.

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::sync::Arc;

use tributary::command::{
    CommandGateway, CommandOutcome, GatewayError, ProcessorStats, SendOptions,
};
use tributary::{Command, Handle};
use uuid::Uuid;

use crate::inventory::{InventoryError, Restock};
use crate::order::{
    CancelOrder, Line, MarkPaid, MarkShipped, Order, OrderError, PlaceOrder, validate_lines,
};

/// Largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest unit price accepted, in cents.
pub const MAX_PRICE_CENTS: u64 = 100_000_000;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    gateway: CommandGateway,
    pool: PgPool,
    processors: Vec<(&'static str, Arc<ProcessorStats>)>,
}

impl ApiState {
    /// Handlers send through `gateway` and read the read models from `pool`.
    pub fn new(gateway: CommandGateway, pool: PgPool) -> Self {
        Self {
            gateway,
            pool,
            processors: Vec::new(),
        }
    }

    /// Reports the command processors running in this process in `/health`.
    #[must_use]
    pub fn with_processors(mut self, running: &crate::app::Running) -> Self {
        self.processors = running.processor_stats();
        self
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
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// An error response: a status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn unprocessable(message: impl Into<String>) -> Self {
        Self(StatusCode::UNPROCESSABLE_ENTITY, message.into())
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self(StatusCode::NOT_FOUND, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        tracing::error!(%error, "read model query failed");
        Self(
            StatusCode::SERVICE_UNAVAILABLE,
            "the read models are unavailable; try again".into(),
        )
    }
}

impl From<GatewayError> for ApiError {
    fn from(error: GatewayError) -> Self {
        match error {
            GatewayError::Timeout { .. } => Self(
                StatusCode::GATEWAY_TIMEOUT,
                format!("{error}; the command may still be applied: retry with the same id"),
            ),
            other => {
                tracing::error!(error = %other, "command not sent");
                Self(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{other}; retry with the same id"),
                )
            }
        }
    }
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
    ApiError(status, rejection.body_text())
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
    C::Aggregate: Handle<C>,
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
    /// Chosen by the client for safe retries; a new UUID when absent.
    pub order_id: Option<String>,
    /// Who orders.
    pub customer: String,
    /// What.
    pub lines: Vec<Line>,
}

async fn place_order(
    State(state): State<ApiState>,
    JsonBody(req): JsonBody<PlaceOrderRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let order_id = req.order_id.unwrap_or_else(|| Uuid::now_v7().to_string());
    valid_id("order_id", &order_id)?;
    valid_id("customer", &req.customer)?;
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
    let known: Vec<String> = sqlx::query_scalar("SELECT sku FROM stock_levels WHERE sku = ANY($1)")
        .bind(&skus)
        .fetch_all(&state.pool)
        .await?;
    let unknown: Vec<&str> = skus
        .iter()
        .copied()
        .filter(|s| !known.iter().any(|k| k == s))
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::unprocessable(format!(
            "unknown SKU: {}",
            unknown.join(", ")
        )));
    }
    let command = PlaceOrder {
        order_id: order_id.clone(),
        customer: req.customer,
        lines: req.lines,
    };
    match send(&state, command, Some(place_command_id(&order_id))).await? {
        CommandOutcome::Accepted { version, .. } => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "order_id": order_id, "status": "placed", "version": version })),
        )),
        CommandOutcome::Rejected(error) => Err(order_rejection(error)),
    }
}

fn order_rejection(error: OrderError) -> ApiError {
    let status = match error {
        OrderError::NotFound => StatusCode::NOT_FOUND,
        OrderError::Invalid(_) | OrderError::UnknownLine(_) => StatusCode::UNPROCESSABLE_ENTITY,
        OrderError::AlreadyPlaced | OrderError::WrongStatus { .. } => StatusCode::CONFLICT,
    };
    ApiError(status, error.to_string())
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
    Path(order_id): Path<String>,
    JsonBody(req): JsonBody<CancelRequest>,
) -> Result<Json<Value>, ApiError> {
    valid_id("order_id", &order_id)?;
    let reason = req
        .reason
        .unwrap_or_else(|| "cancelled by the customer".into());
    if reason.len() > 500 {
        return Err(ApiError::unprocessable("reason is at most 500 bytes"));
    }
    let command = CancelOrder {
        order_id: order_id.clone(),
        reason,
    };
    change_order(&state, &order_id, command, "cancelled").await
}

async fn pay_order(
    State(state): State<ApiState>,
    Path(order_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    valid_id("order_id", &order_id)?;
    let command = MarkPaid {
        order_id: order_id.clone(),
    };
    change_order(&state, &order_id, command, "paid").await
}

async fn ship_order(
    State(state): State<ApiState>,
    Path(order_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    valid_id("order_id", &order_id)?;
    let command = MarkShipped {
        order_id: order_id.clone(),
    };
    change_order(&state, &order_id, command, "shipped").await
}

/// Sends a command that moves an existing order to `status`.
async fn change_order<C>(
    state: &ApiState,
    order_id: &str,
    command: C,
    status: &str,
) -> Result<Json<Value>, ApiError>
where
    C: Command<Aggregate = Order>,
    Order: Handle<C>,
{
    match send(state, command, None).await? {
        CommandOutcome::Accepted { version, .. } => Ok(Json(
            json!({ "order_id": order_id, "status": status, "version": version }),
        )),
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
    Path(order_id): Path<String>,
) -> Result<Json<OrderSummary>, ApiError> {
    valid_id("order_id", &order_id)?;
    let row: Option<OrderSummary> = sqlx::query_as(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM order_summaries WHERE order_id = $1"
    ))
    .bind(&order_id)
    .fetch_optional(&state.pool)
    .await?;
    row.map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no order {order_id} (yet)")))
}

/// Query of `GET /orders`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListOrders {
    /// Only this customer's orders.
    pub customer: Option<String>,
    /// Only orders in this status.
    pub status: Option<String>,
    /// At most this many (1–1000, default 100).
    pub limit: Option<i64>,
}

async fn list_orders(
    State(state): State<ApiState>,
    query: Result<Query<ListOrders>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<OrderSummary>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::unprocessable("limit must be between 1 and 1000"));
    }
    let rows: Vec<OrderSummary> = sqlx::query_as(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM order_summaries
         WHERE ($1::text IS NULL OR customer = $1) AND ($2::text IS NULL OR status = $2)
         ORDER BY placed_at DESC, order_id LIMIT $3"
    ))
    .bind(q.customer)
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
    Path(sku): Path<String>,
    JsonBody(req): JsonBody<RestockRequest>,
) -> Result<Json<Value>, ApiError> {
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
    match send(&state, command, None).await? {
        CommandOutcome::Accepted { version, .. } => {
            Ok(Json(json!({ "sku": sku, "version": version })))
        }
        CommandOutcome::Rejected(error) => Err(inventory_rejection(error)),
    }
}

fn inventory_rejection(error: InventoryError) -> ApiError {
    ApiError(StatusCode::CONFLICT, error.to_string())
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

async fn list_stock(State(state): State<ApiState>) -> Result<Json<Vec<StockLevel>>, ApiError> {
    let rows =
        sqlx::query_as("SELECT sku, available, reserved, shipped FROM stock_levels ORDER BY sku")
            .fetch_all(&state.pool)
            .await?;
    Ok(Json(rows))
}

async fn get_stock(
    State(state): State<ApiState>,
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
    Path(customer): Path<String>,
) -> Result<Json<Vec<Notification>>, ApiError> {
    valid_id("customer", &customer)?;
    let rows = sqlx::query_as(
        "SELECT order_id, kind, message, created_at FROM notifications
         WHERE customer = $1 ORDER BY created_at, order_id",
    )
    .bind(&customer)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(rows))
}

async fn health(State(state): State<ApiState>) -> Result<Response, ApiError> {
    sqlx::query("SELECT 1").execute(&state.pool).await?;
    // A processor that cannot read one of its partitions serves the others, but the
    // commands of that partition fail: the process is not healthy.
    let quarantined: Vec<Value> = state
        .processors
        .iter()
        .flat_map(|(name, stats)| {
            stats
                .quarantined_partitions()
                .into_iter()
                .map(move |(partition, reason)| {
                    json!({ "processor": name, "partition": partition, "reason": reason })
                })
        })
        .collect();
    if quarantined.is_empty() {
        return Ok(Json(json!({ "status": "ok" })).into_response());
    }
    Ok((
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "status": "degraded", "quarantined": quarantined })),
    )
        .into_response())
}

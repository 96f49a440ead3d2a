//! The shop's read models in Postgres, each maintained by a projection worker:
//! order summaries, stock levels and customer notifications.

use sqlx::PgConnection;
use tributary::EventEnvelope;
use tributary::projection::{HandlerError, Handles, Projection};

use crate::inventory::InventoryEvent;
use crate::order::{OrderEvent, Status, total_cents};

/// `order_summaries`: one row per order with status, total and lines.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderSummaries;

impl Projection for OrderSummaries {
    const NAME: &'static str = "order_summaries";

    async fn migrate(&self, tx: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS order_summaries (
                order_id text PRIMARY KEY,
                customer text NOT NULL,
                status text NOT NULL,
                total_cents bigint NOT NULL,
                lines jsonb NOT NULL,
                reserved_lines integer NOT NULL DEFAULT 0,
                reason text,
                version bigint NOT NULL,
                placed_at timestamptz NOT NULL,
                updated_at timestamptz NOT NULL
            )",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "CREATE INDEX IF NOT EXISTS order_summaries_customer ON order_summaries (customer, placed_at)",
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query("TRUNCATE order_summaries").execute(tx).await?;
        Ok(())
    }
}

impl Handles<OrderEvent> for OrderSummaries {
    async fn handle(
        &self,
        e: &EventEnvelope<OrderEvent>,
        tx: &mut PgConnection,
    ) -> Result<(), HandlerError> {
        let id = e.aggregate_id.as_str();
        let version = i64::try_from(e.sequence)?;
        let (status, reason) = match &e.event {
            OrderEvent::Placed { customer, lines } => {
                sqlx::query(
                    "INSERT INTO order_summaries
                        (order_id, customer, status, total_cents, lines, version, placed_at, updated_at)
                     VALUES ($1, $2, 'placed', $3, $4, $5, $6, $6)",
                )
                .bind(id)
                .bind(customer)
                .bind(i64::try_from(total_cents(lines))?)
                .bind(sqlx::types::Json(lines))
                .bind(version)
                .bind(e.time)
                .execute(tx)
                .await?;
                return Ok(());
            }
            OrderEvent::LineReserved { .. } => {
                sqlx::query(
                    "UPDATE order_summaries SET reserved_lines = reserved_lines + 1,
                        version = $2, updated_at = $3 WHERE order_id = $1",
                )
                .bind(id)
                .bind(version)
                .bind(e.time)
                .execute(tx)
                .await?;
                return Ok(());
            }
            OrderEvent::Confirmed { .. } => (Status::Confirmed, None),
            OrderEvent::Cancelled { reason, .. } => (Status::Cancelled, Some(reason.as_str())),
            OrderEvent::Paid => (Status::Paid, None),
            OrderEvent::Shipped { .. } => (Status::Shipped, None),
        };
        sqlx::query(
            "UPDATE order_summaries SET status = $2, reason = COALESCE($3, reason),
                version = $4, updated_at = $5 WHERE order_id = $1",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(reason)
        .bind(version)
        .bind(e.time)
        .execute(tx)
        .await?;
        Ok(())
    }
}

/// `stock_levels`: available, reserved and shipped units per SKU.
#[derive(Debug, Clone, Copy, Default)]
pub struct StockLevels;

impl Projection for StockLevels {
    const NAME: &'static str = "stock_levels";

    async fn migrate(&self, tx: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS stock_levels (
                sku text PRIMARY KEY,
                available bigint NOT NULL,
                reserved bigint NOT NULL,
                shipped bigint NOT NULL,
                updated_at timestamptz NOT NULL
            )",
        )
        .execute(tx)
        .await?;
        Ok(())
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query("TRUNCATE stock_levels").execute(tx).await?;
        Ok(())
    }
}

impl Handles<InventoryEvent> for StockLevels {
    async fn handle(
        &self,
        e: &EventEnvelope<InventoryEvent>,
        tx: &mut PgConnection,
    ) -> Result<(), HandlerError> {
        // (available, reserved, shipped) deltas
        let (available, reserved, shipped): (u64, i64, u64) = match &e.event {
            InventoryEvent::Restocked { quantity } => (*quantity, 0, 0),
            InventoryEvent::Reserved { quantity, .. } => {
                let q = i64::try_from(*quantity)?;
                return delta(tx, e, -q, q, 0).await;
            }
            InventoryEvent::Released { quantity, .. } => {
                let q = i64::try_from(*quantity)?;
                return delta(tx, e, q, -q, 0).await;
            }
            InventoryEvent::Shipped { quantity, .. } => {
                let q = i64::try_from(*quantity)?;
                return delta(tx, e, 0, -q, q).await;
            }
            InventoryEvent::ReservationRejected { .. } => return Ok(()),
        };
        delta(
            tx,
            e,
            i64::try_from(available)?,
            reserved,
            i64::try_from(shipped)?,
        )
        .await
    }
}

async fn delta(
    tx: &mut PgConnection,
    e: &EventEnvelope<InventoryEvent>,
    available: i64,
    reserved: i64,
    shipped: i64,
) -> Result<(), HandlerError> {
    sqlx::query(
        "INSERT INTO stock_levels AS s (sku, available, reserved, shipped, updated_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (sku) DO UPDATE SET available = s.available + $2,
            reserved = s.reserved + $3, shipped = s.shipped + $4, updated_at = $5",
    )
    .bind(e.aggregate_id.as_str())
    .bind(available)
    .bind(reserved)
    .bind(shipped)
    .bind(e.time)
    .execute(tx)
    .await?;
    Ok(())
}

/// `notifications`: one row per message a customer should get (order confirmed,
/// cancelled with the reason, shipped), keyed by the event that caused it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Notifications;

impl Projection for Notifications {
    const NAME: &'static str = "notifications";

    async fn migrate(&self, tx: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS notifications (
                event_id uuid PRIMARY KEY,
                customer text NOT NULL,
                order_id text NOT NULL,
                kind text NOT NULL,
                message text NOT NULL,
                created_at timestamptz NOT NULL
            )",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "CREATE INDEX IF NOT EXISTS notifications_customer ON notifications (customer, created_at)",
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query("TRUNCATE notifications").execute(tx).await?;
        Ok(())
    }
}

impl Handles<OrderEvent> for Notifications {
    async fn handle(
        &self,
        e: &EventEnvelope<OrderEvent>,
        tx: &mut PgConnection,
    ) -> Result<(), HandlerError> {
        let order_id = e.aggregate_id.as_str();
        let (customer, kind, message) = match &e.event {
            OrderEvent::Confirmed {
                customer,
                total_cents,
            } => (
                customer.as_str(),
                "order_confirmed",
                format!(
                    "Your order {order_id} is confirmed. Total: {}.{:02}",
                    total_cents / 100,
                    total_cents % 100
                ),
            ),
            OrderEvent::Cancelled {
                customer, reason, ..
            } => (
                customer.as_str(),
                "order_cancelled",
                format!("Your order {order_id} was cancelled: {reason}"),
            ),
            OrderEvent::Shipped { customer, .. } => (
                customer.as_str(),
                "order_shipped",
                format!("Your order {order_id} has shipped"),
            ),
            OrderEvent::Placed { .. } | OrderEvent::LineReserved { .. } | OrderEvent::Paid => {
                return Ok(());
            }
        };
        insert(tx, e, customer, kind, &message).await
    }
}

async fn insert(
    tx: &mut PgConnection,
    e: &EventEnvelope<OrderEvent>,
    customer: &str,
    kind: &str,
    message: &str,
) -> Result<(), HandlerError> {
    sqlx::query(
        "INSERT INTO notifications (event_id, customer, order_id, kind, message, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(e.id)
    .bind(customer)
    .bind(e.aggregate_id.as_str())
    .bind(kind)
    .bind(message)
    .bind(e.time)
    .execute(tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeDelta, Utc};
    use tributary::testkit::{ProjectionTest, TEST_EPOCH, envelope, unique_schema};

    use super::*;
    use crate::order::Line;

    /// Postgres as `scripts/test.sh` (and `scripts/services.sh`) provide it.
    fn database_url() -> String {
        std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
    }

    fn at(sequence: i64) -> DateTime<Utc> {
        TEST_EPOCH + TimeDelta::seconds(sequence)
    }

    #[tokio::test]
    async fn stock_levels_follow_reservations_releases_and_shipments() {
        let url = database_url();
        let mut test = ProjectionTest::new(StockLevels, &url, &unique_schema("shop_stock")).await;
        test.given([
            envelope("tea", 1, InventoryEvent::Restocked { quantity: 10 }),
            envelope("mug", 1, InventoryEvent::Restocked { quantity: 1 }),
        ])
        .await
        .given([
            envelope(
                "tea",
                2,
                InventoryEvent::Reserved {
                    order_id: "o-1".into(),
                    quantity: 3,
                },
            ),
            envelope(
                "mug",
                2,
                InventoryEvent::ReservationRejected {
                    order_id: "o-1".into(),
                    requested: 2,
                    available: 1,
                    reason: "only 1 of 2 left".into(),
                },
            ),
            envelope(
                "tea",
                3,
                InventoryEvent::Reserved {
                    order_id: "o-2".into(),
                    quantity: 2,
                },
            ),
        ])
        .await
        .given([
            envelope(
                "tea",
                4,
                InventoryEvent::Released {
                    order_id: "o-2".into(),
                    quantity: 2,
                },
            ),
            envelope(
                "tea",
                5,
                InventoryEvent::Shipped {
                    order_id: "o-1".into(),
                    quantity: 3,
                },
            ),
        ])
        .await;
        test.expect_rows(
            "SELECT sku, available, reserved, shipped, updated_at FROM stock_levels ORDER BY sku",
            [
                ("mug".to_owned(), 1_i64, 0_i64, 0_i64, at(1)),
                ("tea".to_owned(), 7, 0, 3, at(5)),
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn order_summaries_track_status_reservations_and_reason() {
        let url = database_url();
        let mut test =
            ProjectionTest::new(OrderSummaries, &url, &unique_schema("shop_summaries")).await;
        let lines = vec![
            Line {
                sku: "tea".into(),
                quantity: 2,
                price_cents: 450,
            },
            Line {
                sku: "mug".into(),
                quantity: 1,
                price_cents: 900,
            },
        ];
        test.given([
            envelope(
                "o-1",
                1,
                OrderEvent::Placed {
                    customer: "ada".into(),
                    lines: lines.clone(),
                },
            ),
            envelope("o-1", 2, OrderEvent::LineReserved { sku: "tea".into() }),
            envelope("o-1", 3, OrderEvent::LineReserved { sku: "mug".into() }),
            envelope(
                "o-1",
                4,
                OrderEvent::Confirmed {
                    customer: "ada".into(),
                    total_cents: 1800,
                },
            ),
            envelope(
                "o-2",
                1,
                OrderEvent::Placed {
                    customer: "bob".into(),
                    lines,
                },
            ),
            envelope(
                "o-2",
                2,
                OrderEvent::Cancelled {
                    customer: "bob".into(),
                    reason: "out of stock: mug".into(),
                    skus: vec!["tea".into(), "mug".into()],
                },
            ),
        ])
        .await;
        test.expect_rows(
            "SELECT order_id, customer, status, total_cents, reserved_lines, reason, version,
                    placed_at, updated_at
             FROM order_summaries ORDER BY order_id",
            [
                (
                    "o-1".to_owned(),
                    "ada".to_owned(),
                    "confirmed".to_owned(),
                    1800_i64,
                    2_i32,
                    None::<String>,
                    4_i64,
                    at(1),
                    at(4),
                ),
                (
                    "o-2".to_owned(),
                    "bob".to_owned(),
                    "cancelled".to_owned(),
                    1800,
                    0,
                    Some("out of stock: mug".to_owned()),
                    2,
                    at(1),
                    at(2),
                ),
            ],
        )
        .await;
    }
}

//! Projections: named consumers of events topics that maintain Postgres read models
//! with exactly-once effect (guarantees G4 and G5 of the design).
//!
//! A projection is a type that implements [`Projection`] (its name, and a `reset`
//! for rebuilds) and [`Handles<E>`] for each event enum it reads. A
//! [`ProjectionWorker`] runs it: one Kafka consumer group per projection, records
//! applied in batches, each batch in one Postgres transaction together with the
//! projection's checkpoint, which only advances if it still holds the offset the
//! batch started from.
//!
//! ```no_run
//! use sqlx::PgConnection;
//! use tributary::projection::{HandlerError, Handles, Projection, ProjectionWorker};
//! # use tributary::{Aggregate, Apply, DomainEvent, EventCodec, EventEnvelope, KafkaConfig, PgStore};
//! # #[derive(Debug, Default, serde::Serialize, serde::Deserialize, Aggregate)]
//! # #[aggregate(name = "order", event = OrderEvent, error = OrderError)]
//! # struct Order;
//! # impl Apply<OrderEvent> for Order { fn apply(&mut self, _: &OrderEvent) {} }
//! # #[derive(Debug, serde::Serialize, serde::Deserialize, thiserror::Error)]
//! # #[error("never")]
//! # struct OrderError;
//! # #[derive(Debug, serde::Serialize, serde::Deserialize, DomainEvent)]
//! # #[event(aggregate = Order)]
//! # enum OrderEvent { Placed { total_cents: i64 }, Cancelled {} }
//!
//! struct OrderTotals;
//!
//! impl Projection for OrderTotals {
//!     const NAME: &'static str = "order_totals";
//!
//!     async fn migrate(&self, tx: &mut PgConnection) -> Result<(), HandlerError> {
//!         sqlx::query("CREATE TABLE IF NOT EXISTS order_totals (id text PRIMARY KEY, cents bigint NOT NULL)")
//!             .execute(tx).await?;
//!         Ok(())
//!     }
//!
//!     async fn reset(&self, tx: &mut PgConnection) -> Result<(), HandlerError> {
//!         sqlx::query("TRUNCATE order_totals").execute(tx).await?;
//!         Ok(())
//!     }
//! }
//!
//! impl Handles<OrderEvent> for OrderTotals {
//!     async fn handle(&self, e: &EventEnvelope<OrderEvent>, tx: &mut PgConnection) -> Result<(), HandlerError> {
//!         if let OrderEvent::Placed { total_cents } = &e.event {
//!             sqlx::query("INSERT INTO order_totals VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET cents = EXCLUDED.cents")
//!                 .bind(e.aggregate_id.as_str()).bind(total_cents).execute(tx).await?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = PgStore::connect("postgres://postgres@127.0.0.1/app", "public").await?;
//! let worker = ProjectionWorker::new(OrderTotals, store, KafkaConfig::from_env())
//!     .subscribe("shop", EventCodec::<OrderEvent>::new());
//! let handle = worker.clone().spawn();
//! // … later
//! handle.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! See `docs/projections.md` for the guarantees, failure modes and tuning.

pub mod catalog;
mod checkpoint;
mod dead_letter;
mod error;
mod lag;
mod received;
mod settings;
pub(crate) mod source;
mod status;
mod topics;
mod worker;

use std::future::Future;

use sqlx::PgConnection;

use crate::DomainEvent;
use crate::EventEnvelope;

pub use dead_letter::{DeadLetter, ReplaySummary};
pub use error::{PoisonReason, PoisonReport, ProjectionError};
pub use lag::PartitionLag;
pub use settings::{PoisonPolicy, ProjectionSettings, RetryPolicy};
pub use status::{
    PartitionProgress, ProjectionHandle, ProjectionStatus, RebuildProgress, RebuildReport,
    WorkerState,
};
pub use worker::ProjectionWorker;

/// The error a handler or hook returns. Any error type converts with `?`
/// (`sqlx::Error`, `serde_json::Error`, a `String` via `.into()`, …).
///
/// A handler error is retried with backoff, then the event is parked (or the
/// projection halts, see [`PoisonPolicy`]). A Postgres connection error
/// (`sqlx::Error::Io`, pool timeout, …) is treated as an outage instead: the batch
/// is rolled back and retried later, and no event is parked because of it.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A named read model built from events.
///
/// Implement it together with one [`Handles<E>`] per event enum the projection
/// reads. All hooks get the open Postgres transaction; the worker commits it.
pub trait Projection: Send + Sync + 'static {
    /// The projection's stable name. It keys the checkpoints and dead letters and is
    /// part of the consumer group id, so renaming a projection starts it from scratch.
    const NAME: &'static str;

    /// Creates or migrates the read-model tables. Called once when a worker starts
    /// (and before a rebuild), in a transaction, serialized across processes with an
    /// advisory lock. Must be idempotent (`CREATE TABLE IF NOT EXISTS`, …).
    fn migrate(
        &self,
        _tx: &mut PgConnection,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        async { Ok(()) }
    }

    /// Empties the read model before a rebuild (`TRUNCATE my_table`). Runs in the
    /// same transaction that deletes the projection's checkpoints.
    fn reset(&self, tx: &mut PgConnection)
    -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// A projection's handler for the events of one aggregate type (`E` is the event
/// enum; subscribe the worker to its topic with [`ProjectionWorker::subscribe`]).
///
/// Handlers write through the open transaction they are given; the worker commits
/// it together with the checkpoint, so each event's effect happens exactly once.
/// Variants the projection does not care about are simply ignored with `Ok(())`.
pub trait Handles<E: DomainEvent>: Projection {
    /// Applies one event.
    fn handle(
        &self,
        event: &EventEnvelope<E>,
        tx: &mut PgConnection,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Set to `true` when [`Handles::handle_batch`] is overridden, so the worker
    /// passes consecutive events of this topic to it at once.
    const BATCHED: bool = false;

    /// Applies consecutive events of one partition at once (e.g. one multi-row
    /// upsert), with the same effect as calling [`Handles::handle`] for each in
    /// order. Only called when [`Handles::BATCHED`] is `true`. If it fails, the
    /// worker rolls back and falls back to `handle` one event at a time to find the
    /// failing event.
    fn handle_batch(
        &self,
        events: &[&EventEnvelope<E>],
        tx: &mut PgConnection,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        async move {
            for event in events {
                self.handle(event, tx).await?;
            }
            Ok(())
        }
    }
}

//! Reading one aggregate's history and state from the log, without its processor
//! and without scanning its partition.
//!
//! Events live in Kafka, mixed with the other aggregates of their partition. The
//! built-in projection [`EventIndex`] records where each one is
//! (`tributary_event_index`: aggregate type, id, sequence → partition, offset);
//! [`History`] looks an aggregate's offsets up there and fetches only those
//! records. Events written after the index's checkpoint (its lag) are found by
//! reading the partition from that checkpoint to its end, so a read is complete up
//! to the moment it is made, and scans no more than the index's lag.
//!
//! ```no_run
//! # use tributary::{Aggregate, Apply, EventCodec, KafkaConfig, PgStore};
//! # use tributary::history::{EventIndex, History};
//! # use tributary::projection::ProjectionWorker;
//! # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, tributary::DomainEvent)]
//! # #[event(aggregate = Order)]
//! # enum OrderEvent { Placed }
//! # #[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
//! # #[error("no")] struct OrderError;
//! # #[derive(Debug, Default, serde::Serialize, serde::Deserialize, tributary::Aggregate)]
//! # #[aggregate(name = "order", event = OrderEvent, error = OrderError)]
//! # struct Order;
//! # impl Apply<OrderEvent> for Order { fn apply(&mut self, _: &OrderEvent) {} }
//! # async fn demo(store: PgStore, kafka: KafkaConfig) -> Result<(), Box<dyn std::error::Error>> {
//! // Once per deployment, next to the other projections:
//! let index = ProjectionWorker::new(EventIndex, store.clone(), kafka.clone())
//!     .index::<Order>("shop")
//!     .spawn();
//!
//! // Anywhere: an aggregate's events from version 1, and its state now.
//! let history = History::<Order>::connect(&kafka, store, "shop", EventCodec::new()).await?;
//! let events = history.history("order-42", 1).await?;
//! let (order, version) = history.load("order-42").await?;
//! # let _ = (index, events, order, version); Ok(()) }
//! ```

mod index;
mod reader;

pub use index::EventIndex;
pub use reader::{History, HistoryError};

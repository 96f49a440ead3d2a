//! The command side on Kafka: topics, the [`CommandGateway`], partition-owned
//! [`CommandProcessor`]s with one Kafka transaction per batch, idempotent command
//! ids and snapshots. See `docs/commands.md`.

mod dedup;
mod gateway;
mod local;
mod planned;
mod processor;
mod snapshot;
mod topics;
pub mod wire;

pub use gateway::{CommandGateway, CommandOutcome, GatewayError, SendOptions};
pub use planned::{DispatchOutcome, PlannedCommand, PlansCommands};
pub use processor::{
    CommandProcessor, FaultPoint, ProcessorCounters, ProcessorError, ProcessorHandle,
    ProcessorSettings, ProcessorStats,
};
pub use topics::{TopicError, TopicLayout, TopicSettings, ensure_topics};

//! Why a command processor could not start or stopped.

use std::time::Duration;

use crate::RegisterUpcasterError;
use crate::store::StoreError;

/// Why a processor could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessorError {
    /// The topics are missing and cannot be created, or are misconfigured.
    #[error(transparent)]
    Topics(#[from] crate::command::topics::TopicError),
    /// A Kafka client operation failed.
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaOpError),
    /// Reading or writing snapshots failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The topic prefix is invalid.
    #[error(transparent)]
    Prefix(#[from] crate::topics::InvalidPrefix),
    /// A setting is out of range (see [`ProcessorSettings::validate`](super::ProcessorSettings::validate)).
    #[error(transparent)]
    Settings(#[from] crate::InvalidSetting),
    /// The aggregate's commands cannot be dispatched: it declares none, or two of
    /// them share a name, or (a hand-written `impl Aggregate`) its
    /// `COMMANDS` and `visit_commands` disagree.
    #[error("cannot build the command processor of aggregate `{aggregate}`: {reason}")]
    Commands {
        /// The aggregate's name.
        aggregate: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// An upcaster could not be registered.
    #[error(transparent)]
    Upcaster(#[from] RegisterUpcasterError),
    /// An event in the events topic cannot be read, so the state of its aggregate —
    /// and of the partition — cannot be rebuilt. Deploy a version that can decode it.
    #[error(
        "cannot restore partition {partition}: event at offset {offset} is unreadable: {reason}"
    )]
    Unreadable {
        /// Events partition.
        partition: i32,
        /// Offset of the event.
        offset: i64,
        /// Why.
        reason: String,
    },
    /// The events partition breaks the one-writer invariant (a gap or a duplicate
    /// sequence): something other than the processor wrote to it.
    #[error(
        "events partition {partition} is inconsistent at offset {offset}: aggregate `{aggregate_id}` is at version {version} but the event has sequence {sequence}"
    )]
    Inconsistent {
        /// Events partition.
        partition: i32,
        /// Offset of the event.
        offset: i64,
        /// The aggregate.
        aggregate_id: String,
        /// Its version before the event.
        version: u64,
        /// The event's sequence.
        sequence: u64,
    },
    /// Restoring a partition did not finish in time.
    #[error(
        "restoring partition {partition} timed out after {waited:?} at offset {position} of {end}"
    )]
    RestoreTimeout {
        /// Events partition.
        partition: i32,
        /// How long it waited.
        waited: Duration,
        /// Where it got to.
        position: i64,
        /// Where it had to get to.
        end: i64,
    },
    /// The partition was revoked while it was being restored.
    #[error("the restore of partition {partition} was cancelled: the partition was revoked")]
    RestoreCancelled {
        /// Events partition.
        partition: i32,
    },
    /// The processor thread panicked or could not be joined.
    #[error("the processor thread ended abnormally: {0}")]
    Thread(String),
}

impl ProcessorError {
    /// Whether retrying later may succeed (broker or database unavailable).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Kafka(_) | Self::Store(_) | Self::RestoreTimeout { .. }
        )
    }

    /// Whether the error concerns one partition's events only (an unreadable event,
    /// a broken sequence): the processor then quarantines that partition and goes on
    /// serving its others.
    pub fn is_partition_fault(&self) -> bool {
        matches!(self, Self::Unreadable { .. } | Self::Inconsistent { .. })
    }
}

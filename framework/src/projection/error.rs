//! Projection errors and poison reports.

use std::fmt;

/// Why a record could not be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoisonReason {
    /// The record is not a valid event (bad JSON, missing or invalid header, …).
    Undecodable,
    /// The record's `ce_type` is not a type of the topic's event enum (or a newer
    /// version of one).
    UnknownType,
    /// The handler failed on every attempt.
    HandlerFailed,
}

impl PoisonReason {
    /// The value stored in `tributary_dead_letters.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            Self::UnknownType => "unknown_type",
            Self::HandlerFailed => "handler_failed",
        }
    }

    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "unknown_type" => Self::UnknownType,
            "handler_failed" => Self::HandlerFailed,
            _ => Self::Undecodable,
        }
    }
}

impl fmt::Display for PoisonReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A poison record: where it is and why it could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoisonReport {
    /// The projection.
    pub projection: &'static str,
    /// Topic of the record.
    pub topic: String,
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
    /// Why.
    pub reason: PoisonReason,
    /// The decoder's or the handler's last error.
    pub error: String,
    /// How often the handler was tried (0 for records that could not be decoded).
    pub attempts: u32,
}

impl fmt::Display for PoisonReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}@{} ({}, {} attempts): {}",
            self.topic, self.partition, self.offset, self.reason, self.attempts, self.error
        )
    }
}

/// Why a projection worker, rebuild, lag query or replay failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// A Kafka client call failed.
    #[error(
        "projection `{projection}`: {source}; check KAFKA_BOOTSTRAP_SERVERS and that the broker is up"
    )]
    Kafka {
        /// The projection.
        projection: &'static str,
        /// The operation and the client's error.
        #[source]
        source: crate::kafka::KafkaOpError,
    },
    /// A Postgres query of the framework failed.
    #[error("projection `{projection}`: Postgres {operation} failed: {source}")]
    Database {
        /// The projection.
        projection: &'static str,
        /// What was being done.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The projection's `migrate` hook failed.
    #[error("projection `{projection}`: the `migrate` hook failed: {source}")]
    Migrate {
        /// The projection.
        projection: &'static str,
        /// The hook's error.
        #[source]
        source: crate::projection::HandlerError,
    },
    /// The projection's `reset` hook failed; nothing was reset.
    #[error("projection `{projection}`: the `reset` hook failed, nothing was reset: {source}")]
    Reset {
        /// The projection.
        projection: &'static str,
        /// The hook's error.
        #[source]
        source: crate::projection::HandlerError,
    },
    /// The projection runs with [`crate::projection::PoisonPolicy::Halt`] and met a
    /// poison record.
    #[error("projection `{}` halted at poison record {}; fix the cause (or the handler) and restart the worker, replay it, or run with PoisonPolicy::Park", .0.projection, .0)]
    Halted(Box<PoisonReport>),
    /// The rebuild was cancelled before it reached the high-water marks. The read
    /// model is consistent up to the rebuild's checkpoints: live workers (or the
    /// next rebuild) go on from there.
    #[error(
        "the rebuild of projection `{projection}` was cancelled after {events} events; the read model is consistent up to its checkpoints, and the live workers go on from there (or rebuild again)"
    )]
    RebuildCancelled {
        /// The projection.
        projection: &'static str,
        /// Events applied before the cancel.
        events: u64,
    },
    /// No subscription reads the topics the projection needs.
    #[error(
        "projection `{projection}` has no subscriptions; call `ProjectionWorker::subscribe` with the codec of each events topic it reads"
    )]
    NoSubscriptions {
        /// The projection.
        projection: &'static str,
    },
    /// A topic the projection reads does not exist.
    #[error(
        "projection `{projection}`: topic `{topic}` does not exist; create it (the command side creates events topics at start-up) or fix the codec's prefix"
    )]
    MissingTopic {
        /// The projection.
        projection: &'static str,
        /// The topic.
        topic: String,
    },
    /// No dead letter of this projection has this id.
    #[error("projection `{projection}` has no dead letter {id}")]
    DeadLetterNotFound {
        /// The projection.
        projection: &'static str,
        /// The id asked for.
        id: i64,
    },
    /// The dead letter was already replayed.
    #[error("dead letter {id} of projection `{projection}` was already replayed")]
    AlreadyReplayed {
        /// The projection.
        projection: &'static str,
        /// The id.
        id: i64,
    },
    /// The dead letter was discarded by an operator (marked handled without being
    /// applied); it is not replayed.
    #[error(
        "dead letter {id} of projection `{projection}` was discarded (marked handled without being applied); it is not replayed. Rebuild the projection to apply its record again"
    )]
    Discarded {
        /// The projection.
        projection: &'static str,
        /// The id.
        id: i64,
    },
    /// Replaying a dead letter failed; it stays parked with the new error.
    #[error(
        "replaying dead letter {id} of projection `{projection}` failed, it stays parked: {error}"
    )]
    ReplayFailed {
        /// The projection.
        projection: &'static str,
        /// The id.
        id: i64,
        /// The decoder's or handler's error.
        error: String,
    },
    /// A topic prefix given to
    /// [`ProjectionWorker::subscribe`](crate::projection::ProjectionWorker::subscribe)
    /// is invalid.
    #[error("projection `{projection}`: {source}")]
    Prefix {
        /// The projection.
        projection: &'static str,
        /// The prefix and the rule it breaks.
        source: crate::topics::InvalidPrefix,
    },
    /// A setting is out of range (see [`ProjectionSettings::validate`](crate::projection::ProjectionSettings::validate)).
    #[error("projection `{projection}`: {source}")]
    Settings {
        /// The projection.
        projection: &'static str,
        /// The setting and its allowed range.
        source: crate::InvalidSetting,
    },
    /// The worker task, or a thread it started, panicked or was aborted.
    #[error(
        "projection `{projection}`: the worker or one of its threads ended abnormally: {detail}"
    )]
    Task {
        /// The projection.
        projection: &'static str,
        /// The panic or cancellation.
        detail: String,
    },
}

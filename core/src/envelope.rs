//! The event envelope: one event plus the metadata that travels with it.

use chrono::{DateTime, SubsecRound, Utc};
use uuid::Uuid;

use crate::aggregate::AggregateId;
use crate::event::{DomainEvent, EventType};

/// Ids and trace context that tie an event to what caused it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Id of the message that directly caused this event (normally the command id).
    /// Header `ce_causationid`.
    pub causation_id: Option<String>,
    /// Id shared by every message of one business flow (the first command's id unless
    /// the caller set one). Header `ce_correlationid`.
    pub correlation_id: Option<String>,
    /// W3C trace context of the operation that wrote the event. Header `traceparent`.
    pub traceparent: Option<String>,
}

/// One event of one aggregate instance, with its position and metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct EventEnvelope<E> {
    /// Unique event id (UUIDv7, so ids sort by creation time). Header `ce_id`.
    pub id: Uuid,
    /// The aggregate instance. Record key and header `ce_subject`.
    pub aggregate_id: AggregateId,
    /// Version of the aggregate after this event: 1 for its first event, gapless.
    /// Header `ce_sequence`.
    pub sequence: u64,
    /// When the event was recorded, to the microsecond. Header `ce_time`.
    pub time: DateTime<Utc>,
    /// Causation, correlation and trace context.
    pub metadata: Metadata,
    /// The event itself.
    pub event: E,
}

impl<E: DomainEvent> EventEnvelope<E> {
    /// Wraps `event` as the `sequence`-th event of `aggregate_id`, with a new UUIDv7
    /// id, the current time and empty metadata.
    pub fn new(aggregate_id: impl Into<AggregateId>, sequence: u64, event: E) -> Self {
        Self {
            id: Uuid::now_v7(),
            aggregate_id: aggregate_id.into(),
            sequence,
            // The wire format carries microseconds; truncate so a round trip is exact.
            time: Utc::now().trunc_subsecs(6),
            metadata: Metadata::default(),
            event,
        }
    }

    /// Sets the metadata.
    #[must_use]
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// The aggregate type name (`order`).
    pub fn aggregate_type(&self) -> &'static str {
        E::AGGREGATE
    }

    /// The event's type and version.
    pub fn event_type(&self) -> &'static EventType {
        self.event.event_type()
    }
}

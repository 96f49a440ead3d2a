//! Deterministic event envelopes for tests.

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use crate::AggregateId;
use crate::DomainEvent;
use crate::{EventEnvelope, Metadata};

/// The time of the test envelopes' sequence 0: 2025-01-01T00:00:00Z. The event of
/// sequence `n` built by [`envelope`] is dated `n` seconds later.
pub const TEST_EPOCH: DateTime<Utc> = DateTime::from_timestamp_nanos(1_735_689_600_000_000_000);

/// Namespace of the test envelopes' ids (UUIDv5).
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x0b3c_9e51_7a2d_4f86_9c14_5e6f_7a8b_9c0d);

/// The `sequence`-th event of `aggregate_id`, with a deterministic id (a UUIDv5 of
/// the aggregate type, id and sequence: the same arguments give the same id in
/// every run), dated [`TEST_EPOCH`] + `sequence` seconds, with empty metadata.
/// Add metadata with [`EventEnvelope::with_metadata`].
///
/// ```
/// # #[derive(Debug, Default, serde::Serialize, serde::Deserialize, tributary::Aggregate)]
/// # #[aggregate(name = "order", event = OrderEvent, error = OrderError)]
/// # struct Order;
/// # impl tributary::Apply<OrderEvent> for Order { fn apply(&mut self, _: &OrderEvent) {} }
/// # #[derive(Debug, serde::Serialize, serde::Deserialize, thiserror::Error)]
/// # #[error("never")]
/// # struct OrderError;
/// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, tributary::DomainEvent)]
/// # #[event(aggregate = Order)]
/// # enum OrderEvent { Paid }
/// use tributary::testkit::{TEST_EPOCH, envelope};
///
/// let paid = envelope("o-1", 3, OrderEvent::Paid);
/// assert_eq!(paid.id, envelope("o-1", 3, OrderEvent::Paid).id);
/// assert_ne!(paid.id, envelope("o-1", 4, OrderEvent::Paid).id);
/// assert_eq!(paid.time, TEST_EPOCH + chrono::TimeDelta::seconds(3));
/// ```
pub fn envelope<E: DomainEvent>(
    aggregate_id: impl Into<AggregateId>,
    sequence: u64,
    event: E,
) -> EventEnvelope<E> {
    let aggregate_id = aggregate_id.into();
    let name = format!("{}/{}/{sequence}", E::AGGREGATE, aggregate_id.as_str());
    EventEnvelope {
        id: Uuid::new_v5(&EVENT_ID_NAMESPACE, name.as_bytes()),
        aggregate_id,
        sequence,
        time: i64::try_from(sequence)
            .ok()
            .and_then(TimeDelta::try_seconds)
            .and_then(|offset| TEST_EPOCH.checked_add_signed(offset))
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
        metadata: Metadata::default(),
        event,
    }
}

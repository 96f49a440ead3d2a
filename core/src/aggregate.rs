//! Aggregates, commands and the traits that connect them.
//!
//! An [`Aggregate`] is a consistency boundary: its state is rebuilt by
//! [`Apply`]ing its past events in order, and it decides on a [`Command`] by
//! [`Handle`]-ing it, which either emits new events or rejects the command
//! with a domain error. Deciding is a pure function of the state and the
//! command, so it can be tested without Kafka (see [`crate::testkit`]).

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::event::DomainEvent;

/// Evolves state by one event. Implemented by every aggregate for its event type.
///
/// `apply` must be deterministic and must not fail: the event already happened.
/// Validation belongs in [`Handle::handle`].
pub trait Apply<E> {
    /// Applies one event to the state.
    fn apply(&mut self, event: &E);
}

/// A consistency boundary whose state is derived from its events.
///
/// Usually derived: `#[derive(Aggregate)] #[aggregate(name = "order", event = OrderEvent,
/// error = OrderError)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an aggregate",
    label = "not an aggregate",
    note = "an aggregate is a type with `#[derive(Aggregate)]` and \
            `#[aggregate(name = \"..\", event = .., error = ..)]` (or an `impl Aggregate`); \
            commands and event enums name it by its type"
)]
pub trait Aggregate:
    Default + Serialize + DeserializeOwned + Apply<Self::Event> + Send + Sync + 'static
{
    /// Stable name of the aggregate type, used in topic names and event types
    /// (`order` gives the topics `{prefix}.order.events` and `{prefix}.order.commands`).
    const NAME: &'static str;

    /// Take a snapshot every this many events of one aggregate instance;
    /// `None` disables periodic snapshots.
    const SNAPSHOT_EVERY: Option<u64>;

    /// Version of the serialized state schema. Bump it when a snapshot written by
    /// the previous version can no longer be read as this state: old snapshots are
    /// then discarded and the state rebuilt from events.
    const STATE_VERSION: u32;

    /// The events this aggregate emits and applies.
    type Event: DomainEvent;

    /// The domain error a command handler rejects a command with. It travels back
    /// to the caller, so it must serialize.
    type Error: std::error::Error + Serialize + DeserializeOwned + Send + Sync + 'static;
}

/// Decides on one command type: emit events or reject.
pub trait Handle<C: Command>: Aggregate {
    /// Decides on `command` given the current state.
    ///
    /// Returning `Ok(vec![])` accepts the command without changing anything.
    fn handle(&self, command: C) -> Result<Vec<Self::Event>, Self::Error>;
}

/// A request to change one aggregate instance.
///
/// Usually derived: `#[derive(Command)] #[command(aggregate = Order)]` with one field marked
/// `#[aggregate_id]`.
pub trait Command: Serialize + DeserializeOwned + fmt::Debug + Send + Sync + 'static {
    /// The aggregate type this command targets.
    type Aggregate: Aggregate;

    /// Stable name of the command type (`place_order`), unique within its aggregate.
    const NAME: &'static str;

    /// The id of the aggregate instance this command targets.
    fn aggregate_id(&self) -> AggregateId;
}

/// Identifies one aggregate instance within its type. It is the Kafka record key of
/// every event and command of that instance, so all of them land in one partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct AggregateId(String);

impl AggregateId {
    /// Wraps an id.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as bytes, as written in the record key.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Consumes the id, returning the string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for AggregateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for AggregateId {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for AggregateId {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl AsRef<str> for AggregateId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

//! A small aggregate for the processor's unit tests: a counter that refuses to
//! pass [`LIMIT`], incremented one event at a time.

use serde::{Deserialize, Serialize};

use crate::{Aggregate, AggregateId, Apply, Command, CommandVisitor, DeclaresCommand, Handle};
use crate::{DomainEvent, EventType, PayloadError};

/// A counter that refuses to go over `LIMIT`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Counter {
    pub(super) value: u64,
}

pub(super) const LIMIT: u64 = 40;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) enum CounterEvent {
    Incremented { by: u64 },
}

const TYPES: &[EventType] = &[EventType {
    name: "counter.incremented",
    version: 1,
    ce_type: "counter.incremented.v1",
}];

impl DomainEvent for CounterEvent {
    const AGGREGATE: &'static str = "counter";
    const EVENT_TYPES: &'static [EventType] = TYPES;

    fn event_type(&self) -> &'static EventType {
        &TYPES[0]
    }

    fn to_payload(&self) -> Result<serde_json::Value, PayloadError> {
        match self {
            Self::Incremented { by } => Ok(serde_json::json!({ "by": by })),
        }
    }

    fn from_payload(_: &EventType, payload: serde_json::Value) -> Result<Self, PayloadError> {
        Ok(Self::Incremented {
            by: serde_json::from_value(payload["by"].clone())?,
        })
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub(super) enum CounterError {
    #[error("the counter would pass {limit}")]
    TooBig { limit: u64 },
}

impl Apply<CounterEvent> for Counter {
    fn apply(&mut self, event: &CounterEvent) {
        match event {
            CounterEvent::Incremented { by } => self.value += by,
        }
    }
}

impl Aggregate for Counter {
    const NAME: &'static str = "counter";
    const SNAPSHOT_EVERY: Option<u64> = None;
    const STATE_VERSION: u32 = 1;
    type Event = CounterEvent;
    type Error = CounterError;
    const COMMANDS: &'static [&'static str] = &["increment"];

    fn visit_commands<V: CommandVisitor<Self>>(visitor: &mut V) {
        visitor.visit::<Increment>();
    }
}

impl DeclaresCommand<Increment> for Counter {}

/// Emits `times` events of one each.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Increment {
    pub(super) id: String,
    pub(super) times: u64,
}

impl Command for Increment {
    type Aggregate = Counter;
    const NAME: &'static str = "increment";

    fn aggregate_id(&self) -> AggregateId {
        AggregateId::new(self.id.as_str())
    }
}

impl Handle<Increment> for Counter {
    fn handle(&self, command: Increment) -> Result<Vec<CounterEvent>, CounterError> {
        if self.value + command.times > LIMIT {
            return Err(CounterError::TooBig { limit: LIMIT });
        }
        Ok((0..command.times)
            .map(|_| CounterEvent::Incremented { by: 1 })
            .collect())
    }
}

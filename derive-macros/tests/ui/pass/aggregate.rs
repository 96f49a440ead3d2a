//! `snapshot_every`, `state_version` and their defaults; struct and enum (state machine)
//! aggregates, run through the test kit; the command list, read back through
//! `COMMANDS` and `visit_commands`.
#![deny(warnings)]

use serde::{Deserialize, Serialize};
use tributary_core::testkit::AggregateTest;
use tributary_core::{Aggregate, Apply, Command, CommandVisitor, DeclaresCommand, DomainEvent, Handle};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = Counter)]
enum CounterEvent {
    Incremented { by: u32 },
}

#[derive(Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
enum CounterError {
    #[error("the counter would exceed 10")]
    TooBig,
}

#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(
    name = "counter",
    event = CounterEvent,
    error = CounterError,
    snapshot_every = 100,
    state_version = 3,
    commands(Increment, Reset),
)]
struct Counter {
    value: u32,
}

impl Apply<CounterEvent> for Counter {
    fn apply(&mut self, event: &CounterEvent) {
        match event {
            CounterEvent::Incremented { by } => self.value += by,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[command(aggregate = Counter)]
struct Increment {
    #[aggregate_id]
    id: String,
    by: u32,
}

impl Handle<Increment> for Counter {
    fn handle(&self, command: Increment) -> Result<Vec<CounterEvent>, CounterError> {
        if self.value + command.by > 10 {
            return Err(CounterError::TooBig);
        }
        Ok(vec![CounterEvent::Incremented { by: command.by }])
    }
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[command(aggregate = Counter, name = "reset_to_zero")]
struct Reset(#[aggregate_id] String);

impl Handle<Reset> for Counter {
    fn handle(&self, _command: Reset) -> Result<Vec<CounterEvent>, CounterError> {
        Ok(vec![])
    }
}

// A state machine: the aggregate is an enum. Defaults for `snapshot_every` and
// `state_version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = Door)]
enum DoorEvent {
    Opened,
    Closed,
}

#[derive(Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
enum DoorError {
    #[error("already open")]
    AlreadyOpen,
}

#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(error = DoorError, name = "door", event = DoorEvent, commands(Open))]
enum Door {
    #[default]
    Closed,
    Open,
}

impl Apply<DoorEvent> for Door {
    fn apply(&mut self, event: &DoorEvent) {
        *self = match event {
            DoorEvent::Opened => Door::Open,
            DoorEvent::Closed => Door::Closed,
        };
    }
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[command(aggregate = Door)]
struct Open(#[aggregate_id] String);

impl Handle<Open> for Door {
    fn handle(&self, _command: Open) -> Result<Vec<DoorEvent>, DoorError> {
        match self {
            Door::Closed => Ok(vec![DoorEvent::Opened]),
            Door::Open => Err(DoorError::AlreadyOpen),
        }
    }
}

fn assert_aggregate<A: Aggregate>(name: &str, snapshot_every: Option<u64>, state_version: u32) {
    assert_eq!(A::NAME, name);
    assert_eq!(A::SNAPSHOT_EVERY, snapshot_every);
    assert_eq!(A::STATE_VERSION, state_version);
    assert_eq!(<A::Event as DomainEvent>::AGGREGATE, name);
}

/// Collects the command names an aggregate visits, checking the bounds the runtime
/// relies on.
struct Names(Vec<&'static str>);

impl<A: Aggregate> CommandVisitor<A> for Names {
    fn visit<C>(&mut self)
    where
        C: Command<Aggregate = A>,
        A: DeclaresCommand<C>,
    {
        fn decides<A: Handle<C>, C: Command>() {}
        decides::<A, C>();
        self.0.push(C::NAME);
    }
}

fn visited<A: Aggregate>() -> Vec<&'static str> {
    let mut names = Names(Vec::new());
    A::visit_commands(&mut names);
    names.0
}

fn main() {
    assert_eq!(Counter::COMMANDS, ["increment", "reset_to_zero"]);
    assert_eq!(visited::<Counter>(), ["increment", "reset_to_zero"]);
    assert_eq!(Door::COMMANDS, ["open"]);
    assert_eq!(visited::<Door>(), ["open"]);

    assert_aggregate::<Counter>("counter", Some(100), 3);
    assert_aggregate::<Door>("door", None, 1);

    AggregateTest::<Counter>::given([CounterEvent::Incremented { by: 4 }])
        .when(Increment { id: "c-1".into(), by: 3 })
        .then_expect_events([CounterEvent::Incremented { by: 3 }]);
    AggregateTest::<Counter>::given([CounterEvent::Incremented { by: 9 }])
        .when(Increment { id: "c-1".into(), by: 3 })
        .then_expect_error(CounterError::TooBig);

    AggregateTest::<Door>::given([])
        .when(Open("front".into()))
        .then_expect_events([DoorEvent::Opened]);
    AggregateTest::<Door>::given([DoorEvent::Opened, DoorEvent::Closed, DoorEvent::Opened])
        .when(Open("front".into()))
        .then_expect_error(DoorError::AlreadyOpen);
}

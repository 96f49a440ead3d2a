//! A given/when/then test kit that runs aggregates without Kafka.
//!
//! ```
//! # use tributary_core::testkit::AggregateTest;
//! # use tributary_core::{Aggregate, Apply, Command, DomainEvent, Handle};
//! # use serde::{Deserialize, Serialize};
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
//! #[event(aggregate = Counter)]
//! enum CounterEvent { Incremented { by: u32 } }
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
//! enum CounterError { #[error("too big")] TooBig }
//!
//! #[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
//! #[aggregate(name = "counter", event = CounterEvent, error = CounterError, commands(Increment))]
//! struct Counter { value: u32 }
//!
//! impl Apply<CounterEvent> for Counter {
//!     fn apply(&mut self, e: &CounterEvent) {
//!         match e { CounterEvent::Incremented { by } => self.value += by }
//!     }
//! }
//!
//! #[derive(Debug, Serialize, Deserialize, Command)]
//! #[command(aggregate = Counter)]
//! struct Increment { #[aggregate_id] id: String, by: u32 }
//!
//! impl Handle<Increment> for Counter {
//!     fn handle(&self, c: Increment) -> Result<Vec<CounterEvent>, CounterError> {
//!         if self.value + c.by > 10 { return Err(CounterError::TooBig); }
//!         Ok(vec![CounterEvent::Incremented { by: c.by }])
//!     }
//! }
//!
//! AggregateTest::<Counter>::given([CounterEvent::Incremented { by: 4 }])
//!     .when(Increment { id: "c-1".into(), by: 3 })
//!     .then_expect_events([CounterEvent::Incremented { by: 3 }]);
//!
//! AggregateTest::<Counter>::given([CounterEvent::Incremented { by: 9 }])
//!     .when(Increment { id: "c-1".into(), by: 3 })
//!     .then_expect_error(CounterError::TooBig);
//! ```

use std::fmt::{Debug, Write as _};

use crate::aggregate::{Aggregate, Command, Handle};

/// The "given" step: an aggregate with its past events applied.
#[derive(Debug)]
pub struct AggregateTest<A: Aggregate> {
    state: A,
    version: u64,
}

impl<A: Aggregate> AggregateTest<A> {
    /// Starts from the state after `events`, applied in order.
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        let mut state = A::default();
        let mut version = 0;
        for event in events {
            state.apply(&event);
            version += 1;
        }
        Self { state, version }
    }

    /// Starts from a new aggregate (no events).
    pub fn given_no_previous_events() -> Self {
        Self::given([])
    }

    /// The number of events given.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Handles `command` on the given state.
    pub fn when<C>(self, command: C) -> AggregateOutcome<A>
    where
        C: Command<Aggregate = A>,
        A: Handle<C>,
    {
        let command_debug = format!("{command:#?}");
        let result = self.state.handle(command);
        AggregateOutcome {
            state: self.state,
            command_debug,
            result,
        }
    }
}

/// The "then" step: what the handler decided.
#[derive(Debug)]
pub struct AggregateOutcome<A: Aggregate> {
    state: A,
    command_debug: String,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> AggregateOutcome<A> {
    /// Asserts the command was accepted with exactly these events, in order.
    /// On mismatch panics with a line diff of expected and actual.
    #[track_caller]
    pub fn then_expect_events(self, expected: impl IntoIterator<Item = A::Event>)
    where
        A::Event: PartialEq,
    {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match &self.result {
            Ok(actual) if *actual == expected => {}
            Ok(actual) => panic!(
                "{}",
                mismatch("events", &self.command_debug, &expected, actual)
            ),
            Err(error) => panic!(
                "expected the command to be accepted with events, but it was rejected.\n\
                 command: {}\nerror: {error:#?} ({error})\nexpected events: {expected:#?}",
                self.command_debug
            ),
        }
    }

    /// Asserts the command was rejected with exactly this error.
    #[track_caller]
    pub fn then_expect_error(self, expected: A::Error)
    where
        A::Error: PartialEq,
    {
        match &self.result {
            Err(actual) if *actual == expected => {}
            Err(actual) => panic!(
                "{}",
                mismatch("error", &self.command_debug, &expected, actual)
            ),
            Ok(events) => panic!(
                "expected the command to be rejected, but it was accepted.\n\
                 command: {}\nexpected error: {expected:#?}\nemitted events: {events:#?}",
                self.command_debug
            ),
        }
    }

    /// Asserts the command was rejected with an error whose `Display` text is `message`.
    #[track_caller]
    pub fn then_expect_error_message(self, message: &str) {
        match &self.result {
            Err(actual) if actual.to_string() == message => {}
            Err(actual) => panic!(
                "{}",
                mismatch(
                    "error message",
                    &self.command_debug,
                    &message,
                    &actual.to_string()
                )
            ),
            Ok(events) => panic!(
                "expected the command to be rejected with {message:?}, but it was accepted.\n\
                 command: {}\nemitted events: {events:#?}",
                self.command_debug
            ),
        }
    }

    /// Applies the emitted events and hands the resulting state to `check`.
    /// Panics if the command was rejected.
    #[track_caller]
    pub fn then_expect_state(self, check: impl FnOnce(&A)) {
        match self.result {
            Ok(events) => {
                let mut state = self.state;
                for event in &events {
                    state.apply(event);
                }
                check(&state);
            }
            Err(error) => panic!(
                "expected the command to be accepted, but it was rejected.\ncommand: {}\nerror: {error:#?}",
                self.command_debug
            ),
        }
    }

    /// The handler's raw result, for assertions the other methods don't cover.
    pub fn into_result(self) -> Result<Vec<A::Event>, A::Error> {
        self.result
    }
}

/// A readable mismatch report: the command and a unified line diff of the
/// pretty-printed values.
fn mismatch<T: Debug + ?Sized, U: Debug + ?Sized>(
    what: &str,
    command: &str,
    expected: &T,
    actual: &U,
) -> String {
    line_diff(
        &format!("unexpected {what}\ncommand: {command}"),
        &format!("{expected:#?}"),
        &format!("{actual:#?}"),
    )
}

/// `header`, then a unified line diff of two texts (`-` expected, `+` actual): the
/// report every test kit panics with on a mismatch.
pub fn line_diff(header: &str, expected: &str, actual: &str) -> String {
    let mut out = format!("{header}\ndiff (- expected, + actual):\n");
    for change in similar::TextDiff::from_lines(expected, actual).iter_all_changes() {
        let sign = match change.tag() {
            similar::ChangeTag::Delete => '-',
            similar::ChangeTag::Insert => '+',
            similar::ChangeTag::Equal => ' ',
        };
        let line = change.value();
        let _ = write!(out, "{sign} {line}");
        if !line.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::line_diff;

    #[test]
    fn marks_removed_and_added_lines() {
        let report = line_diff("unexpected rows", "a\nb\n", "a\nc\n");
        assert_eq!(
            report,
            "unexpected rows\ndiff (- expected, + actual):\n  a\n- b\n+ c\n"
        );
    }
}

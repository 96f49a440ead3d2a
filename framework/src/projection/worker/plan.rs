//! The pure core of applying a partition's records: which records go into the next
//! transaction, how a failing batch is narrowed down to the failing event, how often
//! that event is retried alone, and when a record is parked or halts the projection.
//!
//! [`Planner`] works on positions in the partition's list of received records and
//! knows nothing of Kafka or Postgres: the worker (`apply`) asks it for the next
//! [`Step`], carries it out in one Postgres transaction and reports the [`Outcome`].
//!
//! How a failing event is found (a linear search by the per-event pass, not a
//! bisection): a batch that fails as a whole (the topic's `handle_batch`) is applied
//! again with `handle` per event, which names the failing event; the events before
//! it are committed on their own, then the rest is applied again from the failing
//! event on (batched first, as every new batch). When that event is the first to
//! fail, it is retried alone with backoff ([`RetryPolicy`]) and, when every attempt
//! failed, parked or halts the projection ([`PoisonPolicy`]). So a failing event
//! costs at most four failed transactions (two without `handle_batch`) before its
//! retries, whatever the batch size. A record that did not decode is never given
//! to a handler: it ends the batch before it and is parked (or halts) at once.
//!
//! An outage (see `outage::is_outage`) is never reported to the planner: the worker
//! rolls the batch back and gives up on the partition's records until the
//! checkpoint is re-read, so an outage never parks an event.

use std::ops::Range;
use std::time::Duration;

use crate::codec::DecodeError;
use crate::projection::error::PoisonReason;
use crate::projection::settings::{PoisonPolicy, RetryPolicy};

/// How a transaction calls the handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// `handle_batch` once for the batch.
    Batched,
    /// `handle` per event, which tells which event failed.
    PerEvent,
}

/// A record that did not decode: why, and the error for its dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Unreadable {
    pub(super) reason: PoisonReason,
    pub(super) error: String,
}

impl From<&DecodeError> for Unreadable {
    fn from(error: &DecodeError) -> Self {
        let reason = match error {
            DecodeError::UnknownEventType { .. } | DecodeError::FutureVersion { .. } => {
                PoisonReason::UnknownType
            }
            _ => PoisonReason::Undecodable,
        };
        Self {
            reason,
            error: error.to_string(),
        }
    }
}

/// A poison record: its position, why, the last error and the handler attempts
/// made (0 for a record that did not decode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Poison {
    pub(super) index: usize,
    pub(super) reason: PoisonReason,
    pub(super) error: String,
    pub(super) attempts: u32,
}

/// What to do next with the partition's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    /// Apply the records in `range` (all decoded) in one transaction that moves the
    /// checkpoint past them; report the outcome.
    Apply { range: Range<usize>, mode: Mode },
    /// Wait `backoff`, then apply record `index` alone, per event; report the
    /// outcome. `attempt` attempts failed so far, the last one with `error`.
    Retry {
        index: usize,
        attempt: u32,
        backoff: Duration,
        error: String,
    },
    /// Park the record in the dead letters and move the checkpoint past it, in one
    /// transaction; report [`Outcome::Committed`].
    Park(Poison),
    /// Stop at the record ([`PoisonPolicy::Halt`]); the checkpoint stays on it. The
    /// plan does not go on: asked again, it halts again.
    Halt(Poison),
    /// Every record was applied or parked.
    Done,
}

/// How an [`Step::Apply`], [`Step::Retry`] or [`Step::Park`] ended, unless the
/// worker gave up on the partition (conflict, outage, rebuild, shutdown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The transaction committed.
    Committed,
    /// A handler failed (not an outage) and the transaction was rolled back: at
    /// `index` of the step's records when they were applied per event, `None` when
    /// the batch failed as a whole.
    HandlerFailed { index: Option<usize>, error: String },
}

/// What the planner waits to hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    Nothing,
    Apply,
    Retry,
    Park,
}

/// A failing event being retried alone.
#[derive(Debug)]
struct Retrying {
    index: usize,
    /// Failed attempts so far, the one that found it included.
    attempts: u32,
    error: String,
}

/// The plan for one partition's received records: see the [module documentation](self).
#[derive(Debug)]
pub(super) struct Planner {
    /// Per record, `Some` when it did not decode.
    unreadable: Vec<Option<Unreadable>>,
    default_mode: Mode,
    retry: RetryPolicy,
    poison: PoisonPolicy,
    /// The first record not applied or parked yet.
    start: usize,
    /// The end of the records the next transaction covers.
    end: usize,
    mode: Mode,
    retrying: Option<Retrying>,
    awaiting: Awaiting,
}

impl Planner {
    /// A plan for records whose decoding failed where `unreadable` is `Some`;
    /// batches go to `handle_batch` first if `batched`.
    pub(super) fn new(
        unreadable: Vec<Option<Unreadable>>,
        batched: bool,
        retry: RetryPolicy,
        poison: PoisonPolicy,
    ) -> Self {
        let default_mode = if batched {
            Mode::Batched
        } else {
            Mode::PerEvent
        };
        Self {
            end: unreadable.len(),
            unreadable,
            default_mode,
            retry,
            poison,
            start: 0,
            mode: default_mode,
            retrying: None,
            awaiting: Awaiting::Nothing,
        }
    }

    /// The next step. After an `Apply`, `Retry` or `Park`, call [`Planner::report`]
    /// before asking again.
    pub(super) fn next_step(&mut self) -> Step {
        if let Some(retrying) = &self.retrying {
            if retrying.attempts < self.retry.max_attempts {
                self.awaiting = Awaiting::Retry;
                return Step::Retry {
                    index: retrying.index,
                    attempt: retrying.attempts,
                    backoff: self.retry.backoff(retrying.attempts),
                    error: retrying.error.clone(),
                };
            }
            let poison = Poison {
                index: retrying.index,
                reason: PoisonReason::HandlerFailed,
                error: retrying.error.clone(),
                attempts: retrying.attempts,
            };
            return self.poisoned(poison);
        }
        let count = self.unreadable.len();
        if self.start >= count {
            self.awaiting = Awaiting::Nothing;
            return Step::Done;
        }
        if let Some(bad) = (self.start..self.end).find(|&i| self.unreadable[i].is_some()) {
            self.end = bad;
        }
        if self.end == self.start {
            if let Some(unreadable) = self.unreadable[self.start].clone() {
                return self.poisoned(Poison {
                    index: self.start,
                    reason: unreadable.reason,
                    error: unreadable.error,
                    attempts: 0,
                });
            }
            // Never: the range is only cut to empty at a record that did not decode.
            self.start += 1;
            self.restart();
            return self.next_step();
        }
        self.awaiting = Awaiting::Apply;
        Step::Apply {
            range: self.start..self.end,
            mode: self.mode,
        }
    }

    /// How the last step ended.
    pub(super) fn report(&mut self, outcome: Outcome) {
        let awaiting = std::mem::replace(&mut self.awaiting, Awaiting::Nothing);
        match (awaiting, outcome) {
            (Awaiting::Apply, Outcome::Committed) => {
                self.start = self.end;
                self.restart();
            }
            (Awaiting::Apply, Outcome::HandlerFailed { index: None, .. }) => {
                self.mode = Mode::PerEvent;
            }
            (
                Awaiting::Apply,
                Outcome::HandlerFailed {
                    index: Some(0),
                    error,
                },
            ) => {
                self.retrying = Some(Retrying {
                    index: self.start,
                    attempts: 1,
                    error,
                });
            }
            // Commit the events before the failing one, then deal with it.
            (Awaiting::Apply, Outcome::HandlerFailed { index: Some(i), .. }) => {
                self.end = self.start + i;
            }
            (Awaiting::Retry, Outcome::HandlerFailed { error, .. }) => {
                if let Some(retrying) = &mut self.retrying {
                    retrying.attempts += 1;
                    retrying.error = error;
                }
            }
            (Awaiting::Retry | Awaiting::Park, Outcome::Committed) => {
                self.retrying = None;
                self.start += 1;
                self.restart();
            }
            // Nothing was asked (or a park cannot fail in a handler): no change.
            (Awaiting::Nothing, _) | (Awaiting::Park, Outcome::HandlerFailed { .. }) => {}
        }
    }

    /// The next transaction covers every remaining record, in the default mode.
    fn restart(&mut self) {
        self.end = self.unreadable.len();
        self.mode = self.default_mode;
    }

    fn poisoned(&mut self, poison: Poison) -> Step {
        match self.poison {
            PoisonPolicy::Park => {
                self.awaiting = Awaiting::Park;
                Step::Park(poison)
            }
            PoisonPolicy::Halt => {
                self.awaiting = Awaiting::Nothing;
                Step::Halt(poison)
            }
        }
    }
}

#[cfg(test)]
mod tests;

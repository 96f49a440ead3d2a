//! Unit and property tests of the [`Planner`](super::Planner): the worker's steps
//! are simulated over records that are good, unreadable, poison or flaky.

use proptest::prelude::*;

use super::*;

fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(5),
    }
}

fn unreadable(reason: PoisonReason) -> Option<Unreadable> {
    Some(Unreadable {
        reason,
        error: format!("cannot decode ({reason})"),
    })
}

fn failed(index: Option<usize>, error: &str) -> Outcome {
    Outcome::HandlerFailed {
        index,
        error: error.to_owned(),
    }
}

fn apply(range: Range<usize>, mode: Mode) -> Step {
    Step::Apply { range, mode }
}

#[test]
fn no_records_is_done_at_once() {
    let mut plan = Planner::new(Vec::new(), true, policy(3), PoisonPolicy::Park);
    assert_eq!(plan.next_step(), Step::Done);
}

#[test]
fn a_batch_that_succeeds_is_one_transaction() {
    let mut plan = Planner::new(vec![None; 5], true, policy(3), PoisonPolicy::Park);
    assert_eq!(plan.next_step(), apply(0..5, Mode::Batched));
    plan.report(Outcome::Committed);
    assert_eq!(plan.next_step(), Step::Done);
}

/// The whole path of one failing event in a batched topic, step by step.
#[test]
fn a_failing_event_in_a_batch_is_located_retried_and_parked() {
    let mut plan = Planner::new(vec![None; 4], true, policy(3), PoisonPolicy::Park);
    assert_eq!(plan.next_step(), apply(0..4, Mode::Batched));
    plan.report(failed(None, "batch failed"));
    // Per event, to learn which one fails.
    assert_eq!(plan.next_step(), apply(0..4, Mode::PerEvent));
    plan.report(failed(Some(2), "event 2 failed"));
    // The events before it are committed on their own.
    assert_eq!(plan.next_step(), apply(0..2, Mode::PerEvent));
    plan.report(Outcome::Committed);
    // The rest starts over in the default mode.
    assert_eq!(plan.next_step(), apply(2..4, Mode::Batched));
    plan.report(failed(None, "batch failed"));
    assert_eq!(plan.next_step(), apply(2..4, Mode::PerEvent));
    plan.report(failed(Some(0), "first"));
    assert_eq!(
        plan.next_step(),
        Step::Retry {
            index: 2,
            attempt: 1,
            backoff: Duration::from_millis(100),
            error: "first".to_owned(),
        }
    );
    plan.report(failed(Some(0), "second"));
    assert_eq!(
        plan.next_step(),
        Step::Retry {
            index: 2,
            attempt: 2,
            backoff: Duration::from_millis(200),
            error: "second".to_owned(),
        }
    );
    plan.report(failed(Some(0), "third"));
    assert_eq!(
        plan.next_step(),
        Step::Park(Poison {
            index: 2,
            reason: PoisonReason::HandlerFailed,
            error: "third".to_owned(),
            attempts: 3,
        })
    );
    plan.report(Outcome::Committed);
    assert_eq!(plan.next_step(), apply(3..4, Mode::Batched));
    plan.report(Outcome::Committed);
    assert_eq!(plan.next_step(), Step::Done);
}

#[test]
fn an_event_that_succeeds_on_retry_is_applied_not_parked() {
    let mut plan = Planner::new(vec![None; 3], false, policy(3), PoisonPolicy::Park);
    assert_eq!(plan.next_step(), apply(0..3, Mode::PerEvent));
    plan.report(failed(Some(0), "flaky"));
    assert!(matches!(plan.next_step(), Step::Retry { index: 0, .. }));
    plan.report(Outcome::Committed);
    assert_eq!(plan.next_step(), apply(1..3, Mode::PerEvent));
}

#[test]
fn with_a_single_attempt_a_failing_event_is_parked_without_retry() {
    for max_attempts in [0, 1] {
        let mut plan = Planner::new(vec![None], false, policy(max_attempts), PoisonPolicy::Park);
        assert_eq!(plan.next_step(), apply(0..1, Mode::PerEvent));
        plan.report(failed(Some(0), "boom"));
        assert_eq!(
            plan.next_step(),
            Step::Park(Poison {
                index: 0,
                reason: PoisonReason::HandlerFailed,
                error: "boom".to_owned(),
                attempts: 1,
            })
        );
    }
}

#[test]
fn an_unreadable_record_ends_the_batch_and_is_parked_without_a_handler() {
    let records = vec![None, unreadable(PoisonReason::UnknownType), None];
    let mut plan = Planner::new(records, true, policy(3), PoisonPolicy::Park);
    assert_eq!(plan.next_step(), apply(0..1, Mode::Batched));
    plan.report(Outcome::Committed);
    assert_eq!(
        plan.next_step(),
        Step::Park(Poison {
            index: 1,
            reason: PoisonReason::UnknownType,
            error: "cannot decode (unknown_type)".to_owned(),
            attempts: 0,
        })
    );
    plan.report(Outcome::Committed);
    assert_eq!(plan.next_step(), apply(2..3, Mode::Batched));
}

#[test]
fn under_halt_the_plan_stops_at_the_poison_record_and_stays_there() {
    let records = vec![None, None, unreadable(PoisonReason::Undecodable)];
    let mut plan = Planner::new(records, false, policy(2), PoisonPolicy::Halt);
    assert_eq!(plan.next_step(), apply(0..2, Mode::PerEvent));
    plan.report(failed(Some(1), "bad"));
    assert_eq!(plan.next_step(), apply(0..1, Mode::PerEvent));
    plan.report(Outcome::Committed);
    assert_eq!(plan.next_step(), apply(1..2, Mode::PerEvent));
    plan.report(failed(Some(0), "bad"));
    assert!(matches!(plan.next_step(), Step::Retry { index: 1, .. }));
    plan.report(failed(Some(0), "still bad"));
    let halt = Step::Halt(Poison {
        index: 1,
        reason: PoisonReason::HandlerFailed,
        error: "still bad".to_owned(),
        attempts: 2,
    });
    assert_eq!(plan.next_step(), halt);
    assert_eq!(plan.next_step(), halt);
}

#[test]
fn decode_errors_map_to_their_poison_reason() {
    let unknown = DecodeError::UnknownEventType {
        ce_type: "order.Shipped.v1".to_owned(),
        aggregate: "order",
        known: "order.Placed.v1".to_owned(),
    };
    let future = DecodeError::FutureVersion {
        event: "Placed",
        found: 3,
        current: 2,
    };
    let tombstone = DecodeError::MissingValue;
    assert_eq!(Unreadable::from(&unknown).reason, PoisonReason::UnknownType);
    assert_eq!(Unreadable::from(&future).reason, PoisonReason::UnknownType);
    let missing = Unreadable::from(&tombstone);
    assert_eq!(missing.reason, PoisonReason::Undecodable);
    assert_eq!(missing.error, tombstone.to_string());
}

/// What a record does when a handler meets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Good,
    /// Did not decode.
    Unreadable,
    /// Its handler always fails.
    Poison,
    /// Its handler fails the first `n` times it is called.
    Flaky(u32),
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        6 => Just(Kind::Good),
        1 => Just(Kind::Unreadable),
        1 => Just(Kind::Poison),
        1 => (1..5u32).prop_map(Kind::Flaky),
    ]
}

/// What carrying out a whole plan did.
#[derive(Debug, Default)]
struct Run {
    /// Records applied, in commit order.
    applied: Vec<usize>,
    parked: Vec<Poison>,
    halted: Option<Poison>,
    /// `Apply` steps, failed ones included.
    applies: usize,
    retries: usize,
}

/// Carries out the plan for `kinds` like the worker does, checking on the way that
/// every step starts at the checkpoint and never gives a handler an unreadable
/// record.
fn execute(kinds: &[Kind], batched: bool, max_attempts: u32, poison: PoisonPolicy) -> Run {
    let records = kinds
        .iter()
        .map(|k| {
            (*k == Kind::Unreadable)
                .then(|| unreadable(PoisonReason::Undecodable))
                .flatten()
        })
        .collect();
    let mut plan = Planner::new(records, batched, policy(max_attempts), poison);
    let mut fails_left: Vec<u32> = kinds
        .iter()
        .map(|k| match k {
            Kind::Flaky(n) => *n,
            Kind::Poison => u32::MAX,
            _ => 0,
        })
        .collect();
    // Whether the handler fails on record `i` this time.
    let mut fails = |i: usize| {
        assert_ne!(
            kinds[i],
            Kind::Unreadable,
            "a handler got unreadable record {i}"
        );
        if fails_left[i] > 0 {
            fails_left[i] = fails_left[i].saturating_sub(1);
            true
        } else {
            false
        }
    };
    let mut run = Run::default();
    let mut checkpoint = 0;
    for _ in 0..10_000 {
        let outcome = match plan.next_step() {
            Step::Done => {
                assert_eq!(checkpoint, kinds.len(), "done before the end");
                return run;
            }
            Step::Halt(poison) => {
                assert_eq!(poison.index, checkpoint);
                run.halted = Some(poison);
                return run;
            }
            Step::Park(poison) => {
                assert_eq!(poison.index, checkpoint);
                checkpoint += 1;
                run.parked.push(poison);
                Outcome::Committed
            }
            Step::Retry { index, attempt, .. } => {
                assert_eq!(index, checkpoint);
                assert!(attempt >= 1 && attempt < max_attempts);
                run.retries += 1;
                if fails(index) {
                    failed(Some(0), &format!("attempt {}", attempt + 1))
                } else {
                    run.applied.push(index);
                    checkpoint += 1;
                    Outcome::Committed
                }
            }
            Step::Apply { range, mode } => {
                assert_eq!(range.start, checkpoint);
                assert!(range.start < range.end && range.end <= kinds.len());
                run.applies += 1;
                // The transaction: handlers in order until one fails.
                let failing = range.clone().position(&mut fails);
                match (failing, mode) {
                    (None, _) => {
                        run.applied.extend(range.clone());
                        checkpoint = range.end;
                        Outcome::Committed
                    }
                    (Some(_), Mode::Batched) => failed(None, "batch"),
                    (Some(i), Mode::PerEvent) => failed(Some(i), "attempt 1"),
                }
            }
        };
        plan.report(outcome);
    }
    panic!("the plan did not end within 10,000 steps");
}

fn indices(kinds: &[Kind], wanted: impl Fn(Kind) -> bool) -> Vec<usize> {
    (0..kinds.len()).filter(|&i| wanted(kinds[i])).collect()
}

proptest! {
    /// Every good event is applied exactly once and in order, exactly the poison
    /// and unreadable records are parked (in order, with the right attempts), and
    /// the number of transactions is bounded by the bad records, not the batch.
    #[test]
    fn park_applies_every_good_event_once_and_parks_exactly_the_poison(
        kinds in proptest::collection::vec(
            prop_oneof![4 => Just(Kind::Good), 1 => Just(Kind::Unreadable), 1 => Just(Kind::Poison)],
            0..60,
        ),
        batched in any::<bool>(),
        max_attempts in 0..5u32,
    ) {
        let run = execute(&kinds, batched, max_attempts, PoisonPolicy::Park);
        prop_assert_eq!(&run.applied, &indices(&kinds, |k| k == Kind::Good));
        let parked: Vec<usize> = run.parked.iter().map(|p| p.index).collect();
        prop_assert_eq!(parked, indices(&kinds, |k| k != Kind::Good));
        for poison in &run.parked {
            if kinds[poison.index] == Kind::Poison {
                prop_assert_eq!(poison.reason, PoisonReason::HandlerFailed);
                prop_assert_eq!(poison.attempts, max_attempts.max(1));
            } else {
                prop_assert_eq!(poison.reason, PoisonReason::Undecodable);
                prop_assert_eq!(poison.attempts, 0);
            }
        }
        let poison = indices(&kinds, |k| k == Kind::Poison).len();
        let bad = run.parked.len();
        // Each committed batch ends at a bad record or at the end. Locating a
        // failing event costs at most 2 failed transactions per event (the
        // per-event pass over the batch, then over the rest after the events
        // before it were committed); 4 when batched (a batched attempt before
        // each), whatever the batch size.
        let failed_per_poison = if batched { 4 } else { 2 };
        prop_assert!(run.applies <= bad + 1 + failed_per_poison * poison,
            "{} transactions for {} bad records ({} poison)", run.applies, bad, poison);
        prop_assert_eq!(run.retries, poison * (max_attempts.max(1) as usize - 1));
    }

    /// Under `Halt` the plan applies every good event before the first bad
    /// record, in order, and stops at that record.
    #[test]
    fn halt_stops_at_the_first_bad_record(
        kinds in proptest::collection::vec(
            prop_oneof![4 => Just(Kind::Good), 1 => Just(Kind::Unreadable), 1 => Just(Kind::Poison)],
            0..60,
        ),
        batched in any::<bool>(),
        max_attempts in 1..4u32,
    ) {
        let run = execute(&kinds, batched, max_attempts, PoisonPolicy::Halt);
        let first_bad = kinds.iter().position(|k| *k != Kind::Good);
        prop_assert_eq!(run.applied, (0..first_bad.unwrap_or(kinds.len())).collect::<Vec<_>>());
        prop_assert!(run.parked.is_empty());
        prop_assert_eq!(run.halted.map(|p| p.index), first_bad);
    }

    /// With events that fail only sometimes, every record is still applied or
    /// parked exactly once, in offset order. An event is parked only after
    /// `max_attempts` failures of its own, and surely after 3 more (the batched
    /// and per-event passes that locate it, twice).
    #[test]
    fn flaky_events_are_applied_or_parked_exactly_once(
        kinds in proptest::collection::vec(kind(), 0..40),
        batched in any::<bool>(),
        max_attempts in 0..7u32,
    ) {
        let run = execute(&kinds, batched, max_attempts, PoisonPolicy::Park);
        let mut all: Vec<usize> = run.applied.iter().copied()
            .chain(run.parked.iter().map(|p| p.index))
            .collect();
        all.sort_unstable();
        prop_assert_eq!(all, (0..kinds.len()).collect::<Vec<_>>());
        prop_assert!(run.applied.windows(2).all(|w| w[0] < w[1]));
        let attempts = max_attempts.max(1);
        for (i, kind) in kinds.iter().enumerate() {
            let parked = run.parked.iter().any(|p| p.index == i);
            match *kind {
                Kind::Good => prop_assert!(!parked, "good event {} parked", i),
                Kind::Flaky(n) if n < attempts => {
                    prop_assert!(!parked, "event {} failing {} times parked", i, n);
                }
                Kind::Flaky(n) if n >= attempts + 3 => {
                    prop_assert!(parked, "event {} failing {} times applied", i, n);
                }
                Kind::Flaky(_) | Kind::Poison | Kind::Unreadable => {}
            }
        }
    }
}

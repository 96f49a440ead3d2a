//! Rebuilding a partition's aggregates from its events, without Kafka: events a
//! snapshot covers are skipped, the others are applied in log order, and the first
//! event out of its aggregate's sequence is noted (a restore then either replays
//! the whole partition or reports the partition inconsistent).

use std::collections::HashMap;

use crate::Aggregate;

use super::partitions::Slot;

/// The aggregates of one partition while its events are replayed.
pub(super) struct Replay<A> {
    /// The aggregates, starting from their snapshots.
    pub(super) aggregates: HashMap<String, Slot<A>>,
    /// Events applied (not covered by a snapshot).
    pub(super) applied: u64,
    /// The first event out of sequence.
    pub(super) gap: Option<Gap>,
}

/// An event out of its aggregate's sequence (a lost or repeated event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Gap {
    /// Its offset in the events partition.
    pub(super) offset: i64,
    /// Its aggregate.
    pub(super) aggregate_id: String,
    /// The aggregate's version before it.
    pub(super) version: u64,
    /// Its sequence.
    pub(super) sequence: u64,
}

impl<A: Aggregate> Replay<A> {
    /// Starts from `aggregates` (restored from snapshots, or none).
    pub(super) fn new(aggregates: HashMap<String, Slot<A>>) -> Self {
        Self {
            aggregates,
            applied: 0,
            gap: None,
        }
    }

    /// Takes in the event at `offset`: its aggregate's offset bound moves to it;
    /// it is applied if it is the aggregate's next one, skipped if a snapshot
    /// covers it, and otherwise noted as a gap (the first one is kept).
    pub(super) fn event(
        &mut self,
        offset: i64,
        aggregate_id: String,
        sequence: u64,
        event: &A::Event,
    ) {
        let slot = self.aggregates.entry(aggregate_id.clone()).or_default();
        slot.offset_bound = slot.offset_bound.max(offset);
        if sequence <= slot.snapshot_version {
            return; // covered by the snapshot
        }
        if sequence != slot.version + 1 {
            let version = slot.version;
            self.gap.get_or_insert(Gap {
                offset,
                aggregate_id,
                version,
                sequence,
            });
            return;
        }
        slot.state.apply(event);
        slot.version = sequence;
        self.applied += 1;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;
    use crate::Apply;
    use crate::command::processor::testing::{Counter, CounterEvent};

    const ONE: CounterEvent = CounterEvent::Incremented { by: 1 };

    /// A gapless log: the aggregate of each event in log order, numbered per
    /// aggregate from 1. Returns `(offset, aggregate id, sequence)`.
    fn log(owners: &[u8]) -> Vec<(i64, String, u64)> {
        let mut next: HashMap<u8, u64> = HashMap::new();
        owners
            .iter()
            .enumerate()
            .map(|(offset, owner)| {
                let sequence = next.entry(*owner).or_insert(0);
                *sequence += 1;
                (offset as i64, format!("c-{owner}"), *sequence)
            })
            .collect()
    }

    fn replay(
        start: HashMap<String, Slot<Counter>>,
        log: &[(i64, String, u64)],
    ) -> Replay<Counter> {
        let mut replay = Replay::new(start);
        for (offset, id, sequence) in log {
            replay.event(*offset, id.clone(), *sequence, &ONE);
        }
        replay
    }

    /// An aggregate restored from a snapshot at `version`.
    fn snapshot(version: u64, offset_bound: i64) -> Slot<Counter> {
        let mut slot = Slot::<Counter>::default();
        for _ in 0..version {
            slot.state.apply(&ONE);
        }
        slot.version = version;
        slot.snapshot_version = version;
        slot.confirmed_version = version;
        slot.offset_bound = offset_bound;
        slot
    }

    proptest! {
        /// A gapless log rebuilds every aggregate at its event count, with the
        /// offset of its last event as its bound, and no gap.
        #[test]
        fn a_gapless_log_rebuilds_every_aggregate(owners in proptest::collection::vec(0..4u8, 0..60)) {
            let log = log(&owners);
            let replay = replay(HashMap::new(), &log);
            prop_assert_eq!(replay.gap, None);
            prop_assert_eq!(replay.applied, log.len() as u64);
            for (id, slot) in &replay.aggregates {
                let mine: Vec<&(i64, String, u64)> = log.iter().filter(|(_, i, _)| i == id).collect();
                prop_assert_eq!(slot.version, mine.len() as u64);
                prop_assert_eq!(slot.state.value, mine.len() as u64);
                prop_assert_eq!(slot.offset_bound, mine.last().unwrap().0);
            }
        }

        /// Starting from a snapshot, the events it covers are skipped and the rest
        /// applied: the same aggregate, fewer events applied.
        #[test]
        fn events_covered_by_a_snapshot_are_skipped(
            owners in proptest::collection::vec(0..3u8, 1..60),
            covered in 0..30u64,
        ) {
            let log = log(&owners);
            let total = log.iter().filter(|(_, id, _)| id == "c-0").count() as u64;
            let covered = covered.min(total);
            let bound = log
                .iter()
                .filter(|(_, id, s)| id == "c-0" && *s == covered)
                .map(|(o, _, _)| *o)
                .next()
                .unwrap_or(-1);
            let start = HashMap::from([("c-0".to_owned(), snapshot(covered, bound))]);
            let replay = replay(start, &log);
            prop_assert_eq!(replay.gap, None);
            prop_assert_eq!(replay.applied, log.len() as u64 - covered);
            if total > 0 {
                let slot = &replay.aggregates["c-0"];
                prop_assert_eq!(slot.version, total);
                prop_assert_eq!(slot.state.value, total);
            }
        }

        /// A lost or repeated event is reported at the first event out of
        /// sequence, with its aggregate's version and its sequence.
        #[test]
        fn a_missing_or_repeated_event_is_the_first_gap(
            owners in proptest::collection::vec(0..3u8, 2..40),
            at in any::<prop::sample::Index>(),
            repeat in any::<bool>(),
        ) {
            let mut log = log(&owners);
            let i = at.index(log.len());
            let (offset, id, sequence) = log[i].clone();
            if repeat {
                log.insert(i + 1, (offset, id.clone(), sequence));
            } else {
                log.remove(i);
            }
            // The first event of `id` after position i (a repeat sits at i + 1).
            let next = if repeat { Some(i + 1) } else { (i..log.len()).find(|&j| log[j].1 == id) };
            let replay = replay(HashMap::new(), &log);
            match next {
                Some(j) => prop_assert_eq!(replay.gap, Some(Gap {
                    offset: log[j].0,
                    aggregate_id: id,
                    version: sequence - 1 + u64::from(repeat),
                    sequence: log[j].2,
                })),
                // The last event of its aggregate was lost: nothing shows it.
                None => prop_assert_eq!(replay.gap, None),
            }
        }
    }
}

//! Assembling a batch, without Kafka: how long to poll for it, how its records are
//! split by partition, what becomes of each partition's share, and where to rewind
//! the records that must be consumed again.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How long to wait for the first record of a batch before looking at the stop and
/// kill flags again.
const FIRST_WAIT: Duration = Duration::from_millis(100);

/// Collects one batch: waits up to [`FIRST_WAIT`] for a first record, then takes
/// more until `max_batch` records, or until `poll` has nothing (`None`: a timeout or
/// a consumer error), waiting at most until `linger` has passed since the first
/// record; after that it takes only what is already there (`poll` is given a zero
/// wait). `poll` is given how long it may wait; `now` is the clock.
pub(super) fn collect<M>(
    max_batch: usize,
    linger: Duration,
    mut now: impl FnMut() -> Instant,
    mut poll: impl FnMut(Duration) -> Option<M>,
) -> Vec<M> {
    let mut batch = Vec::new();
    let mut deadline: Option<Instant> = None;
    while batch.len() < max_batch {
        let timeout = match deadline {
            None => FIRST_WAIT,
            Some(d) => d.saturating_duration_since(now()),
        };
        match poll(timeout) {
            Some(record) => {
                batch.push(record);
                deadline.get_or_insert_with(|| now() + linger);
            }
            None => break,
        }
    }
    batch
}

/// Splits a batch by partition: the partitions in the order of their first record,
/// each with its records in batch order.
pub(super) fn by_partition<M>(batch: Vec<M>, partition: impl Fn(&M) -> i32) -> Vec<(i32, Vec<M>)> {
    let mut out: Vec<(i32, Vec<M>)> = Vec::new();
    for record in batch {
        let p = partition(&record);
        match out.iter_mut().find(|(q, _)| *q == p) {
            Some((_, records)) => records.push(record),
            None => out.push((p, vec![record])),
        }
    }
    out
}

/// Takes a partition's next batch from the commands held while its transaction
/// ran: the oldest, up to `max_batch`, in log order.
pub(super) fn take<M>(held: &mut VecDeque<M>, max_batch: usize) -> Vec<M> {
    let n = held.len().min(max_batch);
    held.drain(..n).collect()
}

/// Drops the commands below `consumed`, the partition's position (see
/// `PartitionState::consumed`): decided by a committed transaction, and consumed
/// again because the consumer group's offset lagged behind the outcomes. Returns
/// how many were dropped.
pub(super) fn drop_decided<M>(
    messages: &mut Vec<M>,
    consumed: i64,
    offset: impl Fn(&M) -> i64,
) -> usize {
    let before = messages.len();
    messages.retain(|m| offset(m) >= consumed);
    before - messages.len()
}

/// Whether a busy partition holds so many commands that it is paused until its
/// thread catches up: two batches' worth.
pub(super) fn over_limit(held: usize, max_batch: usize) -> bool {
    held >= max_batch.saturating_mul(2)
}

/// What becomes of one partition's share of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// Processed in the partition's transaction.
    Process,
    /// Dropped: the partition was revoked meanwhile; its new owner processes them.
    Skip,
    /// Answered `unavailable`: the partition is quarantined.
    Unavailable,
    /// Consumed again after the partition is restored: it is assigned but has no
    /// state (a failed transaction dropped it).
    Restore,
}

/// Where a partition's records go, given whether this instance has its state, has
/// it assigned, and has quarantined it.
pub(super) fn route(owned: bool, assigned: bool, quarantined: bool) -> Route {
    if owned {
        Route::Process
    } else if !assigned {
        Route::Skip
    } else if quarantined {
        Route::Unavailable
    } else {
        Route::Restore
    }
}

/// The offset to rewind each `(topic, partition)` to: the lowest of its given
/// offsets, so that every record from there on is consumed again.
pub(super) fn rewind_targets(
    positions: impl IntoIterator<Item = (String, i32, i64)>,
) -> HashMap<(String, i32), i64> {
    let mut firsts: HashMap<(String, i32), i64> = HashMap::new();
    for (topic, partition, offset) in positions {
        firsts
            .entry((topic, partition))
            .and_modify(|o| *o = (*o).min(offset))
            .or_insert(offset);
    }
    firsts
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn commands_below_the_position_are_dropped_and_counted() {
        let mut offsets = vec![7, 8, 9, 10, 11];
        assert_eq!(drop_decided(&mut offsets, 10, |o| *o), 3);
        assert_eq!(offsets, [10, 11]);
        // An unknown position (-1) drops nothing.
        assert_eq!(drop_decided(&mut offsets, -1, |o| *o), 0);
        assert_eq!(offsets, [10, 11]);
        assert_eq!(drop_decided(&mut offsets, 12, |o| *o), 2);
        assert!(offsets.is_empty());
    }

    /// A source of records, each arriving `gap` after the previous one was taken,
    /// on a fake clock (time since the start) that a poll advances by the time it
    /// waited. It notes each poll's timeout.
    struct Source {
        pending: VecDeque<(Duration, u32)>,
        timeouts: Vec<Duration>,
    }

    impl Source {
        fn poll(&mut self, clock: &Cell<Duration>, timeout: Duration) -> Option<u32> {
            self.timeouts.push(timeout);
            match self.pending.front_mut() {
                Some((gap, record)) if *gap <= timeout => {
                    clock.set(clock.get() + *gap);
                    let record = *record;
                    self.pending.pop_front();
                    Some(record)
                }
                Some((gap, _)) => {
                    *gap -= timeout;
                    clock.set(clock.get() + timeout);
                    None
                }
                None => {
                    clock.set(clock.get() + timeout);
                    None
                }
            }
        }
    }

    /// Collects a batch from records given as `(gap in ms, record)`.
    fn run_collect(max_batch: usize, linger_ms: u64, records: &[(u64, u32)]) -> (Vec<u32>, Source) {
        let mut source = Source {
            pending: records
                .iter()
                .map(|&(gap_ms, r)| (Duration::from_millis(gap_ms), r))
                .collect(),
            timeouts: Vec::new(),
        };
        let start = Instant::now();
        let clock = Cell::new(Duration::ZERO);
        let batch = collect(
            max_batch,
            Duration::from_millis(linger_ms),
            || start + clock.get(),
            |timeout| source.poll(&clock, timeout),
        );
        (batch, source)
    }

    proptest! {
        /// A batch is the records in arrival order, a prefix of what was there:
        /// none lost, none repeated, never more than `max_batch`, and the rest is
        /// left for the next batch.
        #[test]
        fn collect_takes_a_prefix_within_the_limit(
            max_batch in 1..20usize,
            linger_ms in 0..20u64,
            records in proptest::collection::vec((0..10u64, any::<u32>()), 0..40),
        ) {
            let (batch, source) = run_collect(max_batch, linger_ms, &records);
            prop_assert!(batch.len() <= max_batch);
            let sent: Vec<u32> = records.iter().map(|&(_, r)| r).collect();
            prop_assert_eq!(&batch[..], &sent[..batch.len()]);
            let left: Vec<u32> = source.pending.iter().map(|&(_, r)| r).collect();
            prop_assert_eq!(&left[..], &sent[batch.len()..]);
            // After the first record, no poll waits past the linger, and what
            // was already there when it ran out is taken too.
            if batch.len() < max_batch && !records.is_empty() && batch.len() < records.len() {
                prop_assert!(records[batch.len()].0 > 0, "a queued record was left behind");
            }
            for timeout in source.timeouts.iter().skip(1) {
                prop_assert!(*timeout <= Duration::from_millis(linger_ms));
            }
        }

        /// Records that are already there fill the batch up to `max_batch`.
        #[test]
        fn collect_fills_the_batch_from_queued_records(
            max_batch in 1..20usize,
            extra in 0..20usize,
        ) {
            let records: Vec<(u64, u32)> = (0..(max_batch + extra) as u32).map(|r| (0, r)).collect();
            let (batch, _) = run_collect(max_batch, 5, &records);
            prop_assert_eq!(batch, (0..max_batch as u32).collect::<Vec<_>>());
        }

        /// Splitting by partition loses and duplicates nothing, keeps each
        /// partition's order, lists each partition once, in order of first record.
        #[test]
        fn by_partition_keeps_every_record_in_partition_order(
            records in proptest::collection::vec((0..5i32, any::<u64>()), 0..60),
        ) {
            let indexed: Vec<(i32, usize)> =
                records.iter().enumerate().map(|(i, &(p, _))| (p, i)).collect();
            let groups = by_partition(indexed.clone(), |&(p, _)| p);
            let partitions: Vec<i32> = groups.iter().map(|(p, _)| *p).collect();
            let mut firsts: Vec<i32> = Vec::new();
            for &(p, _) in &indexed {
                if !firsts.contains(&p) {
                    firsts.push(p);
                }
            }
            prop_assert_eq!(partitions, firsts);
            let mut total = 0;
            for (p, group) in &groups {
                prop_assert!(group.iter().all(|(q, _)| q == p));
                let expected: Vec<(i32, usize)> =
                    indexed.iter().copied().filter(|(q, _)| q == p).collect();
                prop_assert_eq!(group, &expected);
                total += group.len();
            }
            prop_assert_eq!(total, indexed.len());
        }

        /// Each partition rewinds to its lowest offset, and only partitions given
        /// are rewound.
        #[test]
        fn rewind_targets_are_the_lowest_offsets(
            positions in proptest::collection::vec((0..2usize, 0..4i32, 0..1000i64), 0..30),
        ) {
            let topics = ["commands", "other"];
            let named: Vec<(String, i32, i64)> =
                positions.iter().map(|&(t, p, o)| (topics[t].to_owned(), p, o)).collect();
            let targets = rewind_targets(named.clone());
            for ((topic, partition), offset) in &targets {
                let lowest = named
                    .iter()
                    .filter(|(t, p, _)| t == topic && p == partition)
                    .map(|(_, _, o)| *o)
                    .min();
                prop_assert_eq!(Some(*offset), lowest);
            }
            for (topic, partition, _) in &named {
                prop_assert!(targets.contains_key(&(topic.clone(), *partition)));
            }
        }
    }

    #[test]
    fn collect_waits_for_a_first_record_then_lingers_from_it() {
        // The first record comes after 30 ms, the next two 4 ms apart, the last one
        // 10 ms later: past a linger of 10 ms counted from the first.
        let (batch, source) = run_collect(100, 10, &[(30, 1), (4, 2), (4, 3), (10, 4)]);
        assert_eq!(batch, [1, 2, 3]);
        assert_eq!(source.timeouts[0], FIRST_WAIT);
        assert_eq!(source.timeouts[1], Duration::from_millis(10));
        assert_eq!(source.timeouts[2], Duration::from_millis(6));
        assert_eq!(source.timeouts[3], Duration::from_millis(2));
        assert_eq!(source.pending.len(), 1);
    }

    #[test]
    fn without_linger_the_batch_is_what_is_already_there() {
        let (batch, source) = run_collect(100, 0, &[(30, 1), (0, 2), (0, 3), (1, 4)]);
        assert_eq!(batch, [1, 2, 3]);
        assert_eq!(source.timeouts[1..], [Duration::ZERO; 3]);
        assert_eq!(source.pending.len(), 1);
    }

    #[test]
    fn collect_returns_nothing_when_nothing_comes() {
        let (batch, source) = run_collect(10, 5, &[(500, 1)]);
        assert!(batch.is_empty());
        assert_eq!(source.timeouts, [FIRST_WAIT]);
        assert_eq!(source.pending.len(), 1);
    }

    #[test]
    fn route_by_state_assignment_and_quarantine() {
        for assigned in [false, true] {
            for quarantined in [false, true] {
                assert_eq!(route(true, assigned, quarantined), Route::Process);
            }
        }
        assert_eq!(route(false, false, false), Route::Skip);
        assert_eq!(route(false, false, true), Route::Skip);
        assert_eq!(route(false, true, true), Route::Unavailable);
        assert_eq!(route(false, true, false), Route::Restore);
    }

    #[test]
    fn the_next_batch_is_the_oldest_held_commands_in_order() {
        let mut held: VecDeque<u32> = (1..=5).collect();
        assert_eq!(take(&mut held, 3), [1, 2, 3]);
        assert_eq!(take(&mut held, 3), [4, 5]);
        assert!(take(&mut held, 3).is_empty());
    }

    #[test]
    fn a_partition_is_paused_at_two_batches_held() {
        assert!(!over_limit(999, 500));
        assert!(over_limit(1000, 500));
        assert!(over_limit(2, 1));
        assert!(!over_limit(1, 1));
    }
}

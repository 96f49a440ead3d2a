//! The counters of a running command processor.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::lock;

/// The counters of one processor instance at one moment ([`ProcessorStats::counters`]).
/// Each only grows while the processor runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessorCounters {
    /// Commands handled (every outcome, duplicates included).
    pub commands: u64,
    /// Commands accepted.
    pub accepted: u64,
    /// Commands rejected by their handler.
    pub rejected: u64,
    /// Commands that failed (unknown type, undecodable).
    pub failed: u64,
    /// Commands whose id had been processed before.
    pub duplicates: u64,
    /// Events written.
    pub events: u64,
    /// Transactions committed.
    pub transactions: u64,
    /// Transactions aborted.
    pub aborted: u64,
    /// Commits refused because another owner fenced this one.
    pub fenced: u64,
    /// Commits refused because this instance had lost its consumer group membership
    /// (KIP-447 generation fencing).
    pub deposed: u64,
    /// Transactions abandoned because a Kafka client call hung past the
    /// transaction timeout (their partition was restored with a new producer).
    pub abandoned: u64,
    /// Partition restores.
    pub restores: u64,
    /// Event records read while restoring.
    pub restore_records_read: u64,
    /// Outcome records read while restoring the dedup windows (only those of the
    /// last `dedup_window`, found by timestamp).
    pub restore_outcomes_read: u64,
    /// Events applied to aggregates while restoring (not covered by a snapshot).
    pub restore_events_applied: u64,
    /// Wall-clock milliseconds spent restoring partitions, in total.
    pub restore_millis: u64,
    /// Snapshots handed to the writer.
    pub snapshots: u64,
    /// Snapshots that could not be read and were discarded.
    pub snapshots_discarded: u64,
    /// Commands answered "unavailable" because their partition is quarantined.
    pub unavailable: u64,
    /// Commands that arrived on a partition other than their aggregate id's and
    /// were forwarded to it.
    pub forwarded: u64,
    /// Reply producers replaced after a fatal error.
    pub reply_producers_replaced: u64,
}

/// The live statistics of one processor instance: read its counters with
/// [`ProcessorStats::counters`] and its partitions with
/// [`ProcessorStats::owned_partitions`] while it runs. Only the processor writes them.
#[derive(Debug, Default)]
pub struct ProcessorStats {
    /// Commands handled (every outcome, duplicates included).
    pub(crate) commands: AtomicU64,
    /// Commands accepted.
    pub(crate) accepted: AtomicU64,
    /// Commands rejected by their handler.
    pub(crate) rejected: AtomicU64,
    /// Commands that failed (unknown type, undecodable).
    pub(crate) failed: AtomicU64,
    /// Commands whose id had been processed before.
    pub(crate) duplicates: AtomicU64,
    /// Events written.
    pub(crate) events: AtomicU64,
    /// Transactions committed.
    pub(crate) transactions: AtomicU64,
    /// Transactions aborted.
    pub(crate) aborted: AtomicU64,
    /// Commits refused because another owner fenced this one.
    pub(crate) fenced: AtomicU64,
    /// Commits refused because this instance had lost its consumer group membership
    /// (KIP-447 generation fencing).
    pub(crate) deposed: AtomicU64,
    /// Transactions abandoned because a Kafka client call hung past the
    /// transaction timeout (their partition was restored with a new producer).
    pub(crate) abandoned: AtomicU64,
    /// Partition restores.
    pub(crate) restores: AtomicU64,
    /// Event records read while restoring.
    pub(crate) restore_records_read: AtomicU64,
    /// Outcome records read while restoring the dedup windows (only those of the
    /// last `dedup_window`, found by timestamp).
    pub(crate) restore_outcomes_read: AtomicU64,
    /// Events applied to aggregates while restoring (not covered by a snapshot).
    pub(crate) restore_events_applied: AtomicU64,
    /// Wall-clock milliseconds spent restoring partitions, in total.
    pub(crate) restore_millis: AtomicU64,
    /// Snapshots handed to the writer.
    pub(crate) snapshots: AtomicU64,
    /// Snapshots that could not be read and were discarded.
    pub(crate) snapshots_discarded: AtomicU64,
    /// Commands answered "unavailable" because their partition is quarantined.
    pub(crate) unavailable: AtomicU64,
    /// Commands that arrived on a partition other than their aggregate id's and
    /// were forwarded to it.
    pub(crate) forwarded: AtomicU64,
    /// Reply producers replaced after a fatal error.
    pub(crate) reply_producers_replaced: AtomicU64,
    pub(super) owned: Mutex<Vec<i32>>,
    pub(super) quarantined: Mutex<Vec<(i32, String)>>,
}

impl ProcessorStats {
    /// The counters now (each read on its own, relaxed: counters of one moment may
    /// be a few increments apart).
    pub fn counters(&self) -> ProcessorCounters {
        ProcessorCounters {
            commands: self.commands.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
            transactions: self.transactions.load(Ordering::Relaxed),
            aborted: self.aborted.load(Ordering::Relaxed),
            fenced: self.fenced.load(Ordering::Relaxed),
            deposed: self.deposed.load(Ordering::Relaxed),
            abandoned: self.abandoned.load(Ordering::Relaxed),
            restores: self.restores.load(Ordering::Relaxed),
            restore_records_read: self.restore_records_read.load(Ordering::Relaxed),
            restore_outcomes_read: self.restore_outcomes_read.load(Ordering::Relaxed),
            restore_events_applied: self.restore_events_applied.load(Ordering::Relaxed),
            restore_millis: self.restore_millis.load(Ordering::Relaxed),
            snapshots: self.snapshots.load(Ordering::Relaxed),
            snapshots_discarded: self.snapshots_discarded.load(Ordering::Relaxed),
            unavailable: self.unavailable.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            reply_producers_replaced: self.reply_producers_replaced.load(Ordering::Relaxed),
        }
    }

    /// Partitions this instance owns now.
    pub fn owned_partitions(&self) -> Vec<i32> {
        lock(&self.owned).clone()
    }

    /// Partitions assigned to this instance whose events it cannot read, with the
    /// reason. It processes none of their commands (their callers get
    /// `GatewayError::PartitionUnavailable`) until the partition is reassigned.
    /// Report it in health checks.
    pub fn quarantined_partitions(&self) -> Vec<(i32, String)> {
        lock(&self.quarantined).clone()
    }

    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_read_what_the_processor_added() {
        let stats = ProcessorStats::default();
        assert_eq!(stats.counters(), ProcessorCounters::default());
        ProcessorStats::add(&stats.accepted, 3);
        ProcessorStats::add(&stats.fenced, 1);
        let counters = stats.counters();
        assert_eq!(
            (counters.accepted, counters.fenced, counters.rejected),
            (3, 1, 0)
        );
    }
}

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
    /// Aggregates loaded from their snapshot rows on demand (a command for one not
    /// in memory, or a lazy restore).
    pub aggregates_loaded: u64,
    /// Aggregates evicted from memory past `max_cached_aggregates`.
    pub aggregates_evicted: u64,
    /// Commands answered "unavailable" because their partition is quarantined.
    pub unavailable: u64,
    /// Commands that arrived on a partition other than their aggregate id's and
    /// were forwarded to it.
    pub forwarded: u64,
    /// Reply producers replaced after a fatal error.
    pub reply_producers_replaced: u64,
    /// Replies handed in memory to a gateway of this process instead of being
    /// produced to the replies topic.
    pub replies_in_process: u64,
}

/// The live statistics of one processor instance: read its counters with
/// [`ProcessorStats::counters`] and its partitions with
/// [`ProcessorStats::owned_partitions`] while it runs. Only the processor writes them.
#[derive(Debug, Default)]
pub struct ProcessorStats {
    /// Commands handled (every outcome, duplicates included).
    pub(crate) commands: Stat,
    /// Commands accepted.
    pub(crate) accepted: Stat,
    /// Commands rejected by their handler.
    pub(crate) rejected: Stat,
    /// Commands that failed (unknown type, undecodable).
    pub(crate) failed: Stat,
    /// Commands whose id had been processed before.
    pub(crate) duplicates: Stat,
    /// Events written.
    pub(crate) events: Stat,
    /// Transactions committed.
    pub(crate) transactions: Stat,
    /// Transactions aborted.
    pub(crate) aborted: Stat,
    /// Commits refused because another owner fenced this one.
    pub(crate) fenced: Stat,
    /// Transactions abandoned because a Kafka client call hung past the
    /// transaction timeout (their partition was restored with a new producer).
    pub(crate) abandoned: Stat,
    /// Partition restores.
    pub(crate) restores: Stat,
    /// Event records read while restoring.
    pub(crate) restore_records_read: Stat,
    /// Outcome records read while restoring the dedup windows (only those of the
    /// last `dedup_window`, found by timestamp).
    pub(crate) restore_outcomes_read: Stat,
    /// Events applied to aggregates while restoring (not covered by a snapshot).
    pub(crate) restore_events_applied: Stat,
    /// Wall-clock milliseconds spent restoring partitions, in total.
    pub(crate) restore_millis: Stat,
    /// Snapshots handed to the writer.
    pub(crate) snapshots: Stat,
    /// Snapshots that could not be read and were discarded.
    pub(crate) snapshots_discarded: Stat,
    /// Aggregates loaded from their snapshot rows on demand.
    pub(crate) aggregates_loaded: Stat,
    /// Aggregates evicted from memory past `max_cached_aggregates`.
    pub(crate) aggregates_evicted: Stat,
    /// Commands answered "unavailable" because their partition is quarantined.
    pub(crate) unavailable: Stat,
    /// Commands that arrived on a partition other than their aggregate id's and
    /// were forwarded to it.
    pub(crate) forwarded: Stat,
    /// Reply producers replaced after a fatal error.
    pub(crate) reply_producers_replaced: Stat,
    /// Replies handed in memory to a gateway of this process.
    pub(crate) replies_in_process: Stat,
    /// The exported histograms.
    pub(crate) timings: Timings,
    pub(super) owned: Mutex<Vec<i32>>,
    pub(super) quarantined: Mutex<Vec<(i32, String)>>,
    /// Aggregates in memory, over every owned partition (after the last commit or
    /// restore).
    pub(super) cached: AtomicU64,
}

impl ProcessorStats {
    /// The counters now (each read on its own, relaxed: counters of one moment may
    /// be a few increments apart).
    pub fn counters(&self) -> ProcessorCounters {
        ProcessorCounters {
            commands: self.commands.get(),
            accepted: self.accepted.get(),
            rejected: self.rejected.get(),
            failed: self.failed.get(),
            duplicates: self.duplicates.get(),
            events: self.events.get(),
            transactions: self.transactions.get(),
            aborted: self.aborted.get(),
            fenced: self.fenced.get(),
            abandoned: self.abandoned.get(),
            restores: self.restores.get(),
            restore_records_read: self.restore_records_read.get(),
            restore_outcomes_read: self.restore_outcomes_read.get(),
            restore_events_applied: self.restore_events_applied.get(),
            restore_millis: self.restore_millis.get(),
            snapshots: self.snapshots.get(),
            snapshots_discarded: self.snapshots_discarded.get(),
            aggregates_loaded: self.aggregates_loaded.get(),
            aggregates_evicted: self.aggregates_evicted.get(),
            unavailable: self.unavailable.get(),
            forwarded: self.forwarded.get(),
            reply_producers_replaced: self.reply_producers_replaced.get(),
            replies_in_process: self.replies_in_process.get(),
        }
    }

    /// Aggregates this instance holds in memory, over all its partitions, as of its
    /// last commit or restore (bounded by `ProcessorSettings::max_cached_aggregates`
    /// when it has a snapshot store).
    pub fn cached_aggregates(&self) -> u64 {
        self.cached.load(Ordering::Relaxed)
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

    pub(super) fn add(stat: &Stat, n: u64) {
        stat.value.fetch_add(n, Ordering::Relaxed);
        stat.exported.increment(n);
    }

    /// Statistics whose counters are also reported through the `metrics` facade
    /// (see [`crate::telemetry`]), labelled with `aggregate`.
    pub(crate) fn exported(aggregate: &'static str) -> Self {
        use crate::telemetry::*;
        let labelled = |name: &'static str, label: &'static str, value: &'static str| {
            Stat::exported(metrics::counter!(name, "aggregate" => aggregate, label => value))
        };
        let plain =
            |name: &'static str| Stat::exported(metrics::counter!(name, "aggregate" => aggregate));
        Self {
            accepted: labelled(COMMANDS, "outcome", "accepted"),
            rejected: labelled(COMMANDS, "outcome", "rejected"),
            failed: labelled(COMMANDS, "outcome", "failed"),
            duplicates: labelled(COMMANDS, "outcome", "duplicate"),
            unavailable: labelled(COMMANDS, "outcome", "unavailable"),
            forwarded: plain(COMMANDS_FORWARDED),
            events: plain(EVENTS_WRITTEN),
            transactions: labelled(TRANSACTIONS, "result", "committed"),
            aborted: labelled(TRANSACTIONS, "result", "aborted"),
            fenced: labelled(TRANSACTIONS, "result", "fenced"),
            abandoned: labelled(TRANSACTIONS, "result", "abandoned"),
            restores: plain(RESTORES),
            restore_records_read: labelled(RESTORE_RECORDS, "kind", "events"),
            restore_outcomes_read: labelled(RESTORE_RECORDS, "kind", "outcomes"),
            restore_events_applied: plain(RESTORE_EVENTS_APPLIED),
            snapshots_discarded: plain(SNAPSHOTS_DISCARDED),
            aggregates_loaded: plain(AGGREGATES_LOADED),
            aggregates_evicted: plain(AGGREGATES_EVICTED),
            reply_producers_replaced: plain(REPLY_PRODUCERS_REPLACED),
            replies_in_process: plain(REPLIES_IN_PROCESS),
            timings: Timings {
                decide_batch: metrics::histogram!(DECIDE_BATCH_SECONDS, "aggregate" => aggregate),
                batch_size: metrics::histogram!(COMMAND_BATCH_SIZE, "aggregate" => aggregate),
                commit: metrics::histogram!(TRANSACTION_COMMIT_SECONDS, "aggregate" => aggregate),
                restore: metrics::histogram!(RESTORE_SECONDS, "aggregate" => aggregate),
            },
            ..Self::default()
        }
    }
}

/// One counter of [`ProcessorStats`]: its value, and its exported metric (a no-op
/// when not exported).
#[derive(Debug)]
pub(crate) struct Stat {
    value: AtomicU64,
    exported: metrics::Counter,
}

impl Default for Stat {
    fn default() -> Self {
        Self::exported(metrics::Counter::noop())
    }
}

impl Stat {
    fn exported(counter: metrics::Counter) -> Self {
        Self {
            value: AtomicU64::new(0),
            exported: counter,
        }
    }

    fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// The histograms of a processor (no-ops unless [`ProcessorStats::exported`]).
#[derive(Debug)]
pub(crate) struct Timings {
    /// Deciding one partition's batch.
    pub(crate) decide_batch: metrics::Histogram,
    /// Commands per partition batch.
    pub(crate) batch_size: metrics::Histogram,
    /// `commit_transaction`.
    pub(crate) commit: metrics::Histogram,
    /// Restoring one partition.
    pub(crate) restore: metrics::Histogram,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            decide_batch: metrics::Histogram::noop(),
            batch_size: metrics::Histogram::noop(),
            commit: metrics::Histogram::noop(),
            restore: metrics::Histogram::noop(),
        }
    }
}

#[cfg(test)]
impl ProcessorStats {
    /// Two accepted commands, one rejected, one aborted transaction.
    pub(crate) fn count_for_test(&self) {
        Self::add(&self.accepted, 2);
        Self::add(&self.rejected, 1);
        Self::add(&self.aborted, 1);
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

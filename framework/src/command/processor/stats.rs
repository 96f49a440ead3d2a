//! The counters of a running command processor.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::lock;

/// Counters of one processor instance, readable while it runs.
#[derive(Debug, Default)]
pub struct ProcessorStats {
    /// Commands handled (every outcome, duplicates included).
    pub commands: AtomicU64,
    /// Commands accepted.
    pub accepted: AtomicU64,
    /// Commands rejected by their handler.
    pub rejected: AtomicU64,
    /// Commands that failed (unknown type, undecodable).
    pub failed: AtomicU64,
    /// Commands whose id had been processed before.
    pub duplicates: AtomicU64,
    /// Events written.
    pub events: AtomicU64,
    /// Transactions committed.
    pub transactions: AtomicU64,
    /// Transactions aborted.
    pub aborted: AtomicU64,
    /// Commits refused because another owner fenced this one.
    pub fenced: AtomicU64,
    /// Commits refused because this instance had lost its consumer group membership
    /// (KIP-447 generation fencing).
    pub deposed: AtomicU64,
    /// Transactions abandoned because a Kafka client call hung past the
    /// transaction timeout (their partition was restored with a new producer).
    pub abandoned: AtomicU64,
    /// Partition restores.
    pub restores: AtomicU64,
    /// Event records read while restoring.
    pub restore_records_read: AtomicU64,
    /// Outcome records read while restoring the dedup windows (only those of the
    /// last `dedup_window`, found by timestamp).
    pub restore_outcomes_read: AtomicU64,
    /// Events applied to aggregates while restoring (not covered by a snapshot).
    pub restore_events_applied: AtomicU64,
    /// Wall-clock milliseconds spent restoring partitions, in total.
    pub restore_millis: AtomicU64,
    /// Snapshots handed to the writer.
    pub snapshots: AtomicU64,
    /// Snapshots that could not be read and were discarded.
    pub snapshots_discarded: AtomicU64,
    /// Commands answered "unavailable" because their partition is quarantined.
    pub unavailable: AtomicU64,
    /// Commands that arrived on a partition other than their aggregate id's and
    /// were forwarded to it.
    pub forwarded: AtomicU64,
    /// Reply producers replaced after a fatal error.
    pub reply_producers_replaced: AtomicU64,
    pub(super) owned: Mutex<Vec<i32>>,
    pub(super) quarantined: Mutex<Vec<(i32, String)>>,
}

impl ProcessorStats {
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

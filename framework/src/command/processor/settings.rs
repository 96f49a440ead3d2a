//! Tuning of a command processor.

use std::time::Duration;

/// Tuning of a command processor.
#[derive(Debug, Clone)]
pub struct ProcessorSettings {
    /// Most commands in one transaction (per partition).
    pub max_batch: usize,
    /// How long to keep collecting a batch once the first command arrived. Small,
    /// so that latency stays low under light load; batches grow by themselves
    /// under heavy load because commands queue up while a transaction commits.
    pub batch_linger: Duration,
    /// Consumer group session timeout: how fast a crashed instance's partitions move.
    pub session_timeout: Duration,
    /// A processor that does not poll for this long leaves the group (and is
    /// fenced when it tries to commit).
    pub max_poll_interval: Duration,
    /// Kafka transaction timeout.
    pub transaction_timeout: Duration,
    /// Command ids seen within this window return their original outcome. Kept in
    /// memory per owned partition and rebuilt from the outcomes topic on assignment.
    pub dedup_window: Duration,
    /// Give up restoring a partition after this long.
    pub restore_timeout: Duration,
    /// Snapshot every changed aggregate of a partition (and advance the partition's
    /// restore watermark) every this many events in the partition.
    pub flush_every: u64,
}

impl Default for ProcessorSettings {
    fn default() -> Self {
        Self {
            max_batch: 500,
            batch_linger: Duration::from_millis(2),
            session_timeout: Duration::from_secs(10),
            max_poll_interval: Duration::from_secs(60),
            transaction_timeout: Duration::from_secs(30),
            dedup_window: Duration::from_secs(24 * 3600),
            restore_timeout: Duration::from_secs(600),
            flush_every: 1000,
        }
    }
}

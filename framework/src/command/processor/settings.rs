//! Tuning of a command processor.

use std::time::Duration;

use crate::settings::{
    InvalidSetting, MAX_DURATION, MAX_SESSION_TIMEOUT, at_least, duration_within,
};

/// Tuning of a command processor.
#[derive(Debug, Clone)]
pub struct ProcessorSettings {
    /// Most commands in one transaction (per partition).
    pub max_batch: usize,
    /// How long to wait for more commands once the first command of a poll arrived
    /// (commands already queued are always taken, up to `max_batch`). While
    /// transactions run, the poll loop looks at them at least every 5 ms, so a
    /// 5 ms gap between commands then ends the wait early. 0 by default:
    /// a partition with no transaction running starts one at once, and batches grow
    /// by themselves under load, because a busy partition's commands queue up
    /// while its transaction commits and become its next batch.
    pub batch_linger: Duration,
    /// How long a partition waits after a commit for the next commands of the
    /// callers that commit answered, so that they join its next batch rather than
    /// start one of their own. 0 by default: the partition starts its next batch
    /// at once with the commands held meanwhile.
    ///
    /// Meant for callers in a closed loop (each sends its next command once it has
    /// the outcome of the last) on few hot aggregates. Without it their commands
    /// split into two alternating batches, each paying a whole transaction; with it
    /// the partition waits until it holds as many commands more than at the commit
    /// as the committed batch had, until this long has passed, or until another
    /// partition waits for a transaction slot, whichever comes first (or at once,
    /// when the partition is being revoked or the processor stops). Under spread
    /// load the answered callers' next commands mostly go to other partitions, and
    /// the commands that reach a gathering partition then wait out the rest of the
    /// time: it costs up to this long per batch there (docs/benchmarks.md,
    /// "gathered rounds"). At most 1 s.
    pub gather_after_commit: Duration,
    /// Most partitions of this instance with a transaction running at once. A
    /// partition with commands and no free slot waits, its commands gathering into
    /// its next batch, and takes the slot of the partition that waited longest
    /// when one finishes (partitions take turns). No limit by default
    /// (`usize::MAX`): every partition runs its transactions independently, and a
    /// stalled one (its leader or coordinator failing over) holds up no other.
    ///
    /// A transaction costs a few round trips to the transaction coordinator
    /// whatever its size, so on a small broker that many partitions load at once, a
    /// limit trades latency at light load (a partition waits its turn) for a
    /// shorter tail at saturation (fewer, larger transactions): see
    /// docs/benchmarks.md. A partition stalled until its transaction timeout keeps
    /// its slot meanwhile. On one two-core broker shared with its clients, 4 to 12
    /// partitions without a limit sent so many small transactions at a few
    /// thousand commands/s that the broker's group coordinator stalled for seconds;
    /// a limit of 2 per instance kept it in step. Set one when the brokers are that
    /// small.
    pub max_transactions_at_once: usize,
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
    /// Give up restoring a partition when one of its reads from Kafka (the dedup
    /// window's outcomes, the events after the snapshots) takes longer than this.
    /// A restore makes a few such reads, after fencing the partition's previous
    /// writer (bounded by `transaction_timeout`), and looks up watermarks and
    /// offsets by time (30 s at most each), so a whole restore may take longer.
    pub restore_timeout: Duration,
    /// Snapshot every changed aggregate of a partition (and advance the partition's
    /// restore watermark) every this many events in the partition. Only for
    /// aggregate types with `snapshot_every`; others are snapshotted when their
    /// partition is revoked or the processor shuts down.
    pub flush_every: u64,
    /// Most aggregates one processor instance keeps in memory, shared evenly by its
    /// partitions. Past a partition's share, the least recently used aggregates
    /// whose snapshot row is confirmed at their current version leave memory (the
    /// partition is snapshotted first when too few are), and an evicted aggregate is
    /// loaded from its row on its next command: this instance is the partition's
    /// only writer, so the row is its state. A partition with more snapshot rows
    /// than its share is restored lazily: only the aggregates with events after the
    /// partition's watermark are loaded. Needs a snapshot store
    /// ([`super::CommandProcessor::snapshots`]); without one every aggregate stays in
    /// memory. Aggregates changed since the last snapshot cannot leave, so a
    /// partition may hold up to about `flush_every` more than its share.
    pub max_cached_aggregates: usize,
}

impl Default for ProcessorSettings {
    fn default() -> Self {
        Self {
            max_batch: 500,
            batch_linger: Duration::ZERO,
            gather_after_commit: Duration::ZERO,
            max_transactions_at_once: usize::MAX,
            session_timeout: Duration::from_secs(10),
            max_poll_interval: Duration::from_secs(60),
            transaction_timeout: Duration::from_secs(30),
            dedup_window: Duration::from_secs(24 * 3600),
            restore_timeout: Duration::from_secs(600),
            flush_every: 1000,
            max_cached_aggregates: 100_000,
        }
    }
}

/// The most librdkafka accepts for `max.poll.interval.ms`: one day.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(86_400);

impl ProcessorSettings {
    /// Checks every value before a processor starts: `max_batch`,
    /// `max_transactions_at_once`, `flush_every` and `max_cached_aggregates` of at
    /// least 1; `session_timeout` (1 ms to 1 hour), `max_poll_interval` (1 ms
    /// to 1 day) and `transaction_timeout` (1 s to 2^31 - 1 ms) within what
    /// librdkafka accepts; `batch_linger` at most an hour; `gather_after_commit` at
    /// most a second; and no other duration so
    /// long that a deadline computed from it would overflow (at most a year).
    ///
    /// # Errors
    /// The first [`InvalidSetting`], naming the field.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let ms = Duration::from_millis;
        at_least("max_batch", self.max_batch, 1)?;
        at_least("max_transactions_at_once", self.max_transactions_at_once, 1)?;
        at_least("flush_every", self.flush_every, 1)?;
        at_least("max_cached_aggregates", self.max_cached_aggregates, 1)?;
        duration_within(
            "batch_linger",
            self.batch_linger,
            Duration::ZERO,
            Duration::from_secs(3600),
        )?;
        duration_within(
            "gather_after_commit",
            self.gather_after_commit,
            Duration::ZERO,
            Duration::from_secs(1),
        )?;
        duration_within(
            "session_timeout",
            self.session_timeout,
            ms(1),
            MAX_SESSION_TIMEOUT,
        )?;
        duration_within(
            "max_poll_interval",
            self.max_poll_interval,
            ms(1),
            MAX_POLL_INTERVAL,
        )?;
        duration_within(
            "transaction_timeout",
            self.transaction_timeout,
            Duration::from_secs(1),
            ms(i32::MAX.unsigned_abs().into()),
        )?;
        duration_within(
            "dedup_window",
            self.dedup_window,
            Duration::ZERO,
            MAX_DURATION,
        )?;
        duration_within("restore_timeout", self.restore_timeout, ms(1), MAX_DURATION)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::*;

    #[test]
    fn the_defaults_are_valid_and_each_bad_value_is_named() {
        assert_eq!(ProcessorSettings::default().validate(), Ok(()));
        let bad = |s: ProcessorSettings| s.validate().expect_err("invalid").name;
        let base = ProcessorSettings::default;
        assert_eq!(
            bad(ProcessorSettings {
                max_batch: 0,
                ..base()
            }),
            "max_batch"
        );
        assert_eq!(
            bad(ProcessorSettings {
                max_transactions_at_once: 0,
                ..base()
            }),
            "max_transactions_at_once"
        );
        assert_eq!(
            bad(ProcessorSettings {
                flush_every: 0,
                ..base()
            }),
            "flush_every"
        );
        assert_eq!(
            bad(ProcessorSettings {
                max_cached_aggregates: 0,
                ..base()
            }),
            "max_cached_aggregates"
        );
        assert_eq!(
            bad(ProcessorSettings {
                batch_linger: Duration::MAX,
                ..base()
            }),
            "batch_linger"
        );
        assert_eq!(
            bad(ProcessorSettings {
                gather_after_commit: Duration::from_millis(1001),
                ..base()
            }),
            "gather_after_commit"
        );
        assert_eq!(
            bad(ProcessorSettings {
                session_timeout: Duration::from_secs(3601),
                ..base()
            }),
            "session_timeout"
        );
        assert_eq!(
            bad(ProcessorSettings {
                max_poll_interval: Duration::ZERO,
                ..base()
            }),
            "max_poll_interval"
        );
        assert_eq!(
            bad(ProcessorSettings {
                transaction_timeout: Duration::from_millis(999),
                ..base()
            }),
            "transaction_timeout"
        );
        assert_eq!(
            bad(ProcessorSettings {
                dedup_window: Duration::MAX,
                ..base()
            }),
            "dedup_window"
        );
        assert_eq!(
            bad(ProcessorSettings {
                restore_timeout: Duration::MAX,
                ..base()
            }),
            "restore_timeout"
        );
    }
}

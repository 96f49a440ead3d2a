//! Worker settings.

use std::time::Duration;

use crate::settings::InvalidSetting;

/// What a worker does with a poison record (undecodable, unknown event type, or a
/// handler that failed on every attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PoisonPolicy {
    /// Park it in `tributary_dead_letters` and go on with the next record (default).
    #[default]
    Park,
    /// Stop the projection at it: everything before it is committed, the checkpoint
    /// stays on it, and the worker ends with [`crate::projection::ProjectionError::Halted`].
    Halt,
}

/// How often and how patiently a failing handler is retried before its event counts
/// as poison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included (at least 1). Default 3.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled for each further one. Default 100 ms.
    pub initial_backoff: Duration,
    /// Upper bound of the wait between attempts. Default 5 s.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `attempt`-th failed attempt (1-based).
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Settings of a [`crate::projection::ProjectionWorker`]. Build with
/// `ProjectionSettings { batch_size: 200, ..Default::default() }`, like
/// [`ProcessorSettings`](crate::command::ProcessorSettings).
#[derive(Debug, Clone)]
pub struct ProjectionSettings {
    /// Most records applied in one Postgres transaction (per partition). Default 1000.
    pub batch_size: usize,
    /// How long a batch waits for more records after its first one. Default 50 ms:
    /// the bound on the extra latency batching adds under light load.
    pub max_wait: Duration,
    /// Kafka `session.timeout.ms` of the worker's group membership. Default 10 s.
    /// Shorter detects dead workers sooner (the tests use 6 s).
    pub session_timeout: Duration,
    /// Retries of failing handlers.
    pub retry: RetryPolicy,
    /// Park or halt on poison records.
    pub poison: PoisonPolicy,
    /// Consumer group id. Default `tributary.{schema}.{projection name}`: one group
    /// per projection and Postgres schema.
    pub group_id: Option<String>,
    /// How often a rebuild logs its progress. Default 5 s.
    pub progress_interval: Duration,
    /// Pause after an infrastructure error (Kafka or Postgres unavailable) before the
    /// batch is tried again. Default 1 s.
    pub outage_backoff: Duration,
    /// How many partitions' batches one worker applies at once, each in a Postgres
    /// transaction of its own on a connection of its own (from the store's pool).
    /// Default 1: one batch after the other.
    ///
    /// More lets a worker (and a rebuild, which reads every partition) keep Postgres
    /// busy while it waits for round trips. Records of one partition are still
    /// applied in order, one batch at a time. Raise it only if handlers of different
    /// partitions may run at the same time, as they do anyway when several workers
    /// share a projection: if two batches lock the same rows in different orders,
    /// Postgres aborts one with a deadlock, which is rolled back and tried again after
    /// `outage_backoff`. Keep it below the pool's connection count.
    pub max_partitions_at_once: usize,
}

impl Default for ProjectionSettings {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            max_wait: Duration::from_millis(50),
            session_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            poison: PoisonPolicy::default(),
            group_id: None,
            progress_interval: Duration::from_secs(5),
            outage_backoff: Duration::from_secs(1),
            max_partitions_at_once: 1,
        }
    }
}

impl ProjectionSettings {
    /// Checks every value before a worker starts: `batch_size`,
    /// `max_partitions_at_once` and `retry.max_attempts` of at least 1, a `session_timeout` librdkafka accepts
    /// (1 ms to 1 hour), and no duration so long that a deadline computed from it
    /// would overflow (at most a year; `max_wait` at most an hour).
    ///
    /// # Errors
    /// The first [`InvalidSetting`], naming the field.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        use crate::settings::{MAX_DURATION, MAX_SESSION_TIMEOUT, at_least, duration_within};
        let ms = Duration::from_millis;
        at_least("batch_size", self.batch_size, 1)?;
        at_least("max_partitions_at_once", self.max_partitions_at_once, 1)?;
        duration_within(
            "max_wait",
            self.max_wait,
            Duration::ZERO,
            Duration::from_secs(3600),
        )?;
        duration_within(
            "session_timeout",
            self.session_timeout,
            ms(1),
            MAX_SESSION_TIMEOUT,
        )?;
        at_least("retry.max_attempts", self.retry.max_attempts, 1)?;
        duration_within(
            "retry.initial_backoff",
            self.retry.initial_backoff,
            Duration::ZERO,
            MAX_DURATION,
        )?;
        duration_within(
            "retry.max_backoff",
            self.retry.max_backoff,
            Duration::ZERO,
            MAX_DURATION,
        )?;
        duration_within(
            "progress_interval",
            self.progress_interval,
            ms(1),
            MAX_DURATION,
        )?;
        duration_within(
            "outage_backoff",
            self.outage_backoff,
            Duration::ZERO,
            MAX_DURATION,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let retry = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
        };
        assert_eq!(retry.backoff(1), Duration::from_millis(100));
        assert_eq!(retry.backoff(2), Duration::from_millis(200));
        assert_eq!(retry.backoff(3), Duration::from_millis(400));
        assert_eq!(retry.backoff(4), Duration::from_millis(500));
        assert_eq!(retry.backoff(40), Duration::from_millis(500));
    }

    #[test]
    fn the_defaults_are_valid_and_each_bad_value_is_named() {
        assert_eq!(ProjectionSettings::default().validate(), Ok(()));
        let bad = |config: ProjectionSettings| config.validate().expect_err("invalid").name;
        let base = ProjectionSettings::default;
        assert_eq!(
            bad(ProjectionSettings {
                batch_size: 0,
                ..base()
            }),
            "batch_size"
        );
        assert_eq!(
            bad(ProjectionSettings {
                max_partitions_at_once: 0,
                ..base()
            }),
            "max_partitions_at_once"
        );
        assert_eq!(
            bad(ProjectionSettings {
                max_wait: Duration::MAX,
                ..base()
            }),
            "max_wait"
        );
        assert_eq!(
            bad(ProjectionSettings {
                session_timeout: Duration::ZERO,
                ..base()
            }),
            "session_timeout"
        );
        assert_eq!(
            bad(ProjectionSettings {
                session_timeout: Duration::from_secs(3601),
                ..base()
            }),
            "session_timeout"
        );
        let retry = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        };
        assert_eq!(
            bad(ProjectionSettings { retry, ..base() }),
            "retry.max_attempts"
        );
        assert_eq!(
            bad(ProjectionSettings {
                outage_backoff: Duration::MAX,
                ..base()
            }),
            "outage_backoff"
        );
    }
}

//! Rebuilds: reset the read model and replay every topic from the start, under an
//! advisory lock that live workers of the projection wait for.

use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::{Connection, PgConnection};

use super::parts::Part;
use super::runner::Runner;
use super::{ProjectionWorker, lock_projection};
use crate::projection::Projection;
use crate::projection::error::ProjectionError;
use crate::projection::lag;
use crate::projection::status::{
    PartitionProgress, RebuildProgress, RebuildReport, Shutdown, WorkerState,
};

impl<P: Projection> ProjectionWorker<P> {
    /// Rebuilds the read model: runs `reset` and deletes the projection's checkpoints
    /// and dead letters (one transaction), then replays every topic from the start
    /// until it reaches the high-water marks read when the rebuild began. Progress
    /// (done/total, rate, ETA) is logged every
    /// [`ProjectionSettings::progress_interval`](crate::projection::ProjectionSettings::progress_interval)
    /// and published in
    /// [`ProjectionStatus::rebuild`](crate::projection::ProjectionStatus::rebuild).
    ///
    /// The rebuild reads with manual partition assignment, outside every consumer
    /// group, so the other projections' workers go on serving. Workers of this
    /// projection may keep running: their next batch finds the checkpoint gone, rolls
    /// back and starts over from the rebuilt checkpoints (every batch is conditional
    /// on the checkpoint it started from, so the effect stays exactly-once), but
    /// stopping them during a rebuild saves work.
    pub async fn rebuild(&self) -> Result<RebuildReport, ProjectionError> {
        self.rebuild_until(std::future::pending()).await
    }

    /// [`ProjectionWorker::rebuild`], cancelled when `cancel` completes: the batch
    /// being applied finishes, then the rebuild returns
    /// [`ProjectionError::RebuildCancelled`]. The read model is then consistent up
    /// to the rebuild's checkpoints, and the live workers go on from there.
    ///
    /// While a rebuild runs it holds a Postgres advisory lock (session-level, so a
    /// crashed rebuild releases it with its connection). Live workers of the
    /// projection check it in every batch transaction and wait while it is held
    /// (status `last_error` says so), instead of replaying from the reset
    /// checkpoints alongside the rebuild. A second rebuild of the same projection
    /// waits for the first.
    pub async fn rebuild_until(
        &self,
        cancel: impl Future<Output = ()> + Send + 'static,
    ) -> Result<RebuildReport, ProjectionError> {
        self.check()?;
        let options = self.store.pool().connect_options();
        let mut lock = PgConnection::connect_with(&options)
            .await
            .map_err(Self::db("connect for the rebuild lock"))?;
        sqlx::query("SELECT pg_advisory_lock(hashtext('tributary_rebuild.' || $1))")
            .bind(P::NAME)
            .execute(&mut lock)
            .await
            .map_err(Self::db("take the rebuild lock"))?;
        let result = self.rebuild_locked(Shutdown::new(cancel)).await;
        let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext('tributary_rebuild.' || $1))")
            .bind(P::NAME)
            .execute(&mut lock)
            .await;
        let _ = lock.close().await;
        result
    }

    async fn rebuild_locked(&self, mut cancel: Shutdown) -> Result<RebuildReport, ProjectionError> {
        let started = Instant::now();
        self.migrate().await?;
        let marks = lag::watermarks(self.kafka.client_config(), self.topics())
            .await
            .map_err(Self::watermark_err)?;

        let mut tx = self
            .store
            .pool()
            .begin()
            .await
            .map_err(Self::db("begin reset"))?;
        lock_projection(&mut tx, P::NAME)
            .await
            .map_err(Self::db("lock projection"))?;
        self.projection
            .reset(&mut tx)
            .await
            .map_err(|source| ProjectionError::Reset {
                projection: P::NAME,
                source,
            })?;
        for table in ["tributary_checkpoints", "tributary_dead_letters"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE projection = $1"))
                .bind(P::NAME)
                .execute(&mut *tx)
                .await
                .map_err(Self::db("delete checkpoints and dead letters"))?;
        }
        tx.commit().await.map_err(Self::db("commit reset"))?;

        let total: u64 = marks
            .iter()
            .map(|(_, _, low, high)| u64::try_from(high - low).unwrap_or(0))
            .sum();
        tracing::info!(
            projection = P::NAME,
            total,
            partitions = marks.len(),
            "rebuild: read model reset, replaying from the start"
        );

        let consumer = self.create_consumer()?;
        let mut assignment = TopicPartitionList::new();
        let mut parts = Vec::new();
        for (index, (topic, partition, _, _)) in marks.iter().enumerate() {
            assignment
                .add_partition_offset(topic, *partition, Offset::Beginning)
                .map_err(Self::kafka_err("assign"))?;
            let source = self
                .sources
                .iter()
                .position(|s| s.topic() == topic)
                .unwrap_or(0);
            parts.push(Part {
                id: index as u64,
                topic: topic.clone(),
                partition: *partition,
                source,
                checkpoint: None,
                position: 0,
                ready: true,
                at_end: false,
                live: false,
            });
        }
        consumer
            .assign(&assignment)
            .map_err(Self::kafka_err("assign"))?;
        let mut tracker = RebuildTracker {
            marks,
            total,
            started,
            last_log: Instant::now(),
            events_at_start: self.status.borrow().applied + self.status.borrow().parked,
        };
        self.status.send_modify(|s| {
            s.state = WorkerState::Rebuilding;
            s.rebuild = Some(RebuildProgress {
                total,
                ..RebuildProgress::default()
            });
        });
        let mut runner = Runner {
            worker: self,
            consumer,
            next_id: parts.len() as u64,
            parts,
            eof: Vec::new(),
            group: false,
        };
        let result = runner.run(&mut cancel, Some(&mut tracker)).await;
        let progress = tracker.progress(&runner.parts, self.events_done(&tracker));
        self.status.send_modify(|s| {
            s.state = WorkerState::Stopped;
            s.rebuild = Some(progress.clone());
        });
        result?;
        if cancel.fired() && progress.done < total {
            tracing::warn!(
                projection = P::NAME,
                events = progress.events,
                "rebuild cancelled"
            );
            return Err(ProjectionError::RebuildCancelled {
                projection: P::NAME,
                events: progress.events,
            });
        }
        let elapsed = started.elapsed();
        let report = RebuildReport {
            events: progress.events,
            offsets: progress.done,
            elapsed,
            events_per_sec: progress.events as f64 / elapsed.as_secs_f64().max(1e-9),
        };
        tracing::info!(
            projection = P::NAME,
            events = report.events,
            offsets = report.offsets,
            elapsed_ms = elapsed.as_millis() as u64,
            events_per_sec = report.events_per_sec as u64,
            "rebuild finished"
        );
        Ok(report)
    }

    pub(super) fn events_done(&self, tracker: &RebuildTracker) -> u64 {
        let status = self.status.borrow();
        (status.applied + status.parked).saturating_sub(tracker.events_at_start)
    }
}

/// Whether a rebuild of `projection` holds its lock, asked inside a live worker's
/// batch transaction. A rebuild that crashed released it with its connection.
pub(super) async fn rebuild_running<'e>(
    conn: impl sqlx::PgExecutor<'e>,
    projection: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT NOT pg_try_advisory_xact_lock_shared(hashtext('tributary_rebuild.' || $1))",
    )
    .bind(projection)
    .fetch_one(conn)
    .await
}

/// Offsets to reach and progress of a rebuild.
pub(super) struct RebuildTracker {
    pub(super) marks: lag::Watermarks,
    pub(super) total: u64,
    pub(super) started: Instant,
    pub(super) last_log: Instant,
    pub(super) events_at_start: u64,
}

impl RebuildTracker {
    fn position(parts: &[Part], topic: &str, partition: i32) -> Option<i64> {
        parts
            .iter()
            .find(|p| p.partition == partition && p.topic == topic)
            .and_then(|p| p.checkpoint)
    }

    /// Every partition reached the high-water mark read at the start, and the
    /// consumer saw its end. On Kafka the mark alone would do; waiting for the end
    /// as well costs one fetch round trip and covers brokers that under-report the
    /// mark (Tansu).
    pub(super) fn finished(&self, parts: &[Part]) -> bool {
        self.marks.iter().all(|(topic, partition, low, high)| {
            parts
                .iter()
                .find(|p| p.partition == *partition && p.topic == *topic)
                .is_some_and(|p| p.at_end && p.checkpoint.unwrap_or(*low) >= *high)
        })
    }

    pub(super) fn progress(&self, parts: &[Part], events: u64) -> RebuildProgress {
        let partitions: Vec<PartitionProgress> = self
            .marks
            .iter()
            .map(|(topic, partition, low, high)| PartitionProgress {
                topic: topic.clone(),
                partition: *partition,
                position: Self::position(parts, topic, *partition)
                    .unwrap_or(*low)
                    .clamp(*low, (*high).max(*low)),
                high: *high,
            })
            .collect();
        let done: u64 = self
            .marks
            .iter()
            .zip(&partitions)
            .map(|((_, _, low, _), p)| u64::try_from(p.position - low).unwrap_or(0))
            .sum();
        let elapsed = self.started.elapsed();
        let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
        let eta = (rate > 0.0)
            .then(|| Duration::from_secs_f64(self.total.saturating_sub(done) as f64 / rate));
        RebuildProgress {
            done,
            total: self.total,
            events,
            rate_per_sec: rate,
            eta,
            elapsed,
            partitions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(marks: &[(&str, i32, i64, i64)]) -> RebuildTracker {
        let marks: lag::Watermarks = marks
            .iter()
            .map(|(t, p, low, high)| ((*t).to_owned(), *p, *low, *high))
            .collect();
        let total = marks
            .iter()
            .map(|(_, _, low, high)| (high - low) as u64)
            .sum();
        RebuildTracker {
            marks,
            total,
            started: Instant::now(),
            last_log: Instant::now(),
            events_at_start: 0,
        }
    }

    fn part(topic: &str, partition: i32, checkpoint: Option<i64>, at_end: bool) -> Part {
        Part {
            id: 0,
            topic: topic.to_owned(),
            partition,
            source: 0,
            checkpoint,
            position: checkpoint.unwrap_or(0),
            ready: true,
            at_end,
            live: false,
        }
    }

    #[test]
    fn finished_needs_every_partition_at_its_mark_and_at_its_end() {
        let tracker = tracker(&[("a", 0, 0, 10), ("b", 0, 5, 5)]);
        // "b" 0 is empty: no checkpoint is needed, only the end.
        let done = [part("a", 0, Some(10), true), part("b", 0, None, true)];
        assert!(tracker.finished(&done));
        let short = [part("a", 0, Some(9), true), part("b", 0, None, true)];
        assert!(!tracker.finished(&short));
        let not_at_end = [part("a", 0, Some(10), false), part("b", 0, None, true)];
        assert!(!tracker.finished(&not_at_end));
        // The same partition number of another topic does not count.
        let missing = [part("a", 0, Some(10), true), part("a", 1, None, true)];
        assert!(!tracker.finished(&missing));
    }

    #[test]
    fn progress_counts_offsets_from_the_low_mark_up_to_the_high_mark() {
        let tracker = tracker(&[("a", 0, 0, 10), ("a", 1, 100, 120), ("b", 0, 0, 4)]);
        let parts = [
            part("a", 0, Some(4), false),
            // Beyond the mark read at the start: counts up to the mark only.
            part("a", 1, Some(130), false),
        ];
        let progress = tracker.progress(&parts, 17);
        assert_eq!(progress.done, 4 + 20);
        assert_eq!(progress.total, 34);
        assert_eq!(progress.events, 17);
        assert!(progress.eta.is_some());
        let positions: Vec<(&str, i32, i64, i64)> = progress
            .partitions
            .iter()
            .map(|p| (p.topic.as_str(), p.partition, p.position, p.high))
            .collect();
        assert_eq!(
            positions,
            [("a", 0, 4, 10), ("a", 1, 120, 120), ("b", 0, 0, 4)]
        );
        let none = tracker.progress(&[], 0);
        assert_eq!(none.done, 0);
        assert_eq!(none.eta, None, "no rate, no ETA");
    }
}

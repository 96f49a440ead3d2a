//! The consume-apply loop shared by group workers and rebuilds.

use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::ProjectionWorker;
use super::apply::Failure;
use super::parts::{Group, Part, Pending};
use super::rebalance::{RebalanceContext, RebalanceEvent};
use super::rebuild::{RebuildTracker, rebuild_running};
use crate::kafka::record_ref;
use crate::projection::Projection;
use crate::projection::checkpoint;
use crate::projection::error::ProjectionError;
use crate::projection::received::Received;
use crate::projection::status::Shutdown;

/// How long an idle worker waits for records before it looks at rebalances and
/// partitions to resynchronize again.
const IDLE_TICK: Duration = Duration::from_millis(250);

/// While a batch is applied, the prefetch of the next one lets the batch's
/// Postgres round trips go on after this many records.
const PREFETCH_YIELD_EVERY: usize = 64;

/// When `collect` stops waiting: `max_wait` after the batch's first record (also
/// when that is longer than the idle tick), or, before any record, an idle tick
/// from `now`.
fn batch_deadline(
    first: Option<tokio::time::Instant>,
    now: tokio::time::Instant,
    max_wait: Duration,
) -> tokio::time::Instant {
    match first {
        Some(first) => first + max_wait,
        None => now + IDLE_TICK,
    }
}

/// The consume-apply loop shared by group workers and rebuilds.
pub(super) struct Runner<'w, P: Projection> {
    pub(super) worker: &'w ProjectionWorker<P>,
    pub(super) consumer: StreamConsumer<RebalanceContext>,
    pub(super) parts: Vec<Part>,
    pub(super) next_id: u64,
    /// Partition numbers that reported end-of-partition since the last batch.
    pub(super) eof: Vec<i32>,
    /// Member of the consumer group (commits advisory offsets).
    pub(super) group: bool,
}

impl<P: Projection> Runner<'_, P> {
    pub(super) async fn run(
        &mut self,
        shutdown: &mut Shutdown,
        mut rebuild: Option<&mut RebuildTracker>,
    ) -> Result<(), ProjectionError> {
        let worker = self.worker;
        // Records received (and decoded) but not applied yet.
        let mut pending = Pending::default();
        loop {
            if let Some(tracker) = rebuild.as_deref_mut() {
                let events = worker.events_done(tracker);
                let progress = tracker.progress(&self.parts, events);
                let finished = pending.groups.is_empty() && tracker.finished(&self.parts);
                if finished || tracker.last_log.elapsed() >= worker.config.progress_interval {
                    tracker.last_log = Instant::now();
                    tracing::info!(
                        projection = P::NAME,
                        done = progress.done,
                        total = progress.total,
                        events = progress.events,
                        rate_per_sec = progress.rate_per_sec as u64,
                        eta_secs = progress.eta.map(|d| d.as_secs()),
                        "rebuild progress"
                    );
                }
                worker.status.send_modify(|s| s.rebuild = Some(progress));
                if finished {
                    return Ok(());
                }
            }
            if shutdown.fired() {
                return Ok(());
            }
            self.take_rebalance_events();
            pending.retain_ready(&self.parts);
            self.resync().await;
            self.collect(Some(&mut *shutdown), &mut pending).await;
            // Records of partitions revoked meanwhile are dropped, not applied.
            self.take_rebalance_events_dropping(&mut pending);
            let jobs: Vec<(Part, Group)> = std::mem::take(&mut pending)
                .groups
                .into_iter()
                .filter_map(|group| {
                    let part = self.parts.iter().find(|p| p.id == group.id && p.ready)?;
                    Some((part.clone(), group))
                })
                .collect();
            if jobs.is_empty() {
                self.advance_past_markers().await;
                self.report_lag();
                self.commit_kafka(CommitMode::Async);
                continue;
            }
            // Pipelining: while this batch's transactions run in Postgres, receive
            // and decode the next batch (into `pending`; nothing of it is applied
            // before the outcome of this batch is known). The prefetch stops as soon
            // as the batch is applied; the next round tops it up.
            let apply = worker.apply_groups(jobs, shutdown);
            tokio::pin!(apply);
            let outcomes = tokio::select! {
                biased;
                outcomes = &mut apply => Some(outcomes),
                () = self.collect(None, &mut pending) => None,
            };
            let outcomes = match outcomes {
                Some(outcomes) => outcomes,
                None => apply.await,
            };
            let mut stop = None;
            for (applied, result) in outcomes {
                if let Some(part) = self.parts.iter_mut().find(|p| p.id == applied.id) {
                    part.checkpoint = applied.checkpoint;
                    if matches!(
                        result,
                        Err(Failure::Conflict | Failure::Rebuilding | Failure::Infra(_))
                    ) {
                        // Re-read the checkpoint before going on (`resync`).
                        part.ready = false;
                        let _ = self
                            .consumer
                            .pause(&single(&part.topic, part.partition, None));
                    }
                }
                match result {
                    Err(Failure::Halted(report)) => stop = Some(Err(report)),
                    Err(Failure::Shutdown) => stop = Some(Ok(())),
                    _ => {}
                }
            }
            // Records received after a batch that failed are not applied: the
            // partition resumes from its checkpoint.
            pending.retain_ready(&self.parts);
            match stop {
                Some(Err(report)) => {
                    self.commit_kafka(CommitMode::Sync);
                    return Err(ProjectionError::Halted(report));
                }
                Some(Ok(())) => return Ok(()),
                None => {}
            }
            self.advance_past_markers().await;
            self.report_lag();
            self.commit_kafka(CommitMode::Async);
        }
    }

    /// Sets the lag gauge of every ready partition: the last stable offset of the
    /// client's last statistics (no broker round trip) minus the checkpoint.
    fn report_lag(&self) {
        for part in self.parts.iter().filter(|p| p.ready) {
            if let Some(end) = self.consumer.context().end_of(&part.topic, part.partition) {
                let next = part.checkpoint.unwrap_or(part.position);
                self.worker
                    .metrics
                    .lag(&part.topic, part.partition, end - next);
            }
        }
    }

    /// Applies the assignments and revocations the rebalance callback recorded.
    fn take_rebalance_events(&mut self) {
        let events = self.consumer.context().take();
        if events.is_empty() {
            return;
        }
        for event in events {
            match event {
                RebalanceEvent::Assigned(assigned) => {
                    for a in assigned {
                        self.parts
                            .retain(|p| !(p.partition == a.partition && p.topic == a.topic));
                        let Some(source) = self
                            .worker
                            .sources
                            .iter()
                            .position(|s| s.topic() == a.topic)
                        else {
                            continue;
                        };
                        let (checkpoint, ready) = match a.checkpoint {
                            Ok(checkpoint) => (checkpoint, true),
                            Err(_) => (None, false),
                        };
                        self.next_id += 1;
                        self.parts.push(Part {
                            id: self.next_id,
                            topic: a.topic,
                            partition: a.partition,
                            source,
                            checkpoint,
                            position: checkpoint.unwrap_or(0),
                            ready,
                            at_end: false,
                            live: true,
                        });
                    }
                }
                RebalanceEvent::Revoked(revoked) => {
                    self.parts.retain(|p| {
                        !revoked
                            .iter()
                            .any(|(t, n)| *n == p.partition && *t == p.topic)
                    });
                }
                RebalanceEvent::RevokedAll => self.parts.clear(),
            }
        }
        let mut owned: Vec<(String, i32)> = self
            .parts
            .iter()
            .map(|p| (p.topic.clone(), p.partition))
            .collect();
        owned.sort();
        tracing::info!(projection = P::NAME, partitions = ?owned, "partition assignment changed");
        self.worker.status.send_modify(|s| s.partitions = owned);
    }

    /// Re-reads the checkpoint of partitions that lost a race or hit an outage,
    /// seeks there and resumes them.
    async fn resync(&mut self) {
        for part in self.parts.iter_mut().filter(|p| !p.ready) {
            // While a rebuild runs, its checkpoints are not final: resuming from
            // them would replay alongside it. Stay paused until it ends.
            if part.live {
                match rebuild_running(self.worker.store.pool(), P::NAME).await {
                    Ok(false) => {}
                    Ok(true) => continue,
                    Err(error) => {
                        tracing::warn!(projection = P::NAME, error = %error, "cannot check for a rebuild; will retry");
                        continue;
                    }
                }
            }
            let checkpoint = match checkpoint::load(
                self.worker.store.pool(),
                P::NAME,
                &part.topic,
                part.partition,
            )
            .await
            {
                Ok(checkpoint) => checkpoint,
                Err(error) => {
                    tracing::warn!(projection = P::NAME, topic = %part.topic, partition = part.partition, error = %error, "cannot read checkpoint; will retry");
                    continue;
                }
            };
            let offset = checkpoint.map_or(Offset::Beginning, Offset::Offset);
            if let Err(error) =
                self.consumer
                    .seek(&part.topic, part.partition, offset, Duration::from_secs(10))
            {
                tracing::warn!(projection = P::NAME, topic = %part.topic, partition = part.partition, error = %error, "cannot seek to checkpoint; will retry");
                continue;
            }
            if let Err(error) = self
                .consumer
                .resume(&single(&part.topic, part.partition, None))
            {
                tracing::warn!(projection = P::NAME, topic = %part.topic, partition = part.partition, error = %error, "cannot resume partition; will retry");
                continue;
            }
            tracing::info!(projection = P::NAME, topic = %part.topic, partition = part.partition, checkpoint = ?checkpoint, "resumed from checkpoint");
            part.checkpoint = checkpoint;
            part.position = checkpoint.unwrap_or(0);
            part.ready = true;
        }
    }

    /// Applies pending rebalance events and drops the collected records of
    /// partitions that are gone (or were assigned anew).
    fn take_rebalance_events_dropping(&mut self, pending: &mut Pending) {
        if self.consumer.context().has_pending() {
            self.take_rebalance_events();
            pending.retain_ready(&self.parts);
        }
    }

    /// Receives records into `pending`, split by partition and decoded on arrival,
    /// until one partition has `batch_size` of them: waits up to `IDLE_TICK` for
    /// the first, then at most `max_wait` after the first. Stops early on shutdown.
    ///
    /// Without `shutdown` it is the prefetch that runs while a batch is applied:
    /// the caller drops it when the batch is done, so it yields now and then to let
    /// the batch's Postgres round trips go on, and keeps `pending` consistent at
    /// every await (it is cancel-safe).
    ///
    /// The rebalance callback runs inside `recv`, so a record returned after it
    /// belongs to the new assignment: pending events are applied before the record
    /// is accepted, and records collected under the old assignment are dropped.
    async fn collect(&mut self, mut shutdown: Option<&mut Shutdown>, pending: &mut Pending) {
        let config = &self.worker.config;
        let mut count = pending.largest();
        let mut deadline = batch_deadline(
            pending.first_at,
            tokio::time::Instant::now(),
            config.max_wait,
        );
        let mut since_yield = 0;
        while count < config.batch_size {
            let received = match shutdown.as_deref_mut() {
                Some(shutdown) => tokio::select! {
                    biased;
                    () = shutdown.wait() => break,
                    received = tokio::time::timeout_at(deadline, self.consumer.recv()) => received,
                },
                None => tokio::time::timeout_at(deadline, self.consumer.recv()).await,
            };
            match received {
                Err(_elapsed) => break,
                Ok(Ok(message)) => {
                    let source = self
                        .worker
                        .sources
                        .iter()
                        .position(|s| s.topic() == message.topic());
                    let partition = message.partition();
                    let received = Received::new(message.offset(), &record_ref(&message));
                    drop(message);
                    self.take_rebalance_events_dropping(pending);
                    if let Some(len) =
                        source.and_then(|source| self.accept(source, partition, received, pending))
                    {
                        if pending.first_at.is_none() {
                            let now = tokio::time::Instant::now();
                            pending.first_at = Some(now);
                            deadline = batch_deadline(Some(now), now, config.max_wait);
                        }
                        count = count.max(len);
                    }
                    since_yield += 1;
                    if shutdown.is_none() && since_yield >= PREFETCH_YIELD_EVERY {
                        since_yield = 0;
                        tokio::task::yield_now().await;
                    }
                }
                Ok(Err(KafkaError::PartitionEOF(partition))) => {
                    self.take_rebalance_events_dropping(pending);
                    for part in self.parts.iter_mut().filter(|p| p.partition == partition) {
                        part.at_end = true;
                    }
                    if !self.eof.contains(&partition) {
                        self.eof.push(partition);
                    }
                }
                Ok(Err(error)) => {
                    tracing::warn!(projection = P::NAME, error = %error, "Kafka consumer error");
                    self.worker
                        .status
                        .send_modify(|s| s.last_error = Some(error.to_string()));
                    break;
                }
            }
        }
    }

    /// Decodes a record of partition `partition` of the topic of source `source` and
    /// adds it to its partition's group, unless its partition is not ready or it was
    /// already received. Returns the group's size, `None` if dropped.
    fn accept(
        &mut self,
        source: usize,
        partition: i32,
        record: Received,
        pending: &mut Pending,
    ) -> Option<usize> {
        let part = self
            .parts
            .iter_mut()
            .find(|p| p.partition == partition && p.source == source)?;
        if !part.ready || record.offset() < part.position {
            return None;
        }
        let decoder = self.worker.sources.get(source)?;
        part.position = record.offset() + 1;
        part.at_end = false;
        let decoded = decoder.decode(&record.as_record(), (partition, record.offset()));
        Some(pending.push(part.id, record, decoded))
    }

    /// At the end of a partition, moves the checkpoint past trailing transaction
    /// markers (which the consumer skips but which take offsets), so lag reads 0
    /// and a rebuild knows it caught up.
    async fn advance_past_markers(&mut self) {
        if self.eof.is_empty() {
            return;
        }
        let eof = std::mem::take(&mut self.eof);
        // A partition that reached its end while records of it were still being
        // received ahead (pipelining) is looked at again after they are applied.
        self.eof = eof
            .iter()
            .copied()
            .filter(|n| {
                self.parts.iter().any(|p| {
                    p.partition == *n
                        && p.ready
                        && p.at_end
                        && p.checkpoint.unwrap_or(0) != p.position
                })
            })
            .collect();
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        let worker = self.worker;
        for part in self
            .parts
            .iter_mut()
            .filter(|p| p.ready && eof.contains(&p.partition))
        {
            // Only when every record received was applied.
            if part.checkpoint.unwrap_or(0) != part.position {
                continue;
            }
            let Some(Offset::Offset(at)) = positions
                .find_partition(&part.topic, part.partition)
                .map(|e| e.offset())
            else {
                continue;
            };
            if at <= part.position {
                continue;
            }
            let result = async {
                let mut tx = worker.store.pool().begin().await?;
                let advanced = part.advance_checkpoint(&mut tx, P::NAME, at).await?;
                if advanced {
                    tx.commit().await?;
                }
                Ok::<bool, sqlx::Error>(advanced)
            }
            .await;
            match result {
                Ok(true) => {
                    tracing::debug!(projection = P::NAME, topic = %part.topic, partition = part.partition, from = ?part.checkpoint, to = at, "checkpoint moved past transaction markers");
                    part.checkpoint = Some(at);
                    part.position = at;
                }
                Ok(false) => {
                    part.ready = false;
                    let _ = self
                        .consumer
                        .pause(&single(&part.topic, part.partition, None));
                }
                Err(error) => {
                    tracing::debug!(projection = P::NAME, error = %error, "cannot move checkpoint past markers; will retry at the next end of partition");
                }
            }
        }
    }

    /// Commits the checkpoints to Kafka too, for monitoring tools; advisory only.
    pub(super) fn commit_kafka(&self, mode: CommitMode) {
        if !self.group {
            return;
        }
        let mut offsets = TopicPartitionList::new();
        for part in self.parts.iter().filter(|p| p.ready) {
            if let Some(checkpoint) = part.checkpoint {
                let _ = offsets.add_partition_offset(
                    &part.topic,
                    part.partition,
                    Offset::Offset(checkpoint),
                );
            }
        }
        if offsets.count() > 0
            && let Err(error) = self.consumer.commit(&offsets, mode)
        {
            tracing::debug!(projection = P::NAME, error = %error, "advisory Kafka offset commit failed");
        }
    }
}

fn single(topic: &str, partition: i32, offset: Option<Offset>) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    match offset {
        Some(offset) => {
            let _ = list.add_partition_offset(topic, partition, offset);
        }
        None => {
            list.add_partition(topic, partition);
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{IDLE_TICK, batch_deadline};

    #[test]
    fn a_batch_waits_max_wait_after_its_first_record_even_past_the_idle_tick() {
        let now = Instant::now();
        let first = now - Duration::from_millis(100);
        for max_wait in [
            Duration::from_millis(20),
            IDLE_TICK * 4,
            Duration::from_secs(30),
        ] {
            assert_eq!(batch_deadline(Some(first), now, max_wait), first + max_wait);
            assert_eq!(batch_deadline(Some(now), now, max_wait), now + max_wait);
        }
    }

    #[test]
    fn before_any_record_it_waits_an_idle_tick() {
        let now = Instant::now();
        assert_eq!(
            batch_deadline(None, now, Duration::from_secs(30)),
            now + IDLE_TICK
        );
    }
}

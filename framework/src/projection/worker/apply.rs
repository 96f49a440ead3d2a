//! Applying a partition's records in Postgres transactions together with the
//! checkpoint, as the [`Planner`] says: batches, single events retried with
//! backoff, poison records parked (or halting the projection).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::Instrument;

use super::ProjectionWorker;
use super::outage::is_outage;
use super::parts::{Group, Part};
use super::plan::{Mode, Outcome, Planner, Poison, Step, Unreadable};
use super::rebuild::rebuild_running;
use crate::codec::DecodeError;
use crate::projection::dead_letter;
use crate::projection::error::{PoisonReport, ProjectionError};
use crate::projection::received::Received;
use crate::projection::source::{Decoded, Source};
use crate::projection::status::Shutdown;
use crate::projection::{HandlerError, Projection};
use crate::trace_context;

/// How often a live worker looks again whether a rebuild of its projection ended.
const REBUILD_POLL: Duration = Duration::from_secs(1);

/// Why applying a partition's records stopped.
pub(super) enum Failure {
    /// Another worker moved the checkpoint: this one lost the partition.
    Conflict,
    /// A rebuild of the projection is running: live workers wait for it.
    Rebuilding,
    /// Postgres (or a handler's connection) is unavailable.
    Infra(ProjectionError),
    /// Poison record under `PoisonPolicy::Halt`.
    Halted(Box<PoisonReport>),
    /// Shutdown during a retry backoff; the open batch was rolled back.
    Shutdown,
}

enum TryError {
    Handler {
        index: Option<usize>,
        error: HandlerError,
    },
    Conflict,
    Rebuilding,
    Infra(ProjectionError),
}

/// Runs a handler's future; a panic becomes the handler's error, so it is retried
/// and then parked (or halts the projection) like any failing event, instead of
/// ending the worker.
async fn catching_panics<F>(handler: F) -> Result<(), HandlerError>
where
    F: Future<Output = Result<(), HandlerError>>,
{
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(handler).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => Err(format!(
            "the handler panicked: {}",
            crate::panics::message(panic.as_ref())
        )
        .into()),
    }
}

/// The level of the per-event spans: INFO with `otel`, where they are the
/// read-model step of a command's trace; DEBUG without, where they only add detail
/// to logs.
#[cfg(feature = "otel")]
const EVENT_SPAN_LEVEL: tracing::Level = tracing::Level::INFO;
#[cfg(not(feature = "otel"))]
const EVENT_SPAN_LEVEL: tracing::Level = tracing::Level::DEBUG;

impl<P: Projection> ProjectionWorker<P> {
    /// Applies the collected records, up to `max_partitions_at_once` partitions at
    /// a time (one after the other by default), each on a copy of its [`Part`] (the
    /// caller merges the copies back). Logs conflicts and outages, and waits
    /// `outage_backoff` after one before the partition's result is returned. After a
    /// halt or a shutdown during a retry backoff no further partition starts; those
    /// already running finish, and only the partitions that ran are returned.
    pub(super) async fn apply_groups(
        &self,
        jobs: Vec<(Part, Group)>,
        shutdown: &mut Shutdown,
    ) -> Vec<(Part, Result<(), Failure>)> {
        use futures_util::StreamExt;
        let stopped = AtomicBool::new(false);
        let (stopped, shutdown) = (&stopped, &*shutdown);
        futures_util::stream::iter(jobs)
            .map(|(part, group)| {
                let mut shutdown = shutdown.clone();
                async move {
                    // A job starts when it is first polled: after a stop, it does not.
                    if stopped.load(Ordering::Relaxed) {
                        return None;
                    }
                    let outcome = self.apply_group(part, &group, &mut shutdown).await;
                    if matches!(outcome.1, Err(Failure::Halted(_) | Failure::Shutdown)) {
                        stopped.store(true, Ordering::Relaxed);
                    }
                    Some(outcome)
                }
            })
            .buffered(self.config.max_partitions_at_once.max(1))
            .filter_map(std::future::ready)
            .collect()
            .await
    }

    /// Applies one partition's group; logs a conflict, an outage (then waits
    /// `outage_backoff`) or a running rebuild (then waits a little).
    async fn apply_group(
        &self,
        mut part: Part,
        group: &Group,
        shutdown: &mut Shutdown,
    ) -> (Part, Result<(), Failure>) {
        let result = self
            .apply_partition(&mut part, &group.messages, &group.decoded, shutdown)
            .await;
        match &result {
            Ok(()) | Err(Failure::Halted(_) | Failure::Shutdown) => {}
            Err(Failure::Conflict) => {
                tracing::warn!(projection = P::NAME, topic = %part.topic, partition = part.partition, expected = ?part.checkpoint, "checkpoint was moved by another worker: this worker lost the partition; batch rolled back, checkpoint will be re-read");
                self.status.send_modify(|s| s.conflicts += 1);
            }
            Err(Failure::Infra(error)) => {
                tracing::error!(projection = P::NAME, topic = %part.topic, partition = part.partition, error = %error, "batch failed and was rolled back; retrying after a pause");
                self.metrics.outage_retries.increment(1);
                self.status
                    .send_modify(|s| s.last_error = Some(error.to_string()));
                tokio::select! {
                    () = shutdown.wait() => {}
                    () = tokio::time::sleep(self.config.outage_backoff) => {}
                }
            }
            Err(Failure::Rebuilding) => {
                tracing::debug!(projection = P::NAME, topic = %part.topic, partition = part.partition, "a rebuild of this projection is running: waiting for it");
                self.status.send_modify(|s| {
                    s.last_error = Some(format!(
                        "paused: a rebuild of projection `{}` is running; this worker goes on from the rebuilt checkpoints when it ends",
                        P::NAME
                    ));
                });
                tokio::select! {
                    () = shutdown.wait() => {}
                    () = tokio::time::sleep(REBUILD_POLL) => {}
                }
            }
        }
        (part, result)
    }

    /// Applies one partition's records (decoded when they arrived), carrying out
    /// the steps of a [`Planner`]: batches with the checkpoint, failing events
    /// located and retried, poison records parked (or halting the projection).
    async fn apply_partition(
        &self,
        part: &mut Part,
        messages: &[Received],
        decoded: &[Result<Decoded, DecodeError>],
        shutdown: &mut Shutdown,
    ) -> Result<(), Failure> {
        let Some(source) = self.sources.get(part.source) else {
            return Ok(());
        };
        let unreadable = decoded
            .iter()
            .map(|d| d.as_ref().err().map(Unreadable::from))
            .collect();
        let mut plan = Planner::new(
            unreadable,
            source.batched(),
            self.config.retry,
            self.config.poison,
        );
        // The decoded records of `range`, with their messages.
        let items = |range: std::ops::Range<usize>| -> Vec<(&Received, &Decoded)> {
            range
                .filter_map(|i| decoded[i].as_ref().ok().map(|d| (&messages[i], d)))
                .collect()
        };
        loop {
            let result = match plan.next_step() {
                Step::Done => return Ok(()),
                Step::Apply { range, mode } => {
                    self.try_commit(source.as_ref(), part, &items(range), mode)
                        .await
                }
                Step::Retry {
                    index,
                    attempt,
                    backoff,
                    error,
                } => {
                    tracing::warn!(projection = P::NAME, topic = %part.topic, partition = part.partition, offset = messages[index].offset(), attempt, error = %error, "handler failed; retrying");
                    tokio::select! {
                        () = shutdown.wait() => return Err(Failure::Shutdown),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    self.try_commit(
                        source.as_ref(),
                        part,
                        &items(index..index + 1),
                        Mode::PerEvent,
                    )
                    .await
                }
                Step::Park(poison) => {
                    let message = &messages[poison.index];
                    let report = Self::poison_report(part, message, poison);
                    self.park(part, message, report).await?;
                    Ok(())
                }
                Step::Halt(poison) => {
                    let report = Self::poison_report(part, &messages[poison.index], poison);
                    tracing::error!(projection = P::NAME, topic = %report.topic, partition = report.partition, offset = report.offset, reason = %report.reason, error = %report.error, "poison record: halting the projection");
                    return Err(Failure::Halted(Box::new(report)));
                }
            };
            match result {
                Ok(()) => plan.report(Outcome::Committed),
                Err(TryError::Handler { index, error }) => plan.report(Outcome::HandlerFailed {
                    index,
                    error: error.to_string(),
                }),
                Err(TryError::Conflict) => return Err(Failure::Conflict),
                Err(TryError::Rebuilding) => return Err(Failure::Rebuilding),
                Err(TryError::Infra(error)) => return Err(Failure::Infra(error)),
            }
        }
    }

    /// One Postgres transaction: the handlers for `items`, then the conditional
    /// checkpoint update, then commit.
    async fn try_commit(
        &self,
        source: &dyn Source<P>,
        part: &mut Part,
        items: &[(&Received, &Decoded)],
        mode: Mode,
    ) -> Result<(), TryError> {
        let (Some(first), Some(last)) = (items.first(), items.last()) else {
            return Ok(());
        };
        let (first, last) = (first.0.offset(), last.0.offset());
        let span = tracing::info_span!("projection_batch", projection = P::NAME, topic = %part.topic, partition = part.partition, first_offset = first, last_offset = last, events = items.len());
        let infra = |operation| {
            move |source| {
                TryError::Infra(ProjectionError::Database {
                    projection: P::NAME,
                    operation,
                    source,
                })
            }
        };
        let handler = |index, error: HandlerError| {
            if is_outage(&error) {
                TryError::Infra(ProjectionError::Database {
                    projection: P::NAME,
                    operation: "handler query (transient; retried)",
                    source: sqlx::Error::Protocol(error.to_string()),
                })
            } else {
                TryError::Handler { index, error }
            }
        };
        let started = std::time::Instant::now();
        async {
            let mut tx = self.store.pool().begin().await.map_err(infra("begin batch"))?;
            if part.live
                && rebuild_running(&mut *tx, P::NAME)
                    .await
                    .map_err(infra("check for a rebuild"))?
            {
                let _ = tx.rollback().await;
                return Err(TryError::Rebuilding);
            }
            // One span per event, continuing the trace the event was written in.
            let event_span = |message: &Received, event: &Decoded| {
                let span = tracing::span!(EVENT_SPAN_LEVEL, "projection_event", projection = P::NAME, topic = %part.topic, partition = part.partition, offset = message.offset());
                trace_context::continue_trace(&span, source.traceparent(event));
                span
            };
            match mode {
                Mode::Batched => {
                    // The events are applied together: with `otel`, their spans
                    // cover the batch (without it, nobody would see them).
                    let _spans: Vec<tracing::Span> = if cfg!(feature = "otel") {
                        items.iter().map(|(m, d)| event_span(m, d)).collect()
                    } else {
                        Vec::new()
                    };
                    let events = items.iter().map(|(_, d)| *d).collect();
                    catching_panics(source.apply_many(&self.projection, events, &mut tx))
                        .await
                        .map_err(|e| handler(None, e))?;
                }
                Mode::PerEvent => {
                    for (index, (message, event)) in items.iter().enumerate() {
                        let span = event_span(message, event);
                        catching_panics(source.apply_one(&self.projection, event, &mut tx))
                            .instrument(span)
                            .await
                            .map_err(|e| handler(Some(index), e))?;
                    }
                }
            }
            let advanced = part
                .advance_checkpoint(&mut tx, P::NAME, last + 1)
                .await
                .map_err(infra("update checkpoint"))?;
            if !advanced {
                let _ = tx.rollback().await;
                return Err(TryError::Conflict);
            }
            tx.commit().await.map_err(infra("commit batch"))?;
            tracing::debug!(projection = P::NAME, topic = %part.topic, partition = part.partition, first, last, from = ?part.checkpoint, "batch committed");
            part.checkpoint = Some(last + 1);
            let applied = items.len() as u64;
            self.metrics.applied.increment(applied);
            self.metrics.batch_size.record(applied as f64);
            self.metrics
                .batch_seconds
                .record(started.elapsed().as_secs_f64());
            self.status.send_modify(|s| {
                s.applied += applied;
                s.last_error = None;
            });
            Ok(())
        }
        .instrument(span)
        .await
    }

    fn poison_report(part: &Part, message: &Received, poison: Poison) -> PoisonReport {
        PoisonReport {
            projection: P::NAME,
            topic: part.topic.clone(),
            partition: part.partition,
            offset: message.offset(),
            reason: poison.reason,
            error: poison.error,
            attempts: poison.attempts,
        }
    }

    /// Parks a poison record and moves the checkpoint past it, in one transaction.
    async fn park(
        &self,
        part: &mut Part,
        message: &Received,
        report: PoisonReport,
    ) -> Result<(), Failure> {
        tracing::warn!(projection = P::NAME, topic = %report.topic, partition = report.partition, offset = report.offset, reason = %report.reason, error = %report.error, "poison record parked in tributary_dead_letters");
        let infra = |operation| {
            move |source| {
                Failure::Infra(ProjectionError::Database {
                    projection: P::NAME,
                    operation,
                    source,
                })
            }
        };
        let mut tx = self
            .store
            .pool()
            .begin()
            .await
            .map_err(infra("begin park"))?;
        if part.live
            && rebuild_running(&mut *tx, P::NAME)
                .await
                .map_err(infra("check for a rebuild"))?
        {
            let _ = tx.rollback().await;
            return Err(Failure::Rebuilding);
        }
        dead_letter::park(&mut tx, &report, message)
            .await
            .map_err(infra("insert dead letter"))?;
        let next = message.offset() + 1;
        if !part
            .advance_checkpoint(&mut tx, P::NAME, next)
            .await
            .map_err(infra("update checkpoint"))?
        {
            let _ = tx.rollback().await;
            return Err(Failure::Conflict);
        }
        tx.commit().await.map_err(infra("commit park"))?;
        part.checkpoint = Some(next);
        self.metrics.dead_letters.increment(1);
        self.status.send_modify(|s| s.parked += 1);
        Ok(())
    }
}

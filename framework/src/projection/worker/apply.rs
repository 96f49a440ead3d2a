//! Applying a partition's records in Postgres transactions together with the
//! checkpoint: locating failing events, retrying them, parking poison records.

/// How often a live worker looks again whether a rebuild of its projection ended.
use std::future::Future;
use std::time::Duration;

use rdkafka::message::{Message, OwnedMessage};
use tracing::Instrument;

use super::ProjectionWorker;
use super::parts::{Group, Part};
use super::rebuild::rebuild_running;
use crate::codec::DecodeError;
use crate::projection::checkpoint;
use crate::projection::config::PoisonPolicy;
use crate::projection::dead_letter;
use crate::projection::error::{PoisonReason, PoisonReport, ProjectionError};
use crate::projection::source::{Decoded, Source};
use crate::projection::status::Shutdown;
use crate::projection::{HandlerError, Projection};

const REBUILD_POLL: Duration = Duration::from_secs(1);

/// How a batch calls the handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `handle_batch` once for the batch.
    Batched,
    /// `handle` per event, which tells which event failed.
    PerEvent,
}

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

/// Whether a handler's error says the database is unavailable or the transaction
/// lost a race, rather than that the event cannot be applied: such a batch is rolled
/// back and retried after `outage_backoff`, as long as it takes, and never parked.
fn is_outage(error: &HandlerError) -> bool {
    match error.downcast_ref::<sqlx::Error>() {
        Some(
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed,
        ) => true,
        Some(sqlx::Error::Database(db)) => {
            db.code().is_some_and(|code| is_transient_sqlstate(&code))
        }
        _ => false,
    }
}

/// SQLSTATEs that go away when the transaction is tried again later: connection
/// exceptions (class 08), serialization failure 40001, deadlock 40P01, lock not
/// available 55P03, statement timeout (query canceled) 57014, the server shutting
/// down or restarting (57P01, 57P02, 57P03), too many connections 53300.
fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03" | "53300"
        )
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
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string panic payload".to_owned());
            Err(format!("the handler panicked: {message}").into())
        }
    }
}

fn poison_reason(error: &DecodeError) -> PoisonReason {
    match error {
        DecodeError::UnknownEventType { .. } | DecodeError::FutureVersion { .. } => {
            PoisonReason::UnknownType
        }
        _ => PoisonReason::Undecodable,
    }
}

impl<P: Projection> ProjectionWorker<P> {
    /// Applies the collected records, one partition after the other, each on a copy
    /// of its [`Part`] (the caller merges the copies back). Logs conflicts and
    /// outages (and waits `outage_backoff` after one, as the loop always did before
    /// the next partition); stops at a halt or a shutdown during a retry backoff.
    pub(super) async fn apply_groups(
        &self,
        jobs: Vec<(Part, Group)>,
        shutdown: &mut Shutdown,
    ) -> Vec<(Part, Result<(), Failure>)> {
        let mut outcomes = Vec::with_capacity(jobs.len());
        for (mut part, group) in jobs {
            let result = self
                .apply_partition(&mut part, &group.messages, &group.decoded, shutdown)
                .await;
            let stop = match &result {
                Ok(()) => false,
                Err(Failure::Conflict) => {
                    tracing::warn!(projection = P::NAME, topic = %part.topic, partition = part.partition, expected = ?part.checkpoint, "checkpoint was moved by another worker: this worker lost the partition; batch rolled back, checkpoint will be re-read");
                    self.status.send_modify(|s| s.conflicts += 1);
                    false
                }
                Err(Failure::Infra(error)) => {
                    tracing::error!(projection = P::NAME, topic = %part.topic, partition = part.partition, error = %error, "batch failed and was rolled back; retrying after a pause");
                    self.status
                        .send_modify(|s| s.last_error = Some(error.to_string()));
                    tokio::select! {
                        () = shutdown.wait() => {}
                        () = tokio::time::sleep(self.config.outage_backoff) => {}
                    }
                    false
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
                    false
                }
                Err(Failure::Halted(_) | Failure::Shutdown) => true,
            };
            outcomes.push((part, result));
            if stop {
                break;
            }
        }
        outcomes
    }

    /// Applies one partition's records (decoded when they arrived): batches with
    /// the checkpoint, locating and retrying failing events, parking (or halting
    /// on) poison records.
    async fn apply_partition(
        &self,
        part: &mut Part,
        messages: &[OwnedMessage],
        decoded: &[Result<Decoded, DecodeError>],
        shutdown: &mut Shutdown,
    ) -> Result<(), Failure> {
        let Some(source) = self.sources.get(part.source) else {
            return Ok(());
        };
        let default_mode = if source.batched() {
            Mode::Batched
        } else {
            Mode::PerEvent
        };
        let count = messages.len();
        let (mut start, mut end, mut mode) = (0, count, default_mode);
        while start < count {
            if let Some(bad) = (start..end).find(|&i| decoded[i].is_err()) {
                end = bad;
            }
            if end == start {
                if let Err(error) = &decoded[start] {
                    self.poison(
                        part,
                        &messages[start],
                        poison_reason(error),
                        error.to_string(),
                        0,
                    )
                    .await?;
                }
                start += 1;
                end = count;
                mode = default_mode;
                continue;
            }
            let items: Vec<(&OwnedMessage, &Decoded)> = (start..end)
                .filter_map(|i| decoded[i].as_ref().ok().map(|d| (&messages[i], d)))
                .collect();
            match self.try_commit(source.as_ref(), part, &items, mode).await {
                Ok(()) => {
                    start = end;
                    end = count;
                    mode = default_mode;
                }
                Err(TryError::Handler { index: None, .. }) => mode = Mode::PerEvent,
                Err(TryError::Handler {
                    index: Some(0),
                    error,
                }) => {
                    if let Ok(event) = &decoded[start] {
                        self.retry_one(
                            source.as_ref(),
                            part,
                            &messages[start],
                            event,
                            error,
                            shutdown,
                        )
                        .await?;
                    }
                    start += 1;
                    end = count;
                    mode = default_mode;
                }
                // Commit the events before the failing one, then deal with it.
                Err(TryError::Handler { index: Some(i), .. }) => end = start + i,
                Err(TryError::Conflict) => return Err(Failure::Conflict),
                Err(TryError::Rebuilding) => return Err(Failure::Rebuilding),
                Err(TryError::Infra(error)) => return Err(Failure::Infra(error)),
            }
        }
        Ok(())
    }

    /// One Postgres transaction: the handlers for `items`, then the conditional
    /// checkpoint update, then commit.
    async fn try_commit(
        &self,
        source: &dyn Source<P>,
        part: &mut Part,
        items: &[(&OwnedMessage, &Decoded)],
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
            match mode {
                Mode::Batched => {
                    let events = items.iter().map(|(_, d)| *d).collect();
                    catching_panics(source.apply_many(&self.projection, events, &mut tx))
                        .await
                        .map_err(|e| handler(None, e))?;
                }
                Mode::PerEvent => {
                    for (index, (message, event)) in items.iter().enumerate() {
                        let span = tracing::debug_span!("projection_event", projection = P::NAME, topic = %part.topic, partition = part.partition, offset = message.offset());
                        catching_panics(source.apply_one(&self.projection, event, &mut tx))
                            .instrument(span)
                            .await
                            .map_err(|e| handler(Some(index), e))?;
                    }
                }
            }
            let advanced = checkpoint::advance(
                &mut tx,
                P::NAME,
                &part.topic,
                part.partition,
                part.checkpoint,
                last + 1,
            )
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
            self.status.send_modify(|s| {
                s.applied += applied;
                s.last_error = None;
            });
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Retries a failing event alone with backoff; parks it (or halts) when every
    /// attempt failed.
    async fn retry_one(
        &self,
        source: &dyn Source<P>,
        part: &mut Part,
        message: &OwnedMessage,
        event: &Decoded,
        first_error: HandlerError,
        shutdown: &mut Shutdown,
    ) -> Result<(), Failure> {
        let policy = self.config.retry;
        let mut attempts = 1;
        let mut last_error = first_error.to_string();
        while attempts < policy.max_attempts {
            tracing::warn!(projection = P::NAME, topic = %part.topic, partition = part.partition, offset = message.offset(), attempt = attempts, error = %last_error, "handler failed; retrying");
            tokio::select! {
                () = shutdown.wait() => return Err(Failure::Shutdown),
                () = tokio::time::sleep(policy.backoff(attempts)) => {}
            }
            attempts += 1;
            match self
                .try_commit(source, part, &[(message, event)], Mode::PerEvent)
                .await
            {
                Ok(()) => return Ok(()),
                Err(TryError::Handler { error, .. }) => last_error = error.to_string(),
                Err(TryError::Conflict) => return Err(Failure::Conflict),
                Err(TryError::Rebuilding) => return Err(Failure::Rebuilding),
                Err(TryError::Infra(error)) => return Err(Failure::Infra(error)),
            }
        }
        self.poison(
            part,
            message,
            PoisonReason::HandlerFailed,
            last_error,
            attempts,
        )
        .await
    }

    /// Parks a poison record and moves the checkpoint past it, in one transaction;
    /// or halts.
    async fn poison(
        &self,
        part: &mut Part,
        message: &OwnedMessage,
        reason: PoisonReason,
        error: String,
        attempts: u32,
    ) -> Result<(), Failure> {
        let report = PoisonReport {
            projection: P::NAME,
            topic: part.topic.clone(),
            partition: part.partition,
            offset: message.offset(),
            reason,
            error,
            attempts,
        };
        if self.config.poison == PoisonPolicy::Halt {
            tracing::error!(projection = P::NAME, topic = %report.topic, partition = report.partition, offset = report.offset, reason = %reason, error = %report.error, "poison record: halting the projection");
            return Err(Failure::Halted(Box::new(report)));
        }
        tracing::warn!(projection = P::NAME, topic = %report.topic, partition = report.partition, offset = report.offset, reason = %reason, error = %report.error, "poison record parked in tributary_dead_letters");
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
        if !checkpoint::advance(
            &mut tx,
            P::NAME,
            &part.topic,
            part.partition,
            part.checkpoint,
            next,
        )
        .await
        .map_err(infra("update checkpoint"))?
        {
            let _ = tx.rollback().await;
            return Err(Failure::Conflict);
        }
        tx.commit().await.map_err(infra("commit park"))?;
        part.checkpoint = Some(next);
        self.status.send_modify(|s| s.parked += 1);
        Ok(())
    }
}

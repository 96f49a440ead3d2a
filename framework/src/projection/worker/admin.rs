//! Lag and dead letters: listing and replaying parked records.

use std::collections::HashMap;

use tracing::Instrument;

use super::ProjectionWorker;
use crate::projection::Projection;
use crate::projection::checkpoint;
use crate::projection::dead_letter::{self, DeadLetter, ReplaySummary};
use crate::projection::error::ProjectionError;
use crate::projection::lag::{self, PartitionLag};

impl<P: Projection> ProjectionWorker<P> {
    /// Lag per partition of every subscribed topic: high-water mark minus checkpoint.
    pub async fn lag(&self) -> Result<Vec<PartitionLag>, ProjectionError> {
        let marks = lag::watermarks(self.kafka.client_config(), self.topics())
            .await
            .map_err(Self::watermark_err)?;
        let checkpoints: HashMap<(String, i32), i64> =
            checkpoint::load_all(self.store.pool(), P::NAME)
                .await
                .map_err(Self::db("read checkpoints"))?
                .into_iter()
                .map(|(topic, partition, next)| ((topic, partition), next))
                .collect();
        Ok(marks
            .into_iter()
            .map(|(topic, partition, low, high)| {
                let checkpoint = checkpoints.get(&(topic.clone(), partition)).copied();
                PartitionLag {
                    lag: (high - checkpoint.unwrap_or(low)).max(0),
                    topic,
                    partition,
                    high_watermark: high,
                    checkpoint,
                }
            })
            .collect())
    }

    /// The projection's parked records, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, ProjectionError> {
        dead_letter::list(self.store.pool(), P::NAME, false)
            .await
            .map_err(Self::db("list dead letters"))
    }

    /// Every dead letter of the projection, replayed ones included.
    pub async fn all_dead_letters(&self) -> Result<Vec<DeadLetter>, ProjectionError> {
        dead_letter::list(self.store.pool(), P::NAME, true)
            .await
            .map_err(Self::db("list dead letters"))
    }

    /// Applies a parked record through the projection (decoded with the current
    /// codec, so a newly registered upcaster or a fixed handler takes effect) and
    /// marks it replayed, in one transaction: a dead letter is replayed at most once.
    /// The record is applied out of its original order; handlers that depend on
    /// order must tolerate that (or the projection be rebuilt instead).
    pub async fn replay_dead_letter(&self, id: i64) -> Result<(), ProjectionError> {
        let letter = dead_letter::get(self.store.pool(), P::NAME, id)
            .await
            .map_err(Self::db("read dead letter"))?
            .ok_or(ProjectionError::DeadLetterNotFound {
                projection: P::NAME,
                id,
            })?;
        if letter.replayed_at.is_some() {
            return Err(ProjectionError::AlreadyReplayed {
                projection: P::NAME,
                id,
            });
        }
        letter.ensure_not_discarded(P::NAME)?;
        let failed = |error: String| async move {
            dead_letter::record_replay_error(self.store.pool(), id, &error)
                .await
                .map_err(Self::db("record replay error"))?;
            Err::<(), _>(ProjectionError::ReplayFailed {
                projection: P::NAME,
                id,
                error,
            })
        };
        let Some(source) = self.sources.iter().find(|s| s.topic() == letter.topic) else {
            return failed(format!(
                "no subscription reads topic `{}`; subscribe the worker to it",
                letter.topic
            ))
            .await;
        };
        let decoded = match source.decode(&letter.record(), (letter.partition, letter.offset)) {
            Ok(decoded) => decoded,
            Err(error) => return failed(error.to_string()).await,
        };
        let span = tracing::info_span!("projection_replay", projection = P::NAME, topic = %letter.topic, partition = letter.partition, offset = letter.offset, dead_letter = id);
        let mut tx = self
            .store
            .pool()
            .begin()
            .await
            .map_err(Self::db("begin replay"))?;
        if let Err(error) = source
            .apply_one(&self.projection, &decoded, &mut tx)
            .instrument(span)
            .await
        {
            let _ = tx.rollback().await;
            return failed(error.to_string()).await;
        }
        if !dead_letter::mark_replayed(&mut tx, id)
            .await
            .map_err(Self::db("mark dead letter replayed"))?
        {
            let _ = tx.rollback().await;
            return Err(ProjectionError::AlreadyReplayed {
                projection: P::NAME,
                id,
            });
        }
        tx.commit().await.map_err(Self::db("commit replay"))?;
        tracing::info!(
            projection = P::NAME,
            dead_letter = id,
            "dead letter replayed"
        );
        Ok(())
    }

    /// Replays every parked record, oldest first; those that fail again stay parked.
    pub async fn replay_dead_letters(&self) -> Result<ReplaySummary, ProjectionError> {
        let mut summary = ReplaySummary::default();
        for letter in self.dead_letters().await? {
            match self.replay_dead_letter(letter.id).await {
                Ok(()) => summary.replayed.push(letter.id),
                Err(ProjectionError::ReplayFailed { id, error, .. }) => {
                    summary.failed.push((id, error))
                }
                Err(ProjectionError::AlreadyReplayed { .. }) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(summary)
    }
}

//! Aggregate snapshots in Postgres (`tributary_snapshots`).
//!
//! A snapshot is written only after the Kafka transaction that produced the events
//! it covers has committed, and an upsert only replaces an older snapshot (a stale
//! writer cannot regress it). Losing every snapshot of a partition together with its
//! watermark row only makes the next restore slower. While a processor owns the
//! partition, a confirmed row is also the state of an aggregate it evicted from
//! memory (`ProcessorSettings::max_cached_aggregates`), so rows must not be deleted
//! under a running processor.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::store::{PgStore, StoreError};

/// Whether an aggregate at `version`, last snapshotted at `snapshot_version`, is
/// due for a snapshot when one is taken every `every` (> 0) events: it has reached
/// a multiple of `every` since.
pub(crate) fn due(version: u64, snapshot_version: u64, every: u64) -> bool {
    version / every > snapshot_version / every
}

/// One snapshot row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub(crate) struct SnapshotRow {
    pub(crate) aggregate_id: String,
    pub(crate) version: i64,
    pub(crate) events_offset: i64,
    pub(crate) state: serde_json::Value,
    pub(crate) state_version: i32,
}

/// The snapshots and the watermark of one events partition.
#[derive(Debug, Default)]
pub(crate) struct PartitionSnapshots {
    pub(crate) rows: Vec<SnapshotRow>,
    /// Every event at or before this offset is covered by `rows`.
    pub(crate) watermark: Option<i64>,
}

pub(crate) async fn load_partition(
    store: &PgStore,
    aggregate_type: &str,
    partition: i32,
) -> Result<PartitionSnapshots, StoreError> {
    let rows: Vec<SnapshotRow> = sqlx::query_as(
        "SELECT aggregate_id, version, events_offset, state, state_version
           FROM tributary_snapshots
          WHERE aggregate_type = $1 AND events_partition = $2",
    )
    .bind(aggregate_type)
    .bind(partition)
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::db("load snapshots"))?;
    let mut out = PartitionSnapshots::default();
    for row in rows {
        if row.aggregate_id.is_empty() {
            out.watermark = Some(row.events_offset);
        } else {
            out.rows.push(row);
        }
    }
    Ok(out)
}

/// What the snapshot table holds for one events partition, without reading the
/// states: enough to choose between loading every row and loading lazily.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PartitionSummary {
    /// Aggregate rows.
    pub(crate) rows: i64,
    /// Rows of another state version than the current one (unreadable as they are).
    pub(crate) stale: i64,
    /// Every event at or before this offset is covered by the rows.
    pub(crate) watermark: Option<i64>,
}

pub(crate) async fn partition_summary(
    store: &PgStore,
    aggregate_type: &str,
    partition: i32,
    state_version: i32,
) -> Result<PartitionSummary, StoreError> {
    let (rows, stale, watermark): (i64, i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE aggregate_id <> ''),
                count(*) FILTER (WHERE aggregate_id <> '' AND state_version <> $3),
                max(events_offset) FILTER (WHERE aggregate_id = '')
           FROM tributary_snapshots
          WHERE aggregate_type = $1 AND events_partition = $2",
    )
    .bind(aggregate_type)
    .bind(partition)
    .bind(state_version)
    .fetch_one(store.pool())
    .await
    .map_err(StoreError::db("summarize snapshots"))?;
    Ok(PartitionSummary {
        rows,
        stale,
        watermark,
    })
}

/// The snapshot rows of the given aggregates of one partition (those that have one).
pub(crate) async fn load_ids(
    store: &PgStore,
    aggregate_type: &str,
    partition: i32,
    ids: &[String],
) -> Result<Vec<SnapshotRow>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "SELECT aggregate_id, version, events_offset, state, state_version
           FROM tributary_snapshots
          WHERE aggregate_type = $1 AND events_partition = $2 AND aggregate_id = ANY($3)
            AND aggregate_id <> ''",
    )
    .bind(aggregate_type)
    .bind(partition)
    .bind(ids)
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::db("load snapshots"))
}

/// Writes a batch of snapshots and optionally advances the partition watermark, in
/// one Postgres transaction. Each row replaces only an older snapshot.
pub(crate) async fn save(
    store: &PgStore,
    aggregate_type: &str,
    partition: i32,
    rows: &[SnapshotRow],
    watermark: Option<i64>,
) -> Result<(), StoreError> {
    let mut tx = store
        .pool()
        .begin()
        .await
        .map_err(StoreError::db("begin"))?;
    if !rows.is_empty() {
        let ids: Vec<&str> = rows.iter().map(|r| r.aggregate_id.as_str()).collect();
        let versions: Vec<i64> = rows.iter().map(|r| r.version).collect();
        let offsets: Vec<i64> = rows.iter().map(|r| r.events_offset).collect();
        let states: Vec<&serde_json::Value> = rows.iter().map(|r| &r.state).collect();
        let state_versions: Vec<i32> = rows.iter().map(|r| r.state_version).collect();
        sqlx::query(
            "INSERT INTO tributary_snapshots AS s
                 (aggregate_type, events_partition, aggregate_id, version, events_offset, state, state_version)
             SELECT $1, $2, * FROM UNNEST($3::text[], $4::bigint[], $5::bigint[], $6::jsonb[], $7::int[])
             ON CONFLICT (aggregate_type, events_partition, aggregate_id) DO UPDATE
                SET version = EXCLUDED.version, events_offset = EXCLUDED.events_offset,
                    state = EXCLUDED.state, state_version = EXCLUDED.state_version, taken_at = now()
              WHERE s.version < EXCLUDED.version
                 OR (s.version = EXCLUDED.version AND s.state_version <> EXCLUDED.state_version)",
        )
        .bind(aggregate_type)
        .bind(partition)
        .bind(&ids)
        .bind(&versions)
        .bind(&offsets)
        .bind(&states)
        .bind(&state_versions)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::db("write snapshots"))?;
    }
    if let Some(offset) = watermark {
        sqlx::query(
            "INSERT INTO tributary_snapshots AS s
                 (aggregate_type, events_partition, aggregate_id, version, events_offset, state, state_version)
             VALUES ($1, $2, '', 0, $3, 'null', 0)
             ON CONFLICT (aggregate_type, events_partition, aggregate_id) DO UPDATE
                SET events_offset = EXCLUDED.events_offset, taken_at = now()
              WHERE s.events_offset < EXCLUDED.events_offset",
        )
        .bind(aggregate_type)
        .bind(partition)
        .bind(offset)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::db("write snapshot watermark"))?;
    }
    tx.commit()
        .await
        .map_err(StoreError::db("commit snapshots"))
}

/// Deletes one aggregate's snapshot and the partition's watermark (used when a
/// snapshot could not be read: the restore then replays the whole partition).
pub(crate) async fn discard(
    store: &PgStore,
    aggregate_type: &str,
    partition: i32,
    aggregate_id: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "DELETE FROM tributary_snapshots
          WHERE aggregate_type = $1 AND events_partition = $2 AND aggregate_id IN ($3, '')",
    )
    .bind(aggregate_type)
    .bind(partition)
    .bind(aggregate_id)
    .execute(store.pool())
    .await
    .map_err(StoreError::db("discard snapshot"))?;
    Ok(())
}

/// A batch for the background writer.
pub(crate) struct SnapshotJob {
    pub(crate) partition: i32,
    pub(crate) rows: Vec<SnapshotRow>,
    pub(crate) watermark: Option<i64>,
    pub(crate) done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// What the writer reports back after each job: the rows it confirmed in Postgres
/// (aggregate id, version), or none when the job failed for good.
#[derive(Debug)]
pub(crate) struct Written {
    pub(crate) partition: i32,
    pub(crate) confirmed: Vec<(String, u64)>,
}

/// Writes snapshots off the command path, in the order they were handed over, and
/// reports each job's confirmed rows on `written`.
pub(crate) fn spawn_writer(
    runtime: &tokio::runtime::Handle,
    store: PgStore,
    aggregate_type: &'static str,
    written: std::sync::mpsc::Sender<Written>,
) -> mpsc::UnboundedSender<SnapshotJob> {
    let (tx, mut rx) = mpsc::unbounded_channel::<SnapshotJob>();
    let written_rows =
        metrics::counter!(crate::telemetry::SNAPSHOTS_WRITTEN, "aggregate" => aggregate_type);
    let failures =
        metrics::counter!(crate::telemetry::SNAPSHOT_WRITE_FAILURES, "aggregate" => aggregate_type);
    runtime.spawn(async move {
        while let Some(job) = rx.recv().await {
            let mut result = Err(StoreError::Database {
                operation: "write snapshots",
                source: sqlx::Error::PoolTimedOut,
            });
            // Snapshots are an optimisation: retry a little, then give up loudly.
            for attempt in 0..3u32 {
                result = save(&store, aggregate_type, job.partition, &job.rows, job.watermark).await;
                match &result {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::warn!(%error, attempt, partition = job.partition, "snapshot write failed");
                        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    }
                }
            }
            let confirmed = match &result {
                Ok(()) => {
                    written_rows.increment(job.rows.len() as u64);
                    job
                    .rows
                    .iter()
                    .map(|r| (r.aggregate_id.clone(), u64::try_from(r.version).unwrap_or(0)))
                    .collect()
                }
                Err(error) => {
                    failures.increment(1);
                    tracing::error!(%error, partition = job.partition, rows = job.rows.len(),
                        "snapshot write failed for good; its aggregates stay unconfirmed and the partition's watermark does not move past them");
                    Vec::new()
                }
            };
            let _ = written.send(Written {
                partition: job.partition,
                confirmed,
            });
            if let Some(done) = job.done {
                let _ = done.send(result);
            }
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::due;

    proptest! {
        /// Due exactly when a multiple of `every` lies in (snapshot_version, version].
        #[test]
        fn due_when_a_multiple_of_every_was_passed(
            snapshot_version in 0..200u64,
            step in 0..60u64,
            every in 1..25u64,
        ) {
            let version = snapshot_version + step;
            let crossed = (snapshot_version + 1..=version).any(|v| v % every == 0);
            prop_assert_eq!(due(version, snapshot_version, every), crossed);
        }
    }

    #[test]
    fn due_at_the_boundaries() {
        assert!(due(10, 9, 10));
        assert!(!due(19, 10, 10));
        assert!(due(20, 10, 10));
        assert!(!due(5, 5, 1));
        assert!(due(6, 5, 1));
    }
}

//! Every projection of a schema at once, without the projections' code: their
//! checkpoints, lag and dead letters, read from Postgres (`tributary_checkpoints`,
//! `tributary_dead_letters`) and the high-water marks of their partitions in Kafka.
//! The `tributary` CLI (`projections status|lag`, `dead-letters list|show|discard`)
//! is built on these; a [`ProjectionWorker`](crate::projection::ProjectionWorker)
//! offers the same for its own projection.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use crate::config::KafkaConfig;
use crate::projection::dead_letter::{self, DeadLetter, Row};
use crate::projection::lag::{self, PartitionLag, WatermarkError};
use crate::store::PgStore;

/// Why a catalog query failed. Each message says what to check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// A Postgres query failed.
    #[error(
        "Postgres {operation} failed: {source}; check DATABASE_URL, the schema, and that Tributary's migrations are applied"
    )]
    Database {
        /// What was being done.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A Kafka client call failed.
    #[error("{0}; check KAFKA_BOOTSTRAP_SERVERS and that the broker is up")]
    Kafka(#[from] crate::kafka::KafkaOpError),
    /// A topic a projection has checkpoints for is not in the cluster.
    #[error(
        "topic `{0}` has projection checkpoints but does not exist in the cluster; was it deleted, or is this the wrong cluster?"
    )]
    MissingTopic(String),
    /// The thread that asked the cluster ended abnormally.
    #[error("the Kafka watermark query's thread ended abnormally: {0}")]
    Thread(String),
    /// No dead letter has this id.
    #[error("no dead letter has id {id}; `tributary dead-letters list --all` shows the ids")]
    DeadLetterNotFound {
        /// The id asked for.
        id: i64,
    },
    /// The dead letter was already replayed.
    #[error("dead letter {id} was already replayed; it is no longer open")]
    AlreadyReplayed {
        /// The id.
        id: i64,
    },
    /// The dead letter was already discarded.
    #[error("dead letter {id} was already discarded; it is no longer open")]
    AlreadyDiscarded {
        /// The id.
        id: i64,
    },
}

fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> CatalogError {
    move |source| CatalogError::Database { operation, source }
}

/// One row of `tributary_checkpoints`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Checkpoint {
    /// The projection.
    pub projection: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The next offset the projection applies.
    pub next_offset: i64,
    /// When the projection last committed a batch on this partition.
    pub updated_at: DateTime<Utc>,
}

/// How far one projection is behind, per partition of the topics it has
/// checkpoints on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionLag {
    /// The projection.
    pub projection: String,
    /// Every partition of every topic the projection has a checkpoint on, by topic
    /// and partition (a partition without a checkpoint lags from its log start).
    pub partitions: Vec<PartitionLag>,
    /// The sum of the partitions' lag.
    pub total_lag: i64,
    /// The latest checkpoint update (the last batch the projection committed).
    pub last_update: Option<DateTime<Utc>>,
}

/// One projection's health at a glance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionSummary {
    /// The projection.
    pub projection: String,
    /// Lag over all its partitions.
    pub total_lag: i64,
    /// Dead letters neither replayed nor discarded.
    pub open_dead_letters: i64,
    /// The latest checkpoint update.
    pub last_update: Option<DateTime<Utc>>,
}

/// The names of every projection that has a checkpoint or a dead letter in the
/// store's schema, sorted.
pub async fn projection_names(store: &PgStore) -> Result<Vec<String>, CatalogError> {
    sqlx::query_scalar(
        "SELECT projection FROM tributary_checkpoints
         UNION SELECT projection FROM tributary_dead_letters ORDER BY 1",
    )
    .fetch_all(store.pool())
    .await
    .map_err(db("list projections"))
}

/// The checkpoints of `projection` (of every projection when `None`), by
/// projection, topic and partition.
pub async fn checkpoints(
    store: &PgStore,
    projection: Option<&str>,
) -> Result<Vec<Checkpoint>, CatalogError> {
    sqlx::query_as(
        "SELECT projection, topic, partition, next_offset, updated_at FROM tributary_checkpoints
         WHERE $1::text IS NULL OR projection = $1 ORDER BY projection, topic, partition",
    )
    .bind(projection)
    .fetch_all(store.pool())
    .await
    .map_err(db("read checkpoints"))
}

/// The lag of `projection` (of every projection with a checkpoint when `None`):
/// the high-water mark of each partition of its topics minus its checkpoint.
/// Counts offsets, so transaction markers not yet passed count too.
pub async fn projection_lag(
    store: &PgStore,
    kafka: &KafkaConfig,
    projection: Option<&str>,
) -> Result<Vec<ProjectionLag>, CatalogError> {
    let rows = checkpoints(store, projection).await?;
    let topics: BTreeSet<String> = rows.iter().map(|c| c.topic.clone()).collect();
    let marks = lag::watermarks(kafka.client_config(), topics.into_iter().collect())
        .await
        .map_err(|error| match error {
            WatermarkError::MissingTopic(topic) => CatalogError::MissingTopic(topic),
            WatermarkError::Kafka(error) => CatalogError::Kafka(error),
            WatermarkError::Thread(detail) => CatalogError::Thread(detail),
        })?;
    Ok(lag_of(&rows, &marks))
}

/// Joins checkpoints with watermarks `(topic, partition, low, high)`.
fn lag_of(rows: &[Checkpoint], marks: &[(String, i32, i64, i64)]) -> Vec<ProjectionLag> {
    let mut by_projection: BTreeMap<&str, Vec<&Checkpoint>> = BTreeMap::new();
    for row in rows {
        by_projection.entry(&row.projection).or_default().push(row);
    }
    by_projection
        .into_iter()
        .map(|(projection, rows)| {
            let topics: BTreeSet<&str> = rows.iter().map(|c| c.topic.as_str()).collect();
            let partitions: Vec<PartitionLag> = marks
                .iter()
                .filter(|(topic, ..)| topics.contains(topic.as_str()))
                .map(|(topic, partition, low, high)| {
                    let checkpoint = rows
                        .iter()
                        .find(|c| c.topic == *topic && c.partition == *partition)
                        .map(|c| c.next_offset);
                    PartitionLag {
                        topic: topic.clone(),
                        partition: *partition,
                        high_watermark: *high,
                        checkpoint,
                        lag: (high - checkpoint.unwrap_or(*low)).max(0),
                    }
                })
                .collect();
            ProjectionLag {
                projection: projection.to_owned(),
                total_lag: partitions.iter().map(|p| p.lag).sum(),
                last_update: rows.iter().map(|c| c.updated_at).max(),
                partitions,
            }
        })
        .collect()
}

/// Every projection (or only `projection`) with its total lag, open dead letters
/// and last checkpoint update, by name. A projection with dead letters but no
/// checkpoint yet has lag 0.
pub async fn projection_status(
    store: &PgStore,
    kafka: &KafkaConfig,
    projection: Option<&str>,
) -> Result<Vec<ProjectionSummary>, CatalogError> {
    let lags = projection_lag(store, kafka, projection).await?;
    let open: Vec<(String, i64)> = sqlx::query_as(
        "SELECT projection, count(*) FROM tributary_dead_letters
         WHERE replayed_at IS NULL AND discarded_at IS NULL
           AND ($1::text IS NULL OR projection = $1)
         GROUP BY projection",
    )
    .bind(projection)
    .fetch_all(store.pool())
    .await
    .map_err(db("count open dead letters"))?;
    let mut summaries: BTreeMap<String, ProjectionSummary> = lags
        .into_iter()
        .map(|lag| {
            let summary = ProjectionSummary {
                projection: lag.projection.clone(),
                total_lag: lag.total_lag,
                open_dead_letters: 0,
                last_update: lag.last_update,
            };
            (lag.projection, summary)
        })
        .collect();
    for (name, count) in open {
        summaries
            .entry(name.clone())
            .or_insert_with(|| ProjectionSummary {
                projection: name,
                total_lag: 0,
                open_dead_letters: 0,
                last_update: None,
            })
            .open_dead_letters = count;
    }
    Ok(summaries.into_values().collect())
}

/// Dead letters of `projection` (of every projection when `None`), oldest first;
/// only the open ones (neither replayed nor discarded) unless `include_closed`.
pub async fn dead_letters(
    store: &PgStore,
    projection: Option<&str>,
    include_closed: bool,
) -> Result<Vec<DeadLetter>, CatalogError> {
    let columns = dead_letter::COLUMNS;
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {columns} FROM tributary_dead_letters
         WHERE ($1::text IS NULL OR projection = $1)
           AND ($2 OR (replayed_at IS NULL AND discarded_at IS NULL))
         ORDER BY id"
    ))
    .bind(projection)
    .bind(include_closed)
    .fetch_all(store.pool())
    .await
    .map_err(db("list dead letters"))?;
    Ok(rows.into_iter().map(DeadLetter::from).collect())
}

/// The dead letter with this id, of any projection, open or not.
pub async fn dead_letter(store: &PgStore, id: i64) -> Result<Option<DeadLetter>, CatalogError> {
    let columns = dead_letter::COLUMNS;
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {columns} FROM tributary_dead_letters WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(store.pool())
    .await
    .map_err(db("read dead letter"))?;
    Ok(row.map(DeadLetter::from))
}

/// Discards an open dead letter: marks it handled without applying its record
/// (it stays in the table as an audit trail, with `reason`). A discarded letter is
/// no longer listed as open and is never replayed
/// ([`ProjectionError::Discarded`](crate::projection::ProjectionError::Discarded)).
/// Returns the updated dead letter.
pub async fn discard_dead_letter(
    store: &PgStore,
    id: i64,
    reason: Option<&str>,
) -> Result<DeadLetter, CatalogError> {
    let columns = dead_letter::COLUMNS;
    let row: Option<Row> = sqlx::query_as(&format!(
        "UPDATE tributary_dead_letters SET discarded_at = now(), discard_reason = $2
         WHERE id = $1 AND replayed_at IS NULL AND discarded_at IS NULL
         RETURNING {columns}"
    ))
    .bind(id)
    .bind(reason)
    .fetch_optional(store.pool())
    .await
    .map_err(db("discard dead letter"))?;
    if let Some(row) = row {
        return Ok(row.into());
    }
    match dead_letter(store, id).await? {
        None => Err(CatalogError::DeadLetterNotFound { id }),
        Some(letter) if letter.replayed_at.is_some() => Err(CatalogError::AlreadyReplayed { id }),
        Some(_) => Err(CatalogError::AlreadyDiscarded { id }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(projection: &str, topic: &str, partition: i32, next: i64) -> Checkpoint {
        Checkpoint {
            projection: projection.to_owned(),
            topic: topic.to_owned(),
            partition,
            next_offset: next,
            updated_at: DateTime::<Utc>::from_timestamp(1_700_000_000 + next, 0)
                .unwrap_or_default(),
        }
    }

    #[test]
    fn lag_joins_checkpoints_with_every_partition_of_their_topics() {
        let rows = [
            checkpoint("a", "t", 0, 5),
            checkpoint("b", "u", 0, 2),
            checkpoint("b", "u", 1, 9),
        ];
        let marks = [
            ("t".to_owned(), 0, 0, 8),
            ("t".to_owned(), 1, 3, 4),
            ("u".to_owned(), 0, 0, 2),
            ("u".to_owned(), 1, 0, 10),
        ];
        let lags = lag_of(&rows, &marks);
        assert_eq!(lags.len(), 2);
        assert_eq!(lags[0].projection, "a");
        // Partition 1 has no checkpoint: it lags from its log start (3).
        let a: Vec<(i32, Option<i64>, i64)> = lags[0]
            .partitions
            .iter()
            .map(|p| (p.partition, p.checkpoint, p.lag))
            .collect();
        assert_eq!(a, vec![(0, Some(5), 3), (1, None, 1)]);
        assert_eq!(lags[0].total_lag, 4);
        assert_eq!(lags[1].total_lag, 1);
        assert_eq!(lags[1].last_update, Some(rows[2].updated_at));
    }
}

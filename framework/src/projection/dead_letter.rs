//! The `tributary_dead_letters` table.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use crate::codec::RecordRef;
use crate::projection::error::{PoisonReason, PoisonReport, ProjectionError};
use crate::projection::received::Received;

/// A parked record of a projection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Id, for [`crate::projection::ProjectionWorker::replay_dead_letter`].
    pub id: i64,
    /// The projection that parked it.
    pub projection: String,
    /// Topic of the record.
    pub topic: String,
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value.
    pub payload: Option<Vec<u8>>,
    /// Record headers, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Why it was parked.
    pub reason: PoisonReason,
    /// The last error.
    pub error: String,
    /// Handler attempts (0 if it could not be decoded).
    pub attempts: i32,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
    /// When a replay applied it (`None` while it is still parked).
    pub replayed_at: Option<DateTime<Utc>>,
    /// The error of the last failed replay.
    pub replay_error: Option<String>,
    /// When an operator discarded it: marked handled without applying it
    /// (`tributary dead-letters discard`, [`crate::projection::catalog::discard_dead_letter`]).
    pub discarded_at: Option<DateTime<Utc>>,
    /// Why it was discarded, as the operator wrote it.
    pub discard_reason: Option<String>,
}

impl DeadLetter {
    /// Whether it is still parked: neither replayed nor discarded.
    pub fn is_open(&self) -> bool {
        self.replayed_at.is_none() && self.discarded_at.is_none()
    }

    /// Refuses to replay a discarded dead letter.
    pub(crate) fn ensure_not_discarded(
        &self,
        projection: &'static str,
    ) -> Result<(), ProjectionError> {
        match self.discarded_at {
            Some(_) => Err(ProjectionError::Discarded {
                projection,
                id: self.id,
            }),
            None => Ok(()),
        }
    }

    /// A view of the stored record, as the codec reads it.
    pub fn record(&self) -> RecordRef<'_> {
        RecordRef {
            key: self.key.as_deref(),
            value: self.payload.as_deref(),
            headers: self
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_deref()))
                .collect(),
        }
    }
}

/// What [`crate::projection::ProjectionWorker::replay_dead_letters`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplaySummary {
    /// Ids applied and marked replayed.
    pub replayed: Vec<i64>,
    /// Ids that failed again, with the error; they stay parked.
    pub failed: Vec<(i64, String)>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct Row {
    id: i64,
    projection: String,
    topic: String,
    partition: i32,
    record_offset: i64,
    record_key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    header_names: Vec<String>,
    header_values: Vec<Option<Vec<u8>>>,
    reason: String,
    error: String,
    attempts: i32,
    parked_at: DateTime<Utc>,
    replayed_at: Option<DateTime<Utc>>,
    replay_error: Option<String>,
    discarded_at: Option<DateTime<Utc>>,
    discard_reason: Option<String>,
}

impl From<Row> for DeadLetter {
    fn from(row: Row) -> Self {
        Self {
            id: row.id,
            projection: row.projection,
            topic: row.topic,
            partition: row.partition,
            offset: row.record_offset,
            key: row.record_key,
            payload: row.payload,
            headers: row
                .header_names
                .into_iter()
                .zip(row.header_values)
                .collect(),
            reason: PoisonReason::parse(&row.reason),
            error: row.error,
            attempts: row.attempts,
            parked_at: row.parked_at,
            replayed_at: row.replayed_at,
            replay_error: row.replay_error,
            discarded_at: row.discarded_at,
            discard_reason: row.discard_reason,
        }
    }
}

pub(crate) const COLUMNS: &str = "id, projection, topic, partition, record_offset, record_key, \
     payload, header_names, header_values, reason, error, attempts, parked_at, replayed_at, \
     replay_error, discarded_at, discard_reason";

/// Parks a record. Re-parking the same record (after a rebuild) replaces the row.
pub(crate) async fn park(
    conn: &mut PgConnection,
    report: &PoisonReport,
    message: &Received,
) -> Result<(), sqlx::Error> {
    let (names, values): (Vec<String>, Vec<Option<Vec<u8>>>) = message
        .headers()
        .map(|(name, value)| (name.to_owned(), value.map(<[u8]>::to_vec)))
        .unzip();
    sqlx::query(
        "INSERT INTO tributary_dead_letters
            (projection, topic, partition, record_offset, record_key, payload,
             header_names, header_values, reason, error, attempts)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (projection, topic, partition, record_offset) DO UPDATE SET
            reason = EXCLUDED.reason, error = EXCLUDED.error, attempts = EXCLUDED.attempts,
            parked_at = now(), replayed_at = NULL, replay_error = NULL,
            discarded_at = NULL, discard_reason = NULL",
    )
    .bind(report.projection)
    .bind(&report.topic)
    .bind(report.partition)
    .bind(report.offset)
    .bind(message.key())
    .bind(message.payload())
    .bind(names)
    .bind(values)
    .bind(report.reason.as_str())
    .bind(&report.error)
    .bind(i32::try_from(report.attempts).unwrap_or(i32::MAX))
    .execute(conn)
    .await?;
    Ok(())
}

/// Dead letters of a projection, oldest first; only the open ones (neither replayed
/// nor discarded) unless `include_replayed`.
pub(crate) async fn list<'e>(
    conn: impl PgExecutor<'e>,
    projection: &str,
    include_replayed: bool,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM tributary_dead_letters
         WHERE projection = $1 AND ($2 OR (replayed_at IS NULL AND discarded_at IS NULL))
         ORDER BY id"
    ))
    .bind(projection)
    .bind(include_replayed)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(DeadLetter::from).collect())
}

pub(crate) async fn get<'e>(
    conn: impl PgExecutor<'e>,
    projection: &str,
    id: i64,
) -> Result<Option<DeadLetter>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM tributary_dead_letters WHERE projection = $1 AND id = $2"
    ))
    .bind(projection)
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(DeadLetter::from))
}

/// Marks a dead letter replayed, only if it still is open.
pub(crate) async fn mark_replayed(conn: &mut PgConnection, id: i64) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "UPDATE tributary_dead_letters SET replayed_at = now(), replay_error = NULL
         WHERE id = $1 AND replayed_at IS NULL AND discarded_at IS NULL",
    )
    .bind(id)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub(crate) async fn record_replay_error<'e>(
    conn: impl PgExecutor<'e>,
    id: i64,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE tributary_dead_letters SET replay_error = $2 WHERE id = $1")
        .bind(id)
        .bind(error)
        .execute(conn)
        .await?;
    Ok(())
}

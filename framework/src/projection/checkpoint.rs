//! The `tributary_checkpoints` table.

use sqlx::{PgConnection, PgExecutor};

/// Reads the checkpoint (next offset to apply) of one partition.
pub(crate) async fn load<'e>(
    conn: impl PgExecutor<'e>,
    projection: &str,
    topic: &str,
    partition: i32,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT next_offset FROM tributary_checkpoints
         WHERE projection = $1 AND topic = $2 AND partition = $3",
    )
    .bind(projection)
    .bind(topic)
    .bind(partition)
    .fetch_optional(conn)
    .await
}

/// Reads every checkpoint of a projection: `(topic, partition, next_offset)`.
pub(crate) async fn load_all<'e>(
    conn: impl PgExecutor<'e>,
    projection: &str,
) -> Result<Vec<(String, i32, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT topic, partition, next_offset FROM tributary_checkpoints
         WHERE projection = $1 ORDER BY topic, partition",
    )
    .bind(projection)
    .fetch_all(conn)
    .await
}

/// Moves a checkpoint from `expected` to `next`, only if it still holds `expected`
/// (`None`: no row yet). Returns `false` when another writer got there first: the
/// caller lost the partition and must roll back.
pub(crate) async fn advance(
    conn: &mut PgConnection,
    projection: &str,
    topic: &str,
    partition: i32,
    expected: Option<i64>,
    next: i64,
) -> Result<bool, sqlx::Error> {
    let result = match expected {
        Some(expected) => {
            sqlx::query(
                "UPDATE tributary_checkpoints SET next_offset = $5, updated_at = now()
                 WHERE projection = $1 AND topic = $2 AND partition = $3 AND next_offset = $4",
            )
            .bind(projection)
            .bind(topic)
            .bind(partition)
            .bind(expected)
            .bind(next)
            .execute(conn)
            .await?
        }
        None => {
            sqlx::query(
                "INSERT INTO tributary_checkpoints (projection, topic, partition, next_offset)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(projection)
            .bind(topic)
            .bind(partition)
            .bind(next)
            .execute(conn)
            .await?
        }
    };
    Ok(result.rows_affected() == 1)
}

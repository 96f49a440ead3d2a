//! Postgres: the connection pool for Tributary's tables and read models, and the
//! embedded migrations of Tributary's own tables.
//!
//! Everything lives in one Postgres schema (default `public`): the pool sets
//! `search_path` to it, so framework tables and a projection's read-model tables
//! resolve there. Tests give each run its own schema and so run in parallel.

use std::fmt;
use std::str::FromStr;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Tributary's migrations, applied in order by [`PgStore::connect`]. Tracked in the
/// schema's own `tributary_migrations` table, so they never collide with the
/// application's migrations (sqlx's `_sqlx_migrations` or any other tool).
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "snapshots",
        include_str!("../migrations/0001_snapshots.sql"),
    ),
    (
        2,
        "projections",
        include_str!("../migrations/0002_projections.sql"),
    ),
    (
        3,
        "dead_letter_discard",
        include_str!("../migrations/0003_dead_letter_discard.sql"),
    ),
];

/// The version of the newest migration this build of Tributary knows (and
/// [`PgStore::connect`] applies).
pub const LATEST_MIGRATION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Which of Tributary's migrations a schema has, compared with this build's list
/// ([`PgStore::migration_status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Versions recorded in the schema's `tributary_migrations` table, ascending.
    pub applied: Vec<i32>,
    /// Migrations of this build the schema lacks, as `(version, name)`:
    /// [`PgStore::connect`] (any process of the application built with this
    /// version) applies them.
    pub missing: Vec<(i32, &'static str)>,
    /// Applied versions this build does not know: the schema was migrated by a
    /// newer Tributary.
    pub unknown: Vec<i32>,
}

impl MigrationStatus {
    /// Whether the schema has every migration of this build.
    pub fn is_current(&self) -> bool {
        self.missing.is_empty()
    }

    fn compare(mut applied: Vec<i32>) -> Self {
        applied.sort_unstable();
        let missing = MIGRATIONS
            .iter()
            .filter(|(version, _, _)| !applied.contains(version))
            .map(|(version, name, _)| (*version, *name))
            .collect();
        let unknown = applied
            .iter()
            .copied()
            .filter(|v| !MIGRATIONS.iter().any(|(known, _, _)| known == v))
            .collect();
        Self {
            applied,
            missing,
            unknown,
        }
    }
}

/// Why Postgres could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The connection URL could not be parsed.
    #[error("invalid DATABASE_URL: {0}; expected postgres://user[:password]@host[:port]/database")]
    InvalidUrl(#[source] sqlx::Error),
    /// The schema name is not a plain identifier.
    #[error(
        "invalid schema name {0:?}: use 1 to 63 lowercase ASCII letters, digits or '_', starting with a letter"
    )]
    InvalidSchema(String),
    /// Postgres refused the connection or a query failed.
    #[error("Postgres {operation} failed: {source}")]
    Database {
        /// What was being done.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed; nothing of it was applied.
    #[error("Tributary migration {version} ({name}) failed: {source}")]
    Migration {
        /// Migration version.
        version: i32,
        /// Migration name.
        name: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

impl StoreError {
    pub(crate) fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Self::Database { operation, source }
    }
}

/// A Postgres pool bound to one schema, with Tributary's tables migrated.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    schema: String,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool.size())
            .finish()
    }
}

fn validate_schema(schema: &str) -> Result<(), StoreError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase())
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidSchema(schema.to_owned()))
    }
}

impl PgStore {
    /// Connects to `url`, creates `schema` if missing, sets it as the search path of
    /// every connection and applies Tributary's migrations (serialized across
    /// processes with an advisory lock).
    pub async fn connect(url: &str, schema: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, schema, PgPoolOptions::new().max_connections(10)).await
    }

    /// Like [`PgStore::connect`] with custom pool options.
    pub async fn connect_with(
        url: &str,
        schema: &str,
        pool_options: PgPoolOptions,
    ) -> Result<Self, StoreError> {
        validate_schema(schema)?;
        let options = PgConnectOptions::from_str(url).map_err(StoreError::InvalidUrl)?;
        // Create the schema on a connection without the search path first.
        let bootstrap = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(StoreError::db("connect"))?;
        // `CREATE SCHEMA IF NOT EXISTS` is not safe against a concurrent one (the
        // loser fails with a unique violation on pg_namespace), and the processes of
        // a deployment started at once all connect to a new schema: one at a time.
        let mut tx = bootstrap
            .begin()
            .await
            .map_err(StoreError::db("begin create schema"))?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tributary_schema.' || $1))")
            .bind(schema)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db("lock schema creation"))?;
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db("create schema"))?;
        tx.commit()
            .await
            .map_err(StoreError::db("commit create schema"))?;
        bootstrap.close().await;

        let pool = pool_options
            .connect_with(options.options([("search_path", schema)]))
            .await
            .map_err(StoreError::db("connect"))?;
        let store = Self {
            pool,
            schema: schema.to_owned(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Connects to `url` with `schema` as the search path, without creating the
    /// schema or applying migrations: for tools that inspect a deployment (the
    /// `tributary` CLI) and must not change it. [`PgStore::migration_status`] says
    /// whether the schema is migrated.
    pub async fn connect_without_migrating(url: &str, schema: &str) -> Result<Self, StoreError> {
        validate_schema(schema)?;
        let options = PgConnectOptions::from_str(url).map_err(StoreError::InvalidUrl)?;
        // One attempt first, so that an unreachable server is reported at once and
        // with its cause (a pool retries until its acquire timeout, then only says
        // that it timed out).
        let probe = sqlx::ConnectOptions::connect(&options)
            .await
            .map_err(StoreError::db("connect"))?;
        let _ = sqlx::Connection::close(probe).await;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_lazy_with(options.options([("search_path", schema)]));
        Ok(Self {
            pool,
            schema: schema.to_owned(),
        })
    }

    /// Which of Tributary's migrations the schema has: all of them are missing in a
    /// schema Tributary never connected to.
    pub async fn migration_status(&self) -> Result<MigrationStatus, StoreError> {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables
                            WHERE table_schema = $1 AND table_name = 'tributary_migrations')",
        )
        .bind(&self.schema)
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::db("look for tributary_migrations"))?;
        let applied = if exists {
            sqlx::query_scalar(&format!(
                "SELECT version FROM {}.tributary_migrations",
                self.schema
            ))
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::db("read tributary_migrations"))?
        } else {
            Vec::new()
        };
        Ok(MigrationStatus::compare(applied))
    }

    /// The pool; its connections use this store's schema.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The schema name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(StoreError::db("begin"))?;
        // One migrator at a time per schema, across processes.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tributary_migrations.' || $1))")
            .bind(&self.schema)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db("lock migrations"))?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS tributary_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .execute(&mut *tx)
        .await
        .map_err(StoreError::db("create tributary_migrations"))?;
        let applied: Vec<i32> = sqlx::query_scalar("SELECT version FROM tributary_migrations")
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::db("read tributary_migrations"))?;
        for (version, name, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            let fail = |source| StoreError::Migration {
                version: *version,
                name,
                source,
            };
            sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(fail)?;
            sqlx::query("INSERT INTO tributary_migrations (version, name) VALUES ($1, $2)")
                .bind(version)
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
            tracing::info!(version, name, schema = %self.schema, "applied Tributary migration");
        }
        tx.commit()
            .await
            .map_err(StoreError::db("commit migrations"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_status_compares_with_this_build() {
        assert_eq!(LATEST_MIGRATION, 3);
        let current = MigrationStatus::compare(vec![3, 1, 2]);
        assert!(current.is_current());
        assert_eq!(current.applied, vec![1, 2, 3]);
        let behind = MigrationStatus::compare(vec![1, 2]);
        assert!(!behind.is_current());
        assert_eq!(behind.missing, vec![(3, "dead_letter_discard")]);
        let ahead = MigrationStatus::compare(vec![1, 2, 3, 4]);
        assert!(ahead.is_current());
        assert_eq!(ahead.unknown, vec![4]);
        assert_eq!(MigrationStatus::compare(Vec::new()).missing.len(), 3);
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(validate_schema("tributary_it_1").is_ok());
        for bad in [
            "",
            "1abc",
            "Public",
            "a-b",
            "a;drop table x",
            &"a".repeat(64),
        ] {
            assert!(validate_schema(bad).is_err(), "{bad}");
        }
    }
}

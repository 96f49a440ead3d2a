//! Given events → expect rows, for projections, on a real Postgres schema.

use std::fmt::Debug;

use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{Connection as _, FromRow, PgConnection};

use crate::DomainEvent;
use crate::EventEnvelope;
use crate::projection::{HandlerError, Handles, Projection};
use crate::store::PgStore;

use tributary_core::testkit::line_diff;

/// A schema name no other test (or earlier run) uses: `{test}_{10 random hex
/// digits}`, lowercased, with `-` as `_`, cut to Postgres's 63 characters. Give each
/// [`ProjectionTest`] its own, so tests run in parallel.
pub fn unique_schema(test: &str) -> String {
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let mut test: String = test
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .take(51)
        .collect();
    if !test.starts_with(|c: char| c.is_ascii_lowercase()) {
        test.insert(0, 't');
        test.truncate(51);
    }
    format!("{test}_{}", &suffix[suffix.len() - 10..])
}

/// Runs a projection's handlers on given events against a real Postgres schema and
/// compares the rows of the read model.
///
/// [`ProjectionTest::new`] creates a fresh schema (through [`PgStore`], so the
/// connections' `search_path` is that schema, as a worker's are) and runs the
/// projection's [`Projection::migrate`] in a transaction. Each
/// [`ProjectionTest::given`] then applies its events in one transaction, as a worker
/// applies a batch of one partition: through [`Handles::handle_batch`] when the
/// handler is [`Handles::BATCHED`], else [`Handles::handle`] event by event; then
/// commits it. Failures panic with a clear message or a diff of the rows.
///
/// Needs Postgres (e.g. `DATABASE_URL` of `scripts/services.sh`). Tributary's own
/// tables are migrated into the schema too; checkpoints are not written.
///
/// ```no_run
/// # use sqlx::PgConnection;
/// # use tributary::projection::{HandlerError, Handles, Projection};
/// # use tributary::{Aggregate, Apply, DomainEvent, EventEnvelope};
/// # #[derive(Debug, Default, serde::Serialize, serde::Deserialize, Aggregate)]
/// # #[aggregate(name = "order", event = OrderEvent, error = OrderError)]
/// # struct Order;
/// # impl Apply<OrderEvent> for Order { fn apply(&mut self, _: &OrderEvent) {} }
/// # #[derive(Debug, serde::Serialize, serde::Deserialize, thiserror::Error)]
/// # #[error("never")]
/// # struct OrderError;
/// # #[derive(Debug, serde::Serialize, serde::Deserialize, DomainEvent)]
/// # #[event(aggregate = Order)]
/// # enum OrderEvent { Placed { total_cents: i64 } }
/// # struct OrderTotals;
/// # impl Projection for OrderTotals {
/// #     const NAME: &'static str = "order_totals";
/// #     async fn reset(&self, _: &mut PgConnection) -> Result<(), HandlerError> { Ok(()) }
/// # }
/// # impl Handles<OrderEvent> for OrderTotals {
/// #     async fn handle(&self, _: &EventEnvelope<OrderEvent>, _: &mut PgConnection) -> Result<(), HandlerError> { Ok(()) }
/// # }
/// use tributary::testkit::{ProjectionTest, envelope, unique_schema};
///
/// # async fn run() {
/// let url = std::env::var("DATABASE_URL").unwrap_or("postgres://postgres@127.0.0.1/test".into());
/// let mut test = ProjectionTest::new(OrderTotals, &url, &unique_schema("order_totals")).await;
/// test.given([
///     envelope("o-1", 1, OrderEvent::Placed { total_cents: 1250 }),
///     envelope("o-2", 1, OrderEvent::Placed { total_cents: 300 }),
/// ])
/// .await;
/// test.expect_rows(
///     "SELECT id, cents FROM order_totals ORDER BY id",
///     [("o-1".to_owned(), 1250_i64), ("o-2".to_owned(), 300)],
/// )
/// .await;
/// # }
/// ```
#[derive(Debug)]
pub struct ProjectionTest<P> {
    projection: P,
    store: PgStore,
    batches: usize,
}

impl<P: Projection> ProjectionTest<P> {
    /// Creates the schema `schema` on the database at `database_url` and runs the
    /// projection's `migrate`. Panics if the schema exists already (use
    /// [`unique_schema`]), or if Postgres or the migration fails.
    pub async fn new(projection: P, database_url: &str, schema: &str) -> Self {
        let mut conn = PgConnection::connect(database_url)
            .await
            .unwrap_or_else(|e| {
                panic!("ProjectionTest: no usable Postgres at {database_url}: {e}")
            });
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(schema)
                .fetch_one(&mut conn)
                .await
                .unwrap_or_else(|e| {
                    panic!("ProjectionTest: looking for schema {schema:?} failed: {e}")
                });
        let _ = conn.close().await;
        assert!(
            !exists,
            "ProjectionTest: schema {schema:?} exists already; give each test a fresh schema (tributary::testkit::unique_schema)"
        );
        let store = PgStore::connect_with(
            database_url,
            schema,
            PgPoolOptions::new().max_connections(2),
        )
        .await
        .unwrap_or_else(|e| panic!("ProjectionTest: connecting to schema {schema:?} failed: {e}"));
        Self::with_store(projection, store).await
    }

    /// Uses `store` as it is (its schema may hold data already) and runs the
    /// projection's `migrate`. Panics if the migration fails.
    pub async fn with_store(projection: P, store: PgStore) -> Self {
        let result: Result<(), HandlerError> = async {
            let mut tx = store.pool().begin().await?;
            projection.migrate(&mut tx).await?;
            tx.commit().await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            panic!(
                "ProjectionTest: migrate of projection `{}` failed: {e}",
                P::NAME
            );
        }
        Self {
            projection,
            store,
            batches: 0,
        }
    }

    /// The store: its pool's connections use the test's schema.
    pub fn store(&self) -> &PgStore {
        &self.store
    }

    /// Applies `events` in one transaction, as a worker applies a batch of one
    /// partition, and commits it. Call it again for the next batch, or for events of
    /// another aggregate type. Panics if a handler fails (nothing of the batch is
    /// committed then).
    pub async fn given<E: DomainEvent>(
        &mut self,
        events: impl IntoIterator<Item = EventEnvelope<E>>,
    ) -> &mut Self
    where
        P: Handles<E>,
    {
        let events: Vec<EventEnvelope<E>> = events.into_iter().collect();
        if let Err(e) = self.apply(&events).await {
            panic!(
                "ProjectionTest: projection `{}` failed on batch #{} (rolled back): {e}\nevents: {events:#?}",
                P::NAME,
                self.batches
            );
        }
        self
    }

    /// Like [`ProjectionTest::given`], but returns the handler's (or Postgres's)
    /// error instead of panicking; the batch is rolled back then.
    pub async fn try_given<E: DomainEvent>(
        &mut self,
        events: impl IntoIterator<Item = EventEnvelope<E>>,
    ) -> Result<(), HandlerError>
    where
        P: Handles<E>,
    {
        let events: Vec<EventEnvelope<E>> = events.into_iter().collect();
        self.apply(&events).await
    }

    async fn apply<E: DomainEvent>(
        &mut self,
        events: &[EventEnvelope<E>],
    ) -> Result<(), HandlerError>
    where
        P: Handles<E>,
    {
        self.batches += 1;
        // Dropping the transaction on an error rolls it back.
        let mut tx = self.store.pool().begin().await?;
        if <P as Handles<E>>::BATCHED {
            let batch: Vec<&EventEnvelope<E>> = events.iter().collect();
            self.projection.handle_batch(&batch, &mut tx).await?;
        } else {
            for event in events {
                self.projection.handle(event, &mut tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The rows `sql` returns, decoded as `T` (a tuple, or a type deriving
    /// `sqlx::FromRow`). Panics if the query fails.
    pub async fn rows<T>(&self, sql: &str) -> Vec<T>
    where
        T: for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        sqlx::query_as::<_, T>(sql)
            .fetch_all(self.store.pool())
            .await
            .unwrap_or_else(|e| panic!("ProjectionTest: query failed: {e}\nquery: {sql}"))
    }

    /// Asserts `sql` returns exactly the `expected` rows, in order (give the query an
    /// `ORDER BY`). On mismatch panics with a line diff of the rows.
    pub async fn expect_rows<T>(&self, sql: &str, expected: impl IntoIterator<Item = T>)
    where
        T: for<'r> FromRow<'r, PgRow> + Send + Unpin + Debug + PartialEq,
    {
        let expected: Vec<T> = expected.into_iter().collect();
        let actual: Vec<T> = self.rows(sql).await;
        if actual != expected {
            panic!(
                "{}",
                line_diff(
                    &format!(
                        "unexpected rows of projection `{}` (schema {})\nquery: {sql}",
                        P::NAME,
                        self.store.schema()
                    ),
                    &format!("{expected:#?}\n"),
                    &format!("{actual:#?}\n"),
                )
            );
        }
    }
}

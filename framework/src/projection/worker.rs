//! The projection worker: consumer group, checkpoints, batches, poison handling,
//! rebuild, lag and dead-letter replay.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;
use tracing::Instrument;

use crate::codec::{DecodeError, EventCodec};
use crate::config::KafkaConfig;
use crate::event::DomainEvent;
use crate::kafka::record_ref;
use crate::projection::checkpoint;
use crate::projection::config::{PoisonPolicy, ProjectionConfig};
use crate::projection::dead_letter::{self, DeadLetter, ReplaySummary};
use crate::projection::error::{PoisonReason, PoisonReport, ProjectionError};
use crate::projection::lag::{self, PartitionLag, WatermarkError};
use crate::projection::source::{CodecSource, Decoded, Source};
use crate::projection::status::{
    ProjectionHandle, ProjectionStatus, RebuildProgress, RebuildReport, Shutdown, WorkerState,
};
use crate::projection::topics;
use crate::projection::{HandlerError, Handles, Projection};
use crate::store::PgStore;

/// How long an idle worker waits for records before it looks at rebalances and
/// partitions to resynchronize again.
const IDLE_TICK: Duration = Duration::from_millis(250);
/// How often a worker whose topics do not all exist looks again.
const TOPIC_WAIT_POLL: Duration = Duration::from_millis(500);
/// How often it repeats its warning meanwhile.
const TOPIC_WAIT_LOG_INTERVAL: Duration = Duration::from_secs(30);
/// How often a live worker looks again whether a rebuild of its projection ended.
const REBUILD_POLL: Duration = Duration::from_secs(1);

/// `fetch.queue.backoff.ms` of the worker's consumer unless the Kafka settings set
/// it: see [`ProjectionWorker::consumer_config`].
const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// While a batch is applied, the prefetch of the next one lets the batch's
/// Postgres round trips go on after this many records.
const PREFETCH_YIELD_EVERY: usize = 64;

/// Runs a [`Projection`]: see the [module documentation](crate::projection).
///
/// Cloning is cheap; clones share the projection, the status and the settings, so
/// one clone can be spawned while another queries lag or replays dead letters.
pub struct ProjectionWorker<P: Projection> {
    projection: Arc<P>,
    store: PgStore,
    kafka: KafkaConfig,
    sources: Vec<Arc<dyn Source<P>>>,
    config: ProjectionConfig,
    status: Arc<watch::Sender<ProjectionStatus>>,
}

impl<P: Projection> Clone for ProjectionWorker<P> {
    fn clone(&self) -> Self {
        Self {
            projection: Arc::clone(&self.projection),
            store: self.store.clone(),
            kafka: self.kafka.clone(),
            sources: self.sources.clone(),
            config: self.config.clone(),
            status: Arc::clone(&self.status),
        }
    }
}

impl<P: Projection> fmt::Debug for ProjectionWorker<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectionWorker")
            .field("projection", &P::NAME)
            .field("topics", &self.topics())
            .field("store", &self.store)
            .field("kafka", &self.kafka)
            .field("config", &self.config)
            .finish()
    }
}

/// How a batch calls the handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `handle_batch` once for the batch.
    Batched,
    /// `handle` per event, which tells which event failed.
    PerEvent,
}

/// Why applying a partition's records stopped.
enum Failure {
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

/// A partition the worker applies.
#[derive(Clone)]
struct Part {
    /// Unique per assignment, so records collected before a rebalance are not
    /// applied under a later assignment of the same partition.
    id: u64,
    topic: String,
    partition: i32,
    source: usize,
    /// Next offset to apply as stored in Postgres (`None`: no row yet).
    checkpoint: Option<i64>,
    /// Next offset expected from the consumer.
    position: i64,
    /// `false` until the checkpoint is known and the consumer sought to it.
    ready: bool,
    /// The consumer reported the end of the partition and no record came since.
    at_end: bool,
    /// Applied by a live (group) worker, which yields to a running rebuild; `false`
    /// for the rebuild's own partitions.
    live: bool,
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
    /// A worker for `projection`, writing through `store` and reading from the
    /// cluster in `kafka`. Subscribe it to at least one events topic.
    pub fn new(projection: P, store: PgStore, kafka: KafkaConfig) -> Self {
        let (status, _) = watch::channel(ProjectionStatus::default());
        Self {
            projection: Arc::new(projection),
            store,
            kafka,
            sources: Vec::new(),
            config: ProjectionConfig::default(),
            status: Arc::new(status),
        }
    }

    /// Reads the events topic of `codec` (`{prefix}.{aggregate}.events`), decoding
    /// with it (upcasters included) and applying with `P`'s [`Handles<E>`].
    #[must_use]
    pub fn subscribe<E: DomainEvent>(mut self, codec: EventCodec<E>) -> Self
    where
        P: Handles<E>,
    {
        let topic = codec.events_topic();
        self.sources.push(Arc::new(CodecSource { codec, topic }));
        self
    }

    /// Replaces the settings.
    #[must_use]
    pub fn with_config(mut self, config: ProjectionConfig) -> Self {
        self.config = config;
        self
    }

    /// The settings.
    pub fn config(&self) -> &ProjectionConfig {
        &self.config
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// The topics read, in subscription order.
    pub fn topics(&self) -> Vec<String> {
        self.sources.iter().map(|s| s.topic().to_owned()).collect()
    }

    /// The consumer group id: [`ProjectionConfig::group_id`] or
    /// `tributary.{schema}.{projection}`.
    pub fn group_id(&self) -> String {
        self.config
            .group_id
            .clone()
            .unwrap_or_else(|| format!("tributary.{}.{}", self.store.schema(), P::NAME))
    }

    /// The current status (shared by all clones).
    pub fn status(&self) -> ProjectionStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<ProjectionStatus> {
        self.status.subscribe()
    }

    fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> ProjectionError {
        move |source| ProjectionError::Database {
            projection: P::NAME,
            operation,
            source,
        }
    }

    fn kafka_err(operation: &'static str) -> impl FnOnce(KafkaError) -> ProjectionError {
        move |source| ProjectionError::Kafka {
            projection: P::NAME,
            operation,
            source,
        }
    }

    fn watermark_err(error: WatermarkError) -> ProjectionError {
        match error {
            WatermarkError::MissingTopic(topic) => ProjectionError::MissingTopic {
                projection: P::NAME,
                topic,
            },
            WatermarkError::Kafka(operation, source) => ProjectionError::Kafka {
                projection: P::NAME,
                operation,
                source,
            },
        }
    }

    /// Runs the projection's `migrate` hook (idempotent; [`ProjectionWorker::run`]
    /// calls it too).
    pub async fn migrate(&self) -> Result<(), ProjectionError> {
        let mut tx = self.store.pool().begin().await.map_err(Self::db("begin"))?;
        lock_projection(&mut tx, P::NAME)
            .await
            .map_err(Self::db("lock projection"))?;
        self.projection
            .migrate(&mut tx)
            .await
            .map_err(|source| ProjectionError::Migrate {
                projection: P::NAME,
                source,
            })?;
        tx.commit().await.map_err(Self::db("commit migration"))
    }

    /// Starts the worker on a new task. Stop it with [`ProjectionHandle::shutdown`].
    pub fn spawn(self) -> ProjectionHandle {
        let (shutdown, mut signal) = watch::channel(false);
        let status = self.status.subscribe();
        let task = tokio::spawn(self.run(async move {
            if signal.wait_for(|stop| *stop).await.is_err() {
                // The handle is gone: nobody can ask for a shutdown any more.
                std::future::pending::<()>().await;
            }
        }));
        ProjectionHandle {
            projection: P::NAME,
            task,
            shutdown,
            status,
        }
    }

    /// Runs the worker until `shutdown` completes (then finishes the batch it is
    /// applying) or a poison record halts it ([`PoisonPolicy::Halt`]). Joins the
    /// projection's consumer group; partitions are spread over every worker of the
    /// group. Kafka and Postgres outages are logged and retried, not returned.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ProjectionError> {
        let mut shutdown = Shutdown::new(shutdown);
        self.status.send_modify(|s| {
            s.state = WorkerState::Starting;
            s.rebuild = None;
        });
        let result = self.run_group(&mut shutdown).await;
        self.status.send_modify(|s| {
            s.partitions.clear();
            s.state = match &result {
                Err(ProjectionError::Halted(report)) => WorkerState::Halted(report.clone()),
                _ => WorkerState::Stopped,
            };
        });
        result
    }

    fn consumer_config(&self) -> ClientConfig {
        let mut config = self.kafka.client_config();
        // librdkafka stops fetching a partition whose local queue is full and waits
        // `fetch.queue.backoff.ms` (default 1 s) before it looks again. A worker that
        // applies about as fast as it fetches drains the queue well within that and
        // then sits idle: measured ~0.5 s every ~120,000 records, 40 % of a rebuild.
        if config.get("fetch.queue.backoff.ms").is_none() {
            config.set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
        }
        config
            .set("group.id", self.group_id())
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true")
            .set(
                "session.timeout.ms",
                self.config.session_timeout.as_millis().to_string(),
            );
        config
    }

    fn create_consumer(&self) -> Result<StreamConsumer<RebalanceContext>, ProjectionError> {
        let context = RebalanceContext {
            projection: P::NAME,
            connect: self.store.pool().connect_options(),
            pending: Mutex::new(Vec::new()),
            flag: AtomicBool::new(false),
        };
        self.consumer_config()
            .create_with_context(context)
            .map_err(Self::kafka_err("consumer creation"))
    }

    async fn run_group(&self, shutdown: &mut Shutdown) -> Result<(), ProjectionError> {
        if self.sources.is_empty() {
            return Err(ProjectionError::NoSubscriptions {
                projection: P::NAME,
            });
        }
        self.migrate().await?;
        let topics = self.topics();
        if !self.await_topics(&topics, shutdown).await {
            return Ok(());
        }
        let consumer = self.create_consumer()?;
        let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topic_refs)
            .map_err(Self::kafka_err("subscribe"))?;
        tracing::info!(projection = P::NAME, group = %self.group_id(), topics = ?topics, "projection worker started");
        self.status.send_modify(|s| s.state = WorkerState::Running);
        let mut runner = Runner {
            worker: self,
            consumer,
            parts: Vec::new(),
            next_id: 0,
            eof: Vec::new(),
            group: true,
        };
        let result = runner.run(shutdown, None).await;
        runner.commit_kafka(CommitMode::Sync);
        runner.consumer.unsubscribe();
        tracing::info!(
            projection = P::NAME,
            ok = result.is_ok(),
            "projection worker stopped"
        );
        result
    }

    /// Waits until every topic of the worker exists (see `projection::topics`),
    /// reporting what it waits for in the status. False on shutdown.
    async fn await_topics(&self, topics: &[String], shutdown: &mut Shutdown) -> bool {
        let mut logged: Option<Instant> = None;
        loop {
            let message = match crate::kafka::missing_topics(
                self.kafka.client_config(),
                topics.to_vec(),
                topics::METADATA_TIMEOUT,
            )
            .await
            {
                Ok(missing) if missing.is_empty() => {
                    if logged.is_some() {
                        tracing::info!(projection = P::NAME, "every topic exists now");
                        self.status.send_modify(|s| s.last_error = None);
                    }
                    return true;
                }
                Ok(missing) => topics::waiting_message(&missing),
                Err(error) => format!("cannot read the topics' metadata ({error}); retrying"),
            };
            if logged.is_none_or(|at| at.elapsed() >= TOPIC_WAIT_LOG_INTERVAL) {
                tracing::warn!(projection = P::NAME, "{message}");
                logged = Some(Instant::now());
            }
            self.status.send_modify(|s| s.last_error = Some(message));
            tokio::select! {
                () = shutdown.wait() => return false,
                () = tokio::time::sleep(TOPIC_WAIT_POLL) => {}
            }
        }
    }

    /// Rebuilds the read model: runs `reset` and deletes the projection's checkpoints
    /// and dead letters (one transaction), then replays every topic from the start
    /// until it reaches the high-water marks read when the rebuild began. Progress
    /// (done/total, rate, ETA) is logged every [`ProjectionConfig::progress_interval`]
    /// and published in [`ProjectionStatus::rebuild`].
    ///
    /// The rebuild reads with manual partition assignment, outside every consumer
    /// group, so the other projections' workers go on serving. Workers of this
    /// projection may keep running: their next batch finds the checkpoint gone, rolls
    /// back and starts over from the rebuilt checkpoints (every batch is conditional
    /// on the checkpoint it started from, so the effect stays exactly-once), but
    /// stopping them during a rebuild saves work.
    pub async fn rebuild(&self) -> Result<RebuildReport, ProjectionError> {
        self.rebuild_until(std::future::pending()).await
    }

    /// [`ProjectionWorker::rebuild`], cancelled when `cancel` completes: the batch
    /// being applied finishes, then the rebuild returns
    /// [`ProjectionError::RebuildCancelled`]. The read model is then consistent up
    /// to the rebuild's checkpoints, and the live workers go on from there.
    ///
    /// While a rebuild runs it holds a Postgres advisory lock (session-level, so a
    /// crashed rebuild releases it with its connection). Live workers of the
    /// projection check it in every batch transaction and wait while it is held
    /// (status `last_error` says so), instead of replaying from the reset
    /// checkpoints alongside the rebuild. A second rebuild of the same projection
    /// waits for the first.
    pub async fn rebuild_until(
        &self,
        cancel: impl Future<Output = ()> + Send + 'static,
    ) -> Result<RebuildReport, ProjectionError> {
        if self.sources.is_empty() {
            return Err(ProjectionError::NoSubscriptions {
                projection: P::NAME,
            });
        }
        let options = self.store.pool().connect_options();
        let mut lock = PgConnection::connect_with(&options)
            .await
            .map_err(Self::db("connect for the rebuild lock"))?;
        sqlx::query("SELECT pg_advisory_lock(hashtext('tributary_rebuild.' || $1))")
            .bind(P::NAME)
            .execute(&mut lock)
            .await
            .map_err(Self::db("take the rebuild lock"))?;
        let result = self.rebuild_locked(Shutdown::new(cancel)).await;
        let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext('tributary_rebuild.' || $1))")
            .bind(P::NAME)
            .execute(&mut lock)
            .await;
        let _ = lock.close().await;
        result
    }

    async fn rebuild_locked(&self, mut cancel: Shutdown) -> Result<RebuildReport, ProjectionError> {
        let started = Instant::now();
        self.migrate().await?;
        let marks = lag::watermarks(self.kafka.client_config(), self.topics())
            .await
            .map_err(Self::watermark_err)?;

        let mut tx = self
            .store
            .pool()
            .begin()
            .await
            .map_err(Self::db("begin reset"))?;
        lock_projection(&mut tx, P::NAME)
            .await
            .map_err(Self::db("lock projection"))?;
        self.projection
            .reset(&mut tx)
            .await
            .map_err(|source| ProjectionError::Reset {
                projection: P::NAME,
                source,
            })?;
        for table in ["tributary_checkpoints", "tributary_dead_letters"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE projection = $1"))
                .bind(P::NAME)
                .execute(&mut *tx)
                .await
                .map_err(Self::db("delete checkpoints and dead letters"))?;
        }
        tx.commit().await.map_err(Self::db("commit reset"))?;

        let total: u64 = marks
            .iter()
            .map(|(_, _, low, high)| u64::try_from(high - low).unwrap_or(0))
            .sum();
        tracing::info!(
            projection = P::NAME,
            total,
            partitions = marks.len(),
            "rebuild: read model reset, replaying from the start"
        );

        let consumer = self.create_consumer()?;
        let mut assignment = TopicPartitionList::new();
        let mut parts = Vec::new();
        for (index, (topic, partition, _, _)) in marks.iter().enumerate() {
            assignment
                .add_partition_offset(topic, *partition, Offset::Beginning)
                .map_err(Self::kafka_err("assign"))?;
            let source = self
                .sources
                .iter()
                .position(|s| s.topic() == topic)
                .unwrap_or(0);
            parts.push(Part {
                id: index as u64,
                topic: topic.clone(),
                partition: *partition,
                source,
                checkpoint: None,
                position: 0,
                ready: true,
                at_end: false,
                live: false,
            });
        }
        consumer
            .assign(&assignment)
            .map_err(Self::kafka_err("assign"))?;
        let mut tracker = RebuildTracker {
            marks,
            total,
            started,
            last_log: Instant::now(),
            events_at_start: self.status.borrow().applied + self.status.borrow().parked,
        };
        self.status.send_modify(|s| {
            s.state = WorkerState::Rebuilding;
            s.rebuild = Some(RebuildProgress {
                total,
                ..RebuildProgress::default()
            });
        });
        let mut runner = Runner {
            worker: self,
            consumer,
            next_id: parts.len() as u64,
            parts,
            eof: Vec::new(),
            group: false,
        };
        let result = runner.run(&mut cancel, Some(&mut tracker)).await;
        let progress = tracker.progress(&runner.parts, self.events_done(&tracker));
        self.status.send_modify(|s| {
            s.state = WorkerState::Stopped;
            s.rebuild = Some(progress.clone());
        });
        result?;
        if cancel.fired() && progress.done < total {
            tracing::warn!(
                projection = P::NAME,
                events = progress.events,
                "rebuild cancelled"
            );
            return Err(ProjectionError::RebuildCancelled {
                projection: P::NAME,
                events: progress.events,
            });
        }
        let elapsed = started.elapsed();
        let report = RebuildReport {
            events: progress.events,
            offsets: progress.done,
            elapsed,
            events_per_sec: progress.events as f64 / elapsed.as_secs_f64().max(1e-9),
        };
        tracing::info!(
            projection = P::NAME,
            events = report.events,
            offsets = report.offsets,
            elapsed_ms = elapsed.as_millis() as u64,
            events_per_sec = report.events_per_sec as u64,
            "rebuild finished"
        );
        Ok(report)
    }

    fn events_done(&self, tracker: &RebuildTracker) -> u64 {
        let status = self.status.borrow();
        (status.applied + status.parked).saturating_sub(tracker.events_at_start)
    }

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
        let decoded = match source.decode(&letter.record()) {
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

    /// Applies the collected records, one partition after the other, each on a copy
    /// of its [`Part`] (the caller merges the copies back). Logs conflicts and
    /// outages (and waits `outage_backoff` after one, as the loop always did before
    /// the next partition); stops at a halt or a shutdown during a retry backoff.
    async fn apply_groups(
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

/// Whether a rebuild of `projection` holds its lock, asked inside a live worker's
/// batch transaction. A rebuild that crashed released it with its connection.
async fn rebuild_running<'e>(
    conn: impl sqlx::PgExecutor<'e>,
    projection: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT NOT pg_try_advisory_xact_lock_shared(hashtext('tributary_rebuild.' || $1))",
    )
    .bind(projection)
    .fetch_one(conn)
    .await
}

async fn lock_projection(conn: &mut PgConnection, projection: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tributary_projection.' || $1))")
        .bind(projection)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Offsets to reach and progress of a rebuild.
struct RebuildTracker {
    marks: lag::Watermarks,
    total: u64,
    started: Instant,
    last_log: Instant,
    events_at_start: u64,
}

impl RebuildTracker {
    fn position(parts: &[Part], topic: &str, partition: i32) -> Option<i64> {
        parts
            .iter()
            .find(|p| p.partition == partition && p.topic == topic)
            .and_then(|p| p.checkpoint)
    }

    /// Every partition reached the high-water mark read at the start, and the
    /// consumer saw its end. On Kafka the mark alone would do; waiting for the end
    /// as well costs one fetch round trip and covers brokers that under-report the
    /// mark (Tansu).
    fn finished(&self, parts: &[Part]) -> bool {
        self.marks.iter().all(|(topic, partition, low, high)| {
            parts
                .iter()
                .find(|p| p.partition == *partition && p.topic == *topic)
                .is_some_and(|p| p.at_end && p.checkpoint.unwrap_or(*low) >= *high)
        })
    }

    fn progress(&self, parts: &[Part], events: u64) -> RebuildProgress {
        let done: u64 = self
            .marks
            .iter()
            .map(|(topic, partition, low, high)| {
                let at = Self::position(parts, topic, *partition)
                    .unwrap_or(*low)
                    .min(*high);
                u64::try_from(at - low).unwrap_or(0)
            })
            .sum();
        let elapsed = self.started.elapsed();
        let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
        let eta = (rate > 0.0)
            .then(|| Duration::from_secs_f64(self.total.saturating_sub(done) as f64 / rate));
        RebuildProgress {
            done,
            total: self.total,
            events,
            rate_per_sec: rate,
            eta,
            elapsed,
        }
    }
}

/// Records of one partition received under one assignment, decoded on arrival.
struct Group {
    /// [`Part::id`].
    id: u64,
    messages: Vec<OwnedMessage>,
    /// `decoded[i]` is `messages[i]` decoded.
    decoded: Vec<Result<Decoded, DecodeError>>,
}

/// Records received but not applied yet.
#[derive(Default)]
struct Pending {
    groups: Vec<Group>,
    /// When the first of them arrived (`max_wait` counts from there).
    first_at: Option<tokio::time::Instant>,
}

impl Pending {
    fn largest(&self) -> usize {
        self.groups
            .iter()
            .map(|g| g.messages.len())
            .max()
            .unwrap_or(0)
    }

    /// Drops the records of partitions that are gone, were assigned anew, or wait
    /// to re-read their checkpoint.
    fn retain_ready(&mut self, parts: &[Part]) {
        self.groups
            .retain(|g| parts.iter().any(|p| p.id == g.id && p.ready));
        if self.groups.is_empty() {
            self.first_at = None;
        }
    }
}

/// The consume-apply loop shared by group workers and rebuilds.
struct Runner<'w, P: Projection> {
    worker: &'w ProjectionWorker<P>,
    consumer: StreamConsumer<RebalanceContext>,
    parts: Vec<Part>,
    next_id: u64,
    /// Partition numbers that reported end-of-partition since the last batch.
    eof: Vec<i32>,
    /// Member of the consumer group (commits advisory offsets).
    group: bool,
}

impl<P: Projection> Runner<'_, P> {
    async fn run(
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
            self.commit_kafka(CommitMode::Async);
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
        let mut deadline = tokio::time::Instant::now() + IDLE_TICK;
        if let Some(first) = pending.first_at {
            deadline = deadline.min(first + config.max_wait);
        }
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
                    let message = message.detach();
                    self.take_rebalance_events_dropping(pending);
                    if let Some(len) = self.accept(message, pending) {
                        if pending.first_at.is_none() {
                            let now = tokio::time::Instant::now();
                            pending.first_at = Some(now);
                            deadline = deadline.min(now + config.max_wait);
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

    /// Decodes a record and adds it to its partition's group, unless its partition
    /// is not ready or it was already received. Returns the group's size, `None` if
    /// dropped.
    fn accept(&mut self, message: OwnedMessage, pending: &mut Pending) -> Option<usize> {
        let part = self
            .parts
            .iter_mut()
            .find(|p| p.partition == message.partition() && p.topic == message.topic())?;
        if !part.ready || message.offset() < part.position {
            return None;
        }
        let source = self.worker.sources.get(part.source)?;
        part.position = message.offset() + 1;
        part.at_end = false;
        let decoded = source.decode(&record_ref(&message));
        let index = match pending.groups.iter().position(|g| g.id == part.id) {
            Some(index) => index,
            None => {
                pending.groups.push(Group {
                    id: part.id,
                    messages: Vec::new(),
                    decoded: Vec::new(),
                });
                pending.groups.len() - 1
            }
        };
        let group = &mut pending.groups[index];
        group.messages.push(message);
        group.decoded.push(decoded);
        Some(group.messages.len())
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
                let advanced = checkpoint::advance(
                    &mut tx,
                    P::NAME,
                    &part.topic,
                    part.partition,
                    part.checkpoint,
                    at,
                )
                .await?;
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
    fn commit_kafka(&self, mode: CommitMode) {
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

struct AssignedPartition {
    topic: String,
    partition: i32,
    /// The checkpoint, or why it could not be read.
    checkpoint: Result<Option<i64>, String>,
}

enum RebalanceEvent {
    Assigned(Vec<AssignedPartition>),
    Revoked(Vec<(String, i32)>),
    RevokedAll,
}

/// Assigns partitions at their Postgres checkpoints inside the rebalance callback,
/// so the consumer never starts from Kafka's committed offset, and records the
/// change for the worker loop.
struct RebalanceContext {
    projection: &'static str,
    connect: Arc<PgConnectOptions>,
    pending: Mutex<Vec<RebalanceEvent>>,
    flag: AtomicBool,
}

impl RebalanceContext {
    fn push(&self, event: RebalanceEvent) {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(event);
        self.flag.store(true, Ordering::Release);
    }

    fn has_pending(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    fn take(&self) -> Vec<RebalanceEvent> {
        if !self.flag.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(
            &mut *self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Reads the projection's checkpoints from a callback that cannot await: on a
    /// helper thread with its own runtime and connection (never the caller's pool,
    /// whose runtime may be the very thread this blocks).
    fn load_checkpoints(&self) -> Result<HashMap<(String, i32), i64>, String> {
        let options = Arc::clone(&self.connect);
        let projection = self.projection;
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async move {
                let mut last_error = String::new();
                for attempt in 0..3 {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    let load = async {
                        let mut conn = PgConnection::connect_with(&options).await?;
                        let rows = checkpoint::load_all(&mut conn, projection).await?;
                        let _ = conn.close().await;
                        Ok::<_, sqlx::Error>(rows)
                    };
                    match tokio::time::timeout(Duration::from_secs(10), load).await {
                        Ok(Ok(rows)) => {
                            return Ok(rows
                                .into_iter()
                                .map(|(topic, partition, next)| ((topic, partition), next))
                                .collect());
                        }
                        Ok(Err(error)) => last_error = error.to_string(),
                        Err(_) => last_error = "timed out after 10 s".to_owned(),
                    }
                }
                Err(last_error)
            })
        });
        thread
            .join()
            .unwrap_or_else(|_| Err("checkpoint loader thread panicked".to_owned()))
    }
}

impl ClientContext for RebalanceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        crate::kafka::log_client_error("projection consumer", error, reason);
    }
}

impl ConsumerContext for RebalanceContext {
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            base_consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let listed: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let loaded = self.load_checkpoints();
                if let Err(error) = &loaded {
                    tracing::error!(projection = self.projection, error = %error, "cannot read checkpoints on assignment; partitions stay paused until Postgres answers");
                }
                let mut unknown = TopicPartitionList::new();
                let mut assigned = Vec::with_capacity(listed.len());
                for (topic, partition) in listed {
                    let checkpoint = match &loaded {
                        Ok(map) => Ok(map.get(&(topic.clone(), partition)).copied()),
                        Err(error) => Err(error.clone()),
                    };
                    // An explicit offset: librdkafka looks nothing up, so a later
                    // seek cannot race with an offset lookup.
                    let offset = match &checkpoint {
                        Ok(Some(next)) => Offset::Offset(*next),
                        Ok(None) => Offset::Beginning,
                        Err(_) => {
                            unknown.add_partition(&topic, partition);
                            Offset::Offset(0)
                        }
                    };
                    if let Err(error) = tpl.set_partition_offset(&topic, partition, offset) {
                        tracing::error!(projection = self.projection, %topic, partition, error = %error, "cannot set the start offset");
                    }
                    assigned.push(AssignedPartition {
                        topic,
                        partition,
                        checkpoint,
                    });
                }
                let result = if cooperative {
                    base_consumer.incremental_assign(tpl)
                } else {
                    base_consumer.assign(tpl)
                };
                if let Err(error) = result {
                    tracing::error!(projection = self.projection, error = %error, "assign failed");
                }
                if unknown.count() > 0 {
                    let _ = base_consumer.pause(&unknown);
                }
                self.push(RebalanceEvent::Assigned(assigned));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.push(RebalanceEvent::Revoked(listed));
                let result = if cooperative {
                    base_consumer.incremental_unassign(tpl)
                } else {
                    base_consumer.unassign()
                };
                if let Err(error) = result {
                    tracing::error!(projection = self.projection, error = %error, "unassign failed");
                }
            }
            other => {
                tracing::error!(projection = self.projection, error = ?other, "rebalance error; dropping every partition");
                self.push(RebalanceEvent::RevokedAll);
                let _ = base_consumer.unassign();
            }
        }
    }
}

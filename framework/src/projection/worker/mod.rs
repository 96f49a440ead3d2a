//! The projection worker: the [`ProjectionWorker`] builder and its consumer-group
//! entry point. The rest lives in the submodules:
//! - `runner`: the consume-apply loop shared by group workers and rebuilds;
//! - `parts`: the partitions applied and the records received for them;
//! - `plan`: the pure planner of batches, retries and poison records;
//! - `outage`: which handler errors are outages, retried and never parked;
//! - `apply`: the Postgres transactions that carry the plan out;
//! - `rebuild`, `admin` (lag and dead letters), `rebalance` (the rebalance callback).

mod admin;
mod apply;
mod outage;
mod parts;
mod plan;
mod rebalance;
mod rebuild;
mod runner;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use sqlx::PgConnection;
use tokio::sync::watch;

use crate::DomainEvent;
use crate::codec::EventCodec;
use crate::config::KafkaConfig;
use crate::projection::error::ProjectionError;
use crate::projection::lag::WatermarkError;
use crate::projection::settings::ProjectionSettings;
use crate::projection::source::{CodecSource, Source};
use crate::projection::status::{ProjectionHandle, ProjectionStatus, Shutdown, WorkerState};
use crate::projection::topics;
use crate::projection::{Handles, Projection};
use crate::store::PgStore;
use crate::telemetry::ProjectionMetrics;
use crate::topics::{InvalidPrefix, events_topic, validate_prefix};

use rebalance::RebalanceContext;
use runner::Runner;

/// How often a worker whose topics do not all exist looks again.
const TOPIC_WAIT_POLL: Duration = Duration::from_millis(500);
/// How often it repeats its warning meanwhile.
const TOPIC_WAIT_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// Runs a [`Projection`]: see the [module documentation](crate::projection).
///
/// Cloning is cheap; clones share the projection, the status and the settings, so
/// one clone can be spawned while another queries lag or replays dead letters.
pub struct ProjectionWorker<P: Projection> {
    projection: Arc<P>,
    store: PgStore,
    kafka: KafkaConfig,
    sources: Vec<Arc<dyn Source<P>>>,
    /// The first invalid prefix given to [`Self::subscribe`], reported at start.
    invalid_prefix: Option<InvalidPrefix>,
    config: ProjectionSettings,
    status: Arc<watch::Sender<ProjectionStatus>>,
    metrics: ProjectionMetrics,
}

impl<P: Projection> Clone for ProjectionWorker<P> {
    fn clone(&self) -> Self {
        Self {
            projection: Arc::clone(&self.projection),
            store: self.store.clone(),
            kafka: self.kafka.clone(),
            sources: self.sources.clone(),
            invalid_prefix: self.invalid_prefix.clone(),
            config: self.config.clone(),
            status: Arc::clone(&self.status),
            metrics: self.metrics.clone(),
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
            invalid_prefix: None,
            config: ProjectionSettings::default(),
            status: Arc::new(status),
            metrics: ProjectionMetrics::new(P::NAME),
        }
    }

    /// Reads the events topic of `E`'s aggregate under `prefix`
    /// (`{prefix}.{aggregate}.events`), decoding with `codec` (upcasters included)
    /// and applying with `P`'s [`Handles<E>`]. An invalid prefix is reported when the
    /// worker starts ([`ProjectionError::Prefix`]).
    #[must_use]
    pub fn subscribe<E: DomainEvent>(mut self, prefix: &str, codec: EventCodec<E>) -> Self
    where
        P: Handles<E>,
    {
        if let Err(invalid) = validate_prefix(prefix) {
            self.invalid_prefix.get_or_insert(invalid);
        }
        let topic = events_topic(prefix, E::AGGREGATE);
        self.sources.push(Arc::new(CodecSource { codec, topic }));
        self
    }

    /// Adds a subscription read through `source` (the framework's own projections,
    /// such as the event index, that read records their own way).
    pub(crate) fn subscribe_source(mut self, prefix: &str, source: Arc<dyn Source<P>>) -> Self {
        if let Err(invalid) = validate_prefix(prefix) {
            self.invalid_prefix.get_or_insert(invalid);
        }
        self.sources.push(source);
        self
    }

    /// Replaces the settings (checked when the worker starts: see
    /// [`ProjectionSettings::validate`]).
    #[must_use]
    pub fn settings(mut self, settings: ProjectionSettings) -> Self {
        self.config = settings;
        self
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// The topics read, in subscription order.
    pub fn topics(&self) -> Vec<String> {
        self.sources.iter().map(|s| s.topic().to_owned()).collect()
    }

    /// The consumer group id: [`ProjectionSettings::group_id`] or
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
            source: crate::kafka::KafkaOpError { operation, source },
        }
    }

    fn watermark_err(error: WatermarkError) -> ProjectionError {
        match error {
            WatermarkError::MissingTopic(topic) => ProjectionError::MissingTopic {
                projection: P::NAME,
                topic,
            },
            WatermarkError::Kafka(source) => ProjectionError::Kafka {
                projection: P::NAME,
                source,
            },
            WatermarkError::Thread(detail) => ProjectionError::Task {
                projection: P::NAME,
                detail: format!("watermark request: {detail}"),
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
            // Asked to stop, or the handle is gone (its drop asks to stop too).
            let _ = signal.wait_for(|stop| *stop).await;
        }));
        ProjectionHandle {
            projection: P::NAME,
            task: Some(task),
            shutdown,
            status,
        }
    }

    /// Runs the worker until `shutdown` completes (then finishes the batch it is
    /// applying) or a poison record halts it
    /// ([`PoisonPolicy::Halt`](crate::projection::PoisonPolicy::Halt)). Joins the
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
        crate::kafka::clients::projection_consumer(
            &self.kafka,
            self.group_id(),
            self.config.session_timeout,
        )
    }

    fn create_consumer(&self) -> Result<StreamConsumer<RebalanceContext>, ProjectionError> {
        let context = RebalanceContext {
            projection: P::NAME,
            connect: self.store.pool().connect_options(),
            pending: Mutex::new(Vec::new()),
            flag: AtomicBool::new(false),
            ends: Mutex::new(HashMap::new()),
        };
        self.consumer_config()
            .create_with_context(context)
            .map_err(Self::kafka_err("consumer creation"))
    }

    /// The checks before a run or a rebuild: subscriptions and settings.
    fn check(&self) -> Result<(), ProjectionError> {
        if let Some(invalid) = &self.invalid_prefix {
            return Err(ProjectionError::Prefix {
                projection: P::NAME,
                source: invalid.clone(),
            });
        }
        if self.sources.is_empty() {
            return Err(ProjectionError::NoSubscriptions {
                projection: P::NAME,
            });
        }
        self.config
            .validate()
            .map_err(|source| ProjectionError::Settings {
                projection: P::NAME,
                source,
            })
    }

    async fn run_group(&self, shutdown: &mut Shutdown) -> Result<(), ProjectionError> {
        self.check()?;
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
}

async fn lock_projection(conn: &mut PgConnection, projection: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tributary_projection.' || $1))")
        .bind(projection)
        .execute(conn)
        .await
        .map(|_| ())
}

//! Wiring: configuration, and starting each role of the shop (processors,
//! projection workers, process manager) on the real broker and Postgres.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use serde::Serialize;
use tributary::command::{
    CommandGateway, CommandProcessor, GatewayError, ProcessorError, ProcessorHandle,
    ProcessorSettings, TopicSettings,
};
use tributary::projection::{
    Handles, PartitionLag, Projection, ProjectionError, ProjectionHandle, ProjectionSettings,
    ProjectionWorker, RetryPolicy, WorkerState,
};
use tributary::{DomainEvent, EventCodec, KafkaConfig, PgStore, StoreError};

use crate::inventory::{Inventory, InventoryEvent};
use crate::order::{Order, OrderEvent};
use crate::projections::{Notifications, OrderSummaries, StockLevels};
use crate::saga::Fulfilment;

/// Why the shop could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    /// Postgres is unreachable or the schema is invalid.
    #[error("Postgres: {0} (is it running? `bash scripts/services.sh up` starts it)")]
    Store(#[from] StoreError),
    /// A command processor failed.
    #[error(transparent)]
    Processor(#[from] ProcessorError),
    /// A projection worker failed.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// The command gateway could not connect.
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    /// A database query of the shop failed.
    #[error("Postgres query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// The HTTP listener failed.
    #[error("HTTP server: {0}")]
    Http(#[from] std::io::Error),
    /// Bad command line or environment.
    #[error("{0}")]
    Usage(String),
    /// A component of the process stopped without being asked to.
    #[error("{component} stopped: {reason}")]
    Died {
        /// Which.
        component: Component,
        /// Why, as far as the process knows.
        reason: String,
    },
}

/// Where the shop runs. `ShopConfig::from_env()` reads the environment.
#[derive(Debug, Clone)]
pub struct ShopConfig {
    /// The Kafka cluster (`KAFKA_BOOTSTRAP_SERVERS`, plus any librdkafka property
    /// as `TRIBUTARY_KAFKA_<PROPERTY>`: see `KafkaConfig::from_env`).
    pub kafka: KafkaConfig,
    /// Topic prefix (`SHOP_TOPIC_PREFIX`, default `shop`): topics are
    /// `{prefix}.order.events`, `{prefix}.inventory.commands`, ….
    pub prefix: String,
    /// Postgres (`DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`).
    pub database_url: String,
    /// Postgres schema of the snapshots, checkpoints and read models
    /// (`SHOP_SCHEMA`, default `shop`).
    pub schema: String,
    /// Partitions of each aggregate's topics (when they are created).
    pub partitions: i32,
    /// Consumer-group session timeout of processors and workers: how fast the work
    /// of a crashed process moves to another.
    pub session_timeout: Duration,
    /// How long the API and the process manager wait for a command's outcome.
    pub command_timeout: Duration,
}

impl ShopConfig {
    /// The configuration from the environment, with the defaults above.
    pub fn from_env() -> Self {
        let env = |key: &str, default: &str| std::env::var(key).unwrap_or_else(|_| default.into());
        Self {
            kafka: KafkaConfig::from_env(),
            prefix: env("SHOP_TOPIC_PREFIX", "shop"),
            database_url: env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"),
            schema: env("SHOP_SCHEMA", "shop"),
            partitions: 4,
            session_timeout: Duration::from_secs(6),
            command_timeout: Duration::from_secs(10),
        }
    }

    /// Connects to Postgres (creating the schema and framework tables).
    pub async fn store(&self) -> Result<PgStore, ShopError> {
        Ok(PgStore::connect(&self.database_url, &self.schema).await?)
    }

    /// A command gateway for the API, the demo or the process manager.
    pub async fn gateway(&self) -> Result<CommandGateway, ShopError> {
        Ok(CommandGateway::connect_with_timeout(
            self.kafka.clone(),
            &self.prefix,
            self.command_timeout,
        )
        .await?)
    }

    fn processor_settings(&self) -> ProcessorSettings {
        ProcessorSettings {
            session_timeout: self.session_timeout,
            ..ProcessorSettings::default()
        }
    }

    fn topic_settings(&self) -> TopicSettings {
        TopicSettings {
            partitions: self.partitions,
            reply_partitions: self.partitions,
            ..TopicSettings::default()
        }
    }

    /// Starts an order command processor (creating the order topics if missing). It
    /// decides the commands listed in `#[aggregate(commands(..))]` on [`Order`].
    pub async fn start_order_processor(
        &self,
        store: &PgStore,
    ) -> Result<ProcessorHandle, ShopError> {
        Ok(
            CommandProcessor::<Order>::new(self.kafka.clone(), &self.prefix)?
                .snapshots(store.clone())
                .settings(self.processor_settings())
                .topics(self.topic_settings())
                .start()
                .await?,
        )
    }

    /// Starts an inventory command processor (creating the inventory topics if missing).
    /// It decides the commands listed in `#[aggregate(commands(..))]` on [`Inventory`].
    pub async fn start_inventory_processor(
        &self,
        store: &PgStore,
    ) -> Result<ProcessorHandle, ShopError> {
        Ok(
            CommandProcessor::<Inventory>::new(self.kafka.clone(), &self.prefix)?
                .snapshots(store.clone())
                .settings(self.processor_settings())
                .topics(self.topic_settings())
                .start()
                .await?,
        )
    }

    fn projection_settings(&self) -> ProjectionSettings {
        ProjectionSettings {
            session_timeout: self.session_timeout,
            max_wait: Duration::from_millis(10),
            ..ProjectionSettings::default()
        }
    }

    /// A worker of `projection` reading the events of `E`.
    fn worker<P, E>(&self, projection: P, store: &PgStore) -> ProjectionWorker<P>
    where
        P: Handles<E>,
        E: DomainEvent,
    {
        ProjectionWorker::new(projection, store.clone(), self.kafka.clone())
            .subscribe(&self.prefix, EventCodec::<E>::new())
            .settings(self.projection_settings())
    }

    /// The worker of the `order_summaries` read model.
    pub fn order_summaries(&self, store: &PgStore) -> ProjectionWorker<OrderSummaries> {
        self.worker::<_, OrderEvent>(OrderSummaries, store)
    }

    /// The worker of the `stock_levels` read model.
    pub fn stock_levels(&self, store: &PgStore) -> ProjectionWorker<StockLevels> {
        self.worker::<_, InventoryEvent>(StockLevels, store)
    }

    /// The worker of the `notifications` read model.
    pub fn notifications(&self, store: &PgStore) -> ProjectionWorker<Notifications> {
        self.worker::<_, OrderEvent>(Notifications, store)
    }

    /// The embedded operations CLI (`example-shop admin …`): every `tributary`
    /// subcommand, with the order and inventory codecs (decoded `events`, `--state`)
    /// and the read models' workers on `store` (`dead-letters replay`,
    /// `projections rebuild`). `--prefix`, `--schema` and `--database-url` default
    /// to this configuration's. The fulfilment process manager is not registered:
    /// replaying or rebuilding it would send its commands again.
    pub fn admin(&self, store: &PgStore) -> tributary_cli::Admin {
        self.admin_codecs()
            .projection(self.order_summaries(store))
            .projection(self.stock_levels(store))
            .projection(self.notifications(store))
    }

    /// [`ShopConfig::admin`] without the workers (which need a store).
    fn admin_codecs(&self) -> tributary_cli::Admin {
        tributary_cli::Admin::new()
            .program_name("example-shop admin")
            .default_prefix(self.prefix.clone())
            .default_schema(self.schema.clone())
            .default_database_url(self.database_url.clone())
            .aggregate::<Order>(EventCodec::new())
            .aggregate::<Inventory>(EventCodec::new())
    }

    /// Runs `example-shop admin <args>` on standard output. The workers use the
    /// `--schema` and `--database-url` given in `args`, else this configuration's;
    /// when Postgres cannot be reached the commands that need it report so (exit 3)
    /// and the others (`events`, `topics`, `--help`) still run.
    pub async fn run_admin(&self, args: &[String]) -> tributary_cli::Exit {
        let option = |name: &str| {
            let inline = format!("{name}=");
            args.iter().enumerate().find_map(|(i, arg)| {
                if arg == name {
                    args.get(i + 1).cloned()
                } else {
                    arg.strip_prefix(&inline).map(str::to_owned)
                }
            })
        };
        let mut config = self.clone();
        if let Some(url) = option("--database-url") {
            config.database_url = url;
        }
        // The workers' schema, given to the CLI too (TRIBUTARY_SCHEMA, which it
        // would read otherwise, is not the shop's setting).
        let mut argv = vec!["example-shop admin".to_owned()];
        match option("--schema") {
            Some(schema) => config.schema = schema,
            None => argv.extend(["--schema".to_owned(), config.schema.clone()]),
        }
        argv.extend(args.iter().cloned());
        match PgStore::connect_without_migrating(&config.database_url, &config.schema).await {
            Ok(store) => config.admin(&store).run_stdout(argv).await,
            Err(_) => config.admin_codecs().run_stdout(argv).await,
        }
    }

    /// The worker running the order-fulfilment process manager. It retries a
    /// batch whose commands got no outcome (broker or processor down) for as long
    /// as it takes, rather than parking the events.
    pub fn fulfilment(
        &self,
        store: &PgStore,
        gateway: CommandGateway,
    ) -> ProjectionWorker<Fulfilment> {
        let settings = ProjectionSettings {
            retry: RetryPolicy {
                max_attempts: u32::MAX,
                initial_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(5),
            },
            ..self.projection_settings()
        };
        ProjectionWorker::new(Fulfilment::new(gateway), store.clone(), self.kafka.clone())
            .subscribe(&self.prefix, EventCodec::<OrderEvent>::new())
            .subscribe(&self.prefix, EventCodec::<InventoryEvent>::new())
            .settings(settings)
    }
}

/// What one process of the shop runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The HTTP API.
    Api,
    /// The order command processor.
    OrderProcessor,
    /// The inventory command processor.
    InventoryProcessor,
    /// The read-model projection workers and the process manager.
    Projections,
}

impl Role {
    /// Every role: the all-in-one process.
    pub const ALL: [Role; 4] = [
        Role::Api,
        Role::OrderProcessor,
        Role::InventoryProcessor,
        Role::Projections,
    ];

    /// `api`, `order-processor`, `inventory-processor` or `projections`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::OrderProcessor => "order-processor",
            Role::InventoryProcessor => "inventory-processor",
            Role::Projections => "projections",
        }
    }

    /// Parses `api`, `order-processor`, `inventory-processor`, `projections`.
    pub fn parse(s: &str) -> Result<Self, ShopError> {
        match s {
            "api" => Ok(Role::Api),
            "order-processor" => Ok(Role::OrderProcessor),
            "inventory-processor" => Ok(Role::InventoryProcessor),
            "projections" => Ok(Role::Projections),
            other => Err(ShopError::Usage(format!(
                "unknown role {other:?}; use api, order-processor, inventory-processor or projections"
            ))),
        }
    }
}

/// One long-running task of a shop process: a command processor or a projection
/// worker. A [`Role`] other than [`Role::Api`] is one or more of them; `/health`
/// reports each by [`Component::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// The order command processor (`order-processor`).
    OrderProcessor,
    /// The inventory command processor (`inventory-processor`).
    InventoryProcessor,
    /// The worker of the `order_summaries` read model.
    OrderSummaries,
    /// The worker of the `stock_levels` read model.
    StockLevels,
    /// The worker of the `notifications` read model.
    Notifications,
    /// The worker running the fulfilment process manager (`order_fulfilment`).
    Fulfilment,
}

impl Component {
    /// Every component, in the order they start: the processors first (they create
    /// the topics the workers read).
    pub const ALL: [Component; 6] = [
        Component::OrderProcessor,
        Component::InventoryProcessor,
        Component::OrderSummaries,
        Component::StockLevels,
        Component::Notifications,
        Component::Fulfilment,
    ];

    /// The name `/health` and the logs use: the role's name for a processor, the
    /// projection's name for a worker.
    pub fn name(self) -> &'static str {
        match self {
            Component::OrderProcessor => "order-processor",
            Component::InventoryProcessor => "inventory-processor",
            Component::OrderSummaries => <OrderSummaries as Projection>::NAME,
            Component::StockLevels => <StockLevels as Projection>::NAME,
            Component::Notifications => <Notifications as Projection>::NAME,
            Component::Fulfilment => <Fulfilment as Projection>::NAME,
        }
    }

    /// `command-processor` or `projection-worker`.
    pub fn kind(self) -> &'static str {
        if self.is_processor() {
            "command-processor"
        } else {
            "projection-worker"
        }
    }

    /// The role it belongs to.
    pub fn role(self) -> Role {
        match self {
            Component::OrderProcessor => Role::OrderProcessor,
            Component::InventoryProcessor => Role::InventoryProcessor,
            _ => Role::Projections,
        }
    }

    fn is_processor(self) -> bool {
        matches!(
            self,
            Component::OrderProcessor | Component::InventoryProcessor
        )
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Reads a projection's lag (a clone of its worker, kept for that).
type LagProbe =
    Arc<dyn Fn() -> BoxFuture<Result<Vec<PartitionLag>, ProjectionError>> + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// How long `/health` waits for the projections' lag (a Kafka metadata request).
const LAG_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the watchdog looks for components that ended.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// What a component's slot holds.
enum Task {
    Processor(ProcessorHandle),
    Worker(ProjectionHandle),
    /// Ended without being asked to: why.
    Dead(String),
    /// Shut down on purpose.
    Stopped,
}

struct Slot {
    component: Component,
    task: Task,
    lag: Option<LagProbe>,
    /// Counts restarts, so that a late report about an earlier task does not
    /// overwrite the new one.
    generation: u64,
}

struct Shared {
    config: ShopConfig,
    store: PgStore,
    slots: Mutex<Vec<Slot>>,
    watchdog: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The running components of one shop process, watched.
///
/// Cheap to clone; clones share the components (the API's `/health` holds one,
/// see [`crate::api::ApiState::with_roles`]). A watchdog task notices within a
/// quarter of a second when a component ends without being asked to (its task
/// panicked, was aborted, or returned an error), logs it with the reason, and from
/// then on [`Running::health`] reports it dead, so `/health` answers 503 naming it.
#[derive(Clone)]
pub struct Running {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let slots = self.slots();
        let mut list = f.debug_map();
        for slot in slots.iter() {
            let state = match &slot.task {
                Task::Processor(_) | Task::Worker(_) => "running".to_owned(),
                Task::Dead(why) => format!("dead: {why}"),
                Task::Stopped => "stopped".to_owned(),
            };
            list.entry(&slot.component.name(), &state);
        }
        list.finish()
    }
}

/// A partition a command processor cannot read (see
/// [`tributary::command::ProcessorStats::quarantined_partitions`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuarantinedPartition {
    /// The partition.
    pub partition: i32,
    /// Why its events cannot be read.
    pub reason: String,
}

/// What [`Running::health`] says about one component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentHealth {
    /// [`Component::name`].
    pub name: &'static str,
    /// [`Component::kind`].
    pub kind: &'static str,
    /// Whether its task is running.
    pub alive: bool,
    /// Why it is not running, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// A processor's partitions whose events it cannot read: their commands fail.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<QuarantinedPartition>,
    /// The commands partitions a processor owns now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<Vec<i32>>,
    /// A worker's state: `starting`, `running`, `rebuilding`, `halted`, `stopped`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<&'static str>,
    /// A worker's last Kafka or Postgres error since its last good batch (it
    /// retries; not a failure by itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// A projection's lag: events written but not yet applied, over all its
    /// partitions (offsets, so transaction markers count too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Why the lag could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_error: Option<String>,
}

impl ComponentHealth {
    /// What makes the process unhealthy, if anything: the component is not
    /// running, or it cannot read some of its partitions.
    pub fn problem(&self) -> Option<String> {
        if let Some(why) = &self.stopped {
            return Some(format!("{} {} is not running: {why}", self.kind, self.name));
        }
        if !self.quarantined.is_empty() {
            let partitions: Vec<String> = self
                .quarantined
                .iter()
                .map(|q| format!("{} ({})", q.partition, q.reason))
                .collect();
            return Some(format!(
                "{} {} cannot read partition(s) {}",
                self.kind,
                self.name,
                partitions.join(", ")
            ));
        }
        None
    }
}

fn worker_state(state: &WorkerState) -> &'static str {
    match state {
        WorkerState::Starting => "starting",
        WorkerState::Running => "running",
        WorkerState::Rebuilding => "rebuilding",
        WorkerState::Halted(_) => "halted",
        WorkerState::Stopped => "stopped",
    }
}

impl Running {
    fn new(config: &ShopConfig, store: &PgStore) -> Self {
        Self {
            shared: Arc::new(Shared {
                config: config.clone(),
                store: store.clone(),
                slots: Mutex::new(Vec::new()),
                watchdog: Mutex::new(None),
            }),
        }
    }

    fn slots(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.shared
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The components this process runs (running or not).
    pub fn components(&self) -> Vec<Component> {
        self.slots().iter().map(|s| s.component).collect()
    }

    /// Puts a started component in its slot and makes sure the watchdog runs.
    fn install(&self, component: Component, task: Task, lag: Option<LagProbe>) {
        {
            let mut slots = self.slots();
            match slots.iter_mut().find(|s| s.component == component) {
                Some(slot) => {
                    slot.task = task;
                    slot.lag = lag;
                    slot.generation += 1;
                }
                None => slots.push(Slot {
                    component,
                    task,
                    lag,
                    generation: 0,
                }),
            }
        }
        let mut watchdog = self
            .shared
            .watchdog
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if watchdog.is_none() {
            *watchdog = Some(tokio::spawn(watch(Arc::downgrade(&self.shared))));
        }
    }

    /// Takes the task out of `component`'s slot, leaving `replacement`.
    fn take(&self, component: Component, replacement: Task) -> Option<(Task, u64)> {
        let mut slots = self.slots();
        let slot = slots.iter_mut().find(|s| s.component == component)?;
        Some((
            std::mem::replace(&mut slot.task, replacement),
            slot.generation,
        ))
    }

    /// Records why `component` (of `generation`) ended, unless it was restarted
    /// or stopped meanwhile.
    fn record_death(&self, component: Component, generation: u64, why: String) {
        let mut slots = self.slots();
        if let Some(slot) = slots
            .iter_mut()
            .find(|s| s.component == component && s.generation == generation)
            && matches!(slot.task, Task::Dead(_))
        {
            slot.task = Task::Dead(why);
        }
    }

    /// Finds the components whose task ended without being asked to, joins them
    /// for the reason, logs it and marks them dead.
    async fn reap(&self) {
        let ended: Vec<(Component, Task, u64)> = {
            let mut slots = self.slots();
            slots
                .iter_mut()
                .filter(|s| match &s.task {
                    Task::Processor(h) => h.is_finished(),
                    Task::Worker(h) => h.is_finished(),
                    Task::Dead(_) | Task::Stopped => false,
                })
                .map(|s| {
                    let task =
                        std::mem::replace(&mut s.task, Task::Dead("its task ended".to_owned()));
                    (s.component, task, s.generation)
                })
                .collect()
        };
        for (component, task, generation) in ended {
            let why = match task {
                Task::Processor(handle) => match handle.shutdown().await {
                    Ok(()) => "its thread ended without an error".to_owned(),
                    Err(error) => error.to_string(),
                },
                Task::Worker(handle) => match handle.join().await {
                    Ok(()) => "its task ended without an error".to_owned(),
                    Err(error) => error.to_string(),
                },
                Task::Dead(why) => why,
                Task::Stopped => continue,
            };
            tracing::error!(
                component = component.name(),
                reason = %why,
                "a component of the shop stopped; /health answers 503 until it is restarted"
            );
            self.record_death(component, generation, why);
        }
    }

    /// The state of every component, with each projection's lag. Call
    /// [`ComponentHealth::problem`] to see whether one makes the process unhealthy.
    pub async fn health(&self) -> Vec<ComponentHealth> {
        self.reap().await;
        let (mut report, probes): (Vec<ComponentHealth>, Vec<Option<LagProbe>>) = self
            .slots()
            .iter()
            .map(|slot| {
                let mut health = ComponentHealth {
                    name: slot.component.name(),
                    kind: slot.component.kind(),
                    alive: false,
                    stopped: None,
                    quarantined: Vec::new(),
                    partitions: None,
                    state: None,
                    last_error: None,
                    lag: None,
                    lag_error: None,
                };
                match &slot.task {
                    Task::Processor(handle) => {
                        health.alive = true;
                        health.partitions = Some(handle.stats().owned_partitions());
                        health.quarantined = handle
                            .stats()
                            .quarantined_partitions()
                            .into_iter()
                            .map(|(partition, reason)| QuarantinedPartition { partition, reason })
                            .collect();
                    }
                    Task::Worker(handle) => {
                        let status = handle.status();
                        health.alive = true;
                        health.state = Some(worker_state(&status.state));
                        health.last_error = status.last_error;
                    }
                    Task::Dead(why) => health.stopped = Some(why.clone()),
                    Task::Stopped => health.stopped = Some("shut down".to_owned()),
                }
                (health, slot.lag.clone())
            })
            .unzip();
        let mut lags = tokio::task::JoinSet::new();
        for (index, probe) in probes.into_iter().enumerate() {
            if let Some(probe) = probe {
                lags.spawn(
                    async move { (index, tokio::time::timeout(LAG_TIMEOUT, probe()).await) },
                );
            }
        }
        while let Some(joined) = lags.join_next().await {
            let Ok((index, result)) = joined else {
                continue;
            };
            let Some(health) = report.get_mut(index) else {
                continue;
            };
            match result {
                Ok(Ok(partitions)) => health.lag = Some(partitions.iter().map(|p| p.lag).sum()),
                Ok(Err(error)) => health.lag_error = Some(error.to_string()),
                Err(_) => {
                    health.lag_error = Some(format!("no answer within {LAG_TIMEOUT:?}"));
                }
            }
        }
        report
    }

    /// Waits until a component ends without being asked to; returns which and why.
    /// A process without the HTTP API exits then (nothing else would tell).
    pub async fn first_death(&self) -> (Component, String) {
        loop {
            self.reap().await;
            let dead = self.slots().iter().find_map(|s| match &s.task {
                Task::Dead(why) => Some((s.component, why.clone())),
                _ => None,
            });
            if let Some(dead) = dead {
                return dead;
            }
            tokio::time::sleep(WATCH_EVERY).await;
        }
    }

    /// Stops `component` as a crash would: a processor is killed (no snapshots,
    /// no hand-over), a worker's task is aborted (its open batch rolls back). The
    /// process then reports it dead, as after a real crash, until
    /// [`Running::restart`]. Returns whether it was running.
    pub async fn kill(&self, component: Component) -> bool {
        let processor = {
            let mut slots = self.slots();
            let Some(slot) = slots.iter_mut().find(|s| s.component == component) else {
                return false;
            };
            match &slot.task {
                // The aborted task stays in its slot: the watchdog finds it ended,
                // as it would find a crashed one.
                Task::Worker(handle) => {
                    handle.abort();
                    return true;
                }
                Task::Processor(_) => {
                    match std::mem::replace(&mut slot.task, Task::Dead("killed".to_owned())) {
                        Task::Processor(handle) => handle,
                        other => {
                            slot.task = other;
                            return false;
                        }
                    }
                }
                Task::Dead(_) | Task::Stopped => return false,
            }
        };
        processor.abort();
        let _ = processor.join().await;
        tracing::warn!(component = component.name(), "killed");
        true
    }

    /// Starts `component` again in this process (after a crash or a
    /// [`Running::kill`]); a running one is killed first.
    pub async fn restart(&self, component: Component) -> Result<(), ShopError> {
        self.kill(component).await;
        if let Some((Task::Worker(handle), _)) =
            self.take(component, Task::Dead("restarting".to_owned()))
        {
            // Aborted by `kill`: let it end before its successor starts.
            let _ = handle.join().await;
        }
        match self
            .shared
            .config
            .start_component(component, &self.shared.store)
            .await
        {
            Ok((task, lag)) => {
                self.install(component, task, lag);
                Ok(())
            }
            Err(error) => {
                self.take(component, Task::Dead(format!("restart failed: {error}")));
                Err(error)
            }
        }
    }

    /// Stops everything gracefully: workers first (they finish their batch), then
    /// the processors (they snapshot and hand over). Returns the first error.
    pub async fn shutdown(&self) -> Result<(), ShopError> {
        if let Some(watchdog) = self
            .shared
            .watchdog
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            watchdog.abort();
        }
        let (mut workers, mut processors) = (Vec::new(), Vec::new());
        for slot in self.slots().iter_mut() {
            if matches!(slot.task, Task::Processor(_) | Task::Worker(_)) {
                match std::mem::replace(&mut slot.task, Task::Stopped) {
                    Task::Worker(handle) => workers.push(handle),
                    Task::Processor(handle) => processors.push(handle),
                    Task::Dead(_) | Task::Stopped => {}
                }
            }
        }
        let mut result = Ok(());
        for worker in workers {
            let outcome = worker.shutdown().await;
            if result.is_ok() {
                result = outcome.map_err(ShopError::from);
            }
        }
        for processor in processors {
            let outcome = processor.shutdown().await;
            if result.is_ok() {
                result = outcome.map_err(ShopError::from);
            }
        }
        result
    }
}

/// The watchdog: reaps ended components until the [`Running`] is gone.
async fn watch(shared: Weak<Shared>) {
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        Running { shared }.reap().await;
    }
}

impl ShopConfig {
    /// Starts the given roles except [`Role::Api`] (the caller serves the API with
    /// [`crate::api::router`], passing the result to
    /// [`crate::api::ApiState::with_roles`]). Processors start first: they create
    /// the topics the workers read. If one component fails to start, the ones
    /// already started are shut down.
    pub async fn start(&self, roles: &[Role], store: &PgStore) -> Result<Running, ShopError> {
        let running = Running::new(self, store);
        for component in Component::ALL {
            if !roles.contains(&component.role()) {
                continue;
            }
            match self.start_component(component, store).await {
                Ok((task, lag)) => running.install(component, task, lag),
                Err(error) => {
                    let _ = running.shutdown().await;
                    return Err(error);
                }
            }
        }
        Ok(running)
    }

    async fn start_component(
        &self,
        component: Component,
        store: &PgStore,
    ) -> Result<(Task, Option<LagProbe>), ShopError> {
        Ok(match component {
            Component::OrderProcessor => (
                Task::Processor(self.start_order_processor(store).await?),
                None,
            ),
            Component::InventoryProcessor => (
                Task::Processor(self.start_inventory_processor(store).await?),
                None,
            ),
            Component::OrderSummaries => spawn(self.order_summaries(store)).await?,
            Component::StockLevels => spawn(self.stock_levels(store)).await?,
            Component::Notifications => spawn(self.notifications(store)).await?,
            Component::Fulfilment => spawn(self.fulfilment(store, self.gateway().await?)).await?,
        })
    }

    /// Creates the read-model tables (idempotent), for an API process that runs
    /// without the workers.
    pub async fn migrate_read_models(&self, store: &PgStore) -> Result<(), ShopError> {
        self.order_summaries(store).migrate().await?;
        self.stock_levels(store).migrate().await?;
        self.notifications(store).migrate().await?;
        Ok(())
    }
}

/// Migrates and spawns `worker`, keeping a clone to read its lag.
async fn spawn<P: Projection>(
    worker: ProjectionWorker<P>,
) -> Result<(Task, Option<LagProbe>), ShopError> {
    worker.migrate().await?;
    let probe = worker.clone();
    let lag: LagProbe = Arc::new(move || {
        let worker = probe.clone();
        Box::pin(async move { worker.lag().await })
    });
    Ok((Task::Worker(worker.spawn()), Some(lag)))
}

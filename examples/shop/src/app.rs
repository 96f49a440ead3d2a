//! Wiring: configuration, and starting each role of the shop (processors,
//! projection workers, process manager) on the real broker and Postgres.

use std::time::Duration;

use tributary::command::{
    CommandGateway, CommandProcessor, GatewayError, ProcessorError, ProcessorHandle,
    ProcessorSettings, TopicSettings,
};
use tributary::projection::{
    Handles, Projection, ProjectionConfig, ProjectionError, ProjectionHandle, ProjectionWorker,
    RetryPolicy,
};
use tributary::{DomainEvent, EventCodec, InvalidPrefix, KafkaConfig, PgStore, StoreError};

use crate::inventory::{Inventory, InventoryEvent, ReleaseStock, ReserveStock, Restock, ShipStock};
use crate::order::{
    CancelOrder, MarkPaid, MarkShipped, Order, OrderEvent, PlaceOrder, RecordReservation,
};
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
    /// The topic prefix is not usable.
    #[error(transparent)]
    Prefix(#[from] InvalidPrefix),
    /// A database query of the shop failed.
    #[error("Postgres query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// The HTTP listener failed.
    #[error("HTTP server: {0}")]
    Http(#[from] std::io::Error),
    /// Bad command line or environment.
    #[error("{0}")]
    Usage(String),
}

/// Where the shop runs. `ShopConfig::from_env()` reads the environment.
#[derive(Debug, Clone)]
pub struct ShopConfig {
    /// The Kafka cluster (`KAFKA_BOOTSTRAP_SERVERS`, plus any `KAFKA_*` property).
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
        Ok(
            CommandGateway::connect_with_timeout(&self.kafka, &self.prefix, self.command_timeout)
                .await?,
        )
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

    /// Starts an order command processor (creating the order topics if missing).
    pub async fn start_order_processor(
        &self,
        store: &PgStore,
    ) -> Result<ProcessorHandle, ShopError> {
        Ok(
            CommandProcessor::<Order>::new(self.kafka.clone(), &self.prefix)?
                .handle::<PlaceOrder>()
                .handle::<RecordReservation>()
                .handle::<CancelOrder>()
                .handle::<MarkPaid>()
                .handle::<MarkShipped>()
                .snapshots(store.clone())
                .settings(self.processor_settings())
                .topics(self.topic_settings())
                .start()
                .await?,
        )
    }

    /// Starts an inventory command processor (creating the inventory topics if missing).
    pub async fn start_inventory_processor(
        &self,
        store: &PgStore,
    ) -> Result<ProcessorHandle, ShopError> {
        Ok(
            CommandProcessor::<Inventory>::new(self.kafka.clone(), &self.prefix)?
                .handle::<Restock>()
                .handle::<ReserveStock>()
                .handle::<ReleaseStock>()
                .handle::<ShipStock>()
                .snapshots(store.clone())
                .settings(self.processor_settings())
                .topics(self.topic_settings())
                .start()
                .await?,
        )
    }

    fn projection_config(&self) -> ProjectionConfig {
        ProjectionConfig::default()
            .with_session_timeout(self.session_timeout)
            .with_max_wait(Duration::from_millis(10))
    }

    /// A worker of `projection` reading the events of `E`.
    fn worker<P, E>(&self, projection: P, store: &PgStore) -> Result<ProjectionWorker<P>, ShopError>
    where
        P: Handles<E>,
        E: DomainEvent,
    {
        Ok(
            ProjectionWorker::new(projection, store.clone(), self.kafka.clone())
                .subscribe(EventCodec::<E>::new(self.prefix.clone())?)
                .with_config(self.projection_config()),
        )
    }

    /// The worker of the `order_summaries` read model.
    pub fn order_summaries(
        &self,
        store: &PgStore,
    ) -> Result<ProjectionWorker<OrderSummaries>, ShopError> {
        self.worker::<_, OrderEvent>(OrderSummaries, store)
    }

    /// The worker of the `stock_levels` read model.
    pub fn stock_levels(
        &self,
        store: &PgStore,
    ) -> Result<ProjectionWorker<StockLevels>, ShopError> {
        self.worker::<_, InventoryEvent>(StockLevels, store)
    }

    /// The worker of the `notifications` read model.
    pub fn notifications(
        &self,
        store: &PgStore,
    ) -> Result<ProjectionWorker<Notifications>, ShopError> {
        self.worker::<_, OrderEvent>(Notifications, store)
    }

    /// The worker running the order-fulfilment process manager. It retries a
    /// batch whose commands got no outcome (broker or processor down) for as long
    /// as it takes, rather than parking the events.
    pub fn fulfilment(
        &self,
        store: &PgStore,
        gateway: CommandGateway,
    ) -> Result<ProjectionWorker<Fulfilment>, ShopError> {
        let config = self.projection_config().with_retry(RetryPolicy {
            max_attempts: u32::MAX,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        });
        Ok(
            ProjectionWorker::new(Fulfilment::new(gateway), store.clone(), self.kafka.clone())
                .subscribe(EventCodec::<OrderEvent>::new(self.prefix.clone())?)
                .subscribe(EventCodec::<InventoryEvent>::new(self.prefix.clone())?)
                .with_config(config),
        )
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

/// The running parts of one shop process.
#[derive(Debug, Default)]
pub struct Running {
    /// The order processor, if this process runs it.
    pub order_processor: Option<ProcessorHandle>,
    /// The inventory processor, if this process runs it.
    pub inventory_processor: Option<ProcessorHandle>,
    /// The projection workers and the process manager, if this process runs them.
    pub workers: Vec<ProjectionHandle>,
}

impl Running {
    /// The stats of the command processors in this process, by name.
    pub fn processor_stats(
        &self,
    ) -> Vec<(
        &'static str,
        std::sync::Arc<tributary::command::ProcessorStats>,
    )> {
        [
            ("order", &self.order_processor),
            ("inventory", &self.inventory_processor),
        ]
        .into_iter()
        .filter_map(|(name, handle)| {
            handle
                .as_ref()
                .map(|h| (name, std::sync::Arc::clone(h.stats())))
        })
        .collect()
    }
}

impl ShopConfig {
    /// Starts the given roles except [`Role::Api`] (the caller serves the API with
    /// [`crate::api::router`]). Processors start first: they create the topics the
    /// workers read.
    pub async fn start(&self, roles: &[Role], store: &PgStore) -> Result<Running, ShopError> {
        let mut running = Running::default();
        if roles.contains(&Role::OrderProcessor) {
            running.order_processor = Some(self.start_order_processor(store).await?);
        }
        if roles.contains(&Role::InventoryProcessor) {
            running.inventory_processor = Some(self.start_inventory_processor(store).await?);
        }
        if roles.contains(&Role::Projections) {
            running.workers = self.start_workers(store).await?;
        }
        Ok(running)
    }

    /// Starts the three read-model workers and the process manager.
    pub async fn start_workers(&self, store: &PgStore) -> Result<Vec<ProjectionHandle>, ShopError> {
        let gateway = self.gateway().await?;
        Ok(vec![
            spawn(self.order_summaries(store)?).await?,
            spawn(self.stock_levels(store)?).await?,
            spawn(self.notifications(store)?).await?,
            spawn(self.fulfilment(store, gateway)?).await?,
        ])
    }

    /// Creates the read-model tables (idempotent), for an API process that runs
    /// without the workers.
    pub async fn migrate_read_models(&self, store: &PgStore) -> Result<(), ShopError> {
        self.order_summaries(store)?.migrate().await?;
        self.stock_levels(store)?.migrate().await?;
        self.notifications(store)?.migrate().await?;
        Ok(())
    }
}

async fn spawn<P: Projection>(worker: ProjectionWorker<P>) -> Result<ProjectionHandle, ShopError> {
    worker.migrate().await?;
    Ok(worker.spawn())
}

impl Running {
    /// Stops everything gracefully: workers first (they finish their batch), then
    /// the processors (they snapshot and hand over).
    pub async fn shutdown(self) -> Result<(), ShopError> {
        for worker in self.workers {
            worker.shutdown().await?;
        }
        if let Some(p) = self.order_processor {
            p.shutdown().await?;
        }
        if let Some(p) = self.inventory_processor {
            p.shutdown().await?;
        }
        Ok(())
    }
}

//! Shared support for the integration tests: where the services are, unique names
//! per test so tests run in parallel, and small admin helpers.
//!
//! A missing broker or database is a test failure with instructions, never a skip.

#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod node;
pub mod projection_support;
pub mod proxy;
pub mod raw_log;
pub mod shop_support;

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

pub mod bench_load;
pub mod cluster;
pub mod command_support;
pub mod container_cluster;
pub mod containers;
pub mod load;
pub mod transaction_support;

/// How to start the services, printed when one is missing.
pub const HOW_TO_START: &str = "start the local services with `eval \"$(scripts/services.sh up)\"` \
     (or `docker compose up -d --wait`), or point KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL at yours";

/// The broker's bootstrap servers: in container mode ([`containers::mode`]) the Kafka
/// container of this test binary, else `KAFKA_BOOTSTRAP_SERVERS`, default
/// `127.0.0.1:9092`. Panics with instructions when no broker answers there.
pub fn kafka_bootstrap() -> String {
    init_tracing();
    let servers = match containers::mode() {
        containers::ServicesMode::Containers => containers::shared().kafka_bootstrap.clone(),
        containers::ServicesMode::Local => {
            std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
        }
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .create()
        .expect("cannot create a Kafka client");
    if let Err(err) = consumer.fetch_metadata(None, Duration::from_secs(10)) {
        panic!("no Kafka-protocol broker answers at {servers} ({err}): {HOW_TO_START}");
    }
    servers
}

/// A line for benchmark output: the bootstrap servers, how many brokers answer and
/// which broker software `scripts/services.sh` ran (`TRIBUTARY_BROKER`, default
/// Apache Kafka).
pub fn describe_broker(bootstrap: &str) -> String {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("cannot create a Kafka client");
    let brokers = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map(|m| m.brokers().len())
        .unwrap_or(0);
    let kind = match std::env::var("TRIBUTARY_BROKER").as_deref() {
        Ok("tansu") => "Tansu 0.6.0 (memory storage)",
        _ => {
            "Apache Kafka 4.1.1 from scripts/services.sh, unless KAFKA_BOOTSTRAP_SERVERS points elsewhere"
        }
    };
    format!("{bootstrap}, {brokers} broker(s); {kind}")
}

/// Logs to the test output, filtered by `RUST_LOG` (default: warnings).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Postgres: in container mode the Postgres container of this test binary, else
/// `DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`.
pub fn database_url() -> String {
    match containers::mode() {
        containers::ServicesMode::Containers => containers::shared().database_url.clone(),
        containers::ServicesMode::Local => std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
    }
}

/// A [`tributary::PgStore`] in its own schema (named after `prefix`), migrated.
/// Panics with instructions when Postgres does not answer.
pub async fn pg_store(prefix: &str) -> tributary::PgStore {
    let schema = prefix.replace('-', "_").to_ascii_lowercase();
    let url = database_url();
    tributary::PgStore::connect(&url, &schema)
        .await
        .unwrap_or_else(|e| panic!("no usable Postgres at {url} ({e}): {HOW_TO_START}"))
}

/// A topic prefix no other test (or earlier run) uses: `it-{test}-{random}`.
pub fn unique_prefix(test: &str) -> String {
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    format!("it-{test}-{}", &suffix[suffix.len() - 10..])
}

/// Creates `topic` with `partitions` partitions (replication factor 1) and waits
/// until its metadata shows them.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    create_topic_with(
        bootstrap,
        topic,
        partitions,
        &[("cleanup.policy", "delete"), ("retention.ms", "-1")],
    )
    .await;
}

/// Creates `topic` with `partitions` partitions and the given topic configs, and
/// waits until its metadata shows them.
pub async fn create_topic_with(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) {
    let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (key, value) in configs {
        new_topic = new_topic.set(key, value);
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("cannot create an admin client");
    let results = admin
        .create_topics(
            &[new_topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create_topics request failed");
    for result in results {
        result.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("cannot create a Kafka client");
    for _ in 0..50 {
        if let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))
            && md.topics().iter().any(|t| {
                t.name() == topic
                    && t.error().is_none()
                    && t.partitions().len() == partitions as usize
            })
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("topic {topic} did not appear with {partitions} partitions");
}

//! A counter aggregate and helpers for the command-side tests.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tributary::{Aggregate, Apply, Command, DomainEvent, EventCodec, EventEnvelope, Handle, kafka};

/// Events of the test counter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = Counter)]
pub enum CounterEvent {
    /// The counter went up.
    Incremented {
        /// By how much.
        by: u32,
    },
    /// A note was attached (changes nothing; lets tests write large events).
    Noted {
        /// The note.
        text: String,
    },
}

/// Domain errors of the counter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum CounterError {
    /// `Check` found another value.
    #[error("expected {expected}, the counter is at {actual}")]
    Mismatch {
        /// What the command expected.
        expected: u64,
        /// The counter's value.
        actual: u64,
    },
    /// `Increment` by 0.
    #[error("increment by zero")]
    Zero,
}

/// A counter; snapshots every 10 events.
#[derive(Debug, Default, Clone, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "counter", event = CounterEvent, error = CounterError, snapshot_every = 10)]
#[aggregate(commands(Increment, Check, Note))]
pub struct Counter {
    /// The sum of all increments.
    pub value: u64,
}

impl Apply<CounterEvent> for Counter {
    fn apply(&mut self, event: &CounterEvent) {
        match event {
            CounterEvent::Incremented { by } => self.value += u64::from(*by),
            CounterEvent::Noted { .. } => {}
        }
    }
}

/// Adds `by` (rejected when 0).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(aggregate = Counter)]
pub struct Increment {
    /// The counter.
    #[aggregate_id]
    pub id: String,
    /// How much.
    pub by: u32,
}

/// Accepted without events if the counter is at `expected`, rejected otherwise:
/// lets a test read the processor's in-memory state.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(aggregate = Counter)]
pub struct Check {
    /// The counter.
    #[aggregate_id]
    pub id: String,
    /// The value it should have.
    pub expected: u64,
}

/// Attaches `copies` notes, each `text` repeated `repeat` times: lets a test make a
/// command, an event or an outcome of any size.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(aggregate = Counter)]
pub struct Note {
    /// The counter.
    #[aggregate_id]
    pub id: String,
    /// The note.
    pub text: String,
    /// Events to emit.
    pub copies: u32,
    /// How often `text` is repeated in each event.
    pub repeat: u32,
}

impl Handle<Note> for Counter {
    fn handle(&self, c: Note) -> Result<Vec<CounterEvent>, CounterError> {
        let text = c.text.repeat(c.repeat as usize);
        Ok((0..c.copies)
            .map(|_| CounterEvent::Noted { text: text.clone() })
            .collect())
    }
}

impl Handle<Increment> for Counter {
    fn handle(&self, c: Increment) -> Result<Vec<CounterEvent>, CounterError> {
        if c.by == 0 {
            return Err(CounterError::Zero);
        }
        Ok(vec![CounterEvent::Incremented { by: c.by }])
    }
}

impl Handle<Check> for Counter {
    fn handle(&self, c: Check) -> Result<Vec<CounterEvent>, CounterError> {
        if self.value == c.expected {
            Ok(vec![])
        } else {
            Err(CounterError::Mismatch {
                expected: c.expected,
                actual: self.value,
            })
        }
    }
}

/// Processor settings for tests: a short session timeout, so that a killed or
/// frozen processor's partitions move within seconds. The poll interval stays above
/// the time one Kafka operation may take while a broker fails over (tests of a
/// stalled processor shorten it). For benchmarks, `TRIBUTARY_BATCH_LINGER_MS` sets
/// `batch_linger`, `TRIBUTARY_GATHER_AFTER_COMMIT_US` sets `gather_after_commit` (in
/// microseconds) and `TRIBUTARY_MAX_TRANSACTIONS_AT_ONCE` sets
/// `max_transactions_at_once` (in-process processors and `counter_node` alike).
pub fn test_settings() -> tributary::command::ProcessorSettings {
    let mut settings = tributary::command::ProcessorSettings {
        session_timeout: Duration::from_secs(6),
        max_poll_interval: Duration::from_secs(45),
        ..Default::default()
    };
    if let Some(ms) = env_number("TRIBUTARY_BATCH_LINGER_MS") {
        settings.batch_linger = Duration::from_millis(ms);
    }
    if let Some(us) = env_number("TRIBUTARY_GATHER_AFTER_COMMIT_US") {
        settings.gather_after_commit = Duration::from_micros(us);
    }
    if let Some(n) = env_number("TRIBUTARY_MAX_TRANSACTIONS_AT_ONCE") {
        settings.max_transactions_at_once = n;
    }
    settings
}

/// The environment variable `name` as a number, if it is set and reads as one.
fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The Kafka settings of the counter's processors and gateways: `bootstrap`, and
/// for benchmarks and debugging the librdkafka `debug` and `linger.ms` of
/// `TRIBUTARY_KAFKA_DEBUG` and `TRIBUTARY_KAFKA_LINGER_MS` when set.
pub fn counter_kafka(bootstrap: &str) -> tributary::KafkaConfig {
    let mut kafka = tributary::KafkaConfig::new(bootstrap);
    for (var, property) in [
        ("TRIBUTARY_KAFKA_DEBUG", "debug"),
        ("TRIBUTARY_KAFKA_LINGER_MS", "linger.ms"),
    ] {
        if let Ok(value) = std::env::var(var) {
            kafka = kafka.set(property, value);
        }
    }
    kafka
}

/// Sends `Increment { id, by: 1 }` and returns the counter's new version. Panics on
/// an error or a rejection, which the counter never gives for `by: 1`.
pub async fn increment(gateway: &tributary::command::CommandGateway, id: &str) -> u64 {
    match gateway
        .send(Increment {
            id: id.into(),
            by: 1,
        })
        .await
        .expect("send")
    {
        tributary::command::CommandOutcome::Accepted { version, .. } => version,
        tributary::command::CommandOutcome::Rejected(e) => panic!("aggregate {id}: {e}"),
    }
}

/// A processor for the counter with [`test_settings`].
pub fn counter_processor(
    bootstrap: &str,
    prefix: &str,
    partitions: i32,
) -> tributary::command::CommandProcessor<Counter> {
    tributary::command::CommandProcessor::<Counter>::new(counter_kafka(bootstrap), prefix)
        .expect("valid prefix")
        .settings(test_settings())
        .topics(tributary::command::TopicSettings {
            partitions,
            reply_partitions: 4,
            ..Default::default()
        })
}

/// Every committed event of the counter's events topic, per aggregate id, in
/// partition order, read with a plain read_committed consumer.
pub fn read_counter_events(
    bootstrap: &str,
    prefix: &str,
) -> BTreeMap<String, Vec<EventEnvelope<CounterEvent>>> {
    read_events::<CounterEvent>(bootstrap, prefix)
}

/// Every committed event of `E`'s events topic, per aggregate id, in partition
/// order, read with a plain read_committed consumer.
pub fn read_events<E: DomainEvent>(
    bootstrap: &str,
    prefix: &str,
) -> BTreeMap<String, Vec<EventEnvelope<E>>> {
    let codec = crate::projection_support::EventsTopic::<E>::new(prefix);
    let topic = codec.name.clone();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{prefix}-verify"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata.topics()[0].partitions().len() as i32;
    let mut out: BTreeMap<String, Vec<EventEnvelope<E>>> = BTreeMap::new();
    for p in 0..partitions {
        let (_, high) = consumer
            .fetch_watermarks(&topic, p, Duration::from_secs(10))
            .expect("watermarks");
        if high == 0 {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, p, Offset::Beginning)
            .expect("tpl");
        consumer.assign(&tpl).expect("assign");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let position = consumer
                .position()
                .ok()
                .and_then(|tpl| {
                    tpl.find_partition(&topic, p)
                        .and_then(|e| e.offset().to_raw())
                })
                .unwrap_or(0);
            if position >= high {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "reading {topic}/{p} timed out at {position} of {high}"
            );
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                let message = message.expect("consume");
                let envelope = codec
                    .codec
                    .decode(&kafka::record_ref(&message))
                    .expect("decodable event");
                out.entry(envelope.aggregate_id.to_string())
                    .or_default()
                    .push(envelope);
                if message.offset() + 1 >= high {
                    break;
                }
            }
        }
    }
    out
}

/// Asserts every aggregate's sequences are exactly 1..=n and returns n per aggregate.
pub fn assert_gapless<E>(
    events: &BTreeMap<String, Vec<EventEnvelope<E>>>,
) -> BTreeMap<String, u64> {
    events
        .iter()
        .map(|(id, list)| {
            let sequences: Vec<u64> = list.iter().map(|e| e.sequence).collect();
            let expected: Vec<u64> = (1..=list.len() as u64).collect();
            assert_eq!(
                sequences, expected,
                "aggregate {id}: sequences are not 1..=n"
            );
            (id.clone(), list.len() as u64)
        })
        .collect()
}

/// A projection of the counter's events that records every event it applies
/// (`counter_log`), so a test can compare what a reader saw with the log.
#[derive(Debug, Clone, Default)]
pub struct CounterLog;

impl tributary::projection::Projection for CounterLog {
    const NAME: &'static str = "counter_log";

    async fn migrate(
        &self,
        tx: &mut sqlx::PgConnection,
    ) -> Result<(), tributary::projection::HandlerError> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS counter_log (
                n bigserial PRIMARY KEY, event_id uuid NOT NULL, aggregate_id text NOT NULL,
                sequence bigint NOT NULL, causation_id text NOT NULL)",
        )
        .execute(tx)
        .await?;
        Ok(())
    }

    async fn reset(
        &self,
        tx: &mut sqlx::PgConnection,
    ) -> Result<(), tributary::projection::HandlerError> {
        sqlx::query("TRUNCATE counter_log").execute(tx).await?;
        Ok(())
    }
}

impl tributary::projection::Handles<CounterEvent> for CounterLog {
    async fn handle(
        &self,
        event: &EventEnvelope<CounterEvent>,
        tx: &mut sqlx::PgConnection,
    ) -> Result<(), tributary::projection::HandlerError> {
        sqlx::query(
            "INSERT INTO counter_log (event_id, aggregate_id, sequence, causation_id)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(event.id)
        .bind(event.aggregate_id.as_str())
        .bind(i64::try_from(event.sequence)?)
        .bind(event.metadata.causation_id.clone().unwrap_or_default())
        .execute(tx)
        .await?;
        Ok(())
    }
}

/// The event ids `counter_log` holds, in the order they were applied.
pub async fn counter_log_ids(store: &tributary::PgStore) -> Vec<String> {
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT event_id FROM counter_log ORDER BY n")
        .fetch_all(store.pool())
        .await
        .expect("read counter_log");
    ids.into_iter().map(|id| id.to_string()).collect()
}

/// A worker of [`CounterLog`] on the counter's events under `prefix`.
pub fn counter_log_worker(
    bootstrap: &str,
    prefix: &str,
    store: tributary::PgStore,
) -> tributary::projection::ProjectionWorker<CounterLog> {
    tributary::projection::ProjectionWorker::new(
        CounterLog,
        store,
        tributary::KafkaConfig::new(bootstrap),
    )
    .subscribe(prefix, EventCodec::<CounterEvent>::new())
    .settings(crate::projection_support::test_config())
}

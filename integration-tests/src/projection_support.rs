//! Support for the projection tests: a test projection (account totals with fault
//! injection), producers (plain, raw and transactional), and an independent reader
//! that computes the expected read model straight from the log.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use tokio::sync::Notify;
use tributary::projection::{HandlerError, Handles, Projection, ProjectionSettings, RetryPolicy};
use tributary::{
    Aggregate, Apply, DomainEvent, EncodedRecord, EventCodec, EventEnvelope, KafkaConfig, PgStore,
    topics,
};

pub use crate::database_url;

/// One aggregate type's events topic under a test prefix, with a codec and the
/// `ce_source` the command processor writes: the tests produce events to it as the
/// framework would.
#[derive(Debug, Clone)]
pub struct EventsTopic<E> {
    /// The codec (with any upcasters), as a projection subscribes with it.
    pub codec: EventCodec<E>,
    /// The topic prefix.
    pub prefix: String,
    /// `{prefix}.{aggregate}.events`.
    pub name: String,
    /// `/{prefix}/{aggregate}`.
    pub source: String,
}

impl<E: DomainEvent> EventsTopic<E> {
    /// `E`'s events topic under `prefix`, with a codec without upcasters.
    pub fn new(prefix: &str) -> Self {
        Self::with_codec(prefix, EventCodec::new())
    }

    /// `E`'s events topic under `prefix`, encoding and decoding with `codec`.
    pub fn with_codec(prefix: &str, codec: EventCodec<E>) -> Self {
        Self {
            codec,
            prefix: prefix.to_owned(),
            name: topics::events_topic(prefix, E::AGGREGATE),
            source: topics::event_source(prefix, E::AGGREGATE),
        }
    }

    /// `envelope` as the processor would write it to this topic.
    pub fn encode(&self, envelope: &EventEnvelope<E>) -> EncodedRecord {
        self.codec
            .encode(envelope, &self.source)
            .unwrap_or_else(|e| panic!("test event does not encode: {e}"))
    }
}

/// A store in a schema of its own, named after the test prefix.
pub async fn test_store(prefix: &str) -> PgStore {
    let schema = prefix.to_ascii_lowercase().replace('-', "_");
    PgStore::connect(&database_url(), &schema)
        .await
        .unwrap_or_else(|e| panic!("cannot use Postgres ({e}): {}", crate::HOW_TO_START))
}

/// Kafka settings for the test broker.
pub fn kafka_config(bootstrap: &str) -> KafkaConfig {
    KafkaConfig::new(bootstrap)
}

/// Worker settings for tests: short session timeout (a killed worker's partitions
/// move within seconds), small batches, fast retries.
pub fn test_config() -> ProjectionSettings {
    ProjectionSettings {
        session_timeout: Duration::from_secs(6),
        batch_size: 200,
        max_wait: Duration::from_millis(20),
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        },
        progress_interval: Duration::from_millis(200),
        ..ProjectionSettings::default()
    }
}

/// The test aggregate: only its name and events matter to the projection tests.
#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "account", event = AccountEvent, error = AccountError)]
pub struct Account;

impl Apply<AccountEvent> for Account {
    fn apply(&mut self, _: &AccountEvent) {}
}

/// The test aggregate's domain error; never raised.
#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
#[error("account error")]
pub struct AccountError;

/// The events of the test aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = Account)]
pub enum AccountEvent {
    /// Money in.
    Deposited {
        /// Amount.
        amount: i64,
    },
    /// Money out.
    Withdrawn {
        /// Amount.
        amount: i64,
    },
}

impl AccountEvent {
    /// The balance change.
    pub fn delta(&self) -> i64 {
        match self {
            Self::Deposited { amount } => *amount,
            Self::Withdrawn { amount } => -amount,
        }
    }
}

/// Blocks the handler on the event of account `gate` while armed.
#[derive(Debug, Default)]
pub struct Gate {
    /// Whether the gate blocks.
    pub armed: AtomicBool,
    /// Notified when the handler reaches the gate.
    pub entered: Notify,
    /// Notify to let the handler go on.
    pub release: Notify,
}

/// Test projection: per account the number of events and the balance, plus a log
/// of applied event ids in application order.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// Handler calls, rolled-back ones included.
    pub calls: Arc<AtomicU64>,
    /// Remaining injected failures per account id.
    pub failures: Arc<Mutex<HashMap<String, u32>>>,
    /// The gate.
    pub gate: Arc<Gate>,
    /// When non-zero, the handler call with this number (as counted by `calls`)
    /// writes its rows and then never returns, like a process frozen in the middle
    /// of a batch; `stalled` is notified.
    pub stall_at: Arc<AtomicU64>,
    /// Notified when a handler call stalls.
    pub stalled: Arc<Notify>,
    /// Per account id, SQLSTATEs to raise from Postgres (one per handler call, in
    /// order) before the event applies: real transient database errors.
    pub transient: Arc<Mutex<HashMap<String, Vec<&'static str>>>>,
    /// Remaining handler panics per account id.
    pub panics: Arc<Mutex<HashMap<String, u32>>>,
}

impl Projection for Totals {
    const NAME: &'static str = "account_totals";

    async fn migrate(&self, tx: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS account_totals (
                id text PRIMARY KEY, events bigint NOT NULL, balance bigint NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS account_log (
                n bigserial PRIMARY KEY, event_id uuid NOT NULL, account text NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query("TRUNCATE account_totals, account_log RESTART IDENTITY")
            .execute(tx)
            .await?;
        Ok(())
    }
}

impl Handles<AccountEvent> for Totals {
    async fn handle(
        &self,
        event: &EventEnvelope<AccountEvent>,
        tx: &mut PgConnection,
    ) -> Result<(), HandlerError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let id = event.aggregate_id.as_str();
        let fail = {
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            match failures.get_mut(id) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            }
        };
        if fail {
            return Err(format!("injected failure for account {id}").into());
        }
        let code = {
            let mut transient = self.transient.lock().unwrap_or_else(|e| e.into_inner());
            transient
                .get_mut(id)
                .filter(|codes| !codes.is_empty())
                .map(|codes| codes.remove(0))
        };
        if let Some(code) = code {
            sqlx::query(&format!(
                "DO $$ BEGIN RAISE EXCEPTION 'injected SQLSTATE {code}' USING ERRCODE = '{code}'; END $$"
            ))
            .execute(&mut *tx)
            .await?;
        }
        let panic = {
            let mut panics = self.panics.lock().unwrap_or_else(|e| e.into_inner());
            match panics.get_mut(id) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            }
        };
        assert!(!panic, "injected panic for account {id}");
        if id == "gate" && self.gate.armed.load(Ordering::SeqCst) {
            self.gate.entered.notify_one();
            self.gate.release.notified().await;
        }
        sqlx::query(
            "INSERT INTO account_totals (id, events, balance) VALUES ($1, 1, $2)
             ON CONFLICT (id) DO UPDATE SET events = account_totals.events + 1,
                 balance = account_totals.balance + EXCLUDED.balance",
        )
        .bind(id)
        .bind(event.event.delta())
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO account_log (event_id, account) VALUES ($1, $2)")
            .bind(event.id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if self.stall_at.load(Ordering::SeqCst) == call {
            self.stalled.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

/// `account -> (events, balance)` as the projection stored it.
pub async fn read_totals(store: &PgStore) -> BTreeMap<String, (i64, i64)> {
    let rows: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT id, events, balance FROM account_totals ORDER BY id")
            .fetch_all(store.pool())
            .await
            .expect("read account_totals");
    rows.into_iter().map(|(id, n, b)| (id, (n, b))).collect()
}

/// Applied event ids in application order.
pub async fn read_log_ids(store: &PgStore) -> Vec<uuid::Uuid> {
    sqlx::query_scalar("SELECT event_id FROM account_log ORDER BY n")
        .fetch_all(store.pool())
        .await
        .expect("read account_log")
}

/// The expected totals, computed from raw records without Tributary's decoder:
/// `ce_type` header and the JSON `amount`. Records that are not valid account
/// events are skipped.
pub fn expected_totals(records: &[OwnedMessage]) -> BTreeMap<String, (i64, i64)> {
    let mut totals = BTreeMap::new();
    for record in records {
        let header = |name: &str| {
            record.headers().and_then(|h| {
                h.iter()
                    .find(|x| x.key == name)
                    .and_then(|x| x.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        let (Some(ce_type), Some(_), Some(subject)) =
            (header("ce_type"), header("ce_id"), header("ce_subject"))
        else {
            continue;
        };
        let Some(value) = record
            .payload()
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
        else {
            continue;
        };
        let Some(amount) = value.get("amount").and_then(serde_json::Value::as_i64) else {
            continue;
        };
        let delta = match ce_type.as_str() {
            "account.deposited.v1" => amount,
            "account.withdrawn.v1" => -amount,
            _ => continue,
        };
        let entry = totals.entry(subject).or_insert((0, 0));
        entry.0 += 1;
        entry.1 += delta;
    }
    totals
}

fn producer(
    bootstrap: &str,
    transactional_id: Option<&str>,
) -> ThreadedProducer<DefaultProducerContext> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5");
    if let Some(id) = transactional_id {
        config.set("transactional.id", id);
    }
    config.create().expect("cannot create a producer")
}

/// A record to produce as is.
#[derive(Debug, Clone, Default)]
pub struct RawRecord {
    /// Explicit partition, or by key.
    pub partition: Option<i32>,
    /// Key.
    pub key: Vec<u8>,
    /// Value; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl From<EncodedRecord> for RawRecord {
    fn from(record: EncodedRecord) -> Self {
        Self {
            partition: None,
            key: record.key,
            value: Some(record.value),
            headers: record.headers,
        }
    }
}

fn send(producer: &ThreadedProducer<DefaultProducerContext>, topic: &str, record: &RawRecord) {
    let headers = record
        .headers
        .iter()
        .fold(OwnedHeaders::new(), |acc, (key, value)| {
            acc.insert(Header {
                key,
                value: Some(value),
            })
        });
    let mut base = BaseRecord::<[u8], [u8]>::to(topic)
        .key(record.key.as_slice())
        .headers(headers);
    if let Some(value) = &record.value {
        base = base.payload(value.as_slice());
    }
    if let Some(partition) = record.partition {
        base = base.partition(partition);
    }
    let mut base = base;
    loop {
        match producer.send(base) {
            Ok(()) => return,
            Err((
                KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                back,
            )) => {
                base = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => panic!("produce failed: {e}"),
        }
    }
}

/// Produces records (idempotent, not transactional) and waits until all are acked.
pub async fn produce(bootstrap: &str, topic: &str, records: Vec<RawRecord>) {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let producer = producer(&bootstrap, None);
        for record in &records {
            send(&producer, &topic, record);
        }
        producer
            .flush(Duration::from_secs(30))
            .expect("flush failed");
    })
    .await
    .expect("producer thread panicked");
}

/// Produces records in transactions of `per_transaction`, aborting every
/// `abort_every`-th transaction (its records must never be applied), pausing
/// `pause` between transactions. Blocking; run it on a thread.
pub fn produce_transactional(
    bootstrap: &str,
    topic: &str,
    records: &[RawRecord],
    per_transaction: usize,
    abort_every: Option<usize>,
    pause: Duration,
) {
    let producer = producer(bootstrap, Some(&format!("{topic}-loader")));
    let timeout = Duration::from_secs(30);
    producer
        .init_transactions(timeout)
        .expect("init_transactions failed");
    for (n, chunk) in records.chunks(per_transaction.max(1)).enumerate() {
        producer
            .begin_transaction()
            .expect("begin_transaction failed");
        for record in chunk {
            send(&producer, topic, record);
        }
        if abort_every.is_some_and(|every| (n + 1) % every == 0) {
            // Deliver the records first: they must be in the log, aborted, for the
            // test to mean anything. And an abort racing the records still in flight
            // can fail with INVALID_TXN_STATE (librdkafka issue 4849).
            producer.flush(timeout).expect("flush before abort failed");
            producer
                .abort_transaction(timeout)
                .expect("abort_transaction failed");
        } else {
            producer
                .commit_transaction(timeout)
                .expect("commit_transaction failed");
        }
        std::thread::sleep(pause);
    }
}

/// Every committed record of `topic`, read with a plain consumer (manual
/// assignment, `read_committed`) up to the high-water marks at the time of the call.
pub async fn read_log(bootstrap: &str, topic: &str) -> Vec<OwnedMessage> {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", format!("{topic}-plain-reader"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .create()
            .expect("cannot create a consumer");
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .expect("metadata");
        let partitions: Vec<i32> = metadata.topics()[0]
            .partitions()
            .iter()
            .map(|p| p.id())
            .collect();
        let mut tpl = TopicPartitionList::new();
        let mut high = HashMap::new();
        for &p in &partitions {
            let (_, h) = consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(10))
                .expect("watermarks");
            high.insert(p, h);
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .expect("tpl");
        }
        consumer.assign(&tpl).expect("assign");
        let mut records = Vec::new();
        let mut at_end: HashMap<i32, bool> = partitions.iter().map(|&p| (p, false)).collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        while at_end.values().any(|done| !done) {
            assert!(
                Instant::now() < deadline,
                "plain reader did not reach the end of {topic}"
            );
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => records.push(m.detach()),
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    let position = consumer
                        .position()
                        .ok()
                        .and_then(|tpl| tpl.find_partition(&topic, p).map(|e| e.offset()));
                    if let Some(Offset::Offset(at)) = position
                        && at >= high[&p]
                    {
                        at_end.insert(p, true);
                    }
                }
                Some(Err(e)) => panic!("plain reader: {e}"),
                None => {}
            }
        }
        records
    })
    .await
    .expect("reader thread panicked")
}

/// Polls `check` every 50 ms until it returns true; panics after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the projection's checkpoints are past the last record of every
/// partition of `topic`, as a plain consumer reads the log (independent of the
/// worker's own lag computation).
pub async fn wait_caught_up(store: &PgStore, bootstrap: &str, topic: &str, timeout: Duration) {
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for record in read_log(bootstrap, topic).await {
        let end = ends.entry(record.partition()).or_insert(0);
        *end = (*end).max(record.offset() + 1);
    }
    wait_until(
        timeout,
        "the projection to pass the last record",
        || async {
            let rows: Vec<(i32, i64)> = sqlx::query_as(
                "SELECT partition, next_offset FROM tributary_checkpoints WHERE topic = $1",
            )
            .bind(topic)
            .fetch_all(store.pool())
            .await
            .expect("read checkpoints");
            ends.iter()
                .all(|(p, end)| rows.iter().any(|(rp, next)| rp == p && next >= end))
        },
    )
    .await;
}

/// Sum of a projection's checkpoints.
pub async fn checkpoint_sum(store: &PgStore) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>(
        "SELECT sum(next_offset)::bigint FROM tributary_checkpoints",
    )
    .fetch_one(store.pool())
    .await
    .expect("read checkpoints")
    .unwrap_or(0)
}

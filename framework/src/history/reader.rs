//! [`History`]: an aggregate's events through the event index, and its state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use super::index::EventIndex;
use crate::command::wire::partition_for;
use crate::kafka::{KafkaOpError, clients, op, record_ref};
use crate::projection::Projection;
use crate::store::PgStore;
use crate::topics::{InvalidPrefix, events_topic, validate_prefix};
use crate::{Aggregate, DecodeError, EventCodec, EventEnvelope, KafkaConfig};

/// Offsets this close after the consumer's position are read through rather than
/// sought to: one fetch returns them anyway.
const READ_THROUGH: i64 = 64;
/// How long one record may take to arrive before the read fails.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an aggregate's history could not be read. Each message says what to check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The topic prefix is not valid.
    #[error(transparent)]
    Prefix(#[from] InvalidPrefix),
    /// A Postgres query failed.
    #[error("Postgres {operation} failed: {source}; check DATABASE_URL and the schema")]
    Database {
        /// What was being done.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A Kafka client call failed.
    #[error("{0}; check KAFKA_BOOTSTRAP_SERVERS and that the broker is up")]
    Kafka(#[from] KafkaOpError),
    /// The events topic does not exist.
    #[error("events topic `{0}` does not exist; is the prefix right, and has its processor run?")]
    NoTopic(String),
    /// Nothing indexed this partition yet, and it is not empty.
    #[error(
        "the event index has no checkpoint on `{topic}` partition {partition}, which holds events: run a \
         `ProjectionWorker<EventIndex>` that indexes this aggregate (`.index::<A>(prefix)`) and let it catch up"
    )]
    NotIndexed {
        /// The events topic.
        topic: String,
        /// The partition.
        partition: i32,
    },
    /// The index names a record the log does not have (any more).
    #[error(
        "the event index places `{aggregate_id}` version {sequence} at offset {offset} of `{topic}` partition \
         {partition}, but no such committed record is there: was the topic recreated or its retention \
         shortened? Rebuild the index (`ProjectionWorker::<EventIndex>::rebuild`)"
    )]
    Missing {
        /// The events topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The aggregate.
        aggregate_id: String,
        /// The version indexed there.
        sequence: u64,
        /// The offset indexed.
        offset: i64,
    },
    /// A record of the aggregate could not be decoded with the codec given.
    #[error(
        "cannot decode the event at offset {offset} of `{topic}` partition {partition}: {source}; does \
         this release know the event type (and have its upcasters)?"
    )]
    Decode {
        /// The events topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The offset.
        offset: i64,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// The versions read are not consecutive.
    #[error(
        "the history of `{aggregate_id}` is not gapless: expected version {expected}, found {found}; \
         rebuild the index if it was built from another topic"
    )]
    Gap {
        /// The aggregate.
        aggregate_id: String,
        /// The version expected.
        expected: u64,
        /// The version found.
        found: u64,
    },
    /// A fetch did not complete in time.
    #[error(
        "reading `{topic}` partition {partition} at offset {offset} timed out after {FETCH_TIMEOUT:?}"
    )]
    Timeout {
        /// The events topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The offset waited for.
        offset: i64,
    },
    /// The thread that read Kafka ended abnormally.
    #[error("the history read's thread ended abnormally: {0}")]
    Thread(String),
}

fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> HistoryError {
    move |source| HistoryError::Database { operation, source }
}

/// Reads the events and state of single aggregates of type `A` from the log,
/// through the [`EventIndex`] (see the [module docs](super)).
///
/// A read costs two Postgres queries, one watermark request and a fetch per
/// stretch of the aggregate's offsets: it never scans the aggregate's partition,
/// only the records written since the index's checkpoint. Cheap to clone; clones
/// share one Kafka client, so their reads take turns.
pub struct History<A: Aggregate> {
    inner: Arc<Inner<A>>,
}

impl<A: Aggregate> Clone for History<A> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<A: Aggregate> std::fmt::Debug for History<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("aggregate", &A::NAME)
            .field("topic", &self.inner.topic)
            .field("partitions", &self.inner.partitions)
            .finish()
    }
}

struct Inner<A: Aggregate> {
    store: PgStore,
    codec: EventCodec<A::Event>,
    topic: String,
    partitions: usize,
    consumer: Mutex<BaseConsumer>,
    records_read: AtomicU64,
}

impl<A: Aggregate> History<A> {
    /// A reader of `A`'s events topic under `prefix`, decoding with `codec` (give it
    /// the upcasters the application registers).
    pub async fn connect(
        kafka: &KafkaConfig,
        store: PgStore,
        prefix: &str,
        codec: EventCodec<A::Event>,
    ) -> Result<Self, HistoryError> {
        validate_prefix(prefix)?;
        let topic = events_topic(prefix, A::NAME);
        let config = clients::history_reader(kafka, &format!("{prefix}.{}.history", A::NAME));
        let (consumer, partitions) = {
            let topic = topic.clone();
            blocking(move || {
                let consumer: BaseConsumer =
                    config.create().map_err(op("create history reader"))?;
                let metadata = consumer
                    .fetch_metadata(Some(&topic), FETCH_TIMEOUT)
                    .map_err(op("fetch metadata"))?;
                let partitions = metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic && t.error().is_none())
                    .map_or(0, |t| t.partitions().len());
                if partitions == 0 {
                    return Err(HistoryError::NoTopic(topic));
                }
                Ok((consumer, partitions))
            })
            .await?
        };
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                codec,
                topic,
                partitions,
                consumer: Mutex::new(consumer),
                records_read: AtomicU64::new(0),
            }),
        })
    }

    /// The events of `aggregate_id` from version `from_version` (1 for all), in
    /// order. Empty when it has none (or none that late).
    pub async fn history(
        &self,
        aggregate_id: &str,
        from_version: u64,
    ) -> Result<Vec<EventEnvelope<A::Event>>, HistoryError> {
        let inner = &self.inner;
        let partition = partition_for(aggregate_id.as_bytes(), inner.partitions);
        let from = i64::try_from(from_version.max(1)).unwrap_or(i64::MAX);
        let indexed: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT sequence, record_offset FROM tributary_event_index
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence >= $3
              ORDER BY sequence",
        )
        .bind(A::NAME)
        .bind(aggregate_id)
        .bind(from)
        .fetch_all(inner.store.pool())
        .await
        .map_err(db("read the event index"))?;
        let checkpoint: Option<i64> = sqlx::query_scalar(
            "SELECT next_offset FROM tributary_checkpoints
              WHERE projection = $1 AND topic = $2 AND partition = $3",
        )
        .bind(EventIndex::NAME)
        .bind(&inner.topic)
        .bind(partition)
        .fetch_optional(inner.store.pool())
        .await
        .map_err(db("read the event index's checkpoint"))?;

        let reader = Arc::clone(inner);
        let key = aggregate_id.to_owned();
        let messages = blocking(move || {
            let consumer = reader
                .consumer
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut fetch = Fetch {
                consumer: &consumer,
                topic: &reader.topic,
                partition,
                position: None,
                read: 0,
            };
            let result = fetch.all(&key, &indexed, checkpoint);
            reader.records_read.fetch_add(fetch.read, Ordering::Relaxed);
            result
        })
        .await?;

        let mut events = Vec::with_capacity(messages.len());
        let mut expected = from_version.max(1);
        for message in messages {
            let event = inner
                .codec
                .decode(&record_ref(&message))
                .map_err(|source| HistoryError::Decode {
                    topic: inner.topic.clone(),
                    partition,
                    offset: message.offset(),
                    source,
                })?;
            // The tail may hold versions before `from_version` when the index is
            // behind; they are not asked for.
            if event.sequence < expected {
                continue;
            }
            if event.sequence != expected {
                return Err(HistoryError::Gap {
                    aggregate_id: aggregate_id.to_owned(),
                    expected,
                    found: event.sequence,
                });
            }
            expected += 1;
            events.push(event);
        }
        Ok(events)
    }

    /// The state of `aggregate_id` now and its version: its snapshot, if a readable
    /// one exists, plus the events after it. `(A::default(), 0)` for an aggregate
    /// without events.
    pub async fn load(&self, aggregate_id: &str) -> Result<(A, u64), HistoryError> {
        let partition = partition_for(aggregate_id.as_bytes(), self.inner.partitions);
        let snapshot: Option<(i64, serde_json::Value, i32)> = sqlx::query_as(
            "SELECT version, state, state_version FROM tributary_snapshots
              WHERE aggregate_type = $1 AND events_partition = $2 AND aggregate_id = $3",
        )
        .bind(A::NAME)
        .bind(partition)
        .bind(aggregate_id)
        .fetch_optional(self.inner.store.pool())
        .await
        .map_err(db("read the snapshot"))?;
        // A snapshot of another state version, or one that no longer reads, is
        // only a cache: start from the first event instead.
        let (mut state, version) = snapshot
            .filter(|(_, _, state_version)| {
                i64::from(*state_version) == i64::from(A::STATE_VERSION)
            })
            .and_then(|(version, state, _)| {
                let state = serde_json::from_value::<A>(state).ok()?;
                Some((state, u64::try_from(version).ok()?))
            })
            .unwrap_or_default();
        let events = self.history(aggregate_id, version + 1).await?;
        let version = events.last().map_or(version, |e| e.sequence);
        for event in &events {
            state.apply(&event.event);
        }
        Ok((state, version))
    }

    /// Records fetched from Kafka by this reader and its clones so far (those of the
    /// aggregates asked for, and any read through or scanned on the way).
    pub fn records_read(&self) -> u64 {
        self.inner.records_read.load(Ordering::Relaxed)
    }
}

/// Runs a blocking Kafka read on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HistoryError> + Send + 'static,
) -> Result<T, HistoryError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|join| Err(HistoryError::Thread(join.to_string())))
}

/// One history read on the reader's consumer.
struct Fetch<'a> {
    consumer: &'a BaseConsumer,
    topic: &'a str,
    partition: i32,
    /// The offset of the next record the consumer delivers, once assigned.
    position: Option<i64>,
    /// Records received.
    read: u64,
}

impl Fetch<'_> {
    /// The records at the indexed offsets, then those of `key` after the index's
    /// checkpoint.
    fn all(
        &mut self,
        key: &str,
        indexed: &[(i64, i64)],
        checkpoint: Option<i64>,
    ) -> Result<Vec<OwnedMessage>, HistoryError> {
        let (low, high) = self
            .consumer
            .fetch_watermarks(self.topic, self.partition, FETCH_TIMEOUT)
            .map_err(op("fetch watermarks"))?;
        let tail_from = match checkpoint {
            Some(next) => next,
            None if high <= low => high,
            None => {
                return Err(HistoryError::NotIndexed {
                    topic: self.topic.to_owned(),
                    partition: self.partition,
                });
            }
        };
        let mut out = Vec::with_capacity(indexed.len());
        for &(sequence, offset) in indexed {
            match self.at(offset)? {
                Some(message) => out.push(message),
                None => {
                    return Err(HistoryError::Missing {
                        topic: self.topic.to_owned(),
                        partition: self.partition,
                        aggregate_id: key.to_owned(),
                        sequence: u64::try_from(sequence).unwrap_or(0),
                        offset,
                    });
                }
            }
        }
        if tail_from < high {
            self.assign(tail_from)?;
            while let Some(message) = self.next(tail_from)? {
                if message.key() == Some(key.as_bytes()) {
                    out.push(message);
                }
            }
        }
        Ok(out)
    }

    /// The committed record at `offset`, or `None` if there is none there.
    fn at(&mut self, offset: i64) -> Result<Option<OwnedMessage>, HistoryError> {
        let near = self
            .position
            .is_some_and(|p| p <= offset && offset - p <= READ_THROUGH);
        if !near {
            self.assign(offset)?;
        }
        while let Some(message) = self.next(offset)? {
            if message.offset() == offset {
                return Ok(Some(message));
            }
            if message.offset() > offset {
                return Ok(None);
            }
        }
        Ok(None)
    }

    fn assign(&mut self, offset: i64) -> Result<(), HistoryError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(self.topic, self.partition, Offset::Offset(offset))
            .map_err(op("assign"))?;
        self.consumer.assign(&tpl).map_err(op("assign"))?;
        self.position = Some(offset);
        Ok(())
    }

    /// The next record, or `None` at the end of the partition.
    fn next(&mut self, waiting_for: i64) -> Result<Option<OwnedMessage>, HistoryError> {
        let deadline = Instant::now() + FETCH_TIMEOUT;
        while Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(message)) => {
                    self.read += 1;
                    self.position = Some(message.offset() + 1);
                    return Ok(Some(message.detach()));
                }
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(None),
                Some(Err(error)) => return Err(op("fetch")(error).into()),
            }
        }
        Err(HistoryError::Timeout {
            topic: self.topic.to_owned(),
            partition: self.partition,
            offset: waiting_for,
        })
    }
}

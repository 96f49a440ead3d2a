//! The command gateway: send a command, learn its outcome (G3).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;
use tracing::{Instrument, debug, info_span, warn};

use super::topics::{TopicError, TopicSettings, ensure_replies_topic};
use super::wire::{self, CommandHeaders, OutcomeWire, ReplyWire};
use crate::codec::EventCodec;
use crate::config::KafkaConfig;
use crate::kafka::EncodedRecordExt as _;
use crate::{Aggregate, AggregateId, Command};
use crate::{EventEnvelope, Metadata};

/// What a processor decided.
#[derive(Debug)]
pub enum CommandOutcome<A: Aggregate> {
    /// The command was accepted; the aggregate is now at `version` and these are the
    /// events it emitted (possibly none).
    Accepted {
        /// The aggregate's version after the command.
        version: u64,
        /// The events, in order.
        events: Vec<EventEnvelope<A::Event>>,
    },
    /// The handler rejected the command.
    Rejected(A::Error),
}

impl<A: Aggregate> CommandOutcome<A> {
    /// Whether the command was accepted.
    pub fn is_accepted(&self) -> bool {
        matches!(self, Self::Accepted { .. })
    }
}

/// Why `send` could not report an outcome. None of these means the command was
/// rejected; several mean it may still be processed — resend it with the same
/// command id to learn its outcome exactly once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// No reply within the timeout. The command may still be processed.
    #[error(
        "no outcome for command {command_id} within {waited:?}; it may still be processed: resend it with the same command id to learn its outcome"
    )]
    Timeout {
        /// The command id.
        command_id: String,
        /// How long `send` waited.
        waited: Duration,
    },
    /// The command could not be written to Kafka (broker unavailable, timed out, …).
    #[error(
        "command {command_id} could not be written to Kafka: {source}; check that the brokers are reachable, then resend with the same command id"
    )]
    Unavailable {
        /// The command id.
        command_id: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// The command is not valid to send.
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    /// The command did not serialize.
    #[error("command does not serialize to JSON: {0}")]
    Serialize(#[source] serde_json::Error),
    /// The processor could not handle the command (unknown type, undecodable).
    #[error("command {command_id} failed in the processor: {reason}")]
    Failed {
        /// The command id.
        command_id: String,
        /// The processor's reason.
        reason: String,
    },
    /// The reply could not be read (a record on the replies topic with this command
    /// id as its key is not a Tributary reply, or its outcome does not match the
    /// command's aggregate type).
    #[error(
        "the reply to command {command_id} is unreadable: {reason}; the command may have been processed: resend it with the same command id to learn its outcome"
    )]
    BadReply {
        /// The command id.
        command_id: String,
        /// What is wrong.
        reason: String,
    },
    /// Setting up the gateway failed.
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaOpError),
    /// The replies topic is missing and cannot be created.
    #[error(transparent)]
    Topics(#[from] TopicError),
    /// The aggregate's commands topic does not exist yet. The gateway does not
    /// produce to it, because a produce would make the broker create it with its
    /// default settings (one partition on Kafka), which the processors then refuse.
    #[error(
        "command {command_id} was not sent: topic `{topic}` does not exist yet. The command processors of this aggregate create it when they start: start them (or create the topics with `ensure_topics`), then resend with the same command id"
    )]
    NoTopic {
        /// The command id.
        command_id: String,
        /// The missing topic.
        topic: String,
    },
    /// A command id was reused while the first send with it is still waiting.
    #[error("command {0} is already waiting for its outcome in this gateway")]
    AlreadyPending(String),
    /// Kafka refuses writes to a partition the command needs (its commands or its
    /// events partition): fewer replicas are in sync than the topic's
    /// `min.insync.replicas`, because brokers are down. Found after a send failed
    /// or timed out.
    #[error(
        "command {command_id} cannot be processed now: partition {partition} of `{topic}` has {in_sync} in-sync replica(s) of {replicas}, fewer than its min.insync.replicas={required}, so Kafka refuses writes to it (acks=all). Bring the brokers back; then resend with the same command id, which takes effect at most once"
    )]
    NotEnoughReplicas {
        /// The command id.
        command_id: String,
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Replicas in sync now.
        in_sync: usize,
        /// Replicas of the partition.
        replicas: usize,
        /// The topic's `min.insync.replicas`.
        required: usize,
    },
    /// The command record is over Kafka's record size limit. It was not sent and
    /// will never be processed, however often it is sent again.
    #[error(
        "command {command_id} was not sent: its record is about {bytes} bytes, over the record size limit of {limit} bytes (the client's message.max.bytes, or the commands topic's max.message.bytes). Make the command smaller, or raise both limits"
    )]
    TooLarge {
        /// The command id.
        command_id: String,
        /// The record's size, estimated.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The processor that owns the command's partition cannot read that partition's
    /// events (an event it cannot decode, e.g. of a newer type or version written by
    /// a newer deployment), so it processes none of its commands. The command was
    /// not processed; it will be once an instance that can read the partition owns
    /// it. Resend it then with the same command id.
    #[error(
        "command {command_id} was not processed: the processor owning partition {partition} cannot read its events ({reason}). Deploy a version that can read them; then resend with the same command id"
    )]
    PartitionUnavailable {
        /// The command id.
        command_id: String,
        /// The partition.
        partition: i32,
        /// Why the partition cannot be read.
        reason: String,
    },
    /// A partition the command needs has no leader: the brokers holding it are
    /// down or the cluster has lost its controller quorum. Found after a send failed
    /// or timed out.
    #[error(
        "command {command_id} cannot be processed now: partition {partition} of `{topic}` has no leader (its brokers are down or the cluster has no controller quorum). Bring the brokers back; then resend with the same command id, which takes effect at most once"
    )]
    NoLeader {
        /// The command id.
        command_id: String,
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
    },
}

/// Per-send options.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    /// The command id; a new UUIDv7 when `None`. Resending with the same id returns
    /// the original outcome and changes nothing.
    pub command_id: Option<String>,
    /// The business flow's id; the command id when `None`.
    pub correlation_id: Option<String>,
    /// W3C trace context to continue; a new trace when `None`.
    pub traceparent: Option<String>,
    /// How long to wait for the outcome; the gateway's default when `None`.
    pub timeout: Option<Duration>,
}

/// Waiting senders by command id: the reply, or why it could not be read.
type Pending = Mutex<HashMap<String, oneshot::Sender<Result<ReplyWire, String>>>>;

/// Sends commands to their aggregate's commands topic and awaits the outcome on a
/// partition of the replies topic. Cheap to clone; use one per process.
#[derive(Clone)]
pub struct CommandGateway {
    inner: Arc<Inner>,
}

struct Inner {
    kafka: KafkaConfig,
    max_record_bytes: usize,
    producer: FutureProducer,
    prefix: String,
    reply_partition: i32,
    pending: Arc<Pending>,
    timeout: Duration,
    listener: tokio::task::JoinHandle<()>,
    /// Commands topics seen to exist (see [`GatewayError::NoTopic`]).
    known_topics: Mutex<HashSet<String>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl std::fmt::Debug for CommandGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandGateway")
            .field("prefix", &self.inner.prefix)
            .field("reply_partition", &self.inner.reply_partition)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl CommandGateway {
    /// Connects with a default outcome timeout of 10 s. Like every component that
    /// keeps its Kafka settings, the gateway takes them by value.
    pub async fn connect(kafka: KafkaConfig, prefix: &str) -> Result<Self, GatewayError> {
        Self::connect_with_timeout(kafka, prefix, Duration::from_secs(10)).await
    }

    /// Connects; `send` waits at most `timeout` for an outcome.
    pub async fn connect_with_timeout(
        kafka: KafkaConfig,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, GatewayError> {
        crate::codec::validate_prefix(prefix)
            .map_err(|e| GatewayError::InvalidCommand(e.to_string()))?;
        let replies = wire::replies_topic(prefix);
        let reply_partitions =
            ensure_replies_topic(&kafka, prefix, &TopicSettings::default()).await?;
        let reply_partition =
            (uuid::Uuid::new_v4().as_u128() % reply_partitions.max(1) as u128) as i32;

        let consumer: StreamConsumer = kafka
            .client_config()
            .set("group.id", format!("{prefix}.gateway"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "5")
            .create()
            .map_err(crate::kafka::op("create reply consumer"))?;
        // Start at the current end explicitly, so no reply produced after this point
        // can be missed (Offset::End would be resolved later).
        // read_uncommitted: the last stable offset can lag (or read 0 on some
        // brokers) while processors have transactions open.
        let watermarks: rdkafka::consumer::BaseConsumer = kafka
            .client_config()
            .set("isolation.level", "read_uncommitted")
            .create()
            .map_err(crate::kafka::op("create watermark client"))?;
        let (_, high) = crate::kafka::watermarks_within(
            &watermarks,
            &replies,
            reply_partition,
            Duration::from_secs(30),
        )
        .map_err(crate::kafka::op("fetch reply watermarks"))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&replies, reply_partition, Offset::Offset(high))
            .map_err(crate::kafka::op("assign reply partition"))?;
        consumer
            .assign(&tpl)
            .map_err(crate::kafka::op("assign reply partition"))?;

        let producer: FutureProducer = kafka
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Java-compatible partitioning, so that every producer of commands
            // (any language) maps an aggregate id to the same partition.
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "1")
            .set("message.timeout.ms", timeout.as_millis().max(1).to_string())
            .create()
            .map_err(crate::kafka::op("create producer"))?;

        let pending: Arc<Pending> = Arc::default();
        let listener = tokio::spawn(listen(consumer, Arc::clone(&pending)));
        let max_record_bytes = super::topics::client_max_record_bytes(&kafka);
        Ok(Self {
            inner: Arc::new(Inner {
                kafka,
                max_record_bytes,
                producer,
                prefix: prefix.to_owned(),
                reply_partition,
                pending,
                timeout,
                listener,
                known_topics: Mutex::default(),
            }),
        })
    }

    /// Sends `command` with a new command id and waits for its outcome.
    pub async fn send<C: Command>(
        &self,
        command: C,
    ) -> Result<CommandOutcome<C::Aggregate>, GatewayError> {
        self.send_with(command, SendOptions::default()).await
    }

    /// Sends `command` with options (command id, correlation id, trace, timeout).
    pub async fn send_with<C: Command>(
        &self,
        command: C,
        options: SendOptions,
    ) -> Result<CommandOutcome<C::Aggregate>, GatewayError> {
        let command_id = options
            .command_id
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let aggregate_id = command.aggregate_id();
        let span = info_span!("send_command", command_id = %command_id, aggregate_id = %aggregate_id,
            command_type = C::NAME, aggregate = <C::Aggregate as Aggregate>::NAME);
        self.send_inner(
            command,
            command_id,
            aggregate_id,
            options.correlation_id,
            options.traceparent,
            options.timeout.unwrap_or(self.inner.timeout),
        )
        .instrument(span)
        .await
    }

    async fn send_inner<C: Command>(
        &self,
        command: C,
        command_id: String,
        aggregate_id: AggregateId,
        correlation_id: Option<String>,
        traceparent: Option<String>,
        timeout: Duration,
    ) -> Result<CommandOutcome<C::Aggregate>, GatewayError> {
        type A<C> = <C as Command>::Aggregate;
        if aggregate_id.as_str().is_empty() {
            return Err(GatewayError::InvalidCommand(format!(
                "`{}` has an empty aggregate id",
                C::NAME
            )));
        }
        if command_id.is_empty() {
            return Err(GatewayError::InvalidCommand(
                "the command id is empty".into(),
            ));
        }
        let value = serde_json::to_vec(&command).map_err(GatewayError::Serialize)?;
        let traceparent = traceparent.unwrap_or_else(new_traceparent);
        let record = wire::encode_command(
            &CommandHeaders {
                prefix: &self.inner.prefix,
                aggregate: A::<C>::NAME,
                command_name: C::NAME,
                command_id: &command_id,
                aggregate_id: aggregate_id.as_str(),
                correlation_id: correlation_id.as_deref().unwrap_or(&command_id),
                traceparent: Some(&traceparent),
                reply_partition: self.inner.reply_partition,
            },
            value,
        );
        let bytes = record.size_estimate();
        if bytes > self.inner.max_record_bytes {
            return Err(GatewayError::TooLarge {
                command_id,
                bytes,
                limit: self.inner.max_record_bytes,
            });
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self
                .inner
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if pending.contains_key(&command_id) {
                return Err(GatewayError::AlreadyPending(command_id));
            }
            pending.insert(command_id.clone(), tx);
        }
        let _guard = PendingGuard {
            pending: &self.inner.pending,
            id: command_id.clone(),
        };
        let topic = wire::commands_topic(&self.inner.prefix, A::<C>::NAME);
        let started = tokio::time::Instant::now();
        if !self.topic_exists(&topic, timeout).await {
            return Err(GatewayError::NoTopic { command_id, topic });
        }
        // A tenth of the timeout (at most 1 s) is kept for finding out why, if the
        // send fails, so that `send` still returns within `timeout`.
        let diagnosis = (timeout / 10).min(Duration::from_secs(1));
        let wait = timeout.saturating_sub(diagnosis);
        let produce = self.inner.producer.send(
            FutureRecord::to(&topic)
                .key(record.key.as_slice())
                .payload(record.value.as_slice())
                .headers(record.owned_headers()),
            wait,
        );
        let failure = match tokio::time::timeout(wait, produce).await {
            Err(_) => GatewayError::Timeout {
                command_id,
                waited: started.elapsed(),
            },
            Ok(Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _))) => {
                // The broker's limit (the commands topic's max.message.bytes) is lower
                // than the client's.
                let limit = topic_config(&self.inner.kafka, &topic, "max.message.bytes", diagnosis)
                    .await
                    .unwrap_or(self.inner.max_record_bytes);
                return Err(GatewayError::TooLarge {
                    command_id,
                    bytes,
                    limit,
                });
            }
            Ok(Err((source, _))) => GatewayError::Unavailable { command_id, source },
            Ok(Ok(_)) => {
                let remaining = wait.saturating_sub(started.elapsed());
                match tokio::time::timeout(remaining, rx).await {
                    Ok(Ok(Ok(reply))) => return outcome::<A<C>>(reply, &aggregate_id),
                    Ok(Ok(Err(reason))) => {
                        return Err(GatewayError::BadReply { command_id, reason });
                    }
                    _ => GatewayError::Timeout {
                        command_id,
                        waited: started.elapsed(),
                    },
                }
            }
        };
        // Say why, when the cluster can tell: a partition without enough replicas
        // or without a leader explains a timeout better than the timeout does.
        let topics = [topic, wire::events_topic(&self.inner.prefix, A::<C>::NAME)];
        let key = aggregate_id.as_str();
        Err(diagnose(&self.inner.kafka, &topics, key, failure, diagnosis).await)
    }
}

impl CommandGateway {
    /// Whether `topic` exists, asked once per topic with a consumer-type client
    /// (whose metadata requests never create topics). An unanswered request counts
    /// as existing: the produce then fails or times out with its own error.
    async fn topic_exists(&self, topic: &str, timeout: Duration) -> bool {
        let known = || {
            self.inner
                .known_topics
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        };
        if known().contains(topic) {
            return true;
        }
        let budget = (timeout / 2).min(Duration::from_secs(5));
        let exists = crate::kafka::missing_topics(
            self.inner.kafka.client_config(),
            vec![topic.to_owned()],
            budget,
        )
        .await
        .ok()
        .map(|missing| missing.is_empty());
        if exists == Some(true) {
            known().insert(topic.to_owned());
        }
        exists.unwrap_or(true)
    }
}

/// Turns a failed send into [`GatewayError::NotEnoughReplicas`] or
/// [`GatewayError::NoLeader`] when the metadata shows that a partition the command
/// needs cannot take writes; otherwise (or if the cluster does not answer within
/// `budget`) returns `failure` unchanged.
async fn diagnose(
    kafka: &KafkaConfig,
    topics: &[String],
    key: &str,
    failure: GatewayError,
    budget: Duration,
) -> GatewayError {
    let command_id = match &failure {
        GatewayError::Timeout { command_id, .. } | GatewayError::Unavailable { command_id, .. } => {
            command_id.clone()
        }
        _ => return failure,
    };
    match tokio::time::timeout(budget, shortage(kafka, topics, key, budget)).await {
        Ok(Some(Shortage::NoLeader { topic, partition })) => GatewayError::NoLeader {
            command_id,
            topic,
            partition,
        },
        Ok(Some(Shortage::Replicas {
            topic,
            partition,
            in_sync,
            replicas,
            required,
        })) => GatewayError::NotEnoughReplicas {
            command_id,
            topic,
            partition,
            in_sync,
            replicas,
            required,
        },
        Ok(None) | Err(_) => failure,
    }
}

/// Why a partition cannot take writes.
enum Shortage {
    NoLeader {
        topic: String,
        partition: i32,
    },
    Replicas {
        topic: String,
        partition: i32,
        in_sync: usize,
        replicas: usize,
        required: usize,
    },
}

/// The first of `topics` whose partition for `key` cannot take writes, per the
/// cluster's metadata.
async fn shortage(
    kafka: &KafkaConfig,
    topics: &[String],
    key: &str,
    budget: Duration,
) -> Option<Shortage> {
    let config = kafka.client_config();
    let (topics, key) = (topics.to_vec(), key.as_bytes().to_vec());
    let found = tokio::task::spawn_blocking(move || {
        let client: rdkafka::consumer::BaseConsumer = config.create().ok()?;
        topics.into_iter().find_map(|topic| {
            let metadata = client.fetch_metadata(Some(&topic), budget).ok()?;
            let partitions = metadata.topics().first()?.partitions();
            let partition = wire::partition_for(&key, partitions.len());
            let p = partitions.iter().find(|p| p.id() == partition)?;
            let (replicas, in_sync) = (p.replicas().len(), p.isr().len());
            Some((topic, partition, p.leader(), replicas, in_sync))
                .filter(|(_, _, leader, replicas, in_sync)| *leader < 0 || in_sync < replicas)
        })
    })
    .await
    .ok()
    .flatten();
    let (topic, partition, leader, replicas, in_sync) = found?;
    if leader < 0 {
        return Some(Shortage::NoLeader { topic, partition });
    }
    let required = topic_config(kafka, &topic, "min.insync.replicas", budget)
        .await
        .unwrap_or_else(|| default_min_isr(replicas));
    (in_sync < required).then_some(Shortage::Replicas {
        topic,
        partition,
        in_sync,
        replicas,
        required,
    })
}

/// What the framework sets when it creates topics (see `ensure_topics`).
fn default_min_isr(replicas: usize) -> usize {
    if replicas >= 3 { 2 } else { 1 }
}

/// A numeric configuration of the topic, if the cluster says within `budget`.
async fn topic_config(
    kafka: &KafkaConfig,
    topic: &str,
    key: &str,
    budget: Duration,
) -> Option<usize> {
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        kafka.client_config().create().ok()?;
    let options = rdkafka::admin::AdminOptions::new().request_timeout(Some(budget));
    let described = admin
        .describe_configs(&[rdkafka::admin::ResourceSpecifier::Topic(topic)], &options)
        .await
        .ok()?;
    let resource = described.into_iter().next()?.ok()?;
    resource
        .get(key)
        .and_then(|e| e.value.as_deref())
        .and_then(|v| v.trim().parse().ok())
}

/// Removes a pending entry when `send` returns for any reason (or is cancelled).
struct PendingGuard<'a> {
    pending: &'a Pending,
    id: String,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

fn outcome<A: Aggregate>(
    reply: ReplyWire,
    aggregate_id: &AggregateId,
) -> Result<CommandOutcome<A>, GatewayError> {
    let command_id = reply.command_id;
    let bad = |reason: String| GatewayError::BadReply {
        command_id: command_id.clone(),
        reason,
    };
    match reply.outcome {
        OutcomeWire::Accepted { version, events } => {
            let codec = EventCodec::<A::Event>::new("reply").map_err(|e| bad(e.to_string()))?;
            let events = events
                .into_iter()
                .map(|e| {
                    Ok(EventEnvelope {
                        id: e.id,
                        aggregate_id: aggregate_id.clone(),
                        sequence: e.sequence,
                        time: e.time,
                        metadata: Metadata {
                            causation_id: Some(command_id.clone()),
                            ..Metadata::default()
                        },
                        event: codec
                            .decode_payload(&e.ce_type, e.data)
                            .map_err(|e| bad(e.to_string()))?,
                    })
                })
                .collect::<Result<Vec<_>, GatewayError>>()?;
            Ok(CommandOutcome::Accepted { version, events })
        }
        OutcomeWire::Rejected { error } => serde_json::from_value(error)
            .map(CommandOutcome::Rejected)
            .map_err(|e| bad(format!("the domain error does not deserialize: {e}"))),
        OutcomeWire::Failed { reason } => Err(GatewayError::Failed { command_id, reason }),
        OutcomeWire::Unavailable { partition, reason } => Err(GatewayError::PartitionUnavailable {
            command_id,
            partition,
            reason,
        }),
    }
}

async fn listen(consumer: StreamConsumer, pending: Arc<Pending>) {
    let take = |id: &str| {
        pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id)
    };
    loop {
        match consumer.recv().await {
            Ok(message) => {
                let payload = message.payload().unwrap_or_default();
                match serde_json::from_slice::<ReplyWire>(payload) {
                    Ok(reply) => {
                        if let Some(waiter) = take(&reply.command_id) {
                            let _ = waiter.send(Ok(reply));
                        }
                    }
                    // The key is the command id: tell its sender now rather than let
                    // it time out.
                    Err(error) => match message
                        .key()
                        .and_then(|k| std::str::from_utf8(k).ok())
                        .and_then(&take)
                    {
                        Some(waiter) => {
                            warn!(%error, offset = message.offset(), "unreadable reply");
                            let _ = waiter.send(Err(format!(
                                "reply at offset {} of partition {} is not a Tributary reply: {error}",
                                message.offset(),
                                message.partition()
                            )));
                        }
                        None => debug!(%error, "ignoring an unreadable reply nobody waits for"),
                    },
                }
            }
            Err(error) => {
                warn!(%error, "reply consumer error");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A new W3C traceparent: random trace and parent ids, sampled.
fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let parent = uuid::Uuid::new_v4().simple().to_string();
    format!("00-{trace}-{}-01", &parent[..16])
}

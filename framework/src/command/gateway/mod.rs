//! The command gateway: send a command, learn its outcome (G3).

use std::collections::HashSet;
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

use super::local::{Delivered, Pending, Registration};
use super::topics::{TopicError, TopicSettings, ensure_replies_topic};
use super::wire::{self, CommandHeaders, OutcomeWire, ReplyWire};
use crate::codec::EventCodec;
use crate::config::KafkaConfig;
use crate::kafka::EncodedRecordExt as _;
use crate::kafka::clients;
use crate::telemetry::GatewayMetrics;
use crate::trace_context;
use crate::{Aggregate, AggregateId, Command, DeclaresCommand};
use crate::{EventEnvelope, Metadata};

mod diagnose;
mod error;
mod replies;

use diagnose::{diagnose, topic_config};
pub use error::GatewayError;
use replies::{listen, outcome};

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
    /// How long to wait for the outcome; the gateway's default when `None`. The
    /// command's delivery to Kafka keeps the gateway's default as its limit (its
    /// producer's `message.timeout.ms`): a longer timeout lengthens only the wait
    /// for the outcome after the command was delivered, and an unreachable broker
    /// still fails the send with [`GatewayError::Unavailable`] after the default.
    pub timeout: Option<Duration>,
}

/// Sends commands to their aggregate's commands topic and awaits the outcome on a
/// partition of the replies topic, or, from a processor in the same process, in
/// memory (see [`CommandGateway::without_in_process_replies`]). Cheap to clone; use
/// one per process.
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
    /// This gateway's entry among the gateways a processor of this process hands
    /// replies to in memory; `None` once turned off.
    in_process: Mutex<Option<Registration>>,
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
        crate::topics::validate_prefix(prefix)
            .map_err(|e| GatewayError::InvalidCommand(e.to_string()))?;
        let replies = wire::replies_topic(prefix);
        let reply_partitions =
            ensure_replies_topic(&kafka, prefix, &TopicSettings::default()).await?;
        let reply_partition =
            (uuid::Uuid::new_v4().as_u128() % reply_partitions.max(1) as u128) as i32;

        let consumer: StreamConsumer = clients::reply_consumer(&kafka, prefix)
            .create()
            .map_err(crate::kafka::op("create reply consumer"))?;
        // Start at the current end explicitly, so no reply produced after this point
        // can be missed (Offset::End would be resolved later).
        let watermarks: rdkafka::consumer::BaseConsumer = clients::watermark_reader(&kafka, None)
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

        let producer: FutureProducer = clients::command_producer(&kafka, timeout)
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
                in_process: Mutex::new(Some(Registration::new(&pending))),
                pending,
                timeout,
                listener,
                known_topics: Mutex::default(),
            }),
        })
    }

    /// Has processors of this process send this gateway's replies through the
    /// replies topic too, as they do for gateways of other processes. By default a
    /// processor hands the outcome of a command from a gateway of its own process to
    /// the waiting `send` in memory once its transaction has committed, which spares
    /// the reply's produce and fetch (a millisecond or more per command). Turn it off
    /// to exercise the replies topic in a test that runs everything in one process.
    /// Applies to every clone of this gateway, and cannot be undone.
    #[must_use]
    pub fn without_in_process_replies(self) -> Self {
        self.inner
            .in_process
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self
    }

    /// Sends `command` with a new command id and waits for its outcome.
    ///
    /// Only compiles for a command its aggregate declares
    /// (`#[aggregate(commands(..))]`, see [`DeclaresCommand`]): the aggregate's
    /// processor decides exactly those. A hand-written command its aggregate does
    /// not list is refused:
    ///
    /// ```compile_fail,E0277
    /// # use serde::{Deserialize, Serialize};
    /// # use tributary::{Aggregate, AggregateId, Apply, Command, DomainEvent};
    /// # #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
    /// # #[event(aggregate = Order)]
    /// # enum OrderEvent { Placed }
    /// # #[derive(Debug, Serialize, Deserialize, thiserror::Error)]
    /// # #[error("no")]
    /// # struct OrderError;
    /// #[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
    /// #[aggregate(name = "order", event = OrderEvent, error = OrderError)] // no commands(..)
    /// struct Order;
    /// # impl Apply<OrderEvent> for Order { fn apply(&mut self, _: &OrderEvent) {} }
    ///
    /// #[derive(Debug, Serialize, Deserialize)]
    /// struct Archive { order_id: String }
    ///
    /// impl Command for Archive {
    ///     type Aggregate = Order;
    ///     const NAME: &'static str = "archive";
    ///     fn aggregate_id(&self) -> AggregateId { AggregateId::new(self.order_id.as_str()) }
    /// }
    ///
    /// async fn archive(gateway: &tributary::command::CommandGateway) {
    ///     // error: `Archive` is not in the command list of `Order`
    ///     let _ = gateway.send(Archive { order_id: "o-1".into() }).await;
    /// }
    /// ```
    pub async fn send<C>(&self, command: C) -> Result<CommandOutcome<C::Aggregate>, GatewayError>
    where
        C: Command,
        C::Aggregate: DeclaresCommand<C>,
    {
        self.send_with(command, SendOptions::default()).await
    }

    /// Sends `command` with options (command id, correlation id, trace, timeout).
    pub async fn send_with<C>(
        &self,
        command: C,
        options: SendOptions,
    ) -> Result<CommandOutcome<C::Aggregate>, GatewayError>
    where
        C: Command,
        C::Aggregate: DeclaresCommand<C>,
    {
        let command_id = options
            .command_id
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let aggregate_id = command.aggregate_id();
        let span = info_span!("send_command", command_id = %command_id, aggregate_id = %aggregate_id,
            command_type = C::NAME, aggregate = <C::Aggregate as Aggregate>::NAME);
        // The command's record carries this span's context (with `otel`), whose
        // parent is the given trace context, if any.
        trace_context::continue_trace(&span, options.traceparent.as_deref());
        let traceparent = trace_context::traceparent_of(&span).or(options.traceparent);
        let aggregate = <C::Aggregate as Aggregate>::NAME;
        let _in_flight = GatewayMetrics::in_flight(aggregate);
        let started = std::time::Instant::now();
        let result = self
            .send_inner(
                command,
                command_id,
                aggregate_id,
                options.correlation_id,
                traceparent,
                options.timeout.unwrap_or(self.inner.timeout),
            )
            .instrument(span)
            .await;
        let outcome = match &result {
            Ok(CommandOutcome::Accepted { .. }) => "accepted",
            Ok(CommandOutcome::Rejected(_)) => "rejected",
            Err(GatewayError::Timeout { .. }) => "timeout",
            Err(_) => "error",
        };
        GatewayMetrics::finished(aggregate, outcome, started.elapsed().as_secs_f64());
        result
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
        let gateway = self
            .inner
            .in_process
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|r| r.id().to_owned());
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
                gateway: gateway.as_deref(),
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
                    Ok(Ok(Ok(Delivered::Read(reply)))) => {
                        return outcome::<A<C>>(reply, &aggregate_id);
                    }
                    Ok(Ok(Ok(Delivered::InProcess(bytes)))) => {
                        return match serde_json::from_slice::<ReplyWire>(&bytes) {
                            Ok(reply) => outcome::<A<C>>(reply, &aggregate_id),
                            Err(e) => Err(GatewayError::BadReply {
                                command_id,
                                reason: format!("the in-process reply does not decode: {e}"),
                            }),
                        };
                    }
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

/// A new W3C traceparent: random trace and parent ids, sampled.
fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let parent = uuid::Uuid::new_v4().simple().to_string();
    format!("00-{trace}-{}-01", &parent[..16])
}

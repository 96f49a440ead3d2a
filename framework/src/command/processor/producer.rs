//! Producing records: the one send-with-retry, delivery draining, forwarding a
//! misrouted command, and the record size check.

use std::time::{Duration, Instant};

use rdkafka::error::KafkaResult;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};

use crate::Aggregate;
use crate::config::KafkaConfig;

use super::Shared;
use super::contexts::{DeliveryContext, ReplyContext};
use super::partitions::PartitionState;

/// The idempotent, non-transactional producer of replies.
pub(super) fn new_reply_producer(kafka: &KafkaConfig) -> KafkaResult<BaseProducer<ReplyContext>> {
    crate::kafka::clients::reply_producer(kafka).create_with_context(ReplyContext)
}

/// Writes a command record, unchanged but keyed by its aggregate id, to the commands
/// partition `home`, inside the open transaction.
pub(super) fn forward<A: Aggregate>(
    shared: &Shared<A>,
    part: &PartitionState<A>,
    message: &OwnedMessage,
    aggregate_id: &str,
    home: i32,
) -> KafkaResult<()> {
    use rdkafka::message::Headers;
    let headers = message
        .headers()
        .map_or_else(rdkafka::message::OwnedHeaders::new, |h| {
            h.iter().fold(
                rdkafka::message::OwnedHeaders::new_with_capacity(h.count()),
                |acc, header| acc.insert(header),
            )
        });
    let record = BaseRecord::to(&shared.layout.commands)
        .partition(home)
        .key(aggregate_id.as_bytes())
        .payload(message.payload().unwrap_or_default())
        .headers(headers);
    crate::kafka::send_retrying(&part.producer, record)
}

/// Serves delivery reports until nothing is in flight. rdkafka's own flush (which
/// `commit_transaction` runs first) polls in 100 ms steps and so adds up to 100 ms
/// to every commit; polling in 1 ms steps keeps commit latency at the broker's.
pub(super) fn drain_deliveries(producer: &BaseProducer<DeliveryContext>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        producer.poll(Duration::from_millis(1));
    }
}

pub(super) fn send<C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &BaseProducer<C>,
    topic: &str,
    partition: i32,
    key: &[u8],
    value: &[u8],
    correlation_id: Option<&str>,
) -> KafkaResult<()> {
    let mut headers = rdkafka::message::OwnedHeaders::new();
    if let Some(id) = correlation_id {
        headers = headers.insert(rdkafka::message::Header {
            key: crate::codec::headers::CORRELATION_ID,
            value: Some(id),
        });
    }
    let record = BaseRecord::to(topic)
        .partition(partition)
        .key(key)
        .payload(value)
        .headers(headers);
    crate::kafka::send_retrying(producer, record)
}

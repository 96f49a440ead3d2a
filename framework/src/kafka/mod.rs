//! The Kafka adapter: the clients the framework builds (`kafka::clients`, by role), the
//! glue between the codec and rdkafka's record types, the one operation error type,
//! send-with-retry and the metadata helpers.

pub(crate) mod clients;

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

use crate::codec::{EncodedRecord, RecordRef};

/// A Kafka client operation that failed: which one, and the client's error. Every
/// error type of the runtime carries this for its Kafka failures.
#[derive(Debug, thiserror::Error)]
#[error("Kafka operation `{operation}` failed: {source}")]
pub struct KafkaOpError {
    /// What was being done (`create consumer`, `commit transaction`, …).
    pub operation: &'static str,
    /// The client's error.
    #[source]
    pub source: rdkafka::error::KafkaError,
}

/// The one error-mapping closure for a failed Kafka client call:
/// `client.call().map_err(op("what"))?`.
pub(crate) fn op(
    operation: &'static str,
) -> impl FnOnce(rdkafka::error::KafkaError) -> KafkaOpError {
    move |source| KafkaOpError { operation, source }
}

/// A borrowed [`RecordRef`] of any rdkafka message (borrowed or owned), ready for
/// [`crate::EventCodec::decode`].
pub fn record_ref<M: Message>(message: &M) -> RecordRef<'_> {
    RecordRef {
        key: message.key(),
        value: message.payload(),
        headers: message
            .headers()
            .map(|headers| headers.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default(),
    }
}

/// rdkafka conversions of an [`EncodedRecord`] (the codec itself, in
/// `tributary-core`, knows no Kafka client).
pub trait EncodedRecordExt {
    /// The headers as rdkafka [`OwnedHeaders`], in order.
    fn owned_headers(&self) -> OwnedHeaders;

    /// An rdkafka record for `topic`, borrowing key and value from `self`.
    fn to_future_record<'a>(
        &'a self,
        topic: &'a str,
    ) -> rdkafka::producer::FutureRecord<'a, [u8], [u8]>;
}

impl EncodedRecordExt for EncodedRecord {
    fn owned_headers(&self) -> OwnedHeaders {
        self.headers.iter().fold(
            OwnedHeaders::new_with_capacity(self.headers.len()),
            |acc, (key, value)| {
                acc.insert(Header {
                    key,
                    value: Some(value),
                })
            },
        )
    }

    fn to_future_record<'a>(
        &'a self,
        topic: &'a str,
    ) -> rdkafka::producer::FutureRecord<'a, [u8], [u8]> {
        rdkafka::producer::FutureRecord::to(topic)
            .key(self.key.as_slice())
            .payload(self.value.as_slice())
            .headers(self.owned_headers())
    }
}

/// Logs a client-level error of a consumer that asked for end-of-partition events
/// (`enable.partition.eof`): those arrive through the same channel but are not
/// errors, so they are dropped here instead of being logged at ERROR.
pub(crate) fn log_client_error(
    client: &'static str,
    error: rdkafka::error::KafkaError,
    reason: &str,
) {
    let eof = matches!(error, rdkafka::error::KafkaError::PartitionEOF(_))
        || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF);
    if !eof {
        tracing::error!(%error, reason, client, "Kafka client error");
    }
}

/// Whether a Kafka client error may go away by itself: a leader being elected, a
/// broker restarting, metadata not yet propagated, a coordinator moving. Retrying
/// such an operation for a bounded time is the right response; any other error is
/// reported at once.
pub fn is_retriable(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    if let rdkafka::error::KafkaError::Transaction(e) = error {
        return e.is_retriable();
    }
    error.rdkafka_error_code().is_some_and(|code| {
        matches!(
            code,
            C::NotLeaderForPartition
                | C::LeaderNotAvailable
                | C::UnknownTopicOrPartition
                | C::RequestTimedOut
                | C::OperationTimedOut
                | C::NetworkException
                | C::BrokerNotAvailable
                | C::ReplicaNotAvailable
                | C::NotCoordinator
                | C::CoordinatorNotAvailable
                | C::CoordinatorLoadInProgress
                | C::NotEnoughReplicas
                | C::NotEnoughReplicasAfterAppend
                | C::KafkaStorageError
                | C::FencedLeaderEpoch
                | C::UnknownLeaderEpoch
                | C::OffsetNotAvailable
                | C::PreferredLeaderNotAvailable
                | C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::Resolve
                | C::UnknownPartition
        )
    })
}

/// `fetch_watermarks`, retried while the error is [retriable](is_retriable) and
/// `within` has not passed (each attempt may wait up to 10 s). Right after a topic
/// is created, or while a partition's leader moves, a broker answers "not leader"
/// for a moment.
pub(crate) fn watermarks_within<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    topic: &str,
    partition: i32,
    within: std::time::Duration,
) -> rdkafka::error::KafkaResult<(i64, i64)> {
    use rdkafka::consumer::Consumer;
    let deadline = std::time::Instant::now() + within;
    let mut pause = std::time::Duration::from_millis(20);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match consumer.fetch_watermarks(
            topic,
            partition,
            left.clamp(
                std::time::Duration::from_millis(100),
                std::time::Duration::from_secs(10),
            ),
        ) {
            Err(error) if is_retriable(&error) && std::time::Instant::now() + pause < deadline => {
                tracing::debug!(%error, topic, partition, "watermarks not available yet; retrying");
                std::thread::sleep(pause);
                // A client that neither subscribes to nor is assigned the topic does
                // not refresh its metadata by itself: ask, so a new leader is found.
                let _ = consumer.fetch_metadata(Some(topic), std::time::Duration::from_secs(5));
                pause = (pause * 2).min(std::time::Duration::from_millis(500));
            }
            result => return result,
        }
    }
}

/// Produces `record`, waiting while the client's queue is full (serving delivery
/// reports meanwhile) instead of failing: every produce of the framework goes
/// through here.
pub(crate) fn send_retrying<C, K, P>(
    producer: &rdkafka::producer::BaseProducer<C>,
    mut record: rdkafka::producer::BaseRecord<'_, K, P>,
) -> rdkafka::error::KafkaResult<()>
where
    C: rdkafka::producer::ProducerContext<DeliveryOpaque = ()>,
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                back,
            )) => {
                producer.poll(std::time::Duration::from_millis(10));
                record = back;
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// The topics of `topics` that the cluster does not know (or that have no
/// partitions yet), asked on a blocking thread with a consumer-type client, whose
/// metadata requests never create topics (a producer's or an admin client's make a
/// broker with `auto.create.topics.enable` create them with its defaults).
pub(crate) async fn missing_topics(
    config: rdkafka::ClientConfig,
    topics: Vec<String>,
    timeout: std::time::Duration,
) -> rdkafka::error::KafkaResult<Vec<String>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = config.create()?;
        let mut missing = Vec::new();
        for topic in topics {
            let metadata = client.fetch_metadata(Some(&topic), timeout)?;
            let present = metadata
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
            if !present {
                missing.push(topic);
            }
        }
        Ok(missing)
    })
    .await
    .unwrap_or(Err(rdkafka::error::KafkaError::Canceled))
}

#[cfg(test)]
mod op_tests {
    use super::op;

    #[test]
    fn an_operation_error_names_the_operation_and_keeps_the_cause() {
        let error = op("commit transaction")(rdkafka::error::KafkaError::Canceled);
        assert_eq!(error.operation, "commit transaction");
        assert!(
            error
                .to_string()
                .starts_with("Kafka operation `commit transaction` failed: "),
            "{error}"
        );
        assert!(std::error::Error::source(&error).is_some());
    }
}

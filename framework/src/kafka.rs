//! Glue between the codec and rdkafka's record types.

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

use crate::codec::{EncodedRecord, RecordRef};

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

impl EncodedRecord {
    /// The headers as rdkafka [`OwnedHeaders`], in order.
    pub fn owned_headers(&self) -> OwnedHeaders {
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

    /// An rdkafka record for `topic`, borrowing key and value from `self`.
    pub fn to_future_record<'a>(
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

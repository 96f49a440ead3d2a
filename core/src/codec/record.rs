//! Records as the codec writes and reads them, independent of the Kafka client.

/// A record ready to produce: key, value and headers, in the order written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRecord {
    /// The aggregate id, UTF-8.
    pub key: Vec<u8>,
    /// The JSON payload.
    pub value: Vec<u8>,
    /// `(name, value)` pairs.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl EncodedRecord {
    /// A borrowed view, as [`EventCodec::decode`](super::EventCodec::decode) takes it.
    pub fn as_record(&self) -> RecordRef<'_> {
        RecordRef {
            key: Some(&self.key),
            value: Some(&self.value),
            headers: self
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), Some(value.as_slice())))
                .collect(),
        }
    }

    /// An upper estimate of the bytes this record takes in a Kafka record batch of its
    /// own (batch header, record framing, key, value, headers), to compare with a
    /// record size limit (`message.max.bytes`, `max.message.bytes`) before producing.
    pub fn size_estimate(&self) -> usize {
        const BATCH_AND_RECORD_OVERHEAD: usize = 61 + 21;
        const PER_HEADER_OVERHEAD: usize = 10;
        BATCH_AND_RECORD_OVERHEAD
            + self.key.len()
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|(name, value)| name.len() + value.len() + PER_HEADER_OVERHEAD)
                .sum::<usize>()
    }
}

/// A borrowed view of a consumed record, independent of the Kafka client.
/// The `tributary` runtime builds one from each Kafka message it consumes
/// (`tributary::kafka::record_ref`).
#[derive(Debug, Clone, Default)]
pub struct RecordRef<'a> {
    /// Record key; `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// Record value; `None` for a null value (tombstone).
    pub value: Option<&'a [u8]>,
    /// Headers in record order; a header may have a null value.
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

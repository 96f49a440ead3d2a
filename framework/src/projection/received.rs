//! A consumed record as a projection worker keeps it until it is applied: offset,
//! key, value and headers, copied into one buffer.
//!
//! rdkafka's own copy (`BorrowedMessage::detach`) allocates every header on its
//! own and frees them one by one; in a rebuild that copy and its release took a
//! third of the worker loop's thread. This one allocates twice per record.

use std::ops::Range;

use crate::codec::RecordRef;

/// A consumed record, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Received {
    offset: i64,
    /// Key, value, then each header's name and value, one after the other.
    bytes: Vec<u8>,
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
    /// Each header's name and value (`None`: a null value), in record order.
    headers: Vec<(Range<usize>, Option<Range<usize>>)>,
}

impl Received {
    /// Copies `record`, found at `offset`.
    pub(crate) fn new(offset: i64, record: &RecordRef<'_>) -> Self {
        let len = record.key.map_or(0, <[u8]>::len)
            + record.value.map_or(0, <[u8]>::len)
            + record
                .headers
                .iter()
                .map(|(name, value)| name.len() + value.map_or(0, <[u8]>::len))
                .sum::<usize>();
        let mut bytes = Vec::with_capacity(len);
        let mut put = |part: &[u8]| {
            let start = bytes.len();
            bytes.extend_from_slice(part);
            start..bytes.len()
        };
        let key = record.key.map(&mut put);
        let value = record.value.map(&mut put);
        let headers = record
            .headers
            .iter()
            .map(|(name, value)| (put(name.as_bytes()), value.map(&mut put)))
            .collect();
        Self {
            offset,
            bytes,
            key,
            value,
            headers,
        }
    }

    /// The record's offset in its partition.
    pub(crate) fn offset(&self) -> i64 {
        self.offset
    }

    /// The key; `None` for a null key.
    pub(crate) fn key(&self) -> Option<&[u8]> {
        self.key.clone().map(|range| &self.bytes[range])
    }

    /// The value; `None` for a null value (tombstone).
    pub(crate) fn payload(&self) -> Option<&[u8]> {
        self.value.clone().map(|range| &self.bytes[range])
    }

    /// The headers in record order, as `(name, value)`.
    pub(crate) fn headers(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.headers.iter().map(|(name, value)| {
            // Copied from a `&str`, so always UTF-8.
            let name = std::str::from_utf8(&self.bytes[name.clone()]).unwrap_or_default();
            (name, value.clone().map(|range| &self.bytes[range]))
        })
    }

    /// A borrowed view, as the codec reads it.
    pub(crate) fn as_record(&self) -> RecordRef<'_> {
        RecordRef {
            key: self.key(),
            value: self.payload(),
            headers: self.headers().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn bytes() -> impl Strategy<Value = Option<Vec<u8>>> {
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16))
    }

    proptest! {
        /// Whatever the record, the copy gives back the same key, value and
        /// headers, in order, nulls and empty parts included.
        #[test]
        fn the_copy_reads_back_as_the_record(
            offset in any::<i64>(),
            key in bytes(),
            value in bytes(),
            headers in proptest::collection::vec((".{0,8}", bytes()), 0..6),
        ) {
            let record = RecordRef {
                key: key.as_deref(),
                value: value.as_deref(),
                headers: headers.iter().map(|(n, v)| (n.as_str(), v.as_deref())).collect(),
            };
            let received = Received::new(offset, &record);
            prop_assert_eq!(received.offset(), offset);
            let view = received.as_record();
            prop_assert_eq!(view.key, record.key);
            prop_assert_eq!(view.value, record.value);
            prop_assert_eq!(view.headers, record.headers);
        }
    }
}

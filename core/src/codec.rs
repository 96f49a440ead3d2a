//! The CloudEvents 1.0 Kafka protocol binding, binary content mode.
//!
//! An [`EventEnvelope`] becomes one Kafka record: key = aggregate id, value = the
//! event's JSON payload, CloudEvents attributes in `ce_*` headers. Any CloudEvents
//! reader can consume the log without Tributary. The full specification, with an
//! example record, is `docs/wire-format.md`.

use std::fmt;
use std::marker::PhantomData;

use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use uuid::Uuid;

use crate::aggregate::AggregateId;
use crate::envelope::{EventEnvelope, Metadata};
use crate::event::{DomainEvent, EventType, PayloadError};
use crate::upcast::{RegisterUpcasterError, UpcastError, UpcastFailure, Upcaster, Upcasters};

/// Header names of the wire format.
pub mod headers {
    /// CloudEvents spec version; always `1.0`.
    pub const SPEC_VERSION: &str = "ce_specversion";
    /// Event id (UUIDv7).
    pub const ID: &str = "ce_id";
    /// `/{prefix}/{aggregate}`.
    pub const SOURCE: &str = "ce_source";
    /// `{aggregate}.{event}.v{version}`.
    pub const TYPE: &str = "ce_type";
    /// RFC 3339 time, UTC, microseconds.
    pub const TIME: &str = "ce_time";
    /// The aggregate id.
    pub const SUBJECT: &str = "ce_subject";
    /// `application/json`.
    pub const CONTENT_TYPE: &str = "content-type";
    /// Aggregate version after the event, as 20 zero-padded decimal digits.
    pub const SEQUENCE: &str = "ce_sequence";
    /// Id of the message (command) that caused the event.
    pub const CAUSATION_ID: &str = "ce_causationid";
    /// Id of the business flow the event belongs to.
    pub const CORRELATION_ID: &str = "ce_correlationid";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
}

/// The CloudEvents spec version written and accepted.
pub const SPEC_VERSION: &str = "1.0";
/// The content type written and accepted.
pub const CONTENT_TYPE: &str = "application/json";

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
    /// A borrowed view, as [`EventCodec::decode`] takes it.
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

/// Why an envelope could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The aggregate id is empty; every event needs a key.
    #[error("cannot encode an event of `{aggregate}` with an empty aggregate id")]
    EmptyAggregateId {
        /// The aggregate type.
        aggregate: &'static str,
    },
    /// Sequences start at 1.
    #[error("cannot encode `{event_type}` with sequence 0: aggregate versions start at 1")]
    ZeroSequence {
        /// The event type.
        event_type: &'static str,
    },
    /// The payload did not serialize to JSON.
    #[error("cannot serialize the payload of `{event_type}`: {source}")]
    Payload {
        /// The event type.
        event_type: &'static str,
        /// The cause.
        source: PayloadError,
    },
}

/// Why a record could not be decoded as an event. Every variant names what is
/// wrong; decoding never panics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A required header is absent (or has a null value).
    #[error(
        "record has no `{name}` header; was it written by Tributary or a CloudEvents binary-mode producer?"
    )]
    MissingHeader {
        /// The header name.
        name: &'static str,
    },
    /// A CloudEvents header appears more than once.
    #[error(
        "record has the `{name}` header {count} times; CloudEvents attributes appear at most once"
    )]
    DuplicateHeader {
        /// The header name.
        name: &'static str,
        /// How often it appears.
        count: usize,
    },
    /// A header value is not what the wire format allows.
    #[error("header `{name}` has the invalid value {value:?}: {reason}")]
    InvalidHeader {
        /// The header name.
        name: &'static str,
        /// The value, lossily decoded and truncated to 200 bytes.
        value: String,
        /// What the value should look like.
        reason: &'static str,
    },
    /// The CloudEvents spec version is not 1.0.
    #[error("unsupported CloudEvents spec version {found:?}; only \"1.0\" is supported")]
    UnsupportedSpecVersion {
        /// The version found.
        found: String,
    },
    /// The payload is not JSON.
    #[error("unsupported content type {found:?}; only \"application/json\" is supported")]
    UnsupportedContentType {
        /// The content type found.
        found: String,
    },
    /// The event type is not one of this enum's types.
    #[error(
        "unknown event type {ce_type:?} for aggregate `{aggregate}` (known: {known}); is a newer version of the application writing events this one does not know?"
    )]
    UnknownEventType {
        /// The `ce_type` found.
        ce_type: String,
        /// The aggregate type of the event enum.
        aggregate: &'static str,
        /// The known `ce_type`s, comma-separated.
        known: String,
    },
    /// The record was written with a newer version of the event type.
    #[error(
        "event type `{event}` has version v{found} but this application knows at most v{current}; deploy the newer version of the application to read it"
    )]
    FutureVersion {
        /// The event type name.
        event: &'static str,
        /// The version found.
        found: u32,
        /// The current version.
        current: u32,
    },
    /// No upcaster is registered for a step from an old version.
    #[error(
        "event type `{event}` is at v{found} and the current version is v{current}, but no upcaster from v{missing} is registered; register `Upcaster::new(\"{event}\", {missing}, ..)` on the codec"
    )]
    MissingUpcaster {
        /// The event type name.
        event: &'static str,
        /// The version found.
        found: u32,
        /// The current version.
        current: u32,
        /// The step that is missing.
        missing: u32,
    },
    /// An upcaster rejected the old payload.
    #[error("upcasting `{event}` from v{from_version} failed: {source}")]
    Upcast {
        /// The event type name.
        event: &'static str,
        /// The step that failed.
        from_version: u32,
        /// The upcaster's error.
        source: UpcastError,
    },
    /// The record has a null value.
    #[error("record has a null value (tombstone); events always have a JSON payload")]
    MissingValue,
    /// The value is not valid JSON.
    #[error("the value of `{ce_type}` is not valid JSON: {source}")]
    InvalidJson {
        /// The `ce_type` found.
        ce_type: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// The JSON does not match the event's fields.
    #[error("the payload of `{ce_type}` does not match the event: {source}")]
    Payload {
        /// The `ce_type` found.
        ce_type: String,
        /// The cause.
        source: PayloadError,
    },
    /// The record key is not UTF-8 or disagrees with `ce_subject`.
    #[error(
        "record key {key:?} does not match the `ce_subject` header {subject:?}; the key must be the aggregate id"
    )]
    KeyMismatch {
        /// The key, lossily decoded.
        key: String,
        /// The subject.
        subject: String,
    },
}

/// Encodes and decodes the events of one aggregate type in the CloudEvents binary
/// mode, applying upcasters to old event versions.
pub struct EventCodec<E> {
    prefix: String,
    source: String,
    upcasters: Upcasters,
    _events: PhantomData<fn() -> E>,
}

impl<E> Clone for EventCodec<E> {
    fn clone(&self) -> Self {
        Self {
            prefix: self.prefix.clone(),
            source: self.source.clone(),
            upcasters: self.upcasters.clone(),
            _events: PhantomData,
        }
    }
}

impl<E> fmt::Debug for EventCodec<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventCodec")
            .field("prefix", &self.prefix)
            .field("source", &self.source)
            .field("upcasters", &self.upcasters)
            .finish()
    }
}

/// Why a topic prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid topic prefix {prefix:?}: use 1 to 200 ASCII letters, digits, '_' or '-' (dots separate the prefix from the aggregate name)"
)]
pub struct InvalidPrefix {
    /// The prefix given.
    pub prefix: String,
}

/// Checks a topic prefix: it becomes part of Kafka topic names. The gateway,
/// processors and workers call it before they build any topic name.
///
/// # Errors
/// [`InvalidPrefix`] unless the prefix is 1 to 200 ASCII letters, digits, `_` or
/// `-`.
pub fn validate_prefix(prefix: &str) -> Result<(), InvalidPrefix> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 200
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(InvalidPrefix {
            prefix: prefix.to_owned(),
        })
    }
}

impl<E: DomainEvent> EventCodec<E> {
    /// A codec for topics under `prefix` (`shop` gives `shop.order.events` and the
    /// source `/shop/order`).
    pub fn new(prefix: impl Into<String>) -> Result<Self, InvalidPrefix> {
        let prefix = prefix.into();
        validate_prefix(&prefix)?;
        Ok(Self {
            source: format!("/{prefix}/{}", E::AGGREGATE),
            prefix,
            upcasters: Upcasters::default(),
            _events: PhantomData,
        })
    }

    /// Registers an upcaster. Fails if the event type is unknown, the step does not
    /// lead towards the current version, or the step is already registered.
    pub fn with_upcaster(mut self, upcaster: Upcaster) -> Result<Self, RegisterUpcasterError> {
        let Some(current) = E::event_type_named(upcaster.event()) else {
            return Err(RegisterUpcasterError::UnknownEvent {
                event: upcaster.event().to_owned(),
                aggregate: E::AGGREGATE,
                known: E::EVENT_TYPES
                    .iter()
                    .map(|t| t.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        if upcaster.from_version() == 0 || upcaster.from_version() >= current.version {
            return Err(RegisterUpcasterError::NotOlder {
                event: upcaster.event().to_owned(),
                from_version: upcaster.from_version(),
                current: current.version,
            });
        }
        self.upcasters.insert(upcaster)?;
        Ok(self)
    }

    /// The topic prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The `ce_source` of every event: `/{prefix}/{aggregate}`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The events topic: `{prefix}.{aggregate}.events`.
    pub fn events_topic(&self) -> String {
        crate::topics::events_topic(&self.prefix, E::AGGREGATE)
    }

    /// Encodes an envelope as a record.
    pub fn encode(&self, envelope: &EventEnvelope<E>) -> Result<EncodedRecord, EncodeError> {
        let event_type = envelope.event.event_type();
        if envelope.aggregate_id.as_str().is_empty() {
            return Err(EncodeError::EmptyAggregateId {
                aggregate: E::AGGREGATE,
            });
        }
        if envelope.sequence == 0 {
            return Err(EncodeError::ZeroSequence {
                event_type: event_type.ce_type,
            });
        }
        let payload = envelope
            .event
            .to_payload()
            .and_then(|v| serde_json::to_vec(&v).map_err(PayloadError::Json))
            .map_err(|source| EncodeError::Payload {
                event_type: event_type.ce_type,
                source,
            })?;

        let mut headers: Vec<(String, Vec<u8>)> = Vec::with_capacity(11);
        let mut push = |name: &str, value: &str| {
            headers.push((name.to_owned(), value.as_bytes().to_vec()));
        };
        push(headers::SPEC_VERSION, SPEC_VERSION);
        push(headers::ID, &envelope.id.hyphenated().to_string());
        push(headers::SOURCE, &self.source);
        push(headers::TYPE, event_type.ce_type);
        push(headers::TIME, &format_time(&envelope.time));
        push(headers::SUBJECT, envelope.aggregate_id.as_str());
        push(headers::CONTENT_TYPE, CONTENT_TYPE);
        push(headers::SEQUENCE, &format_sequence(envelope.sequence));
        let meta = &envelope.metadata;
        if let Some(id) = &meta.causation_id {
            push(headers::CAUSATION_ID, id);
        }
        if let Some(id) = &meta.correlation_id {
            push(headers::CORRELATION_ID, id);
        }
        if let Some(tp) = &meta.traceparent {
            push(headers::TRACEPARENT, tp);
        }
        Ok(EncodedRecord {
            key: envelope.aggregate_id.as_bytes().to_vec(),
            value: payload,
            headers,
        })
    }

    /// Decodes a record, upcasting an older event version to the current one.
    pub fn decode(&self, record: &RecordRef<'_>) -> Result<EventEnvelope<E>, DecodeError> {
        let headers = Headers(&record.headers);
        let spec = headers.required_str(headers::SPEC_VERSION)?;
        if spec != SPEC_VERSION {
            return Err(DecodeError::UnsupportedSpecVersion {
                found: spec.to_owned(),
            });
        }
        let ce_type = headers.required_str(headers::TYPE)?;
        let (event_type, found_version) = self.parse_type(ce_type)?;
        let id = headers.required_str(headers::ID)?;
        let id = Uuid::try_parse(id).map_err(|_| invalid(headers::ID, id, "expected a UUID"))?;
        let source = headers.required_str(headers::SOURCE)?;
        if source.is_empty() {
            return Err(invalid(headers::SOURCE, source, "must not be empty"));
        }
        let time = headers.required_str(headers::TIME)?;
        let raw_time = time;
        let time = DateTime::parse_from_rfc3339(time)
            .map_err(|_| invalid(headers::TIME, time, "expected an RFC 3339 timestamp"))?
            .with_timezone(&Utc);
        // An offset can carry a time of year 9999 past 10000 (or of year 0 before 0)
        // in UTC, which RFC 3339 cannot write: it would re-encode unreadably.
        if !(0..=9999).contains(&time.year()) {
            return Err(invalid(
                headers::TIME,
                raw_time,
                "in UTC, the year is outside 0000-9999",
            ));
        }
        let subject = headers.required_str(headers::SUBJECT)?;
        if subject.is_empty() {
            return Err(invalid(
                headers::SUBJECT,
                subject,
                "the aggregate id must not be empty",
            ));
        }
        if let Some(key) = record.key
            && key != subject.as_bytes()
        {
            return Err(DecodeError::KeyMismatch {
                key: lossy(key),
                subject: subject.to_owned(),
            });
        }
        let content_type = headers.required_str(headers::CONTENT_TYPE)?;
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        if !media_type.eq_ignore_ascii_case(CONTENT_TYPE) {
            return Err(DecodeError::UnsupportedContentType {
                found: content_type.to_owned(),
            });
        }
        let sequence = headers.required_str(headers::SEQUENCE)?;
        let sequence = parse_sequence(sequence).ok_or_else(|| {
            invalid(
                headers::SEQUENCE,
                sequence,
                "expected a decimal integer from 1 to 2^64 - 1",
            )
        })?;
        let metadata = Metadata {
            causation_id: headers
                .optional_str(headers::CAUSATION_ID)?
                .map(str::to_owned),
            correlation_id: headers
                .optional_str(headers::CORRELATION_ID)?
                .map(str::to_owned),
            // W3C trace context: an invalid traceparent is ignored, not an error.
            traceparent: headers
                .optional_str(headers::TRACEPARENT)?
                .filter(|tp| is_valid_traceparent(tp))
                .map(str::to_owned),
        };

        let value = record.value.ok_or(DecodeError::MissingValue)?;
        let payload: serde_json::Value =
            serde_json::from_slice(value).map_err(|source| DecodeError::InvalidJson {
                ce_type: ce_type.to_owned(),
                source,
            })?;
        let payload = self.upcast(event_type, found_version, payload)?;
        let event =
            E::from_payload(event_type, payload).map_err(|source| DecodeError::Payload {
                ce_type: ce_type.to_owned(),
                source,
            })?;
        Ok(EventEnvelope {
            id,
            aggregate_id: AggregateId::new(subject),
            sequence,
            time,
            metadata,
            event,
        })
    }

    /// Decodes a bare payload of type `ce_type` (`order.placed.v1`), upcasting an
    /// older version. Used where the payload travels without record headers.
    pub fn decode_payload(
        &self,
        ce_type: &str,
        payload: serde_json::Value,
    ) -> Result<E, DecodeError> {
        let (event_type, found_version) = self.parse_type(ce_type)?;
        let payload = self.upcast(event_type, found_version, payload)?;
        E::from_payload(event_type, payload).map_err(|source| DecodeError::Payload {
            ce_type: ce_type.to_owned(),
            source,
        })
    }

    fn parse_type(&self, ce_type: &str) -> Result<(&'static EventType, u32), DecodeError> {
        let unknown = || DecodeError::UnknownEventType {
            ce_type: ce_type.to_owned(),
            aggregate: E::AGGREGATE,
            known: E::EVENT_TYPES
                .iter()
                .map(|t| t.ce_type)
                .collect::<Vec<_>>()
                .join(", "),
        };
        let (name, version) = ce_type.rsplit_once(".v").ok_or_else(unknown)?;
        let version: u32 = match version.parse() {
            Ok(v) if v > 0 && !version.starts_with(['0', '+']) => v,
            _ => return Err(unknown()),
        };
        let event_type = E::event_type_named(name).ok_or_else(unknown)?;
        if version > event_type.version {
            return Err(DecodeError::FutureVersion {
                event: event_type.name,
                found: version,
                current: event_type.version,
            });
        }
        Ok((event_type, version))
    }

    fn upcast(
        &self,
        event_type: &'static EventType,
        found: u32,
        payload: serde_json::Value,
    ) -> Result<serde_json::Value, DecodeError> {
        if found == event_type.version {
            return Ok(payload);
        }
        self.upcasters
            .run(event_type.name, found, event_type.version, payload)
            .map_err(|failure| match failure {
                UpcastFailure::Missing { version } => DecodeError::MissingUpcaster {
                    event: event_type.name,
                    found,
                    current: event_type.version,
                    missing: version,
                },
                UpcastFailure::Failed { version, error } => DecodeError::Upcast {
                    event: event_type.name,
                    from_version: version,
                    source: error,
                },
            })
    }
}

struct Headers<'r, 'a>(&'r [(&'a str, Option<&'a [u8]>)]);

impl<'a> Headers<'_, 'a> {
    fn optional_str(&self, name: &'static str) -> Result<Option<&'a str>, DecodeError> {
        let mut found = None;
        let mut count = 0;
        for (n, v) in self.0 {
            if *n == name {
                count += 1;
                found = Some(*v);
            }
        }
        if count > 1 {
            return Err(DecodeError::DuplicateHeader { name, count });
        }
        match found.flatten() {
            None => Ok(None),
            Some(bytes) => std::str::from_utf8(bytes)
                .map(Some)
                .map_err(|_| invalid_bytes(name, bytes, "not UTF-8")),
        }
    }

    fn required_str(&self, name: &'static str) -> Result<&'a str, DecodeError> {
        self.optional_str(name)?
            .ok_or(DecodeError::MissingHeader { name })
    }
}

fn lossy(bytes: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
    if bytes.len() > 200 {
        s.push('…');
    }
    s
}

fn invalid(name: &'static str, value: &str, reason: &'static str) -> DecodeError {
    invalid_bytes(name, value.as_bytes(), reason)
}

fn invalid_bytes(name: &'static str, value: &[u8], reason: &'static str) -> DecodeError {
    DecodeError::InvalidHeader {
        name,
        value: lossy(value),
        reason,
    }
}

/// A time as the wire format writes the `ce_time` header: RFC 3339, UTC (`Z`),
/// microseconds.
pub fn format_time(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// `ce_sequence`: zero-padded to 20 digits, so that the lexicographic order the
/// CloudEvents sequence extension prescribes equals the numeric order.
pub(crate) fn format_sequence(sequence: u64) -> String {
    format!("{sequence:020}")
}

fn parse_sequence(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u64>().ok().filter(|&n| n > 0)
}

/// `00-{32 hex trace id}-{16 hex parent id}-{2 hex flags}`, ids not all zero.
fn is_valid_traceparent(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    matches!(parts.as_slice(), [version, trace, parent, flags]
        if hex(version, 2) && *version != "ff"
            && hex(trace, 32) && trace.bytes().any(|b| b != b'0')
            && hex(parent, 16) && parent.bytes().any(|b| b != b'0')
            && hex(flags, 2))
}

#[cfg(test)]
mod tests;

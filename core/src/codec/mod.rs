//! The CloudEvents 1.0 Kafka protocol binding, binary content mode.
//!
//! An [`EventEnvelope`] becomes one Kafka record: key = aggregate id, value = the
//! event's JSON payload, CloudEvents attributes in `ce_*` headers. Any CloudEvents
//! reader can consume the log without Tributary. The full specification, with an
//! example record, is `docs/wire-format.md`.

//!
//! The codec only translates: it knows the event types of one enum and their
//! upcasters, not where records go. Topic names and the `ce_source` value come from
//! [`crate::topics`].

use std::fmt;
use std::marker::PhantomData;

use chrono::{DateTime, Datelike, Utc};
use uuid::Uuid;

use crate::aggregate::AggregateId;
use crate::envelope::{EventEnvelope, Metadata};
use crate::event::{DomainEvent, EventType, PayloadError};
use crate::upcast::{RegisterUpcasterError, UpcastFailure, Upcaster, Upcasters};

mod error;
mod fields;
pub mod headers;
mod record;

pub use error::{DecodeError, EncodeError};
pub(crate) use fields::format_sequence;
pub use fields::format_time;
use fields::{Headers, invalid, is_valid_traceparent, lossy, parse_sequence};
pub use record::{EncodedRecord, RecordRef};

/// The CloudEvents spec version written and accepted.
pub const SPEC_VERSION: &str = "1.0";
/// The content type written and accepted.
pub const CONTENT_TYPE: &str = "application/json";

/// Encodes and decodes the events of one aggregate type in the CloudEvents binary
/// mode, applying upcasters to old event versions.
pub struct EventCodec<E> {
    upcasters: Upcasters,
    _events: PhantomData<fn() -> E>,
}

impl<E> Clone for EventCodec<E> {
    fn clone(&self) -> Self {
        Self {
            upcasters: self.upcasters.clone(),
            _events: PhantomData,
        }
    }
}

impl<E> fmt::Debug for EventCodec<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventCodec")
            .field("upcasters", &self.upcasters)
            .finish()
    }
}

impl<E: DomainEvent> Default for EventCodec<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: DomainEvent> EventCodec<E> {
    /// A codec for the current versions of `E`'s event types, with no upcasters.
    pub fn new() -> Self {
        Self {
            upcasters: Upcasters::default(),
            _events: PhantomData,
        }
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

    /// Encodes an envelope as a record whose `ce_source` header is `source`. The
    /// framework writes [`crate::topics::event_source`] (`/{prefix}/{aggregate}`).
    pub fn encode(
        &self,
        envelope: &EventEnvelope<E>,
        source: &str,
    ) -> Result<EncodedRecord, EncodeError> {
        let event_type = envelope.event.event_type();
        if source.is_empty() {
            return Err(EncodeError::EmptySource {
                aggregate: E::AGGREGATE,
            });
        }
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
        push(headers::SOURCE, source);
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
        let subject = subject(&headers, record)?;
        let content_type = headers.required_str(headers::CONTENT_TYPE)?;
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        if !media_type.eq_ignore_ascii_case(CONTENT_TYPE) {
            return Err(DecodeError::UnsupportedContentType {
                found: content_type.to_owned(),
            });
        }
        let sequence = sequence(&headers)?;
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
        // At the current version the payload is read straight from its text when it
        // can be; otherwise (an older version, or anything wrong with it) through a
        // `Value`, which upcasters take and which gives the errors.
        let fast = (found_version == event_type.version)
            .then(|| E::from_payload_text(event_type, value))
            .flatten();
        let event = match fast {
            Some(event) => event,
            None => {
                let payload =
                    serde_json::from_slice(value).map_err(|source| DecodeError::InvalidJson {
                        ce_type: ce_type.to_owned(),
                        source,
                    })?;
                self.event_from_value(ce_type, event_type, found_version, payload)?
            }
        };
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
        self.event_from_value(ce_type, event_type, found_version, payload)
    }

    /// A payload of type `ce_type` at `found_version`, upcast to the current version
    /// of `event_type` and deserialized.
    fn event_from_value(
        &self,
        ce_type: &str,
        event_type: &'static EventType,
        found_version: u32,
        payload: serde_json::Value,
    ) -> Result<E, DecodeError> {
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

/// The aggregate id (`ce_subject`, equal to the key) and the sequence
/// (`ce_sequence`) of an event record, read from its headers without decoding the
/// payload: what an index of the log needs, and readable for event types and
/// versions this release does not know. The same checks as [`EventCodec::decode`]
/// apply to these two headers.
pub fn subject_and_sequence<'a>(record: &RecordRef<'a>) -> Result<(&'a str, u64), DecodeError> {
    let headers = Headers(&record.headers);
    Ok((subject(&headers, record)?, sequence(&headers)?))
}

/// `ce_subject`: present, not empty, and equal to the key when there is one.
fn subject<'a>(headers: &Headers<'_, 'a>, record: &RecordRef<'a>) -> Result<&'a str, DecodeError> {
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
    Ok(subject)
}

/// `ce_sequence`: a decimal integer from 1.
fn sequence(headers: &Headers<'_, '_>) -> Result<u64, DecodeError> {
    let sequence = headers.required_str(headers::SEQUENCE)?;
    parse_sequence(sequence).ok_or_else(|| {
        invalid(
            headers::SEQUENCE,
            sequence,
            "expected a decimal integer from 1 to 2^64 - 1",
        )
    })
}

#[cfg(test)]
mod tests;

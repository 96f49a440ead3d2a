//! Why an event could not be encoded or decoded.

use crate::event::PayloadError;
use crate::upcast::UpcastError;

/// Why an envelope could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The `ce_source` given is empty; CloudEvents requires one.
    #[error(
        "cannot encode an event of `{aggregate}` with an empty `ce_source`; pass topics::event_source(prefix, aggregate)"
    )]
    EmptySource {
        /// The aggregate type.
        aggregate: &'static str,
    },
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

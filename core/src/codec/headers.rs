//! Header names of the wire format.

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

//! Entry points for the fuzz targets in `fuzz/` and `tests/fuzz_corpus.rs`.
//!
//! The command and reply decoders of [`crate::command::wire`] are crate-private; this
//! module calls them exactly as the command processor and the gateway do and hands the
//! result out in plain types. Not a public API; may change in any release.
#![doc(hidden)]

use crate::codec::RecordRef;
use crate::command::wire::{self, OutcomeWire, ReplyWire};

/// A command record as the command processor reads it (`wire::decode_command`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedCommand<'a> {
    /// `ce_id`.
    pub command_id: &'a str,
    /// `ce_type`: `{aggregate}.{command}`.
    pub command_type: &'a str,
    /// The key, or `ce_subject` without a UTF-8 key.
    pub aggregate_id: &'a str,
    /// `ce_correlationid`.
    pub correlation_id: Option<&'a str>,
    /// `traceparent`.
    pub traceparent: Option<&'a str>,
    /// `tributary_replypartition`.
    pub reply_partition: Option<i32>,
    /// `tributary_gateway`.
    pub gateway: Option<&'a str>,
    /// The command's JSON.
    pub payload: &'a [u8],
}

/// Decodes a command record with the processor's decoder. The error is its message.
pub fn decode_command<'a>(record: &RecordRef<'a>) -> Result<DecodedCommand<'a>, String> {
    let c = wire::decode_command(record).map_err(|e| e.to_string())?;
    Ok(DecodedCommand {
        command_id: c.command_id,
        command_type: c.command_type,
        aggregate_id: c.aggregate_id,
        correlation_id: c.correlation_id,
        traceparent: c.traceparent,
        reply_partition: c.reply_partition,
        gateway: c.gateway,
        payload: c.payload,
    })
}

/// A reply or outcome record's value as the gateway and the processor's restore read it.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedReply {
    /// The command id.
    pub command_id: String,
    /// `accepted`, `rejected`, `failed` or `unavailable`.
    pub outcome: &'static str,
    /// `accepted`: the aggregate version after the events.
    pub version: Option<u64>,
    /// `accepted`: each event's `(ce_type, data)`, which the gateway passes to
    /// [`crate::EventCodec::decode_payload`].
    pub events: Vec<(String, serde_json::Value)>,
    /// `rejected`: the domain error's JSON, which the gateway deserializes into the
    /// aggregate's error type.
    pub error: Option<serde_json::Value>,
}

/// Decodes a reply or outcome value (`serde_json::from_slice::<ReplyWire>`).
pub fn decode_reply(value: &[u8]) -> Result<DecodedReply, serde_json::Error> {
    let reply: ReplyWire = serde_json::from_slice(value)?;
    let mut decoded = DecodedReply {
        command_id: reply.command_id,
        outcome: "",
        version: None,
        events: Vec::new(),
        error: None,
    };
    match reply.outcome {
        OutcomeWire::Accepted { version, events } => {
            decoded.outcome = "accepted";
            decoded.version = Some(version);
            decoded.events = events.into_iter().map(|e| (e.ce_type, e.data)).collect();
        }
        OutcomeWire::Rejected { error } => {
            decoded.outcome = "rejected";
            decoded.error = Some(error);
        }
        OutcomeWire::Failed { .. } => decoded.outcome = "failed",
        OutcomeWire::Unavailable { .. } => decoded.outcome = "unavailable",
    }
    Ok(decoded)
}

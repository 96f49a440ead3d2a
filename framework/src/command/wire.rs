//! Command, reply and outcome records (see docs/wire-format.md, "Commands").
//!
//! A command record is a CloudEvent in binary mode like an event: key = aggregate id,
//! value = the command's JSON, `ce_id` = command id, `ce_type` = `{aggregate}.{command}`,
//! plus `tributary_replypartition`, the partition of the replies topic on which the
//! sending gateway listens. Replies and outcomes share one JSON shape.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codec::{self, CONTENT_TYPE, EncodedRecord, RecordRef, SPEC_VERSION, headers};

/// Header naming the replies-topic partition the sender listens on.
pub const REPLY_PARTITION: &str = "tributary_replypartition";

/// Header naming the sending gateway within its process (random, per gateway), so
/// that a processor of the same process can hand it the reply in memory. Optional:
/// a command without it is answered on the replies topic.
pub const GATEWAY: &str = "tributary_gateway";

/// Header of the outcome records: the offset of the commands partition that the
/// processor consumes next once the transaction that wrote the record commits (the
/// command's offset + 1). The processor's position is kept here, in its own
/// transaction, and read back on restore; a transaction whose last command wrote no
/// outcome (forwarded, answered from the dedup window, unreadable) ends with a
/// position record: this header and no key or value.
pub const CONSUMED: &str = "tributary_consumed";

pub use tributary_core::topics::{commands_topic, events_topic, outcomes_topic, replies_topic};

/// The partition of an aggregate's commands, events and outcomes: Kafka's default
/// partitioner for keyed records (Java client `BuiltInPartitioner`, librdkafka
/// `murmur2_random`): `(murmur2(key) & 0x7fffffff) % partitions`, with the key = the
/// aggregate id's UTF-8 bytes. Every producer of commands, in any language, must
/// map keys this way (docs/wire-format.md).
///
/// # Panics
///
/// Never: `partitions` of 0 is treated as 1.
pub fn partition_for(key: &[u8], partitions: usize) -> i32 {
    let positive = (murmur2(key) & 0x7fff_ffff) as u32;
    let partitions = u32::try_from(partitions.max(1)).unwrap_or(u32::MAX);
    // Both sides fit: the remainder is below `partitions`, which is below 2^31.
    i32::try_from(positive % partitions).unwrap_or(0)
}

/// MurmurHash2 as Kafka's Java client computes it (`Utils.murmur2`, seed
/// 0x9747b28c), on which the default partitioner rests.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const SEED: u32 = 0x9747_b28c;
    let length = data.len() as u32;
    let mut h: u32 = SEED ^ length;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() == 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The outcome of one command, as replied to the caller and kept in the outcomes topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ReplyWire {
    pub(crate) command_id: String,
    #[serde(flatten)]
    pub(crate) outcome: OutcomeWire,
}

/// Only the command id of a reply (or outcome) record, read without the events.
#[derive(Debug, Deserialize)]
pub(crate) struct ReplyId<'a> {
    #[serde(borrow)]
    pub(crate) command_id: std::borrow::Cow<'a, str>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub(crate) enum OutcomeWire {
    /// The command was accepted; its events are at `version - events.len() + 1 ..= version`.
    Accepted {
        version: u64,
        events: Vec<EventWire>,
    },
    /// The handler rejected it with this domain error.
    Rejected { error: serde_json::Value },
    /// The processor could not handle it (unknown command type, bad JSON, …).
    Failed { reason: String },
    /// Not processed: the instance that owns the command's partition cannot read
    /// that partition's events, so it processes none of its commands. Sent as a reply
    /// only, never kept as an outcome: the command is processed once an instance
    /// that can read the partition owns it.
    Unavailable { partition: i32, reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct EventWire {
    pub(crate) id: Uuid,
    pub(crate) sequence: u64,
    #[serde(rename = "type")]
    pub(crate) ce_type: String,
    pub(crate) time: DateTime<Utc>,
    pub(crate) data: serde_json::Value,
}

/// What the gateway attaches to a command.
pub(crate) struct CommandHeaders<'a> {
    pub(crate) prefix: &'a str,
    pub(crate) aggregate: &'a str,
    pub(crate) command_name: &'a str,
    pub(crate) command_id: &'a str,
    pub(crate) aggregate_id: &'a str,
    pub(crate) correlation_id: &'a str,
    pub(crate) traceparent: Option<&'a str>,
    pub(crate) reply_partition: i32,
    /// The sending gateway's id in its process ([`GATEWAY`]), when it takes replies
    /// in memory.
    pub(crate) gateway: Option<&'a str>,
}

pub(crate) fn encode_command(h: &CommandHeaders<'_>, value: Vec<u8>) -> EncodedRecord {
    let mut headers: Vec<(String, Vec<u8>)> = Vec::with_capacity(10);
    let mut push =
        |name: &str, value: &str| headers.push((name.to_owned(), value.as_bytes().to_vec()));
    push(headers::SPEC_VERSION, SPEC_VERSION);
    push(headers::ID, h.command_id);
    push(
        headers::SOURCE,
        &format!("/{}/{}/gateway", h.prefix, h.aggregate),
    );
    push(
        headers::TYPE,
        &format!("{}.{}", h.aggregate, h.command_name),
    );
    push(headers::TIME, &codec::format_time(&Utc::now()));
    push(headers::SUBJECT, h.aggregate_id);
    push(headers::CONTENT_TYPE, CONTENT_TYPE);
    push(headers::CORRELATION_ID, h.correlation_id);
    if let Some(tp) = h.traceparent {
        push(headers::TRACEPARENT, tp);
    }
    push(REPLY_PARTITION, &h.reply_partition.to_string());
    if let Some(gateway) = h.gateway {
        push(GATEWAY, gateway);
    }
    EncodedRecord {
        key: h.aggregate_id.as_bytes().to_vec(),
        value,
        headers,
    }
}

/// A command record as the processor reads it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct IncomingCommand<'a> {
    pub(crate) command_id: &'a str,
    /// `{aggregate}.{command}`.
    pub(crate) command_type: &'a str,
    pub(crate) aggregate_id: &'a str,
    pub(crate) correlation_id: Option<&'a str>,
    pub(crate) traceparent: Option<&'a str>,
    pub(crate) reply_partition: Option<i32>,
    pub(crate) gateway: Option<&'a str>,
    pub(crate) payload: &'a [u8],
}

/// Why a command record could not be read. Without a command id nobody can be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadCommand {
    #[error("command record has no valid `{0}` header")]
    MissingHeader(&'static str),
    #[error("command record has no value")]
    MissingValue,
}

fn header<'a>(record: &RecordRef<'a>, name: &str) -> Option<&'a str> {
    record
        .headers
        .iter()
        .rev()
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| *v)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// The position an outcome or position record carries ([`CONSUMED`]); `None` for a
/// record written before positions were kept there.
pub(crate) fn consumed_of(record: &RecordRef<'_>) -> Option<i64> {
    header(record, CONSUMED).and_then(|v| v.parse().ok())
}

pub(crate) fn decode_command<'a>(
    record: &RecordRef<'a>,
) -> Result<IncomingCommand<'a>, BadCommand> {
    let command_id = header(record, headers::ID)
        .filter(|id| !id.is_empty())
        .ok_or(BadCommand::MissingHeader(headers::ID))?;
    let command_type =
        header(record, headers::TYPE).ok_or(BadCommand::MissingHeader(headers::TYPE))?;
    let aggregate_id = record
        .key
        .and_then(|k| std::str::from_utf8(k).ok())
        .or_else(|| header(record, headers::SUBJECT))
        .filter(|id| !id.is_empty())
        .ok_or(BadCommand::MissingHeader(headers::SUBJECT))?;
    Ok(IncomingCommand {
        command_id,
        command_type,
        aggregate_id,
        correlation_id: header(record, headers::CORRELATION_ID),
        traceparent: header(record, headers::TRACEPARENT),
        reply_partition: header(record, REPLY_PARTITION).and_then(|p| p.parse().ok()),
        gateway: header(record, GATEWAY),
        payload: record.value.ok_or(BadCommand::MissingValue)?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn command_round_trip() {
        let record = encode_command(
            &CommandHeaders {
                prefix: "shop",
                aggregate: "order",
                command_name: "place_order",
                command_id: "cmd-1",
                aggregate_id: "order-1",
                correlation_id: "flow-1",
                traceparent: None,
                reply_partition: 3,
                gateway: Some("g-1"),
            },
            br#"{"x":1}"#.to_vec(),
        );
        let view = record.as_record();
        let cmd = decode_command(&view).unwrap();
        assert_eq!(cmd.command_id, "cmd-1");
        assert_eq!(cmd.command_type, "order.place_order");
        assert_eq!(cmd.aggregate_id, "order-1");
        assert_eq!(cmd.correlation_id, Some("flow-1"));
        assert_eq!(cmd.reply_partition, Some(3));
        assert_eq!(cmd.gateway, Some("g-1"));
        assert_eq!(cmd.payload, br#"{"x":1}"#);

        let no_id = RecordRef {
            headers: view
                .headers
                .iter()
                .filter(|(n, _)| *n != "ce_id")
                .cloned()
                .collect(),
            ..view.clone()
        };
        assert_eq!(
            decode_command(&no_id),
            Err(BadCommand::MissingHeader("ce_id"))
        );
    }

    /// Computed with Kafka's own `org.apache.kafka.common.utils.Utils.murmur2` and
    /// `toPositive(..) % 12` (kafka-clients 4.1.1).
    #[test]
    fn partitioner_matches_the_java_client() {
        let cases: [(&str, i32, i32); 12] = [
            ("", 275646681, 9),
            ("a", -1563381124, 4),
            ("ab", 316155434, 2),
            ("abc", 479470107, 3),
            ("21", -973932308, 0),
            ("foobar", -790332482, 6),
            ("order-42", 501153024, 0),
            ("sku-tea", -848081573, 3),
            ("a-little-bit-long-string", -985981536, 8),
            ("a-little-bit-longer-string", -1486304829, 11),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
                5,
            ),
            ("é€", 1912689889, 1),
        ];
        for (key, hash, partition) in cases {
            assert_eq!(murmur2(key.as_bytes()), hash, "murmur2({key:?})");
            assert_eq!(
                partition_for(key.as_bytes(), 12),
                partition,
                "partition of {key:?}"
            );
        }
        assert_eq!(partition_for(b"x", 0), 0);
    }

    #[test]
    fn reply_json_shape() {
        let reply = ReplyWire {
            command_id: "c".into(),
            outcome: OutcomeWire::Rejected {
                error: serde_json::json!({"OutOfStock": {"sku": "a"}}),
            },
        };
        let json = serde_json::to_string(&reply).unwrap();
        assert_eq!(
            json,
            r#"{"command_id":"c","outcome":"rejected","error":{"OutOfStock":{"sku":"a"}}}"#
        );
        assert_eq!(serde_json::from_str::<ReplyWire>(&json).unwrap(), reply);
    }
}

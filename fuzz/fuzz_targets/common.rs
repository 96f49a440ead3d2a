//! What the fuzz targets run, shared with `framework/tests/fuzz_corpus.rs`, which
//! replays the committed corpus through the same functions without cargo-fuzz.
//!
//! Each target function takes the raw fuzz input, decodes it the way the framework
//! decodes a consumed record, exercises what the framework does next with the result
//! (formatting errors, re-encoding, deserializing payloads), and returns whether the
//! decoder accepted the input. It must never panic; a decoder returning `Err` is fine.
#![allow(dead_code)] // each fuzz target uses one of the three functions

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use tributary::codec::headers;
use tributary::command::wire;
use tributary::{EventCodec, Metadata, RecordRef, UpcastError, Upcaster, fuzzing};

/// A target: fuzz input in, whether the decoder accepted it out.
pub(crate) type Target = fn(&[u8]) -> bool;

/// The corpus directories under `fuzz/corpus/`, one per target, with the function
/// the target runs.
pub(crate) const TARGETS: [(&str, Target); 3] = [
    ("cloudevent_decode", cloudevent_decode),
    ("command_decode", command_decode),
    ("reply_decode", reply_decode),
];

// ---------------------------------------------------------------------------------
// Splitting fuzz bytes into a Kafka record
// ---------------------------------------------------------------------------------

/// Reads fuzz input as a Kafka record. Every byte string is a record; what is missing
/// at the end is empty. Layout (all lengths clamped to what is left):
///
/// ```text
/// flags:u8            bit 0: null key, bit 1: null value
/// key_len:u8  key
/// count:u8            number of headers
///   name_len:u8  name            name: its longest UTF-8 prefix
///   value_len:u16le  value       0xffff: null value
/// value: the rest
/// ```
pub(crate) fn split_record(data: &[u8]) -> RecordRef<'_> {
    let mut input = Bytes(data);
    let flags = input.u8();
    let key = input.prefixed();
    let count = input.u8();
    let mut headers = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        if input.0.is_empty() {
            break;
        }
        let name = utf8_prefix(input.prefixed());
        let value = match input.u16() {
            NULL_HEADER => None,
            len => Some(input.take(usize::from(len))),
        };
        headers.push((name, value));
    }
    RecordRef {
        key: (flags & 1 == 0).then_some(key),
        value: (flags & 2 == 0).then_some(input.0),
        headers,
    }
}

/// Writes a record in the layout [`split_record`] reads; `None` if a part is too long
/// for it (key or header name over 255 bytes, header value over 65,534, more than 255
/// headers).
pub(crate) fn join_record(record: &RecordRef<'_>) -> Option<Vec<u8>> {
    let mut out = vec![u8::from(record.key.is_none()) | (u8::from(record.value.is_none()) << 1)];
    let key = record.key.unwrap_or_default();
    out.push(u8::try_from(key.len()).ok()?);
    out.extend_from_slice(key);
    out.push(u8::try_from(record.headers.len()).ok()?);
    for (name, value) in &record.headers {
        out.push(u8::try_from(name.len()).ok()?);
        out.extend_from_slice(name.as_bytes());
        match value {
            None => out.extend_from_slice(&NULL_HEADER.to_le_bytes()),
            Some(v) => {
                let len = u16::try_from(v.len()).ok().filter(|&l| l != NULL_HEADER)?;
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    out.extend_from_slice(record.value.unwrap_or_default());
    Some(out)
}

/// [`join_record`] for the seeds, which fit.
fn joined(record: &RecordRef<'_>) -> Vec<u8> {
    join_record(record).unwrap_or_else(|| panic!("a seed record is too large: {record:?}"))
}

const NULL_HEADER: u16 = u16::MAX;

struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    /// A `u8` length, then that many bytes.
    fn prefixed(&mut self) -> &'a [u8] {
        let len = self.u8();
        self.take(usize::from(len))
    }

    fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | (u16::from(self.u8()) << 8)
    }
}

fn utf8_prefix(bytes: &[u8]) -> &str {
    match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------------
// The event type the CloudEvents target decodes into
// ---------------------------------------------------------------------------------

/// The aggregate `FuzzEvent` belongs to: only its name (`order`) matters here.
#[derive(Debug, Default, Serialize, Deserialize, tributary::Aggregate)]
#[aggregate(name = "order", event = FuzzEvent, error = FuzzError)]
pub(crate) struct FuzzOrder;

impl tributary::Apply<FuzzEvent> for FuzzOrder {
    fn apply(&mut self, _: &FuzzEvent) {}
}

/// An aggregate's events covering the payload shapes the derive supports: struct,
/// newtype, tuple and unit variants, and a v3 type read from v1 and v2 by upcasters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, tributary::DomainEvent)]
#[event(aggregate = FuzzOrder)]
pub(crate) enum FuzzEvent {
    /// `order.placed.v1`
    Placed {
        customer: String,
        lines: Vec<(String, u32)>,
        total_cents: u64,
        note: Option<String>,
    },
    /// `order.cancelled.v3`: v1 had `why`, v2 added nothing but renamed it `reason`,
    /// v3 added `by_customer`.
    #[event(version = 3)]
    Cancelled { reason: String, by_customer: bool },
    /// `order.noted.v1`
    Noted(String),
    /// `order.tagged.v1`
    Tagged(Vec<String>, Option<i64>),
    /// `order.pinged.v1`
    Pinged,
}

/// The domain error a `rejected` reply carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum FuzzError {
    OutOfStock { sku: String },
    AlreadyPlaced,
    Invalid(String),
}

impl std::fmt::Display for FuzzError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for FuzzError {}

/// A command's JSON, as a handler deserializes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PlaceOrder {
    order_id: String,
    customer: String,
    lines: Vec<(String, u32)>,
}

fn object(
    payload: serde_json::Value,
) -> Result<serde_json::Map<String, serde_json::Value>, UpcastError> {
    match payload {
        serde_json::Value::Object(map) => Ok(map),
        other => Err(UpcastError::new(format!(
            "expected an object, found {other}"
        ))),
    }
}

/// The codec under test: prefix `fuzz`, with the upcasters `order.cancelled` v1 → v2
/// → v3.
pub(crate) fn codec() -> &'static EventCodec<FuzzEvent> {
    static CODEC: OnceLock<EventCodec<FuzzEvent>> = OnceLock::new();
    CODEC.get_or_init(|| {
        let v1 = Upcaster::new("order.cancelled", 1, |payload| {
            let mut map = object(payload)?;
            let why = map
                .remove("why")
                .ok_or_else(|| UpcastError::new("v1 has no `why`"))?;
            map.insert("reason".into(), why);
            Ok(map.into())
        });
        let v2 = Upcaster::new("order.cancelled", 2, |payload| {
            let mut map = object(payload)?;
            map.entry("by_customer").or_insert(false.into());
            Ok(map.into())
        });
        let codec = EventCodec::new()
            .with_upcaster(v1)
            .and_then(|c| c.with_upcaster(v2));
        match codec {
            Ok(codec) => codec,
            Err(error) => panic!("the fuzz codec does not build: {error}"),
        }
    })
}

// ---------------------------------------------------------------------------------
// The targets
// ---------------------------------------------------------------------------------

/// The `ce_source` of the events the targets encode.
const SOURCE: &str = "/fuzz/order";

/// `EventCodec::decode` of a record, as projections and the processor's restore read
/// events; a decoded envelope is encoded again and that record decoded.
pub(crate) fn cloudevent_decode(data: &[u8]) -> bool {
    let record = split_record(data);
    let codec = codec();
    match codec.decode(&record) {
        Ok(envelope) => {
            std::hint::black_box(format!("{envelope:?}"));
            match codec.encode(&envelope, SOURCE) {
                Ok(encoded) => {
                    std::hint::black_box(encoded.size_estimate());
                    let _ = std::hint::black_box(codec.decode(&encoded.as_record()));
                }
                Err(error) => {
                    std::hint::black_box(error.to_string());
                }
            }
            true
        }
        Err(error) => {
            std::hint::black_box(error.to_string());
            false
        }
    }
}

/// The processor's decoding of a command record, then what it does with the command
/// before the handler: partition of the aggregate id, the command's JSON.
pub(crate) fn command_decode(data: &[u8]) -> bool {
    let record = split_record(data);
    match fuzzing::decode_command(&record) {
        Ok(command) => {
            std::hint::black_box(format!("{command:?}"));
            std::hint::black_box(wire::partition_for(command.aggregate_id.as_bytes(), 12));
            let _ = std::hint::black_box(serde_json::from_slice::<PlaceOrder>(command.payload));
            true
        }
        Err(error) => {
            std::hint::black_box(error);
            false
        }
    }
}

/// A reply (gateway) or outcome (processor restore) record's value, then what the
/// gateway makes of it: the events' payloads through `EventCodec::decode_payload`,
/// a rejection's error through serde.
pub(crate) fn reply_decode(data: &[u8]) -> bool {
    match fuzzing::decode_reply(data) {
        Ok(reply) => {
            std::hint::black_box(format!("{reply:?}"));
            for (ce_type, payload) in reply.events {
                match codec().decode_payload(&ce_type, payload) {
                    Ok(event) => std::hint::black_box(format!("{event:?}")),
                    Err(error) => std::hint::black_box(error.to_string()),
                };
            }
            if let Some(error) = reply.error {
                let _ = std::hint::black_box(serde_json::from_value::<FuzzError>(error));
            }
            true
        }
        Err(error) => {
            std::hint::black_box(error.to_string());
            false
        }
    }
}

// ---------------------------------------------------------------------------------
// Seeds: valid encodings, so that the fuzzer starts deep in the decoders
// ---------------------------------------------------------------------------------

/// Valid inputs per target, `(target, name, bytes)`; each one decodes.
pub(crate) fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let codec = codec();
    let metadata = Metadata {
        causation_id: Some("cmd-1".into()),
        correlation_id: Some("flow-1".into()),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    };
    let events = [
        FuzzEvent::Placed {
            customer: "cust-9".into(),
            lines: vec![("sku-tea".into(), 2), ("sku-cup".into(), 1)],
            total_cents: 1250,
            note: Some("ring twice".into()),
        },
        FuzzEvent::Cancelled {
            reason: "changed mind".into(),
            by_customer: true,
        },
        FuzzEvent::Noted("a note".into()),
        FuzzEvent::Tagged(vec!["gift".into()], Some(-3)),
        FuzzEvent::Pinged,
    ];
    for (i, event) in events.into_iter().enumerate() {
        let sequence = u64::try_from(i).unwrap_or(0) + 1;
        let envelope = tributary::EventEnvelope::new("order-42", sequence, event).with_metadata(
            if i % 2 == 0 {
                metadata.clone()
            } else {
                Metadata::default()
            },
        );
        let record = codec
            .encode(&envelope, SOURCE)
            .unwrap_or_else(|e| panic!("seed event {i} does not encode: {e}"));
        seeds.push((
            "cloudevent_decode",
            format!("event-{i}"),
            joined(&record.as_record()),
        ));
    }
    // Older versions, read through the upcasters; a null key (the subject names the
    // aggregate); a content type with parameters.
    let old = |ce_type: &'static str, key: Option<&'static [u8]>, value: &'static [u8]| RecordRef {
        key,
        value: Some(value),
        headers: vec![
            (headers::SPEC_VERSION, Some(b"1.0".as_slice())),
            (
                headers::ID,
                Some(b"0190a5b4-8a4e-7c4e-9d6a-3b1f2e4d5c6b".as_slice()),
            ),
            (headers::SOURCE, Some(b"/fuzz/order".as_slice())),
            (headers::TYPE, Some(ce_type.as_bytes())),
            (
                headers::TIME,
                Some(b"2024-07-01T12:34:56.789012Z".as_slice()),
            ),
            (headers::SUBJECT, Some(b"order-7".as_slice())),
            (
                headers::CONTENT_TYPE,
                Some(b"application/json; charset=utf-8".as_slice()),
            ),
            (headers::SEQUENCE, Some(b"00000000000000000003".as_slice())),
        ],
    };
    for (name, record) in [
        (
            "cancelled-v1",
            old(
                "order.cancelled.v1",
                Some(b"order-7".as_slice()),
                br#"{"why":"late"}"#,
            ),
        ),
        (
            "cancelled-v2",
            old("order.cancelled.v2", None, br#"{"reason":"late"}"#),
        ),
        (
            "pinged-null",
            old("order.pinged.v1", Some(b"order-7".as_slice()), b"null"),
        ),
    ] {
        seeds.push((
            "cloudevent_decode",
            format!("event-{name}"),
            joined(&record),
        ));
    }

    // Commands as the gateway writes them (docs/wire-format.md, "Commands").
    let command = |key: Option<&'static [u8]>, extra: bool| RecordRef {
        key,
        value: Some(
            br#"{"order_id":"order-42","customer":"cust-9","lines":[["sku-tea",2]]}"#.as_slice(),
        ),
        headers: [
            (headers::SPEC_VERSION, b"1.0".as_slice()),
            (headers::ID, b"cmd-0190a5b4".as_slice()),
            (headers::SOURCE, b"/fuzz/order/gateway".as_slice()),
            (headers::TYPE, b"order.place_order".as_slice()),
            (headers::TIME, b"2024-07-01T12:34:56.789012Z".as_slice()),
            (headers::SUBJECT, b"order-42".as_slice()),
            (headers::CONTENT_TYPE, b"application/json".as_slice()),
            (headers::CORRELATION_ID, b"flow-1".as_slice()),
        ]
        .into_iter()
        .chain(
            extra
                .then_some([
                    (
                        headers::TRACEPARENT,
                        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".as_slice(),
                    ),
                    (wire::REPLY_PARTITION, b"3".as_slice()),
                ])
                .into_iter()
                .flatten(),
        )
        .map(|(n, v)| (n, Some(v)))
        .collect(),
    };
    for (name, record) in [
        ("full", command(Some(b"order-42".as_slice()), true)),
        ("minimal", command(Some(b"order-42".as_slice()), false)),
        ("null-key", command(None, true)),
    ] {
        seeds.push(("command_decode", format!("command-{name}"), joined(&record)));
    }

    // Replies and outcomes, one per outcome (the JSON the processor writes).
    for (name, json) in [
        (
            "accepted",
            r#"{"command_id":"cmd-1","outcome":"accepted","version":3,"events":[{"id":"0190a5b4-8a4e-7c4e-9d6a-3b1f2e4d5c6b","sequence":2,"type":"order.placed.v1","time":"2024-07-01T12:34:56.789012Z","data":{"customer":"cust-9","lines":[["sku-tea",2]],"total_cents":500,"note":null}},{"id":"0190a5b4-8a4e-7c4e-9d6a-3b1f2e4d5c6c","sequence":3,"type":"order.cancelled.v1","time":"2024-07-01T12:34:56.789013Z","data":{"why":"late"}}]}"#,
        ),
        (
            "rejected",
            r#"{"command_id":"cmd-2","outcome":"rejected","error":{"OutOfStock":{"sku":"sku-tea"}}}"#,
        ),
        (
            "failed",
            r#"{"command_id":"cmd-3","outcome":"failed","reason":"unknown command type `order.x`"}"#,
        ),
        (
            "unavailable",
            r#"{"command_id":"cmd-4","outcome":"unavailable","partition":5,"reason":"cannot read the events"}"#,
        ),
    ] {
        seeds.push((
            "reply_decode",
            format!("reply-{name}"),
            json.as_bytes().to_vec(),
        ));
    }
    seeds
}

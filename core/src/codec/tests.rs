#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::TimeZone;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::*;
use crate::event::derive_support;
use crate::upcast::UpcastError;

/// Hand-written `DomainEvent` (what the derive generates), so the codec is tested
/// independently of the macros.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum ShopEvent {
    Placed {
        customer: String,
        lines: Vec<(String, u32)>,
    },
    Cancelled {
        reason: String,
        by_customer: bool,
    },
    Pinged,
    Noted(String),
}

const TYPES: &[EventType] = &[
    EventType {
        name: "order.placed",
        version: 1,
        ce_type: "order.placed.v1",
    },
    EventType {
        name: "order.cancelled",
        version: 3,
        ce_type: "order.cancelled.v3",
    },
    EventType {
        name: "order.pinged",
        version: 1,
        ce_type: "order.pinged.v1",
    },
    EventType {
        name: "order.noted",
        version: 1,
        ce_type: "order.noted.v1",
    },
];

impl DomainEvent for ShopEvent {
    const AGGREGATE: &'static str = "order";
    const EVENT_TYPES: &'static [EventType] = TYPES;

    fn event_type(&self) -> &'static EventType {
        match self {
            Self::Placed { .. } => &TYPES[0],
            Self::Cancelled { .. } => &TYPES[1],
            Self::Pinged => &TYPES[2],
            Self::Noted(_) => &TYPES[3],
        }
    }

    fn to_payload(&self) -> Result<Value, PayloadError> {
        derive_support::to_payload("ShopEvent", self)
    }

    fn from_payload(event_type: &EventType, payload: Value) -> Result<Self, PayloadError> {
        let names = derive_support::variant_names::<Self>();
        let Some((index, unit)) = variant(event_type.name) else {
            return Err(PayloadError::UnknownType {
                name: event_type.name.to_owned(),
            });
        };
        derive_support::from_payload("ShopEvent", names, 4, index, unit, payload)
    }

    fn from_payload_text(event_type: &EventType, json: &[u8]) -> Option<Self> {
        let names = derive_support::variant_names::<Self>();
        let (index, _) = variant(event_type.name)?;
        derive_support::from_payload_text(names, 4, index, json)
    }
}

/// The variant index of an event type name, and whether it is a unit variant.
fn variant(name: &str) -> Option<(usize, bool)> {
    match name {
        "order.placed" => Some((0, false)),
        "order.cancelled" => Some((1, false)),
        "order.pinged" => Some((2, true)),
        "order.noted" => Some((3, false)),
        _ => None,
    }
}

/// The `ce_source` these tests write.
const SOURCE: &str = "/shop/order";

fn codec() -> EventCodec<ShopEvent> {
    EventCodec::new()
        .with_upcaster(Upcaster::new("order.cancelled", 1, |mut v| {
            // v1 had `why`; v2 renamed it to `reason`.
            let why = v
                .get("why")
                .cloned()
                .ok_or_else(|| UpcastError::new("v1 without `why`"))?;
            v["reason"] = why;
            Ok(v)
        }))
        .unwrap()
        .with_upcaster(Upcaster::new("order.cancelled", 2, |mut v| {
            // v3 added `by_customer`, false for all older events.
            v["by_customer"] = json!(false);
            Ok(v)
        }))
        .unwrap()
}

fn sample() -> EventEnvelope<ShopEvent> {
    EventEnvelope {
        id: Uuid::parse_str("0193a4b2-7c1e-7d3a-9f00-1234567890ab").unwrap(),
        aggregate_id: AggregateId::new("order-42"),
        sequence: 7,
        time: Utc.with_ymd_and_hms(2026, 11, 25, 20, 8, 43).unwrap()
            + chrono::Duration::microseconds(123_456),
        metadata: Metadata {
            causation_id: Some("cmd-1".into()),
            correlation_id: Some("flow-9".into()),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        },
        event: ShopEvent::Placed {
            customer: "c-1".into(),
            lines: vec![("sku-1".into(), 2)],
        },
    }
}

fn header<'a>(record: &'a EncodedRecord, name: &str) -> &'a str {
    let (_, v) = record.headers.iter().find(|(n, _)| n == name).unwrap();
    std::str::from_utf8(v).unwrap()
}

/// The record with header `name` replaced (or removed when `value` is `None`).
fn with_header(record: &EncodedRecord, name: &str, value: Option<&[u8]>) -> EncodedRecord {
    let mut r = record.clone();
    r.headers.retain(|(n, _)| n != name);
    if let Some(v) = value {
        r.headers.push((name.to_owned(), v.to_vec()));
    }
    r
}

fn decode(record: &EncodedRecord) -> Result<EventEnvelope<ShopEvent>, DecodeError> {
    codec().decode(&record.as_record())
}

#[test]
fn encodes_every_header_in_order() {
    let record = codec().encode(&sample(), SOURCE).unwrap();
    let names: Vec<&str> = record.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "ce_specversion",
            "ce_id",
            "ce_source",
            "ce_type",
            "ce_time",
            "ce_subject",
            "content-type",
            "ce_sequence",
            "ce_causationid",
            "ce_correlationid",
            "traceparent",
        ]
    );
    assert_eq!(header(&record, "ce_specversion"), "1.0");
    assert_eq!(
        header(&record, "ce_id"),
        "0193a4b2-7c1e-7d3a-9f00-1234567890ab"
    );
    assert_eq!(header(&record, "ce_source"), "/shop/order");
    assert_eq!(header(&record, "ce_type"), "order.placed.v1");
    assert_eq!(header(&record, "ce_time"), "2026-11-25T20:08:43.123456Z");
    assert_eq!(header(&record, "ce_subject"), "order-42");
    assert_eq!(header(&record, "content-type"), "application/json");
    assert_eq!(header(&record, "ce_sequence"), "00000000000000000007");
    assert_eq!(header(&record, "ce_causationid"), "cmd-1");
    assert_eq!(header(&record, "ce_correlationid"), "flow-9");
    assert_eq!(record.key, b"order-42");
    assert_eq!(record.value, br#"{"customer":"c-1","lines":[["sku-1",2]]}"#);
}

#[test]
fn optional_metadata_headers_are_omitted() {
    let envelope = sample().with_metadata(Metadata::default());
    let record = codec().encode(&envelope, SOURCE).unwrap();
    assert_eq!(record.headers.len(), 8);
    assert_eq!(decode(&record).unwrap(), envelope);
}

#[test]
fn round_trips_every_variant_shape() {
    for event in [
        sample().event,
        ShopEvent::Cancelled {
            reason: "late".into(),
            by_customer: true,
        },
        ShopEvent::Pinged,
        ShopEvent::Noted("hello".into()),
    ] {
        let envelope = EventEnvelope { event, ..sample() };
        let record = codec().encode(&envelope, SOURCE).unwrap();
        assert_eq!(decode(&record).unwrap(), envelope);
    }
    let unit = codec()
        .encode(
            &EventEnvelope {
                event: ShopEvent::Pinged,
                ..sample()
            },
            SOURCE,
        )
        .unwrap();
    assert_eq!(unit.value, b"{}");
}

#[test]
fn upcasts_old_versions_step_by_step() {
    let current = EventEnvelope {
        event: ShopEvent::Cancelled {
            reason: "late".into(),
            by_customer: false,
        },
        ..sample()
    };
    let record = codec().encode(&current, SOURCE).unwrap();
    let mut v1 = with_header(&record, "ce_type", Some(b"order.cancelled.v1"));
    v1.value = br#"{"why":"late"}"#.to_vec();
    assert_eq!(decode(&v1).unwrap(), current);
    let mut v2 = with_header(&record, "ce_type", Some(b"order.cancelled.v2"));
    v2.value = br#"{"reason":"late"}"#.to_vec();
    assert_eq!(decode(&v2).unwrap(), current);
}

#[test]
fn reports_a_missing_or_failing_upcaster() {
    let record = codec()
        .encode(
            &EventEnvelope {
                event: ShopEvent::Cancelled {
                    reason: "x".into(),
                    by_customer: false,
                },
                ..sample()
            },
            SOURCE,
        )
        .unwrap();
    let mut v1 = with_header(&record, "ce_type", Some(b"order.cancelled.v1"));
    v1.value = br#"{"reason":"x"}"#.to_vec();
    let err = decode(&v1).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::Upcast {
                from_version: 1,
                ..
            }
        ),
        "{err}"
    );

    let bare = EventCodec::<ShopEvent>::new();
    let err = bare.decode(&v1.as_record()).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::MissingUpcaster {
                found: 1,
                current: 3,
                missing: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("Upcaster::new(\"order.cancelled\", 1, ..)"),
        "{err}"
    );
}

#[test]
fn refuses_bad_upcaster_registrations() {
    let c = || EventCodec::<ShopEvent>::new();
    let id = |v: Value| Ok(v);
    assert!(matches!(
        c().with_upcaster(Upcaster::new("order.shipped", 1, id))
            .unwrap_err(),
        RegisterUpcasterError::UnknownEvent { .. }
    ));
    assert!(matches!(
        c().with_upcaster(Upcaster::new("order.placed", 1, id))
            .unwrap_err(),
        RegisterUpcasterError::NotOlder { current: 1, .. }
    ));
    assert!(matches!(
        c().with_upcaster(Upcaster::new("order.cancelled", 0, id))
            .unwrap_err(),
        RegisterUpcasterError::NotOlder { .. }
    ));
    assert!(matches!(
        codec()
            .with_upcaster(Upcaster::new("order.cancelled", 2, id))
            .unwrap_err(),
        RegisterUpcasterError::Duplicate {
            from_version: 2,
            ..
        }
    ));
}

#[test]
fn names_the_missing_header() {
    let record = codec().encode(&sample(), SOURCE).unwrap();
    for name in [
        "ce_specversion",
        "ce_id",
        "ce_source",
        "ce_type",
        "ce_time",
        "ce_subject",
        "content-type",
        "ce_sequence",
    ] {
        let err = decode(&with_header(&record, name, None)).unwrap_err();
        assert!(
            matches!(&err, DecodeError::MissingHeader { name: n } if *n == name),
            "{name}: {err}"
        );
    }
    // A header present with a null value counts as missing.
    let mut null_type = with_header(&record, "ce_type", None);
    let err = EventCodec::<ShopEvent>::new()
        .decode(&RecordRef {
            headers: {
                let mut h = null_type.as_record().headers;
                h.push(("ce_type", None));
                h
            },
            ..null_type.as_record()
        })
        .unwrap_err();
    assert!(
        matches!(err, DecodeError::MissingHeader { name: "ce_type" }),
        "{err}"
    );
    null_type.headers.clear();
}

#[test]
fn optional_headers_may_be_absent() {
    let record = codec().encode(&sample(), SOURCE).unwrap();
    for name in ["ce_causationid", "ce_correlationid", "traceparent"] {
        assert!(decode(&with_header(&record, name, None)).is_ok(), "{name}");
    }
}

#[test]
fn rejects_invalid_header_values() {
    let record = codec().encode(&sample(), SOURCE).unwrap();
    let cases: &[(&str, &[u8])] = &[
        ("ce_id", b"not-a-uuid"),
        ("ce_time", b"yesterday"),
        // Valid RFC 3339, but year 10000 and year -1 in UTC (found by fuzzing):
        // they would re-encode to a record nobody can read.
        ("ce_time", b"9999-12-31T23:59:59-23:59"),
        ("ce_time", b"0000-01-01T00:00:00+23:59"),
        ("ce_sequence", b"0"),
        ("ce_sequence", b"-1"),
        ("ce_sequence", b"+1"),
        ("ce_sequence", b"99999999999999999999999"),
        ("ce_subject", b""),
        ("ce_source", b""),
        ("ce_causationid", b"\xff\xfe"),
    ];
    for (name, value) in cases {
        let err = decode(&with_header(&record, name, Some(value))).unwrap_err();
        assert!(
            matches!(&err, DecodeError::InvalidHeader { name: n, .. } if n == name),
            "{name}={value:?}: {err}"
        );
    }
}

#[test]
fn rejects_wrong_spec_version_and_content_type() {
    let record = codec().encode(&sample(), SOURCE).unwrap();
    let err = decode(&with_header(&record, "ce_specversion", Some(b"0.3"))).unwrap_err();
    assert!(
        matches!(err, DecodeError::UnsupportedSpecVersion { .. }),
        "{err}"
    );
    let err = decode(&with_header(
        &record,
        "content-type",
        Some(b"application/avro"),
    ))
    .unwrap_err();
    assert!(
        matches!(err, DecodeError::UnsupportedContentType { .. }),
        "{err}"
    );
    // Parameters and case are allowed.
    let ok = with_header(
        &record,
        "content-type",
        Some(b"Application/JSON; charset=utf-8"),
    );
    assert!(decode(&ok).is_ok());
}

#[test]
fn rejects_unknown_and_future_event_types() {
    let record = codec().encode(&sample(), SOURCE).unwrap();
    for ce_type in [
        "order.shipped.v1",
        "order.placed",
        "order.placed.v0",
        "order.placed.v01",
        "x",
        "",
    ] {
        let err = decode(&with_header(&record, "ce_type", Some(ce_type.as_bytes()))).unwrap_err();
        assert!(
            matches!(err, DecodeError::UnknownEventType { .. }),
            "{ce_type}: {err}"
        );
        assert!(
            err.to_string().contains("order.placed.v1"),
            "lists known types: {err}"
        );
    }
    let err = decode(&with_header(&record, "ce_type", Some(b"order.placed.v2"))).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::FutureVersion {
                found: 2,
                current: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn rejects_duplicate_headers() {
    let mut record = codec().encode(&sample(), SOURCE).unwrap();
    record
        .headers
        .push(("ce_type".into(), b"order.placed.v1".to_vec()));
    let err = decode(&record).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::DuplicateHeader {
                name: "ce_type",
                count: 2
            }
        ),
        "{err}"
    );
}

#[test]
fn rejects_bad_payloads() {
    let record = codec().encode(&sample(), SOURCE).unwrap();
    let mut bad_json = record.clone();
    bad_json.value = b"{not json".to_vec();
    assert!(matches!(
        decode(&bad_json).unwrap_err(),
        DecodeError::InvalidJson { .. }
    ));

    let mut wrong_fields = record.clone();
    wrong_fields.value = br#"{"customer":1}"#.to_vec();
    assert!(matches!(
        decode(&wrong_fields).unwrap_err(),
        DecodeError::Payload { .. }
    ));

    let tombstone = RecordRef {
        value: None,
        ..record.as_record()
    };
    assert!(matches!(
        codec().decode(&tombstone).unwrap_err(),
        DecodeError::MissingValue
    ));
}

#[test]
fn key_must_match_subject_but_may_be_null() {
    let record = codec().encode(&sample(), SOURCE).unwrap();
    let mut other_key = record.clone();
    other_key.key = b"order-43".to_vec();
    assert!(matches!(
        decode(&other_key).unwrap_err(),
        DecodeError::KeyMismatch { .. }
    ));
    let no_key = RecordRef {
        key: None,
        ..record.as_record()
    };
    assert_eq!(codec().decode(&no_key).unwrap(), sample());
}

#[test]
fn ignores_an_invalid_traceparent() {
    let record = codec().encode(&sample(), SOURCE).unwrap();
    for tp in [
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ] {
        let env = decode(&with_header(&record, "traceparent", Some(tp.as_bytes()))).unwrap();
        assert_eq!(env.metadata.traceparent, None, "{tp}");
    }
}

#[test]
fn encode_refuses_empty_ids_and_sequence_zero() {
    let mut env = sample();
    env.aggregate_id = AggregateId::new("");
    assert!(matches!(
        codec().encode(&env, SOURCE).unwrap_err(),
        EncodeError::EmptyAggregateId { .. }
    ));
    let mut env = sample();
    env.sequence = 0;
    assert!(matches!(
        codec().encode(&env, SOURCE).unwrap_err(),
        EncodeError::ZeroSequence { .. }
    ));
}

#[test]
fn an_empty_source_is_refused() {
    assert!(matches!(
        codec().encode(&sample(), "").unwrap_err(),
        EncodeError::EmptySource { aggregate: "order" }
    ));
}

#[test]
fn subject_and_sequence_read_only_those_headers() {
    let record = codec().encode(&sample(), "/shop/order").unwrap();
    assert_eq!(
        subject_and_sequence(&record.as_record()).unwrap(),
        ("order-42", 7)
    );
    // An event type this release does not know, and a payload that is not JSON:
    // an index can still place the record.
    let mut unknown = with_header(&record, "ce_type", Some(b"order.refunded.v9"));
    unknown.value = b"not json".to_vec();
    assert_eq!(
        subject_and_sequence(&unknown.as_record()).unwrap(),
        ("order-42", 7)
    );
    let missing = with_header(&record, "ce_sequence", None);
    assert!(matches!(
        subject_and_sequence(&missing.as_record()),
        Err(DecodeError::MissingHeader {
            name: "ce_sequence"
        })
    ));
    let zero = with_header(&record, "ce_sequence", Some(b"0"));
    assert!(matches!(
        subject_and_sequence(&zero.as_record()),
        Err(DecodeError::InvalidHeader {
            name: "ce_sequence",
            ..
        })
    ));
    let mut other_key = record.clone();
    other_key.key = b"order-43".to_vec();
    assert!(matches!(
        subject_and_sequence(&other_key.as_record()),
        Err(DecodeError::KeyMismatch { .. })
    ));
}

fn arb_event() -> impl Strategy<Value = ShopEvent> {
    prop_oneof![
        (
            any::<String>(),
            proptest::collection::vec((any::<String>(), any::<u32>()), 0..4)
        )
            .prop_map(|(customer, lines)| ShopEvent::Placed { customer, lines }),
        (any::<String>(), any::<bool>()).prop_map(|(reason, by_customer)| ShopEvent::Cancelled {
            reason,
            by_customer
        }),
        Just(ShopEvent::Pinged),
        any::<String>().prop_map(ShopEvent::Noted),
    ]
}

fn arb_envelope() -> impl Strategy<Value = EventEnvelope<ShopEvent>> {
    (
        any::<u128>(),
        "\\PC{1,40}",
        1..=u64::MAX,
        // 0001-01-01 .. 9999-12-31, microsecond precision.
        -62_135_596_800_000_000i64..253_402_300_799_999_999i64,
        proptest::option::of("\\PC{0,30}"),
        proptest::option::of("\\PC{0,30}"),
        proptest::option::of(("[0-9a-f]{32}", "[0-9a-f]{16}", "[0-9a-f]{2}")),
        arb_event(),
    )
        .prop_map(
            |(id, agg, sequence, micros, causation, correlation, tp, event)| EventEnvelope {
                id: Uuid::from_u128(id),
                aggregate_id: AggregateId::new(agg),
                sequence,
                time: DateTime::from_timestamp_micros(micros).unwrap(),
                metadata: Metadata {
                    causation_id: causation,
                    correlation_id: correlation,
                    traceparent: tp
                        .map(|(t, p, f)| format!("00-{t}-{p}-{f}"))
                        .filter(|tp| is_valid_traceparent(tp)),
                },
                event,
            },
        )
}

fn arb_headers() -> impl Strategy<Value = Vec<(String, Option<Vec<u8>>)>> {
    let name = prop_oneof![
        Just("ce_specversion".to_owned()),
        Just("ce_id".to_owned()),
        Just("ce_source".to_owned()),
        Just("ce_type".to_owned()),
        Just("ce_time".to_owned()),
        Just("ce_subject".to_owned()),
        Just("content-type".to_owned()),
        Just("ce_sequence".to_owned()),
        Just("traceparent".to_owned()),
        ".{0,12}",
    ];
    let value = proptest::option::of(prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        prop_oneof![
            Just("1.0"),
            Just("order.placed.v1"),
            Just("order.cancelled.v1"),
            Just("order.pinged.v9"),
            Just("application/json"),
            Just("00000000000000000001"),
            Just("2026-11-25T20:08:43Z"),
            Just("0193a4b2-7c1e-7d3a-9f00-1234567890ab"),
        ]
        .prop_map(|s| s.as_bytes().to_vec()),
    ]);
    proptest::collection::vec((name, value), 0..14)
}

#[test]
fn the_payload_text_path_reads_every_variant() {
    for event in [
        ShopEvent::Placed {
            customer: "c-1".into(),
            lines: vec![("sku".into(), 2)],
        },
        ShopEvent::Cancelled {
            reason: "late".into(),
            by_customer: true,
        },
        ShopEvent::Pinged,
        ShopEvent::Noted("hi".into()),
    ] {
        let text = serde_json::to_vec(&event.to_payload().unwrap()).unwrap();
        assert_eq!(
            ShopEvent::from_payload_text(event.event_type(), &text),
            Some(event.clone()),
            "{}",
            String::from_utf8_lossy(&text)
        );
    }
    // A unit variant's payload is `null` or `{}`, nothing else.
    let pinged = &TYPES[2];
    assert_eq!(
        ShopEvent::from_payload_text(pinged, b"null"),
        Some(ShopEvent::Pinged)
    );
    for text in [&b"{\"a\":1}"[..], b"[]", b"\"Pinged\"", b"{} x", b""] {
        assert_eq!(ShopEvent::from_payload_text(pinged, text), None);
    }
    // A tuple variant only from an array that is not empty, as the `Value` path.
    #[derive(Debug, PartialEq, Deserialize)]
    enum Tuples {
        Pair(u8, String),
        Empty(),
    }
    let names = derive_support::variant_names::<Tuples>();
    let text = |index, json: &str| {
        derive_support::from_payload_text::<Tuples>(names, 2, index, json.as_bytes())
    };
    assert_eq!(text(0, r#"[1,"a"]"#), Some(Tuples::Pair(1, "a".into())));
    assert_eq!(text(0, r#"{"0":1,"1":"a"}"#), None);
    assert_eq!(text(0, "[1]"), None);
    assert_eq!(text(1, "[]"), None);
    assert_eq!(text(1, "[1]"), None);
}

/// Payload texts for any event type: right ones, wrong shapes, duplicates, junk.
fn arb_payload_text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        arb_event().prop_map(|e| serde_json::to_vec(&e.to_payload().unwrap()).unwrap()),
        prop_oneof![
            Just("null"),
            Just("{}"),
            Just("[]"),
            Just("\"x\""),
            Just("7"),
            Just(r#"{"reason":"a","by_customer":false}"#),
            Just(r#"{"reason":"a","reason":"b","by_customer":true}"#),
            Just(r#"{"customer":"c","lines":[["s",1]],"extra":null}"#),
            Just(r#"{"customer":"c","lines":[["s",-1]]}"#),
            Just(r#"["c",[]]"#),
            Just(r#"{"customer":"c","lines":[]} {}"#),
            Just(r#"{"customer":"c""#),
        ]
        .prop_map(|s| s.as_bytes().to_vec()),
        proptest::collection::vec(any::<u8>(), 0..24),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The text path is only a shortcut: whatever it reads, the `Value` path reads
    /// the same, and it reads every payload the encoder writes.
    #[test]
    fn the_payload_text_path_agrees_with_the_value_path(
        type_index in 0..TYPES.len(),
        text in arb_payload_text(),
        event in arb_event(),
    ) {
        let event_type = &TYPES[type_index];
        if let Some(fast) = ShopEvent::from_payload_text(event_type, &text) {
            let value: Value = serde_json::from_slice(&text).unwrap();
            prop_assert_eq!(ShopEvent::from_payload(event_type, value).unwrap(), fast);
        }
        let own = serde_json::to_vec(&event.to_payload().unwrap()).unwrap();
        prop_assert_eq!(ShopEvent::from_payload_text(event.event_type(), &own), Some(event));
    }

    #[test]
    fn any_envelope_round_trips(envelope in arb_envelope()) {
        let record = codec().encode(&envelope, SOURCE).unwrap();
        prop_assert_eq!(decode(&record).unwrap(), envelope);
    }

    #[test]
    fn arbitrary_records_never_panic(
        key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
        value in proptest::option::of(prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            Just(br#"{"why":"x"}"#.to_vec()),
            Just(b"{}".to_vec()),
        ]),
        headers in arb_headers(),
    ) {
        let record = RecordRef {
            key: key.as_deref(),
            value: value.as_deref(),
            headers: headers.iter().map(|(n, v)| (n.as_str(), v.as_deref())).collect(),
        };
        // Any outcome is fine as long as it is a value, not a panic; errors must render.
        if let Err(err) = codec().decode(&record) {
            prop_assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn corrupting_one_header_of_a_valid_record_never_panics(
        envelope in arb_envelope(),
        index in any::<prop::sample::Index>(),
        bytes in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
    ) {
        let mut record = codec().encode(&envelope, SOURCE).unwrap();
        let i = index.index(record.headers.len());
        let name = record.headers[i].0.clone();
        let owned: Vec<(String, Option<Vec<u8>>)> = record.headers.drain(..)
            .enumerate()
            .map(|(j, (n, v))| if j == i { (n, bytes.clone()) } else { (n, Some(v)) })
            .collect();
        let view = RecordRef {
            key: Some(&record.key),
            value: Some(&record.value),
            headers: owned.iter().map(|(n, v)| (n.as_str(), v.as_deref())).collect(),
        };
        match codec().decode(&view) {
            Ok(decoded) => prop_assert_eq!(decoded.aggregate_id, envelope.aggregate_id),
            Err(err) => prop_assert!(!err.to_string().is_empty(), "{}", name),
        }
    }
}

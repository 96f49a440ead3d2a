//! The wire format on a real broker: a record encoded by the codec and produced with
//! rdkafka is read back by a plain rdkafka consumer and checked byte for byte, without
//! Tributary's decoder; then the codec decodes it back to the same envelope.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use tributary::kafka::EncodedRecordExt as _;

use chrono::{TimeZone, Utc};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tributary::{Aggregate, AggregateId, Apply, DomainEvent, EventEnvelope, Metadata, kafka};
use tributary_integration_tests::projection_support::EventsTopic;
use tributary_integration_tests::{create_topic, kafka_bootstrap, unique_prefix};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Line {
    sku: String,
    quantity: u32,
    price_cents: u64,
}

#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "order", event = OrderEvent, error = OrderError)]
struct Order;

impl Apply<OrderEvent> for Order {
    fn apply(&mut self, _: &OrderEvent) {}
}

#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
#[error("order error")]
struct OrderError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = Order)]
enum OrderEvent {
    Placed {
        customer: String,
        lines: Vec<Line>,
    },
    #[event(version = 2)]
    Cancelled {
        reason: String,
    },
}

#[tokio::test]
async fn produced_record_matches_the_wire_format_byte_for_byte() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("wire");
    let codec = EventsTopic::<OrderEvent>::new(&prefix);
    let topic = codec.name.clone();
    create_topic(&bootstrap, &topic, 1).await;

    let envelope = EventEnvelope {
        id: Uuid::parse_str("0193a4b2-7c1e-7d3a-9f00-1234567890ab").unwrap(),
        aggregate_id: AggregateId::new("order-42"),
        sequence: 3,
        time: Utc.with_ymd_and_hms(2026, 11, 25, 20, 8, 43).unwrap()
            + chrono::Duration::microseconds(5),
        metadata: Metadata {
            causation_id: Some("cmd-0193a4b2".into()),
            correlation_id: Some("checkout-7".into()),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        },
        event: OrderEvent::Placed {
            customer: "cust-9".into(),
            lines: vec![Line {
                sku: "sku-1".into(),
                quantity: 2,
                price_cents: 1999,
            }],
        },
    };
    let record = codec.encode(&envelope);

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap();
    let rdkafka::producer::future_producer::Delivery {
        partition, offset, ..
    } = producer
        .send(record.to_future_record(&topic), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("produce failed");
    producer.flush(Duration::from_secs(5)).unwrap();

    // A plain consumer: no group membership, reads the one partition from the start.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("{prefix}-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("no record within 30 s")
        .expect("consume failed");

    // Byte for byte, written out by hand from docs/wire-format.md.
    assert_eq!(message.key(), Some(&b"order-42"[..]));
    assert_eq!(
        message.payload(),
        Some(
            &br#"{"customer":"cust-9","lines":[{"sku":"sku-1","quantity":2,"price_cents":1999}]}"#
                [..]
        )
    );
    let headers: Vec<(String, Vec<u8>)> = message
        .headers()
        .expect("record has no headers")
        .iter()
        .map(|h| {
            (
                h.key.to_owned(),
                h.value.expect("null header value").to_vec(),
            )
        })
        .collect();
    let expected: Vec<(String, Vec<u8>)> = [
        ("ce_specversion", "1.0".to_owned()),
        ("ce_id", "0193a4b2-7c1e-7d3a-9f00-1234567890ab".to_owned()),
        ("ce_source", format!("/{prefix}/order")),
        ("ce_type", "order.placed.v1".to_owned()),
        ("ce_time", "2026-11-25T20:08:43.000005Z".to_owned()),
        ("ce_subject", "order-42".to_owned()),
        ("content-type", "application/json".to_owned()),
        ("ce_sequence", "00000000000000000003".to_owned()),
        ("ce_causationid", "cmd-0193a4b2".to_owned()),
        ("ce_correlationid", "checkout-7".to_owned()),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_bytes()))
    .collect();
    assert_eq!(headers, expected);

    // And the codec reads it back as the same envelope.
    let decoded = codec.codec.decode(&kafka::record_ref(&message)).unwrap();
    assert_eq!(decoded, envelope);
    assert_eq!(decoded.event_type().ce_type, "order.placed.v1");
    assert_eq!(OrderEvent::EVENT_TYPES[1].ce_type, "order.cancelled.v2");
}

//! Unit, tuple and struct variants; `version` and `name` overrides; a payload round trip.
#![deny(warnings)]

use serde::{Deserialize, Serialize};
use serde_json::json;
use tributary_core::{Aggregate, Apply, DomainEvent, EventType, PayloadError};

#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "order", event = OrderEvent, error = OrderError)]
struct Order;

impl Apply<OrderEvent> for Order {
    fn apply(&mut self, _: &OrderEvent) {}
}

#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
#[error("never")]
struct OrderError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Line {
    sku: String,
    qty: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = Order)]
enum OrderEvent {
    Placed { customer: String, lines: Vec<Line> },
    ItemsAdded(Vec<Line>),
    #[event(version = 2)]
    Cancelled { reason: String },
    Shipped,
    #[event(name = "paid_in_full", version = 3)]
    Paid(u64, String),
    #[event(name = "noted")]
    #[event(version = 4)]
    NoteAdded { text: String },
}

fn round_trip(event: &OrderEvent, expected_payload: serde_json::Value) {
    let payload = event.to_payload().expect("serializes");
    assert_eq!(payload, expected_payload, "payload of {event:?}");
    // Through the wire as bytes, then back.
    let bytes = serde_json::to_vec(&payload).expect("to bytes");
    let payload: serde_json::Value = serde_json::from_slice(&bytes).expect("from bytes");
    let back = OrderEvent::from_payload(event.event_type(), payload).expect("deserializes");
    assert_eq!(&back, event);
}

fn main() {
    assert_eq!(OrderEvent::AGGREGATE, "order");
    assert_eq!(
        OrderEvent::EVENT_TYPES,
        &[
            EventType { name: "order.placed", version: 1, ce_type: "order.placed.v1" },
            EventType { name: "order.items_added", version: 1, ce_type: "order.items_added.v1" },
            EventType { name: "order.cancelled", version: 2, ce_type: "order.cancelled.v2" },
            EventType { name: "order.shipped", version: 1, ce_type: "order.shipped.v1" },
            EventType { name: "order.paid_in_full", version: 3, ce_type: "order.paid_in_full.v3" },
            EventType { name: "order.noted", version: 4, ce_type: "order.noted.v4" },
        ]
    );

    let line = Line { sku: "A-1".to_owned(), qty: 2 };
    let placed = OrderEvent::Placed { customer: "c-1".to_owned(), lines: vec![line.clone()] };
    assert_eq!(placed.event_type().ce_type, "order.placed.v1");
    assert_eq!(placed.event_type().to_string(), "order.placed.v1");
    round_trip(&placed, json!({ "customer": "c-1", "lines": [{ "sku": "A-1", "qty": 2 }] }));

    let added = OrderEvent::ItemsAdded(vec![line]);
    assert_eq!(added.event_type().name, "order.items_added");
    round_trip(&added, json!([{ "sku": "A-1", "qty": 2 }]));

    let cancelled = OrderEvent::Cancelled { reason: "changed my mind".to_owned() };
    assert_eq!(cancelled.event_type().version, 2);
    round_trip(&cancelled, json!({ "reason": "changed my mind" }));

    assert_eq!(OrderEvent::Shipped.event_type().ce_type, "order.shipped.v1");
    round_trip(&OrderEvent::Shipped, json!({}));
    // A unit variant also accepts `null`.
    let shipped = OrderEvent::from_payload(OrderEvent::Shipped.event_type(), json!(null))
        .expect("null is an empty payload");
    assert_eq!(shipped, OrderEvent::Shipped);

    let paid = OrderEvent::Paid(1250, "EUR".to_owned());
    assert_eq!(paid.event_type().ce_type, "order.paid_in_full.v3");
    round_trip(&paid, json!([1250, "EUR"]));

    let noted = OrderEvent::NoteAdded { text: "fragile".to_owned() };
    assert_eq!(noted.event_type().ce_type, "order.noted.v4");
    round_trip(&noted, json!({ "text": "fragile" }));

    // `event_type()` returns the same values as `EVENT_TYPES`, in declaration order.
    let all = [placed, added, cancelled, OrderEvent::Shipped, paid, noted];
    for (event, expected) in all.iter().zip(OrderEvent::EVENT_TYPES) {
        assert_eq!(event.event_type(), expected);
        assert_eq!(OrderEvent::event_type_named(expected.name), Some(expected));
    }

    // Errors are values, not panics.
    let unknown = EventType { name: "order.lost", version: 1, ce_type: "order.lost.v1" };
    match OrderEvent::from_payload(&unknown, json!({})) {
        Err(PayloadError::UnknownType { name }) => assert_eq!(name, "order.lost"),
        other => panic!("expected UnknownType, got {other:?}"),
    }
    let cancelled_type = OrderEvent::EVENT_TYPES[2];
    match OrderEvent::from_payload(&cancelled_type, json!({ "reason": 42 })) {
        Err(PayloadError::Json(_)) => {}
        other => panic!("expected a JSON error, got {other:?}"),
    }
    match OrderEvent::from_payload(OrderEvent::Shipped.event_type(), json!({ "x": 1 })) {
        Err(PayloadError::Json(_)) => {}
        other => panic!("expected a JSON error, got {other:?}"),
    }
}

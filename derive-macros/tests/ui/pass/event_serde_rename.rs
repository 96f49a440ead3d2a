//! serde's `rename_all` and `rename` change the variant names serde uses; the derive
//! finds them at runtime, so payloads still round-trip. Event names come from the Rust
//! variant names, not from serde; the aggregate's name (with a `-`) from the aggregate.
#![deny(warnings)]

use serde::{Deserialize, Serialize};
use serde_json::json;
use tributary_core::{Aggregate, Apply, DomainEvent};

#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "shopping-cart", event = CartEvent, error = CartError)]
struct ShoppingCart;

impl Apply<CartEvent> for ShoppingCart {
    fn apply(&mut self, _: &CartEvent) {}
}

#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
#[error("never")]
struct CartError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE", deny_unknown_fields)]
#[event(aggregate = ShoppingCart)]
enum CartEvent {
    #[serde(rename_all = "camelCase")]
    ItemAdded { item_id: String, unit_price: u32 },
    #[serde(rename = "emptied!")]
    Emptied,
    CheckedOut(String),
}

fn main() {
    assert_eq!(CartEvent::AGGREGATE, "shopping-cart");
    let names: Vec<&str> = CartEvent::EVENT_TYPES.iter().map(|t| t.ce_type).collect();
    assert_eq!(
        names,
        [
            "shopping-cart.item_added.v1",
            "shopping-cart.emptied.v1",
            "shopping-cart.checked_out.v1",
        ]
    );

    // The serde representation is the renamed one...
    let added = CartEvent::ItemAdded { item_id: "i-1".to_owned(), unit_price: 300 };
    assert_eq!(
        serde_json::to_value(&added).expect("serializes"),
        json!({ "ITEM_ADDED": { "itemId": "i-1", "unitPrice": 300 } })
    );
    // ...and the payload is the variant's data without the tag.
    let payload = added.to_payload().expect("serializes");
    assert_eq!(payload, json!({ "itemId": "i-1", "unitPrice": 300 }));
    let back = CartEvent::from_payload(added.event_type(), payload).expect("deserializes");
    assert_eq!(back, added);

    for event in [CartEvent::Emptied, CartEvent::CheckedOut("card".to_owned())] {
        let payload = event.to_payload().expect("serializes");
        let back = CartEvent::from_payload(event.event_type(), payload).expect("deserializes");
        assert_eq!(back, event);
    }
}

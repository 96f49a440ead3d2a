use serde::{Deserialize, Serialize};
use tributary_core::DomainEvent;

#[derive(Serialize, Deserialize, DomainEvent)]
#[serde(tag = "type")]
#[event(aggregate = Order)]
enum OrderEvent {
    Placed { customer: String },
}

fn main() {}

use serde::{Deserialize, Serialize};
use tributary_core::DomainEvent;

#[derive(Serialize, Deserialize, DomainEvent)]
#[event(aggregate = Order)]
enum OrderEvent {
    Placed { customer: String },
    #[serde(skip)]
    Internal,
    #[serde(other)]
    Unknown,
}

fn main() {}

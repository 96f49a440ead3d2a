// `OrderLineEvent` names `Order`, whose events are `OrderEvent`: an enum can only name
// the aggregate that declares it as `event = ..`.
use serde::{Deserialize, Serialize};
use tributary_core::{Aggregate, Apply, DomainEvent};

#[derive(Debug, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = Order)]
enum OrderEvent {
    Placed,
}

#[derive(Debug, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = Order)]
enum OrderLineEvent {
    Added,
}

#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
#[error("nope")]
struct OrderError;

#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "order", event = OrderEvent, error = OrderError)]
struct Order;

impl Apply<OrderEvent> for Order {
    fn apply(&mut self, _: &OrderEvent) {}
}

fn main() {}

// `aggregate = ..` names a type that is not an aggregate; the aggregate that does use
// the enum reports nothing more.
use serde::{Deserialize, Serialize};
use tributary_core::{Aggregate, Apply, DomainEvent};

struct OrderId;

#[derive(Debug, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = OrderId)]
enum OrderEvent {
    Placed,
    Cancelled,
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

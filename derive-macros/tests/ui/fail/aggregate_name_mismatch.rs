// `ArchivedOrder` declares `OrderEvent`, the event enum of `Order`: its events would
// carry the name `order` and go to `Order`'s topic. The enum's own check passes (it
// names `Order`, whose events it is), so the aggregate derive catches this one.
use serde::{Deserialize, Serialize};
use tributary_core::{Aggregate, Apply, DomainEvent};

#[derive(Debug, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = Order)]
enum OrderEvent {
    Placed,
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

#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "archived-order", event = OrderEvent, error = OrderError)]
struct ArchivedOrder;

impl Apply<OrderEvent> for ArchivedOrder {
    fn apply(&mut self, _: &OrderEvent) {}
}

fn main() {}

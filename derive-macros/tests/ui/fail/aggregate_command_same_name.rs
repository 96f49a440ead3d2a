// Two listed commands with one name (`cancel`): the processor could not tell them
// apart. Only const evaluation knows the names.
use serde::{Deserialize, Serialize};
use tributary_core::{Aggregate, Apply, Command, DomainEvent, Handle};

#[derive(Debug, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = Order)]
enum OrderEvent {
    Cancelled,
}

#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
#[error("nope")]
struct OrderError;

#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "order", event = OrderEvent, error = OrderError, commands(Cancel, CancelOrder))]
struct Order;

impl Apply<OrderEvent> for Order {
    fn apply(&mut self, _: &OrderEvent) {}
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[command(aggregate = Order)]
struct Cancel {
    #[aggregate_id]
    order_id: String,
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[command(aggregate = Order, name = "cancel")]
struct CancelOrder {
    #[aggregate_id]
    order_id: String,
}

impl Handle<Cancel> for Order {
    fn handle(&self, _: Cancel) -> Result<Vec<OrderEvent>, OrderError> {
        Ok(vec![OrderEvent::Cancelled])
    }
}

impl Handle<CancelOrder> for Order {
    fn handle(&self, _: CancelOrder) -> Result<Vec<OrderEvent>, OrderError> {
        Ok(vec![OrderEvent::Cancelled])
    }
}

fn main() {}

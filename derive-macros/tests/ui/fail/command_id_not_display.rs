use serde::{Deserialize, Serialize};
use tributary_core::{Aggregate, Apply, Command, DomainEvent, Handle};

#[derive(Debug, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = Order)]
enum OrderEvent {
    Placed,
}

#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
#[error("nope")]
struct OrderError;

#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "order", event = OrderEvent, error = OrderError, commands(PlaceOrder))]
struct Order;

impl Apply<OrderEvent> for Order {
    fn apply(&mut self, _: &OrderEvent) {}
}

#[derive(Debug, Serialize, Deserialize)]
struct OrderId(u64);

#[derive(Debug, Serialize, Deserialize, Command)]
#[command(aggregate = Order)]
struct PlaceOrder {
    #[aggregate_id]
    order_id: OrderId,
}

impl Handle<PlaceOrder> for Order {
    fn handle(&self, _: PlaceOrder) -> Result<Vec<OrderEvent>, OrderError> {
        Ok(vec![])
    }
}

fn main() {}

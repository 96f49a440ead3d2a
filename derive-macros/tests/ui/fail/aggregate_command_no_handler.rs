// A listed command without `impl Handle<ConfirmOrder> for Order`: the error points
// at `ConfirmOrder` in the list.
use serde::{Deserialize, Serialize};
use tributary_core::{Apply, Command, DomainEvent, Aggregate, Handle};

#[derive(Debug, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = Order)]
enum OrderEvent {
    Placed,
}

#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
#[error("nope")]
struct OrderError;

impl Apply<OrderEvent> for Order {
    fn apply(&mut self, _: &OrderEvent) {}
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[command(aggregate = Order)]
struct PlaceOrder {
    #[aggregate_id]
    order_id: String,
}

impl Handle<PlaceOrder> for Order {
    fn handle(&self, _: PlaceOrder) -> Result<Vec<OrderEvent>, OrderError> {
        Ok(vec![OrderEvent::Placed])
    }
}

#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "order", event = OrderEvent, error = OrderError, commands(PlaceOrder, ConfirmOrder))]
struct Order;

#[derive(Debug, Serialize, Deserialize, Command)]
#[command(aggregate = Order)]
struct ConfirmOrder {
    #[aggregate_id]
    order_id: String,
}

fn main() {}

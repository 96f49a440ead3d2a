// A command listed twice (macro-time error at the second), and lists written in other forms than `commands(A, B)`.
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
#[aggregate(name = "order", event = OrderEvent, error = OrderError, commands(PlaceOrder))]
struct Order;

#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "order", event = OrderEvent, error = OrderError, commands(PlaceOrder, PlaceOrder))]
struct Twice;

#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "order", event = OrderEvent, error = OrderError, commands = (PlaceOrder, CancelOrder))]
struct Tuple;

#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "order", event = OrderEvent, error = OrderError, commands = PlaceOrder)]
struct Single;

#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "order", event = OrderEvent, error = OrderError, commands("PlaceOrder", 3))]
struct Strings;

fn main() {}

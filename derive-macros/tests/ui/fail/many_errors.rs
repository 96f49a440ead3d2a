// Every mistake in one derive is reported in one compilation.
use serde::{Deserialize, Serialize};
use tributary_core::{Aggregate, Command, DomainEvent};

#[derive(Serialize, Deserialize, DomainEvent)]
#[serde(untagged)]
#[event(aggregate = "Order", crate = tributary)]
enum OrderEvent {
    #[event(version = 0)]
    Placed,
    #[event(name = "placed")]
    Replaced,
    #[event(verison = 2, name = "cancelled", name = "canceled")]
    Cancelled,
    #[event(version = "3")]
    #[serde(skip_deserializing)]
    Shipped,
}

#[derive(Aggregate)]
#[aggregate(nmae = "order", event = "OrderEvent", snapshot_every = -1, state_version)]
struct Order;

#[derive(Command)]
#[command(aggregate = Order, name = "Place Order", topic = "orders")]
struct PlaceOrder {
    #[aggregate_id(key)]
    order_id: String,
    #[aggregate_id]
    customer_id: String,
}

fn main() {}

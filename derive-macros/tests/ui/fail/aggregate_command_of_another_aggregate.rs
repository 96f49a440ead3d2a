// `Order` lists `ShipParcel`, a command of `Parcel`: the error points at
// `ShipParcel` in the list.
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
#[aggregate(name = "order", event = OrderEvent, error = OrderError, commands(PlaceOrder, ShipParcel))]
struct Order;

#[derive(Debug, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = Parcel)]
enum ParcelEvent {
    Shipped,
}

#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "parcel", event = ParcelEvent, error = OrderError, commands(ShipParcel))]
struct Parcel;

impl Apply<ParcelEvent> for Parcel {
    fn apply(&mut self, _: &ParcelEvent) {}
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[command(aggregate = Parcel)]
struct ShipParcel {
    #[aggregate_id]
    parcel_id: String,
}

impl Handle<ShipParcel> for Parcel {
    fn handle(&self, _: ShipParcel) -> Result<Vec<ParcelEvent>, OrderError> {
        Ok(vec![ParcelEvent::Shipped])
    }
}

fn main() {}

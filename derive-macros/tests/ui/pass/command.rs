//! Named and tuple `#[aggregate_id]` fields, the default and an explicit `name`, generics;
//! the aggregate's command list with paths and a generic command.
#![deny(warnings)]

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tributary_core::{Aggregate, AggregateId, Apply, Command, DomainEvent, Handle};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = Order)]
enum OrderEvent {
    Placed,
}

#[derive(Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
enum OrderError {
    #[error("closed")]
    Closed,
}

#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(
    name = "order",
    event = OrderEvent,
    error = OrderError,
    commands(PlaceOrder, self::CancelOrder, crate::HTTPImport, Annotate<Vec<u8>>),
)]
struct Order {
    placed: bool,
}

impl Apply<OrderEvent> for Order {
    fn apply(&mut self, _event: &OrderEvent) {
        self.placed = true;
    }
}

/// An id type with its own `Display`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderId(u64);

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ord-{:06}", self.0)
    }
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[command(aggregate = Order)]
struct PlaceOrder {
    customer: String,
    #[aggregate_id]
    order_id: OrderId,
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[command(aggregate = Order, name = "cancel")]
struct CancelOrder(String, #[aggregate_id] OrderId);

#[derive(Debug, Serialize, Deserialize, Command)]
#[command(aggregate = self::Order)]
struct HTTPImport(#[aggregate_id] u32);

#[derive(Debug, Serialize, Deserialize, Command)]
#[command(name = "annotate", aggregate = Order)]
#[serde(bound = "")] // the `where` clause below has all bounds
struct Annotate<T>
where
    T: Serialize + DeserializeOwned + fmt::Debug + Send + Sync + 'static,
{
    #[aggregate_id]
    id: String,
    note: T,
}

impl Handle<PlaceOrder> for Order {
    fn handle(&self, _: PlaceOrder) -> Result<Vec<OrderEvent>, OrderError> {
        Ok(vec![OrderEvent::Placed])
    }
}

impl Handle<CancelOrder> for Order {
    fn handle(&self, _: CancelOrder) -> Result<Vec<OrderEvent>, OrderError> {
        Err(OrderError::Closed)
    }
}

impl Handle<HTTPImport> for Order {
    fn handle(&self, _: HTTPImport) -> Result<Vec<OrderEvent>, OrderError> {
        Ok(vec![])
    }
}

impl<T> Handle<Annotate<T>> for Order
where
    T: Serialize + DeserializeOwned + fmt::Debug + Send + Sync + 'static,
{
    fn handle(&self, _: Annotate<T>) -> Result<Vec<OrderEvent>, OrderError> {
        Ok(vec![])
    }
}

fn id_of<C: Command>(command: &C) -> AggregateId {
    command.aggregate_id()
}

fn main() {
    assert_eq!(<PlaceOrder as Command>::NAME, "place_order");
    assert_eq!(<CancelOrder as Command>::NAME, "cancel");
    assert_eq!(<HTTPImport as Command>::NAME, "http_import");
    assert_eq!(<Annotate<Vec<u8>> as Command>::NAME, "annotate");
    assert_eq!(<<PlaceOrder as Command>::Aggregate as Aggregate>::NAME, "order");
    assert_eq!(Order::COMMANDS, ["place_order", "cancel", "http_import", "annotate"]);

    let place = PlaceOrder { customer: "c-1".to_owned(), order_id: OrderId(42) };
    assert_eq!(id_of(&place), AggregateId::new("ord-000042"));
    assert_eq!(place.customer, "c-1");

    let cancel = CancelOrder("too late".to_owned(), OrderId(7));
    assert_eq!(cancel.aggregate_id().as_str(), "ord-000007");
    assert_eq!(cancel.0, "too late");

    assert_eq!(HTTPImport(99).aggregate_id().as_str(), "99");

    let annotate = Annotate { id: "o-9".to_owned(), note: vec![1u8, 2] };
    assert_eq!(annotate.aggregate_id().into_string(), "o-9");
    assert_eq!(annotate.note, [1, 2]);

    let mut order = Order::default();
    order.apply(&OrderEvent::Placed);
    assert!(order.placed);
}

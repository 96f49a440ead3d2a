use tributary_core::Command;

#[derive(Command)]
#[command(aggregate = Order)]
struct PlaceOrder {
    #[aggregate_id(order)]
    order_id: String,
}

fn main() {}

use tributary_core::Command;

#[derive(Command)]
#[command(aggregate = Order)]
struct PlaceOrder {
    order_id: String,
    customer: String,
}

fn main() {}

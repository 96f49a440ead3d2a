use tributary_core::Command;

#[derive(Command)]
#[command(aggregate = Order)]
struct PlaceOrder {
    #[aggregate_id]
    order_id: String,
    #[aggregate_id]
    customer_id: String,
}

fn main() {}

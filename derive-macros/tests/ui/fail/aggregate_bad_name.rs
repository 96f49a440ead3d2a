use tributary_core::Aggregate;

#[derive(Aggregate)]
#[aggregate(name = "Order Lines", event = OrderLineEvent, error = OrderLineError)]
struct OrderLine;

fn main() {}

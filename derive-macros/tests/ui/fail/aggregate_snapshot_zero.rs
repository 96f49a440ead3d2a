use tributary_core::Aggregate;

#[derive(Aggregate)]
#[aggregate(name = "order", event = OrderEvent, error = OrderError, snapshot_every = 0)]
struct Order {
    lines: Vec<String>,
}

fn main() {}

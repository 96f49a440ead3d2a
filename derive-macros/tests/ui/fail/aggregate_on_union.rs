use tributary_core::Aggregate;

#[derive(Aggregate)]
#[aggregate(name = "order", event = OrderEvent, error = OrderError)]
union Order {
    open: u32,
    closed: f32,
}

fn main() {}

use tributary_core::Aggregate;

#[derive(Aggregate)]
#[aggregate(snapshot_every = 50)]
struct Order {
    lines: Vec<String>,
}

fn main() {}

use tributary_core::DomainEvent;

#[derive(DomainEvent)]
#[event(aggregate = Order)]
struct OrderPlaced {
    customer: String,
}

fn main() {}

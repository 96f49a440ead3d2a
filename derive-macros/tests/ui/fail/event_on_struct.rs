use tributary_core::DomainEvent;

#[derive(DomainEvent)]
#[event(aggregate = "order")]
struct OrderPlaced {
    customer: String,
}

fn main() {}

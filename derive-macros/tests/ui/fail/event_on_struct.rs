use tributary::DomainEvent;

#[derive(DomainEvent)]
#[event(aggregate = "order")]
struct OrderPlaced {
    customer: String,
}

fn main() {}

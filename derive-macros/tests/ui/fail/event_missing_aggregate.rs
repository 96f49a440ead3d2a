use tributary::DomainEvent;

#[derive(DomainEvent)]
enum OrderEvent {
    Placed,
}

fn main() {}

use tributary_core::DomainEvent;

#[derive(DomainEvent)]
enum OrderEvent {
    Placed,
}

fn main() {}

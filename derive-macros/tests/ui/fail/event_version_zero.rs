use tributary_core::DomainEvent;

#[derive(DomainEvent)]
#[event(aggregate = Order)]
enum OrderEvent {
    #[event(version = 0)]
    Placed,
}

fn main() {}

use tributary_core::DomainEvent;

#[derive(DomainEvent)]
#[event(aggregate = Order)]
enum OrderEvent {
    #[event(version = 2)]
    #[event(version = 3)]
    Placed,
}

fn main() {}

use tributary_core::DomainEvent;

#[derive(DomainEvent)]
#[event(aggregat = Order)]
enum OrderEvent {
    #[event(verison = 2)]
    Placed,
    #[event(aggregate = Order)]
    Cancelled,
}

fn main() {}

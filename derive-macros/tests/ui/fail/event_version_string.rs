use tributary_core::DomainEvent;

#[derive(DomainEvent)]
#[event(aggregate = Order)]
enum OrderEvent {
    #[event(version = "2")]
    Placed,
}

fn main() {}

use tributary_core::DomainEvent;

#[derive(DomainEvent)]
#[event(aggregate = "Order Lines")]
enum OrderLineEvent {
    Added,
}

fn main() {}

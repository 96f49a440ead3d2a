use tributary::DomainEvent;

#[derive(DomainEvent)]
#[event(aggregate = "Order Lines")]
enum OrderLineEvent {
    Added,
}

fn main() {}

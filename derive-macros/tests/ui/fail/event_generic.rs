use tributary_core::DomainEvent;

#[derive(DomainEvent)]
#[event(aggregate = Order)]
enum OrderEvent<T> {
    Placed { customer: T },
}

fn main() {}

use tributary_core::DomainEvent;

#[derive(DomainEvent)]
#[event(aggregate = "order")]
enum OrderEvent<T> {
    Placed { customer: T },
}

fn main() {}

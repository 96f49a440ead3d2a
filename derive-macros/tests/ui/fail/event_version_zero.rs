use tributary_core::DomainEvent;

#[derive(DomainEvent)]
#[event(aggregate = "order")]
enum OrderEvent {
    #[event(version = 0)]
    Placed,
}

fn main() {}

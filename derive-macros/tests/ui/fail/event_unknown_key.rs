use tributary_core::DomainEvent;

#[derive(DomainEvent)]
#[event(aggregat = "order")]
enum OrderEvent {
    #[event(verison = 2)]
    Placed,
    #[event(aggregate = "order")]
    Cancelled,
}

fn main() {}

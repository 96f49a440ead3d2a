use tributary_core::DomainEvent;

#[derive(DomainEvent)]
#[event(aggregate = Order)]
enum OrderEvent {
    Placed { customer: String },
    #[event(name = "placed", version = 2)]
    PlacedV2 { customer: String, channel: String },
}

fn main() {}

// The aggregate is named by its type, as in `#[command(aggregate = ..)]`; its name
// (`order-line`) belongs in `#[aggregate(name = ..)]`.
use tributary_core::DomainEvent;

#[derive(DomainEvent)]
#[event(aggregate = "order-line")]
enum OrderLineEvent {
    Added,
}

fn main() {}

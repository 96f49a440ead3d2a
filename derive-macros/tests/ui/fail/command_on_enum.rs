use tributary_core::Command;

#[derive(Command)]
#[command(aggregate = Order)]
enum OrderCommand {
    Place { order_id: String },
    Cancel { order_id: String },
}

fn main() {}

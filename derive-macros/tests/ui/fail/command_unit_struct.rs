use tributary_core::Command;

#[derive(Command)]
#[command(aggregate = Order)]
struct Ping;

fn main() {}

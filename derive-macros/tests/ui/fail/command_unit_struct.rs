use tributary::Command;

#[derive(Command)]
#[command(aggregate = Order)]
struct Ping;

fn main() {}

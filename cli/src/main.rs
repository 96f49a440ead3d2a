//! The `tributary` binary: parses the command line, runs it, exits with its code
//! (see the `tributary_cli` crate docs and `tributary --help`).

#![allow(clippy::print_stdout)]

use std::io::Write;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut out = std::io::stdout().lock();
    let exit = tributary_cli::run(std::env::args_os(), &mut out).await;
    let _ = out.flush();
    exit.into()
}

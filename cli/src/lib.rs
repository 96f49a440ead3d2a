//! # `tributary`, the operations CLI of Tributary
//!
//! Generic operations on a Tributary deployment, needing none of the application's
//! types: the production checklist (`doctor`), topic validation and creation
//! (`topics`), projection lag and status (`projections`), dead letters
//! (`dead-letters list|show|discard`), an aggregate's raw events (`events`) and the
//! effective settings (`config`). Install it with `cargo install --path cli`
//! (add `--features tls` for TLS/SASL clusters); `docs/operations.md` shows each
//! subcommand.
//!
//! Connection settings come from the same environment as the application:
//! `KAFKA_BOOTSTRAP_SERVERS` and `TRIBUTARY_KAFKA_<PROPERTY>`
//! ([`tributary::KafkaConfig::from_env`]), `DATABASE_URL` and `TRIBUTARY_SCHEMA`
//! (default `public`), each overridable by a global option (`--bootstrap-servers`,
//! `-X key=value`, `--database-url`, `--schema`). The CLI never migrates the
//! schema and never prints a secret.
//!
//! Output is text by default; the global `--json` prints one JSON document per
//! command (errors too: `{"error": …, "exit_code": …}`).
//!
//! ## Exit codes
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success; every check passed (warnings allowed) |
//! | 1 | a check failed, or what was asked for does not exist |
//! | 2 | usage error, or a command this generic binary cannot run (`dead-letters replay`) |
//! | 3 | Kafka or Postgres cannot be reached, or refused the request |
//!
//! The library entry point, [`run`], is what the binary calls; tests call it in
//! process with a buffer.

mod args;
mod context;
mod dead_letters;
mod doctor;
mod error;
mod events;
mod output;
mod projections;
mod topics;

use std::ffi::OsString;
use std::io::Write;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::context::Context;
use crate::output::Report;

/// How a command ended, as the process's exit code (see the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Exit {
    /// 0: success; every check passed (warnings allowed).
    Ok = 0,
    /// 1: a check failed, or what was asked for does not exist.
    Failed = 1,
    /// 2: usage error, or a command this generic binary cannot run.
    Usage = 2,
    /// 3: Kafka or Postgres cannot be reached, or refused the request.
    Unreachable = 3,
}

impl Exit {
    /// The numeric exit code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        Self::from(exit.code())
    }
}

/// Parses `args` (the program name first, as `std::env::args_os()` gives them),
/// runs the command and writes its output to `out`: text, or one JSON document with
/// `--json`. Errors are written to `out` too. Returns the exit code.
pub async fn run<I, T>(args: I, out: &mut dyn Write) -> Exit
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version end here too, with exit code 0.
            let exit = if error.exit_code() == 0 {
                Exit::Ok
            } else {
                Exit::Usage
            };
            let _ = write!(out, "{}", error.render());
            return exit;
        }
    };
    let json = cli.global.json;
    let context = Context::new(&cli.global);
    let report = match execute(cli.command, &context).await {
        Ok(report) => report,
        Err(error) => Report::error(&error),
    };
    match report.write(out, json) {
        Ok(()) => report.exit,
        // Nowhere left to say anything (a closed pipe): the command itself ran.
        Err(_) => report.exit,
    }
}

async fn execute(command: Command, context: &Context) -> Result<Report, error::CliError> {
    match command {
        Command::Doctor { prefix, aggregates } => doctor::run(context, &prefix, &aggregates).await,
        Command::Topics(command) => topics::run(context, command).await,
        Command::Projections(command) => projections::run(context, command).await,
        Command::DeadLetters(command) => dead_letters::run(context, command).await,
        Command::Events {
            prefix,
            aggregate,
            id,
            from_offset,
        } => events::run(context, &prefix, &aggregate, &id, from_offset).await,
        Command::Config => Ok(context.describe()),
    }
}

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
//! | 2 | usage error, or a command this generic binary cannot run (`dead-letters replay`, `projections rebuild`, `events --state`) |
//! | 3 | Kafka or Postgres cannot be reached, or refused the request |
//!
//! The library entry point, [`run`], is what the binary calls; tests call it in
//! process with a buffer.
//!
//! ## The embedded form
//!
//! An application's own binary embeds the CLI as an [`Admin`] built with its
//! aggregates' codecs and its projections' workers: `events` then decodes, upcasts
//! and folds the state (`--state`, `--at-version`), and `dead-letters replay` and
//! `projections rebuild` run through the registered workers. The sample shop ships
//! it as `example-shop admin`.

mod admin;
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

use clap::{CommandFactory, FromArgMatches};

pub use crate::admin::Admin;
use crate::args::{Cli, Command, DeadLettersCommand, ProjectionsCommand};
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
///
/// This is the generic binary: `events` shows raw records, and `dead-letters
/// replay`, `projections rebuild` and `events --state` exit 2. An application's
/// own binary runs them through an [`Admin`] it embeds.
pub async fn run<I, T>(args: I, out: &mut dyn Write) -> Exit
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    dispatch(args, out, None, false).await
}

/// Parses and runs a command, with the application's registrations when `admin`
/// is given; `terminal` tells whether `out` is one (for the progress bar).
async fn dispatch<I, T>(args: I, out: &mut dyn Write, admin: Option<&Admin>, terminal: bool) -> Exit
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut command = Cli::command();
    if let Some(admin) = admin {
        command = admin.configure(command);
    }
    let parsed = command
        .try_get_matches_from_mut(args)
        .and_then(|matches| Cli::from_arg_matches(&matches));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version end here too, with exit code 0.
            let exit = if error.exit_code() == 0 {
                Exit::Ok
            } else {
                Exit::Usage
            };
            let _ = write!(out, "{}", error.format(&mut command).render());
            return exit;
        }
    };
    let json = cli.global.json;
    let context = Context::new(&cli.global);
    let report = match execute(cli.command, &context, admin, json, terminal).await {
        Ok(report) => report,
        Err(error) => Report::error(&error),
    };
    match report.write(out, json) {
        Ok(()) => report.exit,
        // Nowhere left to say anything (a closed pipe): the command itself ran.
        Err(_) => report.exit,
    }
}

/// Why the generic binary cannot run a command, and where to run it instead.
fn embedded_only(what: &str) -> error::CliError {
    error::CliError::Usage(format!(
        "{what} is not available in the generic `tributary` binary: it needs the application's code (its codecs or its projection's handlers). Run it from the application's embedded admin entry point (tributary_cli::Admin, e.g. `example-shop admin …`)"
    ))
}

async fn execute(
    command: Command,
    context: &Context,
    admin: Option<&Admin>,
    json: bool,
    terminal: bool,
) -> Result<Report, error::CliError> {
    match command {
        Command::Doctor { prefix, aggregates } => doctor::run(context, &prefix, &aggregates).await,
        Command::Topics(command) => topics::run(context, command).await,
        Command::Projections(ProjectionsCommand::Rebuild { name, yes }) => match admin {
            Some(admin) => admin.rebuild(&name, yes, json, terminal).await,
            None => Err(embedded_only("projections rebuild")),
        },
        Command::Projections(command) => projections::run(context, command).await,
        Command::DeadLetters(DeadLettersCommand::Replay {
            id,
            projection,
            all,
        }) => match admin {
            Some(admin) => admin.replay(context, id, projection.as_deref(), all).await,
            None => Err(error::CliError::Usage(dead_letters::REPLAY.to_owned())),
        },
        Command::DeadLetters(command) => dead_letters::run(context, command).await,
        Command::Events {
            prefix,
            aggregate,
            id,
            from_offset,
            at_version,
            state,
        } => {
            let request = admin::EventsRequest {
                prefix: &prefix,
                aggregate: &aggregate,
                id: &id,
                from_offset,
                at_version,
                state,
            };
            match admin {
                Some(admin) => match admin.events(context, request).await {
                    Some(result) => result,
                    None => {
                        events::run(context, &prefix, &aggregate, &id, from_offset, at_version)
                            .await
                    }
                },
                None if state => Err(embedded_only("events --state")),
                None => {
                    events::run(context, &prefix, &aggregate, &id, from_offset, at_version).await
                }
            }
        }
        Command::Config => Ok(context.describe()),
    }
}

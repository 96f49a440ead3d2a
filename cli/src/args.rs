//! The command line, as clap parses it.

use clap::{Args, Parser, Subcommand};

/// Exit codes, shown at the end of `tributary --help`.
const EXIT_CODES: &str = "\
Exit codes:
  0  success; every check passed (warnings allowed)
  1  a check failed, or what was asked for does not exist (topic, projection, dead letter, events)
  2  usage error: bad arguments, or a command this generic binary cannot run (dead-letters replay,
     projections rebuild, events --state: they need the application's embedded admin entry point)
  3  Kafka or Postgres cannot be reached, or refused the request

Environment: KAFKA_BOOTSTRAP_SERVERS and TRIBUTARY_KAFKA_<PROPERTY> (any librdkafka property,
'.' written as '_'), DATABASE_URL, TRIBUTARY_SCHEMA; the same as the application's.";

/// Operations on a Tributary deployment: its Kafka topics, projections and dead
/// letters.
#[derive(Debug, Parser)]
#[command(name = "tributary", version, about, after_help = EXIT_CODES)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options of every subcommand.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// Print one JSON document instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Kafka bootstrap servers; overrides KAFKA_BOOTSTRAP_SERVERS.
    #[arg(long, global = true, value_name = "HOST:PORT[,...]")]
    pub(crate) bootstrap_servers: Option<String>,
    /// A librdkafka property, applied after the TRIBUTARY_KAFKA_* variables
    /// (repeatable): -X security.protocol=sasl_ssl.
    #[arg(short = 'X', long = "kafka-property", global = true, value_name = "KEY=VALUE", value_parser = parse_property)]
    pub(crate) kafka_properties: Vec<(String, String)>,
    /// Postgres URL.
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    pub(crate) database_url: Option<String>,
    /// Postgres schema of Tributary's tables.
    #[arg(
        long,
        global = true,
        env = "TRIBUTARY_SCHEMA",
        default_value = "public"
    )]
    pub(crate) schema: String,
    /// Seconds to wait for each Kafka request.
    #[arg(long, global = true, default_value_t = 10, value_name = "SECS")]
    pub(crate) timeout: u64,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// The production checklist of a prefix's topics, the cluster and the database:
    /// one line per check, `ok|warn|fail  check  detail`. Exit 1 if any fails.
    Doctor {
        /// The application's topic prefix.
        #[arg(long)]
        prefix: String,
        /// Aggregate types to check (repeatable); default: every `{prefix}.*.events`
        /// topic.
        #[arg(long = "aggregate", value_name = "AGGREGATE")]
        aggregates: Vec<String>,
    },
    /// Validate or create an aggregate type's topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Projections' checkpoints, lag and dead letters, from Postgres and Kafka.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Records projections parked because they could not apply them.
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(DeadLettersCommand),
    /// An aggregate's events: scans the one partition of its events topic that
    /// holds ID (read_committed) and prints the records with that key, in order.
    /// Raw here; decoded (and `--state`) in an application's embedded admin entry
    /// point that registers the aggregate.
    Events {
        /// The application's topic prefix.
        #[arg(long)]
        prefix: String,
        /// The aggregate type (`order` reads `{prefix}.order.events`).
        aggregate: String,
        /// The aggregate id (the record key).
        id: String,
        /// Start the scan at this offset instead of the partition's start.
        #[arg(long, value_name = "OFFSET")]
        from_offset: Option<i64>,
        /// Stop at this aggregate version (`ce_sequence`).
        #[arg(long, value_name = "N")]
        at_version: Option<u64>,
        /// Also print the aggregate's state folded from its events up to that version
        /// (embedded admin entry point only).
        #[arg(long)]
        state: bool,
    },
    /// The effective connection settings, secrets redacted.
    Config,
}

/// `tributary topics …`
#[derive(Debug, Subcommand)]
pub(crate) enum TopicsCommand {
    /// The doctor's topic checks for one aggregate type; exit 1 on a failed check.
    Validate {
        /// The application's topic prefix.
        #[arg(long)]
        prefix: String,
        /// The aggregate type.
        #[arg(long)]
        aggregate: String,
    },
    /// Create the events, commands, outcomes and replies topics if missing (as the
    /// command processor does at start), validate them and print the layout.
    Create {
        /// The application's topic prefix.
        #[arg(long)]
        prefix: String,
        /// The aggregate type.
        #[arg(long)]
        aggregate: String,
        /// Partitions of the events, commands and outcomes topics (fixed for good:
        /// an aggregate's partition is derived from it).
        #[arg(long, default_value_t = 12)]
        partitions: i32,
        /// Replication factor; default 3, or the number of brokers when fewer.
        #[arg(long)]
        replication_factor: Option<i32>,
    },
}

/// `tributary projections …`
#[derive(Debug, Subcommand)]
pub(crate) enum ProjectionsCommand {
    /// Every projection (or one) with its total lag, open dead letters and last
    /// checkpoint update.
    Status {
        /// Only this projection.
        name: Option<String>,
    },
    /// Per projection and partition: checkpoint, high watermark, lag; and totals.
    Lag {
        /// Only this projection.
        name: Option<String>,
    },
    /// Reset a projection's read model and replay every event through its handlers
    /// (embedded admin entry point only: it runs the application's code).
    Rebuild {
        /// The projection.
        name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// `tributary dead-letters …`
#[derive(Debug, Subcommand)]
pub(crate) enum DeadLettersCommand {
    /// Open dead letters (neither replayed nor discarded), oldest first.
    List {
        /// Only this projection's.
        #[arg(long)]
        projection: Option<String>,
        /// Replayed and discarded ones too.
        #[arg(long)]
        all: bool,
    },
    /// Every column of one dead letter; key and payload as UTF-8, or hex.
    Show {
        /// The dead letter's id.
        id: i64,
    },
    /// Mark an open dead letter handled without applying it; it stays as an audit
    /// trail.
    Discard {
        /// The dead letter's id.
        id: i64,
        /// Why, for the audit trail.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Apply a parked record through its projection's handler and mark it replayed
    /// (embedded admin entry point only: it runs the application's code).
    Replay {
        /// The dead letter's id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// The projection (required with --all; checked against the letter's).
        #[arg(long, required_if_eq("all", "true"))]
        projection: Option<String>,
        /// Every open dead letter of --projection, oldest first.
        #[arg(long)]
        all: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn kafka_properties_are_key_value_pairs() {
        assert_eq!(
            parse_property("sasl.password=a=b"),
            Ok(("sasl.password".to_owned(), "a=b".to_owned()))
        );
        assert!(parse_property("novalue").is_err());
        assert!(parse_property("=x").is_err());
    }
}

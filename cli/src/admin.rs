//! The embedded form: [`Admin`], which an application's own binary builds with its
//! aggregates' codecs and its projections' workers, so that `events` decodes and
//! folds, and `dead-letters replay` and `projections rebuild` run the application's
//! handlers.

use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::pin::Pin;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tributary::codec::headers;
use tributary::projection::catalog;
use tributary::projection::{
    Projection, ProjectionError, ProjectionStatus, ProjectionWorker, RebuildProgress,
    RebuildReport, ReplaySummary,
};
use tributary::{Aggregate, DomainEvent, EventCodec};

use crate::Exit;
use crate::context::Context;
use crate::error::CliError;
use crate::events::{self, Event, Scan};
use crate::output::Report;

/// A boxed future of a projection operation.
type Op<'a, T> = Pin<Box<dyn Future<Output = Result<T, ProjectionError>> + Send + 'a>>;

/// An aggregate type registered with its codec: decodes its records and folds its
/// state.
trait RegisteredAggregate: Send + Sync {
    fn name(&self) -> &'static str;
    /// Decodes `events` (in log order) up to version `at`, folding the state.
    fn decode(&self, events: &[Event], at: Option<u64>) -> Decoded;
}

/// A projection registered with its worker.
trait RegisteredProjection: Send + Sync {
    fn name(&self) -> &'static str;
    fn replay(&self, id: i64) -> Op<'_, ()>;
    fn replay_all(&self) -> Op<'_, ReplaySummary>;
    fn rebuild(&self) -> Op<'_, RebuildReport>;
    fn watch_status(&self) -> watch::Receiver<ProjectionStatus>;
}

struct Codec<A: Aggregate>(EventCodec<A::Event>);

impl<A: Aggregate> RegisteredAggregate for Codec<A> {
    fn name(&self) -> &'static str {
        A::NAME
    }

    fn decode(&self, events: &[Event], at: Option<u64>) -> Decoded {
        let mut state = A::default();
        let mut decoded = Decoded::default();
        for event in events {
            let raw = &event.raw;
            match self.0.decode(&raw.as_ref()) {
                Ok(envelope) => {
                    if at.is_some_and(|at| envelope.sequence > at) {
                        continue;
                    }
                    state.apply(&envelope.event);
                    decoded.version = decoded.version.max(envelope.sequence);
                    let ce_type = envelope.event_type().ce_type;
                    let raw_type = raw.header(headers::TYPE);
                    decoded.rows.push(Row::Event(Box::new(DecodedEvent {
                        offset: event.offset,
                        id: envelope.id.to_string(),
                        ce_type: ce_type.to_owned(),
                        upcast_from: raw_type.filter(|t| t != ce_type),
                        source: raw.header(headers::SOURCE),
                        time: tributary::codec::format_time(&envelope.time),
                        sequence: envelope.sequence,
                        correlation_id: envelope.metadata.correlation_id.clone(),
                        causation_id: envelope.metadata.causation_id.clone(),
                        traceparent: envelope.metadata.traceparent.clone(),
                        payload: envelope
                            .event
                            .to_payload()
                            .unwrap_or_else(|error| json!({"error": error.to_string()})),
                    })));
                }
                Err(error) => {
                    if at.is_some_and(|at| event.version().is_some_and(|v| v > at)) {
                        continue;
                    }
                    decoded.rows.push(Row::Undecodable {
                        offset: event.offset,
                        ce_type: raw.header(headers::TYPE),
                        sequence: event.version(),
                        error: error.to_string(),
                        payload: events::payload(raw.value.as_deref()),
                    });
                }
            }
        }
        decoded.state = Some(serde_json::to_value(&state).map_err(|error| error.to_string()));
        decoded
    }
}

impl<P: Projection> RegisteredProjection for ProjectionWorker<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn replay(&self, id: i64) -> Op<'_, ()> {
        Box::pin(self.replay_dead_letter(id))
    }

    fn replay_all(&self) -> Op<'_, ReplaySummary> {
        Box::pin(self.replay_dead_letters())
    }

    fn rebuild(&self) -> Op<'_, RebuildReport> {
        Box::pin(ProjectionWorker::rebuild(self))
    }

    fn watch_status(&self) -> watch::Receiver<ProjectionStatus> {
        ProjectionWorker::watch_status(self)
    }
}

/// One record as a registered codec read it.
#[derive(Debug, Clone, PartialEq)]
enum Row {
    Event(Box<DecodedEvent>),
    Undecodable {
        offset: i64,
        ce_type: Option<String>,
        sequence: Option<u64>,
        error: String,
        payload: serde_json::Value,
    },
}

/// A decoded event with its CloudEvents attributes.
#[derive(Debug, Clone, PartialEq, Default)]
struct DecodedEvent {
    offset: i64,
    id: String,
    /// The current type, after upcasting.
    ce_type: String,
    /// The type on the wire, when an upcaster changed it.
    upcast_from: Option<String>,
    source: Option<String>,
    time: String,
    sequence: u64,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    traceparent: Option<String>,
    payload: serde_json::Value,
}

/// What a registered codec made of an aggregate's records.
#[derive(Debug, Default)]
struct Decoded {
    rows: Vec<Row>,
    /// The last version folded.
    version: u64,
    /// The folded state as JSON, or why it does not serialize.
    state: Option<Result<serde_json::Value, String>>,
}

/// The embedded admin entry point: every subcommand of the generic `tributary`
/// binary, plus what needs the application's code:
///
/// - `events … [--at-version N] [--state]` decodes (and upcasts) the records of a
///   registered aggregate through its codec, shows their CloudEvents attributes and
///   payloads, and with `--state` the state folded from `A::default()`;
/// - `dead-letters replay ID [--projection NAME]` and `dead-letters replay --all
///   --projection NAME` apply parked records through a registered worker;
/// - `projections rebuild NAME [--yes]` rebuilds a registered projection's read
///   model, with a progress bar on a terminal.
///
/// ```no_run
/// # async fn demo(
/// #     worker: tributary::projection::ProjectionWorker<impl tributary::projection::Projection>,
/// # ) -> tributary_cli::Exit {
/// let admin = tributary_cli::Admin::new()
///     .program_name("my-app admin")
///     .projection(worker);
/// admin.run_stdout(std::env::args_os().skip(1)).await
/// # }
/// ```
#[derive(Default)]
pub struct Admin {
    program: Option<&'static str>,
    default_prefix: Option<&'static str>,
    default_schema: Option<&'static str>,
    default_database_url: Option<&'static str>,
    aggregates: Vec<Box<dyn RegisteredAggregate>>,
    projections: Vec<Box<dyn RegisteredProjection>>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("program", &self.program)
            .field("default_prefix", &self.default_prefix)
            .field("default_schema", &self.default_schema)
            .field("aggregates", &self.aggregate_names())
            .field("projections", &self.projection_names())
            .finish()
    }
}

impl Admin {
    /// An entry point with nothing registered: the generic commands only.
    pub fn new() -> Self {
        Self::default()
    }

    /// The name shown in usage and help (`example-shop admin`); default `tributary`.
    #[must_use]
    pub fn program_name(mut self, name: &'static str) -> Self {
        self.program = Some(name);
        self
    }

    /// The `--prefix` of `events`, `doctor` and `topics` when it is not given.
    /// The string lives as long as the program (one per entry point).
    #[must_use]
    pub fn default_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.default_prefix = Some(Box::leak(prefix.into().into_boxed_str()));
        self
    }

    /// The `--schema` when neither it nor `TRIBUTARY_SCHEMA` is given (instead of
    /// `public`): the application's schema, which its registered workers use.
    #[must_use]
    pub fn default_schema(mut self, schema: impl Into<String>) -> Self {
        self.default_schema = Some(Box::leak(schema.into().into_boxed_str()));
        self
    }

    /// The `--database-url` when neither it nor `DATABASE_URL` is given.
    #[must_use]
    pub fn default_database_url(mut self, url: impl Into<String>) -> Self {
        self.default_database_url = Some(Box::leak(url.into().into_boxed_str()));
        self
    }

    /// Registers aggregate `A` with the codec the application decodes its events
    /// with (upcasters included): `events` then decodes `A::NAME`'s records and
    /// can fold its state.
    #[must_use]
    pub fn aggregate<A: Aggregate>(mut self, codec: EventCodec<A::Event>) -> Self {
        self.aggregates.retain(|a| a.name() != A::NAME);
        self.aggregates.push(Box::new(Codec::<A>(codec)));
        self
    }

    /// Registers a projection's worker (any projection; it is not started):
    /// `dead-letters replay` and `projections rebuild` then run through it.
    #[must_use]
    pub fn projection<P: Projection>(mut self, worker: ProjectionWorker<P>) -> Self {
        self.projections.retain(|p| p.name() != P::NAME);
        self.projections.push(Box::new(worker));
        self
    }

    fn aggregate_names(&self) -> Vec<&'static str> {
        self.aggregates.iter().map(|a| a.name()).collect()
    }

    fn projection_names(&self) -> Vec<&'static str> {
        self.projections.iter().map(|p| p.name()).collect()
    }

    /// Parses `args` (the program name first), runs the command and writes its
    /// output to `out`, as [`crate::run`] does. No progress bar is drawn; a rebuild
    /// without `--yes` asks on the terminal, or is refused when stdin is not one.
    pub async fn run<I, T>(&self, args: I, out: &mut dyn Write) -> Exit
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        crate::dispatch(args, out, Some(self), false).await
    }

    /// [`Admin::run`] on standard output, with a rebuild's progress bar (on
    /// standard error) when standard output is a terminal and `--json` is not given.
    pub async fn run_stdout<I, T>(&self, args: I) -> Exit
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let stdout = std::io::stdout();
        let terminal = stdout.is_terminal();
        let mut out = stdout.lock();
        let exit = crate::dispatch(args, &mut out, Some(self), terminal).await;
        let _ = out.flush();
        exit
    }

    /// The defaults this entry point sets on the command line.
    pub(crate) fn configure(&self, mut command: clap::Command) -> clap::Command {
        if let Some(name) = self.program {
            command = command.name(name).bin_name(name).about(
                "Operations on a Tributary deployment, with the application's codecs (decoded events, --state) and projections (dead-letters replay, projections rebuild)",
            );
        }
        if let Some(schema) = self.default_schema {
            command = command.mut_arg("schema", |arg| arg.default_value(schema));
        }
        if let Some(url) = self.default_database_url {
            command = command.mut_arg("database_url", |arg| arg.default_value(url));
        }
        if let Some(prefix) = self.default_prefix {
            let optional = |arg: clap::Arg| arg.default_value(prefix).required(false);
            let sub = |c: clap::Command| c.mut_arg("prefix", optional);
            command = command
                .mut_subcommand("events", sub)
                .mut_subcommand("doctor", sub)
                .mut_subcommand("topics", |t| {
                    t.mut_subcommand("validate", sub)
                        .mut_subcommand("create", sub)
                });
        }
        command
    }

    /// `events` of a registered aggregate (`None` when it is not registered).
    pub(crate) async fn events(
        &self,
        context: &Context,
        request: EventsRequest<'_>,
    ) -> Option<Result<Report, CliError>> {
        let Some(codec) = self
            .aggregates
            .iter()
            .find(|a| a.name() == request.aggregate)
        else {
            if request.state {
                return Some(Err(CliError::NotFound(format!(
                    "aggregate `{}` is not registered in this entry point, so its state cannot be folded; registered aggregates: {}",
                    request.aggregate,
                    list(&self.aggregate_names())
                ))));
            }
            return None;
        };
        Some(
            async {
                let (topic, scan) = events::scan_events(
                    context,
                    request.prefix,
                    request.aggregate,
                    request.id,
                    request.from_offset,
                )
                .await?;
                let decoded = codec.decode(&scan.events, request.at_version);
                Ok(Report::ok(
                    events_text(&topic, &request, &scan, &decoded),
                    events_json(&topic, &request, &scan, &decoded),
                ))
            }
            .await,
        )
    }

    fn find(&self, name: &str) -> Result<&dyn RegisteredProjection, CliError> {
        self.projections
            .iter()
            .find(|p| p.name() == name)
            .map(|p| &**p)
            .ok_or_else(|| {
                CliError::NotFound(format!(
                    "projection `{name}` is not registered in this entry point; registered projections: {}",
                    list(&self.projection_names())
                ))
            })
    }

    /// `dead-letters replay`.
    pub(crate) async fn replay(
        &self,
        context: &Context,
        id: Option<i64>,
        projection: Option<&str>,
        all: bool,
    ) -> Result<Report, CliError> {
        match (id, all) {
            (Some(id), false) => {
                let store = context.migrated_store().await?;
                let letter = catalog::dead_letter(&store, id).await?.ok_or_else(|| {
                    CliError::NotFound(format!(
                        "no dead letter has id {id}; `dead-letters list --all` shows the ids"
                    ))
                })?;
                if let Some(name) = projection
                    && name != letter.projection
                {
                    return Err(CliError::NotFound(format!(
                        "dead letter {id} belongs to projection `{}`, not `{name}`",
                        letter.projection
                    )));
                }
                let worker = self.find(&letter.projection)?;
                worker.replay(id).await?;
                let summary = ReplaySummary {
                    replayed: vec![id],
                    failed: Vec::new(),
                };
                Ok(replay_report(worker.name(), &summary))
            }
            (None, true) => {
                let name = projection.ok_or_else(|| {
                    CliError::Usage("dead-letters replay --all needs --projection NAME".to_owned())
                })?;
                let worker = self.find(name)?;
                let summary = worker.replay_all().await?;
                Ok(replay_report(worker.name(), &summary))
            }
            _ => Err(CliError::Usage(
                "dead-letters replay needs a dead letter id, or --all --projection NAME".to_owned(),
            )),
        }
    }

    /// `projections rebuild`.
    pub(crate) async fn rebuild(
        &self,
        name: &str,
        yes: bool,
        json: bool,
        terminal: bool,
    ) -> Result<Report, CliError> {
        let worker = self.find(name)?;
        if !yes {
            confirm(name).await?;
        }
        let bar = (terminal && !json).then(|| progress_bar(name));
        let mut status = worker.watch_status();
        let rebuild = worker.rebuild();
        tokio::pin!(rebuild);
        let result = loop {
            tokio::select! {
                result = &mut rebuild => break result,
                changed = status.changed(), if bar.is_some() => {
                    if changed.is_err() {
                        break (&mut rebuild).await;
                    }
                    let progress = status.borrow_and_update().rebuild.clone();
                    if let (Some(bar), Some(progress)) = (&bar, progress) {
                        show_progress(bar, &progress);
                    }
                }
            }
        };
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let report = result?;
        Ok(rebuild_report(name, &report))
    }
}

/// What `events` was asked.
#[derive(Debug)]
pub(crate) struct EventsRequest<'a> {
    pub(crate) prefix: &'a str,
    pub(crate) aggregate: &'a str,
    pub(crate) id: &'a str,
    pub(crate) from_offset: Option<i64>,
    pub(crate) at_version: Option<u64>,
    pub(crate) state: bool,
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "(none)".to_owned()
    } else {
        names.join(", ")
    }
}

fn or_dash(value: Option<&str>) -> &str {
    value.unwrap_or("-")
}

fn events_text(topic: &str, request: &EventsRequest<'_>, scan: &Scan, decoded: &Decoded) -> String {
    let mut text = format!(
        "{topic} partition {} offsets {}..{}: {} record(s) of `{}`{}, decoded\n",
        scan.partition,
        scan.start,
        scan.end,
        decoded.rows.len(),
        request.id,
        request
            .at_version
            .map_or_else(String::new, |at| format!(" up to version {at}")),
    );
    for row in &decoded.rows {
        match row {
            Row::Event(e) => {
                text.push_str(&format!(
                    "v{}  {}{}  {}  @{}\n  id {}  source {}  correlation {}  causation {}\n  {}\n",
                    e.sequence,
                    e.ce_type,
                    e.upcast_from
                        .as_deref()
                        .map_or_else(String::new, |from| format!(" (upcast from {from})")),
                    e.time,
                    e.offset,
                    e.id,
                    or_dash(e.source.as_deref()),
                    or_dash(e.correlation_id.as_deref()),
                    or_dash(e.causation_id.as_deref()),
                    e.payload
                ));
            }
            Row::Undecodable {
                offset,
                ce_type,
                sequence,
                error,
                payload,
            } => {
                text.push_str(&format!(
                    "v{}  {}  UNDECODABLE  @{offset}: {error}\n  {payload}\n",
                    sequence.map_or_else(|| "?".to_owned(), |s| s.to_string()),
                    or_dash(ce_type.as_deref()),
                ));
            }
        }
    }
    if request.state {
        match &decoded.state {
            Some(Ok(state)) => {
                let state =
                    serde_json::to_string_pretty(state).unwrap_or_else(|_| state.to_string());
                text.push_str(&format!("state at version {}:\n{state}\n", decoded.version));
            }
            Some(Err(error)) => {
                text.push_str(&format!("state: does not serialize: {error}\n"));
            }
            None => {}
        }
        let undecodable = decoded
            .rows
            .iter()
            .filter(|r| matches!(r, Row::Undecodable { .. }))
            .count();
        if undecodable > 0 {
            text.push_str(&format!(
                "warning: {undecodable} undecodable record(s) are not in the state\n"
            ));
        }
    }
    text
}

fn row_json(row: &Row) -> serde_json::Value {
    match row {
        Row::Event(e) => json!({
            "offset": e.offset,
            "decoded": true,
            "id": e.id,
            "type": e.ce_type,
            "upcast_from": e.upcast_from,
            "source": e.source,
            "time": e.time,
            "sequence": e.sequence,
            "correlation_id": e.correlation_id,
            "causation_id": e.causation_id,
            "traceparent": e.traceparent,
            "payload": e.payload,
        }),
        Row::Undecodable {
            offset,
            ce_type,
            sequence,
            error,
            payload,
        } => json!({
            "offset": offset,
            "decoded": false,
            "type": ce_type,
            "sequence": sequence,
            "error": error,
            "payload": payload,
        }),
    }
}

fn events_json(
    topic: &str,
    request: &EventsRequest<'_>,
    scan: &Scan,
    decoded: &Decoded,
) -> serde_json::Value {
    let mut json = json!({
        "topic": topic,
        "partition": scan.partition,
        "aggregate": request.aggregate,
        "aggregate_id": request.id,
        "scanned": {"from": scan.start, "to": scan.end},
        "events": decoded.rows.iter().map(row_json).collect::<Vec<_>>(),
        "version": decoded.version,
    });
    if request.state
        && let Some(state) = &decoded.state
    {
        json["state"] = match state {
            Ok(state) => state.clone(),
            Err(error) => json!({"error": error}),
        };
    }
    json
}

fn replay_report(projection: &str, summary: &ReplaySummary) -> Report {
    let mut text = String::new();
    for id in &summary.replayed {
        text.push_str(&format!(
            "replayed dead letter {id} of projection `{projection}`\n"
        ));
    }
    for (id, error) in &summary.failed {
        text.push_str(&format!(
            "dead letter {id} of projection `{projection}` failed again (still parked): {error}\n"
        ));
    }
    if summary.replayed.is_empty() && summary.failed.is_empty() {
        text.push_str(&format!(
            "projection `{projection}` has no open dead letters\n"
        ));
    }
    let failed: Vec<serde_json::Value> = summary
        .failed
        .iter()
        .map(|(id, error)| json!({"id": id, "error": error}))
        .collect();
    let exit = if summary.failed.is_empty() {
        Exit::Ok
    } else {
        Exit::Failed
    };
    Report::new(
        text,
        json!({"projection": projection, "replayed": summary.replayed, "failed": failed}),
        exit,
    )
}

fn rebuild_report(projection: &str, report: &RebuildReport) -> Report {
    Report::ok(
        format!(
            "rebuilt projection `{projection}`: {} events ({} offsets) in {:.2} s, {:.0} events/s\n",
            report.events,
            report.offsets,
            report.elapsed.as_secs_f64(),
            report.events_per_sec
        ),
        json!({
            "projection": projection,
            "events": report.events,
            "offsets": report.offsets,
            "elapsed_ms": u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
            "events_per_sec": report.events_per_sec,
        }),
    )
}

/// Asks on the terminal; refuses (exit 2) when stdin is not one.
async fn confirm(name: &str) -> Result<(), CliError> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Usage(format!(
            "rebuilding `{name}` empties its read model first; stdin is not a terminal to confirm on, so pass --yes"
        )));
    }
    let prompt = format!(
        "Rebuild projection `{name}`? Its read model is emptied, then every event replayed. [y/N] "
    );
    let answer = tokio::task::spawn_blocking(move || {
        let mut stderr = std::io::stderr();
        let _ = stderr.write_all(prompt.as_bytes());
        let _ = stderr.flush();
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await
    .map_err(|error| CliError::Thread(error.to_string()))?
    .unwrap_or_default();
    if confirmed(&answer) {
        Ok(())
    } else {
        Err(CliError::NotFound(format!(
            "rebuild of `{name}` not confirmed; nothing was changed"
        )))
    }
}

fn confirmed(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

fn progress_bar(name: &str) -> indicatif::ProgressBar {
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    let style =
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} offsets  {msg}")
            .map(|style| style.progress_chars("=> "))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(format!("rebuilding {name}"));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn show_progress(bar: &indicatif::ProgressBar, progress: &RebuildProgress) {
    bar.set_length(progress.total);
    bar.set_position(progress.done.min(progress.total));
    bar.set_message(progress_message(progress));
}

/// `{events} events, {rate} offsets/s, ETA {eta}`, then each partition's
/// `partition:position/end` (with its topic when there are several).
fn progress_message(progress: &RebuildProgress) -> String {
    let mut message = format!(
        "{} events, {:.0} offsets/s, ETA {}",
        progress.events,
        progress.rate_per_sec,
        progress
            .eta
            .map_or_else(|| "-".to_owned(), |eta| format!("{}s", eta.as_secs()))
    );
    let several_topics = progress
        .partitions
        .windows(2)
        .any(|w| w[0].topic != w[1].topic);
    for p in &progress.partitions {
        if several_topics {
            message.push_str(&format!(
                "  {}[{}] {}/{}",
                p.topic, p.partition, p.position, p.high
            ));
        } else {
            message.push_str(&format!("  p{} {}/{}", p.partition, p.position, p.high));
        }
    }
    message
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};
    use tributary::projection::PartitionProgress;

    use crate::args::{Cli, Command};

    fn parse(admin: &Admin, args: &[&str]) -> Result<Cli, clap::Error> {
        let mut command = admin.configure(Cli::command());
        command
            .try_get_matches_from_mut(args)
            .and_then(|matches| Cli::from_arg_matches(&matches))
    }

    #[test]
    fn the_entry_point_defaults_prefix_and_schema() {
        let admin = Admin::new()
            .program_name("shop admin")
            .default_prefix("shop")
            .default_schema("shop_schema");
        admin.configure(Cli::command()).debug_assert();
        let cli = parse(&admin, &["x", "events", "order", "o1"]).unwrap();
        assert!(matches!(cli.command, Command::Events { prefix, .. } if prefix == "shop"));
        let cli = parse(&admin, &["x", "events", "--prefix", "p", "order", "o1"]).unwrap();
        assert!(matches!(cli.command, Command::Events { prefix, .. } if prefix == "p"));
        let cli = parse(&admin, &["x", "topics", "validate", "--aggregate", "order"]).unwrap();
        assert!(matches!(cli.command, Command::Topics(_)));
        // Without the default, --prefix stays required.
        assert!(parse(&Admin::new(), &["x", "events", "order", "o1"]).is_err());
        let usage = parse(&admin, &["x", "--help"]).unwrap_err().to_string();
        assert!(usage.contains("shop admin"), "{usage}");
    }

    #[test]
    fn replay_takes_an_id_or_all_with_a_projection() {
        let admin = Admin::new();
        assert!(parse(&admin, &["x", "dead-letters", "replay", "7"]).is_ok());
        assert!(
            parse(
                &admin,
                &["x", "dead-letters", "replay", "--all", "--projection", "p"]
            )
            .is_ok()
        );
        assert!(parse(&admin, &["x", "dead-letters", "replay", "--all"]).is_err());
        assert!(parse(&admin, &["x", "dead-letters", "replay"]).is_err());
        assert!(parse(&admin, &["x", "dead-letters", "replay", "7", "--all"]).is_err());
    }

    #[test]
    fn only_yes_confirms() {
        assert!(confirmed("y\n"));
        assert!(confirmed(" YES "));
        assert!(!confirmed(""));
        assert!(!confirmed("n\n"));
        assert!(!confirmed("yess"));
    }

    #[test]
    fn progress_reads_as_events_rate_and_eta() {
        let progress = RebuildProgress {
            done: 50,
            total: 100,
            events: 48,
            rate_per_sec: 25.4,
            eta: Some(Duration::from_secs(2)),
            elapsed: Duration::from_secs(2),
            partitions: vec![
                PartitionProgress {
                    topic: "shop.order.events".into(),
                    partition: 0,
                    position: 30,
                    high: 60,
                },
                PartitionProgress {
                    topic: "shop.order.events".into(),
                    partition: 1,
                    position: 20,
                    high: 40,
                },
            ],
        };
        assert_eq!(
            progress_message(&progress),
            "48 events, 25 offsets/s, ETA 2s  p0 30/60  p1 20/40"
        );
        let mut two_topics = progress.clone();
        two_topics.partitions[1].topic = "shop.inventory.events".into();
        assert!(
            progress_message(&two_topics)
                .ends_with("shop.order.events[0] 30/60  shop.inventory.events[1] 20/40")
        );
    }

    #[test]
    fn replay_reports_fail_when_a_letter_fails_again() {
        let summary = ReplaySummary {
            replayed: vec![3],
            failed: vec![(4, "boom".to_owned())],
        };
        let report = replay_report("totals", &summary);
        assert_eq!(report.exit, Exit::Failed);
        assert_eq!(
            report.text,
            "replayed dead letter 3 of projection `totals`\n\
             dead letter 4 of projection `totals` failed again (still parked): boom\n"
        );
        assert_eq!(report.json["failed"][0]["id"], 4);
        let report = replay_report("totals", &ReplaySummary::default());
        assert_eq!(report.exit, Exit::Ok);
        assert_eq!(
            report.text,
            "projection `totals` has no open dead letters\n"
        );
    }

    #[test]
    fn rebuild_reports_events_and_duration() {
        let report = rebuild_report(
            "totals",
            &RebuildReport {
                events: 10,
                offsets: 12,
                elapsed: Duration::from_millis(1500),
                events_per_sec: 6.7,
            },
        );
        assert_eq!(
            report.text,
            "rebuilt projection `totals`: 10 events (12 offsets) in 1.50 s, 7 events/s\n"
        );
        assert_eq!(report.json["events"], 10);
        assert_eq!(report.json["elapsed_ms"], 1500);
    }

    #[test]
    fn decoded_events_show_their_attributes_and_the_state() {
        let request = EventsRequest {
            prefix: "p",
            aggregate: "order",
            id: "o1",
            from_offset: None,
            at_version: Some(1),
            state: true,
        };
        let scan = Scan {
            partition: 1,
            start: 0,
            end: 5,
            events: Vec::new(),
        };
        let decoded = Decoded {
            rows: vec![
                Row::Event(Box::new(DecodedEvent {
                    offset: 2,
                    id: "e1".to_owned(),
                    ce_type: "order.placed.v2".to_owned(),
                    upcast_from: Some("order.placed.v1".to_owned()),
                    source: Some("/p/order".to_owned()),
                    time: "2026-01-01T00:00:00Z".to_owned(),
                    sequence: 1,
                    correlation_id: Some("c1".to_owned()),
                    causation_id: None,
                    traceparent: None,
                    payload: json!({"x": 1}),
                })),
                Row::Undecodable {
                    offset: 3,
                    ce_type: Some("order.placed.v9".to_owned()),
                    sequence: None,
                    error: "unknown version".to_owned(),
                    payload: json!("oops"),
                },
            ],
            version: 1,
            state: Some(Ok(json!({"status": "placed"}))),
        };
        assert_eq!(
            events_text("p.order.events", &request, &scan, &decoded),
            "p.order.events partition 1 offsets 0..5: 2 record(s) of `o1` up to version 1, decoded\n\
             v1  order.placed.v2 (upcast from order.placed.v1)  2026-01-01T00:00:00Z  @2\n  \
             id e1  source /p/order  correlation c1  causation -\n  {\"x\":1}\n\
             v?  order.placed.v9  UNDECODABLE  @3: unknown version\n  \"oops\"\n\
             state at version 1:\n{\n  \"status\": \"placed\"\n}\n\
             warning: 1 undecodable record(s) are not in the state\n"
        );
        let json = events_json("p.order.events", &request, &scan, &decoded);
        assert_eq!(json["events"][0]["sequence"], 1);
        assert_eq!(json["events"][1]["decoded"], false);
        assert_eq!(json["state"]["status"], "placed");
        assert_eq!(json["version"], 1);
    }
}

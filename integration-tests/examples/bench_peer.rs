//! Side-by-side benchmark: the same `Increment { by: 1 }` commands on Tributary
//! (`CommandGateway` and one processor on Kafka, 4 partitions) and on cqrs-es 0.5.0
//! with postgres-es 0.5.0 (the same counter aggregate, snapshots every 10 events like
//! `Counter`), in one run on the same machine and the same Postgres.
//!
//! ```text
//! cargo run --release -p tributary-integration-tests --example bench_peer -- \
//!     [--commands N] [--scenarios closed,hot,sweep] [--rates 100,200,500,1000,2000,3000,4000,6000,8000,10000,12000,16000] \
//!     [--step-secs S] [--plot PATH]
//! ```
//!
//! Scenarios: `closed` (closed loop at 1, 10, 100 and 1,000 callers, random aggregates
//! of 1,000; N/10 commands at 1 caller), `hot` (N commands on one aggregate at 50
//! callers) and `sweep` (open loop: commands on a fixed schedule at each offered rate
//! for S seconds, latency from the scheduled send time; a system's sweep stops after
//! the first step where it achieves less than 0.8 × the offered rate).
//!
//! Options: `--commands N` (default 5000), `--hot-commands N` (default N),
//! `--step-secs S` (default 10), `--timeout-secs T` (per command, default 10),
//! `--max-in-flight M` (open loop, default 5000: more are dropped and counted),
//! `--pool P` (cqrs-es connections, default 10 as postgres-es's `default_postgress_pool`),
//! `--cqrs-snapshot K` (cqrs-es snapshot size, default 10; 0 = pure event sourcing),
//! `--seed S`, `--plot PATH` (default `docs/benchmarks/peer-sweep.svg`), `--warm-up W`
//! (default 5000: an unmeasured closed loop of W commands at 100 callers per system
//! first, so that the broker's JVM is warm; 0 = none), `--warm-up-secs S` (default 90:
//! then Tributary's warm-up commands go on, round after round, until S seconds have
//! passed, for the broker's JIT compiler to finish its work; 0 = not; nothing when
//! `--warm-up` is 0),
//! `--max-transactions-at-once N`
//! (Tributary's `ProcessorSettings::max_transactions_at_once`, default 2 as
//! docs/commands.md recommends for a broker this small; 0 = no limit, the processor's
//! default), `--hot-gather-ms G` (Tributary's `ProcessorSettings::gather_after_commit`
//! in the hot scenario only, default 10: the setting for callers in a closed loop on
//! a hot aggregate; the other scenarios keep the default 0; 0 = off), `--kafka-replies` (Tributary's gateway takes its replies from the
//! replies topic, `CommandGateway::without_in_process_replies`, as a gateway in another
//! process would; by default the processor, in the same process, hands them over in
//! memory), `--stall-probe` (print to stderr each moment the benchmark's own Tokio
//! runtime, or an OS thread of its own, was over 40 ms late to a 5 ms timer:
//! `bench_load::start_stall_probes`).
//! Environment: `TRIBUTARY_KAFKA_LINGER_MS` sets `linger.ms` of every producer,
//! `TRIBUTARY_GATEWAY_LINGER_MS` of the gateway's alone.
//! Needs the services (`eval "$(scripts/services.sh up)"`); DATABASE_URL and
//! KAFKA_BOOTSTRAP_SERVERS as for the tests. cqrs-es's tables live in a schema of
//! their own, dropped at the end.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cqrs_es::AggregateError;
use cqrs_es::event_sink::EventSink;
use plotters::prelude::*;
use postgres_es::PostgresCqrs;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tributary::command::{ProcessorCounters, ProcessorHandle, ProcessorSettings};
use tributary_integration_tests::bench_load::{
    CounterGateway, Kind, Sender, Sent, Step, Tally, arg, arg_list, arg_millis, arg_str,
    best_within, closed_loop, counter_gateway, machine, ms, ms_or_inf, open_loop, plan,
    process_cpu, start_stall_probes,
};
use tributary_integration_tests::command_support::{
    CounterError, counter_processor, test_settings,
};
use tributary_integration_tests::{
    HOW_TO_START, database_url, describe_broker, kafka_bootstrap, unique_prefix,
};

const AGGREGATES: usize = 1000;
const PARTITIONS: i32 = 4;
const CALLERS: [usize; 4] = [1, 10, 100, 1000];
const HOT_CALLERS: usize = 50;
const WARM_UP: usize = 50;
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_RATES: [usize; 12] = [
    100, 200, 500, 1000, 2000, 3000, 4000, 6000, 8000, 10000, 12000, 16000,
];
const SATURATED: f64 = 0.8;
const P99_BOUND_MS: f64 = 100.0;
const VERSIONS: &str = "cqrs-es 0.5.0, postgres-es 0.5.0 (sqlx 0.8, shared with the workspace)";

// ---- the counter on cqrs-es: the same command, event and validation as `Counter` ----

#[derive(Debug, Default, Serialize, Deserialize)]
struct PeerCounter {
    value: u64,
}

/// `Increment` without the id (cqrs-es passes the aggregate id beside the command).
#[derive(Debug)]
struct PeerIncrement {
    by: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum PeerEvent {
    Incremented { by: u32 },
}

impl cqrs_es::DomainEvent for PeerEvent {
    fn event_type(&self) -> String {
        "Incremented".into()
    }
    fn event_version(&self) -> String {
        "1.0".into()
    }
}

impl cqrs_es::Aggregate for PeerCounter {
    const TYPE: &'static str = "counter";
    type Command = PeerIncrement;
    type Event = PeerEvent;
    type Error = CounterError;
    type Services = ();

    async fn handle(
        &mut self,
        command: PeerIncrement,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), CounterError> {
        if command.by == 0 {
            return Err(CounterError::Zero);
        }
        sink.write(PeerEvent::Incremented { by: command.by }, self)
            .await;
        Ok(())
    }

    fn apply(&mut self, event: PeerEvent) {
        match event {
            PeerEvent::Incremented { by } => self.value += u64::from(by),
        }
    }
}

/// postgres-es's documented tables (its `db/init.sql`), in a schema of their own.
fn cqrs_schema_sql(schema: &str) -> String {
    format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.events (
             aggregate_type text NOT NULL, aggregate_id text NOT NULL,
             sequence bigint CHECK (sequence >= 0) NOT NULL,
             event_type text NOT NULL, event_version text NOT NULL,
             payload json NOT NULL, metadata json NOT NULL,
             PRIMARY KEY (aggregate_type, aggregate_id, sequence));
         CREATE TABLE {schema}.snapshots (
             aggregate_type text NOT NULL, aggregate_id text NOT NULL,
             last_sequence bigint CHECK (last_sequence >= 0) NOT NULL,
             current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
             payload json NOT NULL,
             PRIMARY KEY (aggregate_type, aggregate_id, last_sequence));"
    )
}

/// Commands cqrs-es accepted (warm-ups included), to compare with its events table.
static CQRS_ACCEPTED: AtomicU64 = AtomicU64::new(0);

// ---- one command on either system ----

#[derive(Clone, Copy, PartialEq, Eq)]
enum System {
    Tributary,
    CqrsEs,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Tributary => "Tributary",
            System::CqrsEs => "cqrs-es",
        }
    }
}

#[derive(Clone)]
enum Target {
    Tributary(CounterGateway),
    CqrsEs(Arc<PostgresCqrs<PeerCounter>>),
}

impl Sender for Target {
    /// Sends one `Increment { by: 1 }` to `id` and waits at most `timeout` for its
    /// outcome; cqrs-es's optimistic-concurrency conflicts are retried at once
    /// (within the same `timeout`) and counted.
    async fn send(&self, id: String, timeout: Duration) -> Sent {
        let deadline = tokio::time::Instant::now() + timeout;
        match self {
            Target::Tributary(gateway) => gateway.send(id, timeout).await,
            Target::CqrsEs(cqrs) => {
                let mut retries = 0;
                let kind = loop {
                    let executed = cqrs.execute(&id, PeerIncrement { by: 1 });
                    match tokio::time::timeout_at(deadline, executed).await {
                        Err(_) => break Kind::Timeout,
                        Ok(Ok(())) => {
                            CQRS_ACCEPTED.fetch_add(1, Ordering::Relaxed);
                            break Kind::Accepted;
                        }
                        Ok(Err(AggregateError::AggregateConflict)) => retries += 1,
                        Ok(Err(e)) => break Kind::Error(e.to_string()),
                    }
                };
                Sent { kind, retries }
            }
        }
    }
}

// ---- the systems under test ----

struct Settings {
    bootstrap: String,
    timeout: Duration,
    seed: u64,
    max_in_flight: usize,
    commands: usize,
    hot_commands: usize,
    step_secs: usize,
    rates: Vec<usize>,
    scenarios: String,
    plot: String,
    /// Commands of the unmeasured warm-up round per system (0: none).
    warm_up: usize,
    /// How long Tributary's warm-up commands keep the broker busy after that round.
    warm_up_secs: Duration,
    /// Tributary's `max_transactions_at_once` (`usize::MAX`: no limit).
    max_transactions: usize,
    /// Replies through the replies topic instead of in memory.
    kafka_replies: bool,
    /// Tributary's `gather_after_commit` in the hot scenario.
    hot_gather: Duration,
}

/// A fresh Tributary (new topics under a unique prefix, one processor, a gateway),
/// warmed up: the group's first assignment and every partition's restore.
async fn tributary_up(s: &Settings, tag: &str) -> (ProcessorHandle, Target) {
    let prefix = unique_prefix("bench-peer");
    let mut settings = ProcessorSettings {
        max_transactions_at_once: s.max_transactions,
        ..test_settings()
    };
    if tag == "hot" {
        // Closed-loop callers on one aggregate: the setting made for them.
        settings.gather_after_commit = s.hot_gather;
    }
    let processor = counter_processor(&s.bootstrap, &prefix, PARTITIONS)
        .settings(settings)
        .start()
        .await
        .expect("processor");
    let mut gateway = counter_gateway(&s.bootstrap, &prefix).await;
    if s.kafka_replies {
        gateway.0 = gateway.0.without_in_process_replies();
    }
    let target = Target::Tributary(gateway);
    warm_up(&target, tag).await;
    (processor, target)
}

/// `system`, ready: a fresh Tributary (and its processor, to shut down), or the
/// cqrs-es framework of the whole run; both warmed up on `{tag}-agg-0..50`.
async fn up(
    system: System,
    s: &Settings,
    cqrs: &Target,
    tag: &str,
) -> (Option<ProcessorHandle>, Target) {
    match system {
        System::Tributary => {
            let (processor, target) = tributary_up(s, tag).await;
            (Some(processor), target)
        }
        System::CqrsEs => {
            warm_up(cqrs, tag).await;
            (None, cqrs.clone())
        }
    }
}

async fn warm_up(target: &Target, tag: &str) {
    let ids: Vec<String> = (0..WARM_UP).map(|i| format!("{tag}-agg-{i}")).collect();
    let (tally, _) = closed_loop(target, Arc::new(ids), 10, WARM_UP_TIMEOUT).await;
    if tally.failed() > 0 {
        println!(
            "warning: warm-up ({tag}): {} of {WARM_UP} failed: {:?}",
            tally.failed(),
            tally.first_error
        );
    }
}

/// Keeps the broker busy with Tributary's warm-up commands, round after round, for
/// `--warm-up-secs`. The broker's JVM compiles its hot paths for a minute or more
/// under this load: on this machine its C2 compiler thread took 28–45 % of a core
/// for the first 30 s of a hot run and next to nothing after 90 s
/// (docs/benchmarks.md, "The broker's JIT"), on two cores it shares with the
/// benchmark. Measured before that, Tributary's numbers are partly the compiler's.
/// cqrs-es runs on Postgres, which has no JIT to warm (and is not restarted).
async fn warm_broker(s: &Settings, ids: &Arc<Vec<String>>) {
    if s.warm_up_secs.is_zero() {
        return;
    }
    let started = std::time::Instant::now();
    let (processor, target) = tributary_up(s, "warm-broker").await;
    let mut tally = Tally::default();
    while started.elapsed() < s.warm_up_secs {
        let (round, _) = closed_loop(&target, Arc::clone(ids), 100, s.timeout).await;
        tally.merge(round);
    }
    if let Err(e) = processor.shutdown().await {
        println!("warning: processor shutdown: {e}");
    }
    println!(
        "broker warm-up (Tributary): {} commands at 100 callers in {:.0} s, {} failed (not measured)",
        tally.ok.len(),
        started.elapsed().as_secs_f64(),
        tally.failed()
    );
}

/// One closed-loop measurement of one system.
struct Run {
    system: System,
    tally: Tally,
    elapsed: Duration,
    /// Tributary: commands per processor transaction.
    per_txn: Option<f64>,
    /// CPU time of this process (callers and the system's client side: for
    /// Tributary the gateway and the processor, for cqrs-es the framework and its
    /// Postgres driver) during the run; the broker's and Postgres's are not in it.
    cpu: Option<Duration>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.tally.ok.len() as f64 / self.elapsed.as_secs_f64()
    }
}

async fn measure(
    system: System,
    s: &Settings,
    cqrs: &Target,
    tag: &str,
    ids: &Arc<Vec<String>>,
    callers: usize,
) -> Run {
    let (processor, target) = up(system, s, cqrs, tag).await;
    let before = processor.as_ref().map(|p| p.stats().counters());
    let cpu_before = process_cpu();
    let (tally, elapsed) = closed_loop(&target, Arc::clone(ids), callers, s.timeout).await;
    let cpu = process_cpu()
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    let mut per_txn = None;
    if let (Some(processor), Some(before)) = (processor, before) {
        let after = processor.stats().counters();
        per_txn = Some(per_transaction(&before, &after));
        if let Err(e) = processor.shutdown().await {
            println!("warning: processor shutdown: {e}");
        }
    }
    Run {
        system,
        tally,
        elapsed,
        per_txn,
        cpu,
    }
}

/// Commands per processor transaction between two readings of its counters.
fn per_transaction(before: &ProcessorCounters, after: &ProcessorCounters) -> f64 {
    (after.commands - before.commands) as f64
        / (after.transactions - before.transactions).max(1) as f64
}

fn closed_header() {
    println!(
        "| scenario | callers | system | commands | cmd/s | p50 ms | p99 ms | max ms | retries | timeouts | errors | cmds/txn | process CPU µs/cmd | Tributary / cqrs-es |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
}

fn closed_rows(scenario: &str, callers: usize, runs: &[Run]) {
    let ratio = match runs {
        [t, c] if c.rate() > 0.0 => format!("{:.2}×", t.rate() / c.rate()),
        _ => "–".into(),
    };
    for (i, r) in runs.iter().enumerate() {
        println!(
            "| {scenario} | {callers} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.system.name(),
            r.tally.issued(),
            r.rate(),
            ms(r.tally.latency(0.5)),
            ms(r.tally.latency(0.99)),
            ms(r.tally.ok.last().copied()),
            r.tally.retries,
            r.tally.timeouts,
            r.tally.errors,
            r.per_txn.map_or("–".into(), |x| format!("{x:.1}")),
            r.cpu.map_or("–".into(), |cpu| format!(
                "{:.0}",
                cpu.as_secs_f64() * 1e6 / r.tally.issued().max(1) as f64
            )),
            if i == 0 { ratio.as_str() } else { "" },
        );
    }
}

async fn sweep(system: System, s: &Settings, cqrs: &Target) -> Vec<Step> {
    let (processor, target) = up(system, s, cqrs, "sweep").await;
    let mut steps = Vec::new();
    for &rate in &s.rates {
        let ids = plan(
            "sweep",
            s.seed ^ rate as u64,
            rate * s.step_secs,
            AGGREGATES,
        );
        let before = processor.as_ref().map(|p| p.stats().counters());
        let step = open_loop(&target, ids, rate, s.max_in_flight, s.timeout).await;
        let per_txn = processor
            .as_ref()
            .zip(before)
            .map_or(String::new(), |(p, before)| {
                format!(
                    ", {:.1} commands per transaction",
                    per_transaction(&before, &p.stats().counters())
                )
            });
        println!(
            "  {} at {rate}/s: achieved {:.0}/s, p99 {} ms, failed {}{per_txn}{} (first due at {:.3} s since the epoch)",
            system.name(),
            step.achieved,
            ms(step.tally.latency(0.99)),
            step.tally.failed(),
            step.tally
                .first_error
                .as_ref()
                .map_or(String::new(), |e| format!(" (first error: {e})")),
            step.started
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64()
        );
        if step.p99_ms().is_none_or(|p| p > P99_BOUND_MS) {
            println!(
                "    slow: {}",
                step.slow_runs(
                    Duration::from_secs_f64(P99_BOUND_MS / 1000.0),
                    Duration::from_millis(50),
                    5
                )
            );
        }
        let saturated = step.achieved < SATURATED * rate as f64;
        steps.push(step);
        if saturated {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if let Some(processor) = processor
        && let Err(e) = processor.shutdown().await
    {
        println!("warning: processor shutdown: {e}");
    }
    steps
}

fn sweep_table(sweeps: &[(System, Vec<Step>)]) {
    println!(
        "| system | offered cmd/s | achieved cmd/s | p50 ms | p99 ms | accepted | timeouts | errors | dropped | retries |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (system, steps) in sweeps {
        for st in steps {
            let t = &st.tally;
            println!(
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
                system.name(),
                st.offered,
                st.achieved,
                ms(t.latency(0.5)),
                ms(t.latency(0.99)),
                t.ok.len(),
                t.timeouts,
                t.errors,
                t.dropped,
                t.retries
            );
        }
    }
}

/// Two panels over the offered rate (log): achieved throughput, and p99 latency
/// (a failed p99 is drawn at the timeout). One line per system.
fn plot(
    path: &str,
    sweeps: &[(System, Vec<Step>)],
    timeout: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    let steps = || sweeps.iter().flat_map(|(_, s)| s.iter());
    let max_x = steps().map(|s| s.offered).max().unwrap_or(1) as f64 * 1.25;
    let min_x = steps().map(|s| s.offered).min().unwrap_or(1) as f64 * 0.8;
    let timeout_ms = timeout.as_secs_f64() * 1000.0;
    let p99 = |s: &Step| s.p99_ms().unwrap_or(timeout_ms).max(0.1);
    let max_y = steps().map(|s| s.achieved).fold(max_x, f64::max) * 1.5;
    let min_y = steps().map(|s| s.achieved.max(1.0)).fold(min_x, f64::min) * 0.8;
    let max_ms = steps().map(p99).fold(P99_BOUND_MS, f64::max) * 2.0;
    let min_ms = steps().map(p99).fold(P99_BOUND_MS, f64::min) / 2.0;
    let colors = [(System::Tributary, BLUE), (System::CqrsEs, RED)];
    let mut rates: Vec<f64> = steps().map(|s| s.offered as f64).collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup();

    let root = SVGBackend::new(path, (900, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(450);
    for (area, latency) in [(top, false), (bottom, true)] {
        let (y_desc, y_range) = if latency {
            ("p99 latency ms", min_ms..max_ms)
        } else {
            ("achieved cmd/s", min_y..max_y)
        };
        let y_of = |s: &Step| if latency { p99(s) } else { s.achieved.max(1.0) };
        let mut chart = ChartBuilder::on(&area)
            .caption(
                format!(
                    "open loop: {y_desc} by offered rate{}",
                    if latency {
                        " (failed: at the timeout)"
                    } else {
                        ""
                    }
                ),
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (min_x..max_x).log_scale().with_key_points(rates.clone()),
                y_range.log_scale(),
            )?;
        let label = |v: &f64| {
            if *v < 10.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.0}")
            }
        };
        chart
            .configure_mesh()
            .x_desc("offered cmd/s")
            .y_desc(y_desc)
            .y_labels(8)
            .x_label_formatter(&label)
            .y_label_formatter(&label)
            .light_line_style(TRANSPARENT)
            .draw()?;
        // The reference: achieved = offered, or the p99 bound.
        let reference = if latency {
            vec![(min_x, P99_BOUND_MS), (max_x, P99_BOUND_MS)]
        } else {
            vec![(min_x, min_x), (max_x, max_x)]
        };
        chart.draw_series(LineSeries::new(reference, BLACK.mix(0.3)))?;
        for (system, steps) in sweeps {
            let color = colors
                .iter()
                .find(|(s, _)| s == system)
                .map_or(BLACK, |c| c.1);
            let points: Vec<(f64, f64)> =
                steps.iter().map(|s| (s.offered as f64, y_of(s))).collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)).point_size(3))?
                .label(system.name())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn goal(name: &str, value: Option<f64>, met: impl Fn(f64) -> bool, unit: &str, detail: &str) {
    let verdict = match value {
        Some(v) if met(v) => "met",
        Some(_) => "NOT met",
        None => "not measured",
    };
    let value = value.map_or("–".into(), |v| format!("{v:.2}{unit}"));
    println!("| {name} | {value} | {detail} | {verdict} |");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--stall-probe") {
        start_stall_probes();
    }
    let pool_size = arg("--pool", 10);
    let snapshot = arg("--cqrs-snapshot", 10);
    let commands = arg("--commands", 5_000);
    let s = Settings {
        bootstrap: kafka_bootstrap(),
        timeout: Duration::from_secs(arg("--timeout-secs", 10) as u64),
        seed: arg("--seed", 42) as u64,
        max_in_flight: arg("--max-in-flight", 5_000),
        commands,
        hot_commands: arg("--hot-commands", commands),
        step_secs: arg("--step-secs", 10),
        rates: arg_list("--rates", &DEFAULT_RATES),
        scenarios: arg_str("--scenarios").unwrap_or_else(|| "closed,hot,sweep".into()),
        plot: arg_str("--plot").unwrap_or_else(|| "docs/benchmarks/peer-sweep.svg".into()),
        warm_up: arg("--warm-up", 5_000),
        warm_up_secs: Duration::from_secs(arg("--warm-up-secs", 90) as u64),
        max_transactions: match arg("--max-transactions-at-once", 2) {
            0 => usize::MAX,
            n => n,
        },
        kafka_replies: std::env::args().any(|a| a == "--kafka-replies"),
        hot_gather: Duration::from_secs_f64(arg_millis("--hot-gather-ms").unwrap_or(10.0) / 1000.0),
    };

    // cqrs-es: its tables in a schema of their own, reached through search_path.
    let url = database_url();
    let schema = unique_prefix("bench-peer").replace('-', "_");
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("no usable Postgres at {url} ({e}): {HOW_TO_START}"));
    sqlx::raw_sql(&cqrs_schema_sql(&schema))
        .execute(&admin)
        .await
        .expect("create the cqrs-es tables");
    let options: PgConnectOptions = url.parse().expect("DATABASE_URL");
    let pool: PgPool = PgPoolOptions::new()
        .max_connections(pool_size as u32)
        .acquire_timeout(s.timeout)
        .connect_with(options.options([("search_path", schema.as_str())]))
        .await
        .expect("cqrs-es pool");
    let framework = if snapshot == 0 {
        postgres_es::postgres_cqrs(pool.clone(), vec![], ())
    } else {
        postgres_es::postgres_snapshot_cqrs(pool.clone(), vec![], snapshot, ())
    };
    let cqrs = Target::CqrsEs(Arc::new(framework));
    let pg_version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&admin)
        .await
        .unwrap_or_default();

    println!("# bench_peer");
    println!("machine: {}", machine());
    println!("broker: {}", describe_broker(&s.bootstrap));
    println!("postgres: {pg_version}, cqrs-es schema {schema}");
    println!(
        "settings: {VERSIONS}; cqrs-es: PersistedEventStore {}, pool of {pool_size} connections, conflicts retried at once; \
         Tributary: one processor, {PARTITIONS} partitions, the test settings (session timeout 6 s), at most {} transactions at once, \
         gather_after_commit {:?} on the hot aggregate (0 elsewhere), replies {}; \
         {AGGREGATES} aggregates, {commands} commands per closed-loop run ({} at 1 caller), {} on the hot aggregate, \
         timeout {:?} per command, seed {}",
        if snapshot == 0 {
            "event store (no snapshots)".to_owned()
        } else {
            format!("snapshot every {snapshot} events")
        },
        if s.max_transactions == usize::MAX {
            "unlimited".to_owned()
        } else {
            s.max_transactions.to_string()
        },
        s.hot_gather,
        if s.kafka_replies {
            "through the replies topic"
        } else {
            "in memory (gateway and processor in one process)"
        },
        commands / 10,
        s.hot_commands,
        s.timeout,
        s.seed,
    );
    println!(
        "command: cargo run --release -p tributary-integration-tests --example bench_peer -- {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    println!();

    // The scenarios in a task of their own, so that the schema is dropped even if
    // one of them panics.
    let outcome = tokio::spawn(scenarios(s, cqrs)).await;

    // Sanity: every accepted cqrs-es command wrote one event (a timed-out one may
    // have been committed too), then clean up.
    let events: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.events"))
        .fetch_one(&admin)
        .await
        .unwrap_or(-1);
    println!(
        "\ncqrs-es: {} commands accepted, {events} events stored",
        CQRS_ACCEPTED.load(Ordering::Relaxed)
    );
    pool.close().await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .expect("drop the cqrs-es schema");
    if let Err(e) = outcome
        && e.is_panic()
    {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn scenarios(s: Settings, cqrs: Target) {
    let both = [System::Tributary, System::CqrsEs];
    if s.warm_up > 0 {
        // The broker's JVM compiles its hot paths under load: on a freshly started
        // broker, the first thousands of transactions are slower (one caller's median
        // 15 ms against 9 ms once warm, 2026-12-03). Not measured.
        let ids = Arc::new(plan("warm", s.seed, s.warm_up, AGGREGATES));
        for system in both {
            let run = measure(system, &s, &cqrs, "warm", &ids, 100).await;
            println!(
                "warm-up ({}): {} commands at 100 callers, {:.0} cmd/s, {} failed (not measured)",
                run.system.name(),
                s.warm_up,
                run.rate(),
                run.tally.failed()
            );
        }
        warm_broker(&s, &ids).await;
        println!();
    }
    let mut closed: Vec<(usize, Vec<Run>)> = Vec::new();
    if s.scenarios.contains("closed") {
        println!("## closed loop, random aggregates\n");
        for callers in CALLERS {
            let n = if callers == 1 {
                s.commands / 10
            } else {
                s.commands
            };
            let tag = format!("c{callers}");
            let ids = Arc::new(plan(&tag, s.seed ^ callers as u64, n, AGGREGATES));
            let mut runs = Vec::new();
            for system in both {
                runs.push(measure(system, &s, &cqrs, &tag, &ids, callers).await);
            }
            closed.push((callers, runs));
        }
        closed_header();
        for (callers, runs) in &closed {
            closed_rows("closed", *callers, runs);
        }
        println!();
    }

    let mut hot = Vec::new();
    if s.scenarios.contains("hot") {
        println!("## hot aggregate\n");
        let ids = Arc::new(vec!["hot-agg-0".to_owned(); s.hot_commands]);
        for system in both {
            hot.push(measure(system, &s, &cqrs, "hot", &ids, HOT_CALLERS).await);
        }
        closed_header();
        closed_rows("hot", HOT_CALLERS, &hot);
        println!();
    }

    let mut sweeps = Vec::new();
    if s.scenarios.contains("sweep") {
        println!(
            "## open-loop sweep ({} s per step, at most {} in flight)\n",
            s.step_secs, s.max_in_flight
        );
        for system in both {
            sweeps.push((system, sweep(system, &s, &cqrs).await));
        }
        println!();
        sweep_table(&sweeps);
        match plot(&s.plot, &sweeps, s.timeout) {
            Ok(()) => println!("\nplot: {}", s.plot),
            Err(e) => println!("\nplot {} failed: {e}", s.plot),
        }
        println!();
    }

    for (name, runs) in closed
        .iter()
        .map(|(c, r)| (format!("closed {c}"), r))
        .chain([("hot".to_owned(), &hot)])
    {
        for r in runs {
            if let Some(e) = &r.tally.first_error {
                println!("note: {name}, {}: first error: {e}", r.system.name());
            }
        }
    }

    // Summary and goals.
    println!("## summary\n");
    println!("| goal | value | numbers | verdict |");
    println!("|---|---|---|---|");
    let best = |system: System| {
        sweeps
            .iter()
            .find(|(s, _)| *s == system)
            .and_then(|(_, st)| best_within(st, P99_BOUND_MS))
    };
    let (bt, bc) = (best(System::Tributary), best(System::CqrsEs));
    // A system none of whose steps kept p99 within the bound counts as 0.
    let sweep_ratio = match (bt, bc) {
        _ if sweeps.is_empty() => None,
        (Some(t), Some(c)) => Some(t / c),
        (Some(_), None) => Some(f64::INFINITY),
        (None, _) => Some(0.0),
    };
    goal(
        "sweep: best cmd/s with p99 <= 100 ms, Tributary / cqrs-es >= 3",
        sweep_ratio,
        |r| r >= 3.0,
        "×",
        &format!(
            "Tributary {}, cqrs-es {}",
            bt.map_or("none".into(), |v| format!("{v:.0}")),
            bc.map_or("none".into(), |v| format!("{v:.0}"))
        ),
    );
    let hot_ratio = match hot.as_slice() {
        [t, c] if c.rate() > 0.0 => Some(t.rate() / c.rate()),
        _ => None,
    };
    goal(
        "hot aggregate cmd/s, Tributary / cqrs-es >= 30",
        hot_ratio,
        |r| r >= 30.0,
        "×",
        &hot.iter()
            .map(|r| format!("{} {:.0}", r.system.name(), r.rate()))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let run = |system: System, callers: usize| {
        closed
            .iter()
            .find(|(c, _)| *c == callers)
            .and_then(|(_, runs)| runs.iter().find(|r| r.system == system))
    };
    let ours = |callers, p| run(System::Tributary, callers).map(|r| ms_or_inf(r.tally.latency(p)));
    let theirs =
        |callers, p| run(System::CqrsEs, callers).map_or("–".into(), |r| ms(r.tally.latency(p)));
    goal(
        "Tributary p50 at 1 caller <= 10 ms",
        ours(1, 0.5),
        |v| v <= 10.0,
        " ms",
        &format!("cqrs-es {} ms", theirs(1, 0.5)),
    );
    goal(
        "Tributary p99 at 10 callers < 50 ms",
        ours(10, 0.99),
        |v| v < 50.0,
        " ms",
        &format!("cqrs-es {} ms", theirs(10, 0.99)),
    );
}

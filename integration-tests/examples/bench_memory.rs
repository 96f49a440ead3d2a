//! Memory benchmark: a processor's resident memory as one partition grows to
//! 1,000,000 aggregates, and its throughput on a hot set of 1,000 aggregates and on
//! uniformly random aggregates (cache misses), with `max_cached_aggregates` bounding
//! memory beside a processor that keeps every aggregate in memory.
//!
//! ```text
//! cargo build --release -p tributary-integration-tests --example bench_memory --bin counter_node
//! target/release/examples/bench_memory [--aggregates N] [--commands N] [--modes bounded,all]
//! ```
//!
//! Each mode gets fresh topics (one partition) and a snapshot schema, and runs the
//! counter processor as its own process (`counter_node`, next to this program's
//! directory), so its resident memory (VmRSS) is the processor's alone. The load
//! comes from a `CommandGateway` in this process:
//! 1. seeding: one `Increment` to each of `--aggregates` new aggregates (default
//!    1,000,000) at 1,000 callers, with the processor's memory read at each quarter;
//! 2. hot: `--commands` (default 20,000) over the first 1,000 aggregates at 100
//!    callers; 3. uniform: as many over all aggregates;
//! 4. restart: SIGKILL, a new process, and the time until a command to a random
//!    aggregate is answered (the restore), with the memory after it.
//!
//! Modes: `bounded` (`max_cached_aggregates` 100,000, the default) and `all`
//! (2,000,000: every aggregate stays in memory). Both use a dedup window of 10 s
//! (`--dedup-secs`), so that the seeding's million command ids, which the processor
//! keeps for the window, do not hide the aggregates' share of memory; the window's
//! cost is printed separately. Needs the services (`eval "$(scripts/services.sh up)"`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tributary_integration_tests::bench_load::{
    Tally, arg, arg_str, closed_loop, counter_gateway, counter_node_path, machine, ms, plan,
    start_counter_node,
};
use tributary_integration_tests::node::Node;
use tributary_integration_tests::{database_url, describe_broker, kafka_bootstrap, unique_prefix};

const HOT: usize = 1000;
const SEED_CALLERS: usize = 1000;
const LOAD_CALLERS: usize = 100;
const TIMEOUT: Duration = Duration::from_secs(60);
const RESTORE_TIMEOUT: Duration = Duration::from_secs(900);

/// The resident and peak memory of process `pid`, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The last `stats` line the node printed: cached aggregates, loaded, evicted, and
/// the heap the node's Rust code holds when it was built with `heap-stats`.
fn cached(node: &mut Node, last: &mut String) -> String {
    if let Some(line) = node
        .printed()
        .into_iter()
        .rev()
        .find(|l| l.starts_with("stats "))
    {
        *last = line;
    }
    let fields: Vec<&str> = last.split_whitespace().skip(1).collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or("?");
    let heap = field(5)
        .parse::<f64>()
        .map(|bytes| format!(", heap {:.0} MiB", bytes / 1_048_576.0))
        .unwrap_or_default();
    format!(
        "{} cached, {} loaded, {} evicted{heap}",
        field(0),
        field(1),
        field(2)
    )
}

struct Mode {
    name: &'static str,
    max_cached: usize,
}

struct Run {
    prefix: String,
    schema: String,
    env: Vec<(String, String)>,
    node_path: String,
    bootstrap: String,
}

impl Run {
    fn start(&self) -> Node {
        start_counter_node(&self.node_path, &self.bootstrap, &self.prefix, 1, &self.env)
    }
}

fn row(label: &str, tally: &Tally, elapsed: Duration, mem: (f64, f64), cache: &str) {
    println!(
        "| {label} | {} | {:.0} | {} / {} | {:.0} | {:.0} | {cache} |",
        tally.ok.len(),
        tally.ok.len() as f64 / elapsed.as_secs_f64(),
        ms(tally.latency(0.5)),
        ms(tally.latency(0.99)),
        mem.0,
        mem.1,
    );
    if tally.failed() > 0 {
        println!(
            "|   {} failed (first: {:?}) | | | | | | |",
            tally.failed(),
            tally.first_error
        );
    }
}

async fn run_mode(mode: &Mode, node_path: &str, bootstrap: &str) {
    let aggregates = arg("--aggregates", 1_000_000);
    let commands = arg("--commands", 20_000);
    let dedup = arg("--dedup-secs", 10);
    let prefix = unique_prefix(&format!("bench-mem-{}", mode.name));
    let schema = prefix.replace('-', "_");
    let tag = "m";
    let run = Run {
        env: vec![
            ("DATABASE_URL".into(), database_url()),
            ("TRIBUTARY_SNAPSHOT_SCHEMA".into(), schema.clone()),
            ("TRIBUTARY_MAX_CACHED".into(), mode.max_cached.to_string()),
            ("TRIBUTARY_DEDUP_WINDOW_SECS".into(), dedup.to_string()),
            ("TRIBUTARY_PRINT_STATS".into(), "1".into()),
        ],
        prefix: prefix.clone(),
        schema,
        node_path: node_path.to_owned(),
        bootstrap: bootstrap.to_owned(),
    };
    println!(
        "\n### mode `{}`: max_cached_aggregates {}, prefix {prefix}, schema {}\n",
        mode.name, mode.max_cached, run.schema
    );
    let mut node = run.start();
    let target = counter_gateway(bootstrap, &prefix).await;
    let mut last = String::new();
    // The first command waits for the group's assignment and the restore.
    let (warm, _) = closed_loop(
        &target,
        Arc::new(vec![format!("{tag}-agg-0")]),
        1,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(warm.ok.len(), 1, "the processor does not answer: {warm:?}");
    println!(
        "| step | commands | cmd/s | p50 / p99 ms | RSS MiB | peak RSS MiB | processor's cache |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|");
    row(
        "started, 1 aggregate",
        &warm,
        Duration::from_secs(1),
        memory(node.pid()),
        &cached(&mut node, &mut last),
    );
    let quarter = aggregates.div_ceil(4);
    for q in 0..4 {
        let from = (q * quarter).max(1);
        let to = ((q + 1) * quarter).min(aggregates);
        let ids: Vec<String> = (from..to).map(|k| format!("{tag}-agg-{k}")).collect();
        let (tally, elapsed) = closed_loop(&target, Arc::new(ids), SEED_CALLERS, TIMEOUT).await;
        // Let the snapshot writer and the evictions catch up before reading memory.
        tokio::time::sleep(Duration::from_secs(2)).await;
        row(
            &format!("seeded {to} aggregates"),
            &tally,
            elapsed,
            memory(node.pid()),
            &cached(&mut node, &mut last),
        );
    }
    for (label, n) in [
        (format!("hot set of {HOT}"), HOT),
        (format!("uniform over {aggregates}"), aggregates),
    ] {
        let ids = plan(tag, 7, commands, n);
        let (tally, elapsed) = closed_loop(&target, Arc::new(ids), LOAD_CALLERS, TIMEOUT).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        row(
            &label,
            &tally,
            elapsed,
            memory(node.pid()),
            &cached(&mut node, &mut last),
        );
    }
    // A crash and a restart: how long until the partition answers again.
    node.kill();
    let restarted = Instant::now();
    let mut node = run.start();
    let (tally, _) = closed_loop(
        &target,
        Arc::new(plan(tag, 11, 1, aggregates)),
        1,
        RESTORE_TIMEOUT,
    )
    .await;
    let answered = restarted.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, peak) = memory(node.pid());
    println!(
        "| restart after SIGKILL: first answer after {:.1} s | {} | | | {rss:.0} | {peak:.0} | {} |",
        answered.as_secs_f64(),
        tally.ok.len(),
        cached(&mut node, &mut last),
    );
    let (tally, elapsed) = closed_loop(
        &target,
        Arc::new(plan(tag, 13, commands, aggregates)),
        LOAD_CALLERS,
        TIMEOUT,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    row(
        &format!("after the restart: uniform over {aggregates}"),
        &tally,
        elapsed,
        memory(node.pid()),
        &cached(&mut node, &mut last),
    );
    node.kill();
}

#[tokio::main]
async fn main() {
    let bootstrap = kafka_bootstrap();
    let node_path = counter_node_path("bench_memory");
    println!(
        "machine: {}; broker: {}; one partition",
        machine(),
        describe_broker(&bootstrap)
    );
    let modes = arg_str("--modes").unwrap_or_else(|| "bounded,all".into());
    for name in modes.split(',') {
        let mode = match name.trim() {
            "bounded" => Mode {
                name: "bounded",
                max_cached: tributary::command::ProcessorSettings::default().max_cached_aggregates,
            },
            "all" => Mode {
                name: "all",
                max_cached: 2_000_000,
            },
            other => panic!("unknown mode {other}: bounded or all"),
        };
        run_mode(&mode, &node_path, &bootstrap).await;
    }
}

//! Scale-out benchmark: one commands topic of 12 partitions served by 1, 2 and 4
//! processor processes under the same open-loop load, and how long a rebalance
//! pauses the commands when an instance joins and when one is killed.
//!
//! ```text
//! cargo build --release -p tributary-integration-tests --example bench_scale --bin counter_node
//! target/release/examples/bench_scale [--instances 1,2,4] [--rates 500,1000,2000,4000,8000] \
//!     [--step-secs S] [--pause-rate R]
//! ```
//!
//! Every processor is the counter's `counter_node` (next to this program's
//! directory) in its own process, with snapshots in a schema of the run and the
//! test settings (session timeout 6 s). The commands come from one
//! `CommandGateway` in this process: `Increment` on a fixed schedule (open loop,
//! latency from the scheduled time) over 1,000 aggregates.
//!
//! 1. Throughput: for each instance count, fresh topics; the instances start, every
//!    partition answers, then the offered rate goes up step by step (`--step-secs`,
//!    default 5) until the achieved rate falls below 0.8 × the offered one.
//! 2. Rebalance pauses: fresh topics, two instances, `--pause-rate` commands/s
//!    (default 500) for 45 s; at 10 s a third instance starts (it joins the group:
//!    every partition is revoked and reassigned, eager protocol), at 25 s the first
//!    one is killed with SIGKILL (its partitions move once the session times out).
//!    For each window: the longest wait of a command due in it, and how many waited
//!    over a second. Each command not accepted is printed to stderr with why.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tributary_integration_tests::bench_load::{
    CounterGateway, Kind, Sender, arg, arg_list, closed_loop, counter_gateway, counter_node_path,
    machine, ms, open_loop, plan, start_counter_node,
};
use tributary_integration_tests::node::Node;
use tributary_integration_tests::{database_url, describe_broker, kafka_bootstrap, unique_prefix};

const PARTITIONS: u32 = 12;
const AGGREGATES: usize = 1000;
const TIMEOUT: Duration = Duration::from_secs(60);
const SATURATED: f64 = 0.8;
const JOIN_AT: f64 = 10.0;
const KILL_AT: f64 = 25.0;
const PAUSE_RUN: f64 = 45.0;

struct Cluster {
    prefix: String,
    env: Vec<(String, String)>,
    node_path: String,
    bootstrap: String,
    nodes: Vec<Node>,
}

impl Cluster {
    fn new(tag: &str, node_path: &str, bootstrap: &str) -> Self {
        let prefix = unique_prefix(tag);
        let schema = prefix.replace('-', "_");
        Self {
            env: vec![
                ("DATABASE_URL".into(), database_url()),
                ("TRIBUTARY_SNAPSHOT_SCHEMA".into(), schema),
            ],
            prefix,
            node_path: node_path.to_owned(),
            bootstrap: bootstrap.to_owned(),
            nodes: Vec::new(),
        }
    }

    fn add(&mut self) {
        self.nodes.push(start_counter_node(
            &self.node_path,
            &self.bootstrap,
            &self.prefix,
            PARTITIONS,
            &self.env,
        ));
    }

    async fn gateway(&self) -> CounterGateway {
        counter_gateway(&self.bootstrap, &self.prefix).await
    }
}

/// Waits until commands to every aggregate are answered twice in a row, 3 s apart:
/// every partition is assigned and restored, and the group has settled. A round
/// with failures (the gateway may see the nodes' topics only after a metadata
/// refresh) starts the count again, for three minutes at most.
async fn settle(target: &CounterGateway) {
    let ids: Arc<Vec<String>> = Arc::new((0..AGGREGATES).map(|k| format!("s-agg-{k}")).collect());
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut clean = 0;
    while clean < 2 {
        let (tally, _) = closed_loop(target, Arc::clone(&ids), 100, Duration::from_secs(180)).await;
        if tally.failed() == 0 {
            clean += 1;
        } else {
            clean = 0;
            assert!(
                Instant::now() < deadline,
                "the warm-up still fails after 3 minutes: {:?}",
                tally.first_error
            );
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

async fn throughput(instances: usize, node_path: &str, bootstrap: &str) {
    let rates = arg_list("--rates", &[500, 1000, 2000, 4000, 8000]);
    let step_secs = arg("--step-secs", 5);
    let mut cluster = Cluster::new(&format!("bench-scale-{instances}"), node_path, bootstrap);
    for _ in 0..instances {
        cluster.add();
    }
    let target = cluster.gateway().await;
    settle(&target).await;
    for rate in rates {
        let ids = plan("s", rate as u64, rate * step_secs, AGGREGATES);
        let step = open_loop(&target, ids, rate, 20_000, TIMEOUT).await;
        let saturated = step.achieved < SATURATED * rate as f64;
        println!(
            "| {instances} | {rate} | {:.0}{} | {} / {} | {} |",
            step.achieved,
            if saturated { " (saturated)" } else { "" },
            ms(step.tally.latency(0.5)),
            ms(step.tally.latency(0.99)),
            step.tally.failed(),
        );
        if saturated {
            break;
        }
    }
}

/// One command of the pause run: when it was due (s from the start) and how long
/// it waited for its outcome (`None`: not accepted).
type Timed = (f64, Option<f64>);

async fn timeline(target: CounterGateway, rate: usize, secs: f64) -> Vec<Timed> {
    let n = (rate as f64 * secs) as usize;
    let ids = plan("s", 99, n, AGGREGATES);
    let start = Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::with_capacity(n);
    for (i, id) in ids.into_iter().enumerate() {
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let sent = target.send(id, TIMEOUT).await;
            let waited = due.elapsed().as_secs_f64() * 1000.0;
            let offset = due.saturating_duration_since(start).as_secs_f64();
            match &sent.kind {
                Kind::Accepted => {}
                Kind::Timeout => eprintln!("not accepted (due at {offset:.2} s): timed out"),
                Kind::Error(e) => eprintln!("not accepted (due at {offset:.2} s): {e}"),
            }
            (
                offset,
                matches!(sent.kind, Kind::Accepted).then_some(waited),
            )
        }));
    }
    let mut out = Vec::with_capacity(n);
    for task in tasks {
        out.push(task.await.expect("command task"));
    }
    out
}

fn window(label: &str, timed: &[Timed], from: f64, to: f64) {
    let mut waits: Vec<f64> = timed
        .iter()
        .filter(|(at, _)| (from..to).contains(at))
        .filter_map(|(_, w)| *w)
        .collect();
    let failed = timed
        .iter()
        .filter(|(at, w)| (from..to).contains(at) && w.is_none())
        .count();
    waits.sort_by(f64::total_cmp);
    let at = |p: f64| {
        waits
            .get(((waits.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let over_second = waits.iter().filter(|w| **w > 1000.0).count();
    println!(
        "| {label} | {from:.0}–{to:.0} s | {} | {:.1} / {:.1} | {:.0} | {over_second} | {failed} |",
        waits.len(),
        at(0.5),
        at(0.99),
        waits.last().copied().unwrap_or(f64::NAN),
    );
}

async fn pauses(node_path: &str, bootstrap: &str) {
    let rate = arg("--pause-rate", 500);
    let mut cluster = Cluster::new("bench-scale-pause", node_path, bootstrap);
    cluster.add();
    cluster.add();
    let target = cluster.gateway().await;
    settle(&target).await;
    let load = tokio::spawn(timeline(target, rate, PAUSE_RUN));
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(JOIN_AT)).await;
    cluster.add();
    let joined = began.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(KILL_AT - joined)).await;
    cluster.nodes[0].kill();
    let killed = began.elapsed().as_secs_f64();
    let timed = load.await.expect("load");
    println!(
        "\n{rate} commands/s over {AGGREGATES} aggregates, {PARTITIONS} partitions; \
         third instance started at {joined:.1} s, first one killed at {killed:.1} s\n"
    );
    println!(
        "| window | due | accepted | p50 / p99 ms | longest wait ms | waited > 1 s | not accepted |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    window("2 instances, steady", &timed, 0.0, JOIN_AT);
    window("a third joins", &timed, JOIN_AT, KILL_AT);
    window("one is killed (SIGKILL)", &timed, KILL_AT, PAUSE_RUN);
}

#[tokio::main]
async fn main() {
    let bootstrap = kafka_bootstrap();
    let node_path = counter_node_path("bench_scale");
    println!(
        "machine: {}; broker: {}; {PARTITIONS} partitions, {AGGREGATES} aggregates",
        machine(),
        describe_broker(&bootstrap)
    );
    println!("\n| instances | offered cmd/s | achieved cmd/s | p50 / p99 ms | not accepted |");
    println!("|---:|---:|---:|---:|---:|");
    for instances in arg_list("--instances", &[1, 2, 4]) {
        throughput(instances, &node_path, &bootstrap).await;
    }
    pauses(&node_path, &bootstrap).await;
}

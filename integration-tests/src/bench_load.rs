//! Load generation for the benchmark examples, over any command sender: a closed
//! loop (callers that each wait for an outcome before the next command) and an open
//! loop (commands on a fixed schedule, latency from the scheduled time), and what
//! they measured.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Semaphore;

/// The value after `name` on the command line, parsed; `default` when absent or
/// unparsable.
pub fn arg(name: &str, default: usize) -> usize {
    arg_str(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The value after `name` on the command line.
pub fn arg_str(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// The milliseconds after `name` on the command line, fractions allowed (as
/// librdkafka takes them); `None` when absent. A value that is not a number stops
/// the program rather than falling back to a default.
pub fn arg_millis(name: &str) -> Option<f64> {
    arg_str(name).map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} takes milliseconds, such as 1 or 0.5: {v}"))
    })
}

/// The comma-separated numbers after `name` on the command line; `default` when
/// absent or empty.
pub fn arg_list(name: &str, default: &[usize]) -> Vec<usize> {
    arg_str(name)
        .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

/// The machine, for benchmark output: cores and CPU model.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

/// CPU time this process has used so far (user + system), from `/proc/self/stat`
/// in clock ticks of 10 ms; `None` where that file is missing.
pub fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces:
    // state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// What became of one command.
#[derive(Debug)]
pub enum Kind {
    /// Accepted.
    Accepted,
    /// No outcome within the timeout.
    Timeout,
    /// Rejected or failed, with the reason.
    Error(String),
}

/// One command's end: what became of it and how often the sender retried it.
#[derive(Debug)]
pub struct Sent {
    /// What became of it.
    pub kind: Kind,
    /// Retries the sender made (optimistic-concurrency conflicts, say).
    pub retries: u32,
}

/// A system under test: sends one command to an aggregate and waits at most
/// `timeout` for its outcome.
pub trait Sender: Clone + Send + Sync + 'static {
    /// Sends one command to `aggregate_id`.
    fn send(&self, aggregate_id: String, timeout: Duration) -> impl Future<Output = Sent> + Send;
}

/// The aggregate ids of `n` commands, `{tag}-agg-{k}` with `k` uniformly random below
/// `aggregates` (SplitMix64 from `seed`): the same sequence for every system.
pub fn plan(tag: &str, seed: u64, n: usize, aggregates: usize) -> Vec<String> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            format!("{tag}-agg-{}", z % aggregates.max(1) as u64)
        })
        .collect()
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct Tally {
    /// Latencies of the accepted commands, sorted once the run is over.
    pub ok: Vec<Duration>,
    /// Commands without an outcome within the timeout.
    pub timeouts: usize,
    /// Commands rejected or failed.
    pub errors: usize,
    /// Open loop: commands not sent because too many were in flight.
    pub dropped: usize,
    /// Retries the sender made.
    pub retries: u64,
    /// The first error's reason.
    pub first_error: Option<String>,
    /// When the last accepted command ended.
    pub last_ok: Option<Instant>,
}

impl Tally {
    /// Counts one command: its end, how long it took and when it ended.
    pub fn add(&mut self, sent: Sent, latency: Duration, done: Instant) {
        self.retries += u64::from(sent.retries);
        match sent.kind {
            Kind::Accepted => {
                self.ok.push(latency);
                self.last_ok = self.last_ok.max(Some(done));
            }
            Kind::Timeout => self.timeouts += 1,
            Kind::Error(e) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(e);
                }
            }
        }
    }

    /// Adds another tally's counts.
    pub fn merge(&mut self, other: Tally) {
        self.ok.extend(other.ok);
        self.timeouts += other.timeouts;
        self.errors += other.errors;
        self.dropped += other.dropped;
        self.retries += other.retries;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.last_ok = self.last_ok.max(other.last_ok);
    }

    /// Commands that were not accepted: timed out, failed or dropped.
    pub fn failed(&self) -> usize {
        self.timeouts + self.errors + self.dropped
    }

    /// Commands issued (or, open loop, due).
    pub fn issued(&self) -> usize {
        self.ok.len() + self.failed()
    }

    /// The `p` latency (nearest rank, as bench_commands' `percentile`) over every
    /// command issued, a failed or dropped one counting as slower than any accepted
    /// one: `None` when it falls on a failure.
    pub fn latency(&self, p: f64) -> Option<Duration> {
        let total = self.issued();
        let i = ((total as f64 - 1.0) * p).round() as usize;
        (total > 0 && i < self.ok.len()).then(|| self.ok[i])
    }
}

/// Milliseconds with one decimal, or `failed` (see [`Tally::latency`]).
pub fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "failed".into(),
        |d| format!("{:.1}", d.as_secs_f64() * 1000.0),
    )
}

/// Milliseconds, a latency that falls on a failure (`None`) being infinite.
pub fn ms_or_inf(d: Option<Duration>) -> f64 {
    d.map_or(f64::INFINITY, |d| d.as_secs_f64() * 1000.0)
}

/// `callers` tasks send the commands to `ids`, in order, each waiting for its
/// outcome before it takes the next (closed loop). Returns the tally and the wall
/// time.
pub async fn closed_loop<T: Sender>(
    target: &T,
    ids: Arc<Vec<String>>,
    callers: usize,
    timeout: Duration,
) -> (Tally, Duration) {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (target, ids, next) = (target.clone(), Arc::clone(&ids), Arc::clone(&next));
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while let Some(id) = ids.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let t = Instant::now();
                    let sent = target.send(id.clone(), timeout).await;
                    tally.add(sent, t.elapsed(), Instant::now());
                }
                tally
            })
        })
        .collect();
    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(task.await.expect("caller task"));
    }
    let elapsed = started.elapsed();
    tally.ok.sort_unstable();
    (tally, elapsed)
}

/// One step of an open loop.
#[derive(Debug)]
pub struct Step {
    /// The offered rate, commands/s.
    pub offered: usize,
    /// Accepted commands/s: accepted commands over the time from the first due
    /// time to the last accepted outcome (at least the step's length).
    pub achieved: f64,
    /// What it measured.
    pub tally: Tally,
    /// When the first command was due, by the wall clock: to match the step with
    /// the logs of the broker and the processor.
    pub started: SystemTime,
    /// Each accepted command's due time (from the step's start) and latency, in
    /// due order: where in the step the slow ones were.
    pub timeline: Vec<(Duration, Duration)>,
}

impl Step {
    /// The p99 latency in ms, `None` when it falls on a failed or dropped command.
    pub fn p99_ms(&self) -> Option<f64> {
        self.tally.latency(0.99).map(|d| d.as_secs_f64() * 1000.0)
    }

    /// Where the commands slower than `bound` were due: runs of them whose due
    /// times are less than `gap` apart, as `count over from–to s (max ms)`, the
    /// `limit` runs with the most commands. Tells one long stall from many short
    /// ones.
    pub fn slow_runs(&self, bound: Duration, gap: Duration, limit: usize) -> String {
        let mut runs: Vec<(Duration, Duration, usize, Duration)> = Vec::new();
        for &(due, latency) in self.timeline.iter().filter(|(_, l)| *l > bound) {
            match runs.last_mut() {
                Some((_, to, count, max)) if due.saturating_sub(*to) < gap => {
                    *to = due;
                    *count += 1;
                    *max = (*max).max(latency);
                }
                _ => runs.push((due, due, 1, latency)),
            }
        }
        let total: usize = runs.iter().map(|r| r.2).sum();
        let shown = runs.len().min(limit);
        runs.sort_by_key(|r| std::cmp::Reverse(r.2));
        let parts: Vec<String> = runs[..shown]
            .iter()
            .map(|(from, to, count, max)| {
                format!(
                    "{count} due {:.2}–{:.2} s (max {:.0} ms)",
                    from.as_secs_f64(),
                    to.as_secs_f64(),
                    max.as_secs_f64() * 1000.0
                )
            })
            .collect();
        format!(
            "{total} over {:.0} ms in {} runs; largest: {}",
            bound.as_secs_f64() * 1000.0,
            runs.len(),
            parts.join(", ")
        )
    }
}

/// The best achieved throughput among the steps whose p99 (failures counted) is
/// at most `bound_ms`.
pub fn best_within(steps: &[Step], bound_ms: f64) -> Option<f64> {
    steps
        .iter()
        .filter(|s| s.p99_ms().is_some_and(|p| p <= bound_ms))
        .map(|s| s.achieved)
        .reduce(f64::max)
}

/// One open-loop step: command `i` is due at `start + i / rate` and is sent then,
/// whether or not earlier ones have ended. At most `max_in_flight` are in flight;
/// one due beyond that is dropped and counted. Its latency runs from the time it was
/// due, so a system that stalls is charged for the commands it held up (no
/// coordinated omission).
pub async fn open_loop<T: Sender>(
    target: &T,
    ids: Vec<String>,
    rate: usize,
    max_in_flight: usize,
    timeout: Duration,
) -> Step {
    let rate = rate.max(1);
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let issued = ids.len();
    let mut tally = Tally::default();
    let mut tasks = Vec::with_capacity(issued);
    let start = Instant::now() + Duration::from_millis(20);
    let started = SystemTime::now() + Duration::from_millis(20);
    for (i, id) in ids.into_iter().enumerate() {
        let due = start + Duration::from_nanos((i as u64 * 1_000_000_000) / rate as u64);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tally.dropped += 1;
            continue;
        };
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let sent = target.send(id, timeout).await;
            drop(permit);
            let done = Instant::now();
            (sent, due, done.saturating_duration_since(due), done)
        }));
    }
    let mut timeline = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (sent, due, latency, done) = task.await.expect("command task");
        if matches!(sent.kind, Kind::Accepted) {
            timeline.push((due.saturating_duration_since(start), latency));
        }
        tally.add(sent, latency, done);
    }
    tally.ok.sort_unstable();
    let window = Duration::from_secs_f64(issued as f64 / rate as f64);
    let elapsed = tally
        .last_ok
        .map_or(window, |t| t.saturating_duration_since(start).max(window));
    Step {
        offered: rate,
        achieved: tally.ok.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        tally,
        started,
        timeline,
    }
}

/// A [`CounterGateway`] for the topics under `prefix`, waiting up to a minute for
/// them (a processor that has just started may still be creating them). Its
/// producer's `linger.ms` is `TRIBUTARY_GATEWAY_LINGER_MS` when set, so that the
/// gateway's can be tried apart from the processor's (`TRIBUTARY_KAFKA_LINGER_MS`
/// sets both).
pub async fn counter_gateway(bootstrap: &str, prefix: &str) -> CounterGateway {
    let mut kafka = crate::command_support::counter_kafka(bootstrap);
    if let Ok(value) = std::env::var("TRIBUTARY_GATEWAY_LINGER_MS") {
        kafka = kafka.set("linger.ms", value);
    }
    let gateway = tributary::command::CommandGateway::connect_with_timeout(
        kafka,
        prefix,
        Duration::from_secs(60),
    )
    .await
    .expect("gateway");
    CounterGateway(gateway)
}

/// Tributary as a [`Sender`]: `Increment { by: 1 }` to the counter through a
/// [`CommandGateway`](tributary::command::CommandGateway), waiting at most the
/// timeout for the outcome.
#[derive(Clone, Debug)]
pub struct CounterGateway(pub tributary::command::CommandGateway);

impl Sender for CounterGateway {
    async fn send(&self, id: String, timeout: Duration) -> Sent {
        use tributary::command::{GatewayError, SendOptions};
        let options = SendOptions {
            timeout: Some(timeout),
            ..Default::default()
        };
        let sent = self
            .0
            .send_with(crate::command_support::Increment { id, by: 1 }, options);
        let kind = match tokio::time::timeout(timeout, sent).await {
            Err(_) | Ok(Err(GatewayError::Timeout { .. })) => Kind::Timeout,
            Ok(Ok(outcome)) if outcome.is_accepted() => Kind::Accepted,
            Ok(Ok(outcome)) => Kind::Error(format!("{outcome:?}")),
            Ok(Err(e)) => Kind::Error(e.to_string()),
        };
        Sent { kind, retries: 0 }
    }
}

/// The path of the `counter_node` program built next to the running benchmark
/// `example` (`target/release/counter_node` beside `target/release/examples/`).
/// Panics with the build command when it is missing.
pub fn counter_node_path(example: &str) -> String {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("counter_node")))
        .filter(|p| p.exists())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| {
            panic!(
                "counter_node is not built next to this program: cargo build --release \
                 -p tributary-integration-tests --example {example} --bin counter_node"
            )
        })
}

/// Starts a `counter_node` (see [`counter_node_path`]) for `prefix` with
/// `partitions` partitions and the environment `env`.
pub fn start_counter_node(
    program: &str,
    bootstrap: &str,
    prefix: &str,
    partitions: u32,
    env: &[(String, String)],
) -> crate::node::Node {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    crate::node::Node::counter(program, bootstrap, prefix, partitions, &env)
}

/// How often a stall probe looks, and how late a look must be to be reported.
const PROBE_PERIOD: Duration = Duration::from_millis(5);
const PROBE_REPORT: Duration = Duration::from_millis(40);

/// How much later than `period` after `last` the look at `now` came, when that is
/// over `report`.
fn late_by(last: Instant, now: Instant, period: Duration, report: Duration) -> Option<Duration> {
    let late = now.saturating_duration_since(last).saturating_sub(period);
    (late > report).then_some(late)
}

/// One stall probe: when it last looked, and under which name it reports.
struct Probe {
    name: &'static str,
    last: Instant,
}

impl Probe {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            last: Instant::now(),
        }
    }

    /// A look after a sleep of [`PROBE_PERIOD`]: prints the look when it came over
    /// [`PROBE_REPORT`] late, with the wall-clock time. A benchmark's diagnostic
    /// output, on stderr beside its report on stdout.
    #[allow(clippy::print_stderr)]
    fn look(&mut self) {
        let now = Instant::now();
        if let Some(late) = late_by(self.last, now, PROBE_PERIOD, PROBE_REPORT) {
            let at = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            eprintln!(
                "stall probe: {} {} ms late at {:.3} s since the epoch",
                self.name,
                late.as_millis(),
                at.as_secs_f64()
            );
        }
        self.last = now;
    }
}

/// Starts two probes that each look every 5 ms and print to stderr every look over
/// 40 ms late, with the wall-clock time (to match with a step's "first due at"): one
/// on an OS thread of its own, one as a task of the current Tokio runtime. A late
/// task with a punctual thread means the runtime's workers were busy or waiting to
/// run, not the whole process or machine. Must be called within a Tokio runtime.
pub fn start_stall_probes() {
    std::thread::spawn(|| {
        let mut probe = Probe::new("thread");
        loop {
            std::thread::sleep(PROBE_PERIOD);
            probe.look();
        }
    });
    tokio::spawn(async {
        let mut probe = Probe::new("runtime task");
        loop {
            tokio::time::sleep(PROBE_PERIOD).await;
            probe.look();
        }
    });
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{Step, Tally, late_by};

    fn step(timeline: &[(u64, u64)]) -> Step {
        Step {
            offered: 1000,
            achieved: 1000.0,
            tally: Tally::default(),
            started: std::time::SystemTime::UNIX_EPOCH,
            timeline: timeline
                .iter()
                .map(|&(due, latency)| (Duration::from_millis(due), Duration::from_millis(latency)))
                .collect(),
        }
    }

    #[test]
    fn slow_runs_group_the_slow_commands_by_due_time_largest_first() {
        let step = step(&[
            (100, 150),
            (110, 120),
            (120, 20),
            (130, 180),
            (900, 101),
            (2000, 300),
            (2010, 250),
            (2020, 200),
            (2030, 120),
        ]);
        let ms = Duration::from_millis;
        assert_eq!(
            step.slow_runs(ms(100), ms(50), 5),
            "8 over 100 ms in 3 runs; largest: 4 due 2.00–2.03 s (max 300 ms), \
             3 due 0.10–0.13 s (max 180 ms), 1 due 0.90–0.90 s (max 101 ms)"
        );
        assert_eq!(
            step.slow_runs(ms(100), ms(50), 1),
            "8 over 100 ms in 3 runs; largest: 4 due 2.00–2.03 s (max 300 ms)"
        );
        assert_eq!(
            step.slow_runs(ms(400), ms(50), 5),
            "0 over 400 ms in 0 runs; largest: "
        );
    }

    #[test]
    fn a_look_is_late_only_past_the_period_and_the_report_bound() {
        let ms = Duration::from_millis;
        let last = Instant::now();
        assert_eq!(late_by(last, last + ms(44), ms(5), ms(40)), None);
        assert_eq!(late_by(last, last + ms(60), ms(5), ms(40)), Some(ms(55)));
        // A `now` before `last` counts as on time.
        assert_eq!(late_by(last + ms(10), last, ms(5), ms(40)), None);
    }
}

//! Command processors: partition-owned single writers with one Kafka transaction per
//! batch.
//!
//! One consumer group per aggregate type reads the commands topic. Owning commands
//! partition `p` means owning every aggregate whose events go to events partition
//! `p`. Each owned partition has its own two transactional producers, with the
//! transactional ids `{prefix}.{aggregate}.processor.{p}` and `….{p}.alt`, which take
//! the partition's transactions in turn (see `producer::TxProducers`): when a new
//! owner initialises them, the broker fences the previous owner, whose next commit
//! fails — a zombie cannot write (transactional-id fencing, which every Kafka
//! version since 0.11 guarantees).
//!
//! Per batch and partition: begin → for each command: check its id against the seen
//! window, run the handler, produce events (to partition `p`) and the outcome (to the
//! outcomes topic, partition `p`, carrying the position after the command) → commit.
//! The position that counts is in the committed outcomes: a new owner reads it back
//! on restore and skips the commands below it. It is also committed to the consumer
//! group, outside the transaction and a moment later, where consumption starts after
//! an assignment. The replies are sent after the commit, by one non-transactional
//! producer: a caller never hears of an outcome that did not commit. Snapshots are
//! written after the commit.

mod batch;
mod cache;
mod commit;
mod contexts;
mod decide;
mod error;
mod partitions;
mod producer;
mod replay;
mod restore;
mod run;
mod settings;
mod snapshots;
mod stats;
#[cfg(test)]
mod testing;
mod transaction;

pub use error::ProcessorError;
pub use settings::ProcessorSettings;
pub use stats::{ProcessorCounters, ProcessorStats};

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use tracing::{debug, error, info, warn};

use super::snapshot;
use super::topics::{TopicLayout, TopicSettings, ensure_topics};
use crate::Upcaster;
use crate::codec::EventCodec;
use crate::config::KafkaConfig;
use crate::kafka::{clients, op};
use crate::store::PgStore;
use crate::topics::{event_source, validate_prefix};
use crate::{Aggregate, Command, CommandVisitor, DeclaresCommand};
use contexts::RebalanceContext;
use partitions::Core;
use producer::new_reply_producer;
use run::run;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

type Decided<A> = Result<Vec<<A as Aggregate>::Event>, <A as Aggregate>::Error>;
type DecideFn<A> = Box<dyn Fn(&A, &[u8]) -> Result<Decided<A>, serde_json::Error> + Send + Sync>;
type FaultHook = Arc<dyn Fn(FaultPoint, i32) + Send + Sync>;

/// A point in a batch's transaction where a test can inject a fault (freeze, crash,
/// stall) with [`CommandProcessor::fault_hook`] (crate feature `fault-injection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultPoint {
    /// The batch was polled; its transaction has not begun.
    BeforeTransaction,
    /// The batch's events and outcomes (with the position after the batch) are
    /// produced inside the open transaction and acknowledged by the broker (in the
    /// log, not yet committed). The name is from when the consumed offsets were sent
    /// to the transaction after this point; they are in the outcome records now.
    BeforeOffsets,
    /// Everything of the transaction is delivered; `commit_transaction` comes next.
    BeforeCommit,
    /// The transaction committed; its replies are not sent yet.
    AfterCommit,
}

/// Builds and starts the command processor of aggregate type `A`.
///
/// It decides every command in `A`'s command list (`#[aggregate(commands(..))]`,
/// read through [`Aggregate::visit_commands`]), so there is nothing to register:
///
/// ```no_run
/// # async fn f<Order: tributary::Aggregate>(store: tributary::PgStore) -> Result<(), tributary::command::ProcessorError> {
/// # use tributary::{KafkaConfig, command::CommandProcessor};
/// let processor = CommandProcessor::<Order>::new(KafkaConfig::from_env(), "shop")?
///     .snapshots(store)
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
pub struct CommandProcessor<A: Aggregate> {
    kafka: KafkaConfig,
    prefix: String,
    codec: EventCodec<A::Event>,
    handlers: HashMap<String, DecideFn<A>>,
    store: Option<PgStore>,
    settings: ProcessorSettings,
    topics: TopicSettings,
    fault_hook: Option<FaultHook>,
}

impl<A: Aggregate> std::fmt::Debug for CommandProcessor<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandProcessor")
            .field("aggregate", &A::NAME)
            .field("kafka", &self.kafka)
            .field("prefix", &self.prefix)
            .field("commands", &self.handlers.keys().collect::<Vec<_>>())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate> CommandProcessor<A> {
    /// A processor for topics under `prefix`, deciding the commands `A` declares.
    ///
    /// Fails with [`ProcessorError::Commands`] if `A` declares no commands, or if
    /// its declaration is inconsistent (only possible in a hand-written `impl
    /// Aggregate`): two commands with one [`Command::NAME`], or
    /// [`Aggregate::COMMANDS`] not naming what
    /// [`visit_commands`](Aggregate::visit_commands) visits.
    pub fn new(kafka: KafkaConfig, prefix: &str) -> Result<Self, ProcessorError> {
        validate_prefix(prefix)?;
        let handlers = dispatch_table::<A>()?;
        Ok(Self {
            kafka,
            prefix: prefix.to_owned(),
            codec: EventCodec::new(),
            handlers,
            store: None,
            settings: ProcessorSettings::default(),
            topics: TopicSettings::default(),
            fault_hook: None,
        })
    }

    /// Registers an upcaster for reading old event versions during restore.
    pub fn with_upcaster(mut self, upcaster: Upcaster) -> Result<Self, ProcessorError> {
        self.codec = self.codec.with_upcaster(upcaster)?;
        Ok(self)
    }

    /// Keeps snapshots in `store`: for an aggregate type with `snapshot_every`
    /// (`A::SNAPSHOT_EVERY`), every that many events per aggregate and every
    /// [`ProcessorSettings::flush_every`] events per partition; for every aggregate
    /// type, when a partition is revoked or the processor shuts down. Without a
    /// store, a restore replays the whole events partition.
    #[must_use]
    pub fn snapshots(mut self, store: PgStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Processor tuning.
    #[must_use]
    pub fn settings(mut self, settings: ProcessorSettings) -> Self {
        self.settings = settings;
        self
    }

    /// How missing topics are created.
    #[must_use]
    pub fn topics(mut self, topics: TopicSettings) -> Self {
        self.topics = topics;
        self
    }

    /// Fault injection for tests: `hook` is called on the processing thread with
    /// the point and the partition at each [`FaultPoint`] of every batch. Whatever
    /// it does (block, sleep, exit the process) happens there, with the transaction
    /// in that state.
    #[cfg(feature = "fault-injection")]
    #[must_use]
    pub fn fault_hook(mut self, hook: impl Fn(FaultPoint, i32) + Send + Sync + 'static) -> Self {
        self.fault_hook = Some(Arc::new(hook));
        self
    }

    /// Creates or validates the topics, joins the consumer group and starts
    /// processing on a dedicated thread. Must be called within a Tokio runtime.
    pub async fn start(self) -> Result<ProcessorHandle, ProcessorError> {
        self.settings.validate()?;
        let layout = ensure_topics(&self.kafka, &self.prefix, A::NAME, &self.topics).await?;
        let runtime = tokio::runtime::Handle::current();
        let stats = Arc::new(ProcessorStats::exported(A::NAME));
        let (written_tx, written) = std::sync::mpsc::channel();
        let snapshot_tx = self
            .store
            .clone()
            .map(|store| snapshot::spawn_writer(&runtime, store, A::NAME, written_tx));
        let s = &self.settings;
        let group = format!("{}.{}.processor", self.prefix, A::NAME);
        #[cfg(feature = "fault-injection")]
        let fail_reply_producer = Arc::new(AtomicBool::new(false));
        let outcome_reader: BaseConsumer = clients::outcome_reader(&self.kafka, &group)
            .create()
            .map_err(op("create outcome reader"))?;
        let shared = Arc::new(Shared {
            group: group.clone(),
            layout,
            source: event_source(&self.prefix, A::NAME),
            codec: self.codec,
            handlers: self.handlers,
            store: self.store,
            settings: self.settings.clone(),
            kafka: self.kafka.clone(),
            runtime,
            stats: Arc::clone(&stats),
            fault_hook: self.fault_hook,
            outcome_reader: Mutex::new(outcome_reader),
            gather_wake: Condvar::new(),
            #[cfg(feature = "fault-injection")]
            fail_reply_producer: Arc::clone(&fail_reply_producer),
        });
        // Replies are notifications of committed outcomes: sent after the commit by
        // one idempotent, non-transactional producer (see `Core::finish`).
        let reply_producer =
            new_reply_producer(&self.kafka).map_err(op("create reply producer"))?;
        let core = Arc::new(Mutex::new(Core {
            shared: Arc::clone(&shared),
            partitions: HashMap::new(),
            snapshot_tx,
            written,
            quarantined: HashMap::new(),
            restoring: HashMap::new(),
            restore_retries: HashMap::new(),
            restored: std::sync::mpsc::channel(),
            reply_producer,
            fatal: None,
            inflight: HashMap::new(),
            held: HashMap::new(),
            waiting: VecDeque::new(),
            rewinds: Vec::new(),
            positions: HashMap::new(),
            deferred: Vec::new(),
            next_ticket: 0,
        }));
        let consumer: BaseConsumer<RebalanceContext<A>> =
            clients::command_consumer(&self.kafka, &group, s.session_timeout, s.max_poll_interval)
                .create_with_context(RebalanceContext {
                    core: Arc::clone(&core),
                })
                .map_err(op("create consumer"))?;
        consumer
            .subscribe(&[shared.layout.commands.as_str()])
            .map_err(op("subscribe"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let kill = Arc::new(AtomicBool::new(false));
        let (thread_stop, thread_kill) = (Arc::clone(&stop), Arc::clone(&kill));
        let thread = std::thread::Builder::new()
            .name(format!("tributary-{}", A::NAME))
            .spawn(move || {
                let result = run(consumer, core, thread_stop, thread_kill);
                if let Err(error) = &result {
                    // Nobody may call shutdown() for a while: say it now.
                    error!(aggregate = A::NAME, %error, "command processor stopped");
                }
                result
            })
            .map_err(|e| ProcessorError::Thread(e.to_string()))?;
        info!(aggregate = A::NAME, %group, "command processor started");
        Ok(ProcessorHandle {
            stop,
            kill,
            thread: Some(thread),
            stats,
            #[cfg(feature = "fault-injection")]
            fail_reply_producer,
        })
    }
}

/// A running processor. Stop it with [`ProcessorHandle::shutdown`] (graceful:
/// snapshots, then the partitions are handed over at once) or
/// [`ProcessorHandle::abort`] (as a crash), then [`ProcessorHandle::join`]. Dropping the handle asks for the same
/// graceful stop as `shutdown` without waiting for it or reporting its error, like
/// dropping a [`ProjectionHandle`](crate::projection::ProjectionHandle).
#[derive(Debug)]
pub struct ProcessorHandle {
    stop: Arc<AtomicBool>,
    kill: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), ProcessorError>>>,
    stats: Arc<ProcessorStats>,
    #[cfg(feature = "fault-injection")]
    fail_reply_producer: Arc<AtomicBool>,
}

impl ProcessorHandle {
    /// Tests (crate feature `fault-injection`): the processor treats its reply
    /// producer as fatally failed at its next use, as if librdkafka had reported a
    /// fatal error (which it offers no safe way to raise), and must replace it.
    #[cfg(feature = "fault-injection")]
    pub fn fail_reply_producer(&self) {
        self.fail_reply_producer.store(true, Ordering::SeqCst);
    }

    /// Stops abruptly, as a crash would: no snapshots, no hand-over beyond closing
    /// the consumer; whatever was not committed is processed again by the next
    /// owner. Returns at once; [`ProcessorHandle::join`] waits for the processor
    /// to end.
    pub fn abort(&self) {
        self.kill.store(true, Ordering::SeqCst);
    }

    /// Waits for the processor to end (after [`ProcessorHandle::abort`] or an
    /// error) and returns the error that stopped it, if any.
    pub async fn join(mut self) -> Result<(), ProcessorError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|e| ProcessorError::Thread(e.to_string()))?
            .map_err(|_| ProcessorError::Thread("processor thread panicked".into()))?
    }

    /// The processor's counters.
    pub fn stats(&self) -> &Arc<ProcessorStats> {
        &self.stats
    }

    /// Whether the processor thread has ended (after an error or a shutdown).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops after the current batch: snapshots every owned partition, leaves the
    /// group so the partitions move at once, and returns the error that stopped the
    /// processor, if any.
    pub async fn shutdown(self) -> Result<(), ProcessorError> {
        self.stop.store(true, Ordering::SeqCst);
        self.join().await
    }
}

impl Drop for ProcessorHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One handler per command `A` declares, by command type (`order.place_order`).
fn dispatch_table<A: Aggregate>() -> Result<HashMap<String, DecideFn<A>>, ProcessorError> {
    struct Table<A: Aggregate> {
        handlers: HashMap<String, DecideFn<A>>,
        visited: Vec<&'static str>,
        duplicates: Vec<&'static str>,
    }
    impl<A: Aggregate> CommandVisitor<A> for Table<A> {
        fn visit<C>(&mut self)
        where
            C: Command<Aggregate = A>,
            A: DeclaresCommand<C>,
        {
            self.visited.push(C::NAME);
            let replaced = self.handlers.insert(
                format!("{}.{}", A::NAME, C::NAME),
                decide::handler::<A, C>(),
            );
            if replaced.is_some() {
                self.duplicates.push(C::NAME);
            }
        }
    }

    let mut table = Table {
        handlers: HashMap::new(),
        visited: Vec::new(),
        duplicates: Vec::new(),
    };
    A::visit_commands(&mut table);
    let fail = |reason: String| {
        Err(ProcessorError::Commands {
            aggregate: A::NAME,
            reason,
        })
    };
    if table.visited.is_empty() {
        return fail(
            "it declares no commands, so its processor would decide none; list them: \
             `#[aggregate(..., commands(PlaceOrder, ..))]`"
                .to_owned(),
        );
    }
    if !table.duplicates.is_empty() {
        return fail(format!(
            "two of its commands have the same name ({}): give one another name with \
             `#[command(name = \"..\")]`",
            table.duplicates.join(", ")
        ));
    }
    let mut listed = A::COMMANDS.to_vec();
    listed.sort_unstable();
    table.visited.sort_unstable();
    if listed != table.visited {
        return fail(format!(
            "`Aggregate::COMMANDS` ({}) does not name the commands `visit_commands` visits \
             ({}): list the same commands in both",
            listed.join(", "),
            table.visited.join(", ")
        ));
    }
    Ok(table.handlers)
}

struct Shared<A: Aggregate> {
    group: String,
    layout: TopicLayout,
    /// The `ce_source` of the events written: `/{prefix}/{aggregate}`.
    source: String,
    codec: EventCodec<A::Event>,
    handlers: HashMap<String, DecideFn<A>>,
    store: Option<PgStore>,
    settings: ProcessorSettings,
    kafka: KafkaConfig,
    runtime: tokio::runtime::Handle,
    stats: Arc<ProcessorStats>,
    fault_hook: Option<FaultHook>,
    /// Reads single outcome records, for resends answered from restored entries of
    /// the dedup window.
    outcome_reader: Mutex<BaseConsumer>,
    /// Wakes a partition gathering after its commit (`commit::gather_answered`)
    /// when what it waits on changes: commands held for a busy partition, a
    /// partition queued for a transaction slot, partitions being given up. Waited on
    /// with the core's lock.
    gather_wake: Condvar,
    /// Tests: treat the reply producer as fatally failed at its next use.
    #[cfg(feature = "fault-injection")]
    fail_reply_producer: Arc<AtomicBool>,
}

/// Logs a step of a transaction that took long: over a second (a broker or
/// coordinator moving, or unreachable) as a warning, over 100 ms (a stall that sets
/// the tail latency) at debug level.
fn slow(step: &'static str, started: Instant) {
    let took = started.elapsed();
    if took > Duration::from_secs(1) {
        warn!(
            step,
            took_ms = took.as_millis() as u64,
            "slow transaction step"
        );
    } else if took > Duration::from_millis(100) {
        debug!(
            step,
            took_ms = took.as_millis() as u64,
            "slow transaction step"
        );
    }
}

/// A duration in whole microseconds, for a log field.
fn micros(took: Duration) -> u64 {
    u64::try_from(took.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod dispatch_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde::{Deserialize, Serialize};

    use super::dispatch_table;
    use super::testing::{Counter, CounterError, CounterEvent};
    use crate::command::ProcessorError;
    use crate::{Aggregate, AggregateId, Apply, Command, CommandVisitor, DeclaresCommand, Handle};

    #[test]
    fn the_table_holds_every_declared_command() {
        let table = dispatch_table::<Counter>().unwrap();
        let mut keys: Vec<&str> = table.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["counter.increment"]);
    }

    /// A hand-written aggregate with the trait's defaults: no commands.
    #[derive(Debug, Default, Serialize, Deserialize)]
    struct Silent;

    impl Apply<CounterEvent> for Silent {
        fn apply(&mut self, _: &CounterEvent) {}
    }

    impl Aggregate for Silent {
        const NAME: &'static str = "silent";
        const SNAPSHOT_EVERY: Option<u64> = None;
        const STATE_VERSION: u32 = 1;
        type Event = CounterEvent;
        type Error = CounterError;
    }

    #[test]
    fn an_aggregate_without_commands_has_no_processor() {
        let Err(error) = dispatch_table::<Silent>() else {
            panic!("expected an error");
        };
        assert!(matches!(
            error,
            ProcessorError::Commands {
                aggregate: "silent",
                ..
            }
        ));
        assert!(
            error.to_string().contains("declares no commands"),
            "{error}"
        );
    }

    /// Hand-written aggregates whose declarations disagree: `COMMANDS` names a
    /// command not visited (`DRIFTED`), or one command is visited twice.
    #[derive(Debug, Default, Serialize, Deserialize)]
    struct Drifted<const TWICE: bool>;

    impl<const TWICE: bool> Apply<CounterEvent> for Drifted<TWICE> {
        fn apply(&mut self, _: &CounterEvent) {}
    }

    impl<const TWICE: bool> Aggregate for Drifted<TWICE> {
        const NAME: &'static str = "drifted";
        const SNAPSHOT_EVERY: Option<u64> = None;
        const STATE_VERSION: u32 = 1;
        type Event = CounterEvent;
        type Error = CounterError;
        const COMMANDS: &'static [&'static str] = &["poke", "reset"];

        fn visit_commands<V: CommandVisitor<Self>>(visitor: &mut V) {
            visitor.visit::<Poke<TWICE>>();
            if TWICE {
                visitor.visit::<Poke<TWICE>>();
            }
        }
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Poke<const TWICE: bool>;

    impl<const TWICE: bool> Command for Poke<TWICE> {
        type Aggregate = Drifted<TWICE>;
        const NAME: &'static str = "poke";

        fn aggregate_id(&self) -> AggregateId {
            AggregateId::new("d-1")
        }
    }

    impl<const TWICE: bool> Handle<Poke<TWICE>> for Drifted<TWICE> {
        fn handle(&self, _: Poke<TWICE>) -> Result<Vec<CounterEvent>, CounterError> {
            Ok(vec![])
        }
    }

    impl<const TWICE: bool> DeclaresCommand<Poke<TWICE>> for Drifted<TWICE> {}

    #[test]
    fn commands_and_visits_must_agree() {
        let Err(error) = dispatch_table::<Drifted<false>>() else {
            panic!("expected an error");
        };
        assert!(
            error
                .to_string()
                .contains("`Aggregate::COMMANDS` (poke, reset) does not name the commands"),
            "{error}"
        );
        let Err(error) = dispatch_table::<Drifted<true>>() else {
            panic!("expected an error");
        };
        assert!(
            error
                .to_string()
                .contains("two of its commands have the same name (poke)"),
            "{error}"
        );
    }
}

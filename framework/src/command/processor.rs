//! Command processors: partition-owned single writers with one Kafka transaction per
//! batch.
//!
//! One consumer group per aggregate type reads the commands topic. Owning commands
//! partition `p` means owning every aggregate whose events go to events partition
//! `p`. Each owned partition has its own transactional producer with the
//! transactional id `{prefix}.{aggregate}.processor.{p}`: when a new owner
//! initialises it, the broker fences the previous owner, whose next commit fails —
//! a zombie cannot write (transactional-id fencing, which every Kafka version since
//! 0.11 guarantees).
//!
//! Per batch and partition: begin → for each command: check its id against the seen
//! window, run the handler, produce events (to partition `p`) and the outcome (to the
//! outcomes topic, partition `p`) → `send_offsets_to_transaction` → commit. The
//! replies are sent after the commit, by one non-transactional producer: a caller
//! never hears of an outcome that did not commit. Snapshots are written after the
//! commit.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{Span, debug, error, info, info_span, warn};

use super::dedup::{Seen, SeenWindow};
use super::snapshot::{self, SnapshotJob, SnapshotRow, Written};
use super::topics::{TopicLayout, TopicSettings, ensure_topics};
use super::wire::{self, EventWire, OutcomeWire, ReplyWire};
use crate::aggregate::{Aggregate, AggregateId, Command, Handle};
use crate::codec::EventCodec;
use crate::config::KafkaConfig;
use crate::envelope::{EventEnvelope, Metadata};
use crate::event::DomainEvent;
use crate::kafka::EncodedRecordExt as _;
use crate::kafka::record_ref;
use crate::store::{PgStore, StoreError};
use crate::upcast::{Upcaster, UpcasterError};

/// Tuning of a command processor.
#[derive(Debug, Clone)]
pub struct ProcessorSettings {
    /// Most commands in one transaction (per partition).
    pub max_batch: usize,
    /// How long to keep collecting a batch once the first command arrived. Small,
    /// so that latency stays low under light load; batches grow by themselves
    /// under heavy load because commands queue up while a transaction commits.
    pub batch_linger: Duration,
    /// Consumer group session timeout: how fast a crashed instance's partitions move.
    pub session_timeout: Duration,
    /// A processor that does not poll for this long leaves the group (and is
    /// fenced when it tries to commit).
    pub max_poll_interval: Duration,
    /// Kafka transaction timeout.
    pub transaction_timeout: Duration,
    /// Command ids seen within this window return their original outcome. Kept in
    /// memory per owned partition and rebuilt from the outcomes topic on assignment.
    pub dedup_window: Duration,
    /// Give up restoring a partition after this long.
    pub restore_timeout: Duration,
    /// Snapshot every changed aggregate of a partition (and advance the partition's
    /// restore watermark) every this many events in the partition.
    pub flush_every: u64,
}

impl Default for ProcessorSettings {
    fn default() -> Self {
        Self {
            max_batch: 500,
            batch_linger: Duration::from_millis(2),
            session_timeout: Duration::from_secs(10),
            max_poll_interval: Duration::from_secs(60),
            transaction_timeout: Duration::from_secs(30),
            dedup_window: Duration::from_secs(24 * 3600),
            restore_timeout: Duration::from_secs(600),
            flush_every: 1000,
        }
    }
}

/// Why a processor could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessorError {
    /// The topics are missing and cannot be created, or are misconfigured.
    #[error(transparent)]
    Topics(#[from] super::topics::TopicError),
    /// A Kafka client operation failed.
    #[error("Kafka operation `{operation}` failed: {source}")]
    Kafka {
        /// What was being done.
        operation: &'static str,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// Reading or writing snapshots failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The topic prefix is invalid.
    #[error(transparent)]
    Prefix(#[from] crate::codec::InvalidPrefix),
    /// An upcaster could not be registered.
    #[error(transparent)]
    Upcaster(#[from] UpcasterError),
    /// An event in the events topic cannot be read, so the state of its aggregate —
    /// and of the partition — cannot be rebuilt. Deploy a version that can decode it.
    #[error(
        "cannot restore partition {partition}: event at offset {offset} is unreadable: {reason}"
    )]
    Unreadable {
        /// Events partition.
        partition: i32,
        /// Offset of the event.
        offset: i64,
        /// Why.
        reason: String,
    },
    /// The events partition breaks the one-writer invariant (a gap or a duplicate
    /// sequence): something other than the processor wrote to it.
    #[error(
        "events partition {partition} is inconsistent at offset {offset}: aggregate `{aggregate_id}` is at version {version} but the event has sequence {sequence}"
    )]
    Inconsistent {
        /// Events partition.
        partition: i32,
        /// Offset of the event.
        offset: i64,
        /// The aggregate.
        aggregate_id: String,
        /// Its version before the event.
        version: u64,
        /// The event's sequence.
        sequence: u64,
    },
    /// Restoring a partition did not finish in time.
    #[error(
        "restoring partition {partition} timed out after {waited:?} at offset {position} of {end}"
    )]
    RestoreTimeout {
        /// Events partition.
        partition: i32,
        /// How long it waited.
        waited: Duration,
        /// Where it got to.
        position: i64,
        /// Where it had to get to.
        end: i64,
    },
    /// The partition was revoked while it was being restored.
    #[error("the restore of partition {partition} was cancelled: the partition was revoked")]
    RestoreCancelled {
        /// Events partition.
        partition: i32,
    },
    /// The processor thread panicked or could not be joined.
    #[error("the processor thread ended abnormally: {0}")]
    Thread(String),
}

impl ProcessorError {
    /// Whether retrying later may succeed (broker or database unavailable).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Kafka { .. } | Self::Store(_) | Self::RestoreTimeout { .. }
        )
    }

    /// Whether the error concerns one partition's events only (an unreadable event,
    /// a broken sequence): the processor then quarantines that partition and goes on
    /// serving its others.
    pub fn is_partition_fault(&self) -> bool {
        matches!(self, Self::Unreadable { .. } | Self::Inconsistent { .. })
    }
}

fn kafka(operation: &'static str) -> impl FnOnce(KafkaError) -> ProcessorError {
    move |source| ProcessorError::Kafka { operation, source }
}

/// Counters of one processor instance, readable while it runs.
#[derive(Debug, Default)]
pub struct ProcessorStats {
    /// Commands handled (every outcome, duplicates included).
    pub commands: AtomicU64,
    /// Commands accepted.
    pub accepted: AtomicU64,
    /// Commands rejected by their handler.
    pub rejected: AtomicU64,
    /// Commands that failed (unknown type, undecodable).
    pub failed: AtomicU64,
    /// Commands whose id had been processed before.
    pub duplicates: AtomicU64,
    /// Events written.
    pub events: AtomicU64,
    /// Transactions committed.
    pub transactions: AtomicU64,
    /// Transactions aborted.
    pub aborted: AtomicU64,
    /// Commits refused because another owner fenced this one.
    pub fenced: AtomicU64,
    /// Commits refused because this instance had lost its consumer group membership
    /// (KIP-447 generation fencing).
    pub deposed: AtomicU64,
    /// Transactions abandoned because a Kafka client call hung past the
    /// transaction timeout (their partition was restored with a new producer).
    pub abandoned: AtomicU64,
    /// Partition restores.
    pub restores: AtomicU64,
    /// Event records read while restoring.
    pub restore_records_read: AtomicU64,
    /// Outcome records read while restoring the dedup windows (only those of the
    /// last `dedup_window`, found by timestamp).
    pub restore_outcomes_read: AtomicU64,
    /// Events applied to aggregates while restoring (not covered by a snapshot).
    pub restore_events_applied: AtomicU64,
    /// Wall-clock milliseconds spent restoring partitions, in total.
    pub restore_millis: AtomicU64,
    /// Snapshots handed to the writer.
    pub snapshots: AtomicU64,
    /// Snapshots that could not be read and were discarded.
    pub snapshots_discarded: AtomicU64,
    /// Commands answered "unavailable" because their partition is quarantined.
    pub unavailable: AtomicU64,
    /// Commands that arrived on a partition other than their aggregate id's and
    /// were forwarded to it.
    pub forwarded: AtomicU64,
    /// Reply producers replaced after a fatal error.
    pub reply_producers_replaced: AtomicU64,
    owned: Mutex<Vec<i32>>,
    quarantined: Mutex<Vec<(i32, String)>>,
}

impl ProcessorStats {
    /// Partitions this instance owns now.
    pub fn owned_partitions(&self) -> Vec<i32> {
        lock(&self.owned).clone()
    }

    /// Partitions assigned to this instance whose events it cannot read, with the
    /// reason. It processes none of their commands (their callers get
    /// `GatewayError::PartitionUnavailable`) until the partition is reassigned.
    /// Report it in health checks.
    pub fn quarantined_partitions(&self) -> Vec<(i32, String)> {
        lock(&self.quarantined).clone()
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

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
    /// The batch's events and outcomes are produced inside the open transaction and
    /// acknowledged by the broker (in the log, not yet committed); the consumed
    /// offsets are not yet part of the transaction.
    BeforeOffsets,
    /// The offsets are part of the transaction; `commit_transaction` comes next.
    BeforeCommit,
    /// The transaction committed; its replies are not sent yet.
    AfterCommit,
}

/// Builds and starts the command processor of aggregate type `A`.
///
/// ```no_run
/// # async fn f<A: tributary::Aggregate>(store: tributary::PgStore) -> Result<(), tributary::command::ProcessorError> {
/// # use tributary::{KafkaConfig, command::CommandProcessor};
/// // let processor = CommandProcessor::<Order>::new(KafkaConfig::from_env(), "shop")?
/// //     .handle::<PlaceOrder>()
/// //     .handle::<CancelOrder>()
/// //     .snapshots(store)
/// //     .start()
/// //     .await?;
/// # Ok(()) }
/// ```
pub struct CommandProcessor<A: Aggregate> {
    kafka: KafkaConfig,
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
            .field("prefix", &self.codec.prefix())
            .field("commands", &self.handlers.keys().collect::<Vec<_>>())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate> CommandProcessor<A> {
    /// A processor for topics under `prefix`.
    pub fn new(kafka: KafkaConfig, prefix: &str) -> Result<Self, ProcessorError> {
        Ok(Self {
            kafka,
            codec: EventCodec::new(prefix)?,
            handlers: HashMap::new(),
            store: None,
            settings: ProcessorSettings::default(),
            topics: TopicSettings::default(),
            fault_hook: None,
        })
    }

    /// Handles commands of type `C` with `A`'s [`Handle<C>`] implementation.
    #[must_use]
    pub fn handle<C>(mut self) -> Self
    where
        C: Command<Aggregate = A>,
        A: Handle<C>,
    {
        let decide: DecideFn<A> = Box::new(|state: &A, payload: &[u8]| {
            let command: C = serde_json::from_slice(payload)?;
            Ok(state.handle(command))
        });
        self.handlers
            .insert(format!("{}.{}", A::NAME, C::NAME), decide);
        self
    }

    /// Registers an upcaster for reading old event versions during restore.
    pub fn with_upcaster(mut self, upcaster: Upcaster) -> Result<Self, ProcessorError> {
        self.codec = self.codec.with_upcaster(upcaster)?;
        Ok(self)
    }

    /// Keeps snapshots in `store` (every `A::SNAPSHOT_EVERY` events per aggregate,
    /// every `flush_every` events per partition, and on revocation). Without a
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
        let layout = ensure_topics(&self.kafka, self.codec.prefix(), A::NAME, &self.topics).await?;
        let runtime = tokio::runtime::Handle::current();
        let stats = Arc::new(ProcessorStats::default());
        let (written_tx, written) = std::sync::mpsc::channel();
        let snapshot_tx = self
            .store
            .clone()
            .map(|store| snapshot::spawn_writer(&runtime, store, A::NAME, written_tx));
        let s = &self.settings;
        let group = format!("{}.{}.processor", self.codec.prefix(), A::NAME);
        #[cfg(feature = "fault-injection")]
        let fail_reply_producer = Arc::new(AtomicBool::new(false));
        let outcome_reader: BaseConsumer = self
            .kafka
            .client_config()
            .set("group.id", format!("{group}.outcomes"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            // One record at a time, answered at once (the fetch waits for nothing).
            .set("fetch.wait.max.ms", "5")
            .set("fetch.queue.backoff.ms", "10")
            .set("fetch.error.backoff.ms", "10")
            .create()
            .map_err(kafka("create outcome reader"))?;
        let shared = Arc::new(Shared {
            group: group.clone(),
            layout,
            codec: self.codec,
            handlers: self.handlers,
            store: self.store,
            settings: self.settings.clone(),
            kafka: self.kafka.clone(),
            runtime,
            stats: Arc::clone(&stats),
            fault_hook: self.fault_hook,
            outcome_reader: Mutex::new(outcome_reader),
            #[cfg(feature = "fault-injection")]
            fail_reply_producer: Arc::clone(&fail_reply_producer),
        });
        // Replies are notifications of committed outcomes: sent after the commit by
        // one idempotent, non-transactional producer (see `Core::finish`).
        let reply_producer =
            new_reply_producer(&self.kafka).map_err(kafka("create reply producer"))?;
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
        }));
        let consumer: BaseConsumer<RebalanceContext<A>> = self
            .kafka
            .client_config()
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "range")
            .set(
                "session.timeout.ms",
                s.session_timeout.as_millis().to_string(),
            )
            .set(
                "max.poll.interval.ms",
                s.max_poll_interval.as_millis().to_string(),
            )
            // Latency: librdkafka waits up to 500 ms for fetch.min.bytes by default.
            .set("fetch.wait.max.ms", "5")
            .create_with_context(RebalanceContext {
                core: Arc::clone(&core),
            })
            .map_err(kafka("create consumer"))?;
        consumer
            .subscribe(&[shared.layout.commands.as_str()])
            .map_err(kafka("subscribe"))?;
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

/// A running processor. Dropping it without [`ProcessorHandle::shutdown`] stops it
/// at the next poll without the clean hand-over.
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

    /// Stops at once, as a crash would: no snapshots, no hand-over beyond closing
    /// the consumer. Whatever was not committed is processed again by the next owner.
    pub async fn kill(mut self) {
        self.kill.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
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
    pub async fn shutdown(mut self) -> Result<(), ProcessorError> {
        self.stop.store(true, Ordering::SeqCst);
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|e| ProcessorError::Thread(e.to_string()))?
            .map_err(|_| ProcessorError::Thread("processor thread panicked".into()))?
    }
}

impl Drop for ProcessorHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

struct Shared<A: Aggregate> {
    group: String,
    layout: TopicLayout,
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
    /// Tests: treat the reply producer as fatally failed at its next use.
    #[cfg(feature = "fault-injection")]
    fail_reply_producer: Arc<AtomicBool>,
}

/// One aggregate instance in memory.
struct Slot<A> {
    state: A,
    version: u64,
    /// Version covered by the last snapshot handed to the writer (for the cadence
    /// of per-aggregate snapshots).
    snapshot_version: u64,
    /// Version of the snapshot row the writer confirmed is in Postgres. Until it
    /// equals `version`, the aggregate stays in its partition's `dirty` set, so every
    /// partition flush includes it and no watermark passes it.
    confirmed_version: u64,
    /// Upper bound of the offsets of its events.
    offset_bound: i64,
}

impl<A: Default> Default for Slot<A> {
    fn default() -> Self {
        Self {
            state: A::default(),
            version: 0,
            snapshot_version: 0,
            confirmed_version: 0,
            offset_bound: -1,
        }
    }
}

/// Records the highest offset the producer wrote to its events partition.
struct DeliveryContext {
    events_topic: String,
    max_offset: AtomicI64,
    failed: AtomicBool,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) if message.topic() == self.events_topic => {
                self.max_offset
                    .fetch_max(message.offset(), Ordering::SeqCst);
            }
            Ok(_) => {}
            Err((error, _)) => {
                warn!(%error, "record delivery failed; the transaction will abort");
                self.failed.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// An owned partition: its producer, aggregates and seen command ids.
struct PartitionState<A> {
    producer: BaseProducer<DeliveryContext>,
    aggregates: HashMap<String, Slot<A>>,
    seen: SeenWindow,
    events_since_flush: u64,
    /// Aggregates changed in the open transaction.
    touched: HashSet<String>,
    /// Replies of the open transaction, sent after it commits.
    replies: Vec<PendingReply>,
    /// Aggregates with events not covered by a snapshot.
    dirty: HashSet<String>,
}

struct Core<A: Aggregate> {
    shared: Arc<Shared<A>>,
    partitions: HashMap<i32, PartitionState<A>>,
    snapshot_tx: Option<UnboundedSender<SnapshotJob>>,
    /// The snapshot writer's confirmations.
    written: std::sync::mpsc::Receiver<Written>,
    /// Assigned partitions whose events cannot be read, with the reason.
    quarantined: HashMap<i32, String>,
    /// Partitions being restored on their own thread (paused meanwhile), with the
    /// flag that cancels the restore when the partition is revoked.
    restoring: HashMap<i32, Arc<AtomicBool>>,
    /// Paused partitions whose restore failed for a transient reason, with when to
    /// try again.
    restore_retries: HashMap<i32, Instant>,
    /// Finished restores: partition, its cancel flag (which identifies the restore),
    /// and the restored state.
    restored: (
        std::sync::mpsc::Sender<Restored<A>>,
        std::sync::mpsc::Receiver<Restored<A>>,
    ),
    /// Sends the replies of committed transactions.
    reply_producer: BaseProducer<ReplyContext>,
    fatal: Option<ProcessorError>,
}

/// A finished restore: the partition, the flag of the restore that ran, and its result.
type Restored<A> = (
    i32,
    Arc<AtomicBool>,
    Result<PartitionState<A>, ProcessorError>,
);

/// Logs replies that could not be delivered: their callers time out and resend with
/// the same command id, which the processor answers from its seen ids.
struct ReplyContext;

impl ClientContext for ReplyContext {}

impl ProducerContext for ReplyContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            warn!(%error, "a reply could not be delivered; its caller will time out and resend");
        }
    }
}

/// Command ids decided by a transaction, with their replies.
type NewSeen = Vec<(String, Arc<Vec<u8>>)>;

/// A reply to send once the transaction that decided it has committed.
struct PendingReply {
    reply_partition: i32,
    command_id: String,
    reply: Arc<Vec<u8>>,
    correlation_id: Option<String>,
}

/// The restore consumer asks for end-of-partition events; they are not errors.
struct RestoreContext;

impl ClientContext for RestoreContext {
    fn error(&self, error: KafkaError, reason: &str) {
        crate::kafka::log_client_error("processor restore consumer", error, reason);
    }
}

impl ConsumerContext for RestoreContext {}

struct RebalanceContext<A: Aggregate> {
    core: Arc<Mutex<Core<A>>>,
}

impl<A: Aggregate> ClientContext for RebalanceContext<A> {}

impl<A: Aggregate> ConsumerContext for RebalanceContext<A> {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            lock(&self.core).revoke(&partitions, true);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // Restores run on their own threads; the partitions stay paused until
                // theirs is done. The callback returns at once, so however long a
                // restore takes, this instance keeps polling and stays in the group.
                if let Err(error) = consumer.pause(tpl) {
                    warn!(%error, "cannot pause the assigned partitions");
                }
                let mut core = lock(&self.core);
                for element in tpl.elements() {
                    core.begin_restore(element.partition());
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => warn!(%error, "rebalance error"),
        }
    }
}

fn run<A: Aggregate>(
    consumer: BaseConsumer<RebalanceContext<A>>,
    core: Arc<Mutex<Core<A>>>,
    stop: Arc<AtomicBool>,
    kill: Arc<AtomicBool>,
) -> Result<(), ProcessorError> {
    let (max_batch, linger) = {
        let c = lock(&core);
        (
            c.shared.settings.max_batch.max(1),
            c.shared.settings.batch_linger,
        )
    };
    loop {
        if let Some(error) = lock(&core).fatal.take() {
            return Err(error);
        }
        let resume = {
            let mut c = lock(&core);
            c.confirm_snapshots();
            c.finish_restores()
        };
        if !resume.is_empty() {
            let topic = lock(&core).shared.layout.commands.clone();
            if let Err(error) = consumer.resume(&partition_list(&topic, &resume)) {
                warn!(%error, "cannot resume restored partitions");
            }
        }
        if kill.load(Ordering::SeqCst) {
            warn!("command processor killed");
            let mut c = lock(&core);
            c.partitions.clear();
            for cancel in c.restoring.values() {
                cancel.store(true, Ordering::SeqCst);
            }
            return Ok(());
        }
        if stop.load(Ordering::SeqCst) {
            info!("command processor shutting down");
            let owned: Vec<i32> = {
                let c = lock(&core);
                c.partitions
                    .keys()
                    .chain(c.restoring.keys())
                    .copied()
                    .collect()
            };
            lock(&core).revoke(&owned, true);
            if let Err(error) = lock(&core).reply_producer.flush(Duration::from_secs(5)) {
                warn!(%error, "replies still queued at shutdown; their callers will resend");
            }
            drop(consumer);
            return Ok(());
        }
        // Collect a batch: wait for the first command, then linger briefly.
        let mut batch: Vec<OwnedMessage> = Vec::new();
        let mut deadline: Option<Instant> = None;
        while batch.len() < max_batch {
            let timeout = match deadline {
                None => Duration::from_millis(100),
                Some(d) => d.saturating_duration_since(Instant::now()),
            };
            match consumer.poll(timeout) {
                Some(Ok(message)) => {
                    batch.push(message.detach());
                    deadline.get_or_insert_with(|| Instant::now() + linger);
                }
                Some(Err(error)) => {
                    warn!(%error, "consumer error");
                    break;
                }
                None => break,
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
        }
        if batch.is_empty() {
            continue;
        }
        let Some(metadata) = consumer.group_metadata() else {
            warn!("no consumer group metadata yet; retrying the batch");
            seek_back(&consumer, first_offsets(&batch));
            continue;
        };
        let metadata = Arc::new(metadata);
        let assigned: HashSet<i32> = consumer
            .assignment()
            .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default();
        let mut by_partition: Vec<(i32, Vec<OwnedMessage>)> = Vec::new();
        for message in batch {
            match by_partition
                .iter_mut()
                .find(|(p, _)| *p == message.partition())
            {
                Some((_, messages)) => messages.push(message),
                None => by_partition.push((message.partition(), vec![message])),
            }
        }
        let mut c = lock(&core);
        let mut ready: Vec<(i32, Vec<OwnedMessage>)> = Vec::new();
        let mut rewind: Vec<(String, i32, i64)> = Vec::new();
        let mut pause: Vec<i32> = Vec::new();
        for (partition, messages) in by_partition {
            if !c.partitions.contains_key(&partition) {
                if !assigned.contains(&partition) {
                    continue; // revoked meanwhile; the new owner processes these
                }
                if c.quarantined.contains_key(&partition) {
                    c.answer_unavailable(partition, &messages);
                    continue;
                }
                // No state (a failed transaction dropped it): restore it while the
                // partition waits, paused, with its commands rewound.
                c.begin_restore(partition);
                pause.push(partition);
                rewind.extend(first_offsets(&messages));
                continue;
            }
            ready.push((partition, messages));
        }
        let commands_topic = c.shared.layout.commands.clone();
        for (partition, first_offset, outcome) in c.process_all(ready, &metadata) {
            match outcome {
                Ok(()) => {}
                // Retry: aborted, the partition is restored when its commands come
                // back. Fenced: someone else owns the partition now; its revocation
                // follows. Either way the commands are consumed again.
                Err(BatchFailure::Retry | BatchFailure::Fenced) => {
                    rewind.push((commands_topic.clone(), partition, first_offset));
                }
            }
        }
        drop(c);
        if !pause.is_empty()
            && let Err(error) = consumer.pause(&partition_list(&commands_topic, &pause))
        {
            warn!(%error, "cannot pause partitions being restored");
        }
        if !rewind.is_empty() {
            seek_back(&consumer, rewind);
        }
    }
}

/// A partition list of `partitions` of `topic`.
fn partition_list(topic: &str, partitions: &[i32]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition(topic, p);
    }
    tpl
}

/// `(topic, partition, offset)` of the first message of each partition.
fn first_offsets(messages: &[OwnedMessage]) -> Vec<(String, i32, i64)> {
    messages
        .iter()
        .map(|m| (m.topic().to_owned(), m.partition(), m.offset()))
        .collect()
}

/// Rewinds the consumer to the lowest of the given offsets of each partition, so the
/// messages from there on are consumed again.
fn seek_back<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    positions: impl IntoIterator<Item = (String, i32, i64)>,
) {
    let mut firsts: HashMap<(String, i32), i64> = HashMap::new();
    for (topic, partition, offset) in positions {
        firsts
            .entry((topic, partition))
            .and_modify(|o| *o = (*o).min(offset))
            .or_insert(offset);
    }
    for ((topic, partition), offset) in firsts {
        if let Err(error) = consumer.seek(
            &topic,
            partition,
            Offset::Offset(offset),
            Duration::from_secs(10),
        ) {
            warn!(%error, partition, offset, "seek failed");
        }
    }
}

/// Restores one partition on a thread of its own, so that the processor keeps
/// polling (and stays in the group) however long a restore takes: its own consumers
/// for the events and outcomes partitions, and a flag that says the partition was
/// revoked meanwhile.
struct Restorer<A: Aggregate> {
    shared: Arc<Shared<A>>,
    restore_consumer: BaseConsumer<RestoreContext>,
    /// read_uncommitted, for the end of a partition to restore up to. After
    /// `init_transactions` no transaction of this partition's writer is open, so on
    /// Kafka this equals the last stable offset; the high watermark also serves
    /// brokers that report the LSO as 0 while a transaction is open (Tansu).
    watermark_consumer: BaseConsumer,
    cancel: Arc<AtomicBool>,
}

impl<A: Aggregate> Restorer<A> {
    fn new(shared: Arc<Shared<A>>, cancel: Arc<AtomicBool>) -> Result<Self, ProcessorError> {
        let group = &shared.group;
        let restore_consumer: BaseConsumer<RestoreContext> = shared
            .kafka
            .client_config()
            .set("group.id", format!("{group}.restore"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "10")
            .set("fetch.queue.backoff.ms", "10")
            .set("fetch.error.backoff.ms", "10")
            .set("enable.partition.eof", "true")
            .create_with_context(RestoreContext)
            .map_err(kafka("create restore consumer"))?;
        let watermark_consumer: BaseConsumer = shared
            .kafka
            .client_config()
            .set("group.id", format!("{group}.restore"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_uncommitted")
            .create()
            .map_err(kafka("create watermark consumer"))?;
        Ok(Self {
            shared,
            restore_consumer,
            watermark_consumer,
            cancel,
        })
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.shared.runtime.block_on(future)
    }

    fn check_cancelled(&self, partition: i32) -> Result<(), ProcessorError> {
        if self.cancel.load(Ordering::SeqCst) {
            return Err(ProcessorError::RestoreCancelled { partition });
        }
        Ok(())
    }

    /// Takes ownership of `partition`: fences its previous writer, then rebuilds its
    /// aggregates from snapshots and the events after them, and its seen command ids
    /// from the outcomes topic.
    fn restore(&self, partition: i32) -> Result<PartitionState<A>, ProcessorError> {
        let span = info_span!("restore", aggregate = A::NAME, partition);
        let _enter = span.enter();
        let started = Instant::now();
        let shared = Arc::clone(&self.shared);
        let settings = &shared.settings;
        let producer: BaseProducer<DeliveryContext> = shared
            .kafka
            .client_config()
            .set("transactional.id", format!("{}.{partition}", shared.group))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set(
                "transaction.timeout.ms",
                settings.transaction_timeout.as_millis().to_string(),
            )
            .set(
                "message.timeout.ms",
                settings.transaction_timeout.as_millis().to_string(),
            )
            .create_with_context(DeliveryContext {
                events_topic: shared.layout.events.clone(),
                max_offset: AtomicI64::new(-1),
                failed: AtomicBool::new(false),
            })
            .map_err(kafka("create transactional producer"))?;
        // Fences the previous owner and completes or aborts its open transaction;
        // not if the partition was revoked meanwhile (it would fence the new owner).
        self.check_cancelled(partition)?;
        let step = Instant::now();
        producer
            .init_transactions(settings.transaction_timeout)
            .map_err(kafka("init transactions"))?;
        slow("init transactions", step);
        let fenced_ms = step.elapsed().as_millis() as u64;

        let step = Instant::now();
        let (aggregates, read, applied) = self.restore_aggregates(partition, false)?;
        let events_ms = step.elapsed().as_millis() as u64;
        let step = Instant::now();
        let seen = self.restore_seen(partition)?;
        let outcomes_ms = step.elapsed().as_millis() as u64;
        let max_offset = aggregates
            .values()
            .map(|s| s.offset_bound)
            .max()
            .unwrap_or(-1);
        producer
            .context()
            .max_offset
            .store(max_offset, Ordering::SeqCst);
        info!(
            aggregates = aggregates.len(),
            events_read = read,
            events_applied = applied,
            seen_commands = seen.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            fenced_ms,
            events_ms,
            outcomes_ms,
            "partition restored"
        );
        ProcessorStats::add(&shared.stats.restores, 1);
        ProcessorStats::add(
            &shared.stats.restore_millis,
            started.elapsed().as_millis() as u64,
        );
        Ok(PartitionState {
            dirty: aggregates
                .iter()
                .filter(|(_, s)| s.version > s.confirmed_version)
                .map(|(id, _)| id.clone())
                .collect(),
            producer,
            aggregates,
            seen,
            events_since_flush: 0,
            touched: HashSet::new(),
            replies: Vec::new(),
        })
    }

    #[allow(clippy::type_complexity)]
    fn restore_aggregates(
        &self,
        partition: i32,
        full: bool,
    ) -> Result<(HashMap<String, Slot<A>>, u64, u64), ProcessorError> {
        let shared = Arc::clone(&self.shared);
        let mut aggregates: HashMap<String, Slot<A>> = HashMap::new();
        let mut start = 0;
        if let Some(store) = &shared.store {
            let snapshots = self.block_on(snapshot::load_partition(store, A::NAME, partition))?;
            let mut broken = false;
            for row in snapshots.rows {
                let state = if row.state_version == A::STATE_VERSION as i32 {
                    serde_json::from_value::<A>(row.state).map_err(|e| e.to_string())
                } else {
                    Err(format!(
                        "state version {} differs from the current {}",
                        row.state_version,
                        A::STATE_VERSION
                    ))
                };
                match state {
                    Ok(state) => {
                        let version = u64::try_from(row.version).unwrap_or(0);
                        aggregates.insert(
                            row.aggregate_id,
                            Slot {
                                state,
                                version,
                                snapshot_version: version,
                                confirmed_version: version,
                                offset_bound: row.events_offset,
                            },
                        );
                    }
                    Err(reason) => {
                        warn!(aggregate_id = %row.aggregate_id, %reason,
                            "discarding an unreadable snapshot; rebuilding the aggregate from its events");
                        ProcessorStats::add(&shared.stats.snapshots_discarded, 1);
                        self.block_on(snapshot::discard(
                            store,
                            A::NAME,
                            partition,
                            &row.aggregate_id,
                        ))?;
                        broken = true;
                    }
                }
            }
            if !broken
                && !full
                && let Some(w) = snapshots.watermark
            {
                start = w + 1;
            }
        }
        let topic = shared.layout.events.clone();
        let (low, high) = crate::kafka::watermarks_within(
            &self.watermark_consumer,
            &topic,
            partition,
            Duration::from_secs(30),
        )
        .map_err(kafka("fetch events watermarks"))?;
        let start = start.max(low);
        let (mut read, mut applied) = (0u64, 0u64);
        let mut gap = None;
        self.read_range(&topic, partition, start, high, |message| {
            read += 1;
            let envelope = shared.codec.decode(&record_ref(message)).map_err(|e| {
                ProcessorError::Unreadable {
                    partition,
                    offset: message.offset(),
                    reason: e.to_string(),
                }
            })?;
            let slot = aggregates
                .entry(envelope.aggregate_id.into_string())
                .or_default();
            slot.offset_bound = slot.offset_bound.max(message.offset());
            if envelope.sequence <= slot.snapshot_version {
                return Ok(()); // covered by the snapshot
            }
            if envelope.sequence != slot.version + 1 {
                gap.get_or_insert((message.offset(), slot.version, envelope.sequence));
                return Ok(());
            }
            slot.state.apply(&envelope.event);
            slot.version = envelope.sequence;
            applied += 1;
            Ok(())
        })?;
        ProcessorStats::add(&shared.stats.restore_records_read, read);
        ProcessorStats::add(&shared.stats.restore_events_applied, applied);
        if let Some((offset, version, sequence)) = gap {
            if start > low && !full {
                // Snapshot rows were deleted under a watermark: read everything.
                warn!(
                    partition,
                    offset, "snapshots do not cover the partition; replaying it from the start"
                );
                return self.restore_aggregates(partition, true);
            }
            let aggregate_id = aggregates
                .iter()
                .find(|(_, s)| s.version == version)
                .map(|(id, _)| id.clone())
                .unwrap_or_default();
            return Err(ProcessorError::Inconsistent {
                partition,
                offset,
                aggregate_id,
                version,
                sequence,
            });
        }
        Ok((aggregates, read, applied))
    }

    /// The dedup window of a partition, from its outcomes: only the records of the
    /// last `dedup_window` are read (found by timestamp), and each is kept as its
    /// offset, so restore time and memory do not grow with older history.
    fn restore_seen(&self, partition: i32) -> Result<SeenWindow, ProcessorError> {
        let topic = self.shared.layout.outcomes.clone();
        let window = self.shared.settings.dedup_window;
        let since = SystemTime::now()
            .checked_sub(window)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let (low, high) = crate::kafka::watermarks_within(
            &self.watermark_consumer,
            &topic,
            partition,
            Duration::from_secs(30),
        )
        .map_err(kafka("fetch outcomes watermarks"))?;
        // Start a little before the window, in case the clocks of earlier owners
        // were behind; the timestamps filter exactly below.
        let lookup = since
            .checked_sub(OUTCOME_CLOCK_MARGIN.min(window / 10))
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let start = match self.offset_at(&topic, partition, lookup) {
            Ok(Some(offset)) => offset.clamp(low, high),
            // "No record at or after the time": true on Kafka when the whole
            // partition is older than the window, but some brokers (librdkafka's
            // mock cluster) answer so for every lookup by time. Believe it only if the
            // last record is older; otherwise read everything, as a restore must
            // never miss an outcome of the window.
            Ok(None)
                if high > low
                    && !self.last_record_before(&topic, partition, low, high, lookup)? =>
            {
                warn!(
                    partition,
                    "the broker cannot look up outcomes by time; reading the whole outcomes partition"
                );
                low
            }
            Ok(None) => high,
            Err(error) => {
                warn!(%error, partition, "cannot look up outcomes by time; reading the whole outcomes partition");
                low
            }
        };
        let mut seen = SeenWindow::default();
        ProcessorStats::add(
            &self.shared.stats.restore_outcomes_read,
            u64::try_from(high - start).unwrap_or(0),
        );
        self.read_range(&topic, partition, start, high, |message| {
            let time = message
                .timestamp()
                .to_millis()
                .and_then(|ms| u64::try_from(ms).ok())
                .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
                .unwrap_or_else(SystemTime::now);
            if time < since {
                return Ok(());
            }
            let Some(payload) = message.payload() else { return Ok(()) };
            match serde_json::from_slice::<wire::ReplyId<'_>>(payload) {
                Ok(reply) => seen.insert(&reply.command_id, time, Seen::Outcome(message.offset())),
                Err(error) => warn!(%error, offset = message.offset(), "skipping an unreadable outcome record"),
            }
            Ok(())
        })?;
        Ok(seen)
    }

    /// Whether the newest record before `high` is older than `limit_ms` (epoch ms).
    fn last_record_before(
        &self,
        topic: &str,
        partition: i32,
        low: i64,
        high: i64,
        limit_ms: i64,
    ) -> Result<bool, ProcessorError> {
        // The last offsets are transaction markers, which are no records: look at the
        // last few offsets and take the newest record among them.
        let mut newest = None;
        self.read_range(topic, partition, (high - 16).max(low), high, |message| {
            newest = newest.max(message.timestamp().to_millis());
            Ok(())
        })?;
        // No record among them: of unknown age; read them all.
        Ok(newest.is_some_and(|ms| ms < limit_ms))
    }

    /// The first offset of `topic`/`partition` with a timestamp at or after `ms`
    /// (epoch ms); `None` when every record is older.
    fn offset_at(
        &self,
        topic: &str,
        partition: i32,
        ms: i64,
    ) -> Result<Option<i64>, ProcessorError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(ms))
            .map_err(kafka("look up outcomes by time"))?;
        let found = self
            .watermark_consumer
            .offsets_for_times(tpl, Duration::from_secs(30))
            .map_err(kafka("look up outcomes by time"))?;
        Ok(found
            .find_partition(topic, partition)
            .and_then(|e| e.offset().to_raw())
            .filter(|o| *o >= 0))
    }

    /// Reads `[start, end)` of a partition with read_committed, calling `f` per record.
    fn read_range(
        &self,
        topic: &str,
        partition: i32,
        start: i64,
        end: i64,
        mut f: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> Result<(), ProcessorError>,
    ) -> Result<(), ProcessorError> {
        let consumer = &self.restore_consumer;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(start))
            .map_err(kafka("assign restore partition"))?;
        consumer
            .assign(&tpl)
            .map_err(kafka("assign restore partition"))?;
        let started = Instant::now();
        let mut position = start;
        // Read up to the high watermark taken before. After `init_transactions` no
        // transaction of this partition's only writer is open, so every record below
        // the mark is decided. (Waiting for the end-of-partition signal as well cost
        // 0.4-1 s per read on Kafka; it only served brokers that under-report the
        // mark, such as Tansu, where a restore may therefore stop early.)
        let result = loop {
            if position >= end {
                break Ok(());
            }
            if let Err(cancelled) = self.check_cancelled(partition) {
                break Err(cancelled);
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    position = message.offset() + 1;
                    if let Err(e) = f(&message) {
                        break Err(e);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    if let Ok(Some(p)) = consumer.position().map(|tpl| {
                        tpl.find_partition(topic, partition)
                            .and_then(|e| e.offset().to_raw())
                    }) {
                        position = position.max(p);
                    }
                }
                Some(Err(error)) => warn!(%error, "restore consumer error"),
                None => {
                    // Transaction markers take offsets but are not delivered.
                    if let Ok(Some(p)) = consumer.position().map(|tpl| {
                        tpl.find_partition(topic, partition)
                            .and_then(|e| e.offset().to_raw())
                    }) {
                        position = position.max(p);
                    }
                }
            }
            if started.elapsed() > self.shared.settings.restore_timeout {
                break Err(ProcessorError::RestoreTimeout {
                    partition,
                    waited: started.elapsed(),
                    position,
                    end,
                });
            }
        };
        let _ = consumer.unassign();
        result
    }
}

enum BatchFailure {
    /// The transaction aborted; state was rebuilt; consume the batch again.
    Retry,
    /// Another owner fenced this one.
    Fenced,
}

impl<A: Aggregate> Core<A> {
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.shared.runtime.block_on(future)
    }

    /// Starts restoring `partition` on a thread of its own (unless it is already
    /// being restored). The partition must be paused until [`Core::finish_restores`]
    /// hands it back.
    fn begin_restore(&mut self, partition: i32) {
        if self.restoring.contains_key(&partition) {
            return;
        }
        self.partitions.remove(&partition);
        self.restore_retries.remove(&partition);
        let cancel = Arc::new(AtomicBool::new(false));
        self.restoring.insert(partition, Arc::clone(&cancel));
        let (shared, done) = (Arc::clone(&self.shared), self.restored.0.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("tributary-restore-{partition}"))
            .spawn(move || {
                let result = Restorer::new(shared, Arc::clone(&cancel))
                    .and_then(|restorer| restorer.restore(partition));
                let _ = done.send((partition, cancel, result));
            });
        if let Err(error) = spawned {
            error!(%error, partition, "cannot start a restore thread; retrying in 1 s");
            self.restoring.remove(&partition);
            self.restore_retries
                .insert(partition, Instant::now() + Duration::from_secs(1));
        }
    }

    /// Takes in the finished restores and starts the retries that are due. Returns
    /// the partitions to resume: restored, or quarantined (their commands are
    /// answered `unavailable`).
    fn finish_restores(&mut self) -> Vec<i32> {
        let mut resume = Vec::new();
        while let Ok((partition, cancel, result)) = self.restored.1.try_recv() {
            match self.restoring.get(&partition) {
                Some(current) if Arc::ptr_eq(current, &cancel) => {
                    self.restoring.remove(&partition);
                }
                _ => continue, // revoked meanwhile, or superseded
            }
            match result {
                Ok(state) => {
                    self.partitions.insert(partition, state);
                    lock(&self.shared.stats.owned).push(partition);
                    resume.push(partition);
                }
                Err(error) if error.is_partition_fault() => {
                    self.quarantine(partition, &error);
                    resume.push(partition);
                }
                Err(error) if error.is_transient() => {
                    warn!(%error, partition, "restore failed; retrying in 1 s");
                    self.restore_retries
                        .insert(partition, Instant::now() + Duration::from_secs(1));
                }
                Err(error) => {
                    error!(%error, partition, "restore failed; the processor stops");
                    self.fatal.get_or_insert(error);
                }
            }
        }
        let now = Instant::now();
        let due: Vec<i32> = self
            .restore_retries
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(p, _)| *p)
            .collect();
        for partition in due {
            self.begin_restore(partition);
        }
        resume
    }

    /// Applies the snapshot writer's confirmations: an aggregate whose row is
    /// confirmed at its current version is no longer dirty.
    fn confirm_snapshots(&mut self) {
        while let Ok(written) = self.written.try_recv() {
            let Some(part) = self.partitions.get_mut(&written.partition) else {
                continue;
            };
            for (id, version) in written.confirmed {
                let Some(slot) = part.aggregates.get_mut(&id) else {
                    continue;
                };
                slot.confirmed_version = slot.confirmed_version.max(version);
                if slot.confirmed_version >= slot.version {
                    part.dirty.remove(&id);
                }
            }
        }
    }

    /// Hands every aggregate not yet confirmed at its current version to the writer,
    /// with the partition's new watermark, in one Postgres transaction; waits for
    /// the write if `wait`.
    fn flush(&mut self, partition: i32, wait: bool) {
        let Some(tx) = self.snapshot_tx.clone() else {
            return;
        };
        self.confirm_snapshots();
        let Some(part) = self.partitions.get_mut(&partition) else {
            return;
        };
        let watermark = part.producer.context().max_offset.load(Ordering::SeqCst);
        let mut rows = Vec::new();
        for id in &part.dirty {
            let Some(slot) = part.aggregates.get(id) else {
                continue;
            };
            match snapshot_row(id, slot) {
                Some(row) => rows.push(row),
                None => return, // cannot cover every aggregate: keep the old watermark
            }
        }
        // They stay dirty until the writer confirms the rows: a failed write leaves
        // them in the next flush, and its watermark is not written either (one
        // Postgres transaction).
        for id in &part.dirty {
            if let Some(slot) = part.aggregates.get_mut(id) {
                slot.snapshot_version = slot.version;
            }
        }
        part.events_since_flush = 0;
        ProcessorStats::add(&self.shared.stats.snapshots, rows.len() as u64);
        let (done, wait_for) = if wait {
            let (s, r) = tokio::sync::oneshot::channel();
            (Some(s), Some(r))
        } else {
            (None, None)
        };
        let job = SnapshotJob {
            partition,
            rows,
            watermark: (watermark >= 0).then_some(watermark),
            done,
        };
        if tx.send(job).is_err() {
            warn!(partition, "snapshot writer is gone");
            return;
        }
        if let Some(r) = wait_for {
            match self.block_on(async { tokio::time::timeout(Duration::from_secs(30), r).await }) {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => warn!(%error, partition, "snapshots on revoke failed"),
                _ => warn!(partition, "snapshots on revoke did not finish in 30 s"),
            }
        }
    }

    /// Stops processing `partition`, whose events cannot be read: it stays assigned
    /// (the group would hand it straight back), its commands are answered
    /// "unavailable" and not consumed for good, and the rest of the instance goes on.
    /// A rebalance clears the quarantine, so a newer instance that can read the
    /// partition takes it over in a rolling deploy.
    fn quarantine(&mut self, partition: i32, error: &ProcessorError) {
        error!(%error, partition,
            "cannot read this partition's events: its commands are answered `unavailable` until it is reassigned; the other partitions go on");
        self.partitions.remove(&partition);
        let reason = error.to_string();
        lock(&self.shared.stats.owned).retain(|p| *p != partition);
        let mut quarantined = lock(&self.shared.stats.quarantined);
        quarantined.retain(|(p, _)| *p != partition);
        quarantined.push((partition, reason.clone()));
        drop(quarantined);
        self.quarantined.insert(partition, reason);
    }

    /// Answers the commands of a quarantined partition with an `unavailable` reply.
    /// Nothing is recorded and no offset is committed: whoever owns the partition
    /// next processes them.
    fn answer_unavailable(&mut self, partition: i32, messages: &[OwnedMessage]) {
        let Some(reason) = self.quarantined.get(&partition).cloned() else {
            return;
        };
        for message in messages {
            let record = record_ref(message);
            let Ok(command) = wire::decode_command(&record) else {
                continue;
            };
            ProcessorStats::add(&self.shared.stats.unavailable, 1);
            let Some(reply_partition) = command.reply_partition else {
                continue;
            };
            let reply = ReplyWire {
                command_id: command.command_id.to_owned(),
                outcome: OutcomeWire::Unavailable {
                    partition,
                    reason: reason.clone(),
                },
            };
            let Ok(bytes) = serde_json::to_vec(&reply) else {
                continue;
            };
            let shared = Arc::clone(&self.shared);
            if let Err(error) = send(
                self.reply_producer(),
                &shared.layout.replies,
                reply_partition,
                command.command_id.as_bytes(),
                &bytes,
                command.correlation_id,
            ) {
                warn!(%error, command_id = command.command_id, "cannot send an `unavailable` reply");
            }
        }
        self.reply_producer.poll(Duration::ZERO);
    }

    /// The reply producer, replaced by a new one first if it hit a fatal error (an
    /// idempotent producer that did refuses every later send, so every caller would
    /// time out until a restart).
    fn reply_producer(&mut self) -> &BaseProducer<ReplyContext> {
        #[cfg(feature = "fault-injection")]
        let injected = self
            .shared
            .fail_reply_producer
            .swap(false, Ordering::SeqCst);
        #[cfg(not(feature = "fault-injection"))]
        let injected = false;
        let fatal = self
            .reply_producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code:?}: {reason}"))
            .or_else(|| injected.then(|| "injected by a test".to_owned()));
        if let Some(reason) = fatal {
            match new_reply_producer(&self.shared.kafka) {
                Ok(producer) => {
                    error!(
                        reason,
                        "the reply producer hit a fatal error; replaced it with a new one"
                    );
                    ProcessorStats::add(&self.shared.stats.reply_producers_replaced, 1);
                    // Its queued replies are lost: their callers time out and resend.
                    drop(std::mem::replace(&mut self.reply_producer, producer));
                }
                Err(error) => {
                    error!(reason, %error, "the reply producer hit a fatal error and a new one cannot be created");
                }
            }
        }
        &self.reply_producer
    }

    /// Gives up partitions: snapshots them (if `snapshot`) and drops their state.
    fn revoke(&mut self, partitions: &[i32], snapshot: bool) {
        for &p in partitions {
            if let Some(cancel) = self.restoring.remove(&p) {
                cancel.store(true, Ordering::SeqCst);
            }
            self.restore_retries.remove(&p);
            if self.quarantined.remove(&p).is_some() {
                info!(partition = p, "quarantined partition revoked");
            }
            if snapshot {
                self.flush(p, true);
            }
            if self.partitions.remove(&p).is_some() {
                info!(partition = p, "partition revoked");
            }
        }
        lock(&self.shared.stats.owned).retain(|p| !partitions.contains(p));
        lock(&self.shared.stats.quarantined).retain(|(p, _)| !partitions.contains(p));
    }

    /// Processes the batches of several partitions, each in its own transaction, and
    /// returns each partition's outcome with the offset of its first command.
    ///
    /// Partitions are independent (own producer, own transactional id, own
    /// aggregates), so their transactions run on parallel threads: a transaction
    /// costs a few broker round trips however small it is, and running them one
    /// after the other would add those up for every partition of the batch.
    ///
    /// A transaction that has not finished when its timeout has passed (plus a
    /// margin) is abandoned: its thread keeps the producer until the client call
    /// returns, and the partition is restored with a new producer, whose
    /// initialisation fences the old one. librdkafka's `send_offsets_to_transaction`
    /// can block past its timeout while the group coordinator fails over
    /// (librdkafka issues 5456 and 5511); without this, one partition's hung call
    /// would stop every partition of this instance.
    fn process_all(
        &mut self,
        work: Vec<(i32, Vec<OwnedMessage>)>,
        metadata: &Arc<ConsumerGroupMetadata>,
    ) -> Vec<(i32, i64, Result<(), BatchFailure>)> {
        type Done<A> = (
            i32,
            PartitionState<A>,
            std::thread::Result<KafkaResult<NewSeen>>,
        );
        let (done_tx, done_rx) = std::sync::mpsc::channel::<Done<A>>();
        let mut running: HashMap<i32, i64> = HashMap::new();
        let mut out = Vec::with_capacity(work.len());
        for (partition, messages) in work {
            let first = messages.first().map_or(0, Message::offset);
            let Some(mut part) = self.partitions.remove(&partition) else {
                out.push((partition, first, Err(BatchFailure::Retry)));
                continue;
            };
            let (shared, metadata, done) = (
                Arc::clone(&self.shared),
                Arc::clone(metadata),
                done_tx.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("tributary-txn-{partition}"))
                .spawn(move || {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        transact(&shared, partition, &mut part, &messages, &metadata)
                    }));
                    // Nobody listens any more if this transaction was abandoned.
                    let _ = done.send((partition, part, result));
                });
            match spawned {
                Ok(_) => {
                    running.insert(partition, first);
                }
                Err(error) => {
                    error!(%error, partition, "cannot start a transaction thread; retrying the batch");
                    lock(&self.shared.stats.owned).retain(|p| *p != partition);
                    out.push((partition, first, Err(BatchFailure::Retry)));
                }
            }
        }
        drop(done_tx);
        let deadline =
            Instant::now() + self.shared.settings.transaction_timeout + Duration::from_secs(5);
        while !running.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match done_rx.recv_timeout(left) {
                Ok((partition, part, result)) => {
                    let first = running.remove(&partition).unwrap_or_default();
                    let result = result.unwrap_or_else(|_| {
                        // A panicking handler: a failed transaction (aborted,
                        // partition restored, commands retried).
                        error!(
                            partition,
                            "a command handler panicked; the batch is retried"
                        );
                        Err(KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::Fail,
                        ))
                    });
                    self.partitions.insert(partition, part);
                    out.push((partition, first, self.finish(partition, result)));
                }
                Err(_) => {
                    for (partition, first) in running.drain() {
                        error!(
                            partition,
                            "a Kafka client call of this partition's transaction hung past the transaction timeout; abandoning its producer and restoring the partition"
                        );
                        ProcessorStats::add(&self.shared.stats.abandoned, 1);
                        lock(&self.shared.stats.owned).retain(|p| *p != partition);
                        out.push((partition, first, Err(BatchFailure::Retry)));
                    }
                }
            }
        }
        out
    }

    /// After a partition's transaction: on success, send its replies, remember its
    /// command ids and snapshot; on failure, abort and drop the partition (or just
    /// drop it when fenced).
    fn finish(&mut self, partition: i32, result: KafkaResult<NewSeen>) -> Result<(), BatchFailure> {
        let shared = Arc::clone(&self.shared);
        let Some(part) = self.partitions.get_mut(&partition) else {
            return Err(BatchFailure::Retry);
        };
        match result {
            Ok(new_seen) => {
                ProcessorStats::add(&shared.stats.transactions, 1);
                if let Some(hook) = &shared.fault_hook {
                    hook(FaultPoint::AfterCommit, partition);
                }
                let now = SystemTime::now();
                for (id, reply) in new_seen {
                    part.seen.insert(&id, now, Seen::Reply(reply));
                }
                let horizon = now
                    .checked_sub(shared.settings.dedup_window)
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                part.seen.expire(horizon);
                // Only now, with the outcomes committed, do the callers hear of them.
                let replies: Vec<PendingReply> = part.replies.drain(..).collect();
                let reply_producer = self.reply_producer();
                for r in replies {
                    if let Err(error) = send(
                        reply_producer,
                        &shared.layout.replies,
                        r.reply_partition,
                        r.command_id.as_bytes(),
                        &r.reply,
                        r.correlation_id.as_deref(),
                    ) {
                        warn!(%error, command_id = r.command_id, "cannot send a reply; its caller will time out and resend");
                    }
                }
                self.reply_producer.poll(Duration::ZERO);
                self.after_commit(partition);
                Ok(())
            }
            Err(error) => {
                use rdkafka::types::RDKafkaErrorCode as Code;
                let code = error.rdkafka_error_code();
                let fenced = matches!(&error, KafkaError::Transaction(e) if e.is_fatal())
                    || code.is_some_and(|c| {
                        matches!(
                            c,
                            Code::Fenced | Code::ProducerFenced | Code::InvalidProducerEpoch
                        )
                    });
                // KIP-447: the group coordinator refused the offsets because this
                // member is no longer in the group (or in an older generation).
                let deposed = code.is_some_and(|c| {
                    matches!(
                        c,
                        Code::UnknownMemberId | Code::IllegalGeneration | Code::FencedInstanceId
                    )
                });
                if fenced {
                    error!(%error, partition, "commit refused: another processor owns this partition now; dropping it");
                    ProcessorStats::add(&shared.stats.fenced, 1);
                } else if deposed {
                    error!(%error, partition,
                        "commit refused: this instance lost its consumer group membership; aborting and dropping the partition");
                    ProcessorStats::add(&shared.stats.deposed, 1);
                    let step = Instant::now();
                    let _ = part.producer.abort_transaction(ABORT_TIMEOUT);
                    slow("abort", step);
                    ProcessorStats::add(&shared.stats.aborted, 1);
                } else {
                    warn!(%error, partition, "transaction failed; aborting it and restoring the partition");
                    let step = Instant::now();
                    let _ = part.producer.abort_transaction(ABORT_TIMEOUT);
                    slow("abort", step);
                    ProcessorStats::add(&shared.stats.aborted, 1);
                }
                // The in-memory state saw the events of the failed transaction: drop
                // it. The partition is restored when its commands are consumed again,
                // if it is still (or again) assigned to this instance then.
                self.partitions.remove(&partition);
                lock(&shared.stats.owned).retain(|p| *p != partition);
                Err(if fenced || deposed {
                    BatchFailure::Fenced
                } else {
                    BatchFailure::Retry
                })
            }
        }
    }

    fn after_commit(&mut self, partition: i32) {
        let Some(part) = self.partitions.get_mut(&partition) else {
            return;
        };
        // Every event of this transaction is at or before the highest delivered offset.
        let bound = part.producer.context().max_offset.load(Ordering::SeqCst);
        let touched: Vec<String> = part.touched.drain().collect();
        for id in &touched {
            if let Some(slot) = part.aggregates.get_mut(id) {
                slot.offset_bound = bound;
            }
        }
        let (Some(every), Some(tx)) = (
            A::SNAPSHOT_EVERY.filter(|n| *n > 0),
            self.snapshot_tx.clone(),
        ) else {
            return;
        };
        if part.events_since_flush >= self.shared.settings.flush_every {
            self.flush(partition, false);
            return;
        }
        let mut rows = Vec::new();
        for id in touched {
            let Some(slot) = part.aggregates.get_mut(&id) else {
                continue;
            };
            if slot.version / every > slot.snapshot_version / every
                && let Some(row) = snapshot_row(&id, slot)
            {
                rows.push(row);
                // Still dirty: it leaves the set when the writer confirms the row.
                slot.snapshot_version = slot.version;
            }
        }
        if !rows.is_empty() {
            ProcessorStats::add(&self.shared.stats.snapshots, rows.len() as u64);
            let _ = tx.send(SnapshotJob {
                partition,
                rows,
                watermark: None,
                done: None,
            });
        }
    }
}

fn snapshot_row<A: Aggregate>(id: &str, slot: &Slot<A>) -> Option<SnapshotRow> {
    match serde_json::to_value(&slot.state) {
        Ok(state) => Some(SnapshotRow {
            aggregate_id: id.to_owned(),
            version: i64::try_from(slot.version).ok()?,
            events_offset: slot.offset_bound,
            state,
            state_version: A::STATE_VERSION as i32,
        }),
        Err(error) => {
            warn!(%error, aggregate_id = id, "aggregate state does not serialize; no snapshot");
            None
        }
    }
}

/// One partition's batch in one transaction: begin → decide every command →
/// offsets → commit. Replies are collected in `part.replies` and sent by
/// [`Core::finish`] once the commit succeeded.
fn transact<A: Aggregate>(
    shared: &Shared<A>,
    partition: i32,
    part: &mut PartitionState<A>,
    messages: &[OwnedMessage],
    metadata: &ConsumerGroupMetadata,
) -> KafkaResult<NewSeen> {
    let first = messages.first().map_or(-1, Message::offset);
    let last = messages.last().map_or(-1, Message::offset);
    let span = info_span!(
        "command_batch",
        aggregate = A::NAME,
        partition,
        commands = messages.len(),
        first_offset = first,
        last_offset = last
    );
    let _enter = span.enter();
    let timeout = shared.settings.transaction_timeout;
    let fault = |point| {
        if let Some(hook) = &shared.fault_hook {
            hook(point, partition);
        }
    };
    fault(FaultPoint::BeforeTransaction);
    part.replies.clear();
    let step = Instant::now();
    part.producer.begin_transaction()?;
    part.producer
        .context()
        .failed
        .store(false, Ordering::SeqCst);
    let mut new_seen: NewSeen = Vec::new();
    for message in messages {
        if let Some(entry) = handle_one(shared, partition, part, &new_seen, message)? {
            new_seen.push(entry);
        }
    }
    if shared.fault_hook.is_some() {
        // Only under test: the records reach the log before the hook runs.
        drain_deliveries(&part.producer, timeout);
        fault(FaultPoint::BeforeOffsets);
    }
    slow("produce", step);
    let mut offsets = TopicPartitionList::new();
    offsets.add_partition_offset(&shared.layout.commands, partition, Offset::Offset(last + 1))?;
    let step = Instant::now();
    part.producer
        .send_offsets_to_transaction(&offsets, metadata, timeout)?;
    drain_deliveries(&part.producer, timeout);
    slow("send offsets", step);
    fault(FaultPoint::BeforeCommit);
    let step = Instant::now();
    part.producer.commit_transaction(timeout)?;
    slow("commit", step);
    Ok(new_seen)
}

/// The idempotent, non-transactional producer of replies.
fn new_reply_producer(kafka: &KafkaConfig) -> KafkaResult<BaseProducer<ReplyContext>> {
    kafka
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .create_with_context(ReplyContext)
}

/// How long to wait for an abort before giving up on it. The abort is a courtesy
/// that frees readers sooner: the partition's state is dropped either way, and
/// whoever restores the partition next (this instance or another) initialises its
/// transactional id, which aborts whatever is still open. Waiting longer would only
/// keep this instance from polling while a broker or coordinator is away.
const ABORT_TIMEOUT: Duration = Duration::from_secs(5);

/// How far (at most; a tenth of the window if less) before the dedup window a
/// restore starts reading outcomes, for owners whose clocks were behind.
const OUTCOME_CLOCK_MARGIN: Duration = Duration::from_secs(300);

/// Reads the outcome record at `offset` of the partition's outcomes, to answer a
/// resend of a command decided before this instance restored the partition.
fn read_outcome<A: Aggregate>(
    shared: &Shared<A>,
    partition: i32,
    offset: i64,
) -> KafkaResult<Arc<Vec<u8>>> {
    let consumer = lock(&shared.outcome_reader);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&shared.layout.outcomes, partition, Offset::Offset(offset))?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(20)) {
            Some(Ok(message)) if message.offset() == offset => {
                return Ok(Arc::new(message.payload().unwrap_or_default().to_vec()));
            }
            Some(Ok(message)) if message.offset() > offset => break,
            _ => {}
        }
    }
    warn!(
        partition,
        offset, "cannot read the outcome of a resent command; retrying the batch"
    );
    Err(KafkaError::MessageConsumption(
        rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
    ))
}

/// Logs a step of a transaction that took long: a broker or coordinator moving, or
/// unreachable.
fn slow(step: &'static str, started: Instant) {
    let took = started.elapsed();
    if took > Duration::from_secs(1) {
        warn!(
            step,
            took_ms = took.as_millis() as u64,
            "slow transaction step"
        );
    }
}

/// Handles one command inside the open transaction. Returns the new seen entry.
fn handle_one<A: Aggregate>(
    shared: &Shared<A>,
    partition: i32,
    part: &mut PartitionState<A>,
    batch_seen: &[(String, Arc<Vec<u8>>)],
    message: &OwnedMessage,
) -> KafkaResult<Option<(String, Arc<Vec<u8>>)>> {
    let record = record_ref(message);
    let command = match wire::decode_command(&record) {
        Ok(c) => c,
        Err(error) => {
            error!(%error, partition, offset = message.offset(),
                "skipping a command record nobody can be answered for");
            ProcessorStats::add(&shared.stats.failed, 1);
            return Ok(None);
        }
    };
    let span = info_span!(
        "command",
        command_id = command.command_id,
        aggregate_id = command.aggregate_id,
        command_type = command.command_type,
        partition,
        offset = message.offset(),
        version = tracing::field::Empty,
        outcome = tracing::field::Empty
    );
    let _enter = span.enter();

    // One writer per aggregate rests on every command of an aggregate reaching the
    // partition its id maps to. A producer with another partitioner (or none: a null
    // key) can put it elsewhere; applying it here would make this instance a second
    // writer of that aggregate. Forward it, inside this transaction, to the partition
    // whose owner writes the aggregate.
    let home = wire::partition_for(command.aggregate_id.as_bytes(), shared.layout.partitions);
    if home != partition {
        warn!(
            home,
            "command on the wrong commands partition (the producer does not use Kafka's default partitioner); forwarding it"
        );
        Span::current().record("outcome", "forwarded");
        ProcessorStats::add(&shared.stats.forwarded, 1);
        forward(shared, part, message, command.aggregate_id, home)?;
        return Ok(None);
    }
    ProcessorStats::add(&shared.stats.commands, 1);

    let earlier = match part.seen.get(command.command_id) {
        Some(Seen::Reply(reply)) => Some(Arc::clone(reply)),
        Some(Seen::Outcome(offset)) => {
            let offset = *offset;
            Some(read_outcome(shared, partition, offset)?)
        }
        None => batch_seen
            .iter()
            .find(|(id, _)| id == command.command_id)
            .map(|(_, r)| Arc::clone(r)),
    };
    if let Some(reply) = earlier {
        ProcessorStats::add(&shared.stats.duplicates, 1);
        Span::current().record("outcome", "duplicate");
        debug!("command id seen before; replying with the original outcome");
        if let Some(rp) = command.reply_partition {
            part.replies.push(PendingReply {
                reply_partition: rp,
                command_id: command.command_id.to_owned(),
                reply,
                correlation_id: command.correlation_id.map(str::to_owned),
            });
        }
        return Ok(None);
    }

    let outcome = decide(shared, partition, part, &command)?;
    Span::current().record(
        "outcome",
        match &outcome {
            OutcomeWire::Accepted { .. } => "accepted",
            OutcomeWire::Rejected { .. } => "rejected",
            OutcomeWire::Failed { .. } => "failed",
            OutcomeWire::Unavailable { .. } => "unavailable",
        },
    );
    let reply = ReplyWire {
        command_id: command.command_id.to_owned(),
        outcome,
    };
    let bytes = match serde_json::to_vec(&reply) {
        Ok(b) => Arc::new(b),
        Err(error) => {
            error!(%error, "cannot serialize a reply");
            return Ok(None);
        }
    };
    send(
        &part.producer,
        &shared.layout.outcomes,
        partition,
        command.aggregate_id.as_bytes(),
        &bytes,
        command.correlation_id,
    )?;
    if let Some(rp) = command.reply_partition {
        part.replies.push(PendingReply {
            reply_partition: rp,
            command_id: command.command_id.to_owned(),
            reply: Arc::clone(&bytes),
            correlation_id: command.correlation_id.map(str::to_owned),
        });
    }
    Ok(Some((command.command_id.to_owned(), bytes)))
}

fn decide<A: Aggregate>(
    shared: &Shared<A>,
    partition: i32,
    part: &mut PartitionState<A>,
    command: &wire::IncomingCommand<'_>,
) -> KafkaResult<OutcomeWire> {
    let Some(handler) = shared.handlers.get(command.command_type) else {
        ProcessorStats::add(&shared.stats.failed, 1);
        let mut known: Vec<&str> = shared.handlers.keys().map(String::as_str).collect();
        known.sort_unstable();
        return Ok(OutcomeWire::Failed {
            reason: format!(
                "unknown command type `{}`; this processor handles: {}",
                command.command_type,
                known.join(", ")
            ),
        });
    };
    let slot = part
        .aggregates
        .entry(command.aggregate_id.to_owned())
        .or_default();
    let events = match handler(&slot.state, command.payload) {
        Err(error) => {
            ProcessorStats::add(&shared.stats.failed, 1);
            return Ok(OutcomeWire::Failed {
                reason: format!("cannot deserialize `{}`: {error}", command.command_type),
            });
        }
        Ok(Err(domain_error)) => {
            ProcessorStats::add(&shared.stats.rejected, 1);
            return Ok(match serde_json::to_value(&domain_error) {
                Ok(error) => OutcomeWire::Rejected { error },
                Err(e) => OutcomeWire::Failed {
                    reason: format!(
                        "rejected with `{domain_error}`, which does not serialize: {e}"
                    ),
                },
            });
        }
        Ok(Ok(events)) => events,
    };
    // Encode everything before touching the state, so a failure changes nothing.
    let metadata = Metadata {
        causation_id: Some(command.command_id.to_owned()),
        correlation_id: Some(
            command
                .correlation_id
                .unwrap_or(command.command_id)
                .to_owned(),
        ),
        traceparent: command.traceparent.map(str::to_owned),
    };
    let count = events.len() as u64;
    let mut envelopes = Vec::with_capacity(events.len());
    let mut encoded = Vec::with_capacity(events.len());
    let mut wires = Vec::with_capacity(events.len());
    for (i, event) in events.into_iter().enumerate() {
        let envelope = EventEnvelope {
            id: uuid::Uuid::now_v7(),
            aggregate_id: AggregateId::new(command.aggregate_id),
            sequence: slot.version + 1 + i as u64,
            time: chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6),
            metadata: metadata.clone(),
            event,
        };
        let encoded_pair = shared
            .codec
            .encode(&envelope)
            .map_err(|e| e.to_string())
            .and_then(|record| {
                envelope
                    .event
                    .to_payload()
                    .map(|data| (record, data))
                    .map_err(|e| e.to_string())
            });
        let (record, data) = match encoded_pair {
            Ok(pair) => pair,
            Err(error) => {
                ProcessorStats::add(&shared.stats.failed, 1);
                return Ok(OutcomeWire::Failed {
                    reason: format!("cannot encode the events: {error}"),
                });
            }
        };
        wires.push(EventWire {
            id: envelope.id,
            sequence: envelope.sequence,
            ce_type: envelope.event.event_type().ce_type.to_owned(),
            time: envelope.time,
            data,
        });
        encoded.push(record);
        envelopes.push(envelope);
    }
    // A record over the size limit would fail the whole transaction, and the batch
    // would be retried for ever: refuse the command instead, before anything of it
    // is written. The outcome record carries every event's data, so it can be over
    // the limit even when each event is not.
    if let Some(reason) = oversized(&encoded, command.command_id, shared.layout.max_record_bytes) {
        ProcessorStats::add(&shared.stats.failed, 1);
        return Ok(OutcomeWire::Failed { reason });
    }
    for record in &encoded {
        let base = BaseRecord::to(&shared.layout.events)
            .partition(partition)
            .key(record.key.as_slice())
            .payload(record.value.as_slice())
            .headers(record.owned_headers());
        crate::kafka::send_retrying(&part.producer, base)?;
    }
    for envelope in &envelopes {
        slot.state.apply(&envelope.event);
    }
    slot.version += count;
    let version = slot.version;
    if count > 0 {
        part.touched.insert(command.aggregate_id.to_owned());
        part.dirty.insert(command.aggregate_id.to_owned());
    }
    part.events_since_flush += count;
    ProcessorStats::add(&shared.stats.accepted, 1);
    ProcessorStats::add(&shared.stats.events, count);
    Span::current().record("version", version);
    Ok(OutcomeWire::Accepted {
        version,
        events: wires,
    })
}

/// Writes a command record, unchanged but keyed by its aggregate id, to the commands
/// partition `home`, inside the open transaction.
fn forward<A: Aggregate>(
    shared: &Shared<A>,
    part: &PartitionState<A>,
    message: &OwnedMessage,
    aggregate_id: &str,
    home: i32,
) -> KafkaResult<()> {
    use rdkafka::message::Headers;
    let headers = message
        .headers()
        .map_or_else(rdkafka::message::OwnedHeaders::new, |h| {
            h.iter().fold(
                rdkafka::message::OwnedHeaders::new_with_capacity(h.count()),
                |acc, header| acc.insert(header),
            )
        });
    let record = BaseRecord::to(&shared.layout.commands)
        .partition(home)
        .key(aggregate_id.as_bytes())
        .payload(message.payload().unwrap_or_default())
        .headers(headers);
    crate::kafka::send_retrying(&part.producer, record)
}

/// Why a command's records would not fit Kafka's record size limit, if they would
/// not: an event record over `limit`, or the outcome (which carries every event's
/// data) over it.
fn oversized(
    events: &[crate::codec::EncodedRecord],
    command_id: &str,
    limit: usize,
) -> Option<String> {
    if let Some((i, size)) = events
        .iter()
        .map(crate::codec::EncodedRecord::size_estimate)
        .enumerate()
        .find(|(_, size)| *size > limit)
    {
        return Some(format!(
            "event {} of {} would be a {size}-byte record, over Kafka's record size limit of {limit} bytes \
             (the smallest of the client's message.max.bytes and the topics' max.message.bytes); nothing was written",
            i + 1,
            events.len()
        ));
    }
    // The outcome: `{"command_id":…,"outcome":"accepted","version":…,"events":[{"id":…,
    // "sequence":…,"type":…,"time":…,"data":…}, …]}`, with the outcomes topic's
    // record framing.
    const OUTCOME_OVERHEAD: usize = 200;
    const PER_EVENT_OVERHEAD: usize = 200;
    let outcome = OUTCOME_OVERHEAD
        + command_id.len()
        + events
            .iter()
            .map(|e| e.value.len() + e.key.len() + PER_EVENT_OVERHEAD)
            .sum::<usize>();
    (outcome > limit).then(|| {
        format!(
            "the outcome of its {} events (about {outcome} bytes: it carries every event's data) would be over \
             Kafka's record size limit of {limit} bytes (the smallest of the client's message.max.bytes and the \
             topics' max.message.bytes); nothing was written",
            events.len()
        )
    })
}

/// Serves delivery reports until nothing is in flight. rdkafka's own flush (which
/// `commit_transaction` runs first) polls in 100 ms steps and so adds up to 100 ms
/// to every commit; polling in 1 ms steps keeps commit latency at the broker's.
fn drain_deliveries(producer: &BaseProducer<DeliveryContext>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        producer.poll(Duration::from_millis(1));
    }
}

fn send<C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &BaseProducer<C>,
    topic: &str,
    partition: i32,
    key: &[u8],
    value: &[u8],
    correlation_id: Option<&str>,
) -> KafkaResult<()> {
    let mut headers = rdkafka::message::OwnedHeaders::new();
    if let Some(id) = correlation_id {
        headers = headers.insert(rdkafka::message::Header {
            key: crate::codec::headers::CORRELATION_ID,
            value: Some(id),
        });
    }
    let record = BaseRecord::to(topic)
        .partition(partition)
        .key(key)
        .payload(value)
        .headers(headers);
    crate::kafka::send_retrying(producer, record)
}

//! The owned partitions of a processor: their in-memory state, the restores that
//! produce it, quarantine, revocation and the `unavailable` answers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::message::OwnedMessage;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{error, info, warn};

use crate::Aggregate;
use crate::command::dedup::SeenWindow;
use crate::command::snapshot::{SnapshotJob, Written};
use crate::command::wire::{self, OutcomeWire, ReplyWire};
use crate::kafka::record_ref;

use super::cache::Recency;
use super::contexts::ReplyContext;
use super::error::ProcessorError;
use super::producer::{TxProducers, new_reply_producer, send, serve_ready};
use super::restore::Restorer;
use super::stats::ProcessorStats;
use super::{Shared, lock};

/// One aggregate instance in memory.
pub(super) struct Slot<A> {
    pub(super) state: A,
    pub(super) version: u64,
    /// Version covered by the last snapshot handed to the writer (for the cadence
    /// of per-aggregate snapshots).
    pub(super) snapshot_version: u64,
    /// Version of the snapshot row the writer confirmed is in Postgres. Until it
    /// equals `version`, the aggregate stays in its partition's `dirty` set, so every
    /// partition flush includes it and no watermark passes it.
    pub(super) confirmed_version: u64,
    /// Upper bound of the offsets of its events.
    pub(super) offset_bound: i64,
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

/// An owned partition: its producers, aggregates and seen command ids.
pub(super) struct PartitionState<A> {
    pub(super) producers: TxProducers,
    pub(super) aggregates: HashMap<String, Slot<A>>,
    pub(super) seen: SeenWindow,
    pub(super) events_since_flush: u64,
    /// Aggregates changed in the open transaction.
    pub(super) touched: HashSet<String>,
    /// Replies of the open transaction, sent after it commits.
    pub(super) replies: Vec<PendingReply>,
    /// Aggregates with events not covered by a snapshot.
    pub(super) dirty: HashSet<String>,
    /// The order in which the aggregates in memory were last used.
    pub(super) recency: Recency,
    /// Whether every aggregate of the partition is in memory. When not (some were
    /// evicted, or the partition was restored lazily), an aggregate missing from
    /// memory is looked up among the snapshot rows before it counts as new.
    pub(super) complete: bool,
    /// The offset of the next command to decide: the position of the last committed
    /// transaction, from its outcome records (-1 when not known: the outcomes
    /// predate positions or expired, and the consumer group's offset stands).
    /// Commands below it were decided already and are skipped: the consumer group's
    /// offset, where consumption starts after an assignment, may lag behind it.
    pub(super) consumed: i64,
}

pub(super) struct Core<A: Aggregate> {
    pub(super) shared: Arc<Shared<A>>,
    pub(super) partitions: HashMap<i32, PartitionState<A>>,
    pub(super) snapshot_tx: Option<UnboundedSender<SnapshotJob>>,
    /// The snapshot writer's confirmations.
    pub(super) written: std::sync::mpsc::Receiver<Written>,
    /// Assigned partitions whose events cannot be read, with the reason.
    pub(super) quarantined: HashMap<i32, String>,
    /// Partitions being restored on their own thread (paused meanwhile), with the
    /// flag that cancels the restore when the partition is revoked.
    pub(super) restoring: HashMap<i32, Arc<AtomicBool>>,
    /// Paused partitions whose restore failed for a transient reason, with when to
    /// try again.
    pub(super) restore_retries: HashMap<i32, Instant>,
    /// Finished restores: partition, its cancel flag (which identifies the restore),
    /// and the restored state.
    pub(super) restored: (
        std::sync::mpsc::Sender<Restored<A>>,
        std::sync::mpsc::Receiver<Restored<A>>,
    ),
    /// Sends the replies of committed transactions.
    pub(super) reply_producer: BaseProducer<ReplyContext>,
    pub(super) fatal: Option<ProcessorError>,
    /// Partitions whose transactions run on a thread of their own right now. Their
    /// state is with that thread, not in `partitions` (see `commit`).
    pub(super) inflight: HashMap<i32, Inflight>,
    /// Commands of busy and waiting partitions, polled while their transaction ran
    /// or while they waited, in log order: the partition's next batch.
    pub(super) held: HashMap<i32, VecDeque<OwnedMessage>>,
    /// Partitions with commands held and no transaction running, because
    /// `max_transactions_at_once` are running: first come, first started. Their
    /// state is in `partitions`.
    pub(super) waiting: VecDeque<i32>,
    /// Partitions whose commands must be consumed again from the given offset (a
    /// transaction failed or was abandoned). The poll loop seeks them back.
    pub(super) rewinds: Vec<(i32, i64)>,
    /// Positions to commit to the consumer group, by partition: they follow the
    /// committed transactions (and restores) outside them, at most every
    /// `POSITION_COMMIT_INTERVAL`, for the tools that read a group's offsets and as
    /// the start after an assignment. The position that counts is in the outcomes.
    pub(super) positions: HashMap<i32, i64>,
    /// Snapshot confirmations of busy partitions, applied once their state is back.
    pub(super) deferred: Vec<Written>,
    /// Numbers the partition threads, so that a thread whose partition was given up
    /// meanwhile (abandoned, revoked, killed) knows that its state is stale.
    pub(super) next_ticket: u64,
}

/// A partition's running transaction, as the poll loop sees it.
pub(super) struct Inflight {
    /// Identifies the thread that runs the partition's transactions.
    pub(super) ticket: u64,
    /// Offset of the first command of the running transaction.
    pub(super) first: i64,
    /// When the running transaction began.
    pub(super) since: Instant,
    /// Aggregates the partition held in memory when it left `partitions`.
    pub(super) cached: usize,
    /// The partition is being given up (revoked, or the processor is stopping; set
    /// by `quiesce`): after its commit the thread does not wait for more commands
    /// (`ProcessorSettings::gather_after_commit`).
    pub(super) releasing: bool,
}

/// A finished restore: the partition, the flag of the restore that ran, and its result.
pub(super) type Restored<A> = (
    i32,
    Arc<AtomicBool>,
    Result<PartitionState<A>, ProcessorError>,
);

/// Command ids decided by a transaction, with their replies.
pub(super) type NewSeen = Vec<(String, Arc<Vec<u8>>)>;

/// A reply to send once the transaction that decided it has committed.
pub(super) struct PendingReply {
    pub(super) reply_partition: i32,
    /// The sending gateway's id in its process, if it said ([`wire::GATEWAY`]).
    pub(super) gateway: Option<String>,
    pub(super) command_id: String,
    pub(super) reply: Arc<Vec<u8>>,
    pub(super) correlation_id: Option<String>,
}

impl<A: Aggregate> Core<A> {
    pub(super) fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.shared.runtime.block_on(future)
    }

    /// Starts restoring `partition` on a thread of its own (unless it is already
    /// being restored). The partition must be paused until [`Core::finish_restores`]
    /// hands it back.
    pub(super) fn begin_restore(&mut self, partition: i32) {
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
    pub(super) fn finish_restores(&mut self) -> Vec<i32> {
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
                    if state.consumed >= 0 {
                        self.positions.insert(partition, state.consumed);
                    }
                    self.partitions.insert(partition, state);
                    lock(&self.shared.stats.owned).push(partition);
                    resume.push(partition);
                    self.count_cached();
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

    /// Stops processing `partition`, whose events cannot be read: it stays assigned
    /// (the group would hand it straight back), its commands are answered
    /// "unavailable" and not consumed for good, and the rest of the instance goes on.
    /// A rebalance clears the quarantine, so a newer instance that can read the
    /// partition takes it over in a rolling deploy.
    pub(super) fn quarantine(&mut self, partition: i32, error: &ProcessorError) {
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
    pub(super) fn answer_unavailable(&mut self, partition: i32, messages: &[OwnedMessage]) {
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
        serve_ready(&self.reply_producer);
    }

    /// The reply producer, replaced by a new one first if it hit a fatal error (an
    /// idempotent producer that did refuses every later send, so every caller would
    /// time out until a restart).
    pub(super) fn reply_producer(&mut self) -> &BaseProducer<ReplyContext> {
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

    /// Takes the positions to commit to the consumer group (of `only` these
    /// partitions, or all), as offsets of the commands topic.
    pub(super) fn take_positions(&mut self, only: Option<&[i32]>) -> TopicPartitionList {
        let topic = &self.shared.layout.commands;
        let mut taken = TopicPartitionList::new();
        self.positions.retain(|p, offset| {
            let take = only.is_none_or(|only| only.contains(p));
            if take
                && let Err(error) = taken.add_partition_offset(topic, *p, Offset::Offset(*offset))
            {
                warn!(%error, partition = p, "cannot list a position to commit");
            }
            !take
        });
        taken
    }

    /// Gives up partitions: snapshots them (if `snapshot`) and drops their state.
    pub(super) fn revoke(&mut self, partitions: &[i32], snapshot: bool) {
        for &p in partitions {
            if let Some(cancel) = self.restoring.remove(&p) {
                cancel.store(true, Ordering::SeqCst);
            }
            self.restore_retries.remove(&p);
            if self.quarantined.remove(&p).is_some() {
                info!(partition = p, "quarantined partition revoked");
            }
            // A thread still running the partition's transaction (its wait was
            // given up) drops its state when it sees its ticket gone.
            self.inflight.remove(&p);
            self.drop_held(p);
            self.rewinds.retain(|(q, _)| *q != p);
            self.positions.remove(&p);
            if snapshot {
                self.flush(p, true);
            }
            if self.partitions.remove(&p).is_some() {
                info!(partition = p, "partition revoked");
            }
        }
        lock(&self.shared.stats.owned).retain(|p| !partitions.contains(p));
        lock(&self.shared.stats.quarantined).retain(|(p, _)| !partitions.contains(p));
        self.count_cached();
    }
}

//! Running each busy partition's transactions on a thread of its own, one after the
//! other, and settling each: after a commit the replies, the dedup entries and the
//! snapshots; after a failure the abort, the dropped partition and the rewind.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::Producer;
use tracing::{debug, error, warn};

use crate::Aggregate;
use crate::command::dedup::Seen;
use crate::command::local;

use super::batch;
use super::partitions::{Core, Inflight, NewSeen, PartitionState, PendingReply};
use super::producer::{send, serve_ready};
use super::settings::ProcessorSettings;
use super::stats::ProcessorStats;
use super::transaction::transact;
use super::{FaultPoint, lock, micros, slow};

/// Why a partition's transaction did not commit.
pub(super) enum TxFailure {
    /// A Kafka client call failed (including a commit the broker refused).
    Kafka(KafkaError),
    /// A command handler panicked on the transaction's thread.
    HandlerPanicked,
    /// Aggregates of the batch could not be loaded from their snapshot rows (no
    /// transaction was begun; the partition's state is untouched).
    Load,
}

impl From<KafkaError> for TxFailure {
    fn from(error: KafkaError) -> Self {
        Self::Kafka(error)
    }
}

pub(super) enum BatchFailure {
    /// The transaction aborted; state was rebuilt; consume the batch again.
    Retry,
    /// Another owner fenced this one.
    Fenced,
}

/// How long to wait for an abort before giving up on it. The abort is a courtesy
/// that frees readers sooner: the partition's state is dropped either way, and
/// whoever restores the partition next (this instance or another) initialises its
/// transactional id, which aborts whatever is still open. Waiting longer would only
/// keep this instance from polling while a broker or coordinator is away.
pub(super) const ABORT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a partition's transaction may run before it is abandoned: its timeout
/// plus a margin.
fn hang_limit(settings: &ProcessorSettings) -> Duration {
    settings.transaction_timeout + Duration::from_secs(5)
}

impl<A: Aggregate> Core<A> {
    /// Starts `partition`'s transaction of `messages` (see [`Self::dispatch`]) when
    /// fewer than `max_transactions_at_once` run; otherwise holds the commands and
    /// queues the partition, to start when a running partition finishes.
    pub(super) fn start_or_wait(
        &mut self,
        core: &Arc<Mutex<Core<A>>>,
        partition: i32,
        messages: Vec<OwnedMessage>,
    ) {
        if self.inflight.len() < self.shared.settings.max_transactions_at_once {
            self.dispatch(core, partition, messages);
        } else {
            self.held.entry(partition).or_default().extend(messages);
            self.waiting.push_back(partition);
            // A gathering partition gives its slot up to this one.
            self.shared.gather_wake.notify_all();
        }
    }

    /// Starts the waiting partitions, longest waiting first, while fewer than
    /// `max_transactions_at_once` run.
    pub(super) fn start_waiting(&mut self, core: &Arc<Mutex<Core<A>>>) {
        while self.inflight.len() < self.shared.settings.max_transactions_at_once {
            let Some(partition) = self.waiting.pop_front() else {
                return;
            };
            let messages = self.next_batch(partition);
            if !messages.is_empty() {
                self.dispatch(core, partition, messages);
            }
        }
    }

    /// The oldest commands `partition` holds, up to `max_batch`: its next batch.
    fn next_batch(&mut self, partition: i32) -> Vec<OwnedMessage> {
        let max_batch = self.shared.settings.max_batch.max(1);
        self.held
            .get_mut(&partition)
            .map(|held| batch::take(held, max_batch))
            .unwrap_or_default()
    }

    /// Starts `partition`'s transaction of `messages` on a thread of its own, and
    /// returns at once: the poll loop goes on polling and starting the other
    /// partitions' transactions meanwhile.
    ///
    /// Partitions are independent (own producers, own transactional ids, own
    /// aggregates), and a transaction costs a few broker round trips however small
    /// it is. Waiting for one partition's transaction before starting another's
    /// would make every command wait for the slowest partition of its batch; here a
    /// command waits only for its own partition's running transaction. The
    /// partition's commands polled meanwhile are held in log order, and its thread
    /// takes them as its next batch (see [`drive`]).
    pub(super) fn dispatch(
        &mut self,
        core: &Arc<Mutex<Core<A>>>,
        partition: i32,
        mut messages: Vec<OwnedMessage>,
    ) {
        let first = messages.first().map_or(0, Message::offset);
        let Some(part) = self.partitions.remove(&partition) else {
            self.rewinds.push((partition, first));
            return;
        };
        let dropped = batch::drop_decided(&mut messages, part.consumed, Message::offset);
        if dropped > 0 {
            debug!(
                partition,
                dropped,
                consumed = part.consumed,
                "skipping commands that the outcomes show decided (the group's offset lagged)"
            );
        }
        let Some(first) = messages.first().map(Message::offset) else {
            self.partitions.insert(partition, part);
            return;
        };
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        self.inflight.insert(
            partition,
            Inflight {
                ticket,
                first,
                since: Instant::now(),
                cached: part.aggregates.len(),
                releasing: false,
            },
        );
        let core = Arc::clone(core);
        let spawned = std::thread::Builder::new()
            .name(format!("tributary-txn-{partition}"))
            .spawn(move || drive(&core, partition, ticket, part, messages));
        if let Err(error) = spawned {
            // The partition's state went with the thread that did not start.
            error!(%error, partition, "cannot start a transaction thread; restoring the partition");
            lock(&self.shared.stats.owned).retain(|p| *p != partition);
            self.leave_busy(partition, first);
        }
    }

    /// `partition` is no longer busy and its commands are consumed again from
    /// `rewind_to` on: its thread (if any) drops its state when it sees its ticket
    /// gone, and what it held is dropped.
    fn leave_busy(&mut self, partition: i32, rewind_to: i64) {
        self.inflight.remove(&partition);
        self.drop_held(partition);
        self.rewinds.push((partition, rewind_to));
        self.shared.gather_wake.notify_all();
    }

    /// Drops the commands `partition` holds, and with them its place among the
    /// waiting partitions (a partition waits only with commands held).
    pub(super) fn drop_held(&mut self, partition: i32) {
        self.held.remove(&partition);
        self.waiting.retain(|p| *p != partition);
    }

    /// Gives up the transactions that have not finished when their timeout has
    /// passed (plus a margin): each one's thread keeps its producer until the client
    /// call returns, and the partition is restored with new producers, whose
    /// initialisation fences the old ones. A librdkafka transaction call can block
    /// past its timeout while a coordinator fails over (librdkafka issues 5456 and
    /// 5511, for `send_offsets_to_transaction`, which the processor no longer
    /// calls); the other partitions go on meanwhile.
    pub(super) fn abandon_overdue(&mut self) {
        let limit = hang_limit(&self.shared.settings);
        let overdue: Vec<(i32, i64)> = self
            .inflight
            .iter()
            .filter(|(_, f)| f.since.elapsed() > limit)
            .map(|(p, f)| (*p, f.first))
            .collect();
        for (partition, first) in overdue {
            error!(
                partition,
                "a Kafka client call of this partition's transaction hung past the transaction timeout; abandoning its producer and restoring the partition"
            );
            ProcessorStats::add(&self.shared.stats.abandoned, 1);
            lock(&self.shared.stats.owned).retain(|p| *p != partition);
            self.leave_busy(partition, first);
        }
    }

    /// Whether the thread with `ticket` still runs `partition`'s transactions: not
    /// abandoned past its timeout, revoked or killed meanwhile (otherwise its state
    /// is stale, and so is the outcome of its transaction).
    fn runs(&self, partition: i32, ticket: u64) -> bool {
        self.inflight
            .get(&partition)
            .is_some_and(|f| f.ticket == ticket)
    }

    /// After a partition's transaction: on success, send its replies, remember its
    /// command ids and snapshot; on failure, abort and drop the partition (or just
    /// drop it when fenced).
    pub(super) fn finish(
        &mut self,
        partition: i32,
        result: Result<NewSeen, TxFailure>,
    ) -> Result<(), BatchFailure> {
        let shared = Arc::clone(&self.shared);
        let Some(part) = self.partitions.get_mut(&partition) else {
            return Err(BatchFailure::Retry);
        };
        match result {
            Ok(new_seen) => {
                ProcessorStats::add(&shared.stats.transactions, 1);
                let consumed = part.consumed;
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
                    if let Some(waiter) = r
                        .gateway
                        .as_deref()
                        .and_then(|g| local::waiter(g, &r.command_id))
                    {
                        // Counted before the caller can see it, so that a caller
                        // that reads the counters after its outcome finds it there.
                        ProcessorStats::add(&shared.stats.replies_in_process, 1);
                        local::hand_over(waiter, &r.reply);
                        continue;
                    }
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
                serve_ready(&self.reply_producer);
                self.positions.insert(partition, consumed);
                self.after_commit(partition);
                Ok(())
            }
            Err(failure) => {
                let failure = match failure {
                    // Nothing was begun or changed: keep the partition, consume the
                    // batch again.
                    TxFailure::Load => return Err(BatchFailure::Retry),
                    TxFailure::HandlerPanicked => {
                        abort(part, &shared.stats);
                        BatchFailure::Retry
                    }
                    TxFailure::Kafka(error) => refused(&error, partition, part, &shared.stats),
                };
                // The in-memory state saw the events of the failed transaction: drop
                // it. The partition is restored when its commands are consumed again,
                // if it is still (or again) assigned to this instance then.
                self.partitions.remove(&partition);
                lock(&shared.stats.owned).retain(|p| *p != partition);
                Err(failure)
            }
        }
    }
}

/// The thread of a busy partition: runs its transaction, settles it under the
/// lock, and goes on with the commands held meanwhile until none are left. On a
/// failure it drops what is held and has the poll loop rewind to the failed
/// batch's first command.
fn drive<A: Aggregate>(
    core: &Arc<Mutex<Core<A>>>,
    partition: i32,
    ticket: u64,
    mut part: PartitionState<A>,
    mut messages: Vec<OwnedMessage>,
) {
    let shared = Arc::clone(&lock(core).shared);
    loop {
        let first = messages.first().map_or(0, Message::offset);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            transact(&shared, partition, &mut part, &messages)
        }))
        .unwrap_or_else(|_| {
            // A panicking handler fails the transaction (aborted, the partition
            // restored, its commands retried).
            error!(
                partition,
                "a command handler panicked; the batch is retried"
            );
            Err(TxFailure::HandlerPanicked)
        });
        let mut c = lock(core);
        if !c.runs(partition, ticket) {
            // Abandoned past its timeout, revoked, or the processor was killed: this
            // state is stale, and so is the outcome (nobody hears of it).
            return;
        }
        c.partitions.insert(partition, part);
        c.confirm_snapshots();
        if c.finish(partition, result).is_err() {
            c.leave_busy(partition, first);
            c.start_waiting(core);
            return;
        }
        let gather = c.shared.settings.gather_after_commit;
        if !gather.is_zero() {
            if let Some(f) = c.inflight.get_mut(&partition) {
                // The hang limit counts from here, not from the committed batch.
                f.since = Instant::now();
            }
            c = gather_answered(c, partition, ticket, messages.len(), gather);
            if !c.runs(partition, ticket) {
                return;
            }
        }
        let more = c.held.get(&partition).is_some_and(|held| !held.is_empty());
        if !more || !c.waiting.is_empty() {
            // Done, or other partitions wait for a slot: this one takes its turn
            // again after them with what it holds.
            c.inflight.remove(&partition);
            if more {
                c.waiting.push_back(partition);
            }
            c.start_waiting(core);
            c.count_cached();
            return;
        }
        let next = c.next_batch(partition);
        let next_first = next.first().map_or(first, Message::offset);
        let Some(state) = c.partitions.remove(&partition) else {
            // Not reached: `finish` keeps the state of a committed transaction.
            c.leave_busy(partition, next_first);
            return;
        };
        part = state;
        if let Some(f) = c.inflight.get_mut(&partition) {
            f.first = next_first;
            f.since = Instant::now();
            f.cached = part.aggregates.len();
        }
        messages = next;
    }
}

/// The longest a partition gathering its answered callers' commands sleeps before
/// it looks at what it holds again. It is woken sooner when that changes
/// (`Shared::gather_wake`); this bounds what a change without a wake-up can cost.
const GATHER_LOOK_MAX: Duration = Duration::from_millis(1);

/// How many commands a partition gathers after a commit before it starts its next
/// batch (`ProcessorSettings::gather_after_commit`): those it held at the commit and
/// one for each command of the committed batch, the next of each answered caller in
/// a closed loop; at most a batch.
pub(super) fn gather_target(held: usize, answered: usize, max_batch: usize) -> usize {
    held.saturating_add(answered).min(max_batch)
}

/// Why a partition stopped gathering after its commit ([`gather_answered`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum GatherEnd {
    /// It holds the commands it gathered for.
    Target,
    /// Another partition waits for a transaction slot.
    SlotWanted,
    /// It is no longer this thread's, or it is being given up.
    Released,
    /// `gather_after_commit` passed.
    Deadline,
}

impl GatherEnd {
    fn as_str(self) -> &'static str {
        match self {
            Self::Target => "target",
            Self::SlotWanted => "slot_wanted",
            Self::Released => "released",
            Self::Deadline => "deadline",
        }
    }
}

/// Whether a gathering partition stops, and why: a partition given up stops first,
/// then one that holds its target, then one whose slot another partition wants,
/// then one whose time is up.
pub(super) fn gather_end(
    held: usize,
    target: usize,
    slot_wanted: bool,
    kept: bool,
    left: Duration,
) -> Option<GatherEnd> {
    if !kept {
        Some(GatherEnd::Released)
    } else if held >= target {
        Some(GatherEnd::Target)
    } else if slot_wanted {
        Some(GatherEnd::SlotWanted)
    } else if left.is_zero() {
        Some(GatherEnd::Deadline)
    } else {
        None
    }
}

/// After `partition` committed a batch of `answered` commands: waits up to `gather`
/// for the partition to hold [`gather_target`] commands, while no other partition
/// waits for a slot and the partition is still this thread's and not being given up
/// (revoked, stopping, killed). Sleeps on `Shared::gather_wake` between looks, so a
/// command held for it wakes it at once. Returns the lock.
///
/// Logs at debug level how it went: how long it waited, after how long the first
/// command came when it held none, and that command's age by its record timestamp
/// (its way in from the sender's producer, to the millisecond).
fn gather_answered<'a, A: Aggregate>(
    mut c: MutexGuard<'a, Core<A>>,
    partition: i32,
    ticket: u64,
    answered: usize,
    gather: Duration,
) -> MutexGuard<'a, Core<A>> {
    let held = |c: &Core<A>| c.held.get(&partition).map_or(0, VecDeque::len);
    let kept = |c: &Core<A>| {
        c.inflight
            .get(&partition)
            .is_some_and(|f| f.ticket == ticket && !f.releasing)
    };
    let target = gather_target(held(&c), answered, c.shared.settings.max_batch);
    let started = Instant::now();
    let deadline = started + gather;
    let shared = Arc::clone(&c.shared);
    // When the first command came, if none was held at the commit, and its age.
    let mut first: Option<(Duration, Option<i64>)> = None;
    let mut watch_first = held(&c) == 0;
    loop {
        if watch_first && let Some(message) = c.held.get(&partition).and_then(VecDeque::front) {
            watch_first = false;
            first = Some((started.elapsed(), record_age_ms(message)));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let end = gather_end(held(&c), target, !c.waiting.is_empty(), kept(&c), left);
        if let Some(end) = end {
            debug!(
                partition,
                target,
                held = held(&c),
                waited_us = micros(started.elapsed()),
                first_after_us = first.map(|(after, _)| micros(after)),
                first_age_ms = first.and_then(|(_, age)| age),
                ended = end.as_str(),
                "gathered after a commit"
            );
            return c;
        }
        c = shared
            .gather_wake
            .wait_timeout(c, left.min(GATHER_LOOK_MAX))
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// How long ago, in whole milliseconds, `message` was produced by its record
/// timestamp; `None` without one (or with a clock that disagrees).
fn record_age_ms(message: &OwnedMessage) -> Option<i64> {
    let created = message.timestamp().to_millis()?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_millis();
    i64::try_from(now).ok().map(|now| now - created)
}

/// Waits until none of `partitions` has a transaction running (they are being
/// given up), dropping their held commands so their threads stop after the
/// running one. A transaction still running after its timeout (plus a margin) is
/// abandoned: its thread drops its state when it ends.
pub(super) fn quiesce<A: Aggregate>(core: &Mutex<Core<A>>, partitions: &[i32]) {
    let limit = hang_limit(&lock(core).shared.settings);
    let started = Instant::now();
    loop {
        let mut c = lock(core);
        for &p in partitions {
            c.drop_held(p);
            if let Some(f) = c.inflight.get_mut(&p) {
                f.releasing = true;
            }
        }
        c.shared.gather_wake.notify_all();
        if !partitions.iter().any(|p| c.inflight.contains_key(p)) {
            return;
        }
        if started.elapsed() > limit {
            for p in partitions {
                if c.inflight.remove(p).is_some() {
                    error!(
                        partition = p,
                        "a transaction of a partition being given up hung past the transaction timeout; abandoning it"
                    );
                    ProcessorStats::add(&c.shared.stats.abandoned, 1);
                }
            }
            return;
        }
        drop(c);
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A transaction that Kafka refused or that failed: fenced by a new owner (nothing
/// to abort) or failed otherwise (aborted).
fn refused<A: Aggregate>(
    error: &KafkaError,
    partition: i32,
    part: &PartitionState<A>,
    stats: &ProcessorStats,
) -> BatchFailure {
    use rdkafka::types::RDKafkaErrorCode as Code;
    let code = error.rdkafka_error_code();
    let fenced = matches!(error, KafkaError::Transaction(e) if e.is_fatal())
        || code.is_some_and(|c| {
            matches!(
                c,
                Code::Fenced | Code::ProducerFenced | Code::InvalidProducerEpoch
            )
        });
    if fenced {
        error!(%error, partition, "commit refused: another processor owns this partition now; dropping it");
        ProcessorStats::add(&stats.fenced, 1);
        BatchFailure::Fenced
    } else {
        warn!(%error, partition, "transaction failed; aborting it and restoring the partition");
        abort(part, stats);
        BatchFailure::Retry
    }
}

/// Aborts the open transaction of `part` (bounded by [`ABORT_TIMEOUT`]) and counts it.
fn abort<A: Aggregate>(part: &PartitionState<A>, stats: &ProcessorStats) {
    let step = Instant::now();
    let _ = part.producers.current().abort_transaction(ABORT_TIMEOUT);
    slow("abort", step);
    ProcessorStats::add(&stats.aborted, 1);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{GatherEnd, gather_end, gather_target};

    #[test]
    fn a_partition_gathers_one_command_per_answered_caller_up_to_a_batch() {
        // 25 held at the commit of 25: the next batch waits for all 50 callers.
        assert_eq!(gather_target(25, 25, 500), 50);
        // Nothing held: the answered callers' next commands.
        assert_eq!(gather_target(0, 50, 500), 50);
        // Never more than a batch.
        assert_eq!(gather_target(400, 300, 500), 500);
        assert_eq!(gather_target(usize::MAX, 1, 500), 500);
        // A batch of nothing (only a position record) waits for nothing more.
        assert_eq!(gather_target(3, 0, 500), 3);
    }

    #[test]
    fn a_gathering_partition_says_why_it_stopped() {
        let left = Duration::from_millis(3);
        let none = Duration::ZERO;
        assert_eq!(gather_end(10, 50, false, true, left), None);
        assert_eq!(
            gather_end(50, 50, false, true, left),
            Some(GatherEnd::Target)
        );
        assert_eq!(
            gather_end(60, 50, true, true, none),
            Some(GatherEnd::Target)
        );
        assert_eq!(
            gather_end(10, 50, true, true, left),
            Some(GatherEnd::SlotWanted)
        );
        assert_eq!(
            gather_end(10, 50, false, true, none),
            Some(GatherEnd::Deadline)
        );
        // Given up: whatever it holds is dropped, so it stops for that first.
        assert_eq!(
            gather_end(50, 50, true, false, none),
            Some(GatherEnd::Released)
        );
        assert_eq!(
            gather_end(0, 50, false, false, left),
            Some(GatherEnd::Released)
        );
    }
}

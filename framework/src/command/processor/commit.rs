//! Running the transactions of a batch's partitions side by side and settling each:
//! after a commit the replies, the dedup entries and the snapshots; after a failure
//! the abort and the dropped partition.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::Producer;
use tracing::{error, warn};

use crate::Aggregate;
use crate::command::dedup::Seen;

use super::partitions::{Core, NewSeen, PartitionState, PendingReply};
use super::producer::send;
use super::stats::ProcessorStats;
use super::transaction::transact;
use super::{FaultPoint, lock, slow};

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

impl<A: Aggregate> Core<A> {
    /// Processes the batches of several partitions, each in its own transaction, and
    /// returns each partition's outcome with the offset of its first command.
    ///
    /// Partitions are independent (own producers, own transactional ids, own
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
    pub(super) fn process_all(
        &mut self,
        work: Vec<(i32, Vec<OwnedMessage>)>,
        metadata: &Arc<ConsumerGroupMetadata>,
    ) -> Vec<(i32, i64, Result<(), BatchFailure>)> {
        type Done<A> = (
            i32,
            PartitionState<A>,
            std::thread::Result<Result<NewSeen, TxFailure>>,
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
                    // A panicking handler fails the transaction (aborted, the
                    // partition restored, its commands retried).
                    let result = match result {
                        Ok(result) => result,
                        Err(_) => {
                            error!(
                                partition,
                                "a command handler panicked; the batch is retried"
                            );
                            Err(TxFailure::HandlerPanicked)
                        }
                    };
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

/// A transaction that Kafka refused or that failed: fenced by a new owner (nothing
/// to abort), deposed from the group (KIP-447) or failed otherwise (both aborted).
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
    // KIP-447: the group coordinator refused the offsets because this member is no
    // longer in the group (or in an older generation).
    let deposed = code.is_some_and(|c| {
        matches!(
            c,
            Code::UnknownMemberId | Code::IllegalGeneration | Code::FencedInstanceId
        )
    });
    if fenced {
        error!(%error, partition, "commit refused: another processor owns this partition now; dropping it");
        ProcessorStats::add(&stats.fenced, 1);
        BatchFailure::Fenced
    } else if deposed {
        error!(%error, partition,
            "commit refused: this instance lost its consumer group membership; aborting and dropping the partition");
        ProcessorStats::add(&stats.deposed, 1);
        abort(part, stats);
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

//! The processing loop: poll a batch, sort it by partition, run the transactions,
//! rewind what must be consumed again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::Aggregate;

use super::batch::{self, Route};
use super::commit::BatchFailure;
use super::contexts::RebalanceContext;
use super::error::ProcessorError;
use super::lock;
use super::partitions::Core;

pub(super) fn run<A: Aggregate>(
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
        let batch: Vec<OwnedMessage> = batch::collect(max_batch, linger, Instant::now, |timeout| {
            match consumer.poll(timeout) {
                Some(Ok(message)) => Some(message.detach()),
                Some(Err(error)) => {
                    warn!(%error, "consumer error");
                    None
                }
                None => None,
            }
        });
        if batch.is_empty() {
            continue;
        }
        let Some(metadata) = consumer.group_metadata() else {
            warn!("no consumer group metadata yet; retrying the batch");
            seek_back(&consumer, positions_of(&batch));
            continue;
        };
        let metadata = Arc::new(metadata);
        let assigned: HashSet<i32> = consumer
            .assignment()
            .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default();
        let by_partition = batch::by_partition(batch, Message::partition);
        let mut c = lock(&core);
        let mut ready: Vec<(i32, Vec<OwnedMessage>)> = Vec::new();
        let mut rewind: Vec<(String, i32, i64)> = Vec::new();
        let mut pause: Vec<i32> = Vec::new();
        for (partition, messages) in by_partition {
            match batch::route(
                c.partitions.contains_key(&partition),
                assigned.contains(&partition),
                c.quarantined.contains_key(&partition),
            ) {
                Route::Process => ready.push((partition, messages)),
                // Revoked meanwhile; the new owner processes these.
                Route::Skip => {}
                Route::Unavailable => c.answer_unavailable(partition, &messages),
                // No state (a failed transaction dropped it): restore it while the
                // partition waits, paused, with its commands rewound.
                Route::Restore => {
                    c.begin_restore(partition);
                    pause.push(partition);
                    rewind.extend(positions_of(&messages));
                }
            }
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
pub(super) fn partition_list(topic: &str, partitions: &[i32]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition(topic, p);
    }
    tpl
}

/// `(topic, partition, offset)` of every message (see [`seek_back`]).
pub(super) fn positions_of(messages: &[OwnedMessage]) -> Vec<(String, i32, i64)> {
    messages
        .iter()
        .map(|m| (m.topic().to_owned(), m.partition(), m.offset()))
        .collect()
}

/// Rewinds the consumer to the lowest of the given offsets of each partition, so the
/// messages from there on are consumed again.
pub(super) fn seek_back<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    positions: impl IntoIterator<Item = (String, i32, i64)>,
) {
    let firsts = batch::rewind_targets(positions);
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

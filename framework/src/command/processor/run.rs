//! The processing loop: poll a batch, sort it by partition, start each idle
//! partition's transaction while fewer than `max_transactions_at_once` run (or hold
//! the commands of a busy or waiting one), rewind what must be consumed again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use crate::Aggregate;

use super::batch::{self, Route};
use super::commit::quiesce;
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
    let shared = Arc::clone(&lock(&core).shared);
    let (max_batch, linger, commands_topic) = (
        shared.settings.max_batch.max(1),
        shared.settings.batch_linger,
        shared.layout.commands.clone(),
    );
    // Busy partitions paused because they hold too many commands.
    let mut backpressured: HashSet<i32> = HashSet::new();
    let mut positions_committed = Instant::now();
    loop {
        if positions_committed.elapsed() >= POSITION_COMMIT_INTERVAL {
            positions_committed = Instant::now();
            commit_positions(&consumer, &core, None);
        }
        if let Some(error) = lock(&core).fatal.take() {
            return Err(error);
        }
        let mut resume = {
            let mut c = lock(&core);
            c.confirm_snapshots();
            c.abandon_overdue();
            c.start_waiting(&core);
            c.finish_restores()
        };
        {
            let c = lock(&core);
            backpressured.retain(|p| {
                let caught_up = c.held.get(p).is_none_or(|held| held.len() < max_batch);
                if caught_up && !c.restoring.contains_key(p) {
                    resume.push(*p);
                }
                !caught_up
            });
        }
        if !resume.is_empty()
            && let Err(error) = consumer.resume(&partition_list(&commands_topic, &resume))
        {
            warn!(%error, "cannot resume partitions");
        }
        if kill.load(Ordering::SeqCst) {
            warn!("command processor killed");
            let mut c = lock(&core);
            c.partitions.clear();
            // Running transactions finish on their threads, unheard of.
            c.inflight.clear();
            c.held.clear();
            c.waiting.clear();
            c.shared.gather_wake.notify_all();
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
                    .chain(c.inflight.keys())
                    .copied()
                    .collect()
            };
            quiesce(&core, &owned);
            commit_positions(&consumer, &core, None);
            lock(&core).revoke(&owned, true);
            if let Err(error) = lock(&core).reply_producer.flush(Duration::from_secs(5)) {
                warn!(%error, "replies still queued at shutdown; their callers will resend");
            }
            drop(consumer);
            return Ok(());
        }
        // Collect a batch: wait for the first command, then linger briefly. While
        // transactions run, look up often: a failed one must be rewound, and a
        // partition paused for back-pressure resumed once its thread caught up.
        let busy = {
            let c = lock(&core);
            !c.inflight.is_empty() || !c.waiting.is_empty() || !c.rewinds.is_empty()
        } || !backpressured.is_empty();
        let batch: Vec<OwnedMessage> = batch::collect(max_batch, linger, Instant::now, |timeout| {
            let timeout = if busy {
                timeout.min(BUSY_WAIT)
            } else {
                timeout
            };
            match consumer.poll(timeout) {
                Some(Ok(message)) => Some(message.detach()),
                Some(Err(error)) => {
                    warn!(%error, "consumer error");
                    None
                }
                None => None,
            }
        });
        if batch.is_empty() && lock(&core).rewinds.is_empty() {
            continue;
        }
        // Rewinds pending stay in the core until a batch is routed (below).
        let assigned: HashSet<i32> = consumer
            .assignment()
            .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default();
        let mut c = lock(&core);
        // Transactions that failed since the last look: their partitions' commands
        // are consumed again from the failed batch on, so what this batch has of
        // them is dropped.
        let mut rewind: Vec<(String, i32, i64)> = c
            .rewinds
            .drain(..)
            .map(|(p, o)| (commands_topic.clone(), p, o))
            .collect();
        let rewound: HashSet<i32> = rewind.iter().map(|(_, p, _)| *p).collect();
        let mut pause: Vec<i32> = Vec::new();
        for (partition, messages) in batch::by_partition(batch, Message::partition) {
            if rewound.contains(&partition) {
                continue;
            }
            // Busy or waiting: these join its next batch.
            if let Some(held) = (c.inflight.contains_key(&partition)
                || c.waiting.contains(&partition))
            .then(|| c.held.entry(partition).or_default())
            {
                held.extend(messages);
                shared.gather_wake.notify_all();
                if batch::over_limit(held.len(), max_batch) && backpressured.insert(partition) {
                    pause.push(partition);
                }
                continue;
            }
            match batch::route(
                c.partitions.contains_key(&partition),
                assigned.contains(&partition),
                c.quarantined.contains_key(&partition),
            ) {
                Route::Process => c.start_or_wait(&core, partition, messages),
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
        drop(c);
        if !pause.is_empty()
            && let Err(error) = consumer.pause(&partition_list(&commands_topic, &pause))
        {
            warn!(%error, "cannot pause partitions");
        }
        if !rewind.is_empty() {
            seek_back(&consumer, rewind);
        }
    }
}

/// How often the positions of committed transactions are committed to the
/// consumer group (see `Core::positions`).
pub(super) const POSITION_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// Commits the positions that `core` holds (of `only` these partitions, or all) to
/// the consumer group, without waiting. A refusal (this member left the group
/// meanwhile) is harmless: the position that counts is in the outcomes.
pub(super) fn commit_positions<A: Aggregate, C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    core: &Mutex<Core<A>>,
    only: Option<&[i32]>,
) {
    let positions = lock(core).take_positions(only);
    if positions.count() == 0 {
        return;
    }
    if let Err(error) = consumer.commit(&positions, CommitMode::Async) {
        debug!(%error, "cannot commit the positions to the consumer group; the outcomes keep them");
    }
}

/// How long a poll waits at most while transactions run.
const BUSY_WAIT: Duration = Duration::from_millis(5);

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

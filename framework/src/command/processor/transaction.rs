//! One partition's batch in one Kafka transaction, command by command.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{Span, debug, error, info_span, warn};

use crate::Aggregate;
use crate::command::snapshot;
use crate::command::wire::{self, OutcomeWire, ReplyWire};
use crate::kafka::EncodedRecordExt as _;
use crate::kafka::record_ref;
use crate::trace_context;

use super::commit::TxFailure;
use super::decide::{Accepted, Decider, Decision, Prior, prior};
use super::partitions::{NewSeen, PartitionState, PendingReply};
use super::producer::{drain_deliveries, forward, send_outcome};
use super::restore::slot_from_row;
use super::stats::ProcessorStats;
use super::{FaultPoint, Shared, lock, micros, slow};

/// One partition's batch in one transaction: begin → decide every command, each
/// outcome record carrying the position after its command → commit. Replies are
/// collected in `part.replies` and sent by [`Core::finish`] once the commit
/// succeeded.
///
/// The position is not sent to the consumer group inside the transaction
/// (`send_offsets_to_transaction`): that costs two round trips per transaction
/// and a write to `__consumer_offsets`, and without them the sweep of
/// docs/benchmarks.md holds its p99 within 100 ms at three times the rate. It is
/// committed with the outcomes instead, and read back by the next owner on
/// restore. The consumer group's offsets still follow, outside the transaction
/// (`Core::positions`), for tools that read them.
pub(super) fn transact<A: Aggregate>(
    shared: &Shared<A>,
    partition: i32,
    part: &mut PartitionState<A>,
    messages: &[OwnedMessage],
) -> Result<NewSeen, TxFailure> {
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
    if !part.complete {
        load_evicted(shared, partition, part, messages).map_err(|error| {
            warn!(%error, partition,
                "cannot load aggregates from their snapshots; the batch is consumed again in 200 ms");
            // Not a hot loop while Postgres is away.
            std::thread::sleep(Duration::from_millis(200));
            TxFailure::Load
        })?;
    }
    part.replies.clear();
    let step = Instant::now();
    part.producers.current().begin_transaction()?;
    part.producers
        .current()
        .context()
        .failed
        .store(false, Ordering::SeqCst);
    let mut new_seen: NewSeen = Vec::new();
    // Whether the last outcome record written carries the batch's position.
    let mut positioned = false;
    for message in messages {
        positioned = false;
        if let Some(entry) = handle_one(shared, partition, part, &new_seen, message)? {
            new_seen.push(entry);
            positioned = true;
        }
    }
    if !positioned {
        send_outcome(
            part.producers.current(),
            &shared.layout.outcomes,
            partition,
            None,
            None,
            last + 1,
        )?;
    }
    if shared.fault_hook.is_some() {
        // Only under test: the records reach the log before the hook runs.
        drain_deliveries(part.producers.current(), timeout);
        fault(FaultPoint::BeforeOffsets);
    }
    slow("produce", step);
    let decided = step.elapsed();
    let timings = &shared.stats.timings;
    timings.decide_batch.record(decided.as_secs_f64());
    timings.batch_size.record(messages.len() as f64);
    // The commit waits for the records' delivery; served here in finer steps than
    // its own flush (see `drain_deliveries`).
    let step = Instant::now();
    drain_deliveries(part.producers.current(), timeout);
    slow("deliver", step);
    let delivered = step.elapsed();
    fault(FaultPoint::BeforeCommit);
    let step = Instant::now();
    part.producers.current().commit_transaction(timeout)?;
    let committed = step.elapsed();
    timings.commit.record(committed.as_secs_f64());
    slow("commit", step);
    // Where a transaction's time goes (docs/commands.md, "Latency settings"): begin,
    // decide and produce; the records' delivery, which waits for the partitions to
    // join the transaction first; the commit.
    debug!(
        decide_us = micros(decided),
        deliver_us = micros(delivered),
        commit_us = micros(committed),
        "transaction committed"
    );
    part.producers.committed();
    part.consumed = last + 1;
    Ok(new_seen)
}

/// Loads the aggregates of the batch's commands that are not in memory from their
/// snapshot rows. One that has no row is new: every aggregate of the partition is
/// in memory or confirmed in its row (see `cache`).
fn load_evicted<A: Aggregate>(
    shared: &Shared<A>,
    partition: i32,
    part: &mut PartitionState<A>,
    messages: &[OwnedMessage],
) -> Result<(), String> {
    let Some(store) = &shared.store else {
        return Ok(());
    };
    let mut missing: Vec<String> = Vec::new();
    for message in messages {
        if let Ok(command) = wire::decode_command(&record_ref(message))
            && !part.aggregates.contains_key(command.aggregate_id)
            && !missing.iter().any(|id| id == command.aggregate_id)
        {
            missing.push(command.aggregate_id.to_owned());
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let rows = shared
        .runtime
        .block_on(snapshot::load_ids(store, A::NAME, partition, &missing))
        .map_err(|e| e.to_string())?;
    let mut loaded = 0;
    for row in &rows {
        match slot_from_row::<A>(row) {
            Ok(slot) => {
                part.recency.touch(&row.aggregate_id);
                part.aggregates.insert(row.aggregate_id.clone(), slot);
                loaded += 1;
            }
            // Written by this version of the code moments ago: only a row changed
            // by hand gets here.
            Err(reason) => {
                return Err(format!(
                    "the snapshot of {}/{} cannot be read: {reason}",
                    A::NAME,
                    row.aggregate_id
                ));
            }
        }
    }
    ProcessorStats::add(&shared.stats.aggregates_loaded, loaded);
    Ok(())
}

/// Reads the outcome record at `offset` of the partition's outcomes, to answer a
/// resend of a command decided before this instance restored the partition.
pub(super) fn read_outcome<A: Aggregate>(
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

/// Handles one command inside the open transaction. Returns the new seen entry.
pub(super) fn handle_one<A: Aggregate>(
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
    // The span continues the sender's trace, and the events carry its context.
    trace_context::continue_trace(&span, command.traceparent);
    let traceparent = trace_context::traceparent_of(&span);
    let mut command = command;
    if traceparent.is_some() {
        command.traceparent = traceparent.as_deref();
    }
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

    let earlier = match prior(&part.seen, batch_seen, command.command_id) {
        Some(Prior::Reply(reply)) => Some(reply),
        Some(Prior::Outcome(offset)) => Some(read_outcome(shared, partition, offset)?),
        None => None,
    };
    let decider = Decider {
        handlers: &shared.handlers,
        codec: &shared.codec,
        source: &shared.source,
        max_record_bytes: shared.layout.max_record_bytes,
    };
    let outcome = match decider.decide(&part.aggregates, &command, earlier) {
        Decision::Duplicate(reply) => {
            ProcessorStats::add(&shared.stats.duplicates, 1);
            Span::current().record("outcome", "duplicate");
            debug!("command id seen before; replying with the original outcome");
            if let Some(rp) = command.reply_partition {
                part.replies.push(PendingReply {
                    reply_partition: rp,
                    gateway: command.gateway.map(str::to_owned),
                    command_id: command.command_id.to_owned(),
                    reply,
                    correlation_id: command.correlation_id.map(str::to_owned),
                });
            }
            return Ok(None);
        }
        Decision::Failed(reason) => {
            ProcessorStats::add(&shared.stats.failed, 1);
            OutcomeWire::Failed { reason }
        }
        Decision::Rejected(error) => {
            ProcessorStats::add(&shared.stats.rejected, 1);
            match error {
                Ok(error) => OutcomeWire::Rejected { error },
                Err(reason) => OutcomeWire::Failed { reason },
            }
        }
        Decision::Accepted(accepted) => write_events(shared, partition, part, &command, accepted)?,
    };
    // Only aggregates in memory: a refused command for an aggregate that does not
    // exist must not leave its id behind.
    if part.aggregates.contains_key(command.aggregate_id) {
        part.recency.touch(command.aggregate_id);
    }
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
    send_outcome(
        part.producers.current(),
        &shared.layout.outcomes,
        partition,
        Some((command.aggregate_id.as_bytes(), &bytes)),
        command.correlation_id,
        message.offset() + 1,
    )?;
    if let Some(rp) = command.reply_partition {
        part.replies.push(PendingReply {
            reply_partition: rp,
            gateway: command.gateway.map(str::to_owned),
            command_id: command.command_id.to_owned(),
            reply: Arc::clone(&bytes),
            correlation_id: command.correlation_id.map(str::to_owned),
        });
    }
    Ok(Some((command.command_id.to_owned(), bytes)))
}

/// Produces an accepted command's events to the partition's events topic and, once
/// the producer took them, applies them to the aggregate.
fn write_events<A: Aggregate>(
    shared: &Shared<A>,
    partition: i32,
    part: &mut PartitionState<A>,
    command: &wire::IncomingCommand<'_>,
    accepted: Accepted<A::Event>,
) -> KafkaResult<OutcomeWire> {
    for record in &accepted.records {
        let base = BaseRecord::to(&shared.layout.events)
            .partition(partition)
            .key(record.key.as_slice())
            .payload(record.value.as_slice())
            .headers(record.owned_headers());
        crate::kafka::send_retrying(part.producers.current(), base)?;
    }
    let count = accepted.envelopes.len() as u64;
    if count > 0 {
        let slot = part
            .aggregates
            .entry(command.aggregate_id.to_owned())
            .or_default();
        accepted.apply_to(slot);
    }
    let version = accepted.version;
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
        events: accepted.wires,
    })
}

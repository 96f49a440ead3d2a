//! One partition's batch in one Kafka transaction, command by command.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{Span, debug, error, info_span, warn};

use crate::aggregate::{Aggregate, AggregateId};
use crate::command::dedup::Seen;
use crate::command::wire::{self, EventWire, OutcomeWire, ReplyWire};
use crate::envelope::{EventEnvelope, Metadata};
use crate::event::DomainEvent;
use crate::kafka::record_ref;

use super::partitions::{NewSeen, PartitionState, PendingReply};
use super::producer::{drain_deliveries, forward, oversized, send};
use super::stats::ProcessorStats;
use super::{FaultPoint, Shared, lock, slow};
/// One partition's batch in one transaction: begin → decide every command →
/// offsets → commit. Replies are collected in `part.replies` and sent by
/// [`Core::finish`] once the commit succeeded.
pub(super) fn transact<A: Aggregate>(
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

pub(super) fn decide<A: Aggregate>(
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

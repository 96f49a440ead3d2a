//! Deciding on one command, without Kafka: a resend is answered with its earlier
//! reply; otherwise the command's handler runs on the aggregate's state and its
//! events are numbered from the aggregate's version and encoded. Nothing here
//! produces a record or changes an aggregate: the transaction writes the accepted
//! events and only then applies them ([`Accepted::apply_to`]).

use std::collections::HashMap;
use std::sync::Arc;

use crate::DomainEvent;
use crate::codec::{EncodedRecord, EventCodec};
use crate::command::dedup::{Seen, SeenWindow};
use crate::command::wire::{EventWire, IncomingCommand};
use crate::{Aggregate, AggregateId, Command, Handle};
use crate::{EventEnvelope, Metadata};

use super::DecideFn;
use super::partitions::Slot;

/// The handler of command type `C`: decodes the payload and runs `A`'s
/// [`Handle<C>`] on the state.
pub(super) fn handler<A, C>() -> DecideFn<A>
where
    C: Command<Aggregate = A>,
    A: Handle<C>,
{
    Box::new(|state: &A, payload: &[u8]| {
        let command: C = serde_json::from_slice(payload)?;
        Ok(state.handle(command))
    })
}

/// What is known of a command id from before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Prior {
    /// The serialized reply, at hand.
    Reply(Arc<Vec<u8>>),
    /// The offset of its outcome record in the partition's outcomes topic, to be
    /// read again.
    Outcome(i64),
}

/// Whether `command_id` was decided before: in the partition's dedup window, or
/// else by an earlier command of the open transaction (`batch`, not yet in the
/// window because it has not committed).
pub(super) fn prior(
    seen: &SeenWindow,
    batch: &[(String, Arc<Vec<u8>>)],
    command_id: &str,
) -> Option<Prior> {
    match seen.get(command_id) {
        Some(Seen::Reply(reply)) => Some(Prior::Reply(Arc::clone(reply))),
        Some(Seen::Outcome(offset)) => Some(Prior::Outcome(*offset)),
        None => batch
            .iter()
            .find(|(id, _)| id == command_id)
            .map(|(_, reply)| Prior::Reply(Arc::clone(reply))),
    }
}

/// The decision on one command.
#[derive(Debug)]
pub(super) enum Decision<E> {
    /// The command id was decided before: answer with this earlier reply; nothing
    /// is written.
    Duplicate(Arc<Vec<u8>>),
    /// The handler accepted the command.
    Accepted(Accepted<E>),
    /// The handler rejected the command: its domain error as JSON, or (`Err`) why
    /// that error does not serialize.
    Rejected(Result<serde_json::Value, String>),
    /// The command cannot be handled (unknown type, undecodable payload, a
    /// panicking handler, events that do not encode or do not fit a record), with
    /// the reason.
    Failed(String),
}

/// An accepted command's events, numbered and encoded.
#[derive(Debug)]
pub(super) struct Accepted<E> {
    /// The events, with sequences `version + 1 ..` of the aggregate's version
    /// before the command.
    pub(super) envelopes: Vec<EventEnvelope<E>>,
    /// Their records, for the events topic.
    pub(super) records: Vec<EncodedRecord>,
    /// Their view in the outcome.
    pub(super) wires: Vec<EventWire>,
    /// The aggregate's version once they are applied.
    pub(super) version: u64,
}

impl<E> Accepted<E> {
    /// Applies the events to the aggregate they were decided on, once they are
    /// written.
    pub(super) fn apply_to<A: Aggregate<Event = E>>(&self, slot: &mut Slot<A>) {
        for envelope in &self.envelopes {
            slot.state.apply(&envelope.event);
        }
        slot.version += self.envelopes.len() as u64;
    }
}

/// What deciding needs besides the aggregate and the command: the handlers, the
/// event codec, the events' `ce_source` and the record size limit.
pub(super) struct Decider<'a, A: Aggregate> {
    pub(super) handlers: &'a HashMap<String, DecideFn<A>>,
    pub(super) codec: &'a EventCodec<A::Event>,
    pub(super) source: &'a str,
    pub(super) max_record_bytes: usize,
}

impl<A: Aggregate> Decider<'_, A> {
    /// Decides on `command`. `earlier` is the reply of an earlier decision on the
    /// same command id, if any. The aggregate is looked up in `aggregates` (a new
    /// one is decided on from its empty state); nothing is changed or added: the
    /// transaction adds a new aggregate once its first events are written.
    pub(super) fn decide(
        &self,
        aggregates: &HashMap<String, Slot<A>>,
        command: &IncomingCommand<'_>,
        earlier: Option<Arc<Vec<u8>>>,
    ) -> Decision<A::Event> {
        if let Some(reply) = earlier {
            return Decision::Duplicate(reply);
        }
        let Some(handler) = self.handlers.get(command.command_type) else {
            let mut known: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Decision::Failed(format!(
                "unknown command type `{}`; this processor handles: {}",
                command.command_type,
                known.join(", ")
            ));
        };
        let new_aggregate;
        let slot = match aggregates.get(command.aggregate_id) {
            Some(slot) => slot,
            None => {
                new_aggregate = Slot::default();
                &new_aggregate
            }
        };
        // The handler only reads the state; a panic leaves nothing half-changed.
        let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            handler(&slot.state, command.payload)
        }));
        let handled = match handled {
            Ok(handled) => handled,
            Err(panic) => {
                return Decision::Failed(format!(
                    "the handler of `{}` panicked: {}",
                    command.command_type,
                    crate::panics::message(panic.as_ref())
                ));
            }
        };
        let events = match handled {
            Err(error) => {
                return Decision::Failed(format!(
                    "cannot deserialize `{}`: {error}",
                    command.command_type
                ));
            }
            Ok(Err(domain_error)) => {
                return Decision::Rejected(serde_json::to_value(&domain_error).map_err(|e| {
                    format!("rejected with `{domain_error}`, which does not serialize: {e}")
                }));
            }
            Ok(Ok(events)) => events,
        };
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
        let mut records = Vec::with_capacity(events.len());
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
            let encoded = self
                .codec
                .encode(&envelope, self.source)
                .map_err(|e| e.to_string())
                .and_then(|record| {
                    envelope
                        .event
                        .to_payload()
                        .map(|data| (record, data))
                        .map_err(|e| e.to_string())
                });
            let (record, data) = match encoded {
                Ok(pair) => pair,
                Err(error) => {
                    return Decision::Failed(format!("cannot encode the events: {error}"));
                }
            };
            wires.push(EventWire {
                id: envelope.id,
                sequence: envelope.sequence,
                ce_type: envelope.event.event_type().ce_type.to_owned(),
                time: envelope.time,
                data,
            });
            records.push(record);
            envelopes.push(envelope);
        }
        // A record over the size limit would fail the whole transaction, and the
        // batch would be retried for ever: refuse the command instead, before
        // anything of it is written. The outcome record carries every event's data,
        // so it can be over the limit even when each event is not.
        if let Some(reason) = oversized(&records, command.command_id, self.max_record_bytes) {
            return Decision::Failed(reason);
        }
        Decision::Accepted(Accepted {
            envelopes,
            records,
            wires,
            version: slot.version + count,
        })
    }
}

/// Why a command's records would not fit Kafka's record size limit, if they would
/// not: an event record over `limit`, or the outcome (which carries every event's
/// data) over it.
pub(super) fn oversized(
    events: &[EncodedRecord],
    command_id: &str,
    limit: usize,
) -> Option<String> {
    if let Some((i, size)) = events
        .iter()
        .map(EncodedRecord::size_estimate)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::SystemTime;

    use proptest::prelude::*;

    use super::*;
    use crate::Apply;
    use crate::command::processor::testing::{Counter, CounterEvent, Increment, LIMIT};

    const INCREMENT: &str = "counter.increment";

    struct Fixture {
        handlers: HashMap<String, DecideFn<Counter>>,
        codec: EventCodec<CounterEvent>,
        max_record_bytes: usize,
    }

    impl Fixture {
        fn new() -> Self {
            let mut handlers = HashMap::new();
            handlers.insert(INCREMENT.to_owned(), handler::<Counter, Increment>());
            Self {
                handlers,
                codec: EventCodec::new(),
                max_record_bytes: 1_000_000,
            }
        }

        fn decider(&self) -> Decider<'_, Counter> {
            Decider {
                handlers: &self.handlers,
                codec: &self.codec,
                source: "/test/counter",
                max_record_bytes: self.max_record_bytes,
            }
        }
    }

    fn increment(payload: &[u8]) -> IncomingCommand<'_> {
        IncomingCommand {
            command_id: "cmd-1",
            command_type: INCREMENT,
            aggregate_id: "c-1",
            correlation_id: None,
            traceparent: None,
            reply_partition: Some(0),
            gateway: None,
            payload,
        }
    }

    fn payload(times: u64) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "id": "c-1", "times": times })).unwrap()
    }

    /// An aggregate map holding `c-1` at `version`, with that many events applied.
    fn at_version(version: u64) -> HashMap<String, Slot<Counter>> {
        let mut slot = Slot::<Counter>::default();
        for _ in 0..version {
            slot.state.apply(&CounterEvent::Incremented { by: 1 });
        }
        slot.version = version;
        HashMap::from([("c-1".to_owned(), slot)])
    }

    proptest! {
        /// Accepted events are numbered gaplessly from the version after the
        /// aggregate's, the decision leaves the aggregate as it was, and applying
        /// it moves the aggregate to the announced version.
        #[test]
        fn accepted_sequences_are_gapless_from_the_next_version(
            version in 0..=LIMIT,
            times in 0..=LIMIT,
        ) {
            prop_assume!(version + times <= LIMIT);
            let fixture = Fixture::new();
            let mut aggregates = at_version(version);
            let bytes = payload(times);
            let decision = fixture.decider().decide(&aggregates, &increment(&bytes), None);
            let Decision::Accepted(accepted) = decision else {
                panic!("expected acceptance, got {decision:?}");
            };
            let sequences: Vec<u64> = accepted.envelopes.iter().map(|e| e.sequence).collect();
            let expected: Vec<u64> = (version + 1..=version + times).collect();
            prop_assert_eq!(&sequences, &expected);
            let wire_sequences: Vec<u64> = accepted.wires.iter().map(|w| w.sequence).collect();
            prop_assert_eq!(&wire_sequences, &expected);
            prop_assert_eq!(accepted.records.len() as u64, times);
            prop_assert_eq!(accepted.version, version + times);
            prop_assert!(accepted.envelopes.iter().all(|e| e.aggregate_id.as_str() == "c-1"));
            let slot = aggregates.entry("c-1".to_owned()).or_default();
            prop_assert_eq!(slot.version, version);
            prop_assert_eq!(slot.state.value, version);
            accepted.apply_to(slot);
            prop_assert_eq!(slot.version, version + times);
            prop_assert_eq!(slot.state.value, version + times);
        }

        /// Over a run of commands, each applied once accepted, the sequences of all
        /// accepted events are exactly 1..=the final version: no gap, no repeat,
        /// whatever was rejected in between.
        #[test]
        fn a_run_of_decisions_numbers_every_event_once(
            run in proptest::collection::vec(0..=15u64, 1..12),
        ) {
            let fixture = Fixture::new();
            let mut aggregates = HashMap::new();
            let mut sequences = Vec::new();
            for times in run {
                let bytes = payload(times);
                match fixture.decider().decide(&aggregates, &increment(&bytes), None) {
                    Decision::Accepted(accepted) => {
                        sequences.extend(accepted.envelopes.iter().map(|e| e.sequence));
                        accepted.apply_to(aggregates.entry("c-1".to_owned()).or_default());
                    }
                    Decision::Rejected(Ok(error)) => {
                        prop_assert_eq!(error, serde_json::json!({ "TooBig": { "limit": LIMIT } }));
                    }
                    other => panic!("unexpected decision {other:?}"),
                }
            }
            let (version, value) = aggregates
                .get("c-1")
                .map_or((0, 0), |slot| (slot.version, slot.state.value));
            prop_assert_eq!(sequences, (1..=version).collect::<Vec<_>>());
            prop_assert!(version <= LIMIT);
            prop_assert_eq!(value, version);
        }

        /// A command id decided before gets its earlier reply back, whatever the
        /// command says now: no events, and no aggregate is created or changed.
        #[test]
        fn a_duplicate_yields_the_earlier_reply_and_no_events(
            version in 0..=LIMIT,
            times in 0..=LIMIT,
            reply in proptest::collection::vec(any::<u8>(), 0..64),
            new_aggregate in any::<bool>(),
        ) {
            let fixture = Fixture::new();
            let aggregates = if new_aggregate { HashMap::new() } else { at_version(version) };
            let before: Vec<(String, u64)> =
                aggregates.iter().map(|(id, s)| (id.clone(), s.version)).collect();
            let earlier = Arc::new(reply.clone());
            let bytes = payload(times);
            let decision = fixture
                .decider()
                .decide(&aggregates, &increment(&bytes), Some(Arc::clone(&earlier)));
            let Decision::Duplicate(answer) = decision else {
                panic!("expected a duplicate, got {decision:?}");
            };
            prop_assert_eq!(answer.as_slice(), reply.as_slice());
            let after: Vec<(String, u64)> =
                aggregates.iter().map(|(id, s)| (id.clone(), s.version)).collect();
            prop_assert_eq!(before, after);
        }
    }

    #[test]
    fn a_rejection_carries_the_domain_error_and_changes_nothing() {
        let fixture = Fixture::new();
        let aggregates = at_version(39);
        let bytes = payload(2);
        let decision = fixture
            .decider()
            .decide(&aggregates, &increment(&bytes), None);
        let Decision::Rejected(Ok(error)) = decision else {
            panic!("expected a rejection, got {decision:?}");
        };
        assert_eq!(error, serde_json::json!({ "TooBig": { "limit": 40 } }));
        assert_eq!(aggregates["c-1"].version, 39);
        assert_eq!(aggregates["c-1"].state.value, 39);
    }

    #[test]
    fn events_carry_the_command_as_cause_and_its_correlation() {
        let fixture = Fixture::new();
        let bytes = payload(2);
        let mut command = increment(&bytes);
        let aggregates = HashMap::new();
        let Decision::Accepted(uncorrelated) =
            fixture.decider().decide(&aggregates, &command, None)
        else {
            panic!("expected acceptance");
        };
        let metadata = &uncorrelated.envelopes[0].metadata;
        assert_eq!(metadata.causation_id.as_deref(), Some("cmd-1"));
        assert_eq!(metadata.correlation_id.as_deref(), Some("cmd-1"));
        command.correlation_id = Some("flow-7");
        command.traceparent = Some("00-abc-def-01");
        let Decision::Accepted(correlated) = fixture.decider().decide(&aggregates, &command, None)
        else {
            panic!("expected acceptance");
        };
        for envelope in &correlated.envelopes {
            assert_eq!(envelope.metadata.correlation_id.as_deref(), Some("flow-7"));
            assert_eq!(
                envelope.metadata.traceparent.as_deref(),
                Some("00-abc-def-01")
            );
        }
    }

    /// A command that is not accepted leaves no trace in memory: no empty aggregate
    /// is kept for an id that has no events (a stream of rejected commands for
    /// random ids would otherwise grow the map without bound).
    #[test]
    fn a_command_that_is_not_accepted_creates_no_aggregate() {
        let fixture = Fixture::new();
        let aggregates = HashMap::new();
        let too_many = payload(LIMIT + 1);
        let decision = fixture
            .decider()
            .decide(&aggregates, &increment(&too_many), None);
        assert!(matches!(decision, Decision::Rejected(_)), "{decision:?}");
        let decision = fixture
            .decider()
            .decide(&aggregates, &increment(b"not json"), None);
        assert!(matches!(decision, Decision::Failed(_)), "{decision:?}");
        assert!(aggregates.is_empty(), "{:?}", aggregates.keys());
    }

    /// A handler that panics fails its command, with the panic's message, instead
    /// of aborting the transaction and retrying the batch forever (which would stop
    /// every command of the partition); the aggregate is left as it was.
    #[test]
    fn a_panicking_handler_fails_its_command_and_changes_nothing() {
        let mut fixture = Fixture::new();
        fixture.handlers.insert(
            INCREMENT.to_owned(),
            Box::new(|_: &Counter, _: &[u8]| panic!("the handler has a bug")),
        );
        let aggregates = at_version(3);
        let bytes = payload(1);
        let decision = fixture
            .decider()
            .decide(&aggregates, &increment(&bytes), None);
        let Decision::Failed(reason) = decision else {
            panic!("expected a failure, got {decision:?}");
        };
        assert!(reason.contains("panicked"), "{reason}");
        assert!(reason.contains("the handler has a bug"), "{reason}");
        assert_eq!(aggregates["c-1"].version, 3);
        assert_eq!(aggregates["c-1"].state.value, 3);
    }

    #[test]
    fn an_unknown_command_type_fails_without_creating_the_aggregate() {
        let fixture = Fixture::new();
        let aggregates = HashMap::new();
        let bytes = payload(1);
        let mut command = increment(&bytes);
        command.command_type = "counter.reset";
        let decision = fixture.decider().decide(&aggregates, &command, None);
        let Decision::Failed(reason) = decision else {
            panic!("expected a failure, got {decision:?}");
        };
        assert_eq!(
            reason,
            "unknown command type `counter.reset`; this processor handles: counter.increment"
        );
        assert!(aggregates.is_empty());
    }

    #[test]
    fn an_undecodable_payload_fails_and_leaves_the_aggregate_at_its_version() {
        let fixture = Fixture::new();
        let aggregates = at_version(3);
        let decision =
            fixture
                .decider()
                .decide(&aggregates, &increment(b"{\"times\": \"x\"}"), None);
        let Decision::Failed(reason) = decision else {
            panic!("expected a failure, got {decision:?}");
        };
        assert!(
            reason.starts_with("cannot deserialize `counter.increment`: "),
            "{reason}"
        );
        assert_eq!(aggregates["c-1"].version, 3);
    }

    #[test]
    fn events_over_the_record_size_limit_fail_the_command() {
        let mut fixture = Fixture::new();
        fixture.max_record_bytes = 300;
        let aggregates = at_version(0);
        let bytes = payload(1);
        let decision = fixture
            .decider()
            .decide(&aggregates, &increment(&bytes), None);
        let Decision::Failed(reason) = decision else {
            panic!("expected a failure, got {decision:?}");
        };
        assert!(
            reason.contains("record size limit of 300 bytes"),
            "{reason}"
        );
        assert_eq!(aggregates["c-1"].version, 0);
    }

    fn record(key: usize, value: usize) -> EncodedRecord {
        EncodedRecord {
            key: vec![b'k'; key],
            value: vec![b'v'; value],
            headers: vec![("ce_type".to_owned(), b"x".to_vec())],
        }
    }

    #[test]
    fn oversized_names_the_first_event_over_the_limit() {
        let events = [record(3, 10), record(3, 5000), record(3, 9000)];
        let reason = oversized(&events, "cmd", 4000).expect("over the limit");
        assert!(reason.starts_with("event 2 of 3 would be a "), "{reason}");
        assert_eq!(
            events[1].size_estimate(),
            82 + 3 + 5000 + "ce_type".len() + 1 + 10
        );
        assert!(reason.contains(&format!("{}-byte record", events[1].size_estimate())));
    }

    #[test]
    fn oversized_counts_the_outcome_that_carries_every_event() {
        // Each event fits; together, with the outcome's overhead, they do not.
        let events = [record(3, 400), record(3, 400)];
        assert!(events.iter().all(|e| e.size_estimate() <= 1000));
        let reason = oversized(&events, "cmd", 1000).expect("outcome over the limit");
        assert!(
            reason.starts_with("the outcome of its 2 events (about 1409 bytes"),
            "{reason}"
        );
        assert_eq!(oversized(&events, "cmd", 1409), None);
        assert_eq!(oversized(&[], "cmd", 203), None);
        assert!(oversized(&[], "cmd", 202).is_some());
    }

    #[test]
    fn prior_looks_in_the_window_first_then_in_the_open_batch() {
        let mut window = SeenWindow::default();
        let now = SystemTime::now();
        window.insert("restored", now, Seen::Outcome(17));
        window.insert("answered", now, Seen::Reply(Arc::new(b"window".to_vec())));
        let batch = vec![
            ("answered".to_owned(), Arc::new(b"batch".to_vec())),
            ("fresh".to_owned(), Arc::new(b"fresh".to_vec())),
        ];
        assert_eq!(prior(&window, &batch, "restored"), Some(Prior::Outcome(17)));
        assert_eq!(
            prior(&window, &batch, "answered"),
            Some(Prior::Reply(Arc::new(b"window".to_vec())))
        );
        assert_eq!(
            prior(&window, &batch, "fresh"),
            Some(Prior::Reply(Arc::new(b"fresh".to_vec())))
        );
        assert_eq!(prior(&window, &batch, "unknown"), None);
    }
}

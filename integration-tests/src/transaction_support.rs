//! The scenario of the transaction tests (a processor that fails with its transaction
//! open), shared by `commands_transactions` (processes frozen or killed) and
//! `containers_partitions` (a processor cut off the network): six increments over two
//! aggregates, resent until answered, and the checks of the log, the read model and
//! the processor's state afterwards.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tributary::KafkaConfig;
use tributary::command::{CommandGateway, CommandOutcome, SendOptions};

use crate::command_support::{Check, Increment, counter_log_ids};
use crate::projection_support::wait_until;
use crate::raw_log::{self, Isolation, LoggedEvent};

/// Commands per test, over two aggregates.
pub const COMMANDS: u32 = 6;

/// What a caller learned: command id → (aggregate, version, event ids).
pub type Accepted = BTreeMap<String, (String, u64, Vec<String>)>;

/// The counter's events topic.
pub fn events_topic(prefix: &str) -> String {
    format!("{prefix}.counter.events")
}

/// A gateway that waits up to 20 s for the processor's topics.
pub async fn gateway(bootstrap: &str, prefix: &str) -> CommandGateway {
    CommandGateway::connect_with_timeout(
        KafkaConfig::new(bootstrap),
        prefix,
        Duration::from_secs(20),
    )
    .await
    .expect("gateway")
}

/// Sends `COMMANDS` increments concurrently (`cmd-{i}` adds `i + 1` to `z{i % 2}`),
/// each resent with the same id until its outcome is known.
pub fn send_commands(gateway: &CommandGateway) -> tokio::task::JoinHandle<Accepted> {
    let gateway = gateway.clone();
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for i in 0..COMMANDS {
            let gateway = gateway.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("cmd-{i}");
                let aggregate = format!("z{}", i % 2);
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let options = SendOptions {
                        command_id: Some(id.clone()),
                        ..Default::default()
                    };
                    let command = Increment {
                        id: aggregate.clone(),
                        by: i + 1,
                    };
                    match gateway.send_with(command, options).await {
                        Ok(CommandOutcome::Accepted { version, events }) => {
                            let ids = events.iter().map(|e| e.id.to_string()).collect();
                            return (id, (aggregate, version, ids));
                        }
                        Ok(CommandOutcome::Rejected(e)) => panic!("{id} rejected: {e}"),
                        Err(e) => assert!(Instant::now() < deadline, "{id}: no outcome: {e}"),
                    }
                }
            }));
        }
        let mut accepted = Accepted::new();
        for task in tasks {
            let (id, outcome) = task.await.expect("caller");
            accepted.insert(id, outcome);
        }
        accepted
    })
}

/// The value each aggregate must have after all commands.
pub fn expected_values() -> BTreeMap<String, u64> {
    let mut values = BTreeMap::new();
    for i in 0..COMMANDS {
        *values.entry(format!("z{}", i % 2)).or_default() += u64::from(i + 1);
    }
    values
}

/// The processor's state of every aggregate, through `Check` commands (which read
/// the state the processor restored or kept).
pub async fn assert_state(gateway: &CommandGateway) {
    for (id, expected) in expected_values() {
        match gateway
            .send(Check {
                id: id.clone(),
                expected,
            })
            .await
            .expect("check")
        {
            CommandOutcome::Accepted { .. } => {}
            CommandOutcome::Rejected(e) => panic!("aggregate {id}: {e}"),
        }
    }
}

/// Waits until a transaction of the frozen or crashed processor holds events in the
/// log that no read_committed reader can see yet.
pub fn assert_open_transaction(bootstrap: &str, prefix: &str) -> usize {
    let topic = events_topic(prefix);
    let uncommitted = raw_log::read(bootstrap, &topic, Isolation::Uncommitted);
    let committed = raw_log::read(bootstrap, &topic, Isolation::Committed);
    assert!(
        !uncommitted.is_empty(),
        "the paused processor had produced no events: the scenario is not the one under test"
    );
    assert!(
        committed.is_empty(),
        "events of an open transaction are visible to read_committed readers: {committed:?}"
    );
    uncommitted.len()
}

/// The checks shared by every scenario: the committed log is gapless with one
/// effect per command, it is exactly what the callers were told, and the records of
/// the failed transaction are in the log but reached no reader (the projection's
/// rows are the committed events, nothing else).
pub async fn assert_log(
    bootstrap: &str,
    prefix: &str,
    accepted: &Accepted,
    projection: Option<&tributary::PgStore>,
) {
    let topic = events_topic(prefix);
    let committed = raw_log::read(bootstrap, &topic, Isolation::Committed);
    let per_aggregate = raw_log::assert_single_writer(&committed);
    let uncommitted = raw_log::read(bootstrap, &topic, Isolation::Uncommitted);
    let committed_ids: BTreeSet<&str> = committed.iter().map(|e| e.event_id.as_str()).collect();
    let aborted: Vec<&LoggedEvent> = uncommitted
        .iter()
        .filter(|e| !committed_ids.contains(e.event_id.as_str()))
        .collect();
    assert!(
        !aborted.is_empty(),
        "no aborted records in the log: the failed transaction was not exercised"
    );

    // One event per command, and the callers heard of exactly those events.
    assert_eq!(committed.len(), COMMANDS as usize, "{committed:?}");
    for (command_id, (aggregate, version, ids)) in accepted {
        let event = committed
            .iter()
            .find(|e| &e.causation_id == command_id)
            .unwrap_or_else(|| panic!("{command_id} was accepted but has no event"));
        assert_eq!(
            (&event.aggregate_id, event.sequence),
            (aggregate, *version),
            "{command_id}: the reply and the log disagree"
        );
        assert_eq!(
            ids,
            &vec![event.event_id.clone()],
            "{command_id}: reply's event ids"
        );
    }
    for (aggregate, expected) in expected_values() {
        let sum: u64 = per_aggregate[&aggregate]
            .iter()
            .map(|e| e.data["by"].as_u64().expect("by"))
            .sum();
        assert_eq!(sum, expected, "aggregate {aggregate} in the log");
    }

    if let Some(store) = projection {
        wait_until(
            Duration::from_secs(60),
            "the projection to apply every committed event",
            || async { counter_log_ids(store).await.len() >= committed.len() },
        )
        .await;
        // Give a wrongly delivered aborted record time to show up, then compare.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let seen = counter_log_ids(store).await;
        let expected: Vec<String> = committed.iter().map(|e| e.event_id.clone()).collect();
        let mut seen_sorted = seen.clone();
        seen_sorted.sort();
        let mut expected_sorted = expected;
        expected_sorted.sort();
        assert_eq!(
            seen_sorted, expected_sorted,
            "the projection applied something other than the committed events"
        );
        for event in &aborted {
            assert!(
                !seen.contains(&event.event_id),
                "the projection saw an aborted event"
            );
        }
    }
}

//! Records over Kafka's size limit: a command too large to send is refused by the
//! gateway; a command whose events or outcome would be too large is answered
//! `Failed` and its partition goes on (it used to abort its transaction and retry
//! the batch for ever).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tributary::KafkaConfig;
use tributary::command::{CommandGateway, CommandOutcome, GatewayError};
use tributary_integration_tests::command_support::{Increment, Note, counter_processor};
use tributary_integration_tests::raw_log::{self, Isolation};
use tributary_integration_tests::{kafka_bootstrap, unique_prefix};

const KB: usize = 1000;

async fn note(
    gateway: &CommandGateway,
    text_bytes: usize,
    copies: u32,
    repeat: u32,
) -> Result<u64, GatewayError> {
    gateway
        .send(Note {
            id: "n".into(),
            text: "x".repeat(text_bytes),
            copies,
            repeat,
        })
        .await
        .map(|outcome| match outcome {
            CommandOutcome::Accepted { version, .. } => version,
            CommandOutcome::Rejected(e) => panic!("{e}"),
        })
}

async fn increment(gateway: &CommandGateway) -> u64 {
    match gateway
        .send(Increment {
            id: "n".into(),
            by: 1,
        })
        .await
        .expect("increment")
    {
        CommandOutcome::Accepted { version, .. } => version,
        CommandOutcome::Rejected(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_commands_events_and_outcomes_fail_clearly_and_the_partition_goes_on() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("fault-size");
    let processor = counter_processor(&bootstrap, &prefix, 1)
        .start()
        .await
        .expect("processor");
    let gateway = CommandGateway::connect_with_timeout(
        KafkaConfig::new(&bootstrap),
        &prefix,
        Duration::from_secs(30),
    )
    .await
    .expect("gateway");
    assert_eq!(increment(&gateway).await, 1);

    // A command over the limit is not sent; sending it again would not help.
    let started = Instant::now();
    match note(&gateway, 2_000 * KB, 1, 1).await {
        Err(error @ GatewayError::TooLarge { .. }) => {
            let message = error.to_string();
            assert!(message.contains("1000000"), "{message}");
            assert!(!message.contains("resend"), "{message}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));

    // Fits everywhere: accepted.
    assert_eq!(note(&gateway, 300 * KB, 1, 1).await.unwrap(), 2);

    // Each event fits, but the outcome carries all three (about 1.2 MB).
    let started = Instant::now();
    match note(&gateway, 400 * KB, 3, 1).await {
        Err(GatewayError::Failed { reason, .. }) => {
            assert!(
                reason.contains("outcome") && reason.contains("1000000"),
                "{reason}"
            );
        }
        other => panic!("expected Failed (outcome too large), got {other:?}"),
    }
    // One event over the limit (a 300 kB command that the handler repeats 4 times).
    match note(&gateway, 300 * KB, 1, 4).await {
        Err(GatewayError::Failed { reason, .. }) => {
            assert!(
                reason.contains("event 1 of 1") && reason.contains("1000000"),
                "{reason}"
            );
        }
        other => panic!("expected Failed (event too large), got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the failures took {:?}",
        started.elapsed()
    );

    // The partition goes on, and nothing of the failed commands was written.
    assert_eq!(increment(&gateway).await, 3);
    let events = raw_log::read(
        &bootstrap,
        &format!("{prefix}.counter.events"),
        Isolation::Committed,
    );
    raw_log::assert_single_writer(&events);
    assert_eq!(events.len(), 3);
    processor.shutdown().await.expect("shutdown");
}

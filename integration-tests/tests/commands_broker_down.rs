//! G3 when the broker is unavailable: `send` returns a typed error within its
//! timeout; after recovery, processing continues and nothing is lost or doubled.
//!
//! Uses librdkafka's in-process mock cluster, whose broker can be taken down and
//! brought back (a memory-storage broker cannot be restarted without losing its log).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use tributary::KafkaConfig;
use tributary::command::{CommandGateway, CommandOutcome, GatewayError, SendOptions};
use tributary_integration_tests::command_support::{
    Check, Increment, assert_gapless, counter_processor, read_counter_events,
};
use tributary_integration_tests::{init_tracing, unique_prefix};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn send_fails_fast_while_the_broker_is_down_and_recovers_after() {
    init_tracing();
    let mock = MockCluster::new(1).expect("mock cluster");
    let bootstrap = mock.bootstrap_servers();
    let prefix = unique_prefix("cmd-down");
    // The mock broker has no CreateTopics: create the layout up front.
    for (suffix, partitions) in [
        ("counter.events", 1),
        ("counter.commands", 1),
        ("counter.outcomes", 1),
        ("replies", 1),
    ] {
        mock.create_topic(&format!("{prefix}.{suffix}"), partitions, 1)
            .expect("create topic");
    }
    let processor = counter_processor(&bootstrap, &prefix, 1)
        .start()
        .await
        .expect("processor");
    const TIMEOUT: Duration = Duration::from_secs(3);
    let gateway =
        CommandGateway::connect_with_timeout(KafkaConfig::new(&bootstrap), &prefix, TIMEOUT)
            .await
            .expect("gateway");

    // Normal operation (the first command may wait for the group's first assignment).
    let send = |id: &str| {
        let gateway = gateway.clone();
        let options = SendOptions {
            command_id: Some(id.to_owned()),
            ..Default::default()
        };
        async move {
            gateway
                .send_with(
                    Increment {
                        id: "d".into(),
                        by: 1,
                    },
                    options,
                )
                .await
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match send("before").await {
            Ok(outcome) => break assert!(outcome.is_accepted()),
            Err(e) => assert!(
                Instant::now() < deadline,
                "no outcome before the outage: {e}"
            ),
        }
    }

    // Outage: a typed error, within the timeout (plus scheduling slack).
    mock.broker_down(1).expect("broker down");
    let started = Instant::now();
    let err = send("during").await.expect_err("the broker is down");
    let waited = started.elapsed();
    assert!(
        matches!(
            err,
            GatewayError::Timeout { .. } | GatewayError::Unavailable { .. }
        ),
        "{err}"
    );
    assert!(
        waited < TIMEOUT + Duration::from_secs(2),
        "send took {waited:?}"
    );

    // Recovery: the same command id is resent until its outcome is known; it is
    // applied once whether or not the first attempt reached the broker.
    mock.broker_up(1).expect("broker up");
    let deadline = Instant::now() + Duration::from_secs(90);
    for id in ["during", "after"] {
        loop {
            match send(id).await {
                Ok(CommandOutcome::Accepted { .. }) => break,
                Ok(CommandOutcome::Rejected(e)) => panic!("{e}"),
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "{id}: no outcome after recovery: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    match gateway
        .send(Check {
            id: "d".into(),
            expected: 3,
        })
        .await
        .expect("check")
    {
        CommandOutcome::Accepted { .. } => {}
        CommandOutcome::Rejected(e) => panic!("{e}"),
    }
    let events = read_counter_events(&bootstrap, &prefix);
    assert_eq!(assert_gapless(&events).get("d"), Some(&3));
    processor.shutdown().await.expect("shutdown");
}

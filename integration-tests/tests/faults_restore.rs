//! A partition whose events an instance cannot read must not take the instance's
//! other partitions down with it (issue: one garbled record stopped every command).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tributary::KafkaConfig;
use tributary::command::wire::partition_for;
use tributary::command::{CommandGateway, CommandOutcome, GatewayError};
use tributary_integration_tests::command_support::{Increment, counter_processor};
use tributary_integration_tests::{kafka_bootstrap, unique_prefix};

/// An aggregate id whose commands and events go to `partition` of `partitions`.
fn id_on(partition: i32, partitions: usize) -> String {
    (0..)
        .map(|n| format!("agg-{n}"))
        .find(|id| partition_for(id.as_bytes(), partitions) == partition)
        .unwrap()
}

/// Writes an event record of a type this code does not know (as a newer
/// deployment would) to `partition` of the events topic.
async fn write_unknown_event(bootstrap: &str, prefix: &str, partition: i32, aggregate: &str) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let headers = [
        ("ce_specversion", "1.0"),
        ("ce_id", "0193a4b2-7c1e-7d3a-9f00-1234567890ab"),
        ("ce_source", "/test/counter"),
        ("ce_type", "counter.exploded.v9"),
        ("ce_time", "2026-12-01T00:00:00Z"),
        ("ce_subject", aggregate),
        ("content-type", "application/json"),
        ("ce_sequence", "2"),
    ]
    .into_iter()
    .fold(OwnedHeaders::new(), |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(value),
        })
    });
    producer
        .send(
            FutureRecord::to(&format!("{prefix}.counter.events"))
                .partition(partition)
                .key(aggregate)
                .payload("{\"shards\":3}")
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .expect("produce the unknown event");
}

async fn increment(gateway: &CommandGateway, id: &str) -> Result<u64, GatewayError> {
    gateway
        .send(Increment {
            id: id.into(),
            by: 1,
        })
        .await
        .map(|outcome| match outcome {
            CommandOutcome::Accepted { version, .. } => version,
            CommandOutcome::Rejected(e) => panic!("{e}"),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreadable_event_quarantines_its_partition_and_the_others_go_on() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("fault-unread");
    let (bad, good) = (id_on(0, 2), id_on(1, 2));
    let first = counter_processor(&bootstrap, &prefix, 2)
        .start()
        .await
        .expect("processor");
    let gateway = CommandGateway::connect_with_timeout(
        &KafkaConfig::new(&bootstrap),
        &prefix,
        Duration::from_secs(20),
    )
    .await
    .expect("gateway");
    assert_eq!(increment(&gateway, &bad).await.unwrap(), 1);
    assert_eq!(increment(&gateway, &good).await.unwrap(), 1);
    first.shutdown().await.expect("shutdown");

    // A newer deployment wrote an event type this version cannot decode.
    write_unknown_event(&bootstrap, &prefix, 0, &bad).await;
    let second = counter_processor(&bootstrap, &prefix, 2)
        .start()
        .await
        .expect("processor");

    // The readable partition is served...
    assert_eq!(increment(&gateway, &good).await.unwrap(), 2);
    // ...and the unreadable one answers at once, with the reason, instead of
    // timing out.
    let started = Instant::now();
    match increment(&gateway, &bad).await {
        Err(GatewayError::PartitionUnavailable {
            partition, reason, ..
        }) => {
            assert_eq!(partition, 0);
            assert!(
                reason.contains("unreadable") && reason.contains("counter.exploded.v9"),
                "{reason}"
            );
        }
        other => panic!("expected PartitionUnavailable, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the caller waited {:?}",
        started.elapsed()
    );
    let quarantined = second.stats().quarantined_partitions();
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert_eq!(quarantined[0].0, 0);
    assert_eq!(second.stats().owned_partitions(), vec![1]);
    assert!(!second.is_finished(), "the processor stopped");
    assert_eq!(increment(&gateway, &good).await.unwrap(), 3);
    second.shutdown().await.expect("shutdown");
}

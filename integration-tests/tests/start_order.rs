//! Start order: a scaled-out deployment is started all at once, so API gateways and
//! projection workers may start before the command processors have created the
//! topics. A worker must consume as soon as its topics exist (not after
//! librdkafka's next metadata refresh, 5 minutes by default) and say what it waits
//! for meanwhile; a gateway must refuse a command for a missing topic clearly
//! instead of producing to it (which makes the broker create the topic with one
//! partition).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use tributary::command::{CommandGateway, GatewayError};
use tributary::projection::{ProjectionWorker, WorkerState};
use tributary::{EventEnvelope, KafkaConfig};
use tributary_integration_tests::command_support::{Increment, counter_processor};
use tributary_integration_tests::projection_support::{
    AccountEvent, EventsTopic, RawRecord, Totals, kafka_config, produce, read_totals, test_config,
    test_store, wait_until,
};
use tributary_integration_tests::{create_topic, kafka_bootstrap, unique_prefix};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_before_its_topic_consumes_once_the_topic_exists() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("proj-start");
    let codec = EventsTopic::<AccountEvent>::new(&prefix);
    let topic = codec.name.clone();
    let store = test_store(&prefix).await;
    // One topic of the worker exists, the other not yet: with none missing or all
    // missing librdkafka notices soon enough, with some missing it did not.
    let present = EventsTopic::<AccountEvent>::new(&format!("{prefix}-present"));
    create_topic(&bootstrap, &present.name.clone(), 3).await;

    let worker = ProjectionWorker::new(Totals::default(), store.clone(), kafka_config(&bootstrap))
        .subscribe(&present.prefix, present.codec.clone())
        .subscribe(&codec.prefix, codec.codec.clone())
        .settings(test_config());
    let handle = worker.clone().spawn();

    // No topic yet: the worker says what it waits for.
    wait_until(
        Duration::from_secs(20),
        "the worker to report the missing topic",
        || {
            let status = worker.status();
            let topic = topic.clone();
            async move {
                status.state == WorkerState::Starting
                    && status
                        .last_error
                        .as_deref()
                        .is_some_and(|e| e.contains(&topic))
            }
        },
    )
    .await;

    // The processors create the topic a moment later and write events.
    create_topic(&bootstrap, &topic, 3).await;
    let created = Instant::now();
    let records: Vec<RawRecord> = (1..=30u64)
        .map(|i| {
            let envelope = EventEnvelope::new(
                format!("acc-{}", i % 3),
                i.div_ceil(3),
                AccountEvent::Deposited { amount: 1 },
            );
            codec.encode(&envelope).into()
        })
        .collect();
    produce(&bootstrap, &topic, records).await;

    // The bug this guards against took librdkafka's 5-minute metadata refresh;
    // a minute leaves a loaded machine room.
    wait_until(
        Duration::from_secs(90),
        "the worker to apply the 30 events",
        || {
            let store = store.clone();
            async move {
                let totals = read_totals(&store).await;
                totals.values().map(|(_, balance)| *balance).sum::<i64>() == 30
            }
        },
    )
    .await;
    let waited = created.elapsed();
    eprintln!("applied {waited:?} after the topic was created");
    assert!(
        waited < Duration::from_secs(60),
        "the worker took {waited:?} to notice its topic"
    );
    assert_eq!(worker.status().state, WorkerState::Running);
    handle.abort();
}

/// Partitions of `topic`, read with a client that cannot create topics; `None` when
/// the topic does not exist.
fn partitions_of(bootstrap: &str, topic: &str) -> Option<usize> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let client: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let topic = metadata.topics().iter().find(|t| t.name() == topic)?;
    (topic.error().is_none() && !topic.partitions().is_empty()).then(|| topic.partitions().len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_before_the_processors_refuses_clearly_and_creates_nothing() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("gw-start");
    let gateway = CommandGateway::connect_with_timeout(
        KafkaConfig::new(&bootstrap),
        &prefix,
        Duration::from_secs(10),
    )
    .await
    .expect("gateway");
    let commands = format!("{prefix}.counter.commands");
    let increment = || Increment {
        id: "c-1".into(),
        by: 1,
    };

    let started = Instant::now();
    match gateway.send(increment()).await {
        Err(error @ GatewayError::NoTopic { .. }) => {
            let message = error.to_string();
            assert!(message.contains(&commands), "{message}");
            assert!(message.contains("start them"), "{message}");
        }
        other => panic!("expected NoTopic, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // Nothing was produced, so the broker created no one-partition topic.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(partitions_of(&bootstrap, &commands), None);

    // The processors start and create the topics; the same gateway now works.
    let processor = counter_processor(&bootstrap, &prefix, 3)
        .start()
        .await
        .expect("processor");
    assert_eq!(partitions_of(&bootstrap, &commands), Some(3));
    assert!(gateway.send(increment()).await.unwrap().is_accepted());
    drop(processor);
}

//! Commands produced by foreign producers to the wrong commands partition (another
//! partitioner, or a null key) must not create a second writer of their aggregate;
//! and a partition whose last transaction only forwarded keeps its position (G2).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tributary::KafkaConfig;
use tributary::command::wire::partition_for;
use tributary::command::{CommandGateway, CommandOutcome};
use tributary_integration_tests::command_support::{Increment, counter_processor};
use tributary_integration_tests::raw_log::{self, Isolation};
use tributary_integration_tests::{kafka_bootstrap, unique_prefix};

const PARTITIONS: usize = 4;

/// A command as another language's producer would write it (CloudEvents binary
/// mode, docs/wire-format.md), to an explicit partition, with or without a key.
async fn foreign_increment(
    bootstrap: &str,
    prefix: &str,
    partition: i32,
    key: Option<&str>,
    aggregate: &str,
    command_id: &str,
) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let headers = [
        ("ce_specversion", "1.0"),
        ("ce_id", command_id),
        ("ce_source", "/foreign/producer"),
        ("ce_type", "counter.increment"),
        ("ce_time", "2026-12-01T00:00:00Z"),
        ("ce_subject", aggregate),
        ("content-type", "application/json"),
    ]
    .into_iter()
    .fold(OwnedHeaders::new(), |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(value),
        })
    });
    let payload = format!(r#"{{"id":"{aggregate}","by":1}}"#);
    let topic = format!("{prefix}.counter.commands");
    let mut record = FutureRecord::<str, str>::to(&topic)
        .partition(partition)
        .payload(&payload)
        .headers(headers);
    if let Some(key) = key {
        record = record.key(key);
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .expect("produce the foreign command");
}

/// The counter's processor on `PARTITIONS` partitions, and a gateway.
async fn processor_and_gateway(
    bootstrap: &str,
    prefix: &str,
) -> (tributary::command::ProcessorHandle, CommandGateway) {
    let processor = counter_processor(bootstrap, prefix, PARTITIONS as i32)
        .start()
        .await
        .expect("processor");
    let gateway = CommandGateway::connect_with_timeout(
        KafkaConfig::new(bootstrap),
        prefix,
        Duration::from_secs(30),
    )
    .await
    .expect("gateway");
    (processor, gateway)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_on_the_wrong_partition_is_forwarded_to_its_aggregates_partition() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("fault-route");
    let (processor, gateway) = processor_and_gateway(&bootstrap, &prefix).await;
    let aggregate = "sku-tea";
    let home = partition_for(aggregate.as_bytes(), PARTITIONS);
    let increment = || Increment {
        id: aggregate.into(),
        by: 1,
    };
    assert!(gateway.send(increment()).await.unwrap().is_accepted());

    // Keyed, but sent to another partition (another partitioner); and without a key.
    let wrong = |n: i32| (home + n) % PARTITIONS as i32;
    foreign_increment(
        &bootstrap,
        &prefix,
        wrong(1),
        Some(aggregate),
        aggregate,
        "foreign-1",
    )
    .await;
    foreign_increment(&bootstrap, &prefix, wrong(2), None, aggregate, "foreign-2").await;

    let topic = format!("{prefix}.counter.events");
    let deadline = Instant::now() + Duration::from_secs(60);
    let events = loop {
        let events = raw_log::read(&bootstrap, &topic, Isolation::Committed);
        if events.len() >= 3 {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "the foreign commands were not applied: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    raw_log::assert_single_writer(&events);
    for event in &events {
        assert_eq!(
            event.partition, home,
            "an event of {aggregate} outside its partition: {event:?}"
        );
    }
    let causes: Vec<&str> = events.iter().map(|e| e.causation_id.as_str()).collect();
    assert!(
        causes.contains(&"foreign-1") && causes.contains(&"foreign-2"),
        "{causes:?}"
    );
    match gateway.send(increment()).await.unwrap() {
        CommandOutcome::Accepted { version, .. } => assert_eq!(version, 4),
        CommandOutcome::Rejected(e) => panic!("{e}"),
    }
    assert_eq!(processor.stats().counters().forwarded, 2);
    processor.shutdown().await.expect("shutdown");
}

/// G2 keeps a partition's position in its committed outcomes, not in the consumer
/// group's offsets: after a processor stopped, the group's offsets are set back to
/// the start, and the next processor still decides nothing twice. It skips what
/// the outcomes show decided, also on a partition whose last transaction only
/// forwarded a command (its position record counts). A processor that trusted the
/// group's offsets would forward the foreign command again and answer every earlier
/// command from its dedup window.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_position_is_kept_in_the_outcomes_not_in_the_groups_offsets() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{Offset, TopicPartitionList};

    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("position");
    let (processor, gateway) = processor_and_gateway(&bootstrap, &prefix).await;
    let aggregate = "sku-tea";
    let home = partition_for(aggregate.as_bytes(), PARTITIONS);
    let increment = |id: &str| Increment {
        id: id.into(),
        by: 1,
    };
    for _ in 0..5 {
        assert!(
            gateway
                .send(increment(aggregate))
                .await
                .unwrap()
                .is_accepted()
        );
    }
    // The last record of another partition: forwarded, so that partition's last
    // transaction wrote no outcome of a command.
    let elsewhere = (home + 1) % PARTITIONS as i32;
    foreign_increment(
        &bootstrap,
        &prefix,
        elsewhere,
        Some(aggregate),
        aggregate,
        "foreign-1",
    )
    .await;
    let topic = format!("{prefix}.counter.events");
    let deadline = Instant::now() + Duration::from_secs(60);
    while raw_log::read(&bootstrap, &topic, Isolation::Committed).len() < 6 {
        assert!(
            Instant::now() < deadline,
            "the foreign command was not applied"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(processor.stats().counters().forwarded, 1);
    processor.shutdown().await.expect("shutdown");

    // The group is empty now: set its offsets back to the start.
    let group = format!("{prefix}.counter.processor");
    let commands = format!("{prefix}.counter.commands");
    let resetter: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut start = TopicPartitionList::new();
    for p in 0..PARTITIONS as i32 {
        start
            .add_partition_offset(&commands, p, Offset::Offset(0))
            .unwrap();
    }
    resetter.commit(&start, CommitMode::Sync).unwrap();
    let committed = resetter
        .committed_offsets(start.clone(), Duration::from_secs(10))
        .unwrap();
    for element in committed.elements() {
        assert_eq!(element.offset(), Offset::Offset(0), "{element:?}");
    }
    drop(resetter);

    let restarted = counter_processor(&bootstrap, &prefix, PARTITIONS as i32)
        .start()
        .await
        .expect("processor");
    // One new command per partition: each is decided after whatever its partition
    // consumed again from the start.
    let mut ids = Vec::new();
    for n in 0.. {
        let id = format!("agg-{n}");
        let p = partition_for(id.as_bytes(), PARTITIONS);
        if !ids.iter().any(|(q, _)| *q == p) {
            ids.push((p, id));
        }
        if ids.len() == PARTITIONS {
            break;
        }
    }
    for (_, id) in &ids {
        assert!(gateway.send(increment(id)).await.unwrap().is_accepted());
    }
    match gateway.send(increment(aggregate)).await.unwrap() {
        CommandOutcome::Accepted { version, .. } => assert_eq!(version, 7),
        CommandOutcome::Rejected(e) => panic!("{e}"),
    }
    let counters = restarted.stats().counters();
    assert_eq!(
        (counters.forwarded, counters.duplicates, counters.commands),
        (0, 0, PARTITIONS as u64 + 1),
        "commands decided before the restart were consumed again: {counters:?}"
    );
    raw_log::assert_single_writer(&raw_log::read(&bootstrap, &topic, Isolation::Committed));
    restarted.shutdown().await.expect("shutdown");
}

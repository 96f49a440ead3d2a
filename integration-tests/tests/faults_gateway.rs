//! The reply path under faults: a garbled reply is reported as such at once, not as
//! a timeout; a reply producer with a fatal error is replaced, so replies keep
//! coming (G3).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tributary::KafkaConfig;
use tributary::command::{CommandGateway, GatewayError, TopicSettings, ensure_topics};
use tributary_integration_tests::command_support::{Increment, counter_processor};
use tributary_integration_tests::{kafka_bootstrap, unique_prefix};

/// The command id and reply partition of the first command on the commands topic.
fn first_command(bootstrap: &str, topic: &str) -> (String, i32) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "faults-gateway-reader")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "no command on {topic}");
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let header = |name: &str| {
                message
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == name).and_then(|h| h.value))
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap()
            };
            return (
                header("ce_id"),
                header("tributary_replypartition").parse().unwrap(),
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_garbled_reply_is_bad_reply_not_a_timeout() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("fault-reply");
    let kafka = KafkaConfig::new(&bootstrap);
    // Topics, but no processor: the only reply will be the garbled one.
    ensure_topics(
        &kafka,
        &prefix,
        "counter",
        &TopicSettings {
            partitions: 1,
            reply_partitions: 2,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let gateway =
        CommandGateway::connect_with_timeout(kafka.clone(), &prefix, Duration::from_secs(30))
            .await
            .unwrap();
    let started = Instant::now();
    let send = tokio::spawn({
        let gateway = gateway.clone();
        async move {
            gateway
                .send(Increment {
                    id: "g".into(),
                    by: 1,
                })
                .await
        }
    });
    let (command_id, reply_partition) = tokio::task::spawn_blocking({
        let (bootstrap, topic) = (bootstrap.clone(), format!("{prefix}.counter.commands"));
        move || first_command(&bootstrap, &topic)
    })
    .await
    .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(&format!("{prefix}.replies"))
                .partition(reply_partition)
                .key(&command_id)
                .payload("{\"command_id\": garbled"),
            Duration::from_secs(10),
        )
        .await
        .expect("produce the garbled reply");
    match send.await.unwrap() {
        Err(GatewayError::BadReply {
            command_id: id,
            reason,
        }) => {
            assert_eq!(id, command_id);
            assert!(reason.contains("not a Tributary reply"), "{reason}");
        }
        other => panic!("expected BadReply, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}: the garbled reply was not noticed",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_producer_with_a_fatal_error_is_replaced() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("fault-replyprod");
    let processor = counter_processor(&bootstrap, &prefix, 1)
        .start()
        .await
        .expect("processor");
    // Its replies through the replies topic, as for a gateway of another process: a
    // gateway of the processor's own process gets them in memory, without the
    // reply producer.
    let gateway = CommandGateway::connect_with_timeout(
        KafkaConfig::new(&bootstrap),
        &prefix,
        Duration::from_secs(20),
    )
    .await
    .unwrap()
    .without_in_process_replies();
    let increment = || Increment {
        id: "r".into(),
        by: 1,
    };
    assert!(gateway.send(increment()).await.unwrap().is_accepted());
    // librdkafka offers no safe way to raise a fatal error; the processor is told to
    // treat its reply producer as fatally failed, which it is then never to use again.
    processor.fail_reply_producer();
    for expected in 2..=4 {
        match gateway.send(increment()).await.unwrap() {
            tributary::command::CommandOutcome::Accepted { version, .. } => {
                assert_eq!(version, expected);
            }
            tributary::command::CommandOutcome::Rejected(e) => panic!("{e}"),
        }
    }
    assert_eq!(processor.stats().counters().reply_producers_replaced, 1);
    processor.shutdown().await.expect("shutdown");
}

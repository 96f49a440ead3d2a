//! The e-commerce sample, first cut: the order aggregate decides on commands in
//! process, its events are written to Kafka in Tributary's wire format and read back.
//! The full shop (command processors, inventory, projections, HTTP API) builds on it.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tributary::{Apply, EventCodec, EventEnvelope, Handle, kafka};

mod order;

use order::{Order, OrderEvent, PlaceOrder, ConfirmOrder};

#[derive(Debug, thiserror::Error)]
enum SampleError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("encoding: {0}")]
    Encode(#[from] tributary::EncodeError),
    #[error("decoding: {0}")]
    Decode(#[from] tributary::DecodeError),
    #[error("bad prefix: {0}")]
    Prefix(#[from] tributary::InvalidPrefix),
    #[error("order rejected: {0}")]
    Rejected(#[from] order::OrderError),
    #[error("timed out waiting for the broker")]
    Timeout,
}

#[tokio::main]
async fn main() {
    if let Err(err) = run().await {
        eprintln!("example-shop: {err}");
        std::process::exit(1);
    }
}

#[allow(clippy::print_stdout)]
async fn run() -> Result<(), SampleError> {
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let prefix = format!("sample{}", std::process::id());
    let codec = EventCodec::<OrderEvent>::new(prefix)?;
    let topic = codec.events_topic();

    // Decide: the aggregate handles commands and its state evolves by its events.
    let mut order = Order::default();
    let mut envelopes = Vec::new();
    let commands: Vec<Box<dyn Fn(&Order) -> Result<Vec<OrderEvent>, order::OrderError>>> = vec![
        Box::new(|o| o.handle(PlaceOrder::example("order-1"))),
        Box::new(|o| o.handle(ConfirmOrder { order_id: "order-1".into() })),
    ];
    for decide in commands {
        for event in decide(&order)? {
            order.apply(&event);
            envelopes.push(EventEnvelope::new("order-1", envelopes.len() as u64 + 1, event));
        }
    }

    // Write the events in the CloudEvents binary mode.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .create()?;
    let mut first = None;
    for envelope in &envelopes {
        let record = codec.encode(envelope)?;
        let delivery = producer
            .send(record.to_future_record(&topic), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
        first.get_or_insert((delivery.partition, delivery.offset));
    }
    producer.flush(Duration::from_secs(10))?;

    // Read them back with a plain consumer and decode.
    let (partition, offset) = first.ok_or(SampleError::Timeout)?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "example-shop")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
    consumer.assign(&tpl)?;
    println!("{topic}, partition {partition}:");
    for _ in &envelopes {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .map_err(|_| SampleError::Timeout)??;
        let decoded = codec.decode(&kafka::record_ref(&message))?;
        println!(
            "  #{} {} {:?}",
            decoded.sequence,
            decoded.event_type(),
            decoded.event
        );
    }
    println!("order-1 is {:?} with a total of {} cents", order.status(), order.total_cents());
    Ok(())
}

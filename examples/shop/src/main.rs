//! The e-commerce sample, first cut: an order command processor on Kafka, commands
//! sent through the gateway, outcomes printed. The full shop (inventory, process
//! manager, projections, HTTP API) builds on it.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::Duration;

use example_shop::order::{ConfirmOrder, Order, PlaceOrder};
use tributary::KafkaConfig;
use tributary::command::{
    CommandGateway, CommandOutcome, CommandProcessor, ProcessorSettings, TopicSettings,
};

#[tokio::main]
async fn main() {
    if let Err(err) = run().await {
        eprintln!("example-shop: {err}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let kafka = KafkaConfig::from_env();
    let prefix = format!("sample{}", std::process::id());
    println!(
        "Starting the order processor on {} (topics {prefix}.order.*)",
        kafka.bootstrap_servers()
    );
    let processor = CommandProcessor::<Order>::new(kafka.clone(), &prefix)?
        .handle::<PlaceOrder>()
        .handle::<ConfirmOrder>()
        .settings(ProcessorSettings {
            session_timeout: Duration::from_secs(6),
            ..Default::default()
        })
        .topics(TopicSettings {
            partitions: 3,
            reply_partitions: 3,
            ..Default::default()
        })
        .start()
        .await?;
    let gateway =
        CommandGateway::connect_with_timeout(&kafka, &prefix, Duration::from_secs(30)).await?;

    let place = gateway.send(PlaceOrder::example("order-1")).await?;
    report("PlaceOrder   order-1", place);
    let confirm = gateway
        .send(ConfirmOrder {
            order_id: "order-1".into(),
        })
        .await?;
    report("ConfirmOrder order-1", confirm);
    let again = gateway
        .send(ConfirmOrder {
            order_id: "order-1".into(),
        })
        .await?;
    report("ConfirmOrder order-1", again);
    let missing = gateway
        .send(ConfirmOrder {
            order_id: "order-2".into(),
        })
        .await?;
    report("ConfirmOrder order-2", missing);

    processor.shutdown().await?;
    Ok(())
}

fn report(what: &str, outcome: CommandOutcome<Order>) {
    match outcome {
        CommandOutcome::Accepted { version, events } => {
            println!("{what}: accepted, order now at version {version}");
            for e in events {
                println!("    #{} {} {:?}", e.sequence, e.event_type(), e.event);
            }
        }
        CommandOutcome::Rejected(error) => println!("{what}: rejected: {error}"),
    }
}

//! What callers see of the processor's batching and replies. Within one process a
//! processor hands the outcome of a command from a gateway of its own process over in
//! memory, after the commit, and produces no reply record for it; a gateway that
//! turned this off (as a gateway of another process) still gets every reply through
//! the replies topic (G3). With `gather_after_commit`, callers in a closed loop on a
//! hot aggregate share one transaction per round instead of splitting into groups.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use tributary::command::{CommandGateway, CommandOutcome, FaultPoint, ProcessorSettings};
use tributary_integration_tests::command_support::{
    Increment, counter_processor, increment, test_settings,
};
use tributary_integration_tests::transaction_support::gateway;
use tributary_integration_tests::{kafka_bootstrap, unique_prefix};

/// Records on the replies topic, over all its partitions.
fn reply_records(bootstrap: &str, prefix: &str) -> i64 {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let topic = format!("{prefix}.replies");
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .unwrap();
    let partitions = metadata.topics()[0].partitions().len() as i32;
    assert!(partitions > 0, "no replies topic");
    (0..partitions)
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(10))
                .unwrap();
            high - low
        })
        .sum()
}

/// Sends `n` increments of `id` one after another and checks each version.
async fn increments(gateway: &CommandGateway, id: &str, n: u64) {
    for expected in 1..=n {
        assert_eq!(increment(gateway, id).await, expected, "aggregate {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_of_the_same_process_gets_its_replies_in_memory() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("cmd-inproc");
    let processor = counter_processor(&bootstrap, &prefix, 2)
        .start()
        .await
        .expect("processor");
    let local = gateway(&bootstrap, &prefix).await;
    let remote = gateway(&bootstrap, &prefix)
        .await
        .without_in_process_replies();

    // Both at once, on aggregates of their own, so that their replies share
    // transactions.
    tokio::join!(
        increments(&local, "local", 20),
        increments(&remote, "remote", 15)
    );

    let counters = processor.stats().counters();
    assert_eq!(counters.accepted, 35);
    assert_eq!(counters.replies_in_process, 20, "{counters:?}");
    // The replies to the remote gateway were produced before its sends returned,
    // and no reply record was written for the local one.
    assert_eq!(reply_records(&bootstrap, &prefix), 15);

    // A resent command id is answered from the dedup window, in memory too.
    let resend = tributary::command::SendOptions {
        command_id: Some("resent".into()),
        ..Default::default()
    };
    for gateway in [&local, &local, &remote] {
        let outcome = gateway
            .send_with(
                Increment {
                    id: "local".into(),
                    by: 1,
                },
                resend.clone(),
            )
            .await
            .expect("send");
        assert!(matches!(
            outcome,
            CommandOutcome::Accepted { version: 21, .. }
        ));
    }
    let counters = processor.stats().counters();
    assert_eq!(counters.duplicates, 2);
    assert_eq!(counters.replies_in_process, 22);
    assert_eq!(reply_records(&bootstrap, &prefix), 16);
    processor.shutdown().await.expect("shutdown");
}

/// Callers in a closed loop on one aggregate, split into a group of one and a group
/// of nineteen by a slow first transaction. Without gathering the two groups would
/// keep alternating, two transactions per round; with it the partition waits after
/// each commit for the answered callers' next commands, and every later round is one
/// transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closed_loop_callers_on_a_hot_aggregate_share_one_transaction_per_round() {
    const CALLERS: usize = 20;
    const ROUNDS: u64 = 10;
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("cmd-gather");
    let slow_commit = Arc::new(AtomicBool::new(false));
    let processor = {
        let slow_commit = Arc::clone(&slow_commit);
        counter_processor(&bootstrap, &prefix, 1)
            .settings(ProcessorSettings {
                // The most it may be: a slow machine's way in stays far below it.
                gather_after_commit: Duration::from_secs(1),
                ..test_settings()
            })
            .fault_hook(move |point, _| {
                if point == FaultPoint::BeforeCommit && slow_commit.swap(false, Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
            .start()
            .await
            .expect("processor")
    };
    let gateway = gateway(&bootstrap, &prefix).await;
    // The first assignment and restore, before counting.
    increments(&gateway, "warm", 1).await;
    let before = processor.stats().counters();

    let caller = |gateway: CommandGateway| {
        tokio::spawn(async move {
            for _ in 0..ROUNDS {
                increment(&gateway, "hot").await;
            }
        })
    };
    // The first caller's first command alone in a transaction held for a second,
    // during which the others send theirs.
    slow_commit.store(true, Ordering::SeqCst);
    let mut callers = vec![caller(gateway.clone())];
    tokio::time::sleep(Duration::from_millis(300)).await;
    callers.extend((1..CALLERS).map(|_| caller(gateway.clone())));
    for c in callers {
        c.await.expect("caller");
    }

    let after = processor.stats().counters();
    assert_eq!(after.accepted - before.accepted, CALLERS as u64 * ROUNDS);
    let transactions = after.transactions - before.transactions;
    // The slow one, then one per round (and one spare for a command that came late).
    assert!(
        transactions <= ROUNDS + 2,
        "{transactions} transactions for {ROUNDS} rounds of {CALLERS} callers"
    );
    processor.shutdown().await.expect("shutdown");
}

//! Bounded memory (`ProcessorSettings::max_cached_aggregates`): a processor keeps
//! at most about its limit of aggregates in memory, evicts only aggregates whose
//! snapshot row is confirmed, loads an evicted aggregate from its row on its next
//! command, and restores a partition with more rows than its share lazily. Nothing
//! of any aggregate is lost: every state and every sequence stays exact.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tributary::command::{
    CommandGateway, CommandOutcome, CommandProcessor, ProcessorSettings, TopicSettings,
    ensure_topics,
};
use tributary::{KafkaConfig, PgStore};
use tributary_integration_tests::command_support::{
    Check, Counter, Increment, assert_gapless, counter_processor, read_counter_events,
    test_settings,
};
use tributary_integration_tests::node::Node;
use tributary_integration_tests::projection_support::wait_until;
use tributary_integration_tests::{database_url, kafka_bootstrap, pg_store, unique_prefix};

const AGGREGATES: usize = 200;
const LIMIT: usize = 40;
const FLUSH_EVERY: u64 = 20;
const PARTITIONS: i32 = 2;

fn bounded() -> ProcessorSettings {
    ProcessorSettings {
        max_cached_aggregates: LIMIT,
        flush_every: FLUSH_EVERY,
        ..test_settings()
    }
}

fn processor(bootstrap: &str, prefix: &str, store: &PgStore) -> CommandProcessor<Counter> {
    counter_processor(bootstrap, prefix, PARTITIONS)
        .snapshots(store.clone())
        .settings(bounded())
}

async fn gateway(bootstrap: &str, prefix: &str) -> CommandGateway {
    CommandGateway::connect_with_timeout(
        KafkaConfig::new(bootstrap),
        prefix,
        Duration::from_secs(30),
    )
    .await
    .expect("gateway")
}

fn id(i: usize) -> String {
    format!("c-{i:03}")
}

/// One increment of every aggregate, by 10 concurrent callers, in an order that
/// changes from round to round (so recency differs from id order).
async fn round(gateway: &CommandGateway, round: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (gateway, next) = (gateway.clone(), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= AGGREGATES {
                    break;
                }
                let i = (n * 7 + round * 31) % AGGREGATES;
                let outcome = gateway
                    .send(Increment { id: id(i), by: 1 })
                    .await
                    .expect("increment");
                assert!(outcome.is_accepted(), "{}: {outcome:?}", id(i));
            }
        }));
    }
    for task in tasks {
        task.await.expect("caller");
    }
}

/// Every aggregate's state is `expected` (the `Check` command is refused otherwise).
async fn expect_all(gateway: &CommandGateway, expected: u64) {
    for i in 0..AGGREGATES {
        let check = Check {
            id: id(i),
            expected,
        };
        match gateway.send(check).await.expect("check") {
            CommandOutcome::Accepted { events, .. } => assert!(events.is_empty()),
            CommandOutcome::Rejected(e) => panic!("aggregate {}: {e}", id(i)),
        }
    }
}

/// Every aggregate has exactly `n` events, with sequences 1..=n.
fn expect_events(bootstrap: &str, prefix: &str, n: u64) {
    let counts = assert_gapless(&read_counter_events(bootstrap, prefix));
    assert_eq!(counts.len(), AGGREGATES);
    for (aggregate, count) in counts {
        assert_eq!(count, n, "{aggregate}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_processor_holds_at_most_about_its_limit_and_loses_nothing() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("cmd-cache");
    let store = pg_store(&prefix).await;
    let processor = processor(&bootstrap, &prefix, &store)
        .start()
        .await
        .expect("processor");
    let gateway = gateway(&bootstrap, &prefix).await;

    let mut most = 0;
    for r in 0..3 {
        round(&gateway, r).await;
        let held = processor.stats().cached_aggregates();
        most = most.max(held);
        // The limit, plus per partition a sixteenth of its share and what changed
        // since its last snapshot; far below the 200 aggregates of the run.
        assert!(
            held <= (LIMIT + 2 * FLUSH_EVERY as usize) as u64,
            "round {r}: {held} in memory"
        );
    }
    // The checks read every aggregate, most of them from their snapshot rows.
    expect_all(&gateway, 3).await;
    let counters = processor.stats().counters();
    assert!(counters.aggregates_evicted >= 100, "{counters:?}");
    assert!(counters.aggregates_loaded >= 100, "{counters:?}");
    processor.shutdown().await.expect("shutdown");
    expect_events(&bootstrap, &prefix, 3);
    println!(
        "most in memory: {most}; evicted {}, loaded {}",
        counters.aggregates_evicted, counters.aggregates_loaded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_owner_s_partitions_are_restored_lazily_and_continue_exactly() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("cmd-cache-kill");
    let store = pg_store(&prefix).await;
    // The topics first, so the first commands wait for the node, not for topics.
    let topics = TopicSettings {
        partitions: PARTITIONS,
        reply_partitions: 4,
        ..Default::default()
    };
    ensure_topics(&KafkaConfig::new(&bootstrap), &prefix, "counter", &topics)
        .await
        .expect("topics");
    let gateway = gateway(&bootstrap, &prefix).await;
    let (flush, limit) = (FLUSH_EVERY.to_string(), LIMIT.to_string());
    let mut node = Node::counter(
        env!("CARGO_BIN_EXE_counter_node"),
        &bootstrap,
        &prefix,
        PARTITIONS as u32,
        &[
            ("TRIBUTARY_SNAPSHOT_SCHEMA", store.schema()),
            ("TRIBUTARY_FLUSH_EVERY", &flush),
            ("TRIBUTARY_MAX_CACHED", &limit),
            ("DATABASE_URL", &database_url()),
        ],
    );
    round(&gateway, 0).await;
    round(&gateway, 1).await;
    // A crash: no hand-over and no final snapshot, so the events after each
    // partition's last watermark are in no row.
    node.kill();

    let processor = processor(&bootstrap, &prefix, &store)
        .start()
        .await
        .expect("processor");
    // Its first command waits for its own partition's restore; the other partition
    // restores on a thread of its own and may finish later.
    expect_one(&gateway, 0, 2).await;
    wait_until(Duration::from_secs(60), "every partition restored", || {
        let restores = processor.stats().counters().restores;
        async move { restores >= PARTITIONS as u64 }
    })
    .await;
    let after_restore = processor.stats().counters();
    let held = processor.stats().cached_aggregates();
    assert_eq!(after_restore.restores, PARTITIONS as u64);
    // Only the aggregates with events after the watermarks (and the one checked),
    // not all 200 that have rows.
    assert!(
        held < 100,
        "{held} aggregates in memory after a lazy restore"
    );
    assert!(
        after_restore.restore_events_applied < 2 * AGGREGATES as u64,
        "{after_restore:?}"
    );

    round(&gateway, 2).await;
    expect_all(&gateway, 3).await;
    processor.shutdown().await.expect("shutdown");
    expect_events(&bootstrap, &prefix, 3);
}

async fn expect_one(gateway: &CommandGateway, i: usize, expected: u64) {
    let check = Check {
        id: id(i),
        expected,
    };
    match gateway.send(check).await.expect("check") {
        CommandOutcome::Accepted { .. } => {}
        CommandOutcome::Rejected(e) => panic!("aggregate {}: {e}", id(i)),
    }
}

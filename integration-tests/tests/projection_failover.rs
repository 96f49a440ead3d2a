//! G4 across workers: two workers share a projection's partitions; one stops, the
//! other takes over from the Postgres checkpoints; and a worker whose checkpoint was
//! moved by another owner while its batch was open cannot commit that batch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use tributary::EventEnvelope;
use tributary::projection::{ProjectionSettings, ProjectionWorker};
use tributary_integration_tests::projection_support::EventsTopic;
use tributary_integration_tests::projection_support::{
    AccountEvent, RawRecord, Totals, expected_totals, kafka_config, produce, read_log, read_totals,
    test_config, test_store, wait_caught_up, wait_until,
};
use tributary_integration_tests::{create_topic, kafka_bootstrap, unique_prefix};

fn deposits(codec: &EventsTopic<AccountEvent>, from: usize, count: usize) -> Vec<RawRecord> {
    (from..from + count)
        .map(|i| {
            let envelope = EventEnvelope::new(
                format!("acc-{}", i % 31),
                (i / 31 + 1) as u64,
                AccountEvent::Deposited {
                    amount: (i % 100) as i64 + 1,
                },
            );
            codec.encode(&envelope).into()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_survivor_continues_from_the_checkpoints_and_a_stale_commit_is_rejected() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("proj-failover");
    let codec = EventsTopic::<AccountEvent>::new(&prefix);
    let topic = codec.name.clone();
    create_topic(&bootstrap, &topic, 4).await;
    let store = test_store(&prefix).await;

    let totals_a = Totals::default();
    let totals_b = Totals::default();
    let worker = |totals: &Totals| {
        ProjectionWorker::new(totals.clone(), store.clone(), kafka_config(&bootstrap))
            .subscribe(&codec.prefix, codec.codec.clone())
            .settings(ProjectionSettings {
                batch_size: 50,
                ..test_config()
            })
    };
    let (worker_a, worker_b) = (worker(&totals_a), worker(&totals_b));
    let a = worker_a.clone().spawn();
    let b = worker_b.clone().spawn();

    // Both own partitions (the load comes only then: on a broker without a join
    // delay, the first worker would otherwise apply everything before the second
    // one joins), then both apply events.
    wait_until(
        Duration::from_secs(60),
        "both workers to own partitions",
        || {
            let (sa, sb) = (worker_a.status(), worker_b.status());
            async move { !sa.partitions.is_empty() && !sb.partitions.is_empty() }
        },
    )
    .await;
    produce(&bootstrap, &topic, deposits(&codec, 0, 2000)).await;
    wait_until(
        Duration::from_secs(60),
        "both workers to own partitions and apply events",
        || {
            let (sa, sb) = (worker_a.status(), worker_b.status());
            async move {
                !sa.partitions.is_empty()
                    && !sb.partitions.is_empty()
                    && sa.applied > 0
                    && sb.applied > 0
            }
        },
    )
    .await;
    let (owned_a, owned_b) = (worker_a.status().partitions, worker_b.status().partitions);
    assert_eq!(owned_a.len() + owned_b.len(), 4, "{owned_a:?} {owned_b:?}");
    assert!(
        owned_a.iter().all(|p| !owned_b.contains(p)),
        "a partition owned twice"
    );

    // A stops; B takes every partition over and finishes, from the checkpoints.
    a.shutdown().await.expect("A shuts down cleanly");
    produce(&bootstrap, &topic, deposits(&codec, 2000, 1000)).await;
    wait_until(
        Duration::from_secs(60),
        "B to own all four partitions",
        || {
            let status = worker_b.status();
            async move { status.partitions.len() == 4 }
        },
    )
    .await;
    wait_caught_up(&store, &bootstrap, &topic, Duration::from_secs(60)).await;
    let log = read_log(&bootstrap, &topic).await;
    assert_eq!(read_totals(&store).await, expected_totals(&log));
    let applied_total = worker_a.status().applied + worker_b.status().applied;
    assert_eq!(
        applied_total, 3000,
        "A and B together applied each event once"
    );

    // Stale commit: B blocks inside a batch (transaction open) on the `gate` event;
    // meanwhile "another owner" applies that event and moves the checkpoint past it.
    // When B wakes up, its commit must be refused and its writes rolled back.
    totals_b.gate.armed.store(true, Ordering::SeqCst);
    let gate = EventEnvelope::new("gate", 1, AccountEvent::Deposited { amount: 1000 });
    let mut gate_record: RawRecord = codec.encode(&gate).into();
    gate_record.partition = Some(0);
    produce(&bootstrap, &topic, vec![gate_record]).await;
    tokio::time::timeout(Duration::from_secs(30), totals_b.gate.entered.notified())
        .await
        .expect("B never reached the gate event");
    let moved = sqlx::query(
        "UPDATE tributary_checkpoints SET next_offset = next_offset + 1
         WHERE topic = $1 AND partition = 0",
    )
    .bind(&topic)
    .execute(store.pool());
    // The other owner's effect of the gate event, in its own transaction.
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query("INSERT INTO account_totals (id, events, balance) VALUES ('gate', 1, 1000)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(moved.await.unwrap().rows_affected(), 1);
    totals_b.gate.armed.store(false, Ordering::SeqCst);
    totals_b.gate.release.notify_one();

    wait_until(Duration::from_secs(30), "B to report the conflict", || {
        let status = worker_b.status();
        async move { status.conflicts >= 1 }
    })
    .await;
    // B re-reads the checkpoint and goes on; the gate event counts once.
    produce(&bootstrap, &topic, deposits(&codec, 3000, 100)).await;
    wait_caught_up(&store, &bootstrap, &topic, Duration::from_secs(60)).await;
    let log = read_log(&bootstrap, &topic).await;
    let totals = read_totals(&store).await;
    assert_eq!(
        totals.get("gate"),
        Some(&(1, 1000)),
        "the gate event was applied twice or never"
    );
    assert_eq!(totals, expected_totals(&log));
    b.shutdown().await.expect("B shuts down cleanly");
}

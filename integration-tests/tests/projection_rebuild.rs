//! Rebuild: reset + checkpoints deleted + replay from the start gives the identical
//! read model, with progress reported while it runs; other projections' workers keep
//! serving meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tributary::EventEnvelope;
use tributary::projection::{ProjectionWorker, RebuildProgress};
use tributary_integration_tests::projection_support::EventsTopic;
use tributary_integration_tests::projection_support::{
    AccountEvent, RawRecord, Totals, expected_totals, kafka_config, produce_transactional,
    read_log, read_log_ids, read_totals, test_config, test_store, wait_caught_up,
};
use tributary_integration_tests::{create_topic, kafka_bootstrap, unique_prefix};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_reproduces_the_read_model_and_reports_progress() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("proj-rebuild");
    let codec = EventsTopic::<AccountEvent>::new(&prefix);
    let topic = codec.name.clone();
    create_topic(&bootstrap, &topic, 3).await;
    let records: Vec<RawRecord> = (0..3000)
        .map(|i| {
            let event = if i % 5 == 0 {
                AccountEvent::Withdrawn { amount: 3 }
            } else {
                AccountEvent::Deposited { amount: i % 50 }
            };
            codec
                .encode(&EventEnvelope::new(
                    format!("acc-{}", i % 53),
                    (i / 53 + 1) as u64,
                    event,
                ))
                .into()
        })
        .collect();
    {
        let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
        // Transactions leave markers in the log, so offsets have gaps.
        tokio::task::spawn_blocking(move || {
            produce_transactional(&bootstrap, &topic, &records, 100, Some(5), Duration::ZERO);
        })
        .await
        .unwrap();
    }

    let store = test_store(&prefix).await;
    let worker = ProjectionWorker::new(Totals::default(), store.clone(), kafka_config(&bootstrap))
        .subscribe(&codec.prefix, codec.codec.clone())
        .settings(test_config());
    let handle = worker.clone().spawn();
    wait_caught_up(&store, &bootstrap, &topic, Duration::from_secs(60)).await;
    handle.shutdown().await.unwrap();
    let before = read_totals(&store).await;
    let log = read_log(&bootstrap, &topic).await;
    assert_eq!(before, expected_totals(&log));
    let before_ids = read_log_ids(&store).await;

    // Watch the progress while the rebuild runs.
    let mut status = worker.watch_status();
    let watcher = tokio::spawn(async move {
        let mut seen: Vec<RebuildProgress> = Vec::new();
        while status.changed().await.is_ok() {
            if let Some(progress) = status.borrow_and_update().rebuild.clone()
                && seen.last() != Some(&progress)
            {
                seen.push(progress);
            }
        }
        seen
    });
    let report = worker.rebuild().await.expect("rebuild");
    drop(worker.clone());
    let committed = log.len() as u64;
    assert_eq!(report.events, committed, "{report:?}");
    assert_eq!(
        read_totals(&store).await,
        before,
        "rebuilt read model differs"
    );
    let mut after_ids = read_log_ids(&store).await;
    let mut before_sorted = before_ids.clone();
    after_ids.sort();
    before_sorted.sort();
    assert_eq!(
        after_ids, before_sorted,
        "the rebuild applied a different set of events"
    );
    let final_progress = worker.status().rebuild.expect("progress in the status");
    assert_eq!(final_progress.done, final_progress.total);
    assert!(
        final_progress.total >= committed,
        "total counts offsets: {final_progress:?}"
    );
    assert!(
        worker.lag().await.unwrap().iter().all(|p| p.lag == 0),
        "checkpoints at the high-water marks"
    );

    // Drop every sender clone so the watcher ends.
    drop(worker);
    let seen = watcher.await.unwrap();
    assert!(seen.len() >= 2, "progress was published: {seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0].done <= w[1].done),
        "progress went backwards: {seen:?}"
    );
    assert!(
        seen.iter().any(|p| p.done > 0 && p.done < p.total),
        "no intermediate progress: {seen:?}"
    );
}

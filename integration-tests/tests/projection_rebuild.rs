//! Rebuild: reset + checkpoints deleted + replay from the start gives the identical
//! read model, with progress reported while it runs; other projections' workers keep
//! serving meanwhile; with `max_partitions_at_once`, several partitions' batches are
//! applied at the same time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgConnection;
use tributary::EventEnvelope;
use tributary::projection::{
    HandlerError, Handles, Projection, ProjectionSettings, ProjectionWorker, RebuildProgress,
};
use tributary_integration_tests::projection_support::EventsTopic;
use tributary_integration_tests::projection_support::{
    AccountEvent, RawRecord, Totals, expected_totals, kafka_config, produce, produce_transactional,
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

/// Counts the handler calls running at once. The first two calls each wait (up to
/// `wait`) for a second call to be running beside them: a handler call of one batch
/// never runs beside another of the same batch, so only another partition's batch
/// can meet them.
#[derive(Debug, Clone, Default)]
struct Overlap {
    calls: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    /// How long each of the first two calls waits for another beside it.
    wait: Duration,
}

impl Projection for Overlap {
    const NAME: &'static str = "overlap_counts";

    async fn migrate(&self, tx: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS overlap_counts (id text PRIMARY KEY, events bigint NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query("TRUNCATE overlap_counts").execute(tx).await?;
        Ok(())
    }
}

impl Handles<AccountEvent> for Overlap {
    async fn handle(
        &self,
        event: &EventEnvelope<AccountEvent>,
        tx: &mut PgConnection,
    ) -> Result<(), HandlerError> {
        let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(running, Ordering::SeqCst);
        if self.calls.fetch_add(1, Ordering::SeqCst) < 2 {
            let deadline = Instant::now() + self.wait;
            // `most`, not `running`: once two calls met, neither waits on, even if
            // the other has finished before this one looks.
            while self.most.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.most
                .fetch_max(self.running.load(Ordering::SeqCst), Ordering::SeqCst);
        }
        let result = sqlx::query(
            "INSERT INTO overlap_counts (id, events) VALUES ($1, 1)
             ON CONFLICT (id) DO UPDATE SET events = overlap_counts.events + 1",
        )
        .bind(event.aggregate_id.as_str())
        .execute(&mut *tx)
        .await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        result?;
        Ok(())
    }
}

/// `max_partitions_at_once` lets a rebuild apply two partitions' batches at the same
/// time (and the default does not), and the read model is the same either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_applies_partitions_at_once_only_when_allowed() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("proj-overlap");
    let codec = EventsTopic::<AccountEvent>::new(&prefix);
    let topic = codec.name.clone();
    create_topic(&bootstrap, &topic, 2).await;
    // 20 events of 4 accounts in each partition, all written before the rebuild, so
    // its first batch holds both partitions.
    let records: Vec<RawRecord> = (0..40)
        .map(|i| {
            let partition = i % 2;
            let account = format!("acc-{partition}-{}", (i / 2) % 4);
            let envelope = EventEnvelope::new(
                account,
                (i / 8 + 1) as u64,
                AccountEvent::Deposited { amount: 1 },
            );
            RawRecord {
                partition: Some(partition),
                ..codec.encode(&envelope).into()
            }
        })
        .collect();
    produce(&bootstrap, &topic, records).await;
    let store = test_store(&prefix).await;

    for at_once in [1, 2] {
        let overlap = Overlap {
            // Long where a second call is expected (it ends as soon as one runs);
            // short where none may come, as it is always waited out.
            wait: Duration::from_secs(if at_once == 2 { 30 } else { 3 }),
            ..Overlap::default()
        };
        let worker =
            ProjectionWorker::new(overlap.clone(), store.clone(), kafka_config(&bootstrap))
                .subscribe(&codec.prefix, codec.codec.clone())
                .settings(ProjectionSettings {
                    max_partitions_at_once: at_once,
                    // Both partitions' records in the first batch: it waits 5 s
                    // after the first record, for a broker slow to serve the other
                    // partition (a batch used to close at 250 ms whatever this
                    // said).
                    max_wait: Duration::from_secs(5),
                    ..test_config()
                });
        let report = worker.rebuild().await.expect("rebuild");
        assert_eq!(report.events, 40, "at once {at_once}");
        assert_eq!(
            overlap.most.load(Ordering::SeqCst),
            at_once,
            "handler calls running at once, with max_partitions_at_once = {at_once}"
        );
        let counts: Vec<(String, i64)> =
            sqlx::query_as("SELECT id, events FROM overlap_counts ORDER BY id")
                .fetch_all(store.pool())
                .await
                .unwrap();
        assert_eq!(counts.len(), 8, "{counts:?}");
        assert!(counts.iter().all(|(_, n)| *n == 5), "{counts:?}");
    }
}

//! Reading one aggregate's history and state through the event index
//! (`tributary::history`): only its own records are fetched, not its partition;
//! events written after the index's checkpoint are found too; and `load` agrees
//! with the command processor's own state, snapshots included.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tributary::history::{EventIndex, History, HistoryError};
use tributary::projection::{ProjectionHandle, ProjectionWorker};
use tributary::{EventCodec, EventEnvelope, PgStore};
use tributary_integration_tests::command_support::{Counter, CounterEvent, Increment};
use tributary_integration_tests::projection_support::{
    EventsTopic, RawRecord, kafka_config, produce, test_config,
};
use tributary_integration_tests::{create_topic, kafka_bootstrap, pg_store, unique_prefix};

/// Noise: other aggregates' events between the target's.
const OTHERS: usize = 300;
const PER_OTHER: u64 = 10;

fn index_worker(bootstrap: &str, prefix: &str, store: &PgStore) -> ProjectionWorker<EventIndex> {
    ProjectionWorker::new(EventIndex, store.clone(), kafka_config(bootstrap))
        .index::<Counter>(prefix)
        .settings(test_config())
}

/// `target`'s events 1..=n interleaved with the other aggregates' events, in one
/// partition: 3,000 records of others, and `n` of the target spread among them.
fn log(topic: &EventsTopic<CounterEvent>, target: &str, n: u64) -> Vec<RawRecord> {
    let mut records = Vec::new();
    let mut next = 1;
    for round in 1..=PER_OTHER {
        for other in 0..OTHERS {
            let envelope = EventEnvelope::new(
                format!("other-{other}"),
                round,
                CounterEvent::Incremented { by: 1 },
            );
            records.push(RawRecord::from(topic.encode(&envelope)));
        }
        if next <= n {
            let by = u32::try_from(next).unwrap();
            let envelope = EventEnvelope::new(target, next, CounterEvent::Incremented { by });
            records.push(RawRecord::from(topic.encode(&envelope)));
            next += 1;
        }
    }
    records
}

/// Runs the index until it has caught up: lag 0 on every partition (the worker
/// moves its checkpoints past transaction markers at the end of a partition).
async fn spawn_index(bootstrap: &str, prefix: &str, store: &PgStore) -> ProjectionHandle {
    let worker = index_worker(bootstrap, prefix, store);
    let handle = worker.clone().spawn();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let lag = worker.lag().await.unwrap();
        if lag
            .iter()
            .all(|p| (p.lag == 0 && p.checkpoint.is_some()) || p.high_watermark == 0)
        {
            return handle;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the index did not catch up: {lag:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregates_history_fetches_its_records_not_its_partition() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("history");
    let store = pg_store(&prefix).await;
    let topic = EventsTopic::<CounterEvent>::new(&prefix);
    create_topic(&bootstrap, &topic.name, 1).await;
    produce(&bootstrap, &topic.name, log(&topic, "target", 5)).await;
    let index = spawn_index(&bootstrap, &prefix, &store).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tributary_event_index")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(rows, (OTHERS as i64) * PER_OTHER as i64 + 5);

    let history = History::<Counter>::connect(
        &kafka_config(&bootstrap),
        store.clone(),
        &prefix,
        EventCodec::new(),
    )
    .await
    .unwrap();
    let events = history.history("target", 1).await.unwrap();
    let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, [1, 2, 3, 4, 5]);
    assert!(events.iter().all(|e| e.aggregate_id.as_str() == "target"));
    assert_eq!(
        events[2].event,
        CounterEvent::Incremented { by: 3 },
        "the third event"
    );
    // 3,005 records in the partition; the target's five are 300 apart.
    let read = history.records_read();
    assert!((5..50).contains(&read), "read {read} records for 5 events");

    let later = history.history("target", 4).await.unwrap();
    assert_eq!(later.iter().map(|e| e.sequence).collect::<Vec<_>>(), [4, 5]);
    assert!(history.history("target", 6).await.unwrap().is_empty());
    assert!(history.history("nobody", 1).await.unwrap().is_empty());
    let (state, version) = history.load("target").await.unwrap();
    assert_eq!((state.value, version), (1 + 2 + 3 + 4 + 5, 5));
    assert_eq!(history.load("nobody").await.unwrap().1, 0);

    // Events written while the index is not running are read from the
    // partition after the index's checkpoint: a complete history, at the cost of
    // reading what came since.
    index.shutdown().await.unwrap();
    let more: Vec<RawRecord> = (6..=7)
        .map(|n| {
            let by = u32::try_from(n).unwrap();
            RawRecord::from(topic.encode(&EventEnvelope::new(
                "target",
                n,
                CounterEvent::Incremented { by },
            )))
        })
        .collect();
    produce(&bootstrap, &topic.name, more).await;
    let before = history.records_read();
    let events = history.history("target", 1).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6, 7]
    );
    assert!(history.records_read() - before < 50);
    assert_eq!(history.load("target").await.unwrap().1, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_index_a_read_says_to_run_one_instead_of_scanning() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("history-none");
    let store = pg_store(&prefix).await;
    let topic = EventsTopic::<CounterEvent>::new(&prefix);
    create_topic(&bootstrap, &topic.name, 1).await;
    produce(&bootstrap, &topic.name, log(&topic, "target", 2)).await;
    // The index table exists (the worker migrated it) but it never ran.
    index_worker(&bootstrap, &prefix, &store)
        .migrate()
        .await
        .unwrap();
    let history =
        History::<Counter>::connect(&kafka_config(&bootstrap), store, &prefix, EventCodec::new())
            .await
            .unwrap();
    let error = history.history("target", 1).await.unwrap_err();
    assert!(
        matches!(error, HistoryError::NotIndexed { partition: 0, .. }),
        "{error}"
    );
    assert_eq!(history.records_read(), 0);
    let missing = History::<Counter>::connect(
        &kafka_config(&bootstrap),
        pg_store(&prefix).await,
        &format!("{prefix}-x"),
        EventCodec::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(missing, HistoryError::NoTopic(_)), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_agrees_with_the_processor_from_its_snapshot_and_the_events_after_it() {
    use tributary::command::CommandGateway;
    use tributary_integration_tests::command_support::counter_processor;

    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("history-load");
    let store = pg_store(&prefix).await;
    let processor = counter_processor(&bootstrap, &prefix, 2)
        .snapshots(store.clone())
        .start()
        .await
        .unwrap();
    let gateway = CommandGateway::connect(kafka_config(&bootstrap), &prefix)
        .await
        .unwrap();
    // 23 increments: snapshots at 10 and 20 (`snapshot_every = 10`), three events after.
    for by in 1..=23 {
        let outcome = gateway
            .send(Increment {
                id: "c-1".into(),
                by,
            })
            .await
            .unwrap();
        assert!(outcome.is_accepted());
    }
    processor.shutdown().await.unwrap();
    let snapshot: i64 = sqlx::query_scalar(
        "SELECT version FROM tributary_snapshots WHERE aggregate_type = 'counter' AND aggregate_id = 'c-1'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert!(snapshot >= 10, "snapshot at {snapshot}");

    let index = spawn_index(&bootstrap, &prefix, &store).await;
    let history = History::<Counter>::connect(
        &kafka_config(&bootstrap),
        store.clone(),
        &prefix,
        EventCodec::new(),
    )
    .await
    .unwrap();
    let (state, version) = history.load("c-1").await.unwrap();
    assert_eq!((state.value, version), ((1..=23).sum::<u64>(), 23));
    assert_eq!(history.history("c-1", 1).await.unwrap().len(), 23);
    index.shutdown().await.unwrap();
}

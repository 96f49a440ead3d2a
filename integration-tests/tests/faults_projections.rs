//! Projection workers under faults: transient Postgres errors are retried like an
//! outage and never parked; a panicking handler is a failing event, not the death of
//! the worker (G4, G5); a rebuild pauses the live workers of its projection instead
//! of racing a second full replay against them, and can be cancelled.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use std::sync::atomic::Ordering;

use tributary::projection::{ProjectionError, ProjectionWorker};
use tributary::{EventCodec, EventEnvelope};
use tributary_integration_tests::projection_support::EventsTopic;
use tributary_integration_tests::projection_support::{
    AccountEvent, RawRecord, Totals, expected_totals, kafka_config, produce, read_log, read_totals,
    test_config, test_store, wait_caught_up, wait_until,
};
use tributary_integration_tests::{create_topic, kafka_bootstrap, unique_prefix};

/// `n` deposits of 10 on each of `accounts`, interleaved, on partition 0.
fn deposits(codec: &EventsTopic<AccountEvent>, accounts: &[&str], n: u64) -> Vec<RawRecord> {
    let mut records = Vec::new();
    for seq in 1..=n {
        for account in accounts {
            let envelope =
                EventEnvelope::new(*account, seq, AccountEvent::Deposited { amount: 10 });
            let mut record: RawRecord = codec.encode(&envelope).into();
            record.partition = Some(0);
            records.push(record);
        }
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transient_postgres_errors_are_retried_not_parked() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("fault-pg");
    let codec = EventsTopic::<AccountEvent>::new(&prefix);
    let topic = codec.name.clone();
    create_topic(&bootstrap, &topic, 1).await;
    let store = test_store(&prefix).await;
    let totals = Totals::default();
    // Serialization failure, deadlock, lock not available, statement timeout,
    // admin shutdown: each raised by Postgres itself, more times than the retry
    // policy's 3 attempts allow for a failing event.
    totals.transient.lock().unwrap().insert(
        "racy".into(),
        vec!["40001", "40P01", "55P03", "57014", "57P01", "40001"],
    );
    let mut config = test_config();
    config.outage_backoff = Duration::from_millis(100);
    let worker = ProjectionWorker::new(totals.clone(), store.clone(), kafka_config(&bootstrap))
        .subscribe(&codec.prefix, codec.codec.clone())
        .settings(config);
    let handle = worker.clone().spawn();
    produce(&bootstrap, &topic, deposits(&codec, &["racy", "calm"], 5)).await;
    wait_caught_up(&store, &bootstrap, &topic, Duration::from_secs(60)).await;

    assert!(
        worker.all_dead_letters().await.unwrap().is_empty(),
        "a transient error was parked as poison"
    );
    let totals_read = read_totals(&store).await;
    assert_eq!(totals_read.get("racy"), Some(&(5, 50)));
    assert_eq!(totals_read.get("calm"), Some(&(5, 50)));
    assert!(totals.transient.lock().unwrap()["racy"].is_empty());
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_handler_fails_its_event_not_the_worker() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("fault-panic");
    let codec = EventsTopic::<AccountEvent>::new(&prefix);
    let topic = codec.name.clone();
    create_topic(&bootstrap, &topic, 1).await;
    let store = test_store(&prefix).await;
    let totals = Totals::default();
    // Panics once (retried and applied), and always (parked after 3 attempts).
    totals.panics.lock().unwrap().insert("once".into(), 1);
    totals
        .panics
        .lock()
        .unwrap()
        .insert("always".into(), u32::MAX);
    let worker = ProjectionWorker::new(totals.clone(), store.clone(), kafka_config(&bootstrap))
        .subscribe(&codec.prefix, codec.codec.clone())
        .settings(test_config());
    let handle = worker.clone().spawn();
    let mut records = deposits(&codec, &["once", "ok"], 3);
    records.extend(deposits(&codec, &["always"], 1));
    records.extend(deposits(&codec, &["ok2"], 3));
    produce(&bootstrap, &topic, records).await;
    wait_caught_up(&store, &bootstrap, &topic, Duration::from_secs(60)).await;

    assert!(!handle.is_finished(), "the worker died");
    let parked = worker.dead_letters().await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert!(parked[0].error.contains("panicked"), "{}", parked[0].error);
    let read = read_totals(&store).await;
    assert_eq!(read.get("once"), Some(&(3, 30)));
    assert_eq!(read.get("ok"), Some(&(3, 30)));
    assert_eq!(read.get("ok2"), Some(&(3, 30)));
    assert_eq!(read.get("always"), None);
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_pauses_the_live_workers_and_can_be_cancelled() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("fault-rebuild");
    let codec = EventsTopic::<AccountEvent>::new(&prefix);
    let topic = codec.name.clone();
    create_topic(&bootstrap, &topic, 1).await;
    let store = test_store(&prefix).await;
    // 300 deposits, with one event of account `gate` in the middle: the rebuild's
    // handler stops there while the gate is armed.
    let mut records = deposits(&codec, &["a", "b", "c"], 50);
    records.extend(deposits(&codec, &["gate"], 1));
    records.extend(deposits(&codec, &["d", "e", "f"], 50));
    produce(&bootstrap, &topic, records).await;

    let live = Totals::default();
    let worker = ProjectionWorker::new(live.clone(), store.clone(), kafka_config(&bootstrap))
        .subscribe(&codec.prefix, codec.codec.clone())
        .settings(test_config());
    let handle = worker.clone().spawn();
    wait_caught_up(&store, &bootstrap, &topic, Duration::from_secs(60)).await;

    // A rebuild (its own worker value, as an admin tool would run it) stops at the
    // gate, then is cancelled.
    let rebuilder_totals = Totals::default();
    rebuilder_totals.gate.armed.store(true, Ordering::SeqCst);
    let rebuilder = ProjectionWorker::new(
        rebuilder_totals.clone(),
        store.clone(),
        kafka_config(&bootstrap),
    )
    .subscribe(&codec.prefix, codec.codec.clone())
    .settings(test_config());
    let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
    let rebuild = tokio::spawn({
        let rebuilder = rebuilder.clone();
        async move {
            rebuilder
                .rebuild_until(async move {
                    let _ = cancelled.await;
                })
                .await
        }
    });
    tokio::time::timeout(
        Duration::from_secs(30),
        rebuilder_totals.gate.entered.notified(),
    )
    .await
    .expect("the rebuild reached the gate");

    // New events arrive during the rebuild. The live worker must neither apply them
    // nor replay from the reset checkpoints: it waits.
    let calls_before = live.calls.load(Ordering::SeqCst);
    produce(&bootstrap, &topic, deposits(&codec, &["late"], 20)).await;
    wait_until(
        Duration::from_secs(60),
        "the live worker to report the rebuild",
        || {
            let status = worker.status();
            async move {
                status
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("rebuild"))
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        live.calls.load(Ordering::SeqCst),
        calls_before,
        "the live worker applied events during the rebuild"
    );

    // Cancel: the batch at the gate finishes, the rebuild stops part-way.
    cancel.send(()).unwrap();
    rebuilder_totals.gate.release.notify_one();
    match rebuild.await.unwrap() {
        Err(ProjectionError::RebuildCancelled { events, .. }) => assert!(events < 321),
        other => panic!("expected RebuildCancelled, got {other:?}"),
    }
    // The live worker goes on from the rebuild's checkpoints to the end: the read
    // model equals the log, each event applied once.
    wait_caught_up(&store, &bootstrap, &topic, Duration::from_secs(60)).await;
    let log = read_log(&bootstrap, &topic).await;
    assert_eq!(read_totals(&store).await, expected_totals(&log));
    let applied_live = live.calls.load(Ordering::SeqCst) - calls_before;
    assert!(
        applied_live < 300,
        "the live worker replayed from the start ({applied_live} handler calls)"
    );

    // An uncancelled rebuild ends at the high-water marks with the same result.
    rebuilder_totals.gate.armed.store(false, Ordering::SeqCst);
    let report = rebuilder.rebuild().await.expect("rebuild");
    assert_eq!(report.events, 321);
    wait_caught_up(&store, &bootstrap, &topic, Duration::from_secs(60)).await;
    assert_eq!(read_totals(&store).await, expected_totals(&log));
    handle.abort();
}

/// Settings that would make the consumer refuse to start, or overflow a deadline,
/// are refused by name before the worker joins its group or a rebuild begins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_out_of_range_are_refused_by_name() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("fault-settings");
    let codec = EventsTopic::<AccountEvent>::new(&prefix);
    let store = test_store(&prefix).await;
    let worker = |config| {
        ProjectionWorker::new(Totals::default(), store.clone(), kafka_config(&bootstrap))
            .subscribe(&codec.prefix, codec.codec.clone())
            .settings(config)
    };
    let mut config = test_config();
    config.batch_size = 0;
    let refused = |result: Result<_, ProjectionError>| match result {
        Err(ProjectionError::Settings { source, .. }) => source.name,
        other => panic!("expected a settings error, got {other:?}"),
    };
    let run = worker(config.clone()).run(std::future::pending());
    let run = tokio::time::timeout(Duration::from_secs(30), run).await;
    assert_eq!(refused(run.expect("returns at once")), "batch_size");

    config.batch_size = 10;
    config.max_wait = Duration::MAX;
    let rebuild = worker(config).rebuild().await;
    assert_eq!(refused(rebuild.map(|_| ())), "max_wait");
}

/// A prefix that cannot be part of a topic name is refused when the worker starts,
/// naming the prefix, before it reads anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_prefix_is_refused_at_start() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("fault-prefix");
    let store = test_store(&prefix).await;
    let worker = ProjectionWorker::new(Totals::default(), store, kafka_config(&bootstrap))
        .subscribe(&prefix, EventCodec::<AccountEvent>::new())
        .subscribe("shop.prod", EventCodec::<AccountEvent>::new())
        .settings(test_config());
    let run = worker.run(std::future::pending());
    match tokio::time::timeout(Duration::from_secs(30), run).await {
        Ok(Err(ProjectionError::Prefix { source, .. })) => assert_eq!(source.prefix, "shop.prod"),
        other => panic!("expected a prefix error, got {other:?}"),
    }
}

/// Dropping a worker's handle stops the worker gracefully, as dropping a processor's
/// handle stops the processor: no worker is left running that nothing can stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_stops_the_worker() {
    use tributary::projection::WorkerState;

    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("fault-drop");
    let codec = EventsTopic::<AccountEvent>::new(&prefix);
    create_topic(&bootstrap, &codec.name.clone(), 1).await;
    let store = test_store(&prefix).await;
    let worker = ProjectionWorker::new(Totals::default(), store.clone(), kafka_config(&bootstrap))
        .subscribe(&codec.prefix, codec.codec.clone())
        .settings(test_config());
    let handle = worker.clone().spawn();
    wait_until(Duration::from_secs(60), "the worker runs", || {
        let running = worker.status().state == WorkerState::Running;
        async move { running }
    })
    .await;
    drop(handle);
    wait_until(Duration::from_secs(30), "the worker stops", || {
        let stopped = worker.status().state == WorkerState::Stopped;
        async move { stopped }
    })
    .await;
}

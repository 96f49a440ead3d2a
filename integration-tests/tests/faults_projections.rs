//! Projection workers under faults: transient Postgres errors are retried like an
//! outage and never parked; a panicking handler is a failing event, not the death of
//! the worker (G4, G5).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tributary::projection::ProjectionWorker;
use tributary::{EventCodec, EventEnvelope};
use tributary_integration_tests::projection_support::{
    AccountEvent, RawRecord, Totals, kafka_config, produce, read_totals, test_config, test_store,
    wait_caught_up,
};
use tributary_integration_tests::{create_topic, kafka_bootstrap, unique_prefix};

/// `n` deposits of 10 on each of `accounts`, interleaved, on partition 0.
fn deposits(codec: &EventCodec<AccountEvent>, accounts: &[&str], n: u64) -> Vec<RawRecord> {
    let mut records = Vec::new();
    for seq in 1..=n {
        for account in accounts {
            let envelope =
                EventEnvelope::new(*account, seq, AccountEvent::Deposited { amount: 10 });
            let mut record: RawRecord = codec.encode(&envelope).unwrap().into();
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
    let codec = EventCodec::<AccountEvent>::new(&prefix).unwrap();
    let topic = codec.events_topic();
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
        .subscribe(codec.clone())
        .with_config(config);
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
    let codec = EventCodec::<AccountEvent>::new(&prefix).unwrap();
    let topic = codec.events_topic();
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
        .subscribe(codec.clone())
        .with_config(test_config());
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

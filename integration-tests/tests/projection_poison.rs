//! G5: poison records written by a plain producer between valid events are parked
//! with the right reason and the projection goes on (or halts, if so configured);
//! parked records can be listed and replayed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tributary::EventEnvelope;
use tributary::projection::{
    PoisonPolicy, PoisonReason, ProjectionError, ProjectionSettings, ProjectionWorker, WorkerState,
};
use tributary_integration_tests::projection_support::{
    AccountEvent, EventsTopic, RawRecord, Totals, kafka_config, produce, read_log_ids, read_totals,
    test_config, test_store, wait_caught_up,
};
use tributary_integration_tests::{create_topic, kafka_bootstrap, unique_prefix};
use uuid::Uuid;

struct Load {
    records: Vec<RawRecord>,
    /// Ids of the valid events, in log order.
    valid: Vec<Uuid>,
}

/// 5 valid events, then each kind of poison followed by 5 valid events.
fn load(codec: &EventsTopic<AccountEvent>) -> Load {
    let mut records = Vec::new();
    let mut valid = Vec::new();
    let mut seq = 0;
    let mut good = |records: &mut Vec<RawRecord>, id: &str| {
        seq += 1;
        let envelope = EventEnvelope::new(id, seq, AccountEvent::Deposited { amount: 10 });
        valid.push(envelope.id);
        records.push(codec.encode(&envelope).into());
    };
    let valid_record = |id: &str| -> RawRecord {
        let envelope = EventEnvelope::new(id, 1, AccountEvent::Deposited { amount: 7 });
        codec.encode(&envelope).into()
    };
    for _ in 0..5 {
        good(&mut records, "ok");
    }
    // 1. Invalid JSON.
    let mut bad_json = valid_record("ok");
    bad_json.value = Some(b"{\"amount\": 10".to_vec());
    records.push(bad_json);
    for _ in 0..5 {
        good(&mut records, "ok");
    }
    // 2. A missing header.
    let mut no_id = valid_record("ok");
    no_id.headers.retain(|(name, _)| name != "ce_id");
    records.push(no_id);
    for _ in 0..5 {
        good(&mut records, "ok");
    }
    // 3. An unknown event type.
    let mut unknown = valid_record("ok");
    for (name, value) in &mut unknown.headers {
        if name == "ce_type" {
            *value = b"account.frozen.v1".to_vec();
        }
    }
    records.push(unknown);
    for _ in 0..5 {
        good(&mut records, "ok");
    }
    // 4. The handler fails on it every time (3 attempts).
    records.push(valid_record("boom"));
    // 5. The handler fails twice, then succeeds: applied, not parked.
    good(&mut records, "flaky");
    for _ in 0..5 {
        good(&mut records, "ok");
    }
    for record in &mut records {
        record.partition = Some(0);
    }
    Load { records, valid }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_records_are_parked_and_the_projection_goes_on() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("proj-poison");
    let codec = EventsTopic::<AccountEvent>::new(&prefix);
    let topic = codec.name.clone();
    create_topic(&bootstrap, &topic, 1).await;
    let load = load(&codec);
    let total = load.records.len() as i64;
    produce(&bootstrap, &topic, load.records).await;

    let store = test_store(&prefix).await;
    let totals = Totals::default();
    totals
        .failures
        .lock()
        .unwrap()
        .insert("boom".into(), u32::MAX);
    totals.failures.lock().unwrap().insert("flaky".into(), 2);
    let worker = ProjectionWorker::new(totals.clone(), store.clone(), kafka_config(&bootstrap))
        .subscribe(&codec.prefix, codec.codec.clone())
        .settings(test_config());
    let handle = worker.clone().spawn();
    wait_caught_up(&store, &bootstrap, &topic, Duration::from_secs(60)).await;

    // Every valid event applied, in log order; nothing lost.
    assert_eq!(read_log_ids(&store).await, load.valid);
    let letters = worker.dead_letters().await.unwrap();
    let summary: Vec<(PoisonReason, i32)> =
        letters.iter().map(|l| (l.reason, l.attempts)).collect();
    assert_eq!(
        summary,
        vec![
            (PoisonReason::Undecodable, 0),
            (PoisonReason::Undecodable, 0),
            (PoisonReason::UnknownType, 0),
            (PoisonReason::HandlerFailed, 3),
        ]
    );
    assert!(
        letters[0].error.contains("not valid JSON"),
        "{}",
        letters[0].error
    );
    assert!(letters[1].error.contains("ce_id"), "{}", letters[1].error);
    assert!(
        letters[2].error.contains("account.frozen.v1"),
        "{}",
        letters[2].error
    );
    assert!(
        letters[3]
            .error
            .contains("injected failure for account boom"),
        "{}",
        letters[3].error
    );
    assert_eq!(letters[0].payload.as_deref(), Some(&b"{\"amount\": 10"[..]));
    assert!(
        letters[3]
            .headers
            .iter()
            .any(|(n, v)| n == "ce_subject" && v.as_deref() == Some(&b"boom"[..]))
    );
    assert!(letters.iter().all(|l| l.topic == topic && l.partition == 0));
    let offsets: Vec<i64> = letters.iter().map(|l| l.offset).collect();
    assert_eq!(offsets, vec![5, 11, 17, 23]);
    assert_eq!(worker.status().parked, 4);
    let lag = worker.lag().await.unwrap();
    assert_eq!(
        lag[0].checkpoint,
        Some(total),
        "the checkpoint passed every record"
    );

    // Fix the handler and replay: the handler failure applies, the undecodable
    // records fail again and stay parked.
    totals.failures.lock().unwrap().clear();
    let replay = worker.replay_dead_letters().await.unwrap();
    assert_eq!(replay.replayed, vec![letters[3].id]);
    assert_eq!(replay.failed.len(), 3);
    assert_eq!(read_totals(&store).await.get("boom"), Some(&(1, 7)));
    assert_eq!(worker.dead_letters().await.unwrap().len(), 3);
    assert!(matches!(
        worker.replay_dead_letter(letters[3].id).await,
        Err(ProjectionError::AlreadyReplayed { .. })
    ));
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn halt_mode_stops_at_the_first_poison_record() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("proj-halt");
    let codec = EventsTopic::<AccountEvent>::new(&prefix);
    let topic = codec.name.clone();
    create_topic(&bootstrap, &topic, 1).await;
    let load = load(&codec);
    produce(&bootstrap, &topic, load.records).await;

    let store = test_store(&prefix).await;
    let worker = ProjectionWorker::new(Totals::default(), store.clone(), kafka_config(&bootstrap))
        .subscribe(&codec.prefix, codec.codec.clone())
        .settings(ProjectionSettings {
            poison: PoisonPolicy::Halt,
            ..test_config()
        });
    let result = tokio::time::timeout(Duration::from_secs(60), worker.clone().spawn().join())
        .await
        .expect("the worker did not halt");
    let Err(ProjectionError::Halted(report)) = result else {
        panic!("expected a halt, got {result:?}");
    };
    assert_eq!(
        (report.partition, report.offset, report.reason),
        (0, 5, PoisonReason::Undecodable)
    );
    assert!(report.error.contains("not valid JSON"), "{}", report.error);
    assert!(
        ProjectionError::Halted(report.clone())
            .to_string()
            .contains("PoisonPolicy::Park")
    );
    assert!(matches!(worker.status().state, WorkerState::Halted(_)));
    // Everything before the poison record is applied; the checkpoint stays on it.
    assert_eq!(read_log_ids(&store).await, load.valid[..5]);
    assert_eq!(worker.lag().await.unwrap()[0].checkpoint, Some(5));
    assert!(worker.dead_letters().await.unwrap().is_empty());
}

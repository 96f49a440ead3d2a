//! Snapshots under faults: a snapshot write that fails must not let the partition's
//! restore watermark pass the aggregate it was for (G1, G6).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tributary::KafkaConfig;
use tributary::command::{CommandGateway, CommandOutcome, ProcessorSettings};
use tributary_integration_tests::command_support::{
    Check, counter_processor, increment, test_settings,
};
use tributary_integration_tests::raw_log::{self, Isolation};
use tributary_integration_tests::{kafka_bootstrap, pg_store, unique_prefix};

/// Snapshot writes for aggregate `a` fail for a while (a trigger), so its snapshot at
/// version 10 is lost; commands to `b` then make the processor flush the partition
/// and advance its watermark. After a crash, `a` must come back at version 10, not
/// at the version its (missing) row and the watermark would give it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_snapshot_write_never_lets_the_watermark_pass_its_aggregate() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("fault-snap");
    let store = pg_store(&prefix).await;
    let settings = ProcessorSettings {
        flush_every: 20,
        ..test_settings()
    };
    let start = || {
        counter_processor(&bootstrap, &prefix, 1)
            .settings(settings.clone())
            .snapshots(store.clone())
            .start()
    };
    let first = start().await.expect("processor");
    let gateway = CommandGateway::connect_with_timeout(
        KafkaConfig::new(&bootstrap),
        &prefix,
        Duration::from_secs(30),
    )
    .await
    .expect("gateway");
    increment(&gateway, "b").await; // the partition is assigned and restored

    // Every snapshot write that includes `a` fails, until the writer has given up
    // on it (three attempts): a sequence counts the failures, as a rolled-back
    // write leaves no other trace.
    for statement in [
        "CREATE TABLE fail_snapshots_of_a (since timestamptz NOT NULL)",
        "INSERT INTO fail_snapshots_of_a VALUES (clock_timestamp())",
        "CREATE SEQUENCE failed_snapshots_of_a",
        "CREATE FUNCTION fail_snapshot_of_a() RETURNS trigger AS $$
         BEGIN
           IF NEW.aggregate_id = 'a' AND EXISTS (SELECT 1 FROM fail_snapshots_of_a) THEN
             PERFORM nextval('failed_snapshots_of_a');
             RAISE EXCEPTION 'injected failure: snapshot of a';
           END IF;
           RETURN NEW;
         END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER fail_snapshot_of_a BEFORE INSERT OR UPDATE ON tributary_snapshots
         FOR EACH ROW EXECUTE FUNCTION fail_snapshot_of_a()",
    ] {
        sqlx::query(statement).execute(store.pool()).await.unwrap();
    }
    for expected in 1..=10 {
        assert_eq!(increment(&gateway, "a").await, expected);
    }
    // The writer tries `a`'s snapshot (version 10) three times, then gives up; only
    // then do writes of `a` succeed again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let failed: i64 = sqlx::query_scalar(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM failed_snapshots_of_a",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        if failed >= 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the snapshot writer tried `a`'s snapshot {failed} times in 60 s, not 3"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sqlx::query("DELETE FROM fail_snapshots_of_a")
        .execute(store.pool())
        .await
        .unwrap();
    // Enough events on `b` for a partition flush, which writes a watermark.
    for _ in 0..25 {
        increment(&gateway, "b").await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let watermark: Option<i64> =
        sqlx::query_scalar("SELECT events_offset FROM tributary_snapshots WHERE aggregate_id = ''")
            .fetch_optional(store.pool())
            .await
            .unwrap();
    let a_row: Option<i64> =
        sqlx::query_scalar("SELECT version FROM tributary_snapshots WHERE aggregate_id = 'a'")
            .fetch_optional(store.pool())
            .await
            .unwrap();
    let a_last_offset = raw_log::read(
        &bootstrap,
        &format!("{prefix}.counter.events"),
        Isolation::Committed,
    )
    .iter()
    .filter(|e| e.aggregate_id == "a")
    .map(|e| e.offset)
    .max()
    .unwrap();
    if let Some(w) = watermark
        && w >= a_last_offset
    {
        assert_eq!(
            a_row,
            Some(10),
            "the watermark ({w}) passed `a`'s last event ({a_last_offset}) without a confirmed row for it"
        );
    }

    // Crash, restart: `a` is still at version 10, and its next command is 11.
    first.abort();
    let _ = first.join().await;
    let second = start().await.expect("processor");
    match gateway
        .send(Check {
            id: "a".into(),
            expected: 10,
        })
        .await
        .expect("check")
    {
        CommandOutcome::Accepted { .. } => {}
        CommandOutcome::Rejected(e) => panic!("after the restart, aggregate a: {e}"),
    }
    assert_eq!(increment(&gateway, "a").await, 11);
    let committed = raw_log::read(
        &bootstrap,
        &format!("{prefix}.counter.events"),
        Isolation::Committed,
    );
    raw_log::assert_single_writer(&committed);
    second.shutdown().await.expect("shutdown");
}

//! The embedded form of the CLI (`tributary_cli::Admin`, shipped as `example-shop
//! admin`) against the real broker and Postgres, run in process with a buffer:
//! decoded `events` with `--state` and `--at-version`, `dead-letters replay` through
//! a registered worker, and `projections rebuild`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use example_shop::api::{ApiState, router};
use example_shop::app::Role;
use example_shop::load::{self, LoadPlan};
use serde_json::Value;
use tributary::projection::ProjectionWorker;
use tributary::{EventEnvelope, PgStore};
use tributary_cli::{Admin, Exit};
use tributary_integration_tests::projection_support::{
    AccountEvent, EventsTopic, RawRecord, Totals, kafka_config, produce, test_config,
    wait_caught_up,
};
use tributary_integration_tests::shop_support::shop_config;
use tributary_integration_tests::{
    create_topic, database_url, kafka_bootstrap, pg_store, unique_prefix,
};

/// Runs `<program> <args>` through `admin` in process: the exit code and the output.
async fn admin_run(admin: &Admin, args: &[&str]) -> (Exit, String) {
    let mut out = Vec::new();
    let argv = std::iter::once("admin").chain(args.iter().copied());
    let exit = admin.run(argv, &mut out).await;
    (exit, String::from_utf8(out).expect("the CLI prints UTF-8"))
}

/// [`admin_run`] with `--json`, parsed.
async fn admin_json(admin: &Admin, args: &[&str]) -> (Exit, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (exit, out) = admin_run(admin, &all).await;
    let json = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    (exit, json)
}

/// Every row of `order_summaries`, as JSON, in order.
async fn summaries(store: &PgStore) -> Vec<Value> {
    sqlx::query_scalar::<_, Value>(
        "SELECT to_jsonb(s) - 'updated_at' FROM order_summaries s ORDER BY order_id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shop_admin_decodes_an_orders_events_folds_its_state_and_rebuilds_the_summaries() {
    let prefix = unique_prefix("cli-admin-shop");
    let store = pg_store(&prefix).await;
    let config = shop_config(&prefix, &store, 4);
    let running = config.start(&Role::ALL, &store).await.unwrap();
    let plan = LoadPlan::half_stocked(1, 1, 1, &prefix);
    let api = router(
        ApiState::new(config.gateway().await.unwrap(), store.pool().clone())
            .with_roles(&running)
            .with_keys(plan.tokens.api_keys().unwrap()),
    );
    load::seed_catalogue(&api, store.pool(), &plan)
        .await
        .unwrap();
    let placed = load::place_orders(&api, &plan, Arc::new(|_| {}))
        .await
        .unwrap();
    assert_eq!(placed.accepted, 1, "{:?}", placed.refused);
    let settled = load::wait_settled(store.pool(), 1, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(settled.settled, "the read models did not settle");
    let order_id = plan.order(0)["order_id"].as_str().unwrap().to_owned();
    let (status, version): (String, i64) =
        sqlx::query_as("SELECT status, version FROM order_summaries WHERE order_id = $1")
            .bind(&order_id)
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_ne!(status, "placed", "the order was decided");

    let admin = config.admin(&store);
    let bootstrap = kafka_bootstrap();
    let (exit, json) = admin_json(
        &admin,
        &[
            "--bootstrap-servers",
            &bootstrap,
            "events",
            "--prefix",
            &prefix,
            "order",
            &order_id,
            "--state",
        ],
    )
    .await;
    assert_eq!(exit, Exit::Ok, "{json:#}");
    let events = json["events"].as_array().unwrap();
    assert!(events.len() >= 2, "placed, then decided: {json:#}");
    assert_eq!(events[0]["type"], "order.placed.v1");
    assert_eq!(events[0]["decoded"], true);
    assert_eq!(events[0]["source"], format!("/{prefix}/order"));
    assert!(events[0]["correlation_id"].is_string(), "{json:#}");
    assert_eq!(
        events[0]["payload"]["customer"],
        plan.order(0)["customer"],
        "{json:#}"
    );
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["sequence"], i as u64 + 1, "{json:#}");
        assert!(event["type"].as_str().unwrap().starts_with("order."));
    }
    assert_eq!(json["version"], events.len() as u64);
    assert_eq!(json["version"], version, "the read model's version");
    assert_eq!(json["state"]["status"], status.as_str(), "{json:#}");
    assert_eq!(json["state"]["customer"], plan.order(0)["customer"]);

    // The first event only, and the state right after it; the prefix defaults to
    // the shop's.
    let (exit, json) = admin_json(
        &admin,
        &[
            "--bootstrap-servers",
            &bootstrap,
            "events",
            "order",
            &order_id,
            "--at-version",
            "1",
            "--state",
        ],
    )
    .await;
    assert_eq!(exit, Exit::Ok, "{json:#}");
    assert_eq!(json["events"].as_array().unwrap().len(), 1, "{json:#}");
    assert_eq!(json["events"][0]["sequence"], 1);
    assert_eq!(json["version"], 1);
    assert_eq!(json["state"]["status"], "placed");

    // Text: one block per event, then the state.
    let (exit, out) = admin_run(
        &admin,
        &[
            "--bootstrap-servers",
            &bootstrap,
            "events",
            "order",
            &order_id,
            "--state",
        ],
    )
    .await;
    assert_eq!(exit, Exit::Ok, "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("v1  order.placed.v1  ")),
        "{out}"
    );
    assert!(
        out.contains(&format!("state at version {version}:\n")),
        "{out}"
    );
    assert!(out.contains(&format!("\"status\": \"{status}\"")), "{out}");

    // An unregistered aggregate: the raw form; its state cannot be folded.
    let (exit, out) = admin_run(
        &admin,
        &[
            "--bootstrap-servers",
            &bootstrap,
            "events",
            "nope",
            "x",
            "--state",
        ],
    )
    .await;
    assert_eq!(exit, Exit::Failed, "{out}");
    assert!(
        out.contains("registered aggregates: order, inventory"),
        "{out}"
    );

    // Rebuild the summaries: every order event again, the same read model.
    let before = summaries(&store).await;
    let order_events: u64 = events.len() as u64;
    let (exit, json) = admin_json(
        &admin,
        &[
            "--bootstrap-servers",
            &bootstrap,
            "projections",
            "rebuild",
            "order_summaries",
            "--yes",
        ],
    )
    .await;
    assert_eq!(exit, Exit::Ok, "{json:#}");
    assert_eq!(json["projection"], "order_summaries");
    assert_eq!(json["events"], order_events, "{json:#}");
    assert!(json["elapsed_ms"].is_u64(), "{json:#}");
    assert_eq!(summaries(&store).await, before);

    // Without --yes and without a terminal to ask on: refused, nothing changed.
    let (exit, out) = admin_run(&admin, &["projections", "rebuild", "order_summaries"]).await;
    assert_eq!(exit, Exit::Usage, "{out}");
    assert!(out.contains("pass --yes"), "{out}");
    let (exit, out) = admin_run(&admin, &["projections", "rebuild", "nope", "--yes"]).await;
    assert_eq!(exit, Exit::Failed, "{out}");
    assert!(
        out.contains("registered projections: order_summaries, stock_levels, notifications"),
        "{out}"
    );

    running.shutdown().await.unwrap();
}

/// Deposits of `a`, with one of `b` (whose handler fails while armed) in between.
fn deposits(topic: &EventsTopic<AccountEvent>) -> Vec<RawRecord> {
    [("a", 1), ("a", 2), ("b", 1), ("a", 3)]
        .into_iter()
        .map(|(id, seq)| {
            let event = EventEnvelope::new(id, seq, AccountEvent::Deposited { amount: 10 });
            let mut record: RawRecord = topic.encode(&event).into();
            record.partition = Some(0);
            record
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_replay_through_the_registered_worker_once_the_cause_is_gone() {
    let prefix = unique_prefix("cli-admin-replay");
    let store = pg_store(&prefix).await;
    let bootstrap = kafka_bootstrap();
    let topic = EventsTopic::<AccountEvent>::new(&prefix);
    create_topic(&bootstrap, &topic.name, 1).await;
    let totals = Totals::default();
    totals
        .failures
        .lock()
        .unwrap()
        .insert("b".to_owned(), 1_000);
    let worker = ProjectionWorker::new(totals.clone(), store.clone(), kafka_config(&bootstrap))
        .subscribe(&prefix, topic.codec.clone())
        .settings(test_config());
    let handle = worker.clone().spawn();
    produce(&bootstrap, &topic.name, deposits(&topic)).await;
    wait_caught_up(&store, &bootstrap, &topic.name, Duration::from_secs(60)).await;
    handle.shutdown().await.unwrap();

    let url = database_url();
    let schema = store.schema().to_owned();
    let admin = Admin::new().projection(worker);
    let run = |args: Vec<&'static str>| {
        let mut all: Vec<String> = vec![
            "--bootstrap-servers".into(),
            bootstrap.clone(),
            "--database-url".into(),
            url.clone(),
            "--schema".into(),
            schema.clone(),
        ];
        all.extend(args.into_iter().map(str::to_owned));
        all
    };
    let json_of = |out: &str| -> Value {
        serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    };
    let exec = |args: Vec<String>| {
        let admin = &admin;
        async move {
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            admin_run(admin, &argv).await
        }
    };

    let (exit, out) = exec(run(vec!["--json", "dead-letters", "list"])).await;
    assert_eq!(exit, Exit::Ok, "{out}");
    let list = json_of(&out);
    let letters = list["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{list:#}");
    assert_eq!(letters[0]["reason"], "handler_failed");
    assert_eq!(letters[0]["offset"], 2);
    let id = letters[0]["id"].as_i64().unwrap();
    let id_arg = id.to_string();

    // The cause is still there: the replay fails, the letter stays open.
    let mut args = run(vec!["dead-letters", "replay"]);
    args.push(id_arg.clone());
    let (exit, out) = exec(args.clone()).await;
    assert_eq!(exit, Exit::Failed, "{out}");
    assert!(out.contains("injected failure for account b"), "{out}");

    // An unregistered projection names the registered ones.
    let (exit, out) = exec(run(vec![
        "dead-letters",
        "replay",
        "--all",
        "--projection",
        "nope",
    ]))
    .await;
    assert_eq!(exit, Exit::Failed, "{out}");
    assert!(
        out.contains("registered projections: account_totals"),
        "{out}"
    );
    let mut wrong = args.clone();
    wrong.extend(["--projection".to_owned(), "nope".to_owned()]);
    let (exit, out) = exec(wrong).await;
    assert_eq!(exit, Exit::Failed, "{out}");
    assert!(
        out.contains(&format!(
            "dead letter {id} belongs to projection `account_totals`"
        )),
        "{out}"
    );

    // The cause is gone: replayed, applied once.
    totals.failures.lock().unwrap().clear();
    let mut json_args = run(vec!["--json", "dead-letters", "replay"]);
    json_args.push(id_arg.clone());
    let (exit, out) = exec(json_args).await;
    assert_eq!(exit, Exit::Ok, "{out}");
    let replayed = json_of(&out);
    assert_eq!(replayed["projection"], "account_totals");
    assert_eq!(replayed["replayed"], serde_json::json!([id]));
    let (events, balance): (i64, i64) =
        sqlx::query_as("SELECT events, balance FROM account_totals WHERE id = 'b'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!((events, balance), (1, 10));
    let (_, out) = exec(run(vec!["--json", "dead-letters", "list", "--all"])).await;
    assert_eq!(json_of(&out)["dead_letters"][0]["state"], "replayed");

    // Once only; and --all finds nothing left.
    let (exit, out) = exec(args).await;
    assert_eq!(exit, Exit::Failed, "{out}");
    assert!(out.contains("already replayed"), "{out}");
    let (exit, out) = exec(run(vec![
        "dead-letters",
        "replay",
        "--all",
        "--projection",
        "account_totals",
    ]))
    .await;
    assert_eq!(exit, Exit::Ok, "{out}");
    assert_eq!(
        out,
        "projection `account_totals` has no open dead letters\n"
    );

    // The generic binary points to the embedded form.
    let mut generic: Vec<String> = vec!["tributary".into()];
    generic.extend(run(vec!["dead-letters", "replay"]));
    generic.push(id_arg);
    let mut out = Vec::new();
    let exit = tributary_cli::run(generic, &mut out).await;
    let out = String::from_utf8(out).unwrap();
    assert_eq!(exit, Exit::Usage, "{out}");
    assert!(out.contains("embedded admin entry point"), "{out}");
}

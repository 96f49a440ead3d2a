//! G1 + G2 across a crash: two processor processes share the partitions; one is
//! killed with SIGKILL mid-load; the other takes over. No accepted command is lost,
//! none is applied twice, every aggregate's sequences stay gapless.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tributary::KafkaConfig;
use tributary::command::{CommandGateway, CommandOutcome, SendOptions};
use tributary_integration_tests::command_support::{
    Increment, assert_gapless, read_counter_events,
};
use tributary_integration_tests::node::Node;
use tributary_integration_tests::{kafka_bootstrap, unique_prefix};

const NODE: &str = env!("CARGO_BIN_EXE_counter_node");

fn spawn_node(bootstrap: &str, prefix: &str) -> Node {
    Node::counter(NODE, bootstrap, prefix, 4, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_processor_loses_nothing_and_applies_nothing_twice() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("cmd-kill");
    let mut a = spawn_node(&bootstrap, &prefix);
    let _b = spawn_node(&bootstrap, &prefix);
    // The gateway creates the replies topic; the nodes create the others.
    let gateway = CommandGateway::connect_with_timeout(
        KafkaConfig::new(&bootstrap),
        &prefix,
        Duration::from_secs(8),
    )
    .await
    .expect("gateway");

    const CALLERS: usize = 10;
    const PER_CALLER: usize = 60;
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let gateway = gateway.clone();
        let done = Arc::clone(&done);
        tasks.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            for i in 0..PER_CALLER {
                let id = format!("c{caller}-{i}");
                let aggregate = format!("agg-{}", (caller * 7 + i) % 40);
                let deadline = Instant::now() + Duration::from_secs(180);
                // Retry with the same command id until the outcome is known.
                let version = loop {
                    let options = SendOptions {
                        command_id: Some(id.clone()),
                        ..Default::default()
                    };
                    match gateway
                        .send_with(
                            Increment {
                                id: aggregate.clone(),
                                by: 1,
                            },
                            options,
                        )
                        .await
                    {
                        Ok(CommandOutcome::Accepted { version, events }) => {
                            assert_eq!(events.len(), 1);
                            break version;
                        }
                        Ok(CommandOutcome::Rejected(e)) => panic!("{id} rejected: {e}"),
                        Err(e) => {
                            assert!(Instant::now() < deadline, "{id}: no outcome in 180 s: {e}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                };
                accepted.push((id, aggregate, version));
                done.fetch_add(1, Ordering::Relaxed);
            }
            accepted
        }));
    }
    // Kill one node once a third of the load is through.
    let total = CALLERS * PER_CALLER;
    let started = Instant::now();
    while done.load(Ordering::Relaxed) < total / 3 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "load did not progress"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.kill();
    let killed_at = done.load(Ordering::Relaxed);

    let mut accepted = Vec::new();
    for task in tasks {
        accepted.extend(task.await.expect("caller"));
    }
    assert_eq!(accepted.len(), total);
    assert!(
        killed_at < total,
        "the kill happened after the load finished"
    );

    // The log: gapless per aggregate, one event per command id, and each caller's
    // version is the sequence of the event its command caused.
    let events = read_counter_events(&bootstrap, &prefix);
    let counts = assert_gapless(&events);
    assert_eq!(
        counts.values().sum::<u64>(),
        total as u64,
        "events != accepted commands"
    );
    let mut by_cause: HashMap<String, (String, u64)> = HashMap::new();
    for (aggregate, list) in &events {
        for e in list {
            let cause = e.metadata.causation_id.clone().expect("causation id");
            let previous = by_cause.insert(cause.clone(), (aggregate.clone(), e.sequence));
            assert!(previous.is_none(), "command {cause} was applied twice");
        }
    }
    let mut per_aggregate: BTreeMap<String, u64> = BTreeMap::new();
    for (id, aggregate, version) in &accepted {
        assert_eq!(
            by_cause.get(id),
            Some(&(aggregate.clone(), *version)),
            "command {id}"
        );
        *per_aggregate.entry(aggregate.clone()).or_default() += 1;
    }
    assert_eq!(per_aggregate, counts);
}

/// Zombie fencing: a processor frozen (SIGSTOP) with a polled command in hand loses
/// its partition; the new owner fences it and processes the command. Woken up, the
/// zombie's transaction is refused and nothing it produced becomes visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_processor_that_lost_its_partition_cannot_commit() {
    use tributary_integration_tests::command_support::{Check, counter_processor};

    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("cmd-zombie");
    let release = std::env::temp_dir().join(format!("{prefix}.release"));
    let mut zombie = Node::counter(
        NODE,
        &bootstrap,
        &prefix,
        1,
        &[("TRIBUTARY_PAUSE_FILE", release.to_str().unwrap())],
    );
    let gateway = CommandGateway::connect_with_timeout(
        KafkaConfig::new(&bootstrap),
        &prefix,
        Duration::from_secs(60),
    )
    .await
    .expect("gateway");
    // Resent with the same id until its outcome is known: the first attempt may
    // find no commands topic yet (the node creates it) or time out on a slow
    // machine, and a single lost attempt would leave the zombie nothing to pause on.
    let send = tokio::spawn({
        let gateway = gateway.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(180);
            loop {
                let options = SendOptions {
                    command_id: Some("zombie-command".into()),
                    ..Default::default()
                };
                let command = Increment {
                    id: "z".into(),
                    by: 5,
                };
                match gateway.send_with(command, options).await {
                    Ok(outcome) => return outcome,
                    Err(e) => {
                        assert!(Instant::now() < deadline, "no outcome in 180 s: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    });
    zombie.expect_line("paused", Duration::from_secs(120)).await;
    // Freeze it: no heartbeats, so the group gives its partition away.
    zombie.signal("-STOP");

    let owner = counter_processor(&bootstrap, &prefix, 1)
        .start()
        .await
        .expect("processor");
    match send.await.expect("sender") {
        CommandOutcome::Accepted { version, .. } => assert_eq!(version, 1),
        CommandOutcome::Rejected(e) => panic!("{e}"),
    }

    // Wake the zombie: it carries on with the command it had polled, and is refused.
    std::fs::write(&release, b"go").unwrap();
    zombie.signal("-CONT");
    zombie.expect_line("fenced", Duration::from_secs(90)).await;
    let _ = std::fs::remove_file(&release);

    let events = read_counter_events(&bootstrap, &prefix);
    assert_eq!(
        assert_gapless(&events).get("z"),
        Some(&1),
        "the zombie's event is visible"
    );
    match gateway
        .send(Check {
            id: "z".into(),
            expected: 5,
        })
        .await
        .expect("check")
    {
        CommandOutcome::Accepted { .. } => {}
        CommandOutcome::Rejected(e) => panic!("{e}"),
    }
    zombie.kill();
    owner.shutdown().await.expect("shutdown");
}

//! G1 + G2 across a crash: two processor processes share the partitions; one is
//! killed with SIGKILL mid-load; the other takes over. No accepted command is lost,
//! none is applied twice, every aggregate's sequences stay gapless.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tributary::KafkaConfig;
use tributary::command::{CommandGateway, CommandOutcome, SendOptions};
use tributary_integration_tests::command_support::{
    Increment, assert_gapless, read_counter_events,
};
use tributary_integration_tests::{kafka_bootstrap, unique_prefix};

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_node(bootstrap: &str, prefix: &str) -> Node {
    node_command(bootstrap, prefix, 4)
        .spawn()
        .map(Node)
        .expect("spawn counter_node")
}

fn node_command(bootstrap: &str, prefix: &str, partitions: u32) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_counter_node"));
    command
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("TRIBUTARY_PREFIX", prefix)
        .env("TRIBUTARY_PARTITIONS", partitions.to_string())
        .stdin(Stdio::null());
    command
}

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_processor_loses_nothing_and_applies_nothing_twice() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("cmd-kill");
    let mut a = spawn_node(&bootstrap, &prefix);
    let _b = spawn_node(&bootstrap, &prefix);
    // The gateway creates the replies topic; the nodes create the others.
    let gateway = CommandGateway::connect_with_timeout(
        &KafkaConfig::new(&bootstrap),
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
    a.0.kill().expect("SIGKILL");
    let _ = a.0.wait();
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
    use std::io::BufRead;
    use tributary_integration_tests::command_support::{Check, counter_processor};

    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("cmd-zombie");
    let release = std::env::temp_dir().join(format!("{prefix}.release"));
    let mut zombie = Node(
        node_command(&bootstrap, &prefix, 1)
            .env("TRIBUTARY_PAUSE_FILE", &release)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn counter_node"),
    );
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let stdout = zombie.0.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let expect_line = move |want: &'static str, rx: &std::sync::mpsc::Receiver<String>| {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line == want => return,
                Ok(_) => {}
                Err(_) => panic!("the zombie never printed `{want}`"),
            }
        }
    };

    let gateway = CommandGateway::connect_with_timeout(
        &KafkaConfig::new(&bootstrap),
        &prefix,
        Duration::from_secs(60),
    )
    .await
    .expect("gateway");
    let send = tokio::spawn({
        let gateway = gateway.clone();
        async move {
            gateway
                .send(Increment {
                    id: "z".into(),
                    by: 5,
                })
                .await
        }
    });
    let lines_rx = tokio::task::spawn_blocking(move || {
        expect_line("paused", &lines_rx);
        lines_rx
    })
    .await
    .unwrap();
    // Freeze it: no heartbeats, so the group gives its partition away.
    signal(&zombie.0, "-STOP");

    let owner = counter_processor(&bootstrap, &prefix, 1)
        .start()
        .await
        .expect("processor");
    match send.await.unwrap().expect("outcome") {
        CommandOutcome::Accepted { version, .. } => assert_eq!(version, 1),
        CommandOutcome::Rejected(e) => panic!("{e}"),
    }

    // Wake the zombie: it carries on with the command it had polled, and is refused.
    std::fs::write(&release, b"go").unwrap();
    signal(&zombie.0, "-CONT");
    tokio::task::spawn_blocking(move || expect_line("fenced", &lines_rx))
        .await
        .unwrap();
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
    drop(zombie);
    owner.shutdown().await.expect("shutdown");
}

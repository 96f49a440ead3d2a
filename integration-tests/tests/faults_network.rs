//! Ambiguous commits (issue 9, scenario 10). The processor reaches the broker
//! through a TCP proxy that cuts the network twice for 8 s while 16 callers keep
//! commands in flight: requests and responses (produce, send-offsets, commit) are
//! lost mid-way, so neither side knows whether a transaction committed. Callers get
//! `Timeout` and resend with the same command ids until they get an outcome. Every
//! command must have exactly one effect: one event in the committed log, versions
//! 1..=n per aggregate without gaps or repeats, and a resend answered with the
//! version of the first acceptance. And a processor killed between a commit and
//! its replies: the resent commands are answered from the outcomes after restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tributary::KafkaConfig;
use tributary::command::{CommandGateway, CommandOutcome, SendOptions};
use tributary_integration_tests::command_support::{Increment, counter_processor};
use tributary_integration_tests::node::Node;
use tributary_integration_tests::proxy::Proxy;
use tributary_integration_tests::raw_log::{self, Isolation};
use tributary_integration_tests::{kafka_bootstrap, unique_prefix};

const CALLERS: usize = 16;
const PER_CALLER: usize = 40;
const AGGREGATES: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_in_flight_through_a_network_cut_take_effect_exactly_once() {
    let bootstrap = kafka_bootstrap();
    let (proxy, proxied) = Proxy::kafka().await;
    let prefix = unique_prefix("fault-net");
    let mut settings = tributary_integration_tests::command_support::test_settings();
    settings.transaction_timeout = Duration::from_secs(10);
    let processor = counter_processor(&proxied, &prefix, 4)
        .settings(settings)
        .start()
        .await
        .expect("processor");
    let gateway = CommandGateway::connect_with_timeout(
        KafkaConfig::new(&bootstrap),
        &prefix,
        Duration::from_secs(4),
    )
    .await
    .expect("gateway");

    let timeouts = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let (gateway, timeouts, sent) = (gateway.clone(), timeouts.clone(), sent.clone());
            tokio::spawn(async move {
                let mut accepted = Vec::new();
                for n in 0..PER_CALLER {
                    let id = format!("cmd-{caller}-{n}");
                    let aggregate = format!("agg-{}", (caller + n) % AGGREGATES);
                    let mut first = true;
                    let version = loop {
                        let options = SendOptions {
                            command_id: Some(id.clone()),
                            ..Default::default()
                        };
                        let command = Increment {
                            id: aggregate.clone(),
                            by: 1,
                        };
                        if first {
                            sent.fetch_add(1, Ordering::Relaxed);
                            first = false;
                        }
                        match gateway.send_with(command, options).await {
                            Ok(CommandOutcome::Accepted { version, .. }) => break version,
                            Ok(CommandOutcome::Rejected(e)) => panic!("{id} rejected: {e}"),
                            Err(_) => {
                                timeouts.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                    };
                    accepted.push((id, aggregate, version));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                accepted
            })
        })
        .collect();

    // Two cuts while the load runs.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let in_flight = sent.load(Ordering::Relaxed);
        eprintln!(
            "cutting the network at {:?}, {in_flight} commands sent",
            started.elapsed()
        );
        proxy.cut_for(Duration::from_secs(8)).await;
        eprintln!("healed at {:?}", started.elapsed());
    }

    let mut outcomes: HashMap<String, (String, u64)> = HashMap::new();
    for caller in callers {
        let accepted = tokio::time::timeout(Duration::from_secs(240), caller)
            .await
            .expect("the callers finish after the heal")
            .expect("caller");
        for (id, aggregate, version) in accepted {
            outcomes.insert(id, (aggregate, version));
        }
    }
    let total = CALLERS * PER_CALLER;
    let timeouts = timeouts.load(Ordering::Relaxed);
    eprintln!(
        "{total} commands in {:?}; {timeouts} sends failed and were resent",
        started.elapsed()
    );
    assert_eq!(outcomes.len(), total);
    assert!(timeouts > 0, "the cuts hit no command in flight");

    // Every accepted version per aggregate is distinct and the set is 1..=n.
    let mut versions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (aggregate, version) in outcomes.values() {
        versions
            .entry(aggregate.clone())
            .or_default()
            .push(*version);
    }
    for (aggregate, mut v) in versions {
        v.sort_unstable();
        let expected: Vec<u64> = (1..=v.len() as u64).collect();
        assert_eq!(v, expected, "versions answered for {aggregate}");
    }

    // The committed log: one event per command, gapless per aggregate, one writer.
    let topic = format!("{prefix}.counter.events");
    let events = raw_log::read(&bootstrap, &topic, Isolation::Committed);
    raw_log::assert_single_writer(&events);
    let mut per_command: HashMap<&str, usize> = HashMap::new();
    for event in &events {
        *per_command.entry(event.causation_id.as_str()).or_default() += 1;
    }
    assert_eq!(
        per_command.len(),
        total,
        "commands with an event in the log"
    );
    assert!(
        per_command.values().all(|&n| n == 1),
        "a command has two events"
    );
    for event in &events {
        let (aggregate, version) = &outcomes[event.causation_id.as_str()];
        assert_eq!(
            (&event.aggregate_id, event.sequence),
            (aggregate, *version),
            "the log and the answer disagree"
        );
    }

    // A late resend is answered from the outcomes, with the first acceptance.
    let options = SendOptions {
        command_id: Some("cmd-0-0".into()),
        ..Default::default()
    };
    let command = Increment {
        id: outcomes["cmd-0-0"].0.clone(),
        by: 1,
    };
    match gateway.send_with(command, options).await.unwrap() {
        CommandOutcome::Accepted { version, .. } => assert_eq!(version, outcomes["cmd-0-0"].1),
        CommandOutcome::Rejected(e) => panic!("{e}"),
    }
    assert_eq!(
        raw_log::read(&bootstrap, &topic, Isolation::Committed).len(),
        total
    );
    drop(processor);
}

/// SIGKILL after a transaction committed and before its replies went out. The
/// callers time out; after the restart, their resends (same ids) are answered from
/// the committed outcomes with the versions of the first, lost, answers, and the log
/// holds each command once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_between_commit_and_reply_is_answered_from_the_outcomes() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("fault-reply");
    let release = std::env::temp_dir().join(format!("{prefix}.release"));
    let mut crashed = Node::counter(
        env!("CARGO_BIN_EXE_counter_node"),
        &bootstrap,
        &prefix,
        1,
        &[
            ("TRIBUTARY_PAUSE_FILE", release.to_str().unwrap()),
            ("TRIBUTARY_PAUSE_AT", "after_commit"),
        ],
    );
    let gateway = loop {
        // The node creates the topics; the gateway needs the replies topic.
        match CommandGateway::connect_with_timeout(
            KafkaConfig::new(&bootstrap),
            &prefix,
            Duration::from_secs(5),
        )
        .await
        {
            Ok(gateway) => break gateway,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let send = |id: &str, timeout: u64| {
        let gateway = gateway.clone();
        let options = SendOptions {
            command_id: Some(id.to_owned()),
            timeout: Some(Duration::from_secs(timeout)),
            ..Default::default()
        };
        async move {
            loop {
                let command = Increment {
                    id: "x".into(),
                    by: 1,
                };
                match gateway.send_with(command, options.clone()).await {
                    Err(tributary::command::GatewayError::NoTopic { .. }) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    other => return other,
                }
            }
        }
    };
    let first = tokio::spawn(send("lost-reply-1", 5));
    crashed.expect_line("paused", Duration::from_secs(90)).await;
    crashed.kill();
    // Committed, never answered.
    let topic = format!("{prefix}.counter.events");
    let events = raw_log::read(&bootstrap, &topic, Isolation::Committed);
    assert_eq!(events.len(), 1, "the transaction committed before the kill");
    assert!(
        matches!(
            first.await.unwrap(),
            Err(tributary::command::GatewayError::Timeout { .. })
        ),
        "the caller got no answer"
    );

    let owner = counter_processor(&bootstrap, &prefix, 1)
        .start()
        .await
        .expect("processor");
    match send("lost-reply-1", 60).await.unwrap() {
        CommandOutcome::Accepted { version, .. } => assert_eq!(version, 1),
        CommandOutcome::Rejected(e) => panic!("{e}"),
    }
    match send("lost-reply-2", 60).await.unwrap() {
        CommandOutcome::Accepted { version, .. } => assert_eq!(version, 2),
        CommandOutcome::Rejected(e) => panic!("{e}"),
    }
    let events = raw_log::read(&bootstrap, &topic, Isolation::Committed);
    raw_log::assert_single_writer(&events);
    let causes: Vec<&str> = events.iter().map(|e| e.causation_id.as_str()).collect();
    assert_eq!(causes, ["lost-reply-1", "lost-reply-2"]);
    owner.shutdown().await.expect("shutdown");
}

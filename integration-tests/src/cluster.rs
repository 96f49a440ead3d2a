//! The three-node Apache Kafka cluster of `scripts/services.sh up --brokers 3`, and
//! fault injection on its nodes (SIGKILL, SIGTERM, restart) for broker-loss tests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// How to start the cluster, printed when it is missing.
pub const HOW_TO_START_CLUSTER: &str = "these tests need the local three-node Apache Kafka cluster: \
     `eval \"$(scripts/services.sh up --brokers 3)\"` (bash scripts/test.sh runs them after the rest)";

fn services_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/services.sh")
}

/// Runs `scripts/services.sh` with `args` and returns its stdout; panics with its
/// stderr when it fails.
pub fn services(args: &[&str]) -> String {
    let output = Command::new("bash")
        .arg(services_script())
        .args(args)
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env("TRIBUTARY_BROKERS", "3")
        .output()
        .expect("run scripts/services.sh");
    assert!(
        output.status.success(),
        "scripts/services.sh {args:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn client(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("Kafka client")
}

/// The bootstrap servers of the three-node cluster; panics with instructions when
/// `KAFKA_BOOTSTRAP_SERVERS` does not lead to three brokers of ours.
pub fn cluster_bootstrap() -> String {
    crate::init_tracing();
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_default();
    let brokers = client(&bootstrap)
        .fetch_metadata(None, Duration::from_secs(10))
        .map(|m| m.brokers().len())
        .unwrap_or(0);
    assert!(
        brokers == 3 && bootstrap.contains("127.0.0.1:9092"),
        "KAFKA_BOOTSTRAP_SERVERS={bootstrap:?} has {brokers} brokers: {HOW_TO_START_CLUSTER}"
    );
    bootstrap
}

/// The broker ids the metadata lists now.
pub fn live_brokers(bootstrap: &str) -> Vec<i32> {
    let mut ids: Vec<i32> = client(bootstrap)
        .fetch_metadata(None, Duration::from_secs(10))
        .map(|m| m.brokers().iter().map(|b| b.id()).collect())
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

/// Leader, replicas and in-sync replicas of every partition of `topic`.
pub fn partitions(bootstrap: &str, topic: &str) -> BTreeMap<i32, (i32, usize, usize)> {
    let metadata = client(bootstrap)
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions())
        .map(|p| (p.id(), (p.leader(), p.replicas().len(), p.isr().len())))
        .collect()
}

/// The node (1, 2 or 3) leading partition `partition` of `topic`.
pub fn leader_of(bootstrap: &str, topic: &str, partition: i32) -> i32 {
    partitions(bootstrap, topic)
        .get(&partition)
        .map(|(leader, _, _)| *leader)
        .filter(|l| *l > 0)
        .unwrap_or_else(|| panic!("{topic}/{partition} has no leader"))
}

/// The node id of the active KRaft controller.
pub fn quorum_leader() -> i32 {
    services(&["quorum-leader"])
        .parse()
        .expect("quorum-leader prints a node id")
}

/// Waits until every partition of `topics` has a leader and `replicas` in-sync
/// replicas, and the metadata lists three brokers.
pub async fn wait_in_sync(bootstrap: &str, topics: &[String], replicas: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let ok = live_brokers(bootstrap).len() == 3
            && topics.iter().all(|t| {
                let parts = partitions(bootstrap, t);
                !parts.is_empty()
                    && parts
                        .values()
                        .all(|(leader, _, isr)| *leader > 0 && *isr >= replicas)
            });
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not get back to {replicas} in-sync replicas within {within:?}: {:?}",
            topics
                .iter()
                .map(|t| (t.clone(), partitions(bootstrap, t)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

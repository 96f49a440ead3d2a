//! Network partitions on a three-node Apache Kafka cluster in containers
//! ([`ContainerCluster`]: three Kafka containers on a network of their own, started
//! through testcontainers). A partition disconnects a container from that network:
//! its peers and the clients on the host stop reaching it (packets vanish, nothing is
//! refused), while its process runs on. Healing connects it again at the same
//! address.
//!
//! - The leader of an events partition is cut off under command load, then healed.
//! - The active KRaft controller is cut off under command load, then healed.
//!
//!   In both, every command answered `Accepted` is in the committed log exactly once,
//!   gapless per aggregate, and the read model ends complete.
//! - A processor in a container (`counter_node`) is cut off while its transaction is
//!   open: a zombie by partition, still running. Another owner takes its partition;
//!   after the heal the zombie's commit is refused, and none of its events reach a
//!   reader.
//!
//! Needs a container engine and the test images: `eval "$(scripts/containers.sh up)"`.
//! `bash scripts/test.sh` runs these one at a time, after the rest.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::future::Future;
use std::time::Duration;

use tributary_integration_tests::cluster::{leader_of, live_brokers, partitions, wait_in_sync};
use tributary_integration_tests::command_support::{counter_log_worker, counter_processor};
use tributary_integration_tests::container_cluster::ContainerCluster;
use tributary_integration_tests::load::{
    Load, assert_exactly_the_accepted, assert_read_model_is_the_log,
};
use tributary_integration_tests::transaction_support::{
    COMMANDS, assert_log, assert_open_transaction, assert_state, gateway, send_commands,
};
use tributary_integration_tests::{pg_store, unique_prefix};

const NODE: &str = env!("CARGO_BIN_EXE_counter_node");
/// How long the load may take for 150 commands while a node is cut off. Requests to
/// a silent node end only by librdkafka's timeouts (30 s for a transaction step),
/// and a cut-off transaction coordinator costs several of them in a row (measured:
/// 103 s for 150 commands).
const CUT_LIMIT: Duration = Duration::from_secs(300);

fn topics(prefix: &str) -> Vec<String> {
    ["events", "commands", "outcomes"]
        .iter()
        .map(|t| format!("{prefix}.counter.{t}"))
        .chain([format!("{prefix}.replies")])
        .collect()
}

/// Cuts `node` off the network and keeps the load going until 150 more commands
/// are accepted; returns the node's address, for the heal.
async fn cut_off(cluster: &ContainerCluster, node: i32, what: &str, load: &Load) -> String {
    let address = cluster.address(node).await;
    eprintln!("cutting node {node} ({address}), {what}, off the network");
    cluster.disconnect(node).await;
    load.progress_within(150, &format!("with {what} cut off"), CUT_LIMIT)
        .await;
    address
}

/// Connects `node` again at `address`, waits until every partition of the test's
/// topics has three in-sync replicas, and for 50 more commands.
async fn heal(cluster: &ContainerCluster, node: i32, address: &str, prefix: &str, load: &Load) {
    cluster.connect(node, address).await;
    wait_in_sync(
        &cluster.bootstrap(),
        &topics(prefix),
        3,
        Duration::from_secs(120),
    )
    .await;
    load.progress(50, "after the heal").await;
}

/// Runs the command load with a projection while `fault` cuts a node off and heals
/// it, then checks the log and the read model.
async fn under_load<F, Fut>(cluster: &ContainerCluster, test: &str, fault: F)
where
    F: FnOnce(String, Load) -> Fut,
    Fut: Future<Output = Load>,
{
    let bootstrap = cluster.bootstrap();
    let prefix = unique_prefix(test);
    let processor = counter_processor(&bootstrap, &prefix, 6)
        .start()
        .await
        .expect("processor");
    let gateway = gateway(&bootstrap, &prefix).await;
    let events = format!("{prefix}.counter.events");
    for (partition, (_, replicas, isr)) in partitions(&bootstrap, &events) {
        assert_eq!((replicas, isr), (3, 3), "events partition {partition}");
    }
    let store = pg_store(&prefix).await;
    let projection = counter_log_worker(&bootstrap, &prefix, store.clone()).spawn();
    let load = Load::start(&gateway, 8, 24);
    load.progress(100, "before any fault").await;

    let load = fault(prefix.clone(), load).await;

    let accepted = load.finish().await;
    eprintln!("{} commands accepted", accepted.len());
    assert_exactly_the_accepted(&bootstrap, &prefix, &accepted);
    assert_eq!(live_brokers(&bootstrap), vec![1, 2, 3]);
    assert_read_model_is_the_log(&bootstrap, &prefix, &store, accepted.len()).await;
    projection.shutdown().await.expect("projection");
    processor.shutdown().await.expect("processor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cutting_a_partition_leader_off_the_network_loses_nothing() {
    let cluster = &ContainerCluster::start("leader-cut").await;
    let bootstrap = &cluster.bootstrap();
    under_load(cluster, "leader-cut", |prefix, load| async move {
        let events = format!("{prefix}.counter.events");
        let leader = leader_of(bootstrap, &events, 0);
        let address = cut_off(cluster, leader, "the leader of events/0", &load).await;
        let new_leader = leader_of(bootstrap, &events, 0);
        assert_ne!(new_leader, leader, "{events}/0 kept its cut-off leader");
        heal(cluster, leader, &address, &prefix, &load).await;
        load
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolating_the_controller_loses_nothing() {
    let cluster = &ContainerCluster::start("controller-cut").await;
    under_load(cluster, "controller-cut", |prefix, load| async move {
        let controller = cluster.quorum_leader(1).await;
        let address = cut_off(cluster, controller, "the active controller", &load).await;
        // The two connected nodes elected one of themselves.
        let other = if controller == 1 { 2 } else { 1 };
        let elected = cluster.quorum_leader(other).await;
        assert_ne!(
            elected, controller,
            "no new controller while {controller} was cut off"
        );
        heal(cluster, controller, &address, &prefix, &load).await;
        load
    })
    .await;
}

/// The zombie of `commands_transactions`, made by a partition instead of SIGSTOP: the
/// processor runs in a container, produces a batch's events, and is cut off the
/// network before its commit (its process keeps running). A new owner on the host
/// takes the partition and decides the same commands; after the heal the zombie's
/// commit is refused, and no reader ever sees the zombie's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_processor_cut_off_with_its_transaction_open_is_fenced() {
    let cluster = ContainerCluster::start("zombie-cut").await;
    let bootstrap = cluster.bootstrap();
    let prefix = unique_prefix("zombie-cut");
    let shared = std::env::temp_dir().join(format!("{prefix}.shared"));
    std::fs::create_dir_all(&shared).unwrap();
    let release = shared.join("release");
    let mut zombie = cluster
        .counter_node(
            NODE,
            &prefix,
            1,
            &shared,
            &[
                ("TRIBUTARY_PAUSE_FILE", release.to_str().unwrap()),
                ("TRIBUTARY_PAUSE_AT", "before_commit"),
            ],
        )
        .await;
    let gateway = gateway(&bootstrap, &prefix).await;
    let sends = send_commands(&gateway);
    zombie.expect_line("paused", Duration::from_secs(120)).await;
    let in_flight = assert_open_transaction(&bootstrap, &prefix);
    let address = zombie.address().await;
    zombie.disconnect().await;
    // Let it go on to its commit while cut off: it retries and waits, running.
    std::fs::write(&release, b"go").unwrap();

    let store = pg_store(&prefix).await;
    let projection = counter_log_worker(&bootstrap, &prefix, store.clone()).spawn();
    let owner = counter_processor(&bootstrap, &prefix, 1)
        .start()
        .await
        .expect("processor");
    let accepted = sends.await.expect("callers");
    assert_eq!(accepted.len(), COMMANDS as usize);

    // Heal: the zombie reaches the brokers again and its commit is refused.
    zombie.connect(&address).await;
    zombie.expect_line("fenced", Duration::from_secs(90)).await;
    drop(zombie);
    let _ = std::fs::remove_dir_all(&shared);

    assert!(in_flight > 0);
    assert_log(&bootstrap, &prefix, &accepted, Some(&store)).await;
    assert_state(&gateway).await;
    owner.shutdown().await.expect("shutdown");
    projection.shutdown().await.expect("projection");
}

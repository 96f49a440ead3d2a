//! A three-node Apache Kafka cluster in containers on a network of its own, started
//! through testcontainers, and real network partitions: a node (or a processor in a
//! container) is disconnected from the network and later connected again with the
//! same address. While disconnected it answers nobody, not its peers and not the
//! clients on the host (its published port goes silent): the packets are dropped,
//! not refused.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testcontainers::bollard::models::{
    EndpointIpamConfig, EndpointSettings, NetworkConnectRequest, NetworkDisconnectRequest,
};
use testcontainers::core::logs::LogFrame;
use testcontainers::core::{ExecCommand, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tokio::sync::mpsc;

use crate::containers::{
    BASE_IMAGE, HOW_TO_START_CONTAINERS, docker, free_port, kafka_image, labels,
};

/// The cluster: node `n` (1, 2, 3) is `nodes[n - 1]`.
pub struct ContainerCluster {
    name: String,
    network: String,
    nodes: Vec<ContainerAsync<GenericImage>>,
    ports: Vec<u16>,
}

impl ContainerCluster {
    /// Starts three Kafka nodes (combined broker + controller, three voters) on a new
    /// network named after `name`, and waits until all three serve.
    pub async fn start(name: &str) -> Self {
        crate::init_tracing();
        assert!(
            crate::containers::engine_socket().is_some(),
            "no container engine answers: {HOW_TO_START_CONTAINERS}"
        );
        crate::containers::reap_orphans().await;
        let suffix = uuid::Uuid::now_v7().simple().to_string();
        let name = format!("tributary-test-{name}-{}", &suffix[suffix.len() - 8..]);
        let network = format!("{name}-net");
        let voters = (1..=3)
            .map(|n| format!("{n}@{name}-{n}:9093"))
            .collect::<Vec<_>>()
            .join(",");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let start = |n: u32| {
            kafka_image(n, ports[n as usize - 1])
                .with_container_name(format!("{name}-{n}"))
                .with_network(network.clone())
                .with_env_var("KAFKA_INTERNAL_HOST", format!("{name}-{n}"))
                .with_env_var("KAFKA_VOTERS", voters.clone())
                .with_env_var("KAFKA_CLUSTER_ID", "dHJpYnV0YXJ5LWNsdXN0ZXIA")
                .start()
        };
        // Together: each node finishes starting only once the quorum has a leader.
        let (a, b, c) = tokio::join!(start(1), start(2), start(3));
        let nodes = [a, b, c]
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|e| {
                    panic!("cannot start a Kafka container ({e}): {HOW_TO_START_CONTAINERS}")
                })
            })
            .collect();
        let cluster = Self {
            name,
            network,
            nodes,
            ports,
        };
        cluster.wait_brokers(3, Duration::from_secs(60)).await;
        cluster
    }

    /// Bootstrap servers for clients on the host (every node's published port).
    pub fn bootstrap(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Bootstrap servers for clients on the cluster's network (`<node>:19092`).
    pub fn internal_bootstrap(&self) -> String {
        (1..=3)
            .map(|n| format!("{}-{n}:19092", self.name))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The network's name.
    pub fn network(&self) -> &str {
        &self.network
    }

    fn node(&self, n: i32) -> &ContainerAsync<GenericImage> {
        assert!((1..=3).contains(&n), "no node {n}");
        &self.nodes[n as usize - 1]
    }

    /// Cuts node `n` off the network: no peer and no client reaches it.
    pub async fn disconnect(&self, n: i32) {
        disconnect(self.node(n).id(), &self.network).await;
    }

    /// Connects node `n` to the network again, at its former address.
    pub async fn connect(&self, n: i32, address: &str) {
        connect(self.node(n).id(), &self.network, address).await;
    }

    /// Node `n`'s address on the network.
    pub async fn address(&self, n: i32) -> String {
        address(self.node(n).id(), &self.network).await
    }

    /// The node id of the active KRaft controller, asked of node `via` (which must be
    /// connected).
    pub async fn quorum_leader(&self, via: i32) -> i32 {
        let mut result = self
            .node(via)
            .exec(ExecCommand::new([
                "java",
                "-cp",
                "/opt/kafka/libs/*",
                "-Dlog4j2.configurationFile=/var/lib/kafka/log4j2.properties",
                "org.apache.kafka.tools.MetadataQuorumCommand",
                "--bootstrap-controller",
                "localhost:9093",
                "describe",
                "--status",
            ]))
            .await
            .expect("exec MetadataQuorumCommand");
        let out =
            String::from_utf8_lossy(&result.stdout_to_vec().await.expect("stdout")).into_owned();
        out.lines()
            .find_map(|l| l.strip_prefix("LeaderId:"))
            .and_then(|id| id.trim().parse().ok())
            .unwrap_or_else(|| panic!("no LeaderId in the quorum's status: {out}"))
    }

    /// Waits until the metadata (asked of the host's listeners) lists `brokers` brokers.
    pub async fn wait_brokers(&self, brokers: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let live = crate::cluster::live_brokers(&self.bootstrap());
            if live.len() == brokers {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the container cluster lists brokers {live:?}, not {brokers}, after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Starts the `counter_node` program (its path: `env!("CARGO_BIN_EXE_counter_node")`)
    /// in a container on the cluster's network, reaching the brokers through their
    /// internal listeners. `shared` is mounted at the same path in the container (for
    /// its pause file).
    pub async fn counter_node(
        &self,
        program: &str,
        prefix: &str,
        partitions: u32,
        shared: &Path,
        env: &[(&str, &str)],
    ) -> ContainerNode {
        let (tx, lines) = mpsc::unbounded_channel();
        let pending = Arc::new(Mutex::new(String::new()));
        let consumer = move |frame: &LogFrame| {
            if let LogFrame::StdOut(bytes) = frame {
                let mut pending = pending.lock().unwrap();
                pending.push_str(&String::from_utf8_lossy(bytes));
                while let Some(end) = pending.find('\n') {
                    let line: String = pending.drain(..=end).collect();
                    let _ = tx.send(line.trim_end().to_owned());
                }
            }
        };
        let shared = shared.to_str().expect("a UTF-8 path");
        let mut image = GenericImage::new(BASE_IMAGE.0, BASE_IMAGE.1)
            .with_entrypoint("/usr/local/bin/counter_node")
            .with_wait_for(WaitFor::Nothing)
            .with_network(self.network.clone())
            .with_mount(Mount::bind_mount(program, "/usr/local/bin/counter_node"))
            .with_mount(Mount::bind_mount(shared, shared))
            .with_env_var("KAFKA_BOOTSTRAP_SERVERS", self.internal_bootstrap())
            .with_env_var("TRIBUTARY_PREFIX", prefix)
            .with_env_var("TRIBUTARY_PARTITIONS", partitions.to_string())
            .with_env_var(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .with_labels(labels())
            .with_log_consumer(consumer);
        for (key, value) in env {
            image = image.with_env_var(*key, *value);
        }
        let container = image
            .start()
            .await
            .unwrap_or_else(|e| panic!("cannot start counter_node in a container ({e})"));
        ContainerNode {
            container,
            network: self.network.clone(),
            lines,
        }
    }
}

/// A test program in a container on the cluster's network, whose stdout lines can be
/// awaited; removed when dropped.
pub struct ContainerNode {
    container: ContainerAsync<GenericImage>,
    network: String,
    lines: mpsc::UnboundedReceiver<String>,
}

impl ContainerNode {
    /// Waits until the program prints `want` on a line of its own.
    pub async fn expect_line(&mut self, want: &str, within: Duration) {
        crate::node::expect_line(&mut self.lines, "counter_node in a container", want, within)
            .await;
    }

    /// Its address on the cluster's network.
    pub async fn address(&self) -> String {
        address(self.container.id(), &self.network).await
    }

    /// Cuts it off the network: its connections to the brokers go silent.
    pub async fn disconnect(&self) {
        disconnect(self.container.id(), &self.network).await;
    }

    /// Connects it to the network again, at `address`.
    pub async fn connect(&self, address: &str) {
        connect(self.container.id(), &self.network, address).await;
    }
}

async fn address(container: &str, network: &str) -> String {
    let info = docker()
        .await
        .inspect_container(container, None)
        .await
        .expect("inspect the container");
    info.network_settings
        .and_then(|s| s.networks)
        .and_then(|n| n.get(network).cloned())
        .and_then(|e| e.ip_address)
        .filter(|ip| !ip.is_empty())
        .unwrap_or_else(|| panic!("container {container} has no address on {network}"))
}

async fn disconnect(container: &str, network: &str) {
    docker()
        .await
        .disconnect_network(
            network,
            NetworkDisconnectRequest {
                container: container.to_owned(),
                force: Some(true),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("disconnect {container} from {network}: {e}"));
}

async fn connect(container: &str, network: &str, ip: &str) {
    docker()
        .await
        .connect_network(
            network,
            NetworkConnectRequest {
                container: container.to_owned(),
                // The same address: peers and DNS caches keep working after the heal.
                endpoint_config: Some(EndpointSettings {
                    ipam_config: Some(EndpointIpamConfig {
                        ipv4_address: Some(ip.to_owned()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("connect {container} to {network}: {e}"));
}

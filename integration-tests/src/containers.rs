//! Kafka and Postgres in containers, started through testcontainers.
//!
//! Which services the tests use ([`ServicesMode`]) is chosen once per test process by
//! [`select_mode`]: `TRIBUTARY_TEST_SERVICES=containers|local`, else local services
//! when `KAFKA_BOOTSTRAP_SERVERS` is set, else containers when a Docker-API engine
//! answers (`DOCKER_HOST`, or `/var/run/docker.sock`), else the local defaults
//! (`127.0.0.1:9092`, `127.0.0.1:5432`).
//!
//! In container mode every test binary gets one Kafka node and one Postgres, from the
//! images `scripts/containers.sh images` builds (`localhost/tributary-test-kafka`,
//! `localhost/tributary-test-postgres`). nextest runs each test in its own process,
//! so the containers are shared by name: the first process of a binary creates them
//! (under a file lock), the others find them (testcontainers' reuse). They carry the
//! labels `tributary.test=true` and `tributary.owner=<pid>` (the nextest process, or
//! the test process under `cargo test`); every start removes the containers whose
//! owner is gone, and `scripts/containers.sh clean` removes them all.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::OnceLock;
use std::time::Duration;

use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{GenericImage, ImageExt, ReuseDirective};

/// The Kafka image `scripts/containers.sh images` builds (same version as the jars of
/// `scripts/services.sh`).
pub const KAFKA_IMAGE: (&str, &str) = ("localhost/tributary-test-kafka", "4.1.1");
/// The Postgres image `scripts/containers.sh images` builds.
pub const POSTGRES_IMAGE: (&str, &str) = ("localhost/tributary-test-postgres", "15");
/// The Debian base image (runs test programs such as `counter_node` in a container).
pub const BASE_IMAGE: (&str, &str) = ("localhost/tributary-test-debian", "bookworm");
/// Label on everything the tests create, for `scripts/containers.sh clean`.
pub const TEST_LABEL: &str = "tributary.test";
/// Label naming the process whose end makes a container garbage.
pub const OWNER_LABEL: &str = "tributary.owner";

/// How to get containers, printed when they are wanted but cannot start.
pub const HOW_TO_START_CONTAINERS: &str = "start a container engine and build the test images with \
     `eval \"$(scripts/containers.sh up)\"` (Podman from Debian's packages, or your Docker)";

/// Where the integration tests find Kafka and Postgres.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServicesMode {
    /// Services already running: `KAFKA_BOOTSTRAP_SERVERS` / `DATABASE_URL`, or the
    /// defaults of `scripts/services.sh` on 127.0.0.1.
    Local,
    /// Containers started through testcontainers, one Kafka and one Postgres per
    /// test binary.
    Containers,
}

/// Chooses the services mode from `TRIBUTARY_TEST_SERVICES` (`requested`), whether
/// `KAFKA_BOOTSTRAP_SERVERS` is set, and whether a container engine answers (asked
/// only when it matters).
pub fn select_mode(
    requested: Option<&str>,
    kafka_bootstrap_set: bool,
    engine_answers: impl FnOnce() -> bool,
) -> Result<ServicesMode, String> {
    match requested.map(str::trim) {
        Some("containers") => Ok(ServicesMode::Containers),
        Some("local") => Ok(ServicesMode::Local),
        None | Some("") | Some("auto") => {
            if kafka_bootstrap_set {
                Ok(ServicesMode::Local)
            } else if engine_answers() {
                Ok(ServicesMode::Containers)
            } else {
                Ok(ServicesMode::Local)
            }
        }
        Some(other) => Err(format!(
            "TRIBUTARY_TEST_SERVICES={other:?}: expected `containers`, `local` or `auto`"
        )),
    }
}

/// The mode of this test process (decided once).
pub fn mode() -> ServicesMode {
    static MODE: OnceLock<ServicesMode> = OnceLock::new();
    *MODE.get_or_init(|| {
        let requested = std::env::var("TRIBUTARY_TEST_SERVICES").ok();
        let kafka_set = std::env::var_os("KAFKA_BOOTSTRAP_SERVERS").is_some_and(|v| !v.is_empty());
        select_mode(requested.as_deref(), kafka_set, || {
            engine_socket().is_some()
        })
        .unwrap_or_else(|e| panic!("{e}"))
    })
}

/// The unix socket of the Docker-API engine testcontainers will use: `DOCKER_HOST`
/// (`unix://…`), else `/var/run/docker.sock`; `None` unless it answers `/_ping`.
pub fn engine_socket() -> Option<String> {
    let socket = match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => host.strip_prefix("unix://")?.to_owned(),
        _ => "/var/run/docker.sock".to_owned(),
    };
    ping(&socket).then_some(socket)
}

/// `GET /_ping` over a unix socket; true when the answer is `OK`.
fn ping(socket: &str) -> bool {
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream
        .write_all(b"GET /_ping HTTP/1.0\r\nHost: engine\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.") && answer.contains(" 200 ") && answer.ends_with("OK")
}

/// Kafka and Postgres of this test binary, as clients on the host reach them.
#[derive(Clone, Debug)]
pub struct SharedServices {
    /// Kafka's bootstrap servers (`127.0.0.1:<published port>`).
    pub kafka_bootstrap: String,
    /// Postgres' URL (database `test`, trust auth).
    pub database_url: String,
}

/// The containers of this test binary, started (or found) on first use.
pub fn shared() -> &'static SharedServices {
    static SHARED: OnceLock<SharedServices> = OnceLock::new();
    SHARED.get_or_init(|| {
        // Tests call this from inside their runtime; testcontainers needs one of its
        // own to wait for the containers, on another thread.
        std::thread::spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(start_shared())
        })
        .join()
        .unwrap_or_else(|_| {
            panic!("starting the test containers failed: {HOW_TO_START_CONTAINERS}")
        })
    })
}

/// The test binary's name without cargo's hash (`commands-0a1b…` → `commands`).
fn binary_name() -> String {
    let exe = std::env::current_exe().ok();
    let stem = exe
        .as_deref()
        .and_then(|p| p.file_stem())
        .and_then(|s| s.to_str())
        .unwrap_or("tests");
    let name = match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            name
        }
        _ => stem,
    };
    name.replace('_', "-")
}

/// The process whose end makes this process's shared containers garbage: nextest
/// (this process's parent) when running under it, else this process.
fn owner_pid() -> u32 {
    if std::env::var_os("NEXTEST_RUN_ID").is_some() {
        std::os::unix::process::parent_id()
    } else {
        std::process::id()
    }
}

/// The labels of a container owned by this run.
pub fn labels() -> HashMap<String, String> {
    HashMap::from([
        (TEST_LABEL.to_owned(), "true".to_owned()),
        (OWNER_LABEL.to_owned(), owner_pid().to_string()),
    ])
}

/// A TCP port nobody listens on now (the kernel's pick), for a fixed port mapping:
/// Kafka must advertise the host port before it starts.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The Kafka image for node `node_id`, its EXTERNAL listener published on
/// `host_port` and advertised as `127.0.0.1:host_port`.
pub fn kafka_image(node_id: u32, host_port: u16) -> testcontainers::ContainerRequest<GenericImage> {
    GenericImage::new(KAFKA_IMAGE.0, KAFKA_IMAGE.1)
        .with_wait_for(WaitFor::message_on_stdout("Kafka Server started"))
        .with_mapped_port(host_port, ContainerPort::Tcp(9092))
        .with_env_var("KAFKA_NODE_ID", node_id.to_string())
        .with_env_var(
            "KAFKA_ADVERTISED_EXTERNAL",
            format!("127.0.0.1:{host_port}"),
        )
        .with_labels(labels())
        .with_startup_timeout(Duration::from_secs(120))
}

async fn start_shared() -> SharedServices {
    reap_orphans().await;
    let base = format!("tributary-test-{}-{}", binary_name(), owner_pid());
    // One creator at a time: the others wait here and then find its containers.
    let lock_path = std::env::temp_dir().join(format!("{base}.lock"));
    let lock = std::fs::File::create(&lock_path).expect("a lock file");
    lock.lock().expect("lock the container start");

    let kafka = kafka_image(1, free_port())
        .with_container_name(format!("{base}-kafka"))
        .with_reuse(ReuseDirective::Always)
        .start()
        .await
        .unwrap_or_else(|e| {
            panic!("cannot start Kafka in a container ({e}): {HOW_TO_START_CONTAINERS}")
        });
    // A reused container keeps the port of its creator.
    let kafka_port = published_port(kafka.id(), 9092).await;
    let postgres = GenericImage::new(POSTGRES_IMAGE.0, POSTGRES_IMAGE.1)
        .with_wait_for(WaitFor::message_on_stderr(
            "database system is ready to accept connections",
        ))
        .with_mapped_port(free_port(), ContainerPort::Tcp(5432))
        .with_labels(labels())
        .with_container_name(format!("{base}-postgres"))
        .with_reuse(ReuseDirective::Always)
        .with_startup_timeout(Duration::from_secs(60))
        .start()
        .await
        .unwrap_or_else(|e| {
            panic!("cannot start Postgres in a container ({e}): {HOW_TO_START_CONTAINERS}")
        });
    let pg_port = published_port(postgres.id(), 5432).await;
    drop(lock);
    SharedServices {
        kafka_bootstrap: format!("127.0.0.1:{kafka_port}"),
        database_url: format!("postgres://postgres@127.0.0.1:{pg_port}/test"),
    }
}

/// The engine's API client; panics with instructions when no engine answers.
pub async fn docker() -> testcontainers::bollard::Docker {
    testcontainers::core::client::docker_client_instance()
        .await
        .unwrap_or_else(|e| panic!("no container engine ({e}): {HOW_TO_START_CONTAINERS}"))
}

/// The host port on which `container` publishes `port`/tcp. (testcontainers' own
/// lookup wants a host IP in the answer, which Podman leaves empty.)
pub async fn published_port(container: &str, port: u16) -> u16 {
    let info = docker()
        .await
        .inspect_container(container, None)
        .await
        .unwrap_or_else(|e| panic!("inspect container {container}: {e}"));
    info.network_settings
        .and_then(|s| s.ports)
        .and_then(|ports| ports.get(&format!("{port}/tcp")).cloned().flatten())
        .and_then(|bindings| bindings.into_iter().find_map(|b| b.host_port?.parse().ok()))
        .unwrap_or_else(|| panic!("container {container} publishes no port for {port}/tcp"))
}

/// Removes the test containers whose owner process has ended (an earlier run, or one
/// that crashed), so nothing piles up between runs.
pub async fn reap_orphans() {
    use testcontainers::bollard::query_parameters::{
        ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    };
    let Ok(docker) = testcontainers::core::client::docker_client_instance().await else {
        return;
    };
    let filters = HashMap::from([("label", vec![format!("{TEST_LABEL}=true")])]);
    let Ok(containers) = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
    else {
        return;
    };
    for container in containers {
        let owner = container
            .labels
            .as_ref()
            .and_then(|l| l.get(OWNER_LABEL))
            .and_then(|pid| pid.parse::<u32>().ok());
        let alive = owner.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive && let Some(id) = container.id {
            let _ = docker
                .remove_container(
                    &id,
                    Some(
                        RemoveContainerOptionsBuilder::new()
                            .force(true)
                            .v(true)
                            .build(),
                    ),
                )
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_request_wins() {
        let never = || panic!("the engine need not be asked");
        assert_eq!(
            select_mode(Some("containers"), true, never),
            Ok(ServicesMode::Containers)
        );
        assert_eq!(
            select_mode(Some("local"), false, never),
            Ok(ServicesMode::Local)
        );
    }

    #[test]
    fn kafka_bootstrap_servers_means_local_services() {
        let never = || panic!("the engine need not be asked");
        assert_eq!(select_mode(None, true, never), Ok(ServicesMode::Local));
        assert_eq!(
            select_mode(Some("auto"), true, never),
            Ok(ServicesMode::Local)
        );
    }

    #[test]
    fn otherwise_containers_when_an_engine_answers() {
        assert_eq!(
            select_mode(None, false, || true),
            Ok(ServicesMode::Containers)
        );
        assert_eq!(
            select_mode(Some(""), false, || true),
            Ok(ServicesMode::Containers)
        );
        assert_eq!(select_mode(None, false, || false), Ok(ServicesMode::Local));
    }

    #[test]
    fn an_unknown_request_is_an_error() {
        let err = select_mode(Some("docker"), false, || true).unwrap_err();
        assert!(err.contains("TRIBUTARY_TEST_SERVICES=\"docker\""), "{err}");
    }

    #[test]
    fn ping_fails_without_a_socket() {
        assert!(!ping("/nonexistent/engine.sock"));
    }
}

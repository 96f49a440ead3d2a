//! A sustained command load on the counter, for fault tests on a cluster: callers
//! that resend each command with the same id until answered, and the check that the
//! committed log holds exactly the accepted commands.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tributary::command::{CommandGateway, CommandOutcome, SendOptions};

use crate::command_support::Increment;
use crate::raw_log::{self, Isolation};

/// Callers that send increments without pause until stopped, each resending with
/// the same command id until its outcome is known.
pub struct Load {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(String, String, u64)>>>,
}

impl Load {
    /// Starts `callers` callers over `aggregates` aggregates.
    pub fn start(gateway: &CommandGateway, callers: usize, aggregates: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let tasks = (0..callers)
            .map(|caller| {
                let (gateway, stop, accepted) =
                    (gateway.clone(), Arc::clone(&stop), Arc::clone(&accepted));
                tokio::spawn(async move {
                    let mut done = Vec::new();
                    let mut i = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let id = format!("c{caller}-{i}");
                        let aggregate = format!("a{}", (caller * 7 + i) % aggregates);
                        let deadline = Instant::now() + Duration::from_secs(240);
                        let version = loop {
                            let options = SendOptions {
                                command_id: Some(id.clone()),
                                ..Default::default()
                            };
                            let command = Increment {
                                id: aggregate.clone(),
                                by: 1,
                            };
                            match gateway.send_with(command, options).await {
                                Ok(CommandOutcome::Accepted { version, .. }) => break version,
                                Ok(CommandOutcome::Rejected(e)) => panic!("{id}: rejected: {e}"),
                                Err(e) => {
                                    assert!(Instant::now() < deadline, "{id}: no outcome: {e}");
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                            }
                        };
                        done.push((id, aggregate, version));
                        accepted.fetch_add(1, Ordering::SeqCst);
                        i += 1;
                    }
                    done
                })
            })
            .collect();
        Self {
            stop,
            accepted,
            tasks,
        }
    }

    /// Waits until `more` further commands were accepted; fails when that takes
    /// over two minutes.
    pub async fn progress(&self, more: usize, what: &str) {
        self.progress_within(more, what, Duration::from_secs(120))
            .await;
    }

    /// Waits until `more` further commands were accepted; fails when that takes
    /// longer than `limit` (a network partition stalls requests until librdkafka's
    /// 30 s request timeouts, several in a row).
    pub async fn progress_within(&self, more: usize, what: &str, limit: Duration) {
        let target = self.accepted.load(Ordering::SeqCst) + more;
        let started = Instant::now();
        while self.accepted.load(Ordering::SeqCst) < target {
            assert!(
                started.elapsed() < limit,
                "the load stalled {what}: {} accepted",
                self.accepted.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "{what}: {} accepted, +{more} in {:?}",
            self.accepted.load(Ordering::SeqCst),
            started.elapsed()
        );
    }

    /// Stops the callers and returns every accepted command: (id, aggregate, version).
    pub async fn finish(self) -> Vec<(String, String, u64)> {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(task.await.expect("caller"));
        }
        all
    }
}

/// Every accepted command is in the committed log exactly once, at the version its
/// caller was told, and nothing else is.
pub fn assert_exactly_the_accepted(
    bootstrap: &str,
    prefix: &str,
    accepted: &[(String, String, u64)],
) {
    let committed = raw_log::read(
        bootstrap,
        &format!("{prefix}.counter.events"),
        Isolation::Committed,
    );
    raw_log::assert_single_writer(&committed);
    let by_cause: BTreeMap<&str, (&str, u64)> = committed
        .iter()
        .map(|e| {
            (
                e.causation_id.as_str(),
                (e.aggregate_id.as_str(), e.sequence),
            )
        })
        .collect();
    assert_eq!(
        by_cause.len(),
        committed.len(),
        "a command caused two events"
    );
    for (id, aggregate, version) in accepted {
        assert_eq!(
            by_cause.get(id.as_str()),
            Some(&(aggregate.as_str(), *version)),
            "accepted command {id}"
        );
    }
    assert_eq!(
        committed.len(),
        accepted.len(),
        "events in the log that no caller was told of"
    );
}

/// Waits until the counter's read model (`counter_log`, in `store`) holds every
/// committed event, then checks that it holds exactly those: each event once,
/// nothing else.
pub async fn assert_read_model_is_the_log(
    bootstrap: &str,
    prefix: &str,
    store: &tributary::PgStore,
    accepted: usize,
) {
    crate::projection_support::wait_until(
        Duration::from_secs(90),
        "the projection to apply every event",
        || async { crate::command_support::counter_log_ids(store).await.len() >= accepted },
    )
    .await;
    let mut seen = crate::command_support::counter_log_ids(store).await;
    seen.sort();
    let events = format!("{prefix}.counter.events");
    let mut expected: Vec<String> = raw_log::read(bootstrap, &events, Isolation::Committed)
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    expected.sort();
    assert_eq!(seen, expected, "the read model differs from the log");
}

//! What a running worker reports, and the handle of a spawned worker.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::future::{FutureExt, Shared};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::projection::error::{PoisonReport, ProjectionError};

/// What a worker is doing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum WorkerState {
    /// Migrating, connecting, joining the consumer group.
    #[default]
    Starting,
    /// Applying records.
    Running,
    /// Replaying from the beginning (see [`ProjectionStatus::rebuild`]).
    Rebuilding,
    /// Stopped at a poison record ([`crate::projection::PoisonPolicy::Halt`]).
    Halted(Box<PoisonReport>),
    /// Shut down.
    Stopped,
}

/// Progress of a rebuild.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RebuildProgress {
    /// Offsets replayed so far, over all partitions (records plus transaction markers).
    pub done: u64,
    /// Offsets to replay: the high-water marks when the rebuild started minus the
    /// log start offsets.
    pub total: u64,
    /// Events applied (or parked) so far.
    pub events: u64,
    /// Offsets per second since the rebuild started.
    pub rate_per_sec: f64,
    /// Estimated time left at the current rate.
    pub eta: Option<Duration>,
    /// Time since the rebuild started.
    pub elapsed: Duration,
    /// Where the rebuild is on each partition, in topic and partition order.
    pub partitions: Vec<PartitionProgress>,
}

/// A rebuild's position on one partition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionProgress {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The next offset to replay (up to `high`).
    pub position: i64,
    /// The high-water mark when the rebuild started: where it ends.
    pub high: i64,
}

/// The outcome of a finished rebuild.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildReport {
    /// Events applied or parked.
    pub events: u64,
    /// Offsets replayed (records plus transaction markers).
    pub offsets: u64,
    /// Wall time, reset included.
    pub elapsed: Duration,
    /// Events per second.
    pub events_per_sec: f64,
}

/// A snapshot of a worker's state and counters.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct ProjectionStatus {
    /// What the worker is doing.
    pub state: WorkerState,
    /// Partitions the worker owns and applies, as `(topic, partition)`.
    pub partitions: Vec<(String, i32)>,
    /// Events applied since the worker started.
    pub applied: u64,
    /// Records parked in the dead-letter table since the worker started.
    pub parked: u64,
    /// Batches rolled back because another worker had moved the checkpoint.
    pub conflicts: u64,
    /// The last infrastructure error (Kafka or Postgres), if any since the last
    /// successful batch.
    pub last_error: Option<String>,
    /// Progress of the running rebuild.
    pub rebuild: Option<RebuildProgress>,
}

/// A worker started with [`crate::projection::ProjectionWorker::spawn`].
///
/// Stop it with [`ProjectionHandle::shutdown`] (graceful: the batch being applied
/// commits, then the worker leaves its group) or [`ProjectionHandle::abort`]
/// (abrupt, as a crash; safe: Postgres rolls the open batch's transaction back).
/// Dropping the handle asks for the same graceful stop as `shutdown` without
/// waiting for it, like dropping a
/// [`ProcessorHandle`](crate::command::ProcessorHandle).
#[derive(Debug)]
pub struct ProjectionHandle {
    pub(crate) projection: &'static str,
    /// `None` once joined.
    pub(crate) task: Option<JoinHandle<Result<(), ProjectionError>>>,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) status: watch::Receiver<ProjectionStatus>,
}

impl ProjectionHandle {
    /// The worker's current status.
    pub fn status(&self) -> ProjectionStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<ProjectionStatus> {
        self.status.clone()
    }

    /// Asks the worker to stop after the batch it is applying, then waits for it.
    pub async fn shutdown(self) -> Result<(), ProjectionError> {
        let _ = self.shutdown.send(true);
        self.join().await
    }

    /// Stops the worker abruptly (aborts its task), as a crash would. Returns at
    /// once; [`ProjectionHandle::join`] waits for the worker to end.
    pub fn abort(&self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }

    /// Whether the worker has ended.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits for the worker to end (after a halt, an error, or a shutdown).
    pub async fn join(mut self) -> Result<(), ProjectionError> {
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match task.await {
            Ok(result) => result,
            Err(err) => Err(ProjectionError::Task {
                projection: self.projection,
                detail: err.to_string(),
            }),
        }
    }
}

impl Drop for ProjectionHandle {
    fn drop(&mut self) {
        // Nothing to stop once joined; a worker that ended ignores it.
        let _ = self.shutdown.send(true);
    }
}

/// A shutdown signal that can be awaited repeatedly. Its clones share the signal:
/// each batch applied at the same time waits on one of its own.
#[derive(Clone)]
pub(crate) struct Shutdown {
    signal: Shared<Pin<Box<dyn Future<Output = ()> + Send>>>,
    fired: bool,
}

impl Shutdown {
    pub(crate) fn new(signal: impl Future<Output = ()> + Send + 'static) -> Self {
        let signal: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(signal);
        Self {
            signal: signal.shared(),
            fired: false,
        }
    }

    /// Completes when the signal has fired (at once if it already has).
    pub(crate) async fn wait(&mut self) {
        if !self.fired {
            (&mut self.signal).await;
            self.fired = true;
        }
    }

    /// Whether the signal has fired, without waiting.
    pub(crate) fn fired(&mut self) -> bool {
        if !self.fired {
            let mut cx = Context::from_waker(Waker::noop());
            if let Poll::Ready(()) = Pin::new(&mut self.signal).poll(&mut cx) {
                self.fired = true;
            }
        }
        self.fired
    }
}

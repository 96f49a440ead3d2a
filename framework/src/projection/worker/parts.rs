//! The partitions a worker applies and the records it has received for them.

use rdkafka::message::OwnedMessage;

use crate::codec::DecodeError;
use crate::projection::source::Decoded;

/// A partition the worker applies.
#[derive(Clone)]
pub(super) struct Part {
    /// Unique per assignment, so records collected before a rebalance are not
    /// applied under a later assignment of the same partition.
    pub(super) id: u64,
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) source: usize,
    /// Next offset to apply as stored in Postgres (`None`: no row yet).
    pub(super) checkpoint: Option<i64>,
    /// Next offset expected from the consumer.
    pub(super) position: i64,
    /// `false` until the checkpoint is known and the consumer sought to it.
    pub(super) ready: bool,
    /// The consumer reported the end of the partition and no record came since.
    pub(super) at_end: bool,
    /// Applied by a live (group) worker, which yields to a running rebuild; `false`
    /// for the rebuild's own partitions.
    pub(super) live: bool,
}

/// Records of one partition received under one assignment, decoded on arrival.
pub(super) struct Group {
    /// [`Part::id`].
    pub(super) id: u64,
    pub(super) messages: Vec<OwnedMessage>,
    /// `decoded[i]` is `messages[i]` decoded.
    pub(super) decoded: Vec<Result<Decoded, DecodeError>>,
}

/// Records received but not applied yet.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) groups: Vec<Group>,
    /// When the first of them arrived (`max_wait` counts from there).
    pub(super) first_at: Option<tokio::time::Instant>,
}

impl Pending {
    pub(super) fn largest(&self) -> usize {
        self.groups
            .iter()
            .map(|g| g.messages.len())
            .max()
            .unwrap_or(0)
    }

    /// Drops the records of partitions that are gone, were assigned anew, or wait
    /// to re-read their checkpoint.
    pub(super) fn retain_ready(&mut self, parts: &[Part]) {
        self.groups
            .retain(|g| parts.iter().any(|p| p.id == g.id && p.ready));
        if self.groups.is_empty() {
            self.first_at = None;
        }
    }
}

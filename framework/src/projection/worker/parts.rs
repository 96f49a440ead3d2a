//! The partitions a worker applies and the records it has received for them.

use crate::codec::DecodeError;
use crate::projection::received::Received;
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

impl Part {
    /// Moves this partition's checkpoint row from [`Self::checkpoint`] to `next`
    /// within `tx`, for projection `projection`. `false`: the row was not at
    /// `checkpoint` any more (another worker or a rebuild moved it); nothing changed.
    pub(super) async fn advance_checkpoint(
        &self,
        tx: &mut sqlx::PgConnection,
        projection: &str,
        next: i64,
    ) -> Result<bool, sqlx::Error> {
        crate::projection::checkpoint::advance(
            tx,
            projection,
            &self.topic,
            self.partition,
            self.checkpoint,
            next,
        )
        .await
    }
}

/// Records of one partition received under one assignment, decoded on arrival.
pub(super) struct Group {
    /// [`Part::id`].
    pub(super) id: u64,
    pub(super) messages: Vec<Received>,
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
    /// Adds a record to the group of assignment `id` (a new group after the others
    /// if it has none yet) and returns the size of that group.
    pub(super) fn push(
        &mut self,
        id: u64,
        message: Received,
        decoded: Result<Decoded, DecodeError>,
    ) -> usize {
        let index = match self.groups.iter().position(|g| g.id == id) {
            Some(index) => index,
            None => {
                self.groups.push(Group {
                    id,
                    messages: Vec::new(),
                    decoded: Vec::new(),
                });
                self.groups.len() - 1
            }
        };
        let group = &mut self.groups[index];
        group.messages.push(message);
        group.decoded.push(decoded);
        group.messages.len()
    }

    /// The size of the largest group (0 without records).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::RecordRef;

    fn part(id: u64, partition: i32, ready: bool) -> Part {
        Part {
            id,
            topic: "shop.order.events".to_owned(),
            partition,
            source: 0,
            checkpoint: None,
            position: 0,
            ready,
            at_end: false,
            live: true,
        }
    }

    fn message(_partition: i32, offset: i64) -> Received {
        let record = RecordRef {
            value: Some(b"{}"),
            ..RecordRef::default()
        };
        Received::new(offset, &record)
    }

    fn offsets(group: &Group) -> Vec<i64> {
        group.messages.iter().map(Received::offset).collect()
    }

    #[test]
    fn records_are_grouped_by_assignment_in_arrival_order() {
        let mut pending = Pending::default();
        assert_eq!(pending.largest(), 0);
        assert_eq!(pending.push(7, message(0, 10), Ok(Box::new(10))), 1);
        assert_eq!(
            pending.push(8, message(1, 3), Err(DecodeError::MissingValue)),
            1
        );
        assert_eq!(pending.push(7, message(0, 11), Ok(Box::new(11))), 2);
        assert_eq!(pending.largest(), 2);
        let ids: Vec<u64> = pending.groups.iter().map(|g| g.id).collect();
        assert_eq!(ids, [7, 8]);
        assert_eq!(offsets(&pending.groups[0]), [10, 11]);
        assert_eq!(offsets(&pending.groups[1]), [3]);
        // `decoded[i]` stays `messages[i]` decoded.
        let second = pending.groups[0].decoded[1].as_ref().ok();
        assert_eq!(second.and_then(|d| d.downcast_ref::<i32>()), Some(&11));
        assert!(pending.groups[1].decoded[0].is_err());
    }

    #[test]
    fn retain_ready_drops_groups_of_gone_reassigned_or_paused_partitions() {
        let mut pending = Pending::default();
        for id in [1, 2, 3, 4] {
            pending.push(id, message(0, 0), Ok(Box::new(())));
        }
        pending.first_at = Some(tokio::time::Instant::now());
        // 1 ready; 2 paused to re-read its checkpoint; 3 gone; 4 assigned anew as 5.
        let parts = [part(1, 0, true), part(2, 1, false), part(5, 3, true)];
        pending.retain_ready(&parts);
        let ids: Vec<u64> = pending.groups.iter().map(|g| g.id).collect();
        assert_eq!(ids, [1]);
        assert!(pending.first_at.is_some(), "records are still waiting");
        pending.retain_ready(&[]);
        assert!(pending.groups.is_empty());
        assert_eq!(pending.first_at, None);
    }
}

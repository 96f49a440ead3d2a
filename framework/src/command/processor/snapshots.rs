//! When a processor snapshots its aggregates: per aggregate every
//! `A::SNAPSHOT_EVERY` events, per partition every `flush_every` events and on
//! revocation. The Postgres side is in `command::snapshot`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::warn;

use crate::Aggregate;
use crate::command::snapshot::{self, SnapshotJob, SnapshotRow};

use super::cache;
use super::partitions::{Core, Slot};
use super::stats::ProcessorStats;

impl<A: Aggregate> Core<A> {
    /// Applies the snapshot writer's confirmations: an aggregate whose row is
    /// confirmed at its current version is no longer dirty.
    /// Confirmations of a partition whose transaction is running wait until its
    /// state is back (see `commit`).
    pub(super) fn confirm_snapshots(&mut self) {
        let deferred = std::mem::take(&mut self.deferred);
        let fresh = std::iter::from_fn(|| self.written.try_recv().ok()).collect::<Vec<_>>();
        for written in deferred.into_iter().chain(fresh) {
            let Some(part) = self.partitions.get_mut(&written.partition) else {
                if self.inflight.contains_key(&written.partition) {
                    self.deferred.push(written);
                }
                continue;
            };
            for (id, version) in written.confirmed {
                let Some(slot) = part.aggregates.get_mut(&id) else {
                    continue;
                };
                slot.confirmed_version = slot.confirmed_version.max(version);
                if slot.confirmed_version >= slot.version {
                    part.dirty.remove(&id);
                }
            }
        }
    }

    /// Hands every aggregate not yet confirmed at its current version to the writer,
    /// with the partition's new watermark, in one Postgres transaction; waits for
    /// the write if `wait`.
    pub(super) fn flush(&mut self, partition: i32, wait: bool) {
        let Some(tx) = self.snapshot_tx.clone() else {
            return;
        };
        self.confirm_snapshots();
        let Some(part) = self.partitions.get_mut(&partition) else {
            return;
        };
        let watermark = part.producers.max_offset();
        let mut rows = Vec::new();
        for id in &part.dirty {
            let Some(slot) = part.aggregates.get(id) else {
                continue;
            };
            match snapshot_row(id, slot) {
                Some(row) => rows.push(row),
                None => return, // cannot cover every aggregate: keep the old watermark
            }
        }
        // They stay dirty until the writer confirms the rows: a failed write leaves
        // them in the next flush, and its watermark is not written either (one
        // Postgres transaction).
        for id in &part.dirty {
            if let Some(slot) = part.aggregates.get_mut(id) {
                slot.snapshot_version = slot.version;
            }
        }
        part.events_since_flush = 0;
        ProcessorStats::add(&self.shared.stats.snapshots, rows.len() as u64);
        let (done, wait_for) = if wait {
            let (s, r) = tokio::sync::oneshot::channel();
            (Some(s), Some(r))
        } else {
            (None, None)
        };
        let job = SnapshotJob {
            partition,
            rows,
            watermark: (watermark >= 0).then_some(watermark),
            done,
        };
        if tx.send(job).is_err() {
            warn!(partition, "snapshot writer is gone");
            return;
        }
        if let Some(r) = wait_for {
            match self.block_on(async { tokio::time::timeout(Duration::from_secs(30), r).await }) {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => warn!(%error, partition, "snapshots on revoke failed"),
                _ => warn!(partition, "snapshots on revoke did not finish in 30 s"),
            }
        }
    }

    /// After a partition's transaction committed: its aggregates' offset bounds,
    /// the snapshots that are due, then eviction past the partition's share of
    /// `max_cached_aggregates`.
    pub(super) fn after_commit(&mut self, partition: i32) {
        self.snapshot_after_commit(partition);
        self.evict(partition);
        self.count_cached();
    }

    /// Publishes how many aggregates are in memory ([`ProcessorStats::cached_aggregates`]).
    pub(super) fn count_cached(&self) {
        let busy: usize = self
            .inflight
            .iter()
            .filter(|(p, _)| !self.partitions.contains_key(p))
            .map(|(_, f)| f.cached)
            .sum();
        let held = busy
            + self
                .partitions
                .values()
                .map(|p| p.aggregates.len())
                .sum::<usize>();
        self.shared
            .stats
            .cached
            .store(held as u64, Ordering::Relaxed);
    }

    /// How many partitions this instance processes: in memory or busy in a
    /// transaction.
    pub(super) fn owned_count(&self) -> usize {
        self.partitions.len()
            + self
                .inflight
                .keys()
                .filter(|p| !self.partitions.contains_key(p))
                .count()
    }

    /// Keeps the partition within its share of `max_cached_aggregates`: once it is
    /// over by a sixteenth, the least recently used aggregates whose snapshot row is
    /// confirmed at their current version leave memory, down to the share. When
    /// too few are confirmed, the partition is snapshotted, so they can leave after
    /// the writer confirms. Nothing leaves without a snapshot store.
    pub(super) fn evict(&mut self, partition: i32) {
        if self.snapshot_tx.is_none() {
            return;
        }
        let share = cache::share(
            self.shared.settings.max_cached_aggregates,
            self.owned_count(),
        );
        let held = self
            .partitions
            .get(&partition)
            .map_or(0, |p| p.aggregates.len());
        if cache::excess(held, share) == 0 {
            return;
        }
        self.confirm_snapshots();
        let Some(part) = self.partitions.get_mut(&partition) else {
            return;
        };
        let excess = part.aggregates.len().saturating_sub(share);
        let (aggregates, dirty) = (&part.aggregates, &part.dirty);
        let evicted = part.recency.evict(excess, |id| {
            aggregates.get(id).is_none_or(|slot| {
                cache::evictable(dirty.contains(id), slot.version, slot.confirmed_version)
            })
        });
        let mut count = 0;
        for id in &evicted {
            if part.aggregates.remove(id).is_some() {
                count += 1;
            }
        }
        if count > 0 {
            part.complete = false;
            ProcessorStats::add(&self.shared.stats.aggregates_evicted, count);
        }
        // Still over: most of what is held is not confirmed yet. Snapshot it now
        // rather than at the next `flush_every`, unless a write is on its way.
        if cache::excess(part.aggregates.len(), share) > 0
            && part.dirty.iter().any(|id| {
                part.aggregates
                    .get(id)
                    .is_some_and(|slot| slot.snapshot_version < slot.version)
            })
        {
            self.flush(partition, false);
        }
    }

    fn snapshot_after_commit(&mut self, partition: i32) {
        let Some(part) = self.partitions.get_mut(&partition) else {
            return;
        };
        // Every event of this transaction is at or before the highest delivered offset.
        let bound = part.producers.max_offset();
        let touched: Vec<String> = part.touched.drain().collect();
        for id in &touched {
            if let Some(slot) = part.aggregates.get_mut(id) {
                slot.offset_bound = bound;
            }
        }
        let (Some(every), Some(tx)) = (
            A::SNAPSHOT_EVERY.filter(|n| *n > 0),
            self.snapshot_tx.clone(),
        ) else {
            return;
        };
        if part.events_since_flush >= self.shared.settings.flush_every {
            self.flush(partition, false);
            return;
        }
        let mut rows = Vec::new();
        for id in touched {
            let Some(slot) = part.aggregates.get_mut(&id) else {
                continue;
            };
            if snapshot::due(slot.version, slot.snapshot_version, every)
                && let Some(row) = snapshot_row(&id, slot)
            {
                rows.push(row);
                // Still dirty: it leaves the set when the writer confirms the row.
                slot.snapshot_version = slot.version;
            }
        }
        if !rows.is_empty() {
            ProcessorStats::add(&self.shared.stats.snapshots, rows.len() as u64);
            let _ = tx.send(SnapshotJob {
                partition,
                rows,
                watermark: None,
                done: None,
            });
        }
    }
}

pub(super) fn snapshot_row<A: Aggregate>(id: &str, slot: &Slot<A>) -> Option<SnapshotRow> {
    match serde_json::to_value(&slot.state) {
        Ok(state) => Some(SnapshotRow {
            aggregate_id: id.to_owned(),
            version: i64::try_from(slot.version).ok()?,
            events_offset: slot.offset_bound,
            state,
            state_version: A::STATE_VERSION as i32,
        }),
        Err(error) => {
            warn!(%error, aggregate_id = id, "aggregate state does not serialize; no snapshot");
            None
        }
    }
}

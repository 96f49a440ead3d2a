//! Restoring a partition: fencing its previous writer, rebuilding its aggregates
//! from snapshots and events, and its dedup window from the outcomes topic.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, info_span, warn};

use crate::command::dedup::{Seen, SeenWindow};
use crate::command::snapshot::{self, SnapshotRow};
use crate::command::wire::{self};
use crate::kafka::record_ref;
use crate::{Aggregate, EventEnvelope};

use super::cache::{self, Recency};
use super::contexts::{DeliveryContext, RestoreContext};
use super::error::ProcessorError;
use super::partitions::{PartitionState, Slot};
use super::producer::TxProducers;
use super::replay::Replay;
use super::stats::ProcessorStats;
use super::{Shared, lock, slow};
use crate::kafka::{clients, op};

/// How far (at most; a tenth of the window if less) before the dedup window a
/// restore starts reading outcomes, for owners whose clocks were behind.
pub(super) const OUTCOME_CLOCK_MARGIN: Duration = Duration::from_secs(300);

/// Restores one partition on a thread of its own, so that the processor keeps
/// polling (and stays in the group) however long a restore takes: its own consumers
/// for the events and outcomes partitions, and a flag that says the partition was
/// revoked meanwhile.
pub(super) struct Restorer<A: Aggregate> {
    pub(super) shared: Arc<Shared<A>>,
    pub(super) restore_consumer: BaseConsumer<RestoreContext>,
    /// read_uncommitted, for the end of a partition to restore up to. After
    /// `init_transactions` no transaction of this partition's writer is open, so on
    /// Kafka this equals the last stable offset; the high watermark also serves
    /// brokers that report the LSO as 0 while a transaction is open (Tansu).
    pub(super) watermark_consumer: BaseConsumer,
    pub(super) cancel: Arc<AtomicBool>,
}

impl<A: Aggregate> Restorer<A> {
    pub(super) fn new(
        shared: Arc<Shared<A>>,
        cancel: Arc<AtomicBool>,
    ) -> Result<Self, ProcessorError> {
        let group = &shared.group;
        let restore_consumer: BaseConsumer<RestoreContext> =
            clients::restore_reader(&shared.kafka, group)
                .create_with_context(RestoreContext)
                .map_err(op("create restore consumer"))?;
        let watermark_consumer: BaseConsumer =
            clients::watermark_reader(&shared.kafka, Some(group))
                .create()
                .map_err(op("create watermark consumer"))?;
        Ok(Self {
            shared,
            restore_consumer,
            watermark_consumer,
            cancel,
        })
    }

    pub(super) fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.shared.runtime.block_on(future)
    }

    pub(super) fn check_cancelled(&self, partition: i32) -> Result<(), ProcessorError> {
        if self.cancel.load(Ordering::SeqCst) {
            return Err(ProcessorError::RestoreCancelled { partition });
        }
        Ok(())
    }

    /// Takes ownership of `partition`: fences its previous writer, then rebuilds its
    /// aggregates from snapshots and the events after them, and its seen command ids
    /// from the outcomes topic.
    pub(super) fn restore(&self, partition: i32) -> Result<PartitionState<A>, ProcessorError> {
        let span = info_span!("restore", aggregate = A::NAME, partition);
        let _enter = span.enter();
        let started = Instant::now();
        let shared = Arc::clone(&self.shared);
        let settings = &shared.settings;
        let [first, second] = TxProducers::ids(&shared.group, partition).map(|id| {
            clients::transactional_producer(&shared.kafka, id, settings.transaction_timeout)
                .create_with_context(DeliveryContext {
                    events_topic: shared.layout.events.clone(),
                    max_offset: AtomicI64::new(-1),
                    failed: AtomicBool::new(false),
                })
                .map_err(op("create transactional producer"))
        });
        let producers = TxProducers::new([first?, second?]);
        // Fences the previous owner (both of its ids) and completes or aborts what
        // it left open, before anything of the partition is read; not if the
        // partition was revoked meanwhile (it would fence the new owner).
        let step = Instant::now();
        self.check_cancelled(partition)?;
        // Both at once: each may wait for the coordinator to abort what the previous
        // owner left open under that id.
        let timeout = settings.transaction_timeout;
        let [first, second] = producers.both();
        std::thread::scope(|scope| {
            let other = scope.spawn(|| second.init_transactions(timeout));
            let mine = first.init_transactions(timeout);
            let other = other.join().unwrap_or(Err(KafkaError::Canceled));
            mine.and(other)
        })
        .map_err(op("init transactions"))?;
        slow("init transactions", step);
        let fenced_ms = step.elapsed().as_millis() as u64;

        let step = Instant::now();
        let Aggregates {
            aggregates,
            read,
            applied,
            covered,
            complete,
        } = self.restore_aggregates(partition, false)?;
        let events_ms = step.elapsed().as_millis() as u64;
        let step = Instant::now();
        let (seen, consumed) = self.restore_seen(partition)?;
        let consumed = consumed.unwrap_or(-1);
        let outcomes_ms = step.elapsed().as_millis() as u64;
        let max_offset = aggregates
            .values()
            .map(|s| s.offset_bound)
            .max()
            .unwrap_or(-1)
            .max(covered);
        producers.set_max_offset(max_offset);
        info!(
            consumed,
            aggregates = aggregates.len(),
            lazily = !complete,
            events_read = read,
            events_applied = applied,
            seen_commands = seen.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            fenced_ms,
            events_ms,
            outcomes_ms,
            "partition restored"
        );
        ProcessorStats::add(&shared.stats.restores, 1);
        shared
            .stats
            .timings
            .restore
            .record(started.elapsed().as_secs_f64());
        ProcessorStats::add(
            &shared.stats.restore_millis,
            started.elapsed().as_millis() as u64,
        );
        let mut recency = Recency::default();
        for id in aggregates.keys() {
            recency.touch(id);
        }
        Ok(PartitionState {
            dirty: aggregates
                .iter()
                .filter(|(_, s)| s.version > s.confirmed_version)
                .map(|(id, _)| id.clone())
                .collect(),
            producers,
            aggregates,
            seen,
            events_since_flush: 0,
            touched: HashSet::new(),
            replies: Vec::new(),
            recency,
            complete,
            consumed,
        })
    }

    /// The low and high watermarks of `partition` of the events topic.
    fn events_watermarks(&self, partition: i32) -> Result<(i64, i64), ProcessorError> {
        let marks = crate::kafka::watermarks_within(
            &self.watermark_consumer,
            &self.shared.layout.events,
            partition,
            Duration::from_secs(30),
        )
        .map_err(op("fetch events watermarks"))?;
        Ok(marks)
    }

    /// An event record of `partition`, decoded; one that does not decode makes the
    /// partition unreadable.
    fn decode_event(
        &self,
        partition: i32,
        message: &rdkafka::message::BorrowedMessage<'_>,
    ) -> Result<EventEnvelope<A::Event>, ProcessorError> {
        self.shared
            .codec
            .decode(&record_ref(message))
            .map_err(|e| ProcessorError::Unreadable {
                partition,
                offset: message.offset(),
                reason: e.to_string(),
            })
    }

    /// The share of `max_cached_aggregates` a partition restored now may hold: the
    /// limit divided among the partitions owned and this one.
    fn cache_share(&self) -> usize {
        let owned = lock(&self.shared.stats.owned).len() + 1;
        cache::share(self.shared.settings.max_cached_aggregates, owned)
    }

    /// A partition's aggregates from its snapshots and the events after them: every
    /// snapshot row (`full`: and every event), or, when the partition has more rows
    /// than its share of `max_cached_aggregates`, only the rows of the aggregates
    /// with events after the watermark ([`Restorer::restore_lazily`]).
    pub(super) fn restore_aggregates(
        &self,
        partition: i32,
        full: bool,
    ) -> Result<Aggregates<A>, ProcessorError> {
        let shared = Arc::clone(&self.shared);
        let mut aggregates: HashMap<String, Slot<A>> = HashMap::new();
        let mut start = 0;
        if let Some(store) = &shared.store {
            if !full {
                let summary = self.block_on(snapshot::partition_summary(
                    store,
                    A::NAME,
                    partition,
                    A::STATE_VERSION as i32,
                ))?;
                let share = i64::try_from(self.cache_share()).unwrap_or(i64::MAX);
                if summary.stale == 0
                    && summary.rows > share
                    && let Some(restored) = self.restore_lazily(partition, summary.watermark)?
                {
                    return Ok(restored);
                }
            }
            let snapshots = self.block_on(snapshot::load_partition(store, A::NAME, partition))?;
            let mut broken = false;
            for row in snapshots.rows {
                match slot_from_row::<A>(&row) {
                    Ok(slot) => {
                        aggregates.insert(row.aggregate_id, slot);
                    }
                    Err(reason) => {
                        warn!(aggregate_id = %row.aggregate_id, %reason,
                            "discarding an unreadable snapshot; rebuilding the aggregate from its events");
                        ProcessorStats::add(&shared.stats.snapshots_discarded, 1);
                        self.block_on(snapshot::discard(
                            store,
                            A::NAME,
                            partition,
                            &row.aggregate_id,
                        ))?;
                        broken = true;
                    }
                }
            }
            if !broken
                && !full
                && let Some(w) = snapshots.watermark
            {
                start = w + 1;
            }
        }
        let topic = shared.layout.events.clone();
        let (low, high) = self.events_watermarks(partition)?;
        let start = start.max(low);
        let mut read = 0u64;
        let mut replay = Replay::new(aggregates);
        self.read_range(&topic, partition, start, high, |message| {
            read += 1;
            let envelope = self.decode_event(partition, message)?;
            replay.event(
                message.offset(),
                envelope.aggregate_id.into_string(),
                envelope.sequence,
                &envelope.event,
            );
            Ok(())
        })?;
        let Replay {
            aggregates,
            applied,
            gap,
        } = replay;
        ProcessorStats::add(&shared.stats.restore_records_read, read);
        ProcessorStats::add(&shared.stats.restore_events_applied, applied);
        if let Some(gap) = gap {
            if start > low && !full {
                // Snapshot rows were deleted under a watermark: read everything.
                warn!(
                    partition,
                    offset = gap.offset,
                    "snapshots do not cover the partition; replaying it from the start"
                );
                return self.restore_aggregates(partition, true);
            }
            return Err(ProcessorError::Inconsistent {
                partition,
                offset: gap.offset,
                aggregate_id: gap.aggregate_id,
                version: gap.version,
                sequence: gap.sequence,
            });
        }
        Ok(Aggregates {
            aggregates,
            read,
            applied,
            covered: -1,
            complete: true,
        })
    }

    /// Restores only what the partition's next commands cannot do without: the
    /// events after the watermark are read first, then the snapshot rows of their
    /// aggregates are loaded and the events applied on top. Every other aggregate
    /// stays in its row until a command needs it. `None` when the rows do not
    /// cover the events (a row deleted under the watermark, or unreadable): the
    /// caller then restores the partition in full.
    fn restore_lazily(
        &self,
        partition: i32,
        watermark: Option<i64>,
    ) -> Result<Option<Aggregates<A>>, ProcessorError> {
        let shared = Arc::clone(&self.shared);
        let Some(store) = &shared.store else {
            return Ok(None);
        };
        let topic = shared.layout.events.clone();
        let (low, high) = self.events_watermarks(partition)?;
        let start = watermark.map_or(low, |w| (w + 1).max(low));
        let mut tail = Vec::new();
        let mut read = 0u64;
        self.read_range(&topic, partition, start, high, |message| {
            read += 1;
            let envelope = self.decode_event(partition, message)?;
            tail.push((
                message.offset(),
                envelope.aggregate_id.into_string(),
                envelope.sequence,
                envelope.event,
            ));
            Ok(())
        })?;
        let ids: Vec<String> = tail
            .iter()
            .map(|(_, id, _, _)| id.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let rows = self.block_on(snapshot::load_ids(store, A::NAME, partition, &ids))?;
        let mut aggregates = HashMap::with_capacity(rows.len());
        for row in &rows {
            match slot_from_row::<A>(row) {
                Ok(slot) => {
                    aggregates.insert(row.aggregate_id.clone(), slot);
                }
                Err(reason) => {
                    warn!(aggregate_id = %row.aggregate_id, %reason, partition,
                        "an unreadable snapshot; restoring the partition in full");
                    return Ok(None);
                }
            }
        }
        let mut replay = Replay::new(aggregates);
        for (offset, id, sequence, event) in tail {
            replay.event(offset, id, sequence, &event);
        }
        ProcessorStats::add(&shared.stats.restore_records_read, read);
        if let Some(gap) = replay.gap {
            warn!(
                partition,
                offset = gap.offset,
                aggregate_id = %gap.aggregate_id,
                "snapshots do not cover the partition; restoring it in full"
            );
            return Ok(None);
        }
        ProcessorStats::add(&shared.stats.restore_events_applied, replay.applied);
        ProcessorStats::add(&shared.stats.aggregates_loaded, rows.len() as u64);
        Ok(Some(Aggregates {
            aggregates: replay.aggregates,
            read,
            applied: replay.applied,
            covered: watermark.unwrap_or(-1),
            complete: false,
        }))
    }

    /// The dedup window of a partition, from its outcomes: only the records of the
    /// last `dedup_window` are read (found by timestamp), and each is kept as its
    /// offset, so restore time and memory do not grow with older history. With it,
    /// the partition's position: the highest [`wire::CONSUMED`] of its committed
    /// outcome records (`None` when they carry none).
    pub(super) fn restore_seen(
        &self,
        partition: i32,
    ) -> Result<(SeenWindow, Option<i64>), ProcessorError> {
        let topic = self.shared.layout.outcomes.clone();
        let window = self.shared.settings.dedup_window;
        let since = SystemTime::now()
            .checked_sub(window)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let (low, high) = crate::kafka::watermarks_within(
            &self.watermark_consumer,
            &topic,
            partition,
            Duration::from_secs(30),
        )
        .map_err(op("fetch outcomes watermarks"))?;
        // Start a little before the window, in case the clocks of earlier owners
        // were behind; the timestamps filter exactly below.
        let lookup = since
            .checked_sub(OUTCOME_CLOCK_MARGIN.min(window / 10))
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let start = match self.offset_at(&topic, partition, lookup) {
            Ok(Some(offset)) => offset.clamp(low, high),
            // "No record at or after the time": true on Kafka when the whole
            // partition is older than the window, but some brokers (librdkafka's
            // mock cluster) answer so for every lookup by time. Believe it only if the
            // last record is older; otherwise read everything, as a restore must
            // never miss an outcome of the window.
            Ok(None)
                if high > low
                    && !self.last_record_before(&topic, partition, low, high, lookup)? =>
            {
                warn!(
                    partition,
                    "the broker cannot look up outcomes by time; reading the whole outcomes partition"
                );
                low
            }
            Ok(None) => high,
            Err(error) => {
                warn!(%error, partition, "cannot look up outcomes by time; reading the whole outcomes partition");
                low
            }
        };
        let mut seen = SeenWindow::default();
        ProcessorStats::add(
            &self.shared.stats.restore_outcomes_read,
            u64::try_from(high - start).unwrap_or(0),
        );
        let mut consumed = None;
        self.read_range(&topic, partition, start, high, |message| {
            consumed = consumed.max(wire::consumed_of(&record_ref(message)));
            let time = message
                .timestamp()
                .to_millis()
                .and_then(|ms| u64::try_from(ms).ok())
                .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
                .unwrap_or_else(SystemTime::now);
            if time < since {
                return Ok(());
            }
            let Some(payload) = message.payload() else { return Ok(()) };
            match serde_json::from_slice::<wire::ReplyId<'_>>(payload) {
                Ok(reply) => seen.insert(&reply.command_id, time, Seen::Outcome(message.offset())),
                Err(error) => warn!(%error, offset = message.offset(), "skipping an unreadable outcome record"),
            }
            Ok(())
        })?;
        if start >= high && high > low {
            // Every outcome is older than the window: the position is in the last.
            consumed = self.last_position(&topic, partition, low, high)?;
        }
        Ok((seen, consumed))
    }

    /// The position carried by the last committed records before `high`: read
    /// backwards in growing steps until a step holds a record (the offsets just
    /// below `high` can all be transaction markers or aborted records).
    fn last_position(
        &self,
        topic: &str,
        partition: i32,
        low: i64,
        high: i64,
    ) -> Result<Option<i64>, ProcessorError> {
        let mut step = 64;
        let mut end = high;
        loop {
            let start = (end - step).max(low);
            let (mut any, mut consumed) = (false, None);
            self.read_range(topic, partition, start, end, |message| {
                any = true;
                consumed = consumed.max(wire::consumed_of(&record_ref(message)));
                Ok(())
            })?;
            if any || start == low {
                return Ok(consumed);
            }
            end = start;
            step = step.saturating_mul(16);
        }
    }

    /// Whether the newest record before `high` is older than `limit_ms` (epoch ms).
    pub(super) fn last_record_before(
        &self,
        topic: &str,
        partition: i32,
        low: i64,
        high: i64,
        limit_ms: i64,
    ) -> Result<bool, ProcessorError> {
        // The last offsets are transaction markers, which are no records: look at the
        // last few offsets and take the newest record among them.
        let mut newest = None;
        self.read_range(topic, partition, (high - 16).max(low), high, |message| {
            newest = newest.max(message.timestamp().to_millis());
            Ok(())
        })?;
        // No record among them: of unknown age; read them all.
        Ok(newest.is_some_and(|ms| ms < limit_ms))
    }

    /// The first offset of `topic`/`partition` with a timestamp at or after `ms`
    /// (epoch ms); `None` when every record is older.
    pub(super) fn offset_at(
        &self,
        topic: &str,
        partition: i32,
        ms: i64,
    ) -> Result<Option<i64>, ProcessorError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(ms))
            .map_err(op("look up outcomes by time"))?;
        let found = self
            .watermark_consumer
            .offsets_for_times(tpl, Duration::from_secs(30))
            .map_err(op("look up outcomes by time"))?;
        Ok(found
            .find_partition(topic, partition)
            .and_then(|e| e.offset().to_raw())
            .filter(|o| *o >= 0))
    }

    /// Reads `[start, end)` of a partition with read_committed, calling `f` per record.
    pub(super) fn read_range(
        &self,
        topic: &str,
        partition: i32,
        start: i64,
        end: i64,
        mut f: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> Result<(), ProcessorError>,
    ) -> Result<(), ProcessorError> {
        let consumer = &self.restore_consumer;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(start))
            .map_err(op("assign restore partition"))?;
        consumer
            .assign(&tpl)
            .map_err(op("assign restore partition"))?;
        let started = Instant::now();
        let mut position = start;
        // Read up to the high watermark taken before. After `init_transactions` no
        // transaction of this partition's only writer is open, so every record below
        // the mark is decided. (Waiting for the end-of-partition signal as well cost
        // 0.4-1 s per read on Kafka; it only served brokers that under-report the
        // mark, such as Tansu, where a restore may therefore stop early.)
        let result = loop {
            if position >= end {
                break Ok(());
            }
            if let Err(cancelled) = self.check_cancelled(partition) {
                break Err(cancelled);
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    position = message.offset() + 1;
                    if let Err(e) = f(&message) {
                        break Err(e);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    if let Ok(Some(p)) = consumer.position().map(|tpl| {
                        tpl.find_partition(topic, partition)
                            .and_then(|e| e.offset().to_raw())
                    }) {
                        position = position.max(p);
                    }
                }
                Some(Err(error)) => warn!(%error, "restore consumer error"),
                None => {
                    // Transaction markers take offsets but are not delivered.
                    if let Ok(Some(p)) = consumer.position().map(|tpl| {
                        tpl.find_partition(topic, partition)
                            .and_then(|e| e.offset().to_raw())
                    }) {
                        position = position.max(p);
                    }
                }
            }
            if started.elapsed() > self.shared.settings.restore_timeout {
                break Err(ProcessorError::RestoreTimeout {
                    partition,
                    waited: started.elapsed(),
                    position,
                    end,
                });
            }
        };
        let _ = consumer.unassign();
        result
    }
}

/// A partition's aggregates after a restore.
pub(super) struct Aggregates<A> {
    pub(super) aggregates: HashMap<String, Slot<A>>,
    /// Event records read.
    pub(super) read: u64,
    /// Events applied (not covered by a snapshot).
    pub(super) applied: u64,
    /// Every event at or before this offset is covered by a snapshot row (-1: none
    /// is known to be).
    pub(super) covered: i64,
    /// Whether every aggregate of the partition is in `aggregates`.
    pub(super) complete: bool,
}

/// An aggregate from its snapshot row; the reason when the row cannot be read
/// (another state version, or a state that does not deserialize).
pub(super) fn slot_from_row<A: Aggregate>(row: &SnapshotRow) -> Result<Slot<A>, String> {
    if row.state_version != A::STATE_VERSION as i32 {
        return Err(format!(
            "state version {} differs from the current {}",
            row.state_version,
            A::STATE_VERSION
        ));
    }
    let state: A = serde::Deserialize::deserialize(&row.state).map_err(|e| e.to_string())?;
    let version = u64::try_from(row.version).unwrap_or(0);
    Ok(Slot {
        state,
        version,
        snapshot_version: version,
        confirmed_version: version,
        offset_bound: row.events_offset,
    })
}

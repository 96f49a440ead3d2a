//! The event index: a built-in projection that records where each event is in the
//! log (aggregate type, aggregate id, sequence → partition, offset).

use std::sync::Arc;

use sqlx::PgConnection;

use crate::projection::source::{BoxFuture, Decoded, Source};
use crate::projection::{HandlerError, Projection, ProjectionWorker};
use crate::topics::events_topic;
use crate::{Aggregate, DecodeError, RecordRef};

/// The built-in projection that indexes every event of the aggregate types it is
/// given: `(aggregate type, aggregate id, sequence) → (partition, offset)` in the
/// table `tributary_event_index`. [`History`](super::History) reads an aggregate's
/// events through it without scanning its partition.
///
/// Run it like any projection, once per deployment (more workers share the
/// partitions): `ProjectionWorker::new(EventIndex, store, kafka).index::<Order>(prefix)
/// .index::<Inventory>(prefix).spawn()`. It reads only the `ce_subject` and
/// `ce_sequence` headers, so it indexes event types and versions this release does
/// not know. Exactly once, like every projection: the rows and the checkpoint
/// commit together. A record without those headers is parked in its dead letters.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventIndex;

impl Projection for EventIndex {
    const NAME: &'static str = "tributary_event_index";

    async fn migrate(&self, tx: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS tributary_event_index (
                aggregate_type   text    NOT NULL,
                aggregate_id     text    NOT NULL,
                sequence         bigint  NOT NULL CHECK (sequence > 0),
                events_partition integer NOT NULL,
                record_offset    bigint  NOT NULL,
                PRIMARY KEY (aggregate_type, aggregate_id, sequence))",
        )
        .execute(tx)
        .await?;
        Ok(())
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query("TRUNCATE tributary_event_index")
            .execute(tx)
            .await?;
        Ok(())
    }
}

impl ProjectionWorker<EventIndex> {
    /// Indexes the events topic of aggregate `A` under `prefix`
    /// (`{prefix}.{aggregate}.events`).
    #[must_use]
    pub fn index<A: Aggregate>(self, prefix: &str) -> Self {
        let source = IndexSource {
            aggregate: A::NAME,
            topic: events_topic(prefix, A::NAME),
        };
        self.subscribe_source(prefix, Arc::new(source))
    }
}

/// Where one event is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    aggregate_id: String,
    sequence: i64,
    partition: i32,
    offset: i64,
}

/// One aggregate type's events topic, read for its index rows.
struct IndexSource {
    aggregate: &'static str,
    topic: String,
}

impl IndexSource {
    async fn insert(&self, entries: &[&Entry], tx: &mut PgConnection) -> Result<(), HandlerError> {
        let ids: Vec<&str> = entries.iter().map(|e| e.aggregate_id.as_str()).collect();
        let sequences: Vec<i64> = entries.iter().map(|e| e.sequence).collect();
        let partitions: Vec<i32> = entries.iter().map(|e| e.partition).collect();
        let offsets: Vec<i64> = entries.iter().map(|e| e.offset).collect();
        // A second record claiming an aggregate's sequence cannot be in a committed
        // log written by one owner per aggregate; if it were, the first one stays.
        sqlx::query(
            "INSERT INTO tributary_event_index
                 (aggregate_type, aggregate_id, sequence, events_partition, record_offset)
             SELECT $1, * FROM UNNEST($2::text[], $3::bigint[], $4::integer[], $5::bigint[])
             ON CONFLICT (aggregate_type, aggregate_id, sequence) DO NOTHING",
        )
        .bind(self.aggregate)
        .bind(ids)
        .bind(sequences)
        .bind(partitions)
        .bind(offsets)
        .execute(tx)
        .await?;
        Ok(())
    }
}

fn entry(decoded: &Decoded) -> Result<&Entry, HandlerError> {
    decoded
        .downcast_ref::<Entry>()
        .ok_or_else(|| "internal error: an event index entry has the wrong type".into())
}

impl Source<EventIndex> for IndexSource {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn batched(&self) -> bool {
        true
    }

    fn decode(&self, record: &RecordRef<'_>, at: (i32, i64)) -> Result<Decoded, DecodeError> {
        let (subject, sequence) = crate::codec::subject_and_sequence(record)?;
        let sequence = i64::try_from(sequence).map_err(|_| DecodeError::InvalidHeader {
            name: crate::codec::headers::SEQUENCE,
            value: sequence.to_string(),
            reason: "above the largest sequence Postgres can index (2^63 - 1)",
        })?;
        Ok(Box::new(Entry {
            aggregate_id: subject.to_owned(),
            sequence,
            partition: at.0,
            offset: at.1,
        }))
    }

    fn traceparent<'a>(&self, _event: &'a Decoded) -> Option<&'a str> {
        None
    }

    fn apply_one<'a>(
        &'a self,
        _projection: &'a EventIndex,
        event: &'a Decoded,
        tx: &'a mut PgConnection,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move { self.insert(&[entry(event)?], tx).await })
    }

    fn apply_many<'a>(
        &'a self,
        _projection: &'a EventIndex,
        events: Vec<&'a Decoded>,
        tx: &'a mut PgConnection,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let entries = events
                .into_iter()
                .map(entry)
                .collect::<Result<Vec<_>, _>>()?;
            self.insert(&entries, tx).await
        })
    }
}

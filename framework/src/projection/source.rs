//! Type erasure of a projection's subscriptions: one per events topic, each with the
//! codec of its event enum.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;

use sqlx::PgConnection;

use crate::DomainEvent;
use crate::EventEnvelope;
use crate::codec::{DecodeError, EventCodec, RecordRef};
use crate::projection::{HandlerError, Handles};

/// A decoded event of some enum, as the worker carries it.
pub(crate) type Decoded = Box<dyn Any + Send + Sync>;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One subscribed topic of projection `P`.
pub(crate) trait Source<P>: Send + Sync {
    fn topic(&self) -> &str;
    fn batched(&self) -> bool;
    /// Decodes the record found at `at` (partition, offset) of the topic.
    fn decode(&self, record: &RecordRef<'_>, at: (i32, i64)) -> Result<Decoded, DecodeError>;
    /// The W3C trace context the event was written in, if it carries one.
    fn traceparent<'a>(&self, event: &'a Decoded) -> Option<&'a str>;
    fn apply_one<'a>(
        &'a self,
        projection: &'a P,
        event: &'a Decoded,
        tx: &'a mut PgConnection,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
    fn apply_many<'a>(
        &'a self,
        projection: &'a P,
        events: Vec<&'a Decoded>,
        tx: &'a mut PgConnection,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
}

pub(crate) struct CodecSource<E> {
    pub(crate) codec: EventCodec<E>,
    pub(crate) topic: String,
}

fn wrong_type() -> HandlerError {
    "internal error: a decoded event has the wrong type for its subscription".into()
}

impl<P, E> Source<P> for CodecSource<E>
where
    P: Handles<E>,
    E: DomainEvent,
{
    fn topic(&self) -> &str {
        &self.topic
    }

    fn batched(&self) -> bool {
        <P as Handles<E>>::BATCHED
    }

    fn decode(&self, record: &RecordRef<'_>, _at: (i32, i64)) -> Result<Decoded, DecodeError> {
        self.codec.decode(record).map(|e| Box::new(e) as Decoded)
    }

    fn traceparent<'a>(&self, event: &'a Decoded) -> Option<&'a str> {
        event
            .downcast_ref::<EventEnvelope<E>>()?
            .metadata
            .traceparent
            .as_deref()
    }

    fn apply_one<'a>(
        &'a self,
        projection: &'a P,
        event: &'a Decoded,
        tx: &'a mut PgConnection,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let event = event
                .downcast_ref::<EventEnvelope<E>>()
                .ok_or_else(wrong_type)?;
            projection.handle(event, tx).await
        })
    }

    fn apply_many<'a>(
        &'a self,
        projection: &'a P,
        events: Vec<&'a Decoded>,
        tx: &'a mut PgConnection,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let typed = events
                .iter()
                .map(|e| e.downcast_ref::<EventEnvelope<E>>().ok_or_else(wrong_type))
                .collect::<Result<Vec<_>, _>>()?;
            projection.handle_batch(&typed, tx).await
        })
    }
}

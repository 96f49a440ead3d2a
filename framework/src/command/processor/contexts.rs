//! The rdkafka client contexts of a processor: delivery reports of the
//! transactional and reply producers, the restore consumer's errors, and the
//! rebalance callbacks of the commands consumer.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use tracing::warn;

use crate::Aggregate;

use super::commit::quiesce;
use super::lock;
use super::partitions::Core;
use super::run::commit_positions;

/// Records the highest offset the producer wrote to its events partition.
pub(super) struct DeliveryContext {
    pub(super) events_topic: String,
    pub(super) max_offset: AtomicI64,
    pub(super) failed: AtomicBool,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) if message.topic() == self.events_topic => {
                self.max_offset
                    .fetch_max(message.offset(), Ordering::SeqCst);
            }
            Ok(_) => {}
            Err((error, _)) => {
                warn!(%error, "record delivery failed; the transaction will abort");
                self.failed.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// Logs replies that could not be delivered: their callers time out and resend with
/// the same command id, which the processor answers from its seen ids.
pub(super) struct ReplyContext;

impl ClientContext for ReplyContext {}

impl ProducerContext for ReplyContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            warn!(%error, "a reply could not be delivered; its caller will time out and resend");
        }
    }
}

/// The restore consumer asks for end-of-partition events; they are not errors.
pub(super) struct RestoreContext;

impl ClientContext for RestoreContext {
    fn error(&self, error: KafkaError, reason: &str) {
        crate::kafka::log_client_error("processor restore consumer", error, reason);
    }
}

impl ConsumerContext for RestoreContext {}

pub(super) struct RebalanceContext<A: Aggregate> {
    pub(super) core: Arc<Mutex<Core<A>>>,
}

impl<A: Aggregate> ClientContext for RebalanceContext<A> {}

impl<A: Aggregate> ConsumerContext for RebalanceContext<A> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            // Their running transactions finish first, so what they decided is
            // committed, answered and snapshotted before the partitions move.
            quiesce(&self.core, &partitions);
            commit_positions(consumer, &self.core, Some(&partitions));
            lock(&self.core).revoke(&partitions, true);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // Restores run on their own threads; the partitions stay paused until
                // theirs is done. The callback returns at once, so however long a
                // restore takes, this instance keeps polling and stays in the group.
                if let Err(error) = consumer.pause(tpl) {
                    warn!(%error, "cannot pause the assigned partitions");
                }
                let mut core = lock(&self.core);
                for element in tpl.elements() {
                    core.begin_restore(element.partition());
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => warn!(%error, "rebalance error"),
        }
    }
}

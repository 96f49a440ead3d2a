//! The consumer's rebalance callback: assigns partitions at their Postgres
//! checkpoints and records the change for the worker loop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use crate::projection::checkpoint;

pub(super) struct AssignedPartition {
    pub(super) topic: String,
    pub(super) partition: i32,
    /// The checkpoint, or why it could not be read.
    pub(super) checkpoint: Result<Option<i64>, String>,
}

pub(super) enum RebalanceEvent {
    Assigned(Vec<AssignedPartition>),
    Revoked(Vec<(String, i32)>),
    RevokedAll,
}

/// Assigns partitions at their Postgres checkpoints inside the rebalance callback,
/// so the consumer never starts from Kafka's committed offset, and records the
/// change for the worker loop.
pub(super) struct RebalanceContext {
    pub(super) projection: &'static str,
    pub(super) connect: Arc<PgConnectOptions>,
    pub(super) pending: Mutex<Vec<RebalanceEvent>>,
    pub(super) flag: AtomicBool,
    /// The last stable offset of each fetched partition, from the client's
    /// statistics (`statistics.interval.ms`): the end of what a read_committed
    /// consumer can read, for the lag gauge.
    pub(super) ends: Mutex<HashMap<(String, i32), i64>>,
}

impl RebalanceContext {
    fn push(&self, event: RebalanceEvent) {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(event);
        self.flag.store(true, Ordering::Release);
    }

    pub(super) fn has_pending(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    pub(super) fn take(&self) -> Vec<RebalanceEvent> {
        if !self.flag.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(
            &mut *self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Reads the projection's checkpoints from a callback that cannot await: on a
    /// helper thread with its own runtime and connection (never the caller's pool,
    /// whose runtime may be the very thread this blocks).
    fn load_checkpoints(&self) -> Result<HashMap<(String, i32), i64>, String> {
        let options = Arc::clone(&self.connect);
        let projection = self.projection;
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async move {
                let mut last_error = String::new();
                for attempt in 0..3 {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    let load = async {
                        let mut conn = PgConnection::connect_with(&options).await?;
                        let rows = checkpoint::load_all(&mut conn, projection).await?;
                        let _ = conn.close().await;
                        Ok::<_, sqlx::Error>(rows)
                    };
                    match tokio::time::timeout(Duration::from_secs(10), load).await {
                        Ok(Ok(rows)) => {
                            return Ok(rows
                                .into_iter()
                                .map(|(topic, partition, next)| ((topic, partition), next))
                                .collect());
                        }
                        Ok(Err(error)) => last_error = error.to_string(),
                        Err(_) => last_error = "timed out after 10 s".to_owned(),
                    }
                }
                Err(last_error)
            })
        });
        thread
            .join()
            .unwrap_or_else(|_| Err("checkpoint loader thread panicked".to_owned()))
    }
}

impl RebalanceContext {
    /// The last stable offset of `partition` at the last statistics, if known.
    pub(super) fn end_of(&self, topic: &str, partition: i32) -> Option<i64> {
        self.ends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(topic.to_owned(), partition))
            .copied()
    }
}

impl ClientContext for RebalanceContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut ends = self
            .ends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, topic) in statistics.topics {
            // Partition -1 is librdkafka's internal "unassigned" partition; a
            // negative offset is "not known yet".
            for (id, partition) in topic.partitions {
                if id >= 0 && partition.ls_offset >= 0 {
                    ends.insert((name.clone(), id), partition.ls_offset);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        crate::kafka::log_client_error("projection consumer", error, reason);
    }
}

impl ConsumerContext for RebalanceContext {
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            base_consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let listed: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let loaded = self.load_checkpoints();
                if let Err(error) = &loaded {
                    tracing::error!(projection = self.projection, error = %error, "cannot read checkpoints on assignment; partitions stay paused until Postgres answers");
                }
                let mut unknown = TopicPartitionList::new();
                let mut assigned = Vec::with_capacity(listed.len());
                for (topic, partition) in listed {
                    let checkpoint = match &loaded {
                        Ok(map) => Ok(map.get(&(topic.clone(), partition)).copied()),
                        Err(error) => Err(error.clone()),
                    };
                    // An explicit offset: librdkafka looks nothing up, so a later
                    // seek cannot race with an offset lookup.
                    let offset = match &checkpoint {
                        Ok(Some(next)) => Offset::Offset(*next),
                        Ok(None) => Offset::Beginning,
                        Err(_) => {
                            unknown.add_partition(&topic, partition);
                            Offset::Offset(0)
                        }
                    };
                    if let Err(error) = tpl.set_partition_offset(&topic, partition, offset) {
                        tracing::error!(projection = self.projection, %topic, partition, error = %error, "cannot set the start offset");
                    }
                    assigned.push(AssignedPartition {
                        topic,
                        partition,
                        checkpoint,
                    });
                }
                let result = if cooperative {
                    base_consumer.incremental_assign(tpl)
                } else {
                    base_consumer.assign(tpl)
                };
                if let Err(error) = result {
                    tracing::error!(projection = self.projection, error = %error, "assign failed");
                }
                if unknown.count() > 0 {
                    let _ = base_consumer.pause(&unknown);
                }
                self.push(RebalanceEvent::Assigned(assigned));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.push(RebalanceEvent::Revoked(listed));
                let result = if cooperative {
                    base_consumer.incremental_unassign(tpl)
                } else {
                    base_consumer.unassign()
                };
                if let Err(error) = result {
                    tracing::error!(projection = self.projection, error = %error, "unassign failed");
                }
            }
            other => {
                tracing::error!(projection = self.projection, error = ?other, "rebalance error; dropping every partition");
                self.push(RebalanceEvent::RevokedAll);
                let _ = base_consumer.unassign();
            }
        }
    }
}

//! Partition metadata and watermarks, read with a short-lived client.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// How far a projection is behind on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The partition's high-water mark (offset of the next record to be written).
    pub high_watermark: i64,
    /// The projection's checkpoint (next offset to apply); `None` before its first batch.
    pub checkpoint: Option<i64>,
    /// `high_watermark - checkpoint` (from the log start offset without a
    /// checkpoint). Counts offsets, so transaction markers not yet passed count too.
    pub lag: i64,
}

/// `(topic, partition, low, high)` of every partition of `topics`.
pub(crate) type Watermarks = Vec<(String, i32, i64, i64)>;

pub(crate) enum WatermarkError {
    MissingTopic(String),
    Kafka(crate::kafka::KafkaOpError),
    /// The blocking thread ended abnormally (a panic, or the runtime shutting down).
    Thread(String),
}

/// Reads partitions and watermarks on a blocking thread.
pub(crate) async fn watermarks(
    config: ClientConfig,
    topics: Vec<String>,
) -> Result<Watermarks, WatermarkError> {
    let joined = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config
            .create()
            .map_err(|e| WatermarkError::Kafka(crate::kafka::op("client creation")(e)))?;
        let timeout = Duration::from_secs(10);
        let mut out = Vec::new();
        for topic in topics {
            let metadata = consumer
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| WatermarkError::Kafka(crate::kafka::op("metadata request")(e)))?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            if partitions.is_empty() {
                return Err(WatermarkError::MissingTopic(topic));
            }
            for partition in partitions {
                let (low, high) =
                    crate::kafka::watermarks_within(&consumer, &topic, partition, timeout)
                        .map_err(|e| {
                            WatermarkError::Kafka(crate::kafka::op("watermark request")(e))
                        })?;
                out.push((topic.clone(), partition, low, high));
            }
        }
        out.sort();
        Ok(out)
    })
    .await;
    match joined {
        Ok(result) => result,
        Err(err) => Err(WatermarkError::Thread(err.to_string())),
    }
}

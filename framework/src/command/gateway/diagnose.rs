//! Why a send failed, asked of the cluster: a partition without a leader or
//! without enough in-sync replicas.

use super::*;

/// Turns a failed send into [`GatewayError::NotEnoughReplicas`] or
/// [`GatewayError::NoLeader`] when the metadata shows that a partition the command
/// needs cannot take writes; otherwise (or if the cluster does not answer within
/// `budget`) returns `failure` unchanged.
pub(super) async fn diagnose(
    kafka: &KafkaConfig,
    topics: &[String],
    key: &str,
    failure: GatewayError,
    budget: Duration,
) -> GatewayError {
    let command_id = match &failure {
        GatewayError::Timeout { command_id, .. } | GatewayError::Unavailable { command_id, .. } => {
            command_id.clone()
        }
        _ => return failure,
    };
    match tokio::time::timeout(budget, shortage(kafka, topics, key, budget)).await {
        Ok(Some(Shortage::NoLeader { topic, partition })) => GatewayError::NoLeader {
            command_id,
            topic,
            partition,
        },
        Ok(Some(Shortage::Replicas {
            topic,
            partition,
            in_sync,
            replicas,
            required,
        })) => GatewayError::NotEnoughReplicas {
            command_id,
            topic,
            partition,
            in_sync,
            replicas,
            required,
        },
        Ok(None) | Err(_) => failure,
    }
}

/// Why a partition cannot take writes.
pub(super) enum Shortage {
    NoLeader {
        topic: String,
        partition: i32,
    },
    Replicas {
        topic: String,
        partition: i32,
        in_sync: usize,
        replicas: usize,
        required: usize,
    },
}

/// The first of `topics` whose partition for `key` cannot take writes, per the
/// cluster's metadata.
pub(super) async fn shortage(
    kafka: &KafkaConfig,
    topics: &[String],
    key: &str,
    budget: Duration,
) -> Option<Shortage> {
    let config = kafka.client_config();
    let (topics, key) = (topics.to_vec(), key.as_bytes().to_vec());
    let found = tokio::task::spawn_blocking(move || {
        let client: rdkafka::consumer::BaseConsumer = config.create().ok()?;
        topics.into_iter().find_map(|topic| {
            let metadata = client.fetch_metadata(Some(&topic), budget).ok()?;
            let partitions = metadata.topics().first()?.partitions();
            let partition = wire::partition_for(&key, partitions.len());
            let p = partitions.iter().find(|p| p.id() == partition)?;
            let (replicas, in_sync) = (p.replicas().len(), p.isr().len());
            Some((topic, partition, p.leader(), replicas, in_sync))
                .filter(|(_, _, leader, replicas, in_sync)| *leader < 0 || in_sync < replicas)
        })
    })
    .await
    .ok()
    .flatten();
    let (topic, partition, leader, replicas, in_sync) = found?;
    if leader < 0 {
        return Some(Shortage::NoLeader { topic, partition });
    }
    let required = topic_config(kafka, &topic, "min.insync.replicas", budget)
        .await
        .unwrap_or_else(|| default_min_isr(replicas));
    (in_sync < required).then_some(Shortage::Replicas {
        topic,
        partition,
        in_sync,
        replicas,
        required,
    })
}

/// What the framework sets when it creates topics (see `ensure_topics`).
pub(super) fn default_min_isr(replicas: usize) -> usize {
    if replicas >= 3 { 2 } else { 1 }
}

/// A numeric configuration of the topic, if the cluster says within `budget`.
pub(super) async fn topic_config(
    kafka: &KafkaConfig,
    topic: &str,
    key: &str,
    budget: Duration,
) -> Option<usize> {
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        kafka.client_config().create().ok()?;
    let options = rdkafka::admin::AdminOptions::new().request_timeout(Some(budget));
    let described = admin
        .describe_configs(&[rdkafka::admin::ResourceSpecifier::Topic(topic)], &options)
        .await
        .ok()?;
    let resource = described.into_iter().next()?.ok()?;
    resource
        .get(key)
        .and_then(|e| e.value.as_deref())
        .and_then(|v| v.trim().parse().ok())
}

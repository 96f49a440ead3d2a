//! Creating and validating an aggregate type's topics (docs/commands.md, "Topics").

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::kafka::op;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use super::wire;
use crate::config::KafkaConfig;

/// How the topics of an aggregate type are created when missing.
#[derive(Debug, Clone)]
pub struct TopicSettings {
    /// Partitions of the events, commands and outcomes topics. Fixed at creation:
    /// an aggregate's partition is derived from it.
    pub partitions: i32,
    /// Replication factor; `None` means 3, or the number of brokers when fewer
    /// (with a warning).
    pub replication_factor: Option<i32>,
    /// Retention of the commands topic.
    pub command_retention: Duration,
    /// Retention of the outcomes topic; must exceed the processor's dedup window.
    pub outcome_retention: Duration,
    /// Partitions of the shared replies topic.
    pub reply_partitions: i32,
    /// Retention of the replies topic.
    pub reply_retention: Duration,
}

impl Default for TopicSettings {
    fn default() -> Self {
        Self {
            partitions: 12,
            replication_factor: None,
            command_retention: Duration::from_secs(7 * 24 * 3600),
            outcome_retention: Duration::from_secs(2 * 24 * 3600),
            reply_partitions: 12,
            reply_retention: Duration::from_secs(3600),
        }
    }
}

/// Why the topics cannot be used. Each message says how to fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The events topic is compacted: compaction deletes events.
    #[error(
        "events topic `{topic}` has cleanup.policy={policy}; an events topic is the system of record and must \
         never be compacted. Fix: kafka-configs.sh --alter --entity-type topics --entity-name {topic} \
         --add-config cleanup.policy=delete"
    )]
    Compacted {
        /// The topic.
        topic: String,
        /// The policy found.
        policy: String,
    },
    /// The events topic deletes old events.
    #[error(
        "events topic `{topic}` has {setting}={value}; events must be kept forever. Fix: kafka-configs.sh \
         --alter --entity-type topics --entity-name {topic} --add-config {setting}=-1"
    )]
    FiniteRetention {
        /// The topic.
        topic: String,
        /// `retention.ms` or `retention.bytes`.
        setting: &'static str,
        /// The value found.
        value: String,
    },
    /// A topic's partition count differs from the events topic's.
    #[error(
        "topic `{topic}` has {found} partitions but events topic `{events_topic}` has {expected}; they must be \
         co-partitioned so one processor owns an aggregate's commands and events. Fix: recreate `{topic}` with \
         {expected} partitions (it holds no events), or point the application at the existing layout"
    )]
    PartitionMismatch {
        /// The topic with the wrong count.
        topic: String,
        /// Its partition count.
        found: usize,
        /// The events topic.
        events_topic: String,
        /// The events topic's partition count.
        expected: usize,
    },
    /// A topic could not be created.
    #[error(
        "cannot create topic `{topic}`: {code:?}; check the principal's CreateTopics ACL or create it by hand"
    )]
    Create {
        /// The topic.
        topic: String,
        /// The broker's error code.
        code: RDKafkaErrorCode,
    },
    /// The cluster could not be asked.
    #[error("{0}; is the cluster reachable at the configured bootstrap.servers?")]
    Kafka(#[from] crate::kafka::KafkaOpError),
    /// A topic did not appear in the metadata after creation.
    #[error(
        "topic `{0}` did not appear in the cluster metadata with a leader for every partition within 30 s after creation; check the brokers' logs"
    )]
    NotVisible(String),
    /// The thread that asked the cluster ended abnormally (it panicked or its
    /// runtime shut down): a bug or a shutdown, not a cluster problem.
    #[error(
        "Kafka admin operation `{operation}` did not finish: its thread ended abnormally: {detail}"
    )]
    Thread {
        /// What was being done.
        operation: &'static str,
        /// The panic or cancellation.
        detail: String,
    },
}

/// What `ensure_topics` found or made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicLayout {
    /// Events topic name.
    pub events: String,
    /// Commands topic name.
    pub commands: String,
    /// Outcomes topic name.
    pub outcomes: String,
    /// Replies topic name.
    pub replies: String,
    /// Partitions of events/commands/outcomes.
    pub partitions: usize,
    /// Partitions of the replies topic.
    pub reply_partitions: usize,
    /// Brokers in the cluster.
    pub brokers: usize,
    /// The largest record the processor can write to the events and outcomes topics:
    /// the smallest of their `max.message.bytes` and the client's
    /// `message.max.bytes` (librdkafka's default 1,000,000 when not set).
    pub max_record_bytes: usize,
}

/// What the cluster metadata says: partitions per topic, topics with a partition
/// that has no leader (yet), and the number of brokers.
struct ClusterView {
    counts: HashMap<String, usize>,
    leaderless: HashSet<String>,
    brokers: usize,
}

async fn cluster_view(config: &KafkaConfig) -> Result<ClusterView, TopicError> {
    let client_config = config.client_config();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client_config.create().map_err(op("create client"))?;
        let metadata = consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .map_err(op("fetch metadata"))?;
        let topics = metadata.topics().iter().filter(|t| t.error().is_none());
        let counts = topics
            .clone()
            .map(|t| (t.name().to_owned(), t.partitions().len()))
            .collect();
        let leaderless = topics
            .filter(|t| {
                t.partitions()
                    .iter()
                    .any(|p| p.leader() < 0 || p.error().is_some())
            })
            .map(|t| t.name().to_owned())
            .collect();
        Ok(ClusterView {
            counts,
            leaderless,
            brokers: metadata.brokers().len(),
        })
    })
    .await
    .unwrap_or_else(|join_error| {
        Err(TopicError::Thread {
            operation: "fetch metadata",
            detail: join_error.to_string(),
        })
    })
}

/// Waits until every topic in `names` is in the metadata and each of its partitions
/// has a leader: right after CreateTopics, a broker answers "not leader" for a
/// moment, and a client that starts then fails for no good reason.
async fn await_topics(config: &KafkaConfig, names: &[&str]) -> Result<ClusterView, TopicError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let view = cluster_view(config).await?;
        let missing = names
            .iter()
            .find(|n| !view.counts.contains_key(**n) || view.leaderless.contains(**n));
        match missing {
            None => return Ok(view),
            Some(name) if tokio::time::Instant::now() >= deadline => {
                return Err(TopicError::NotVisible((*name).to_owned()));
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Creates the events, commands, outcomes and replies topics of `aggregate` under
/// `prefix` if missing, then validates them: an events topic that is compacted or
/// has finite retention, or commands/outcomes topics whose partition count differs
/// from the events topic's, is an error saying how to fix it.
pub async fn ensure_topics(
    config: &KafkaConfig,
    prefix: &str,
    aggregate: &str,
    settings: &TopicSettings,
) -> Result<TopicLayout, TopicError> {
    let events = wire::events_topic(prefix, aggregate);
    let commands = wire::commands_topic(prefix, aggregate);
    let outcomes = wire::outcomes_topic(prefix, aggregate);
    let replies = wire::replies_topic(prefix);

    let view = cluster_view(config).await?;
    let (mut counts, brokers) = (view.counts, view.brokers);
    let replication = settings.replication_factor.unwrap_or_else(|| {
        let rf = i32::try_from(brokers.clamp(1, 3)).unwrap_or(1);
        if rf < 3 {
            tracing::warn!(brokers, replication_factor = rf,
                "the cluster has fewer than 3 brokers: topics are created with replication factor {rf}; \
                 a broker loss can lose events. Use at least 3 brokers in production");
        }
        rf
    });
    let ms = |d: Duration| d.as_millis().to_string();
    let min_isr = if replication >= 3 { "2" } else { "1" };
    let command_retention = ms(settings.command_retention);
    let outcome_retention = ms(settings.outcome_retention);
    let reply_retention = ms(settings.reply_retention);
    let wanted: Vec<NewTopic<'_>> = [
        (
            &events,
            settings.partitions,
            vec![("retention.ms", "-1"), ("retention.bytes", "-1")],
        ),
        (
            &commands,
            settings.partitions,
            vec![("retention.ms", command_retention.as_str())],
        ),
        (
            &outcomes,
            settings.partitions,
            vec![("retention.ms", outcome_retention.as_str())],
        ),
        (
            &replies,
            settings.reply_partitions,
            vec![("retention.ms", reply_retention.as_str())],
        ),
    ]
    .into_iter()
    .filter(|(name, _, _)| !counts.contains_key(name.as_str()))
    .map(|(name, partitions, extra)| {
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication))
            .set("cleanup.policy", "delete")
            .set("min.insync.replicas", min_isr)
            .set("unclean.leader.election.enable", "false");
        for (k, v) in extra {
            topic = topic.set(k, v);
        }
        topic
    })
    .collect();

    if !wanted.is_empty() {
        create_topics(config, &wanted).await?;
        let names: Vec<&str> = wanted.iter().map(|t| t.name).collect();
        counts = await_topics(config, &names).await?.counts;
    }

    let count = |topic: &str| counts.get(topic).copied().unwrap_or_default();
    let expected = count(&events);
    for topic in [&commands, &outcomes] {
        if count(topic) != expected {
            return Err(TopicError::PartitionMismatch {
                topic: topic.clone(),
                found: count(topic),
                events_topic: events.clone(),
                expected,
            });
        }
    }
    validate_events_config(config, &events).await?;
    let max_record_bytes = max_record_bytes(config, &[&events, &outcomes]).await;
    Ok(TopicLayout {
        partitions: expected,
        reply_partitions: count(&replies),
        events,
        commands,
        outcomes,
        replies,
        brokers,
        max_record_bytes,
    })
}

/// librdkafka's default `message.max.bytes`.
const CLIENT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// The client's `message.max.bytes`.
pub(crate) fn client_max_record_bytes(config: &KafkaConfig) -> usize {
    config
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(CLIENT_MAX_MESSAGE_BYTES)
}

/// The smallest of the client's `message.max.bytes` and the topics'
/// `max.message.bytes` (the client's alone when the cluster does not say).
async fn max_record_bytes(config: &KafkaConfig, topics: &[&str]) -> usize {
    let client = client_max_record_bytes(config);
    let Ok(admin) = config
        .client_config()
        .create::<AdminClient<DefaultClientContext>>()
    else {
        return client;
    };
    let resources: Vec<ResourceSpecifier<'_>> =
        topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let Ok(described) = admin.describe_configs(&resources, &options).await else {
        return client;
    };
    described
        .into_iter()
        .flatten()
        .filter_map(|resource| {
            resource
                .get("max.message.bytes")
                .and_then(|e| e.value.as_deref())
                .and_then(|v| v.trim().parse::<usize>().ok())
        })
        .fold(client, usize::min)
}

async fn validate_events_config(config: &KafkaConfig, events: &str) -> Result<(), TopicError> {
    let admin: AdminClient<DefaultClientContext> = config
        .client_config()
        .create()
        .map_err(op("create admin client"))?;
    let described = match admin
        .describe_configs(
            &[ResourceSpecifier::Topic(events)],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await
    {
        Ok(described) => described,
        Err(error) => {
            // Brokers that do not implement DescribeConfigs, or an ACL without
            // DescribeConfigs: say so loudly, but don't refuse to start.
            tracing::warn!(%error, topic = events,
                "cannot read the events topic's configuration; make sure it is not compacted and keeps events forever");
            return Ok(());
        }
    };
    for resource in described.into_iter().flatten() {
        let value = |name: &str| resource.get(name).and_then(|e| e.value.clone());
        if let Some(policy) = value("cleanup.policy")
            && policy.contains("compact")
        {
            return Err(TopicError::Compacted {
                topic: events.to_owned(),
                policy,
            });
        }
        for setting in ["retention.ms", "retention.bytes"] {
            if let Some(v) = value(setting)
                && v.trim() != "-1"
            {
                return Err(TopicError::FiniteRetention {
                    topic: events.to_owned(),
                    setting,
                    value: v,
                });
            }
        }
    }
    Ok(())
}

/// Creates `topics`. One that another instance created first is fine: callers
/// validate what they find afterwards.
async fn create_topics(config: &KafkaConfig, topics: &[NewTopic<'_>]) -> Result<(), TopicError> {
    let admin: AdminClient<DefaultClientContext> = config
        .client_config()
        .create()
        .map_err(op("create admin client"))?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin
        .create_topics(topics, &options)
        .await
        .map_err(op("create topics"))?
    {
        match result {
            Ok(topic) => tracing::info!(%topic, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(TopicError::Create { topic, code }),
        }
    }
    Ok(())
}

/// Creates the shared replies topic if missing; returns its partition count.
pub(crate) async fn ensure_replies_topic(
    config: &KafkaConfig,
    prefix: &str,
    settings: &TopicSettings,
) -> Result<i32, TopicError> {
    let replies = wire::replies_topic(prefix);
    let view = cluster_view(config).await?;
    let (counts, brokers) = (view.counts, view.brokers);
    if let Some(n) = counts.get(&replies) {
        return Ok(i32::try_from(*n).unwrap_or(i32::MAX));
    }
    let replication = settings
        .replication_factor
        .unwrap_or_else(|| i32::try_from(brokers.clamp(1, 3)).unwrap_or(1));
    let retention = settings.reply_retention.as_millis().to_string();
    let topic = NewTopic::new(
        &replies,
        settings.reply_partitions,
        TopicReplication::Fixed(replication),
    )
    .set("cleanup.policy", "delete")
    .set("retention.ms", &retention);
    create_topics(config, &[topic]).await?;
    let view = await_topics(config, &[replies.as_str()]).await?;
    let n = view.counts.get(&replies).copied().unwrap_or_default();
    Ok(i32::try_from(n).unwrap_or(i32::MAX))
}

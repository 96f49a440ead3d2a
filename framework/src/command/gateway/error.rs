//! The errors of [`CommandGateway::send`](super::CommandGateway::send).

use super::*;

/// Why `send` could not report an outcome. None of these means the command was
/// rejected; several mean it may still be processed — resend it with the same
/// command id to learn its outcome exactly once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// No reply within the timeout. The command may still be processed.
    #[error(
        "no outcome for command {command_id} within {waited:?}; it may still be processed: resend it with the same command id to learn its outcome"
    )]
    Timeout {
        /// The command id.
        command_id: String,
        /// How long `send` waited.
        waited: Duration,
    },
    /// The command could not be written to Kafka (broker unavailable, timed out, …).
    #[error(
        "command {command_id} could not be written to Kafka: {source}; check that the brokers are reachable, then resend with the same command id"
    )]
    Unavailable {
        /// The command id.
        command_id: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// The command is not valid to send.
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    /// The command did not serialize.
    #[error("command does not serialize to JSON: {0}")]
    Serialize(#[source] serde_json::Error),
    /// The processor could not handle the command (unknown type, undecodable).
    #[error("command {command_id} failed in the processor: {reason}")]
    Failed {
        /// The command id.
        command_id: String,
        /// The processor's reason.
        reason: String,
    },
    /// The reply could not be read (a record on the replies topic with this command
    /// id as its key is not a Tributary reply, or its outcome does not match the
    /// command's aggregate type).
    #[error(
        "the reply to command {command_id} is unreadable: {reason}; the command may have been processed: resend it with the same command id to learn its outcome"
    )]
    BadReply {
        /// The command id.
        command_id: String,
        /// What is wrong.
        reason: String,
    },
    /// Setting up the gateway failed.
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaOpError),
    /// The replies topic is missing and cannot be created.
    #[error(transparent)]
    Topics(#[from] TopicError),
    /// The aggregate's commands topic does not exist yet. The gateway does not
    /// produce to it, because a produce would make the broker create it with its
    /// default settings (one partition on Kafka), which the processors then refuse.
    #[error(
        "command {command_id} was not sent: topic `{topic}` does not exist yet. The command processors of this aggregate create it when they start: start them (or create the topics with `ensure_topics`), then resend with the same command id"
    )]
    NoTopic {
        /// The command id.
        command_id: String,
        /// The missing topic.
        topic: String,
    },
    /// A command id was reused while the first send with it is still waiting.
    #[error("command {0} is already waiting for its outcome in this gateway")]
    AlreadyPending(String),
    /// Kafka refuses writes to a partition the command needs (its commands or its
    /// events partition): fewer replicas are in sync than the topic's
    /// `min.insync.replicas`, because brokers are down. Found after a send failed
    /// or timed out.
    #[error(
        "command {command_id} cannot be processed now: partition {partition} of `{topic}` has {in_sync} in-sync replica(s) of {replicas}, fewer than its min.insync.replicas={required}, so Kafka refuses writes to it (acks=all). Bring the brokers back; then resend with the same command id, which takes effect at most once"
    )]
    NotEnoughReplicas {
        /// The command id.
        command_id: String,
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Replicas in sync now.
        in_sync: usize,
        /// Replicas of the partition.
        replicas: usize,
        /// The topic's `min.insync.replicas`.
        required: usize,
    },
    /// The command record is over Kafka's record size limit. It was not sent and
    /// will never be processed, however often it is sent again.
    #[error(
        "command {command_id} was not sent: its record is about {bytes} bytes, over the record size limit of {limit} bytes (the client's message.max.bytes, or the commands topic's max.message.bytes). Make the command smaller, or raise both limits"
    )]
    TooLarge {
        /// The command id.
        command_id: String,
        /// The record's size, estimated.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The processor that owns the command's partition cannot read that partition's
    /// events (an event it cannot decode, e.g. of a newer type or version written by
    /// a newer deployment), so it processes none of its commands. The command was
    /// not processed; it will be once an instance that can read the partition owns
    /// it. Resend it then with the same command id.
    #[error(
        "command {command_id} was not processed: the processor owning partition {partition} cannot read its events ({reason}). Deploy a version that can read them; then resend with the same command id"
    )]
    PartitionUnavailable {
        /// The command id.
        command_id: String,
        /// The partition.
        partition: i32,
        /// Why the partition cannot be read.
        reason: String,
    },
    /// A partition the command needs has no leader: the brokers holding it are
    /// down or the cluster has lost its controller quorum. Found after a send failed
    /// or timed out.
    #[error(
        "command {command_id} cannot be processed now: partition {partition} of `{topic}` has no leader (its brokers are down or the cluster has no controller quorum). Bring the brokers back; then resend with the same command id, which takes effect at most once"
    )]
    NoLeader {
        /// The command id.
        command_id: String,
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
    },
}

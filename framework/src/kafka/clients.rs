//! Every Kafka client the framework builds, by role. Each function starts from the
//! user's [`KafkaConfig`] (bootstrap servers, security, librdkafka passthrough) and
//! adds what its role needs; the caller creates the client, with its own context,
//! and names the operation when that fails. Admin and metadata clients use
//! [`KafkaConfig::client_config`] as it is.

use std::time::Duration;

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

/// A consumer that commits nothing itself: its positions live in Kafka
/// transactions or in Postgres.
fn no_auto_commit(kafka: &KafkaConfig, group: &str) -> ClientConfig {
    let mut config = kafka.client_config();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    config
}

/// The command processor's group member on the commands topic: committed records
/// only, offsets committed in its transactions, range assignment so commands,
/// events and outcomes partitions go together.
pub(crate) fn command_consumer(
    kafka: &KafkaConfig,
    group: &str,
    session_timeout: Duration,
    max_poll_interval: Duration,
) -> ClientConfig {
    let mut config = no_auto_commit(kafka, group);
    config
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("partition.assignment.strategy", "range")
        .set("session.timeout.ms", millis(session_timeout))
        .set("max.poll.interval.ms", millis(max_poll_interval))
        // Latency: librdkafka waits up to 500 ms for fetch.min.bytes by default.
        .set("fetch.wait.max.ms", "5");
    config
}

/// The processor's reader of single outcome records (resends answered from the
/// restored dedup window): one record at a time, answered at once.
pub(crate) fn outcome_reader(kafka: &KafkaConfig, group: &str) -> ClientConfig {
    let mut config = no_auto_commit(kafka, &format!("{group}.outcomes"));
    config
        .set("isolation.level", "read_committed")
        // The fetch waits for nothing.
        .set("fetch.wait.max.ms", "5")
        .set("fetch.queue.backoff.ms", "10")
        .set("fetch.error.backoff.ms", "10");
    config
}

/// The processor's reader of a partition's events and outcomes on restore: reads to
/// the end of what is committed and says when it got there.
pub(crate) fn restore_reader(kafka: &KafkaConfig, group: &str) -> ClientConfig {
    let mut config = no_auto_commit(kafka, &format!("{group}.restore"));
    config
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .set("fetch.queue.backoff.ms", "10")
        .set("fetch.error.backoff.ms", "10")
        .set("enable.partition.eof", "true");
    config
}

/// The history reader (`history::History`): fetches chosen offsets of one events
/// partition, committed records only. It assigns partitions itself and never joins
/// its group or commits. Small fetches: it wants a few records at a time, far
/// apart, not a stream.
pub(crate) fn history_reader(kafka: &KafkaConfig, group: &str) -> ClientConfig {
    let mut config = no_auto_commit(kafka, group);
    config
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .set("fetch.error.backoff.ms", "10")
        .set("max.partition.fetch.bytes", "65536")
        .set("queued.max.messages.kbytes", "1024")
        .set("enable.partition.eof", "true");
    config
}

/// A client that only asks for watermarks. `read_uncommitted`: the last stable
/// offset can lag (or read 0 on some brokers) while transactions are open.
pub(crate) fn watermark_reader(kafka: &KafkaConfig, group: Option<&str>) -> ClientConfig {
    let mut config = match group {
        Some(group) => no_auto_commit(kafka, &format!("{group}.restore")),
        None => kafka.client_config(),
    };
    config.set("isolation.level", "read_uncommitted");
    config
}

/// `linger.ms` of the framework's producers unless the Kafka settings set it (or
/// its alias `queue.buffering.max.ms`). One millisecond lets the records of a
/// batch, or of many callers, share a request. 0 sends each record at once: on the
/// benchmark machine a lone command's median fell by 1.1–2 ms, and the hot
/// aggregate lost a quarter to a half of its throughput at about three times the
/// CPU per command (docs/benchmarks.md).
const PRODUCER_LINGER_MS: &str = "1";

/// Sets a tuning default: `key` to `value` unless the user's Kafka settings set it
/// or one of its librdkafka `aliases`.
fn set_default(config: &mut ClientConfig, key: &str, aliases: &[&str], value: &str) {
    if std::iter::once(key)
        .chain(aliases.iter().copied())
        .all(|k| config.get(k).is_none())
    {
        config.set(key, value);
    }
}

fn default_linger(config: &mut ClientConfig) {
    set_default(
        config,
        "linger.ms",
        &["queue.buffering.max.ms"],
        PRODUCER_LINGER_MS,
    );
}

/// The processor's producer of one partition's transactions (events, and outcomes
/// with the partition's position): `transactional.id` `{group}.{partition}` fences the previous
/// owner of the partition.
pub(crate) fn transactional_producer(
    kafka: &KafkaConfig,
    transactional_id: String,
    transaction_timeout: Duration,
) -> ClientConfig {
    let mut config = kafka.client_config();
    config
        .set("transactional.id", transactional_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // The coordinator answers CONCURRENT_TRANSACTIONS while the markers of this
        // id's previous transaction are still being written, which takes
        // milliseconds. librdkafka retried such requests (AddOffsetsToTxn and
        // TxnOffsetCommit, when the processor still sent offsets) with
        // `retry.backoff.ms` doubling up to `retry.backoff.max.ms` (defaults 100 and
        // 1,000): 100 + 200 + 400 + 800 ms, and a commit under load took 1.8 s.
        // Retry sooner, still doubling.
        .set("retry.backoff.ms", "10")
        .set("retry.backoff.max.ms", "200")
        .set("transaction.timeout.ms", millis(transaction_timeout))
        .set("message.timeout.ms", millis(transaction_timeout));
    default_linger(&mut config);
    config
}

/// The processor's idempotent, non-transactional producer of replies.
pub(crate) fn reply_producer(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = kafka.client_config();
    config.set("enable.idempotence", "true").set("acks", "all");
    default_linger(&mut config);
    config
}

/// The gateway's producer of commands.
pub(crate) fn command_producer(kafka: &KafkaConfig, message_timeout: Duration) -> ClientConfig {
    let mut config = kafka.client_config();
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Java-compatible partitioning, so that every producer of commands (any
        // language) maps an aggregate id to the same partition.
        .set("partitioner", "murmur2_random")
        .set(
            "message.timeout.ms",
            message_timeout.as_millis().max(1).to_string(),
        );
    default_linger(&mut config);
    config
}

/// The gateway's reader of its replies partition (assigned, not subscribed).
pub(crate) fn reply_consumer(kafka: &KafkaConfig, prefix: &str) -> ClientConfig {
    let mut config = no_auto_commit(kafka, &format!("{prefix}.gateway"));
    config
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "5");
    config
}

/// `fetch.queue.backoff.ms` of a projection's consumer unless the Kafka settings
/// set it. librdkafka stops fetching a partition whose local queue is full and waits
/// this long (default 1 s) before it looks again. A worker that applies about as
/// fast as it fetches drains the queue well within that and then sits idle:
/// measured ~0.5 s every ~120,000 records, 40 % of a rebuild.
const PROJECTION_FETCH_QUEUE_BACKOFF_MS: &str = "10";
/// How often a projection consumer's statistics (and so the lag gauge) refresh.
const PROJECTION_STATISTICS_INTERVAL_MS: &str = "1000";

/// A projection worker's group member: committed records only, positions in
/// Postgres (checkpoints), told when it reaches the end of a partition.
pub(crate) fn projection_consumer(
    kafka: &KafkaConfig,
    group: String,
    session_timeout: Duration,
) -> ClientConfig {
    let mut config = kafka.client_config();
    set_default(
        &mut config,
        "fetch.queue.backoff.ms",
        &[],
        PROJECTION_FETCH_QUEUE_BACKOFF_MS,
    );
    // The partitions' last stable offsets for the lag gauge come with the statistics.
    set_default(
        &mut config,
        "statistics.interval.ms",
        &[],
        PROJECTION_STATISTICS_INTERVAL_MS,
    );
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("session.timeout.ms", millis(session_timeout));
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka() -> KafkaConfig {
        KafkaConfig::new("broker:9092").set("client.id", "app")
    }

    #[test]
    fn every_client_keeps_the_users_settings() {
        let second = Duration::from_secs(1);
        for config in [
            command_consumer(&kafka(), "g", second, second),
            outcome_reader(&kafka(), "g"),
            restore_reader(&kafka(), "g"),
            watermark_reader(&kafka(), None),
            transactional_producer(&kafka(), "g.0".into(), second),
            reply_producer(&kafka()),
            command_producer(&kafka(), second),
            reply_consumer(&kafka(), "shop"),
            projection_consumer(&kafka(), "g".into(), second),
        ] {
            assert_eq!(config.get("bootstrap.servers"), Some("broker:9092"));
            assert_eq!(config.get("client.id"), Some("app"));
        }
    }

    #[test]
    fn consumers_commit_nothing_and_read_committed_records_only() {
        let second = Duration::from_secs(1);
        for config in [
            command_consumer(&kafka(), "g", second, second),
            outcome_reader(&kafka(), "g"),
            restore_reader(&kafka(), "g"),
            reply_consumer(&kafka(), "shop"),
            projection_consumer(&kafka(), "g".into(), second),
        ] {
            assert_eq!(config.get("enable.auto.commit"), Some("false"));
            assert_eq!(config.get("isolation.level"), Some("read_committed"));
        }
        let marks = watermark_reader(&kafka(), Some("g"));
        assert_eq!(marks.get("isolation.level"), Some("read_uncommitted"));
        assert_eq!(marks.get("group.id"), Some("g.restore"));
    }

    #[test]
    fn the_transactional_producer_is_fenced_by_its_id_and_bounded_by_its_timeout() {
        let config = transactional_producer(
            &kafka(),
            "shop.order.processor.3".into(),
            Duration::from_secs(60),
        );
        assert_eq!(
            config.get("transactional.id"),
            Some("shop.order.processor.3")
        );
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("transaction.timeout.ms"), Some("60000"));
        assert_eq!(config.get("message.timeout.ms"), Some("60000"));
    }

    #[test]
    fn a_projection_consumer_keeps_a_fetch_queue_backoff_the_user_set() {
        let tuned = kafka().set("fetch.queue.backoff.ms", "250");
        let config = projection_consumer(&tuned, "g".into(), Duration::from_secs(1));
        assert_eq!(config.get("fetch.queue.backoff.ms"), Some("250"));
        let config = projection_consumer(&kafka(), "g".into(), Duration::from_secs(1));
        assert_eq!(config.get("fetch.queue.backoff.ms"), Some("10"));
    }

    #[test]
    fn producers_linger_a_millisecond_unless_the_user_says_otherwise() {
        let producers = |kafka: &KafkaConfig| {
            [
                transactional_producer(kafka, "t".into(), Duration::from_secs(1)),
                reply_producer(kafka),
                command_producer(kafka, Duration::from_secs(1)),
            ]
        };
        for config in producers(&kafka()) {
            assert_eq!(config.get("linger.ms"), Some("1"));
        }
        for config in producers(&kafka().set("linger.ms", "0")) {
            assert_eq!(config.get("linger.ms"), Some("0"));
        }
        for config in producers(&kafka().set("queue.buffering.max.ms", "5")) {
            assert_eq!(config.get("linger.ms"), None);
            assert_eq!(config.get("queue.buffering.max.ms"), Some("5"));
        }
    }

    #[test]
    fn commands_are_partitioned_as_the_java_client_does() {
        let config = command_producer(&kafka(), Duration::ZERO);
        assert_eq!(config.get("partitioner"), Some("murmur2_random"));
        assert_eq!(config.get("message.timeout.ms"), Some("1"));
    }
}

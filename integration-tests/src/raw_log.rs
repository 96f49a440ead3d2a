//! An independent reader of an events topic: a plain rdkafka consumer that reads the
//! CloudEvents headers and the JSON payload itself, without Tributary's decoder, so
//! that what a test checks in the log does not depend on the code under test.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Which records to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// `read_committed`: what every Tributary reader sees; stops at the last stable
    /// offset while a transaction is open.
    Committed,
    /// `read_uncommitted`: every record physically in the log, those of open and
    /// aborted transactions included.
    Uncommitted,
}

impl Isolation {
    fn level(self) -> &'static str {
        match self {
            Self::Committed => "read_committed",
            Self::Uncommitted => "read_uncommitted",
        }
    }
}

/// One event record as the log holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedEvent {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// The record key: the aggregate id.
    pub aggregate_id: String,
    /// `ce_id`: the event id.
    pub event_id: String,
    /// `ce_sequence`: the aggregate version.
    pub sequence: u64,
    /// `ce_causationid`: the command id.
    pub causation_id: String,
    /// `ce_type`.
    pub ce_type: String,
    /// The JSON payload.
    pub data: serde_json::Value,
}

fn client(bootstrap: &str, isolation: Isolation) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "tributary-raw-log-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation.level())
        .create()
        .expect("cannot create a Kafka consumer")
}

/// The partitions of `topic`.
pub fn partitions(bootstrap: &str, topic: &str) -> Vec<i32> {
    let consumer = client(bootstrap, Isolation::Uncommitted);
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect()
}

/// `(low, end)` of one partition: `end` is the high-water mark for
/// [`Isolation::Uncommitted`] and the last stable offset for [`Isolation::Committed`].
pub fn end_offsets(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    isolation: Isolation,
) -> (i64, i64) {
    client(bootstrap, isolation)
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .expect("watermarks")
}

/// `(last stable offset, high-water mark)` of one partition: they differ while a
/// transaction is open in it.
pub fn stable_and_high(bootstrap: &str, topic: &str, partition: i32) -> (i64, i64) {
    let (_, stable) = end_offsets(bootstrap, topic, partition, Isolation::Committed);
    let (_, high) = end_offsets(bootstrap, topic, partition, Isolation::Uncommitted);
    (stable, high)
}

/// Every event record of `topic` that a reader with `isolation` sees now, per
/// partition in offset order.
pub fn read(bootstrap: &str, topic: &str, isolation: Isolation) -> Vec<LoggedEvent> {
    let consumer = client(bootstrap, isolation);
    let partitions = partitions(bootstrap, topic);
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition list");
    }
    consumer.assign(&tpl).expect("assign");
    let mut done: HashSet<i32> = HashSet::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while done.len() < partitions.len() {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => out.push(parse(&message)),
            // The fetch position reached the end of the partition as of that fetch
            // (the last stable offset for read_committed): everything there was
            // when the call began has been read.
            Some(Err(KafkaError::PartitionEOF(p))) => {
                done.insert(p);
            }
            // A broker of the cluster being down is reported here too; the
            // client reconnects by itself.
            Some(Err(error)) if tributary::kafka::is_retriable(&error) => {}
            Some(Err(error)) => panic!("reading {topic}: {error}"),
            None => {}
        }
    }
    out.sort_by_key(|e| (e.partition, e.offset));
    out
}

fn parse<M: Message>(message: &M) -> LoggedEvent {
    let header = |name: &str| -> String {
        message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == name).and_then(|h| h.value))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    LoggedEvent {
        partition: message.partition(),
        offset: message.offset(),
        aggregate_id: message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default(),
        event_id: header("ce_id"),
        sequence: header("ce_sequence").parse().unwrap_or(0),
        causation_id: header("ce_causationid"),
        ce_type: header("ce_type"),
        data: message
            .payload()
            .and_then(|p| serde_json::from_slice(p).ok())
            .unwrap_or(serde_json::Value::Null),
    }
}

/// Checks the committed log of a command-side test and returns it per aggregate:
/// every aggregate's sequences are exactly 1..=n and every command id caused events
/// in one command only (one effect). Panics with the offending records otherwise.
pub fn assert_single_writer(events: &[LoggedEvent]) -> BTreeMap<String, Vec<LoggedEvent>> {
    let mut per_aggregate: BTreeMap<String, Vec<LoggedEvent>> = BTreeMap::new();
    for event in events {
        per_aggregate
            .entry(event.aggregate_id.clone())
            .or_default()
            .push(event.clone());
    }
    for (id, list) in &per_aggregate {
        let sequences: Vec<u64> = list.iter().map(|e| e.sequence).collect();
        let expected: Vec<u64> = (1..=list.len() as u64).collect();
        assert_eq!(
            sequences, expected,
            "aggregate {id}: sequences are not 1..=n in the committed log"
        );
    }
    // Events of one command are consecutive in one aggregate; a command id that
    // shows up in two separate runs was applied twice.
    let mut runs: HashMap<&str, usize> = HashMap::new();
    for list in per_aggregate.values() {
        let mut previous: Option<&str> = None;
        for e in list {
            if previous != Some(e.causation_id.as_str()) {
                *runs.entry(e.causation_id.as_str()).or_default() += 1;
            }
            previous = Some(e.causation_id.as_str());
        }
    }
    let twice: Vec<&&str> = runs
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    assert!(
        twice.is_empty(),
        "commands applied more than once: {twice:?}"
    );
    per_aggregate
}

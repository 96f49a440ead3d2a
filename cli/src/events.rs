//! `tributary events`: an aggregate's raw event records, by a scan of the one
//! partition of its events topic that holds its id.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use tributary::codec::{RecordRef, headers};
use tributary::command::wire::partition_for;
use tributary::kafka::KafkaOpError;

use crate::context::Context;
use crate::error::CliError;
use crate::output::{Report, bytes};
use crate::topics::check_names;

/// One record of the aggregate.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Event {
    pub(crate) offset: i64,
    ce_type: Option<String>,
    ce_id: Option<String>,
    ce_time: Option<String>,
    /// The aggregate version (`ce_sequence`, written zero-padded so it sorts as
    /// text), as a number when it is one.
    sequence: Option<serde_json::Value>,
    payload: serde_json::Value,
    /// The record as read, for decoding by a registered codec.
    pub(crate) raw: RawRecord,
}

/// A record's key, value and headers, owned.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct RawRecord {
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) headers: Vec<(String, Option<Vec<u8>>)>,
}

impl RawRecord {
    /// A borrowed view, as codecs decode.
    pub(crate) fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            headers: self
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_deref()))
                .collect(),
        }
    }

    /// The last value of header `name`, as text.
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
            .map(|value| String::from_utf8_lossy(value).into_owned())
    }
}

/// What the scan read.
#[derive(Debug)]
pub(crate) struct Scan {
    pub(crate) partition: i32,
    /// Offsets scanned, `start..end`.
    pub(crate) start: i64,
    pub(crate) end: i64,
    pub(crate) events: Vec<Event>,
}

impl Event {
    /// The aggregate version from `ce_sequence`, when it is a number.
    pub(crate) fn version(&self) -> Option<u64> {
        self.sequence.as_ref().and_then(|s| match s {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        })
    }
}

fn op(operation: &'static str) -> impl FnOnce(KafkaError) -> CliError {
    move |source| CliError::Kafka(KafkaOpError { operation, source })
}

/// A payload as JSON when it is, else as `{"encoding", "data"}`.
pub(crate) fn payload(value: Option<&[u8]>) -> serde_json::Value {
    match value {
        None => serde_json::Value::Null,
        Some(value) => serde_json::from_slice(value).unwrap_or_else(|_| {
            let (encoding, data) = bytes(value);
            json!({"encoding": encoding, "data": data})
        }),
    }
}

fn event<M: Message>(message: &M) -> Event {
    let raw = RawRecord {
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        headers: message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let header = |name: &str| raw.header(name);
    Event {
        offset: message.offset(),
        ce_type: header(headers::TYPE),
        ce_id: header(headers::ID),
        ce_time: header(headers::TIME),
        sequence: header(headers::SEQUENCE).map(|s| {
            s.parse::<u64>()
                .map_or_else(|_| json!(s), serde_json::Value::from)
        }),
        payload: payload(message.payload()),
        raw,
    }
}

fn scan(
    config: rdkafka::ClientConfig,
    topic: &str,
    id: &str,
    from_offset: Option<i64>,
    timeout: Duration,
) -> Result<Scan, CliError> {
    let mut config = config;
    config
        .set("group.id", "tributary-cli-events")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true");
    let consumer: BaseConsumer = config.create().map_err(op("create consumer"))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(op("fetch metadata"))?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len());
    if partitions == 0 {
        return Err(CliError::NotFound(format!(
            "topic `{topic}` does not exist; check --prefix and the aggregate name"
        )));
    }
    let partition = partition_for(id.as_bytes(), partitions);
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, timeout)
        .map_err(op("fetch watermarks"))?;
    let start = from_offset.unwrap_or(low).max(low);
    let mut scan = Scan {
        partition,
        start,
        end: high,
        events: Vec::new(),
    };
    if start >= high {
        return Ok(scan);
    }
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(start))
        .map_err(op("assign"))?;
    consumer.assign(&assignment).map_err(op("assign"))?;
    // The scan ends at the partition's end (for read_committed: the last stable
    // offset) as it was when the scan started.
    let deadline = Instant::now() + timeout * 6;
    loop {
        if Instant::now() > deadline {
            return Err(CliError::NotFound(format!(
                "the scan of {topic}/{partition} did not reach offset {high} within {:?}; retry with a larger --timeout or a --from-offset",
                timeout * 6
            )));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(message)) => {
                if message.key() == Some(id.as_bytes()) {
                    scan.events.push(event(&message));
                }
                if message.offset() + 1 >= high {
                    return Ok(scan);
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(scan),
            Some(Err(error)) => return Err(op("read events")(error)),
        }
    }
}

fn text(topic: &str, id: &str, scan: &Scan) -> String {
    let mut text = format!(
        "{topic} partition {} offsets {}..{}: {} event(s) of `{id}`\n",
        scan.partition,
        scan.start,
        scan.end,
        scan.events.len()
    );
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    for e in &scan.events {
        text.push_str(&format!(
            "@{}  {}  seq {}  {}  {}\n  {}\n",
            e.offset,
            or_dash(&e.ce_type),
            e.sequence.as_ref().map_or_else(
                || "-".to_owned(),
                |s| match s {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                }
            ),
            or_dash(&e.ce_time),
            or_dash(&e.ce_id),
            e.payload
        ));
    }
    text
}

fn to_json(topic: &str, id: &str, scan: &Scan) -> serde_json::Value {
    let events: Vec<serde_json::Value> = scan
        .events
        .iter()
        .map(|e| {
            json!({
                "offset": e.offset,
                "ce_type": e.ce_type,
                "ce_id": e.ce_id,
                "ce_time": e.ce_time,
                "sequence": e.sequence,
                "payload": e.payload,
            })
        })
        .collect();
    json!({
        "topic": topic,
        "partition": scan.partition,
        "aggregate_id": id,
        "scanned": {"from": scan.start, "to": scan.end},
        "events": events,
    })
}

/// `tributary events`: the raw records, up to `at_version` if given.
pub(crate) async fn run(
    context: &Context,
    prefix: &str,
    aggregate: &str,
    id: &str,
    from_offset: Option<i64>,
    at_version: Option<u64>,
) -> Result<Report, CliError> {
    let (topic, mut scan) = scan_events(context, prefix, aggregate, id, from_offset).await?;
    if let Some(at) = at_version {
        scan.events.retain(|e| e.version().is_none_or(|v| v <= at));
    }
    Ok(Report::ok(
        text(&topic, id, &scan),
        to_json(&topic, id, &scan),
    ))
}

/// The records of `id` in its partition of `{prefix}.{aggregate}.events`, with
/// the topic's name; `NotFound` when there are none.
pub(crate) async fn scan_events(
    context: &Context,
    prefix: &str,
    aggregate: &str,
    id: &str,
    from_offset: Option<i64>,
) -> Result<(String, Scan), CliError> {
    check_names(prefix, aggregate)?;
    let topic = tributary::topics::events_topic(prefix, aggregate);
    let config = context.kafka.client_config();
    let timeout = context.timeout;
    let (scan_topic, scan_id) = (topic.clone(), id.to_owned());
    let scan = tokio::task::spawn_blocking(move || {
        scan(config, &scan_topic, &scan_id, from_offset, timeout)
    })
    .await
    .map_err(|error| CliError::Thread(error.to_string()))??;
    if scan.events.is_empty() {
        return Err(CliError::NotFound(format!(
            "no events of `{id}` in {topic} partition {} (offsets {}..{})",
            scan.partition, scan.start, scan.end
        )));
    }
    Ok((topic, scan))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_json_or_encoded_bytes() {
        assert_eq!(payload(Some(br#"{"a":1}"#)), json!({"a": 1}));
        assert_eq!(
            payload(Some(b"{oops")),
            json!({"encoding": "utf8", "data": "{oops"})
        );
        assert_eq!(payload(None), serde_json::Value::Null);
    }

    #[test]
    fn events_print_one_block_each() {
        let scan = Scan {
            partition: 2,
            start: 0,
            end: 9,
            events: vec![Event {
                offset: 4,
                ce_type: Some("account.deposited.v1".to_owned()),
                ce_id: Some("e1".to_owned()),
                ce_time: Some("2025-01-01T00:00:00Z".to_owned()),
                sequence: Some(json!(1)),
                payload: json!({"amount": 5}),
                ..Event::default()
            }],
        };
        assert_eq!(
            text("p.account.events", "a", &scan),
            "p.account.events partition 2 offsets 0..9: 1 event(s) of `a`\n\
             @4  account.deposited.v1  seq 1  2025-01-01T00:00:00Z  e1\n  {\"amount\":5}\n"
        );
        assert_eq!(to_json("t", "a", &scan)["events"][0]["sequence"], 1);
    }
}

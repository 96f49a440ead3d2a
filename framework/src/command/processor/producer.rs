//! Producing records: the one send-with-retry, delivery draining, forwarding a
//! misrouted command, and the record size check.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaResult;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};

use crate::Aggregate;
use crate::command::wire;
use crate::config::KafkaConfig;

use super::Shared;
use super::contexts::{DeliveryContext, ReplyContext};
use super::partitions::PartitionState;

/// A partition's two transactional producers, `{group}.{p}` and `{group}.{p}.alt`,
/// which take the partition's transactions in turn.
///
/// Kafka's transaction coordinator writes a transaction's commit markers after
/// `commit_transaction` has returned. The next transaction of the same
/// transactional id that adds a partition before they are written is refused with
/// `CONCURRENT_TRANSACTIONS`, and librdkafka retries 20 ms later (a fixed delay).
/// A busy partition begins its next batch right after the commit, so one id alone
/// would pay those 20 ms on a large share of its batches. In turn, each id's
/// previous transaction ended a whole batch earlier.
///
/// Order is kept: a batch begins only once the previous one has committed, so its
/// records follow the previous batch's in the log. Fencing is kept: a new owner
/// initialises both ids before it reads the partition (see `restore`), which
/// fences both of the previous owner's producers and aborts what either left open.
pub(super) struct TxProducers {
    pair: [BaseProducer<DeliveryContext>; 2],
    turn: usize,
}

impl TxProducers {
    /// The transactional ids of `partition`'s producers in the consumer group `group`.
    pub(super) fn ids(group: &str, partition: i32) -> [String; 2] {
        [
            format!("{group}.{partition}"),
            format!("{group}.{partition}.alt"),
        ]
    }

    /// The pair, the first one taking the next transaction.
    pub(super) fn new(pair: [BaseProducer<DeliveryContext>; 2]) -> Self {
        Self { pair, turn: 0 }
    }

    /// Both producers (to initialise them).
    pub(super) fn both(&self) -> &[BaseProducer<DeliveryContext>; 2] {
        &self.pair
    }

    /// The producer of the open (or next) transaction.
    pub(super) fn current(&self) -> &BaseProducer<DeliveryContext> {
        &self.pair[self.turn]
    }

    /// The current transaction committed: the other producer takes the next one.
    /// After a failure the turn stays: the failed producer aborts its transaction.
    pub(super) fn committed(&mut self) {
        self.turn = 1 - self.turn;
    }

    /// The highest offset either producer wrote to the events partition: every
    /// committed event of the partition's owner is at or before it.
    pub(super) fn max_offset(&self) -> i64 {
        self.pair
            .iter()
            .map(|p| p.context().max_offset.load(Ordering::SeqCst))
            .max()
            .unwrap_or(-1)
    }

    /// Starts the events offset bound at `offset` (after a restore).
    pub(super) fn set_max_offset(&self, offset: i64) {
        for producer in &self.pair {
            producer
                .context()
                .max_offset
                .store(offset, Ordering::SeqCst);
        }
    }
}

/// The idempotent, non-transactional producer of replies.
pub(super) fn new_reply_producer(kafka: &KafkaConfig) -> KafkaResult<BaseProducer<ReplyContext>> {
    crate::kafka::clients::reply_producer(kafka).create_with_context(ReplyContext)
}

/// Writes a command record, unchanged but keyed by its aggregate id, to the commands
/// partition `home`, inside the open transaction.
pub(super) fn forward<A: Aggregate>(
    shared: &Shared<A>,
    part: &PartitionState<A>,
    message: &OwnedMessage,
    aggregate_id: &str,
    home: i32,
) -> KafkaResult<()> {
    use rdkafka::message::Headers;
    let headers = message.headers().map_or_else(OwnedHeaders::new, |h| {
        h.iter()
            .fold(OwnedHeaders::new_with_capacity(h.count()), |acc, header| {
                acc.insert(header)
            })
    });
    let record = BaseRecord::to(&shared.layout.commands)
        .partition(home)
        .key(aggregate_id.as_bytes())
        .payload(message.payload().unwrap_or_default())
        .headers(headers);
    crate::kafka::send_retrying(part.producers.current(), record)
}

/// Serves delivery reports until nothing is in flight. rdkafka's own flush (which
/// `commit_transaction` runs first) polls in 100 ms steps and so adds up to 100 ms
/// to every commit. Its `poll` cannot wait for less than a millisecond either: it
/// hands librdkafka the time left in whole milliseconds, so the last fraction of
/// every wait becomes a busy loop, and a 1 ms poll is one busy loop (measured: the
/// transaction threads took more than a core at 400 commands/s, which the broker on
/// the same cores then lacked). So: serve what is there without waiting, then sleep
/// (see [`delivery_poll`]) and look again.
///
/// The wait covers the records' whole way: the partitions' registration with the
/// transaction (`AddPartitionsToTxn`) and the produce. A fixed 200 µs look made a
/// broker that paused for a moment pause for seconds: under load, two transaction
/// threads looking 5,000 times a second each took CPU the broker on the same two
/// cores needed to come back. `bench_peer` from a cold broker at 2,000–3,000
/// commands/s: in each of seven runs transactions waited 1.3–4.8 s here, while the
/// broker answered every request (fetches and heartbeats too) about 2 s late; in
/// two runs with the growing look, no step waited a second.
pub(super) fn drain_deliveries(producer: &BaseProducer<DeliveryContext>, timeout: Duration) {
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        serve_ready(producer);
        if producer.in_flight_count() == 0 || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(delivery_poll(started.elapsed()));
    }
}

/// How long [`drain_deliveries`] sleeps before it looks again, after waiting
/// `waited`: [`DELIVERY_POLL`], growing with the wait to a tenth of it (at most
/// [`DELIVERY_POLL_MAX`]), so that a wait the broker makes long anyway costs few
/// wake-ups and lengthens by a tenth at most.
pub(super) fn delivery_poll(waited: Duration) -> Duration {
    (waited / 10).clamp(DELIVERY_POLL, DELIVERY_POLL_MAX)
}

/// The longest sleep of [`drain_deliveries`] between looks.
pub(super) const DELIVERY_POLL_MAX: Duration = Duration::from_millis(5);

/// How long [`drain_deliveries`] sleeps between its first looks: the latency it may
/// add to a commit, against a wake-up per look.
pub(super) const DELIVERY_POLL: Duration = Duration::from_micros(200);

pub(super) fn send<C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &BaseProducer<C>,
    topic: &str,
    partition: i32,
    key: &[u8],
    value: &[u8],
    correlation_id: Option<&str>,
) -> KafkaResult<()> {
    let record = BaseRecord::to(topic)
        .partition(partition)
        .key(key)
        .payload(value)
        .headers(headers(correlation_id, None));
    crate::kafka::send_retrying(producer, record)
}

/// Writes an outcome record (`value` is `None` for a position record) carrying the
/// position `consumed` ([`wire::CONSUMED`]) inside the open transaction.
pub(super) fn send_outcome(
    producer: &BaseProducer<DeliveryContext>,
    topic: &str,
    partition: i32,
    key_value: Option<(&[u8], &[u8])>,
    correlation_id: Option<&str>,
    consumed: i64,
) -> KafkaResult<()> {
    let record = BaseRecord::<[u8], [u8], ()>::to(topic)
        .partition(partition)
        .headers(headers(correlation_id, Some(consumed)));
    let record = match key_value {
        Some((key, value)) => record.key(key).payload(value),
        None => record,
    };
    crate::kafka::send_retrying(producer, record)
}

fn headers(correlation_id: Option<&str>, consumed: Option<i64>) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new();
    if let Some(id) = correlation_id {
        headers = headers.insert(Header {
            key: crate::codec::headers::CORRELATION_ID,
            value: Some(id),
        });
    }
    if let Some(offset) = consumed {
        headers = headers.insert(Header {
            key: wire::CONSUMED,
            value: Some(&offset.to_string()),
        });
    }
    headers
}

/// Serves every delivery report that is ready, without waiting for more.
/// `poll(Duration::ZERO)` serves at most one report, and librdkafka makes one per
/// partition and produce request: replies to several gateways' partitions make
/// several per commit.
pub(super) fn serve_ready<C: ProducerContext>(producer: &BaseProducer<C>) {
    loop {
        let before = producer.in_flight_count();
        producer.poll(Duration::ZERO);
        if producer.in_flight_count() >= before {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use rdkafka::ClientConfig;
    use rdkafka::client::ClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};

    use super::{DELIVERY_POLL, DELIVERY_POLL_MAX, delivery_poll, serve_ready};

    #[test]
    fn the_delivery_poll_grows_with_the_wait_to_a_tenth_of_it_within_its_bounds() {
        assert_eq!(delivery_poll(Duration::ZERO), DELIVERY_POLL);
        assert_eq!(delivery_poll(Duration::from_millis(1)), DELIVERY_POLL);
        assert_eq!(
            delivery_poll(Duration::from_millis(20)),
            Duration::from_millis(2)
        );
        assert_eq!(delivery_poll(Duration::from_secs(3)), DELIVERY_POLL_MAX);
    }

    #[derive(Clone, Default)]
    struct Counting(Arc<AtomicUsize>);

    impl ClientContext for Counting {}

    impl ProducerContext for Counting {
        type DeliveryOpaque = ();

        fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn serving_takes_every_ready_delivery_report_not_just_one() {
        const PARTITIONS: i32 = 8;
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("replies", PARTITIONS, 1).unwrap();
        let bootstrap = cluster.bootstrap_servers();
        let served = Counting::default();
        let producer: BaseProducer<Counting> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("linger.ms", "0")
            .create_with_context(served.clone())
            .unwrap();
        for partition in 0..PARTITIONS {
            producer
                .send(
                    BaseRecord::<[u8], [u8]>::to("replies")
                        .partition(partition)
                        .payload(b"r"),
                )
                .map_err(|(e, _)| e)
                .unwrap();
        }
        // Every record acknowledged (so its report is on its way to the queue), none
        // served yet.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        for partition in 0..PARTITIONS {
            while consumer
                .fetch_watermarks("replies", partition, Duration::from_secs(1))
                .map_or(true, |(_, high)| high < 1)
            {
                assert!(Instant::now() < deadline, "the mock cluster took no record");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Time for the produce responses to come back and their reports to be
        // queued, with room for a loaded machine (the queue's length cannot be read
        // without unsafe code).
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(served.0.load(Ordering::SeqCst), 0);

        serve_ready(&producer);

        assert_eq!(served.0.load(Ordering::SeqCst), PARTITIONS as usize);
    }
}

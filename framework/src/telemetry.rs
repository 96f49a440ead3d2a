//! Metrics: what Tributary reports through the [`metrics`](https://docs.rs/metrics)
//! facade, and under which names.
//!
//! The library records and never exports: install a recorder of your choice (for
//! Prometheus, `metrics-exporter-prometheus`; the sample shop serves `/metrics` with
//! it) **before** starting processors, gateways and projection workers, because
//! they take their metric handles when they start. Without a recorder every metric
//! is a no-op.
//!
//! Every name below is a constant of this module; `docs/operations.md` lists them
//! with their labels and what to alert on. Labels:
//!
//! - `aggregate`: the aggregate type's name ([`crate::Aggregate::NAME`]);
//! - `projection`: the projection's name ([`crate::projection::Projection::NAME`]);
//! - `outcome`, `result`, `kind`: the value sets given with each metric.
//!
//! Durations are histograms in seconds; sizes are histograms of counts.

/// Counter: commands decided by the processors, by `aggregate` and `outcome`
/// (`accepted`, `rejected`, `failed`, `duplicate`, `unavailable`). A batch whose
/// transaction aborts is decided again, so its commands count again.
pub const COMMANDS: &str = "tributary_commands_total";
/// Counter: commands that reached a processor on another partition than their
/// aggregate's and were forwarded to it, by `aggregate`.
pub const COMMANDS_FORWARDED: &str = "tributary_commands_forwarded_total";
/// Counter: events written by the processors, by `aggregate`.
pub const EVENTS_WRITTEN: &str = "tributary_events_written_total";
/// Histogram (seconds): deciding one partition's batch (every handler call and
/// produce of the batch, before the offsets and the commit), by `aggregate`.
pub const DECIDE_BATCH_SECONDS: &str = "tributary_decide_batch_seconds";
/// Histogram: commands per partition batch, by `aggregate`.
pub const COMMAND_BATCH_SIZE: &str = "tributary_command_batch_size";
/// Counter: Kafka transactions of the processors, by `aggregate` and `result`
/// (`committed`, `aborted`, `fenced`, `abandoned`).
pub const TRANSACTIONS: &str = "tributary_transactions_total";
/// Histogram (seconds): `commit_transaction` of the processors, by `aggregate`.
pub const TRANSACTION_COMMIT_SECONDS: &str = "tributary_transaction_commit_seconds";
/// Counter: partitions restored (snapshots, then the events after them), by
/// `aggregate`.
pub const RESTORES: &str = "tributary_restores_total";
/// Histogram (seconds): restoring one partition, by `aggregate`.
pub const RESTORE_SECONDS: &str = "tributary_restore_seconds";
/// Counter: records read while restoring, by `aggregate` and `kind` (`events`,
/// `outcomes`).
pub const RESTORE_RECORDS: &str = "tributary_restore_records_total";
/// Counter: events applied to aggregates while restoring (those after their
/// snapshot), by `aggregate`.
pub const RESTORE_EVENTS_APPLIED: &str = "tributary_restore_events_applied_total";
/// Counter: snapshot rows written to Postgres, by `aggregate`.
pub const SNAPSHOTS_WRITTEN: &str = "tributary_snapshots_written_total";
/// Counter: snapshot writes that failed for good (after three attempts), by
/// `aggregate`. Their aggregates are snapshotted again later; nothing is lost.
pub const SNAPSHOT_WRITE_FAILURES: &str = "tributary_snapshot_write_failures_total";
/// Counter: snapshots that could not be read at restore and were discarded (the
/// aggregate was rebuilt from its events), by `aggregate`.
pub const SNAPSHOTS_DISCARDED: &str = "tributary_snapshots_discarded_total";
/// Counter: aggregates loaded from their snapshot rows on demand (a command for an
/// aggregate not in memory, or a lazy restore), by `aggregate`. See
/// `ProcessorSettings::max_cached_aggregates`.
pub const AGGREGATES_LOADED: &str = "tributary_aggregates_loaded_total";
/// Counter: aggregates evicted from a processor's memory (their snapshot row
/// confirmed at their current version), by `aggregate`.
pub const AGGREGATES_EVICTED: &str = "tributary_aggregates_evicted_total";
/// Counter: reply producers replaced after a fatal error, by `aggregate`.
pub const REPLY_PRODUCERS_REPLACED: &str = "tributary_reply_producers_replaced_total";
/// Counter: replies a processor handed in memory to a gateway of its own process
/// (instead of producing them to the replies topic), by `aggregate`.
pub const REPLIES_IN_PROCESS: &str = "tributary_replies_in_process_total";

/// Histogram (seconds): a command at the gateway, from `send` to its outcome (or
/// error), by `aggregate` and `outcome` (`accepted`, `rejected`, `timeout`,
/// `error`).
pub const GATEWAY_COMMAND_SECONDS: &str = "tributary_gateway_command_seconds";
/// Counter: commands whose outcome the gateway did not learn in time, by
/// `aggregate`. The command may still have been processed: resend it with the same
/// command id to learn its outcome.
pub const GATEWAY_TIMEOUTS: &str = "tributary_gateway_timeouts_total";
/// Gauge: commands sent and waiting for their outcome, by `aggregate`.
pub const GATEWAY_IN_FLIGHT: &str = "tributary_gateway_in_flight";

/// Gauge: a projection's lag on one partition (high-water mark minus checkpoint,
/// as of the worker's last fetch), by `projection`, `topic` and `partition`.
pub const PROJECTION_LAG: &str = "tributary_projection_lag";
/// Counter: events applied by a projection, by `projection`.
pub const PROJECTION_EVENTS_APPLIED: &str = "tributary_projection_events_applied_total";
/// Histogram (seconds): one committed projection batch (handlers, checkpoint and
/// commit), by `projection`.
pub const PROJECTION_BATCH_SECONDS: &str = "tributary_projection_batch_seconds";
/// Histogram: events per committed projection batch, by `projection`.
pub const PROJECTION_BATCH_SIZE: &str = "tributary_projection_batch_size";
/// Counter: records parked in the dead letters, by `projection`.
pub const PROJECTION_DEAD_LETTERS: &str = "tributary_projection_dead_letters_total";
/// Counter: batches rolled back by a Kafka or Postgres outage and retried after
/// `outage_backoff`, by `projection`.
pub const PROJECTION_OUTAGE_RETRIES: &str = "tributary_projection_outage_retries_total";

/// Every metric name, for tests and for listing them.
pub const ALL: &[&str] = &[
    COMMANDS,
    COMMANDS_FORWARDED,
    EVENTS_WRITTEN,
    DECIDE_BATCH_SECONDS,
    COMMAND_BATCH_SIZE,
    TRANSACTIONS,
    TRANSACTION_COMMIT_SECONDS,
    RESTORES,
    RESTORE_SECONDS,
    RESTORE_RECORDS,
    RESTORE_EVENTS_APPLIED,
    SNAPSHOTS_WRITTEN,
    SNAPSHOT_WRITE_FAILURES,
    SNAPSHOTS_DISCARDED,
    AGGREGATES_LOADED,
    AGGREGATES_EVICTED,
    REPLY_PRODUCERS_REPLACED,
    GATEWAY_COMMAND_SECONDS,
    GATEWAY_TIMEOUTS,
    GATEWAY_IN_FLIGHT,
    PROJECTION_LAG,
    PROJECTION_EVENTS_APPLIED,
    PROJECTION_BATCH_SECONDS,
    PROJECTION_BATCH_SIZE,
    PROJECTION_DEAD_LETTERS,
    PROJECTION_OUTAGE_RETRIES,
];

/// The handles of one projection worker's metrics, taken when it starts.
#[derive(Debug, Clone)]
pub(crate) struct ProjectionMetrics {
    pub(crate) applied: metrics::Counter,
    pub(crate) batch_seconds: metrics::Histogram,
    pub(crate) batch_size: metrics::Histogram,
    pub(crate) dead_letters: metrics::Counter,
    pub(crate) outage_retries: metrics::Counter,
    projection: &'static str,
}

impl ProjectionMetrics {
    pub(crate) fn new(projection: &'static str) -> Self {
        Self {
            applied: metrics::counter!(PROJECTION_EVENTS_APPLIED, "projection" => projection),
            batch_seconds: metrics::histogram!(PROJECTION_BATCH_SECONDS, "projection" => projection),
            batch_size: metrics::histogram!(PROJECTION_BATCH_SIZE, "projection" => projection),
            dead_letters: metrics::counter!(PROJECTION_DEAD_LETTERS, "projection" => projection),
            outage_retries: metrics::counter!(PROJECTION_OUTAGE_RETRIES, "projection" => projection),
            projection,
        }
    }

    /// Sets the lag gauge of one partition.
    pub(crate) fn lag(&self, topic: &str, partition: i32, lag: i64) {
        metrics::gauge!(PROJECTION_LAG, "projection" => self.projection,
            "topic" => topic.to_owned(), "partition" => partition.to_string())
        .set(lag.max(0) as f64);
    }
}

/// The handles of one gateway's metrics for one aggregate type.
pub(crate) struct GatewayMetrics;

impl GatewayMetrics {
    /// Counts a command in flight until the returned guard is dropped.
    pub(crate) fn in_flight(aggregate: &'static str) -> InFlight {
        let gauge = metrics::gauge!(GATEWAY_IN_FLIGHT, "aggregate" => aggregate);
        gauge.increment(1.0);
        InFlight(gauge)
    }

    /// Records one finished `send`.
    pub(crate) fn finished(aggregate: &'static str, outcome: &'static str, seconds: f64) {
        metrics::histogram!(GATEWAY_COMMAND_SECONDS, "aggregate" => aggregate, "outcome" => outcome)
            .record(seconds);
        if outcome == "timeout" {
            metrics::counter!(GATEWAY_TIMEOUTS, "aggregate" => aggregate).increment(1);
        }
    }
}

/// A command in flight at the gateway; leaves the gauge when dropped (also when
/// the caller's future is cancelled).
pub(crate) struct InFlight(metrics::Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

    /// A recorded value.
    #[derive(Debug, PartialEq)]
    enum V {
        Counter(u64),
        Gauge(f64),
        Histogram(Vec<f64>),
    }

    /// `(name, sorted labels) -> value` of everything recorded.
    fn recorded(snapshotter: &Snapshotter) -> Vec<(String, Vec<String>, V)> {
        let mut out: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let (_, key) = key.into_parts();
                let mut labels: Vec<String> = key
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect();
                labels.sort();
                let value = match value {
                    DebugValue::Counter(n) => V::Counter(n),
                    DebugValue::Gauge(x) => V::Gauge(x.into_inner()),
                    DebugValue::Histogram(xs) => {
                        V::Histogram(xs.into_iter().map(|x| x.into_inner()).collect())
                    }
                };
                (key.name().to_owned(), labels, value)
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    fn value_of<'a>(
        recorded: &'a [(String, Vec<String>, V)],
        name: &str,
        labels: &[&str],
    ) -> Option<&'a V> {
        recorded
            .iter()
            .find(|(n, l, _)| n == name && l.iter().map(String::as_str).eq(labels.iter().copied()))
            .map(|(_, _, v)| v)
    }

    #[test]
    fn processor_counters_are_exported_with_their_labels() {
        use crate::command::ProcessorStats;
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let stats = metrics::with_local_recorder(&recorder, || ProcessorStats::exported("order"));
        stats.count_for_test();
        let counters = stats.counters();
        assert_eq!(
            (counters.accepted, counters.rejected, counters.aborted),
            (2, 1, 1)
        );
        let got = recorded(&snapshotter);
        let counter = |name, labels: &[&str]| value_of(&got, name, labels);
        assert_eq!(
            counter(COMMANDS, &["aggregate=order", "outcome=accepted"]),
            Some(&V::Counter(2))
        );
        assert_eq!(
            counter(COMMANDS, &["aggregate=order", "outcome=rejected"]),
            Some(&V::Counter(1))
        );
        assert_eq!(
            counter(TRANSACTIONS, &["aggregate=order", "result=aborted"]),
            Some(&V::Counter(1))
        );
        assert_eq!(
            counter(TRANSACTIONS, &["aggregate=order", "result=committed"]),
            Some(&V::Counter(0))
        );
        // The total of every outcome is not exported: it would double the sum.
        assert!(got.iter().all(|(_, labels, _)| !labels.is_empty()));
    }

    #[test]
    fn the_gateway_counts_in_flight_commands_and_timeouts() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        // A snapshot drains what it reads, so there is one, at the end.
        let _second = metrics::with_local_recorder(&recorder, || {
            let first = GatewayMetrics::in_flight("order");
            let second = GatewayMetrics::in_flight("order");
            let third = GatewayMetrics::in_flight("order");
            drop(first);
            drop(third);
            GatewayMetrics::finished("order", "timeout", 0.25);
            GatewayMetrics::finished("order", "accepted", 0.5);
            second
        });
        let got = recorded(&snapshotter);
        assert_eq!(
            value_of(&got, GATEWAY_IN_FLIGHT, &["aggregate=order"]),
            Some(&V::Gauge(1.0))
        );
        assert_eq!(
            value_of(&got, GATEWAY_TIMEOUTS, &["aggregate=order"]),
            Some(&V::Counter(1))
        );
        assert_eq!(
            value_of(
                &got,
                GATEWAY_COMMAND_SECONDS,
                &["aggregate=order", "outcome=accepted"]
            ),
            Some(&V::Histogram(vec![0.5]))
        );
    }

    #[test]
    fn projection_lag_is_one_gauge_per_partition_and_never_negative() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let projection = ProjectionMetrics::new("totals");
            projection.lag("p.account.events", 0, 7);
            projection.lag("p.account.events", 1, 3);
            projection.lag("p.account.events", 1, -2);
        });
        let got = recorded(&snapshotter);
        let lag = |partition: &str| {
            value_of(
                &got,
                PROJECTION_LAG,
                &[partition, "projection=totals", "topic=p.account.events"],
            )
        };
        assert_eq!(lag("partition=0"), Some(&V::Gauge(7.0)));
        assert_eq!(lag("partition=1"), Some(&V::Gauge(0.0)));
    }

    #[test]
    fn names_are_unique_prometheus_names() {
        let mut seen = std::collections::HashSet::new();
        for name in ALL {
            assert!(seen.insert(*name), "{name} twice");
            assert!(name.starts_with("tributary_"), "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
        }
    }
}

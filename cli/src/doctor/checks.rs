//! The doctor's checks as pure functions of what was found: no I/O here, so each
//! rule is unit-tested.

use std::collections::BTreeMap;

use serde_json::json;
use tributary::MigrationStatus;
use tributary::topics::{commands_topic, events_topic, outcomes_topic, replies_topic};

use crate::output::millis;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "fail",
        }
    }
}

/// One line of the checklist: what was checked, and what was found (with the fix
/// when it is not ok).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Check {
    pub(crate) status: Status,
    pub(crate) name: String,
    pub(crate) detail: String,
}

impl Check {
    fn new(status: Status, name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            status,
            name: name.into(),
            detail: detail.into(),
        }
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        json!({"status": self.status.as_str(), "check": self.name, "detail": self.detail})
    }
}

/// A topic as the cluster describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicInfo {
    pub(crate) partitions: usize,
    /// The smallest replica count over the partitions.
    pub(crate) replication_factor: usize,
    /// The topic's effective configuration (defaults included), or why it could not
    /// be read.
    pub(crate) configs: Result<BTreeMap<String, String>, String>,
}

/// The cluster as seen from the client.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Cluster {
    pub(crate) brokers: usize,
    /// The topics under the prefix that exist, by name.
    pub(crate) topics: BTreeMap<String, TopicInfo>,
}

/// Everything the doctor gathered.
#[derive(Debug, Clone)]
pub(crate) struct Facts {
    pub(crate) prefix: String,
    /// Aggregate types given with `--aggregate`; empty: discover them.
    pub(crate) aggregates: Vec<String>,
    /// The cluster, or why it could not be reached.
    pub(crate) kafka: Result<Cluster, String>,
    /// The client's `security.protocol`, lowercase (`plaintext` when not set).
    pub(crate) security_protocol: String,
    /// Whether a transactional producer could initialize (`None`: not tried).
    pub(crate) transactions: Option<Result<(), String>>,
    /// The schema's migrations, or why Postgres could not be used (`None`:
    /// DATABASE_URL not set).
    pub(crate) postgres: Option<Result<MigrationStatus, String>>,
    pub(crate) schema: String,
}

/// The aggregate types to check: those given, else every `{prefix}.X.events` topic.
pub(crate) fn aggregates(prefix: &str, given: &[String], cluster: &Cluster) -> Vec<String> {
    if !given.is_empty() {
        return given.to_vec();
    }
    let start = format!("{prefix}.");
    cluster
        .topics
        .keys()
        .filter_map(|topic| topic.strip_prefix(&start)?.strip_suffix(".events"))
        .filter(|aggregate| !aggregate.is_empty() && !aggregate.contains('.'))
        .map(str::to_owned)
        .collect()
}

/// The whole checklist.
pub(crate) fn evaluate(facts: &Facts) -> Vec<Check> {
    let mut checks = Vec::new();
    match &facts.kafka {
        Err(error) => checks.push(Check::new(
            Status::Fail,
            "kafka",
            format!(
                "cannot reach the cluster: {error}; check KAFKA_BOOTSTRAP_SERVERS and the TRIBUTARY_KAFKA_* settings"
            ),
        )),
        Ok(cluster) => {
            checks.push(brokers(cluster.brokers));
            let aggregates = aggregates(&facts.prefix, &facts.aggregates, cluster);
            if aggregates.is_empty() {
                checks.push(Check::new(
                    Status::Fail,
                    "aggregates",
                    format!(
                        "no `{}.<aggregate>.events` topic found; check --prefix, or create the topics (`tributary topics create --prefix {} --aggregate <name>`, or start the command processor)",
                        facts.prefix, facts.prefix
                    ),
                ));
            }
            for aggregate in &aggregates {
                checks.extend(aggregate_checks(cluster, &facts.prefix, aggregate));
            }
            checks.extend(replies_checks(cluster, &facts.prefix));
        }
    }
    if let Some(transactions) = &facts.transactions {
        checks.push(match transactions {
            Ok(()) => Check::new(
                Status::Ok,
                "transactions",
                "a transactional, idempotent producer initialized",
            ),
            Err(error) => Check::new(
                Status::Fail,
                "transactions",
                format!(
                    "a transactional producer could not initialize: {error}; the command processor needs transactions: check the brokers' transaction.state.log.* settings and the principal's TransactionalId Write ACL"
                ),
            ),
        });
    }
    checks.push(security(&facts.security_protocol));
    checks.push(Check::new(
        Status::Warn,
        "acls",
        format!(
            "not checked (the client cannot describe ACLs); list them with `kafka-acls.sh --bootstrap-server <servers> --list --resource-pattern-type prefixed --topic {}.` and make sure only the application's principals can write the topics",
            facts.prefix
        ),
    ));
    checks.extend(postgres(facts.postgres.as_ref(), &facts.schema));
    checks
}

fn brokers(count: usize) -> Check {
    if count >= 3 {
        Check::new(Status::Ok, "brokers", format!("{count} brokers"))
    } else {
        Check::new(
            Status::Warn,
            "brokers",
            format!(
                "{count} broker(s); a broker loss stops or loses writes: run at least 3 in production"
            ),
        )
    }
}

fn security(protocol: &str) -> Check {
    match protocol {
        "ssl" | "sasl_ssl" => Check::new(
            Status::Ok,
            "security",
            format!("security.protocol={protocol}"),
        ),
        "sasl_plaintext" => Check::new(
            Status::Warn,
            "security",
            "security.protocol=sasl_plaintext: authenticated but not encrypted; use sasl_ssl (TRIBUTARY_KAFKA_SECURITY_PROTOCOL)",
        ),
        other => Check::new(
            Status::Warn,
            "security",
            format!(
                "security.protocol={other}: plaintext listener, no TLS and no authentication; use ssl or sasl_ssl (TRIBUTARY_KAFKA_SECURITY_PROTOCOL)"
            ),
        ),
    }
}

fn postgres(postgres: Option<&Result<MigrationStatus, String>>, schema: &str) -> Vec<Check> {
    let status = match postgres {
        None => {
            return vec![Check::new(
                Status::Warn,
                "postgres",
                "DATABASE_URL is not set: Postgres not checked",
            )];
        }
        Some(Err(error)) => {
            return vec![Check::new(
                Status::Fail,
                "postgres",
                format!("cannot use Postgres: {error}; check DATABASE_URL"),
            )];
        }
        Some(Ok(status)) => status,
    };
    let reachable = Check::new(
        Status::Ok,
        "postgres",
        format!("reachable, schema `{schema}`"),
    );
    let name = "migrations";
    let migrations = if !status.unknown.is_empty() {
        Check::new(
            Status::Warn,
            name,
            format!(
                "schema `{schema}` has migrations {:?} this CLI does not know: it was migrated by a newer Tributary; use a CLI of that version",
                status.unknown
            ),
        )
    } else if status.is_current() {
        Check::new(
            Status::Ok,
            name,
            format!("current (version {})", tributary::LATEST_MIGRATION),
        )
    } else {
        let missing: Vec<String> = status
            .missing
            .iter()
            .map(|(version, name)| format!("{version} ({name})"))
            .collect();
        Check::new(
            Status::Fail,
            name,
            format!(
                "schema `{schema}` lacks Tributary migrations {}; start the application built with this Tributary version once (PgStore::connect migrates)",
                missing.join(", ")
            ),
        )
    };
    vec![reachable, migrations]
}

fn config<'a>(info: &'a TopicInfo, key: &str) -> Option<&'a str> {
    info.configs.as_ref().ok()?.get(key).map(String::as_str)
}

fn alter(topic: &str, setting: &str) -> String {
    format!(
        "kafka-configs.sh --bootstrap-server <servers> --alter --entity-type topics --entity-name {topic} --add-config {setting}"
    )
}

/// Replication, `min.insync.replicas` and unclean leader election of one topic.
fn durability(topic: &str, info: &TopicInfo) -> Vec<Check> {
    let rf = info.replication_factor;
    let mut checks = vec![if rf >= 3 {
        Check::new(
            Status::Ok,
            format!("{topic} replication"),
            format!("replication factor {rf}"),
        )
    } else {
        Check::new(
            Status::Warn,
            format!("{topic} replication"),
            format!(
                "replication factor {rf}; a broker loss can lose or stop this topic: use 3 (kafka-reassign-partitions.sh)"
            ),
        )
    }];
    let configs = match &info.configs {
        Ok(_) => true,
        Err(error) => {
            checks.push(Check::new(
                Status::Warn,
                format!("{topic} config"),
                format!(
                    "cannot read the topic's configuration ({error}); grant DescribeConfigs on it to check it"
                ),
            ));
            false
        }
    };
    if !configs {
        return checks;
    }
    let name = format!("{topic} min.insync.replicas");
    match config(info, "min.insync.replicas").and_then(|v| v.trim().parse::<usize>().ok()) {
        None => checks.push(Check::new(Status::Warn, name, "not reported by the cluster")),
        // Writes with acks=all are refused whenever a replica is missing (or
        // always, when it exceeds the replica count).
        Some(isr) if (rf >= 2 && isr > rf - 1) || isr > rf => checks.push(Check::new(
            Status::Fail,
            name,
            format!(
                "{isr} with replication factor {rf}: writes stop as soon as a broker is down; fix: {}",
                alter(topic, &format!("min.insync.replicas={}", rf.saturating_sub(1).max(1)))
            ),
        )),
        Some(isr) if isr < 2 => checks.push(Check::new(
            Status::Warn,
            name,
            format!(
                "{isr}: an acknowledged write may exist on one broker only; use 2 with replication factor 3: {}",
                alter(topic, "min.insync.replicas=2")
            ),
        )),
        Some(isr) => checks.push(Check::new(Status::Ok, name, format!("{isr}"))),
    }
    let name = format!("{topic} unclean.leader.election.enable");
    match config(info, "unclean.leader.election.enable") {
        Some("false") => checks.push(Check::new(Status::Ok, name, "false")),
        other => checks.push(Check::new(
            Status::Warn,
            name,
            format!(
                "{}: an out-of-sync replica may become leader and drop acknowledged records; fix: {}",
                other.unwrap_or("not reported"),
                alter(topic, "unclean.leader.election.enable=false")
            ),
        )),
    }
    checks
}

fn missing(topic: &str, prefix: &str, aggregate: Option<&str>) -> Check {
    let fix = match aggregate {
        Some(aggregate) => {
            format!("tributary topics create --prefix {prefix} --aggregate {aggregate}")
        }
        None => format!(
            "tributary topics create --prefix {prefix} --aggregate <aggregate> (a command gateway creates it too)"
        ),
    };
    Check::new(Status::Fail, topic, format!("missing; create it: {fix}"))
}

/// The checks of one aggregate type's events, commands and outcomes topics.
pub(crate) fn aggregate_checks(cluster: &Cluster, prefix: &str, aggregate: &str) -> Vec<Check> {
    let events = events_topic(prefix, aggregate);
    let commands = commands_topic(prefix, aggregate);
    let outcomes = outcomes_topic(prefix, aggregate);
    let mut checks = Vec::new();
    match cluster.topics.get(&events) {
        None => checks.push(missing(&events, prefix, Some(aggregate))),
        Some(info) => {
            checks.extend(durability(&events, info));
            if info.configs.is_ok() {
                checks.extend(events_retention(&events, info));
            }
        }
    }
    for topic in [&commands, &outcomes] {
        match cluster.topics.get(topic) {
            None => checks.push(missing(topic, prefix, Some(aggregate))),
            Some(info) => {
                checks.extend(durability(topic, info));
                if let Some(retention) = config(info, "retention.ms") {
                    checks.push(Check::new(
                        Status::Ok,
                        format!("{topic} retention"),
                        format!("retention.ms {}", millis(retention)),
                    ));
                }
            }
        }
    }
    if let (Some(e), Some(c), Some(o)) = (
        cluster.topics.get(&events),
        cluster.topics.get(&commands),
        cluster.topics.get(&outcomes),
    ) {
        let name = format!("{aggregate} co-partitioning");
        checks.push(if e.partitions == c.partitions && e.partitions == o.partitions {
            Check::new(Status::Ok, name, format!("{} partitions each", e.partitions))
        } else {
            Check::new(
                Status::Fail,
                name,
                format!(
                    "events {}, commands {}, outcomes {} partitions: they must be equal so one processor owns an aggregate's commands and events; recreate the commands/outcomes topics with {} partitions (they hold no events)",
                    e.partitions, c.partitions, o.partitions, e.partitions
                ),
            )
        });
    }
    checks
}

/// `cleanup.policy=delete` and infinite retention: the events topic is the system
/// of record.
fn events_retention(topic: &str, info: &TopicInfo) -> Vec<Check> {
    let mut checks = Vec::new();
    let name = format!("{topic} cleanup.policy");
    match config(info, "cleanup.policy") {
        Some("delete") => checks.push(Check::new(Status::Ok, name, "delete")),
        other => checks.push(Check::new(
            Status::Fail,
            name,
            format!(
                "{}: compaction deletes events, and the events topic is the system of record; fix: {}",
                other.unwrap_or("not reported"),
                alter(topic, "cleanup.policy=delete")
            ),
        )),
    }
    let finite: Vec<String> = ["retention.ms", "retention.bytes"]
        .iter()
        .filter_map(|key| match config(info, key).map(str::trim) {
            Some("-1") => None,
            other => Some(format!("{key}={}", other.unwrap_or("not reported"))),
        })
        .collect();
    let name = format!("{topic} retention");
    checks.push(if finite.is_empty() {
        Check::new(
            Status::Ok,
            name,
            "forever (retention.ms=-1, retention.bytes=-1)",
        )
    } else {
        Check::new(
            Status::Fail,
            name,
            format!(
                "{}: Kafka deletes old events; they must be kept forever; fix: {}",
                finite.join(", "),
                alter(topic, "retention.ms=-1,retention.bytes=-1")
            ),
        )
    });
    checks
}

/// The checks of the shared replies topic.
pub(crate) fn replies_checks(cluster: &Cluster, prefix: &str) -> Vec<Check> {
    let replies = replies_topic(prefix);
    match cluster.topics.get(&replies) {
        None => vec![missing(&replies, prefix, None)],
        Some(info) => durability(&replies, info),
    }
}

/// The worst status: what decides the exit code.
pub(crate) fn worst(checks: &[Check]) -> Status {
    checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy(partitions: usize, rf: usize, extra: &[(&str, &str)]) -> TopicInfo {
        let mut configs: BTreeMap<String, String> = [
            ("cleanup.policy", "delete"),
            ("retention.ms", "-1"),
            ("retention.bytes", "-1"),
            ("min.insync.replicas", "2"),
            ("unclean.leader.election.enable", "false"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        for (k, v) in extra {
            configs.insert((*k).to_owned(), (*v).to_owned());
        }
        TopicInfo {
            partitions,
            replication_factor: rf,
            configs: Ok(configs),
        }
    }

    fn cluster(topics: &[(&str, TopicInfo)]) -> Cluster {
        Cluster {
            brokers: 3,
            topics: topics
                .iter()
                .map(|(n, i)| ((*n).to_owned(), i.clone()))
                .collect(),
        }
    }

    fn three(events: TopicInfo) -> Cluster {
        let commands = healthy(6, 3, &[("retention.ms", "604800000")]);
        cluster(&[
            ("p.order.events", events),
            ("p.order.commands", commands.clone()),
            ("p.order.outcomes", commands),
            ("p.replies", healthy(6, 3, &[])),
        ])
    }

    fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name}: {checks:#?}"))
    }

    #[test]
    fn a_healthy_layout_passes_every_topic_check() {
        let checks = aggregate_checks(&three(healthy(6, 3, &[])), "p", "order");
        assert_eq!(worst(&checks), Status::Ok, "{checks:#?}");
        assert_eq!(
            find(&checks, "p.order.commands retention").detail,
            "retention.ms 7d (604800000 ms)"
        );
        assert_eq!(
            find(&checks, "order co-partitioning").detail,
            "6 partitions each"
        );
    }

    #[test]
    fn a_compacted_or_finite_events_topic_fails_with_the_fix() {
        let compacted = healthy(6, 3, &[("cleanup.policy", "compact")]);
        let checks = aggregate_checks(&three(compacted), "p", "order");
        let check = find(&checks, "p.order.events cleanup.policy");
        assert_eq!(check.status, Status::Fail);
        assert!(
            check.detail.contains("--add-config cleanup.policy=delete"),
            "{}",
            check.detail
        );

        let finite = healthy(6, 3, &[("retention.ms", "604800000")]);
        let checks = aggregate_checks(&three(finite), "p", "order");
        let check = find(&checks, "p.order.events retention");
        assert_eq!(check.status, Status::Fail);
        assert!(
            check.detail.starts_with("retention.ms=604800000:"),
            "{}",
            check.detail
        );
    }

    #[test]
    fn co_partitioning_mismatch_fails() {
        let checks = aggregate_checks(&three(healthy(12, 3, &[])), "p", "order");
        let check = find(&checks, "order co-partitioning");
        assert_eq!(check.status, Status::Fail);
        assert!(
            check
                .detail
                .starts_with("events 12, commands 6, outcomes 6"),
            "{}",
            check.detail
        );
    }

    #[test]
    fn replication_and_min_insync_replicas() {
        let rf = |rf: usize, isr: &str| {
            let checks = durability("t", &healthy(1, rf, &[("min.insync.replicas", isr)]));
            (
                find(&checks, "t replication").status,
                find(&checks, "t min.insync.replicas").status,
            )
        };
        assert_eq!(rf(3, "2"), (Status::Ok, Status::Ok));
        assert_eq!(rf(3, "1"), (Status::Ok, Status::Warn));
        assert_eq!(rf(3, "3"), (Status::Ok, Status::Fail));
        // One broker: both are warnings (nothing better is possible there), not a
        // failure.
        assert_eq!(rf(1, "1"), (Status::Warn, Status::Warn));
        assert_eq!(rf(1, "2"), (Status::Warn, Status::Fail));
        let unclean = durability(
            "t",
            &healthy(1, 3, &[("unclean.leader.election.enable", "true")]),
        );
        assert_eq!(
            find(&unclean, "t unclean.leader.election.enable").status,
            Status::Warn
        );
    }

    #[test]
    fn unreadable_configs_are_a_warning_not_a_guess() {
        let mut info = healthy(6, 3, &[]);
        info.configs = Err("ClusterAuthorizationFailed".to_owned());
        let checks = aggregate_checks(&three(info), "p", "order");
        assert_eq!(find(&checks, "p.order.events config").status, Status::Warn);
        assert!(
            checks
                .iter()
                .all(|c| c.name != "p.order.events cleanup.policy")
        );
    }

    #[test]
    fn aggregates_are_discovered_from_events_topics() {
        let cluster = cluster(&[
            ("p.order.events", healthy(1, 1, &[])),
            ("p.order.commands", healthy(1, 1, &[])),
            ("p.stock.events", healthy(1, 1, &[])),
            ("p.replies", healthy(1, 1, &[])),
        ]);
        assert_eq!(aggregates("p", &[], &cluster), vec!["order", "stock"]);
        assert_eq!(aggregates("p", &["x".to_owned()], &cluster), vec!["x"]);
        assert!(aggregates("q", &[], &cluster).is_empty());
    }

    fn facts(kafka: Result<Cluster, String>) -> Facts {
        Facts {
            prefix: "p".to_owned(),
            aggregates: Vec::new(),
            kafka,
            security_protocol: "plaintext".to_owned(),
            transactions: Some(Ok(())),
            postgres: Some(Ok(MigrationStatus {
                applied: vec![1, 2, 3],
                missing: Vec::new(),
                unknown: Vec::new(),
            })),
            schema: "public".to_owned(),
        }
    }

    #[test]
    fn the_checklist_covers_cluster_security_and_database() {
        let checks = evaluate(&facts(Ok(three(healthy(6, 3, &[])))));
        assert_eq!(find(&checks, "brokers").status, Status::Ok);
        assert_eq!(find(&checks, "transactions").status, Status::Ok);
        let security = find(&checks, "security");
        assert_eq!(security.status, Status::Warn);
        assert!(security.detail.contains("plaintext listener"));
        assert_eq!(find(&checks, "acls").status, Status::Warn);
        assert_eq!(find(&checks, "migrations").status, Status::Ok);
        assert_eq!(worst(&checks), Status::Warn);
    }

    #[test]
    fn no_topics_missing_migrations_and_no_cluster_fail() {
        let mut none = facts(Ok(Cluster::default()));
        none.postgres = Some(Ok(MigrationStatus {
            applied: vec![1, 2],
            missing: vec![(3, "dead_letter_discard")],
            unknown: Vec::new(),
        }));
        let checks = evaluate(&none);
        assert_eq!(find(&checks, "aggregates").status, Status::Fail);
        let migrations = find(&checks, "migrations");
        assert_eq!(migrations.status, Status::Fail);
        assert!(migrations.detail.contains("3 (dead_letter_discard)"));
        let down = evaluate(&facts(Err("timed out".to_owned())));
        assert_eq!(find(&down, "kafka").status, Status::Fail);
    }
}

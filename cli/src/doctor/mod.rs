//! `tributary doctor`: gathers what the cluster and the database say into
//! [`checks::Facts`], then evaluates the checklist ([`checks::evaluate`], pure).

pub(crate) mod checks;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, Producer};
use serde_json::json;
use tributary::kafka::KafkaOpError;

use self::checks::{Check, Cluster, Facts, Status, TopicInfo};
use crate::Exit;
use crate::context::Context;
use crate::error::CliError;
use crate::output::Report;

fn op(operation: &'static str) -> impl FnOnce(rdkafka::error::KafkaError) -> KafkaOpError {
    move |source| KafkaOpError { operation, source }
}

/// The brokers, and every topic whose name starts with `{prefix}.` with its
/// partitions, replication factor and configuration.
pub(crate) async fn cluster(context: &Context, prefix: &str) -> Result<Cluster, CliError> {
    let config = context.kafka.client_config();
    let timeout = context.timeout;
    let start = format!("{prefix}.");
    let (brokers, topics) = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().map_err(op("create client"))?;
        let metadata = consumer
            .fetch_metadata(None, timeout)
            .map_err(op("fetch metadata"))?;
        let topics: Vec<(String, usize, usize)> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && t.name().starts_with(&start))
            .map(|t| {
                let rf = t
                    .partitions()
                    .iter()
                    .map(|p| p.replicas().len())
                    .min()
                    .unwrap_or(0);
                (t.name().to_owned(), t.partitions().len(), rf)
            })
            .collect();
        Ok::<_, KafkaOpError>((metadata.brokers().len(), topics))
    })
    .await
    .map_err(|error| CliError::Thread(error.to_string()))??;
    let mut configs = describe(context, topics.iter().map(|(name, ..)| name.as_str())).await?;
    let topics = topics
        .into_iter()
        .map(|(name, partitions, replication_factor)| {
            let configs = configs
                .remove(&name)
                .unwrap_or_else(|| Err("the cluster did not describe it".to_owned()));
            let info = TopicInfo {
                partitions,
                replication_factor,
                configs,
            };
            (name, info)
        })
        .collect();
    Ok(Cluster { brokers, topics })
}

type Configs = Result<BTreeMap<String, String>, String>;

/// The configuration of each topic (every entry, defaults included), as
/// `describe_configs` reports it; a topic the cluster refuses to describe maps to
/// the error.
async fn describe<'a>(
    context: &Context,
    topics: impl Iterator<Item = &'a str>,
) -> Result<BTreeMap<String, Configs>, CliError> {
    let names: Vec<&str> = topics.collect();
    if names.is_empty() {
        return Ok(BTreeMap::new());
    }
    let admin: AdminClient<DefaultClientContext> = context
        .kafka
        .client_config()
        .create()
        .map_err(op("create admin client"))?;
    let resources: Vec<ResourceSpecifier<'_>> =
        names.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let options = AdminOptions::new().request_timeout(Some(context.timeout));
    let described = match admin.describe_configs(&resources, &options).await {
        Ok(described) => described,
        Err(error) => {
            let error = error.to_string();
            return Ok(names
                .iter()
                .map(|name| ((*name).to_owned(), Err(error.clone())))
                .collect());
        }
    };
    Ok(names
        .iter()
        .zip(described)
        .map(|(name, result)| {
            let configs = result
                .map(|resource| {
                    resource
                        .entries
                        .into_iter()
                        .filter_map(|entry| Some((entry.name, entry.value?)))
                        .collect()
                })
                .map_err(|code| format!("{code:?}"));
            ((*name).to_owned(), configs)
        })
        .collect())
}

/// Initializes a transactional (hence idempotent) producer with a transactional id
/// of its own, then drops it.
async fn transactions(context: &Context) -> Result<(), String> {
    let mut config = context.kafka.client_config();
    let id = format!("tributary-doctor-{}", uuid::Uuid::new_v4().simple());
    config
        .set("transactional.id", &id)
        .set("enable.idempotence", "true");
    let timeout = context.timeout.max(Duration::from_secs(5));
    tokio::task::spawn_blocking(move || {
        let producer: BaseProducer = config.create().map_err(|e| e.to_string())?;
        producer
            .init_transactions(timeout)
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|error| Err(error.to_string()))
}

/// `tributary doctor`.
pub(crate) async fn run(
    context: &Context,
    prefix: &str,
    aggregates: &[String],
) -> Result<Report, CliError> {
    tributary::topics::validate_prefix(prefix).map_err(|e| CliError::Usage(e.to_string()))?;
    let mut unreachable = false;
    let kafka = match cluster(context, prefix).await {
        Ok(cluster) => Ok(cluster),
        Err(error) => {
            unreachable |= error.exit() == Exit::Unreachable;
            Err(error.to_string())
        }
    };
    let transactions = match kafka {
        Ok(_) => Some(transactions(context).await),
        Err(_) => None,
    };
    let postgres = match &context.database_url {
        None => None,
        Some(_) => Some(match context.store().await {
            Ok(store) => store.migration_status().await.map_err(|e| e.to_string()),
            Err(error) => {
                unreachable |= error.exit() == Exit::Unreachable;
                Err(error.to_string())
            }
        }),
    };
    let facts = Facts {
        prefix: prefix.to_owned(),
        aggregates: aggregates.to_vec(),
        security_protocol: context
            .kafka
            .get("security.protocol")
            .unwrap_or("plaintext")
            .to_ascii_lowercase(),
        kafka,
        transactions,
        postgres,
        schema: context.schema.clone(),
    };
    let checks = checks::evaluate(&facts);
    let exit = if unreachable {
        Exit::Unreachable
    } else if checks::worst(&checks) == Status::Fail {
        Exit::Failed
    } else {
        Exit::Ok
    };
    let discovered = match &facts.kafka {
        Ok(cluster) => checks::aggregates(prefix, aggregates, cluster),
        Err(_) => aggregates.to_vec(),
    };
    Ok(render(
        &checks,
        json!({"prefix": prefix, "aggregates": discovered}),
        exit,
    ))
}

/// Checks as aligned lines (`status  check  detail`) and a summary line, or as
/// `{…, "checks": [...], "summary": {...}}`.
pub(crate) fn render(checks: &[Check], mut json: serde_json::Value, exit: Exit) -> Report {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut text = String::new();
    for check in checks {
        text.push_str(&format!(
            "{:<4}  {:<width$}  {}\n",
            check.status.as_str(),
            check.name,
            check.detail
        ));
    }
    let count = |status: Status| checks.iter().filter(|c| c.status == status).count();
    let (ok, warn, fail) = (count(Status::Ok), count(Status::Warn), count(Status::Fail));
    text.push_str(&format!("{ok} ok, {warn} warn, {fail} fail\n"));
    json["checks"] = checks.iter().map(Check::json).collect();
    json["summary"] = json!({"ok": ok, "warn": warn, "fail": fail});
    Report::new(text, json, exit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_render_as_aligned_lines_with_a_summary() {
        let checks = [
            Check {
                status: Status::Ok,
                name: "brokers".to_owned(),
                detail: "3 brokers".to_owned(),
            },
            Check {
                status: Status::Fail,
                name: "p.replies".to_owned(),
                detail: "missing".to_owned(),
            },
        ];
        let report = render(&checks, json!({"prefix": "p"}), Exit::Failed);
        assert_eq!(
            report.text,
            "ok    brokers    3 brokers\nfail  p.replies  missing\n1 ok, 0 warn, 1 fail\n"
        );
        assert_eq!(report.json["checks"][1]["status"], "fail");
        assert_eq!(report.json["summary"]["fail"], 1);
        assert_eq!(report.exit, Exit::Failed);
    }
}

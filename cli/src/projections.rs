//! `tributary projections status|lag`.

use serde_json::json;
use tributary::projection::catalog::{self, ProjectionLag, ProjectionSummary};

use crate::args::ProjectionsCommand;
use crate::context::Context;
use crate::error::CliError;
use crate::output::{Report, table, time};

pub(crate) async fn run(
    context: &Context,
    command: ProjectionsCommand,
) -> Result<Report, CliError> {
    let name = match &command {
        ProjectionsCommand::Status { name } | ProjectionsCommand::Lag { name } => name.as_deref(),
        ProjectionsCommand::Rebuild { .. } => return Err(rebuild_here()),
    };
    let store = context.migrated_store().await?;
    if let Some(name) = name {
        let known = catalog::projection_names(&store).await?;
        if !known.iter().any(|k| k == name) {
            return Err(unknown(name, &known));
        }
    }
    match command {
        ProjectionsCommand::Status { .. } => {
            let summaries = catalog::projection_status(&store, &context.kafka, name).await?;
            Ok(Report::ok(status_text(&summaries), status_json(&summaries)))
        }
        ProjectionsCommand::Lag { .. } => {
            let lags = catalog::projection_lag(&store, &context.kafka, name).await?;
            Ok(Report::ok(lag_text(&lags), lag_json(&lags)))
        }
        ProjectionsCommand::Rebuild { .. } => Err(rebuild_here()),
    }
}

/// `lib.rs` routes a rebuild to the embedded entry point before this module.
fn rebuild_here() -> CliError {
    CliError::Usage(
        "projections rebuild runs the projection's handlers: use the application's embedded admin entry point (tributary_cli::Admin)".to_owned(),
    )
}

fn unknown(name: &str, known: &[String]) -> CliError {
    CliError::NotFound(if known.is_empty() {
        format!(
            "unknown projection `{name}`: no projection has a checkpoint or dead letter in this schema (check --schema)"
        )
    } else {
        format!(
            "unknown projection `{name}`; known projections: {}",
            known.join(", ")
        )
    })
}

fn status_text(summaries: &[ProjectionSummary]) -> String {
    if summaries.is_empty() {
        return "no projections in this schema (no checkpoints, no dead letters)\n".to_owned();
    }
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|s| {
            vec![
                s.projection.clone(),
                s.total_lag.to_string(),
                s.open_dead_letters.to_string(),
                time(s.last_update),
            ]
        })
        .collect();
    table(
        &["projection", "lag", "open dead letters", "last checkpoint"],
        &rows,
    )
}

fn status_json(summaries: &[ProjectionSummary]) -> serde_json::Value {
    let projections: Vec<serde_json::Value> = summaries
        .iter()
        .map(|s| {
            json!({
                "projection": s.projection,
                "lag": s.total_lag,
                "open_dead_letters": s.open_dead_letters,
                "last_checkpoint": s.last_update,
            })
        })
        .collect();
    json!({"projections": projections})
}

fn lag_text(lags: &[ProjectionLag]) -> String {
    if lags.is_empty() {
        return "no projection has a checkpoint in this schema\n".to_owned();
    }
    let mut rows = Vec::new();
    for lag in lags {
        for p in &lag.partitions {
            rows.push(vec![
                lag.projection.clone(),
                p.topic.clone(),
                p.partition.to_string(),
                p.checkpoint
                    .map_or_else(|| "-".to_owned(), |c| c.to_string()),
                p.high_watermark.to_string(),
                p.lag.to_string(),
            ]);
        }
        rows.push(vec![
            lag.projection.clone(),
            "total".to_owned(),
            String::new(),
            String::new(),
            String::new(),
            lag.total_lag.to_string(),
        ]);
    }
    let mut text = table(
        &[
            "projection",
            "topic",
            "partition",
            "checkpoint",
            "high watermark",
            "lag",
        ],
        &rows,
    );
    let total: i64 = lags.iter().map(|l| l.total_lag).sum();
    text.push_str(&format!("total lag {total}\n"));
    text
}

fn lag_json(lags: &[ProjectionLag]) -> serde_json::Value {
    let projections: Vec<serde_json::Value> = lags
        .iter()
        .map(|lag| {
            let partitions: Vec<serde_json::Value> = lag
                .partitions
                .iter()
                .map(|p| {
                    json!({
                        "topic": p.topic,
                        "partition": p.partition,
                        "checkpoint": p.checkpoint,
                        "high_watermark": p.high_watermark,
                        "lag": p.lag,
                    })
                })
                .collect();
            json!({
                "projection": lag.projection,
                "partitions": partitions,
                "lag": lag.total_lag,
                "last_checkpoint": lag.last_update,
            })
        })
        .collect();
    let total: i64 = lags.iter().map(|l| l.total_lag).sum();
    json!({"projections": projections, "total_lag": total})
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary::projection::PartitionLag;

    #[test]
    fn lag_lists_partitions_and_totals() {
        let lags = [ProjectionLag {
            projection: "totals".to_owned(),
            partitions: vec![PartitionLag {
                topic: "p.account.events".to_owned(),
                partition: 0,
                high_watermark: 8,
                checkpoint: Some(5),
                lag: 3,
            }],
            total_lag: 3,
            last_update: None,
        }];
        assert_eq!(
            lag_text(&lags),
            "projection  topic             partition  checkpoint  high watermark  lag\n\
             totals      p.account.events  0          5           8               3\n\
             totals      total                                                    3\n\
             total lag 3\n"
        );
        let json = lag_json(&lags);
        assert_eq!(json["projections"][0]["partitions"][0]["checkpoint"], 5);
        assert_eq!(json["total_lag"], 3);
    }

    #[test]
    fn an_unknown_projection_names_the_known_ones() {
        let error = unknown("x", &["a".to_owned(), "b".to_owned()]);
        assert_eq!(
            error.to_string(),
            "unknown projection `x`; known projections: a, b"
        );
        assert_eq!(error.exit(), crate::Exit::Failed);
    }
}

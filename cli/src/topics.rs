//! `tributary topics validate|create`.

use serde_json::json;
use tributary::command::{TopicLayout, TopicSettings, ensure_topics};

use crate::Exit;
use crate::args::TopicsCommand;
use crate::context::Context;
use crate::doctor::{self, checks};
use crate::error::CliError;
use crate::output::Report;

pub(crate) async fn run(context: &Context, command: TopicsCommand) -> Result<Report, CliError> {
    match command {
        TopicsCommand::Validate { prefix, aggregate } => {
            validate(context, &prefix, &aggregate).await
        }
        TopicsCommand::Create {
            prefix,
            aggregate,
            partitions,
            replication_factor,
        } => {
            if partitions < 1 || replication_factor.is_some_and(|rf| rf < 1) {
                return Err(CliError::Usage(
                    "--partitions and --replication-factor must be at least 1".to_owned(),
                ));
            }
            let settings = TopicSettings {
                partitions,
                replication_factor,
                ..TopicSettings::default()
            };
            create(context, &prefix, &aggregate, &settings).await
        }
    }
}

pub(crate) fn check_names(prefix: &str, aggregate: &str) -> Result<(), CliError> {
    tributary::topics::validate_prefix(prefix).map_err(|e| CliError::Usage(e.to_string()))?;
    let plain = !aggregate.is_empty()
        && aggregate
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "invalid aggregate name {aggregate:?}: use ASCII letters, digits, '_' or '-'"
        )))
    }
}

/// The doctor's topic checks for one aggregate type and the replies topic.
async fn validate(context: &Context, prefix: &str, aggregate: &str) -> Result<Report, CliError> {
    check_names(prefix, aggregate)?;
    let cluster = doctor::cluster(context, prefix).await?;
    let mut list = checks::aggregate_checks(&cluster, prefix, aggregate);
    list.extend(checks::replies_checks(&cluster, prefix));
    let exit = if checks::worst(&list) == checks::Status::Fail {
        Exit::Failed
    } else {
        Exit::Ok
    };
    Ok(doctor::render(
        &list,
        json!({"prefix": prefix, "aggregate": aggregate}),
        exit,
    ))
}

async fn create(
    context: &Context,
    prefix: &str,
    aggregate: &str,
    settings: &TopicSettings,
) -> Result<Report, CliError> {
    check_names(prefix, aggregate)?;
    let layout = ensure_topics(&context.kafka, prefix, aggregate, settings).await?;
    Ok(Report::ok(layout_text(&layout), layout_json(&layout)))
}

fn layout_text(layout: &TopicLayout) -> String {
    format!(
        "events    {}  ({} partitions)\ncommands  {}  ({} partitions)\noutcomes  {}  ({} partitions)\nreplies   {}  ({} partitions)\nbrokers   {}\nmax record bytes  {}\n",
        layout.events,
        layout.partitions,
        layout.commands,
        layout.partitions,
        layout.outcomes,
        layout.partitions,
        layout.replies,
        layout.reply_partitions,
        layout.brokers,
        layout.max_record_bytes
    )
}

fn layout_json(layout: &TopicLayout) -> serde_json::Value {
    json!({
        "events": layout.events,
        "commands": layout.commands,
        "outcomes": layout.outcomes,
        "replies": layout.replies,
        "partitions": layout.partitions,
        "reply_partitions": layout.reply_partitions,
        "brokers": layout.brokers,
        "max_record_bytes": layout.max_record_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_plain() {
        assert!(check_names("shop", "order").is_ok());
        assert!(matches!(
            check_names("shop", "or.der"),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(
            check_names("sh op", "order"),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn the_layout_lists_every_topic() {
        let layout = TopicLayout {
            events: "p.order.events".to_owned(),
            commands: "p.order.commands".to_owned(),
            outcomes: "p.order.outcomes".to_owned(),
            replies: "p.replies".to_owned(),
            partitions: 3,
            reply_partitions: 12,
            brokers: 1,
            max_record_bytes: 1_000_000,
        };
        let text = layout_text(&layout);
        assert!(
            text.starts_with("events    p.order.events  (3 partitions)\n"),
            "{text}"
        );
        assert_eq!(layout_json(&layout)["reply_partitions"], 12);
    }
}

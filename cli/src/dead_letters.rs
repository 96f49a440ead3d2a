//! `tributary dead-letters list|show|discard|replay`.

use serde_json::json;
use tributary::projection::DeadLetter;
use tributary::projection::catalog;

use crate::args::DeadLettersCommand;
use crate::context::Context;
use crate::error::CliError;
use crate::output::{Report, bytes, table, time};

/// Why `replay` is not offered by this binary.
pub(crate) const REPLAY: &str = "dead-letters replay is not available in the generic `tributary` binary: replaying applies the record through the projection's handler, which is the application's code. Run it from the application's embedded admin entry point (tributary_cli::Admin, e.g. `example-shop admin dead-letters replay ID`); `tributary dead-letters discard` closes a letter without applying it";

pub(crate) async fn run(
    context: &Context,
    command: DeadLettersCommand,
) -> Result<Report, CliError> {
    if let DeadLettersCommand::Replay { .. } = command {
        return Err(CliError::Usage(REPLAY.to_owned()));
    }
    let store = context.migrated_store().await?;
    match command {
        DeadLettersCommand::List { projection, all } => {
            let letters = catalog::dead_letters(&store, projection.as_deref(), all).await?;
            Ok(Report::ok(
                list_text(&letters, all),
                json!({"dead_letters": letters.iter().map(letter_json).collect::<Vec<_>>()}),
            ))
        }
        DeadLettersCommand::Show { id } => match catalog::dead_letter(&store, id).await? {
            Some(letter) => Ok(Report::ok(show_text(&letter), letter_json(&letter))),
            None => Err(CliError::NotFound(format!(
                "no dead letter has id {id}; `tributary dead-letters list --all` shows the ids"
            ))),
        },
        DeadLettersCommand::Discard { id, reason } => {
            let letter = catalog::discard_dead_letter(&store, id, reason.as_deref()).await?;
            let text = format!(
                "discarded dead letter {} of projection `{}` ({}/{}@{})\n",
                letter.id, letter.projection, letter.topic, letter.partition, letter.offset
            );
            Ok(Report::ok(text, letter_json(&letter)))
        }
        DeadLettersCommand::Replay { .. } => Err(CliError::Usage(REPLAY.to_owned())),
    }
}

fn state(letter: &DeadLetter) -> &'static str {
    if letter.discarded_at.is_some() {
        "discarded"
    } else if letter.replayed_at.is_some() {
        "replayed"
    } else {
        "open"
    }
}

/// The first line of the error, at most 80 characters.
fn short(error: &str) -> String {
    let line = error.lines().next().unwrap_or_default();
    if line.chars().count() > 80 {
        format!("{}…", line.chars().take(79).collect::<String>())
    } else {
        line.to_owned()
    }
}

fn list_text(letters: &[DeadLetter], all: bool) -> String {
    if letters.is_empty() {
        return if all {
            "no dead letters\n".to_owned()
        } else {
            "no open dead letters\n".to_owned()
        };
    }
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|l| {
            vec![
                l.id.to_string(),
                l.projection.clone(),
                format!("{}/{}@{}", l.topic, l.partition, l.offset),
                l.reason.to_string(),
                state(l).to_owned(),
                time(Some(l.parked_at)),
                short(&l.error),
            ]
        })
        .collect();
    table(
        &[
            "id",
            "projection",
            "record",
            "reason",
            "state",
            "parked",
            "error",
        ],
        &rows,
    )
}

fn data_json(data: Option<&[u8]>) -> serde_json::Value {
    match data {
        None => serde_json::Value::Null,
        Some(data) => {
            let (encoding, text) = bytes(data);
            json!({"encoding": encoding, "data": text})
        }
    }
}

fn letter_json(letter: &DeadLetter) -> serde_json::Value {
    let headers: Vec<serde_json::Value> = letter
        .headers
        .iter()
        .map(|(name, value)| json!({"name": name, "value": data_json(value.as_deref())}))
        .collect();
    json!({
        "id": letter.id,
        "projection": letter.projection,
        "state": state(letter),
        "topic": letter.topic,
        "partition": letter.partition,
        "offset": letter.offset,
        "key": data_json(letter.key.as_deref()),
        "payload": data_json(letter.payload.as_deref()),
        "headers": headers,
        "reason": letter.reason.as_str(),
        "error": letter.error,
        "attempts": letter.attempts,
        "parked_at": letter.parked_at,
        "replayed_at": letter.replayed_at,
        "replay_error": letter.replay_error,
        "discarded_at": letter.discarded_at,
        "discard_reason": letter.discard_reason,
    })
}

fn shown(data: Option<&[u8]>) -> String {
    match data {
        None => "(none)".to_owned(),
        Some(data) => match bytes(data) {
            ("utf8", text) => text,
            (encoding, text) => format!("{text} ({encoding})"),
        },
    }
}

fn show_text(letter: &DeadLetter) -> String {
    let mut rows = vec![
        ("id", letter.id.to_string()),
        ("projection", letter.projection.clone()),
        ("state", state(letter).to_owned()),
        ("topic", letter.topic.clone()),
        ("partition", letter.partition.to_string()),
        ("offset", letter.offset.to_string()),
        ("reason", letter.reason.to_string()),
        ("attempts", letter.attempts.to_string()),
        ("parked at", time(Some(letter.parked_at))),
        ("replayed at", time(letter.replayed_at)),
        (
            "replay error",
            letter
                .replay_error
                .clone()
                .unwrap_or_else(|| "-".to_owned()),
        ),
        ("discarded at", time(letter.discarded_at)),
        (
            "discard reason",
            letter
                .discard_reason
                .clone()
                .unwrap_or_else(|| "-".to_owned()),
        ),
        ("error", letter.error.clone()),
        ("key", shown(letter.key.as_deref())),
    ];
    rows.push(("payload", shown(letter.payload.as_deref())));
    let mut text: String = rows
        .iter()
        .map(|(name, value)| format!("{name:<15} {value}\n"))
        .collect();
    text.push_str("headers\n");
    for (name, value) in &letter.headers {
        text.push_str(&format!("  {name}: {}\n", shown(value.as_deref())));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_shortened_to_one_line() {
        assert_eq!(short("first\nsecond"), "first");
        let long = "x".repeat(100);
        assert_eq!(short(&long).chars().count(), 80);
    }

    #[test]
    fn binary_data_is_shown_as_hex() {
        assert_eq!(shown(Some(b"ok")), "ok");
        assert_eq!(shown(Some(&[0xff, 0x01])), "ff01 (hex)");
        assert_eq!(shown(None), "(none)");
        assert_eq!(data_json(Some(&[0xff]))["encoding"], "hex");
    }
}

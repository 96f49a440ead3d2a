//! Reports (text and JSON) and the small formatting helpers they share.

use std::io::{self, Write};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use crate::Exit;
use crate::error::CliError;

/// What a command prints, in both forms, and how it ends.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) text: String,
    pub(crate) json: serde_json::Value,
    pub(crate) exit: Exit,
}

impl Report {
    pub(crate) fn ok(text: String, json: serde_json::Value) -> Self {
        Self::new(text, json, Exit::Ok)
    }

    pub(crate) fn new(text: String, json: serde_json::Value, exit: Exit) -> Self {
        Self { text, json, exit }
    }

    /// A failed command: `error: …` or `{"error": …, "exit_code": …}`.
    pub(crate) fn error(error: &CliError) -> Self {
        let exit = error.exit();
        let message = error.to_string();
        Self {
            text: format!("error: {message}\n"),
            json: json!({"error": message, "exit_code": exit.code()}),
            exit,
        }
    }

    pub(crate) fn write(&self, out: &mut dyn Write, json: bool) -> io::Result<()> {
        if json {
            let document = serde_json::to_string_pretty(&self.json).map_err(io::Error::other)?;
            writeln!(out, "{document}")
        } else {
            out.write_all(self.text.as_bytes())
        }
    }
}

/// Rows under a header, each column as wide as its widest cell, separated by two
/// spaces; no trailing spaces.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(i) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i + 1 < cells.len() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        line.truncate(line.trim_end().len());
        line.push('\n');
        line
    };
    let mut text = line(header.to_vec());
    for row in rows {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    text
}

/// A timestamp as RFC 3339 in UTC to the second, or `-`.
pub(crate) fn time(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "-".to_owned(),
        |at| at.to_rfc3339_opts(SecondsFormat::Secs, true),
    )
}

/// Bytes as UTF-8 text when they are, else as lowercase hex: `(encoding, text)`
/// with encoding `utf8` or `hex`.
pub(crate) fn bytes(data: &[u8]) -> (&'static str, String) {
    match std::str::from_utf8(data) {
        Ok(text) => ("utf8", text.to_owned()),
        Err(_) => ("hex", data.iter().map(|b| format!("{b:02x}")).collect()),
    }
}

/// A Kafka `*.ms` setting for people: `-1` is forever, else days/hours/minutes/
/// seconds when exact, with the raw value.
pub(crate) fn millis(value: &str) -> String {
    let Ok(ms) = value.trim().parse::<i64>() else {
        return value.to_owned();
    };
    if ms < 0 {
        return "forever (-1)".to_owned();
    }
    let human = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "min"),
        (1_000, "s"),
    ]
    .iter()
    .find(|(unit, _)| ms >= *unit && ms % unit == 0)
    .map(|(unit, suffix)| format!("{}{suffix}", ms / unit));
    match human {
        Some(human) => format!("{human} ({ms} ms)"),
        None => format!("{ms} ms"),
    }
}

/// A database URL without its password (in the user info or a `password=`
/// parameter).
pub(crate) fn redact_url(url: &str) -> String {
    let mut url = url.to_owned();
    if let Some(scheme_end) = url.find("://") {
        let rest = scheme_end + 3;
        let authority_end = url[rest..].find(['/', '?']).map_or(url.len(), |i| rest + i);
        if let Some(at) = url[rest..authority_end].rfind('@').map(|i| rest + i)
            && let Some(colon) = url[rest..at].find(':').map(|i| rest + i)
        {
            url.replace_range(colon + 1..at, "<redacted>");
        }
    }
    if let Some(query) = url.find('?') {
        let (base, params) = url.split_at(query + 1);
        let params: Vec<String> = params
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                    format!("{key}=<redacted>")
                }
                _ => param.to_owned(),
            })
            .collect();
        url = format!("{base}{}", params.join("&"));
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let text = table(
            &["projection", "lag"],
            &[
                vec!["a".to_owned(), "12".to_owned()],
                vec!["longer_name".to_owned(), "3".to_owned()],
            ],
        );
        assert_eq!(text, "projection   lag\na            12\nlonger_name  3\n");
    }

    #[test]
    fn bytes_are_text_when_utf8_else_hex() {
        assert_eq!(bytes(b"order-1"), ("utf8", "order-1".to_owned()));
        assert_eq!(bytes(&[0xff, 0x00, 0x1a]), ("hex", "ff001a".to_owned()));
    }

    #[test]
    fn millis_read_as_durations() {
        assert_eq!(millis("-1"), "forever (-1)");
        assert_eq!(millis("604800000"), "7d (604800000 ms)");
        assert_eq!(millis("3600000"), "1h (3600000 ms)");
        assert_eq!(millis("1500"), "1500 ms");
        assert_eq!(millis("x"), "x");
    }

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/shop"),
            "postgres://app:<redacted>@db:5432/shop"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/test"),
            "postgres://postgres@127.0.0.1:5432/test"
        );
        assert_eq!(
            redact_url("postgres://db/shop?user=app&password=hunter2&sslmode=require"),
            "postgres://db/shop?user=app&password=<redacted>&sslmode=require"
        );
    }

    #[test]
    fn errors_report_their_exit_code_in_json() {
        let report = Report::error(&CliError::NotFound("no projection `x`".to_owned()));
        assert_eq!(report.exit, Exit::Failed);
        assert_eq!(report.text, "error: no projection `x`\n");
        assert_eq!(report.json["exit_code"], 1);
    }
}

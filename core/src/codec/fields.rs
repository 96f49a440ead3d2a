//! Reading and writing the values of single headers: lookup with duplicate
//! detection, time, sequence and trace context formats.

use chrono::{DateTime, SecondsFormat, Utc};

use super::DecodeError;

pub(super) struct Headers<'r, 'a>(pub(super) &'r [(&'a str, Option<&'a [u8]>)]);

impl<'a> Headers<'_, 'a> {
    pub(super) fn optional_str(&self, name: &'static str) -> Result<Option<&'a str>, DecodeError> {
        let mut found = None;
        let mut count = 0;
        for (n, v) in self.0 {
            if *n == name {
                count += 1;
                found = Some(*v);
            }
        }
        if count > 1 {
            return Err(DecodeError::DuplicateHeader { name, count });
        }
        match found.flatten() {
            None => Ok(None),
            Some(bytes) => std::str::from_utf8(bytes)
                .map(Some)
                .map_err(|_| invalid_bytes(name, bytes, "not UTF-8")),
        }
    }

    pub(super) fn required_str(&self, name: &'static str) -> Result<&'a str, DecodeError> {
        self.optional_str(name)?
            .ok_or(DecodeError::MissingHeader { name })
    }
}

pub(super) fn lossy(bytes: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
    if bytes.len() > 200 {
        s.push('…');
    }
    s
}

pub(super) fn invalid(name: &'static str, value: &str, reason: &'static str) -> DecodeError {
    invalid_bytes(name, value.as_bytes(), reason)
}

pub(super) fn invalid_bytes(name: &'static str, value: &[u8], reason: &'static str) -> DecodeError {
    DecodeError::InvalidHeader {
        name,
        value: lossy(value),
        reason,
    }
}

/// A time as the wire format writes the `ce_time` header: RFC 3339, UTC (`Z`),
/// microseconds.
pub fn format_time(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// `ce_sequence`: zero-padded to 20 digits, so that the lexicographic order the
/// CloudEvents sequence extension prescribes equals the numeric order.
pub(crate) fn format_sequence(sequence: u64) -> String {
    format!("{sequence:020}")
}

pub(super) fn parse_sequence(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u64>().ok().filter(|&n| n > 0)
}

/// `00-{32 hex trace id}-{16 hex parent id}-{2 hex flags}`, ids not all zero.
pub(super) fn is_valid_traceparent(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    matches!(parts.as_slice(), [version, trace, parent, flags]
        if hex(version, 2) && *version != "ff"
            && hex(trace, 32) && trace.bytes().any(|b| b != b'0')
            && hex(parent, 16) && parent.bytes().any(|b| b != b'0')
            && hex(flags, 2))
}

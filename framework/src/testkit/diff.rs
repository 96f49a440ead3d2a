//! The kits' mismatch report: a unified line diff.

use std::fmt::Write as _;

/// `header`, then a line diff of the two texts (`-` expected, `+` actual).
pub(crate) fn line_diff(header: &str, expected: &str, actual: &str) -> String {
    let mut out = format!("{header}\ndiff (- expected, + actual):\n");
    for change in similar::TextDiff::from_lines(expected, actual).iter_all_changes() {
        let sign = match change.tag() {
            similar::ChangeTag::Delete => '-',
            similar::ChangeTag::Insert => '+',
            similar::ChangeTag::Equal => ' ',
        };
        let line = change.value();
        let _ = write!(out, "{sign} {line}");
        if !line.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_removed_and_added_lines() {
        let report = line_diff("unexpected rows", "a\nb\n", "a\nc\n");
        assert_eq!(
            report,
            "unexpected rows\ndiff (- expected, + actual):\n  a\n- b\n+ c\n"
        );
    }
}

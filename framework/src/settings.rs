//! Checks of the settings of processors and workers, so that a value the Kafka
//! client would refuse, or one that would overflow a deadline, is reported by
//! name before anything starts.

use std::fmt;
use std::time::Duration;

/// A setting outside the range the framework can honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("setting `{name}` is {value}, but it must be {expected}")]
pub struct InvalidSetting {
    /// The setting, as the field is named (`max_batch`, `session_timeout`, …).
    pub name: &'static str,
    /// The value given.
    pub value: String,
    /// The allowed range, in words.
    pub expected: String,
}

/// `value` must lie within `min..=max`.
pub(crate) fn duration_within(
    name: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), InvalidSetting> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(InvalidSetting {
        name,
        value: format!("{value:?}"),
        expected: format!("between {min:?} and {max:?}"),
    })
}

/// `value` must be at least `min`.
pub(crate) fn at_least<T: PartialOrd + fmt::Display>(
    name: &'static str,
    value: T,
    min: T,
) -> Result<(), InvalidSetting> {
    if value >= min {
        return Ok(());
    }
    Err(InvalidSetting {
        name,
        value: value.to_string(),
        expected: format!("at least {min}"),
    })
}

/// One hour: the most librdkafka accepts for `session.timeout.ms`.
pub(crate) const MAX_SESSION_TIMEOUT: Duration = Duration::from_secs(3600);
/// The most any other duration setting may be: long enough for any sensible
/// value, short enough that no deadline computed from it can overflow.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::*;

    #[test]
    fn durations_inside_the_range_pass_and_outside_name_the_setting() {
        let ms = Duration::from_millis;
        assert_eq!(duration_within("x", ms(5), ms(1), ms(10)), Ok(()));
        assert_eq!(duration_within("x", ms(1), ms(1), ms(10)), Ok(()));
        assert_eq!(duration_within("x", ms(10), ms(1), ms(10)), Ok(()));
        let error = duration_within("session_timeout", Duration::MAX, ms(1), MAX_SESSION_TIMEOUT)
            .expect_err("too long");
        assert_eq!(error.name, "session_timeout");
        assert!(
            error.to_string().contains("between 1ms and 3600s"),
            "{error}"
        );
        assert!(duration_within("x", Duration::ZERO, ms(1), ms(10)).is_err());
    }

    #[test]
    fn counts_below_the_minimum_are_refused() {
        assert_eq!(at_least("max_batch", 1_usize, 1), Ok(()));
        let error = at_least("max_batch", 0_usize, 1).expect_err("zero");
        assert_eq!(
            error.to_string(),
            "setting `max_batch` is 0, but it must be at least 1"
        );
    }
}

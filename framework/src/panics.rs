//! Turning a caught panic into words, for the error that reports it.

use std::any::Any;

/// The message a panic was raised with (`panic!("...")` gives a `&str` or a
/// `String`), or a placeholder for any other payload.
pub(crate) fn message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::*;

    #[test]
    fn the_message_of_a_str_a_string_or_anything_else() {
        let caught = |f: fn()| std::panic::catch_unwind(f).expect_err("panics");
        assert_eq!(message(caught(|| panic!("plain")).as_ref()), "plain");
        assert_eq!(message(caught(|| panic!("{}", 42)).as_ref()), "42");
        assert_eq!(
            message(caught(|| std::panic::panic_any(7_u8)).as_ref()),
            "a non-string panic payload"
        );
    }
}

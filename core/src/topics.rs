//! Topic names and event sources: the one place that spells them. Every topic of an
//! application starts with its prefix (checked by [`validate_prefix`]).

/// Why a topic prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid topic prefix {prefix:?}: use 1 to 200 ASCII letters, digits, '_' or '-' (dots separate the prefix from the aggregate name)"
)]
pub struct InvalidPrefix {
    /// The prefix given.
    pub prefix: String,
}

/// Checks a topic prefix: it becomes part of Kafka topic names. The gateway,
/// processors and workers call it before they build any topic name.
///
/// # Errors
/// [`InvalidPrefix`] unless the prefix is 1 to 200 ASCII letters, digits, `_` or
/// `-`.
pub fn validate_prefix(prefix: &str) -> Result<(), InvalidPrefix> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 200
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(InvalidPrefix {
            prefix: prefix.to_owned(),
        })
    }
}

/// The CloudEvents `ce_source` of an aggregate type's events: `/{prefix}/{aggregate}`.
pub fn event_source(prefix: &str, aggregate: &str) -> String {
    format!("/{prefix}/{aggregate}")
}

/// The commands topic of an aggregate type: `{prefix}.{aggregate}.commands`.
pub fn commands_topic(prefix: &str, aggregate: &str) -> String {
    format!("{prefix}.{aggregate}.commands")
}

/// The events topic of an aggregate type: `{prefix}.{aggregate}.events`.
pub fn events_topic(prefix: &str, aggregate: &str) -> String {
    format!("{prefix}.{aggregate}.events")
}

/// The outcomes topic of an aggregate type: `{prefix}.{aggregate}.outcomes`. One
/// record per processed command, co-partitioned with the commands topic; the
/// processor rebuilds its window of seen command ids from it.
pub fn outcomes_topic(prefix: &str, aggregate: &str) -> String {
    format!("{prefix}.{aggregate}.outcomes")
}

/// The replies topic shared by all aggregate types: `{prefix}.replies`.
pub fn replies_topic(prefix: &str) -> String {
    format!("{prefix}.replies")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_put_the_prefix_first_and_the_kind_last() {
        assert_eq!(commands_topic("shop", "order"), "shop.order.commands");
        assert_eq!(events_topic("shop", "order"), "shop.order.events");
        assert_eq!(outcomes_topic("shop", "order"), "shop.order.outcomes");
        assert_eq!(replies_topic("shop"), "shop.replies");
        assert_eq!(event_source("shop", "order"), "/shop/order");
    }

    #[test]
    fn a_prefix_is_letters_digits_underscores_and_dashes() {
        assert_eq!(validate_prefix("shop-prod_1"), Ok(()));
        for bad in ["", "shop.prod", "shop prod", "shöp", &"x".repeat(201)] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
    }
}

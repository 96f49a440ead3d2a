//! Topic names: the one place that spells them. Every topic of an application
//! starts with its prefix (checked by [`crate::codec::validate_prefix`]).

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
    }
}

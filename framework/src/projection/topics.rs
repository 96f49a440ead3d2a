//! Waiting for a worker's topics before it joins its group.
//!
//! A consumer that subscribes to several topics of which some do not exist yet gets
//! an assignment without them and, measured on Kafka 4.1 with librdkafka, does not
//! notice their creation until its next periodic metadata refresh
//! (`topic.metadata.refresh.interval.ms`, 5 minutes by default). In a deployment
//! started all at once, the projection workers often start before the command
//! processors have created the topics. So a worker first waits until every topic it
//! reads exists, then subscribes.

use std::time::Duration;

/// How long one metadata request may take while the worker waits.
pub(crate) const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// What the worker reports while it waits.
pub(crate) fn waiting_message(missing: &[String]) -> String {
    format!(
        "waiting for topic(s) {} to be created (the command processors create them \
         at start-up, or call `tributary::command::ensure_topics`)",
        missing.join(", ")
    )
}

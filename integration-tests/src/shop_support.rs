//! The sample shop as the tests start it: a [`ShopConfig`] on the test's broker,
//! database and schema.

use std::time::Duration;

use example_shop::app::ShopConfig;
use tributary::{KafkaConfig, PgStore};

use crate::{database_url, kafka_bootstrap};

/// The shop's configuration for one test: topics under `prefix`, read models and
/// checkpoints in `store`'s schema, `partitions` per topic, a 6 s session timeout (a
/// killed member's partitions move quickly) and a 10 s command timeout.
pub fn shop_config(prefix: &str, store: &PgStore, partitions: i32) -> ShopConfig {
    ShopConfig {
        kafka: KafkaConfig::new(kafka_bootstrap()),
        prefix: prefix.to_owned(),
        database_url: database_url(),
        schema: store.schema().to_owned(),
        partitions,
        session_timeout: Duration::from_secs(6),
        command_timeout: Duration::from_secs(10),
    }
}

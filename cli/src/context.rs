//! Connection settings, and the clients built from them.

use std::time::Duration;

use serde_json::json;
use tributary::{KafkaConfig, PgStore};

use crate::args::Global;
use crate::error::CliError;
use crate::output::{Report, redact_url};

/// What every command connects with.
pub(crate) struct Context {
    pub(crate) kafka: KafkaConfig,
    pub(crate) database_url: Option<String>,
    pub(crate) schema: String,
    /// For each Kafka request.
    pub(crate) timeout: Duration,
}

impl Context {
    /// The environment's settings, overridden by the global options.
    pub(crate) fn new(global: &Global) -> Self {
        let mut kafka = KafkaConfig::from_env();
        if let Some(servers) = &global.bootstrap_servers {
            kafka = kafka.set("bootstrap.servers", servers);
        }
        for (key, value) in &global.kafka_properties {
            kafka = kafka.set(key, value);
        }
        Self {
            kafka,
            database_url: global.database_url.clone().filter(|url| !url.is_empty()),
            schema: global.schema.clone(),
            timeout: Duration::from_secs(global.timeout.max(1)),
        }
    }

    /// A pool on the schema, without migrating it.
    pub(crate) async fn store(&self) -> Result<PgStore, CliError> {
        let url = self.database_url.as_deref().ok_or(CliError::NoDatabase)?;
        Ok(PgStore::connect_without_migrating(url, &self.schema).await?)
    }

    /// A pool on the schema, which must have every migration of this build.
    pub(crate) async fn migrated_store(&self) -> Result<PgStore, CliError> {
        let store = self.store().await?;
        let status = store.migration_status().await?;
        if status.is_current() {
            Ok(store)
        } else {
            Err(CliError::Unmigrated {
                schema: self.schema.clone(),
                missing: status
                    .missing
                    .iter()
                    .map(|(version, name)| format!("{version} ({name})"))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    }

    /// `tributary config`: the effective settings, secrets redacted.
    pub(crate) fn describe(&self) -> Report {
        let properties = self.kafka.redacted_properties();
        let url = self.database_url.as_deref().map(redact_url);
        let mut text = String::from("Kafka (KAFKA_BOOTSTRAP_SERVERS, TRIBUTARY_KAFKA_*, -X):\n");
        for (key, value) in &properties {
            text.push_str(&format!("  {key} = {value}\n"));
        }
        text.push_str(&format!(
            "Postgres:\n  DATABASE_URL = {}\n  schema = {}\n",
            url.as_deref().unwrap_or("(not set)"),
            self.schema
        ));
        let kafka: serde_json::Map<String, serde_json::Value> = properties
            .iter()
            .map(|(key, value)| ((*key).to_owned(), json!(value)))
            .collect();
        Report::ok(
            text,
            json!({"kafka": kafka, "database_url": url, "schema": self.schema}),
        )
    }
}

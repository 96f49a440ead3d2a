//! Kafka client configuration shared by every Tributary component.

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::ClientConfig;

/// Connection settings for the Kafka cluster: the bootstrap servers plus any
/// librdkafka property, passed through unchanged (TLS and SASL included:
/// `security.protocol`, `ssl.ca.location`, `sasl.mechanism`, `sasl.username`,
/// `sasl.password`, …; TLS needs the crate feature `tls`).
///
/// Secret values never appear in `Debug` output or logs.
#[derive(Clone)]
pub struct KafkaConfig {
    properties: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// Settings for the cluster at `bootstrap_servers` (`host:port[,host:port…]`).
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        let mut properties = BTreeMap::new();
        properties.insert("bootstrap.servers".to_owned(), bootstrap_servers.into());
        Self { properties }
    }

    /// Settings from `KAFKA_BOOTSTRAP_SERVERS` (default `127.0.0.1:9092`) and every
    /// `TRIBUTARY_KAFKA_<PROPERTY>` variable, where `<PROPERTY>` is a librdkafka
    /// property with `.` written as `_` (`TRIBUTARY_KAFKA_SECURITY_PROTOCOL=ssl`).
    pub fn from_env() -> Self {
        let bootstrap = std::env::var("KAFKA_BOOTSTRAP_SERVERS")
            .unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
        let mut config = Self::new(bootstrap);
        for (key, value) in std::env::vars() {
            if let Some(property) = key.strip_prefix("TRIBUTARY_KAFKA_") {
                config = config.set(property.to_ascii_lowercase().replace('_', "."), value);
            }
        }
        config
    }

    /// Sets any librdkafka property. Tributary's own required settings (such as
    /// `isolation.level` or `enable.idempotence`) are applied after these and win.
    #[must_use]
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// The value of a property, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.properties.get(key).map(String::as_str)
    }

    /// The bootstrap servers.
    pub fn bootstrap_servers(&self) -> &str {
        self.get("bootstrap.servers").unwrap_or_default()
    }

    /// Every property, sorted by name, with the value of each secret one
    /// ([`is_secret_property`]) replaced by `<redacted>`: safe to print.
    pub fn redacted_properties(&self) -> Vec<(&str, &str)> {
        self.properties
            .iter()
            .map(|(key, value)| {
                let shown = if is_secret_property(key) {
                    "<redacted>"
                } else {
                    value.as_str()
                };
                (key.as_str(), shown)
            })
            .collect()
    }

    /// An rdkafka client configuration with every property set.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

/// Whether a librdkafka property holds a secret that must never be printed.
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "jaas",
        "token",
        "credential",
        "ssl.key.pem",
        "private",
        "oauthbearer.config",
    ]
    .iter()
    .any(|needle| key.contains(needle))
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (key, value) in &self.properties {
            if is_secret_property(key) {
                map.entry(key, &"<redacted>");
            } else {
                map.entry(key, value);
            }
        }
        map.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_redacts_secrets() {
        let config = KafkaConfig::new("broker:9093")
            .set("security.protocol", "sasl_ssl")
            .set("sasl.username", "svc")
            .set("sasl.password", "hunter2")
            .set("ssl.key.password", "s3cret")
            .set("sasl.oauthbearer.client.secret", "abc123")
            .set("ssl.key.pem", "-----BEGIN PRIVATE KEY-----xyz");
        let debug = format!("{config:?}");
        for secret in ["hunter2", "s3cret", "abc123", "BEGIN PRIVATE KEY"] {
            assert!(!debug.contains(secret), "{secret} leaked: {debug}");
        }
        assert!(
            debug.contains("broker:9093") && debug.contains("svc") && debug.contains("sasl_ssl")
        );
        assert_eq!(config.get("sasl.password"), Some("hunter2"));
        let listed = format!("{:?}", config.redacted_properties());
        for secret in ["hunter2", "s3cret", "abc123", "BEGIN PRIVATE KEY"] {
            assert!(!listed.contains(secret), "{secret} leaked: {listed}");
        }
        assert!(listed.contains("(\"sasl.username\", \"svc\")"), "{listed}");
    }
}

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
    /// See [`KafkaConfig::from_vars`].
    pub fn from_env() -> Self {
        Self::from_vars(std::env::vars())
    }

    /// Settings from the `(name, value)` pairs of environment variables, read as
    /// [`KafkaConfig::from_env`] reads the process environment: the value of
    /// `KAFKA_BOOTSTRAP_SERVERS` (default `127.0.0.1:9092`) and, for each
    /// `TRIBUTARY_KAFKA_<PROPERTY>`, the librdkafka property `<property>` (lowercase,
    /// `_` becomes `.`: `TRIBUTARY_KAFKA_SASL_PASSWORD` sets `sasl.password`).
    /// Other variables are ignored.
    pub fn from_vars(vars: impl Iterator<Item = (String, String)>) -> Self {
        let mut bootstrap = None;
        let mut properties = Vec::new();
        for (key, value) in vars {
            if key == "KAFKA_BOOTSTRAP_SERVERS" {
                bootstrap = Some(value);
            } else if let Some(property) = key.strip_prefix("TRIBUTARY_KAFKA_") {
                properties.push((property.to_ascii_lowercase().replace('_', "."), value));
            }
        }
        let mut config = Self::new(bootstrap.unwrap_or_else(|| "127.0.0.1:9092".to_owned()));
        for (property, value) in properties {
            config = config.set(property, value);
        }
        config
    }

    /// Sets any librdkafka property. Tributary's own required settings (such as
    /// `isolation.level` or `enable.idempotence`) are applied after these and win.
    /// The tuning defaults it chose yield to a property set here: the producers'
    /// `linger.ms` (1), and a projection consumer's `fetch.queue.backoff.ms` (10)
    /// and `statistics.interval.ms` (1000).
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

    #[test]
    fn sasl_scram_over_tls_from_vars_passes_through_and_is_redacted() {
        let vars = [
            ("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9093,kafka-2:9093"),
            ("TRIBUTARY_KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ("TRIBUTARY_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("TRIBUTARY_KAFKA_SASL_USERNAME", "shop-processor"),
            ("TRIBUTARY_KAFKA_SASL_PASSWORD", "pa55-Wörd;x=1"),
            ("TRIBUTARY_KAFKA_SSL_CA_LOCATION", "/etc/tributary/ca.pem"),
            ("PATH", "/usr/bin"),
            ("KAFKA_OTHER", "ignored"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let config = KafkaConfig::from_vars(vars.into_iter());
        assert_eq!(config.bootstrap_servers(), "kafka-1:9093,kafka-2:9093");
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(config.get("sasl.username"), Some("shop-processor"));
        assert_eq!(config.get("sasl.password"), Some("pa55-Wörd;x=1"));
        assert_eq!(config.get("ssl.ca.location"), Some("/etc/tributary/ca.pem"));
        assert_eq!(config.get("path"), None);
        assert_eq!(config.get("other"), None);
        assert_eq!(
            config.client_config().get("sasl.password"),
            Some("pa55-Wörd;x=1")
        );

        let debug = format!("{config:?}");
        assert!(!debug.contains("pa55"), "password leaked: {debug}");
        assert!(
            debug.contains(r#""sasl.password": "<redacted>""#),
            "{debug}"
        );
        assert!(debug.contains("shop-processor") && debug.contains("SCRAM-SHA-512"));
        let pretty = format!("{config:#?}");
        assert!(!pretty.contains("pa55"), "password leaked: {pretty}");
    }

    #[test]
    fn from_vars_defaults_the_bootstrap_servers() {
        let config = KafkaConfig::from_vars(std::iter::empty());
        assert_eq!(config.bootstrap_servers(), "127.0.0.1:9092");
        assert_eq!(
            format!("{config:?}"),
            r#"{"bootstrap.servers": "127.0.0.1:9092"}"#
        );
    }
}

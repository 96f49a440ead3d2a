//! Upcasters: read events written with an older payload schema as the current type.
//!
//! Event types carry a version (`order.placed.v1`). When a payload's shape changes,
//! bump the variant's `#[event(version = N)]` and register one [`Upcaster`] per step
//! (v1 → v2, v2 → v3, …). Decoding a v1 record then runs v1 → v2 → … → current on
//! its JSON before deserializing it. The log itself is never rewritten.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

/// Why an upcaster could not convert a payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct UpcastError {
    message: String,
}

impl UpcastError {
    /// An error with a message saying what is wrong with the old payload.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

type UpcastFn = dyn Fn(Value) -> Result<Value, UpcastError> + Send + Sync;

/// Converts the JSON payload of one event type from `from_version` to `from_version + 1`.
#[derive(Clone)]
pub struct Upcaster {
    event: String,
    from_version: u32,
    convert: Arc<UpcastFn>,
}

impl Upcaster {
    /// An upcaster for the event type named `event` (`order.placed`, without version)
    /// from `from_version` to the next version.
    ///
    /// ```
    /// use tributary_core::Upcaster;
    /// let add_currency = Upcaster::new("order.placed", 1, |mut payload| {
    ///     payload["currency"] = "EUR".into();
    ///     Ok(payload)
    /// });
    /// ```
    pub fn new(
        event: impl Into<String>,
        from_version: u32,
        convert: impl Fn(Value) -> Result<Value, UpcastError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            event: event.into(),
            from_version,
            convert: Arc::new(convert),
        }
    }

    /// The event type name this upcaster converts.
    pub fn event(&self) -> &str {
        &self.event
    }

    /// The version it converts from; it produces `from_version + 1`.
    pub fn from_version(&self) -> u32 {
        self.from_version
    }
}

impl fmt::Debug for Upcaster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upcaster")
            .field("event", &self.event)
            .field("from_version", &self.from_version)
            .finish_non_exhaustive()
    }
}

/// Why an upcaster could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterUpcasterError {
    /// The event type name is not one of the event enum's types.
    #[error(
        "cannot register an upcaster for `{event}`: it is not an event type of `{aggregate}` (known: {known})"
    )]
    UnknownEvent {
        /// The name given.
        event: String,
        /// The aggregate of the event enum.
        aggregate: &'static str,
        /// The known event type names, comma-separated.
        known: String,
    },
    /// The upcaster would produce a version beyond the current one.
    #[error(
        "cannot register an upcaster for `{event}` from v{from_version}: the current version is \
         v{current}, so upcasters exist for v1..v{current} - 1; bump `#[event(version = ..)]` first"
    )]
    NotOlder {
        /// The event type name.
        event: String,
        /// The version it converts from.
        from_version: u32,
        /// The current version.
        current: u32,
    },
    /// An upcaster for this step is already registered.
    #[error("an upcaster for `{event}` from v{from_version} is already registered")]
    Duplicate {
        /// The event type name.
        event: String,
        /// The version it converts from.
        from_version: u32,
    },
}

/// The upcasters of one event enum, keyed by (event name, from version).
#[derive(Debug, Clone, Default)]
pub(crate) struct Upcasters {
    steps: BTreeMap<(String, u32), Upcaster>,
}

impl Upcasters {
    pub(crate) fn insert(&mut self, upcaster: Upcaster) -> Result<(), RegisterUpcasterError> {
        let key = (upcaster.event.clone(), upcaster.from_version);
        if self.steps.contains_key(&key) {
            return Err(RegisterUpcasterError::Duplicate {
                event: key.0,
                from_version: key.1,
            });
        }
        self.steps.insert(key, upcaster);
        Ok(())
    }

    /// Runs `payload` from `from` up to `to`. On failure returns the version whose
    /// step is missing ([`UpcastFailure::Missing`]) or the step that failed.
    pub(crate) fn run(
        &self,
        event: &str,
        from: u32,
        to: u32,
        mut payload: Value,
    ) -> Result<Value, UpcastFailure> {
        for version in from..to {
            let step = self
                .steps
                .get(&(event.to_owned(), version))
                .ok_or(UpcastFailure::Missing { version })?;
            payload = (step.convert)(payload)
                .map_err(|error| UpcastFailure::Failed { version, error })?;
        }
        Ok(payload)
    }
}

pub(crate) enum UpcastFailure {
    Missing { version: u32 },
    Failed { version: u32, error: UpcastError },
}

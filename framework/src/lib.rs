//! # Tributary
//!
//! Event sourcing and CQRS for Rust on an existing Kafka cluster.
//!
//! - Declare **aggregates**, **commands** and **domain events** with derive macros
//!   ([`Aggregate`], [`Command`], [`DomainEvent`]) and decide on commands in plain
//!   functions ([`Handle`], [`Apply`]).
//! - Events are Kafka records in the CloudEvents binary mode ([`EventCodec`],
//!   `docs/wire-format.md`), readable without Tributary.
//! - Old event versions are read through [`Upcaster`]s.
//! - Aggregates are tested without Kafka with the given/when/then kit in [`testkit`].
//!
//! See the repository's README and `docs/` for the architecture and guarantees.

mod aggregate;
pub mod codec;
pub mod command;
mod config;
mod envelope;
mod event;
pub mod fuzzing;
pub mod kafka;
pub mod projection;
mod store;
pub mod testkit;
mod upcast;

pub use aggregate::{Aggregate, AggregateId, Apply, Command, Handle};
pub use codec::{DecodeError, EncodeError, EncodedRecord, EventCodec, InvalidPrefix, RecordRef};
pub use config::{KafkaConfig, is_secret_property};
pub use envelope::{EventEnvelope, Metadata};
pub use event::{DomainEvent, EventType, PayloadError};
pub use store::{PgStore, StoreError};
pub use upcast::{UpcastError, Upcaster, UpcasterError};

#[cfg(feature = "derive")]
pub use tributary_derive::{Aggregate, Command, DomainEvent};

#[doc(hidden)]
pub mod __private {
    //! Support for the derive macros. Not a public API; may change in any release.
    pub use crate::event::derive_support::*;
    pub use serde;
    pub use serde_json;
}

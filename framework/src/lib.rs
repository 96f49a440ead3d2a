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
//! - Aggregates are tested without Kafka with the given/when/then kit in [`testkit`];
//!   with the `testkit` feature, projections (given events → expect rows) and process
//!   managers (given events → expect commands) too.
//!
//! See the repository's README and `docs/` for the architecture and guarantees.

// The domain model, the codec and the aggregate test kit live in the broker-free
// `tributary-core` crate; they are re-exported here at the same paths, so
// `tributary::codec::EventCodec` and `tributary_core::codec::EventCodec` are one type.
// `testkit` is the runtime's own module: it re-exports the core's aggregate kit and
// adds the projection and process-manager kits (feature `testkit`).
pub use tributary_core::{codec, topics};

pub mod command;
mod config;
pub mod fuzzing;
pub mod history;
pub mod kafka;
mod panics;
pub mod projection;
mod settings;
mod store;
pub mod telemetry;
pub mod testkit;
mod trace_context;

pub use config::{KafkaConfig, is_secret_property};
pub use settings::InvalidSetting;
pub use store::{LATEST_MIGRATION, MigrationStatus, PgStore, StoreError};
pub use tributary_core::{
    Aggregate, AggregateId, Apply, Command, CommandVisitor, DeclaresCommand, DecodeError,
    DomainEvent, EncodeError, EncodedRecord, EventCodec, EventEnvelope, EventType, Handle,
    InvalidPrefix, Metadata, PayloadError, RecordRef, RegisterUpcasterError, UpcastError, Upcaster,
};

/// The [rdkafka](https://docs.rs/rdkafka/0.39) crate this runtime is built on,
/// re-exported on purpose: a few of its types appear in Tributary's public API
/// (`KafkaConfig::client_config` returns an `rdkafka::ClientConfig`,
/// [`kafka::KafkaOpError`] carries an `rdkafka::error::KafkaError`,
/// [`kafka::record_ref`] reads any `rdkafka::Message`). Name them through
/// `tributary::rdkafka` so that they always match the version Tributary was built
/// with (0.39, librdkafka 2.12); a minor release of Tributary may move to a newer
/// rdkafka. The domain crate `tributary-core` exposes no rdkafka type.
pub use rdkafka;

#[doc(hidden)]
pub use tributary_core::__private;

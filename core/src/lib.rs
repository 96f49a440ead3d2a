//! # Tributary core
//!
//! The broker-free half of [Tributary](https://docs.rs/tributary): everything a
//! domain crate needs, with no Kafka client and no database driver, so it compiles
//! in seconds and tests without services.
//!
//! - **Aggregates, commands and domain events**: [`Aggregate`], [`Command`],
//!   [`DomainEvent`], decided in plain functions ([`Handle`], [`Apply`]), declared
//!   with the derive macros of the same names (feature `derive`, on by default).
//! - **The wire format**: [`EventCodec`] turns events into CloudEvents binary-mode
//!   records ([`EncodedRecord`]) and back ([`RecordRef`]), through [`Upcaster`]s for
//!   old versions.
//! - **The given/when/then test kit** for aggregates: [`testkit`].
//!
//! The `tributary` crate re-exports all of this at the same paths and adds the Kafka
//! runtime (command gateway and processor, projections, snapshots). Depend on
//! `tributary-core` alone in crates that only hold the domain model.

mod aggregate;
pub mod codec;
mod envelope;
mod event;
pub mod testkit;
pub mod topics;
mod upcast;

pub use aggregate::{
    Aggregate, AggregateId, Apply, Command, CommandVisitor, DeclaresCommand, Handle,
};
pub use codec::{DecodeError, EncodeError, EncodedRecord, EventCodec, RecordRef};
pub use envelope::{EventEnvelope, Metadata};
pub use event::{DomainEvent, EventType, PayloadError};
pub use topics::InvalidPrefix;
pub use upcast::{RegisterUpcasterError, UpcastError, Upcaster};

#[cfg(feature = "derive")]
pub use tributary_derive::{Aggregate, Command, DomainEvent};

#[doc(hidden)]
pub mod __private {
    //! Support for the derive macros. Not a public API; may change in any release.
    pub use crate::aggregate::{assert_declared, has_duplicate, str_eq};
    pub use crate::event::derive_support::*;
    pub use serde;
    pub use serde_json;
}

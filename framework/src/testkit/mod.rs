//! Test kits: given/when/then for aggregates, and — with the `testkit` feature —
//! given events → expect read-model rows for projections, and given events → expect
//! commands for process managers.
//!
//! [`AggregateTest`] is the broker-free kit of `tributary-core`, re-exported here.
//! The others need the feature; enable it for tests only:
//!
//! ```toml
//! [dev-dependencies]
//! tributary = { version = "0.1", features = ["testkit"] }
//! ```
//!
//! - `ProjectionTest` runs a projection's handlers on a real Postgres schema of its
//!   own, in transactions as a worker does, and compares the rows a query returns.
//! - `ProcessManagerTest` runs a process manager's [`PlansCommands`] decisions and
//!   compares the planned commands, ids included.
//! - `envelope` builds deterministic test envelopes.
//!
//! Failures panic with a line diff (`- expected`, `+ actual`), like the aggregate kit.
//! See `docs/testing.md`.
//!
//! [`PlansCommands`]: crate::command::PlansCommands

pub use tributary_core::testkit::*;

#[cfg(feature = "testkit")]
mod envelope;
#[cfg(feature = "testkit")]
mod process_manager;
#[cfg(feature = "testkit")]
mod projection;

#[cfg(feature = "testkit")]
pub use envelope::{TEST_EPOCH, envelope};
#[cfg(feature = "testkit")]
pub use process_manager::ProcessManagerTest;
#[cfg(feature = "testkit")]
pub use projection::{ProjectionTest, unique_schema};

//! Tributary's e-commerce sample: orders, inventory and customer notifications.
//!
//! - [`order`] and [`inventory`]: the aggregates, with given/when/then tests;
//! - [`saga`]: the process manager that links them;
//! - [`projections`]: the Postgres read models;
//! - [`api`]: the HTTP API; [`auth`]: who may call it; [`app`]: configuration and roles; [`load`]: the load
//!   generator used by `--demo` and the end-to-end test.
//!
//! See `examples/shop/README.md` for the flow.

pub mod api;
pub mod app;
pub mod auth;
pub mod inventory;
pub mod load;
pub mod metrics;
pub mod order;
pub mod projections;
pub mod saga;

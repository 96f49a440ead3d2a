//! Tributary's e-commerce sample: the domain.

pub mod order;

//! Derive macros for Tributary. Use them through `tributary` (feature `derive`).
use proc_macro::TokenStream;

/// Derives `tributary::DomainEvent`.
#[proc_macro_derive(DomainEvent, attributes(event))]
pub fn derive_domain_event(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}
/// Derives `tributary::Command`.
#[proc_macro_derive(Command, attributes(command, aggregate_id))]
pub fn derive_command(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}
/// Derives `tributary::Aggregate`.
#[proc_macro_derive(Aggregate, attributes(aggregate))]
pub fn derive_aggregate(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}

//! Derive macros for Tributary. Use them through `tributary` or `tributary-core`
//! (feature `derive`, on by default): `#[derive(DomainEvent)]`, `#[derive(Command)]`
//! and `#[derive(Aggregate)]`. The generated code names whichever of the two the
//! deriving crate depends on (`tributary` first), under the name its manifest gives
//! it; `crate = "..."` overrides that.
//!
//! Each entry point parses the input and hands it to one module; attribute parsing is
//! shared in `attr`, which collects every mistake so that all of them are reported in
//! one compilation.

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

mod aggregate;
mod attr;
mod command;
mod domain_event;

/// Derives `tributary_core::DomainEvent` for an enum with one variant per event type.
///
/// ```text
/// #[derive(Debug, Serialize, Deserialize, DomainEvent)]
/// #[event(aggregate = Order)]            // required: the aggregate type
/// enum OrderEvent {
///     Placed { customer: String },       // order.placed.v1
///     #[event(version = 2)]              // order.cancelled.v2
///     Cancelled { reason: String },
///     #[event(name = "lines_added")]     // order.lines_added.v1
///     ItemsAdded(Vec<Line>),
/// }
/// ```
///
/// Container keys: `aggregate = Type`, `crate = "path::to::tributary"` (default: see the
/// crate docs). Variant keys: `version = N` (default 1), `name = "..."` (default: the
/// variant in snake_case).
///
/// The event types' names start with the aggregate's name (`order`, from its
/// `#[aggregate(name = ..)]`), joined at compile time. It is a compile error if the
/// type is not an aggregate or if its `event = ..` is another enum.
#[proc_macro_derive(DomainEvent, attributes(event))]
pub fn derive_domain_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    domain_event::expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Derives `tributary_core::Command` for a struct with one field marked `#[aggregate_id]`.
///
/// ```text
/// #[derive(Debug, Serialize, Deserialize, Command)]
/// #[command(aggregate = Order)]          // required: the aggregate type
/// struct PlaceOrder { #[aggregate_id] order_id: OrderId, customer: String }
/// ```
///
/// Keys: `aggregate = Type`, `name = "..."` (default: the struct in snake_case),
/// `crate = "path::to::tributary"` (default: see the crate docs). The `#[aggregate_id]` field's type must implement
/// `Display`.
///
/// The aggregate must list the command in its `#[aggregate(commands(..))]`: it is a
/// compile error ("`PlaceOrder` is not in the command list of `Order`", at
/// `aggregate = Order`) if it does not, since no processor would decide it. Generic
/// commands are not checked (list each instance, e.g. `Annotate<String>`).
#[proc_macro_derive(Command, attributes(command, aggregate_id))]
pub fn derive_command(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    command::expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Derives `tributary_core::Aggregate` for a struct or enum.
///
/// ```text
/// #[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
/// #[aggregate(name = "order", event = OrderEvent, error = OrderError, snapshot_every = 100)]
/// #[aggregate(commands(PlaceOrder, ConfirmOrder, orders::CancelOrder))]
/// struct Order { lines: Vec<Line> }
/// ```
///
/// Keys: `name = "..."` (`[a-z][a-z0-9_-]*`), `event = Type`, `error = Type` (required),
/// `commands(Type, ..)` (default: none), `snapshot_every = N` (default: no periodic
/// snapshots), `state_version = N` (default 1), `crate = "path::to::tributary"`
/// (default: see the crate docs). The event enum must be this aggregate's own:
/// `#[event(aggregate = Order)]` on `OrderEvent`; this is checked at compile time.
///
/// `commands(..)` is the one place that declares the aggregate's commands, by type
/// (names or paths, each once). It generates `Aggregate::COMMANDS` (their names),
/// `Aggregate::visit_commands` (from which the command processor builds its dispatch
/// table) and a `DeclaresCommand<C>` impl per command (which the gateway requires to
/// send `C`). Compile errors, each at the name in the list: a command without an
/// `impl Handle<C> for Order`, or whose `#[command(aggregate = ..)]` is another
/// aggregate; and, from `#[derive(Command)]`, a command of `Order` missing from the
/// list. Two listed commands with the same `Command::NAME` fail const evaluation. An aggregate without the key declares no commands (one that only exists for
/// its events); its processor refuses to start.
#[proc_macro_derive(Aggregate, attributes(aggregate))]
pub fn derive_aggregate(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    aggregate::expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

//! Commands a process manager decided to send, kept apart from sending them.
//!
//! A process manager reacts to events by sending commands. Splitting the decision
//! ([`PlansCommands::plan`], a pure function of the event) from the sending
//! ([`PlannedCommand::send`]) lets the decision be tested without Kafka, ids
//! included (`tributary::testkit::ProcessManagerTest`, feature `testkit`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use super::gateway::{CommandGateway, CommandOutcome, GatewayError, SendOptions};
use crate::DomainEvent;
use crate::{Aggregate, AggregateId, Command, DeclaresCommand};
use crate::{EventEnvelope, Metadata};

/// The decisions of a process manager for the events of one aggregate type: which
/// commands an event calls for. Implement it once per event enum the process
/// manager reads, and send the plan from its `Handles<E>` impl.
///
/// The plan must depend on the event alone (no clock, no random ids), so that a
/// replayed event plans the same command ids and the processors answer them with
/// their original outcomes instead of acting twice.
pub trait PlansCommands<E: DomainEvent> {
    /// The commands `event` calls for, in order (possibly none).
    fn plan(&self, event: &EventEnvelope<E>) -> Vec<PlannedCommand>;
}

/// One command a process manager decided to send: the command, its id, and the
/// correlation id and trace context it carries. Commands of different aggregates
/// share one type, so a plan is a plain `Vec<PlannedCommand>`.
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # use tributary::{Aggregate, Apply, Command, DomainEvent, Metadata};
/// # #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
/// # #[event(aggregate = Inventory)]
/// # enum InventoryEvent { Reserved { quantity: u64 } }
/// # #[derive(Debug, Serialize, Deserialize, thiserror::Error)]
/// # #[error("no stock")]
/// # struct NoStock;
/// # #[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
/// # #[aggregate(name = "inventory", event = InventoryEvent, error = NoStock, commands(ReserveStock))]
/// # struct Inventory { units: u64 }
/// # impl Apply<InventoryEvent> for Inventory { fn apply(&mut self, _: &InventoryEvent) {} }
/// # impl tributary::Handle<ReserveStock> for Inventory {
/// #     fn handle(&self, _: ReserveStock) -> Result<Vec<InventoryEvent>, NoStock> { Err(NoStock) }
/// # }
/// #[derive(Debug, Serialize, Deserialize, Command)]
/// #[command(aggregate = Inventory)]
/// struct ReserveStock { #[aggregate_id] sku: String, quantity: u64 }
/// use tributary::command::PlannedCommand;
///
/// let cause = Metadata { correlation_id: Some("flow-1".into()), ..Metadata::default() };
/// let planned = PlannedCommand::new("cmd-1", ReserveStock { sku: "tea".into(), quantity: 2 })
///     .caused_by(&cause);
/// assert_eq!(planned.command_id(), "cmd-1");
/// assert_eq!((planned.aggregate(), planned.command_name()), ("inventory", "reserve_stock"));
/// assert_eq!(planned.aggregate_id().as_str(), "tea");
/// assert_eq!(planned.correlation_id(), Some("flow-1"));
/// assert_eq!(planned.to_json()?, serde_json::json!({ "sku": "tea", "quantity": 2 }));
/// // In the process manager's handler: `planned.send(&gateway).await?`
/// # Ok::<(), serde_json::Error>(())
/// ```
pub struct PlannedCommand {
    command_id: String,
    aggregate_id: AggregateId,
    correlation_id: Option<String>,
    traceparent: Option<String>,
    command: Box<dyn ErasedCommand>,
}

/// What the processor decided on a [`PlannedCommand`], without the aggregate's
/// types (see [`CommandOutcome`] for the typed form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DispatchOutcome {
    /// The command was accepted; the aggregate is now at `version`.
    Accepted {
        /// The aggregate's version after the command.
        version: u64,
        /// How many events the command emitted.
        events: usize,
    },
    /// The handler rejected the command; the error's `Display` text.
    Rejected(String),
}

type SendFuture = Pin<Box<dyn Future<Output = Result<DispatchOutcome, GatewayError>> + Send>>;

/// A command with its type erased: what a [`PlannedCommand`] needs of it.
trait ErasedCommand: Send + Sync + 'static {
    fn aggregate(&self) -> &'static str;
    fn name(&self) -> &'static str;
    fn to_json(&self) -> Result<serde_json::Value, serde_json::Error>;
    fn debug(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
    fn send(self: Box<Self>, gateway: CommandGateway, options: SendOptions) -> SendFuture;
}

impl<C> ErasedCommand for C
where
    C: Command,
    C::Aggregate: DeclaresCommand<C>,
{
    fn aggregate(&self) -> &'static str {
        <C::Aggregate as Aggregate>::NAME
    }

    fn name(&self) -> &'static str {
        C::NAME
    }

    fn to_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(self)
    }

    fn debug(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }

    fn send(self: Box<Self>, gateway: CommandGateway, options: SendOptions) -> SendFuture {
        Box::pin(async move {
            Ok(match gateway.send_with(*self, options).await? {
                CommandOutcome::Accepted { version, events } => DispatchOutcome::Accepted {
                    version,
                    events: events.len(),
                },
                CommandOutcome::Rejected(error) => DispatchOutcome::Rejected(error.to_string()),
            })
        })
    }
}

impl PlannedCommand {
    /// Plans `command` with the id `command_id`. Derive the id from the triggering
    /// event (e.g. a UUIDv5 of the event id and the step), never at random, so that
    /// a redelivered event plans the same id.
    pub fn new<C>(command_id: impl Into<String>, command: C) -> Self
    where
        C: Command,
        C::Aggregate: DeclaresCommand<C>,
    {
        Self {
            command_id: command_id.into(),
            aggregate_id: command.aggregate_id(),
            correlation_id: None,
            traceparent: None,
            command: Box::new(command),
        }
    }

    /// Carries the correlation id and trace context of `cause` (the triggering
    /// event's metadata), so that the whole flow shares one correlation id and trace.
    #[must_use]
    pub fn caused_by(mut self, cause: &Metadata) -> Self {
        self.correlation_id.clone_from(&cause.correlation_id);
        self.traceparent.clone_from(&cause.traceparent);
        self
    }

    /// The command id.
    pub fn command_id(&self) -> &str {
        &self.command_id
    }

    /// The target aggregate type's name (`inventory`).
    pub fn aggregate(&self) -> &'static str {
        self.command.aggregate()
    }

    /// The command type's name (`reserve_stock`).
    pub fn command_name(&self) -> &'static str {
        self.command.name()
    }

    /// The target aggregate instance.
    pub fn aggregate_id(&self) -> &AggregateId {
        &self.aggregate_id
    }

    /// The correlation id it carries; the command id is used when `None`.
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }

    /// The W3C trace context it continues; a new trace is started when `None`.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// The command as JSON, as the gateway serializes it (for comparisons in tests).
    pub fn to_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        self.command.to_json()
    }

    /// The options [`PlannedCommand::send`] sends with: its command id, correlation
    /// id and trace context, and the gateway's default timeout. The trace context
    /// is the cause's (the event's: [`PlannedCommand::caused_by`]), so the command
    /// joins the trace of the command that wrote the event; without a cause, with
    /// the `otel` feature, the current span's.
    pub fn send_options(&self) -> SendOptions {
        SendOptions {
            command_id: Some(self.command_id.clone()),
            correlation_id: self.correlation_id.clone(),
            traceparent: self
                .traceparent
                .clone()
                .or_else(|| crate::trace_context::traceparent_of(&tracing::Span::current())),
            timeout: None,
        }
    }

    /// Sends the command through `gateway` with [`PlannedCommand::send_options`] and
    /// waits for its outcome. The future owns a clone of the gateway, so it can be
    /// spawned. Resending a planned command is idempotent (same command id).
    pub fn send(
        self,
        gateway: &CommandGateway,
    ) -> impl Future<Output = Result<DispatchOutcome, GatewayError>> + Send + 'static {
        let options = self.send_options();
        self.command.send(gateway.clone(), options)
    }
}

impl fmt::Debug for PlannedCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Erased<'a>(&'a dyn ErasedCommand);
        impl fmt::Debug for Erased<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.debug(f)
            }
        }
        f.debug_struct("PlannedCommand")
            .field("command_id", &self.command_id)
            .field("aggregate", &self.aggregate())
            .field("command_name", &self.command_name())
            .field("aggregate_id", &self.aggregate_id)
            .field("correlation_id", &self.correlation_id)
            .field("traceparent", &self.traceparent)
            .field("command", &Erased(self.command.as_ref()))
            .finish()
    }
}

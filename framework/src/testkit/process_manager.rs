//! Given events → expect commands, for process managers.

use crate::DomainEvent;
use crate::EventEnvelope;
use crate::command::{PlannedCommand, PlansCommands};

use tributary_core::testkit::line_diff;

/// Runs a process manager's decisions ([`PlansCommands`]) on given events and
/// compares the commands it plans, ids, correlation and trace context included. No
/// Kafka: nothing is sent.
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # use tributary::{Aggregate, Apply, Command, DomainEvent, EventEnvelope};
/// # #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
/// # #[event(aggregate = Order)]
/// # enum OrderEvent { Placed { skus: Vec<String> } }
/// # #[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
/// # #[aggregate(name = "order", event = OrderEvent, error = NoStock)]
/// # struct Order;
/// # impl Apply<OrderEvent> for Order { fn apply(&mut self, _: &OrderEvent) {} }
/// # #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
/// # #[event(aggregate = Inventory)]
/// # enum InventoryEvent { Reserved { order_id: String } }
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
/// struct ReserveStock { #[aggregate_id] sku: String, order_id: String }
///
/// use tributary::command::{PlannedCommand, PlansCommands};
/// use tributary::testkit::{ProcessManagerTest, envelope};
///
/// struct Fulfilment;
///
/// impl PlansCommands<OrderEvent> for Fulfilment {
///     fn plan(&self, e: &EventEnvelope<OrderEvent>) -> Vec<PlannedCommand> {
///         let OrderEvent::Placed { skus } = &e.event;
///         skus.iter()
///             .map(|sku| {
///                 let cmd = ReserveStock { sku: sku.clone(), order_id: e.aggregate_id.to_string() };
///                 PlannedCommand::new(format!("{}/reserve/{sku}", e.id), cmd).caused_by(&e.metadata)
///             })
///             .collect()
///     }
/// }
///
/// let placed = envelope("o-1", 1, OrderEvent::Placed { skus: vec!["tea".into()] });
/// let id = format!("{}/reserve/tea", placed.id);
/// ProcessManagerTest::new(Fulfilment)
///     .given([placed])
///     .expect_commands([PlannedCommand::new(
///         id,
///         ReserveStock { sku: "tea".into(), order_id: "o-1".into() },
///     )]);
/// ```
#[derive(Debug)]
pub struct ProcessManagerTest<P> {
    process_manager: P,
    given: Vec<String>,
    planned: Vec<PlannedCommand>,
}

impl<P> ProcessManagerTest<P> {
    /// A test of `process_manager`, with no events given yet.
    pub fn new(process_manager: P) -> Self {
        Self {
            process_manager,
            given: Vec::new(),
            planned: Vec::new(),
        }
    }

    /// Plans the commands for each of `events`, in order, and adds them to the
    /// commands planned so far. Call it again for events of another aggregate type.
    #[must_use]
    pub fn given<E: DomainEvent>(
        mut self,
        events: impl IntoIterator<Item = EventEnvelope<E>>,
    ) -> Self
    where
        P: PlansCommands<E>,
    {
        for event in events {
            self.given.push(format!(
                "{} {}#{} {:?}",
                E::AGGREGATE,
                event.aggregate_id,
                event.sequence,
                event.event
            ));
            self.planned.extend(self.process_manager.plan(&event));
        }
        self
    }

    /// The commands planned for the given events, in order.
    pub fn commands(&self) -> &[PlannedCommand] {
        &self.planned
    }

    /// Asserts the given events planned exactly these commands, in order: same
    /// command ids, aggregates, commands (compared as JSON), correlation ids and
    /// trace contexts. On mismatch panics with a line diff.
    #[track_caller]
    pub fn expect_commands(self, expected: impl IntoIterator<Item = PlannedCommand>) {
        let expected: Vec<PlannedCommand> = expected.into_iter().collect();
        let expected_text = describe(&expected);
        let actual_text = describe(&self.planned);
        if expected_text != actual_text {
            panic!(
                "{}",
                line_diff(
                    &format!(
                        "unexpected commands\ngiven events:\n  {}",
                        self.given.join("\n  ")
                    ),
                    &expected_text,
                    &actual_text
                )
            );
        }
    }

    /// Asserts the given events planned no command.
    #[track_caller]
    pub fn expect_no_commands(self) {
        self.expect_commands([]);
    }
}

/// One JSON object per command, pretty-printed, fields in a fixed order.
#[track_caller]
fn describe(commands: &[PlannedCommand]) -> String {
    let list: Vec<serde_json::Value> = commands
        .iter()
        .map(|c| {
            let command = c.to_json().unwrap_or_else(|error| {
                panic!("command {c:?} does not serialize to JSON: {error}")
            });
            serde_json::json!({
                "command_id": c.command_id(),
                "aggregate": c.aggregate(),
                "aggregate_id": c.aggregate_id().as_str(),
                "command_name": c.command_name(),
                "correlation_id": c.correlation_id(),
                "traceparent": c.traceparent(),
                "command": command,
            })
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&list).unwrap_or_else(|e| format!("{list:?}: {e}"));
    text.push('\n');
    text
}

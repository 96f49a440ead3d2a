//! The order-fulfilment process manager: it links orders and inventory.
//!
//! ```text
//! order.placed        → inventory ReserveStock for each line
//! inventory.reserved  → order RecordReservation (reserved)
//! inventory.reservation_rejected → order RecordReservation (rejected) → order.cancelled
//! order.cancelled     → inventory ReleaseStock for each line
//! order.shipped       → inventory ShipStock for each line
//! ```
//!
//! It runs as a projection worker ([`tributary::projection`]) whose "read model" is
//! the set of commands it has sent: a batch's checkpoint commits only after every
//! command of the batch has an outcome. Each command id is derived from the id of
//! the event that triggered it (docs/process-managers.md), so after a crash the redelivered
//! events send the same ids and the processors answer with the original outcomes
//! instead of acting twice. No saga state is kept: what the flow has to remember
//! lives in the aggregates (the order knows which lines are reserved; the inventory
//! knows which orders it released).

use sqlx::PgConnection;
use tokio::task::JoinSet;
use tributary::command::{CommandGateway, CommandOutcome, GatewayError, SendOptions};
use tributary::projection::{HandlerError, Handles, Projection};
use tributary::{Aggregate, Command, EventEnvelope, Handle, Metadata};
use uuid::Uuid;

use crate::inventory::{InventoryEvent, ReleaseStock, ReserveStock, ShipStock};
use crate::order::{OrderEvent, RecordReservation};

/// Namespace of the saga's deterministic command ids (UUIDv5).
const COMMAND_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6a1f_3c2e_9b7d_4e55_8f10_2c3d_4e5f_6071);

/// The command id the saga uses for the `step` it takes because of `event`:
/// the same event always gives the same id.
pub fn command_id(event: Uuid, step: &str) -> String {
    Uuid::new_v5(&COMMAND_ID_NAMESPACE, format!("{event}/{step}").as_bytes()).to_string()
}

/// The process manager. Run it with a [`tributary::projection::ProjectionWorker`]
/// subscribed to the order and inventory events.
#[derive(Debug, Clone)]
pub struct Fulfilment {
    gateway: CommandGateway,
}

impl Fulfilment {
    /// A process manager sending through `gateway`.
    pub fn new(gateway: CommandGateway) -> Self {
        Self { gateway }
    }
}

/// One command to send, boxed so that commands of both aggregates share a list.
type Step = std::pin::Pin<Box<dyn Future<Output = Result<(), GatewayError>> + Send>>;

fn step<C>(gateway: &CommandGateway, command: C, id: String, cause: &Metadata) -> Step
where
    C: Command,
    C::Aggregate: Handle<C>,
{
    let gateway = gateway.clone();
    let options = SendOptions {
        command_id: Some(id),
        correlation_id: cause.correlation_id.clone(),
        traceparent: cause.traceparent.clone(),
        timeout: None,
    };
    Box::pin(async move {
        match gateway.send_with(command, options).await? {
            CommandOutcome::Accepted { .. } => {}
            // A rejection is an answer too (e.g. an answer for an order that is
            // already decided); the flow has nothing more to do for it.
            CommandOutcome::Rejected(error) => tracing::debug!(
                aggregate = <C::Aggregate as Aggregate>::NAME,
                command = C::NAME,
                %error,
                "saga command rejected"
            ),
        }
        Ok(())
    })
}

impl Fulfilment {
    fn order_steps(&self, e: &EventEnvelope<OrderEvent>) -> Vec<Step> {
        let order_id = e.aggregate_id.as_str();
        match &e.event {
            OrderEvent::Placed { lines, .. } => lines
                .iter()
                .map(|line| {
                    let cmd = ReserveStock {
                        sku: line.sku.clone(),
                        order_id: order_id.to_owned(),
                        quantity: u64::from(line.quantity),
                    };
                    let id = command_id(e.id, &format!("reserve/{}", line.sku));
                    step(&self.gateway, cmd, id, &e.metadata)
                })
                .collect(),
            OrderEvent::Cancelled { skus, .. } => skus
                .iter()
                .map(|sku| {
                    let cmd = ReleaseStock {
                        sku: sku.clone(),
                        order_id: order_id.to_owned(),
                    };
                    step(
                        &self.gateway,
                        cmd,
                        command_id(e.id, &format!("release/{sku}")),
                        &e.metadata,
                    )
                })
                .collect(),
            OrderEvent::Shipped { skus, .. } => skus
                .iter()
                .map(|sku| {
                    let cmd = ShipStock {
                        sku: sku.clone(),
                        order_id: order_id.to_owned(),
                    };
                    step(
                        &self.gateway,
                        cmd,
                        command_id(e.id, &format!("ship/{sku}")),
                        &e.metadata,
                    )
                })
                .collect(),
            OrderEvent::LineReserved { .. } | OrderEvent::Confirmed { .. } | OrderEvent::Paid => {
                vec![]
            }
        }
    }

    fn inventory_steps(&self, e: &EventEnvelope<InventoryEvent>) -> Vec<Step> {
        let sku = e.aggregate_id.as_str().to_owned();
        let (order_id, rejected) = match &e.event {
            InventoryEvent::Reserved { order_id, .. } => (order_id.clone(), None),
            InventoryEvent::ReservationRejected {
                order_id, reason, ..
            } => (order_id.clone(), Some(reason.clone())),
            InventoryEvent::Restocked { .. }
            | InventoryEvent::Released { .. }
            | InventoryEvent::Shipped { .. } => return vec![],
        };
        let cmd = RecordReservation {
            order_id,
            sku,
            rejected,
        };
        vec![step(
            &self.gateway,
            cmd,
            command_id(e.id, "answer"),
            &e.metadata,
        )]
    }
}

/// Sends every step at once and waits for all outcomes; the first failure fails the
/// batch (the worker retries it, and the resends are idempotent).
async fn run_all(steps: Vec<Step>) -> Result<(), HandlerError> {
    let mut set = JoinSet::new();
    for s in steps {
        set.spawn(s);
    }
    let mut first_error: Option<HandlerError> = None;
    while let Some(joined) = set.join_next().await {
        let result: Result<(), HandlerError> = match joined {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

impl Projection for Fulfilment {
    const NAME: &'static str = "order_fulfilment";

    async fn reset(&self, _tx: &mut PgConnection) -> Result<(), HandlerError> {
        // Nothing to empty: replaying the log resends the same command ids, which
        // the processors answer from their outcomes without acting again.
        Ok(())
    }
}

impl Handles<OrderEvent> for Fulfilment {
    const BATCHED: bool = true;

    async fn handle(
        &self,
        event: &EventEnvelope<OrderEvent>,
        _tx: &mut PgConnection,
    ) -> Result<(), HandlerError> {
        run_all(self.order_steps(event)).await
    }

    async fn handle_batch(
        &self,
        events: &[&EventEnvelope<OrderEvent>],
        _tx: &mut PgConnection,
    ) -> Result<(), HandlerError> {
        run_all(events.iter().flat_map(|e| self.order_steps(e)).collect()).await
    }
}

impl Handles<InventoryEvent> for Fulfilment {
    const BATCHED: bool = true;

    async fn handle(
        &self,
        event: &EventEnvelope<InventoryEvent>,
        _tx: &mut PgConnection,
    ) -> Result<(), HandlerError> {
        run_all(self.inventory_steps(event)).await
    }

    async fn handle_batch(
        &self,
        events: &[&EventEnvelope<InventoryEvent>],
        _tx: &mut PgConnection,
    ) -> Result<(), HandlerError> {
        run_all(
            events
                .iter()
                .flat_map(|e| self.inventory_steps(e))
                .collect(),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_ids_are_deterministic_per_event_and_step() {
        let event = Uuid::now_v7();
        assert_eq!(
            command_id(event, "reserve/tea"),
            command_id(event, "reserve/tea")
        );
        assert_ne!(
            command_id(event, "reserve/tea"),
            command_id(event, "reserve/mug")
        );
        assert_ne!(
            command_id(event, "answer"),
            command_id(Uuid::now_v7(), "answer")
        );
    }
}

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
use tributary::EventEnvelope;
use tributary::command::{CommandGateway, DispatchOutcome, PlannedCommand, PlansCommands};
use tributary::projection::{HandlerError, Handles, Projection};
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

/// The process manager's decisions: which commands each event calls for. A pure
/// function of the event (the command ids derive from the event id), tested with
/// `tributary::testkit::ProcessManagerTest`; [`Fulfilment`] sends the plans.
#[derive(Debug, Clone, Copy, Default)]
pub struct FulfilmentPlan;

impl PlansCommands<OrderEvent> for FulfilmentPlan {
    fn plan(&self, e: &EventEnvelope<OrderEvent>) -> Vec<PlannedCommand> {
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
                    PlannedCommand::new(id, cmd).caused_by(&e.metadata)
                })
                .collect(),
            OrderEvent::Cancelled { skus, .. } => skus
                .iter()
                .map(|sku| {
                    let cmd = ReleaseStock {
                        sku: sku.clone(),
                        order_id: order_id.to_owned(),
                    };
                    PlannedCommand::new(command_id(e.id, &format!("release/{sku}")), cmd)
                        .caused_by(&e.metadata)
                })
                .collect(),
            OrderEvent::Shipped { skus, .. } => skus
                .iter()
                .map(|sku| {
                    let cmd = ShipStock {
                        sku: sku.clone(),
                        order_id: order_id.to_owned(),
                    };
                    PlannedCommand::new(command_id(e.id, &format!("ship/{sku}")), cmd)
                        .caused_by(&e.metadata)
                })
                .collect(),
            OrderEvent::LineReserved { .. } | OrderEvent::Confirmed { .. } | OrderEvent::Paid => {
                vec![]
            }
        }
    }
}

impl PlansCommands<InventoryEvent> for FulfilmentPlan {
    fn plan(&self, e: &EventEnvelope<InventoryEvent>) -> Vec<PlannedCommand> {
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
        vec![PlannedCommand::new(command_id(e.id, "answer"), cmd).caused_by(&e.metadata)]
    }
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

    /// Sends every planned command at once and waits for all outcomes; the first
    /// failure fails the batch (the worker retries it, and the resends are
    /// idempotent).
    async fn send_all(&self, plan: Vec<PlannedCommand>) -> Result<(), HandlerError> {
        let mut set = JoinSet::new();
        for planned in plan {
            let (aggregate, command) = (planned.aggregate(), planned.command_name());
            let sending = planned.send(&self.gateway);
            set.spawn(async move {
                match sending.await? {
                    DispatchOutcome::Accepted { .. } => {}
                    // A rejection is an answer too (e.g. an answer for an order that
                    // is already decided); the flow has nothing more to do for it.
                    DispatchOutcome::Rejected(error) => {
                        tracing::debug!(aggregate, command, %error, "saga command rejected");
                    }
                }
                Ok::<(), tributary::command::GatewayError>(())
            });
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
        self.send_all(FulfilmentPlan.plan(event)).await
    }

    async fn handle_batch(
        &self,
        events: &[&EventEnvelope<OrderEvent>],
        _tx: &mut PgConnection,
    ) -> Result<(), HandlerError> {
        let plan = events
            .iter()
            .flat_map(|e| FulfilmentPlan.plan(*e))
            .collect();
        self.send_all(plan).await
    }
}

impl Handles<InventoryEvent> for Fulfilment {
    const BATCHED: bool = true;

    async fn handle(
        &self,
        event: &EventEnvelope<InventoryEvent>,
        _tx: &mut PgConnection,
    ) -> Result<(), HandlerError> {
        self.send_all(FulfilmentPlan.plan(event)).await
    }

    async fn handle_batch(
        &self,
        events: &[&EventEnvelope<InventoryEvent>],
        _tx: &mut PgConnection,
    ) -> Result<(), HandlerError> {
        let plan = events
            .iter()
            .flat_map(|e| FulfilmentPlan.plan(*e))
            .collect();
        self.send_all(plan).await
    }
}

#[cfg(test)]
mod tests {
    use tributary::Metadata;
    use tributary::testkit::{ProcessManagerTest, envelope};

    use super::*;
    use crate::order::Line;

    fn line(sku: &str, quantity: u32) -> Line {
        Line {
            sku: sku.to_owned(),
            quantity,
            price_cents: 250,
        }
    }

    /// The flow's correlation id and trace context, as the order's events carry them.
    fn flow() -> Metadata {
        Metadata {
            causation_id: Some("place-1".into()),
            correlation_id: Some("flow-1".into()),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        }
    }

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

    #[test]
    fn a_placed_order_reserves_each_line_in_its_flow() {
        let placed = envelope(
            "o-1",
            1,
            OrderEvent::Placed {
                customer: "ada".into(),
                lines: vec![line("tea", 2), line("mug", 1)],
            },
        )
        .with_metadata(flow());
        // The ids are part of the saga's contract: a redeployed saga that replays an
        // event must send the same ids, or the processors would act twice.
        assert_eq!(
            command_id(placed.id, "reserve/tea"),
            "db30017b-0123-52f8-bb9e-fc767766f664"
        );
        let reserve = |sku: &str, quantity| {
            PlannedCommand::new(
                command_id(placed.id, &format!("reserve/{sku}")),
                ReserveStock {
                    sku: sku.into(),
                    order_id: "o-1".into(),
                    quantity,
                },
            )
            .caused_by(&flow())
        };
        let expected = [reserve("tea", 2), reserve("mug", 1)];
        ProcessManagerTest::new(FulfilmentPlan)
            .given([placed])
            .expect_commands(expected);
    }

    #[test]
    fn each_reservation_answer_is_recorded_on_the_order() {
        let reserved = envelope(
            "tea",
            4,
            InventoryEvent::Reserved {
                order_id: "o-1".into(),
                quantity: 2,
            },
        );
        let rejected = envelope(
            "mug",
            7,
            InventoryEvent::ReservationRejected {
                order_id: "o-1".into(),
                requested: 1,
                available: 0,
                reason: "only 0 of 1 left".into(),
            },
        );
        let expected = [
            PlannedCommand::new(
                command_id(reserved.id, "answer"),
                RecordReservation {
                    order_id: "o-1".into(),
                    sku: "tea".into(),
                    rejected: None,
                },
            ),
            PlannedCommand::new(
                command_id(rejected.id, "answer"),
                RecordReservation {
                    order_id: "o-1".into(),
                    sku: "mug".into(),
                    rejected: Some("only 0 of 1 left".into()),
                },
            ),
        ];
        ProcessManagerTest::new(FulfilmentPlan)
            .given([reserved, rejected])
            .expect_commands(expected);
    }

    #[test]
    fn a_cancelled_order_releases_its_skus_and_a_shipped_one_ships_them() {
        let cancelled = envelope(
            "o-1",
            3,
            OrderEvent::Cancelled {
                customer: "ada".into(),
                reason: "out of stock: mug".into(),
                skus: vec!["tea".into(), "mug".into()],
            },
        );
        let shipped = envelope(
            "o-2",
            5,
            OrderEvent::Shipped {
                customer: "bob".into(),
                skus: vec!["tea".into()],
            },
        )
        .with_metadata(flow());
        let release = |sku: &str| {
            PlannedCommand::new(
                command_id(cancelled.id, &format!("release/{sku}")),
                ReleaseStock {
                    sku: sku.into(),
                    order_id: "o-1".into(),
                },
            )
        };
        let expected = [
            release("tea"),
            release("mug"),
            PlannedCommand::new(
                command_id(shipped.id, "ship/tea"),
                ShipStock {
                    sku: "tea".into(),
                    order_id: "o-2".into(),
                },
            )
            .caused_by(&flow()),
        ];
        ProcessManagerTest::new(FulfilmentPlan)
            .given([cancelled, shipped])
            .expect_commands(expected);
    }

    #[test]
    fn other_events_call_for_no_command() {
        ProcessManagerTest::new(FulfilmentPlan)
            .given([
                envelope("o-1", 2, OrderEvent::LineReserved { sku: "tea".into() }),
                envelope(
                    "o-1",
                    3,
                    OrderEvent::Confirmed {
                        customer: "ada".into(),
                        total_cents: 500,
                    },
                ),
                envelope("o-1", 4, OrderEvent::Paid),
            ])
            .given([
                envelope("tea", 1, InventoryEvent::Restocked { quantity: 5 }),
                envelope(
                    "tea",
                    3,
                    InventoryEvent::Released {
                        order_id: "o-1".into(),
                        quantity: 2,
                    },
                ),
                envelope(
                    "tea",
                    4,
                    InventoryEvent::Shipped {
                        order_id: "o-2".into(),
                        quantity: 1,
                    },
                ),
            ])
            .expect_no_commands();
    }
}

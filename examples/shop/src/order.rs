//! The order aggregate: place, confirm, cancel.

use serde::{Deserialize, Serialize};
use tributary::{Aggregate, Apply, Command, DomainEvent, Handle};

/// One order line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// Stock keeping unit.
    pub sku: String,
    /// How many.
    pub quantity: u32,
    /// Unit price in cents.
    pub price_cents: u64,
}

/// What happened to an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "order")]
pub enum OrderEvent {
    /// The customer placed the order.
    Placed {
        /// Who.
        customer: String,
        /// What.
        lines: Vec<Line>,
    },
    /// The order was confirmed.
    Confirmed,
    /// The order was cancelled.
    Cancelled {
        /// Why.
        reason: String,
    },
}

/// Why an order command was rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum OrderError {
    /// Placing twice.
    #[error("the order was already placed")]
    AlreadyPlaced,
    /// Placing nothing.
    #[error("an order needs at least one line")]
    NoLines,
    /// Confirming an order that is not placed.
    #[error("the order is {0:?}, not placed")]
    NotPlaced(Status),
}

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub enum Status {
    /// Not placed yet.
    #[default]
    New,
    /// Placed, waiting for confirmation.
    Placed,
    /// Confirmed.
    Confirmed,
    /// Cancelled.
    Cancelled,
}

/// The order aggregate.
#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "order", event = OrderEvent, error = OrderError, snapshot_every = 100)]
pub struct Order {
    status: Status,
    lines: Vec<Line>,
}

impl Order {
    /// The order's status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Sum of the lines.
    pub fn total_cents(&self) -> u64 {
        self.lines
            .iter()
            .map(|l| l.price_cents * u64::from(l.quantity))
            .sum()
    }
}

/// Place a new order.
#[derive(Debug, Serialize, Deserialize, Command)]
#[command(aggregate = Order)]
pub struct PlaceOrder {
    /// The order.
    #[aggregate_id]
    pub order_id: String,
    /// Who.
    pub customer: String,
    /// What.
    pub lines: Vec<Line>,
}

impl PlaceOrder {
    /// A sample order.
    pub fn example(order_id: &str) -> Self {
        Self {
            order_id: order_id.into(),
            customer: "cust-1".into(),
            lines: vec![
                Line {
                    sku: "tea".into(),
                    quantity: 2,
                    price_cents: 450,
                },
                Line {
                    sku: "mug".into(),
                    quantity: 1,
                    price_cents: 1200,
                },
            ],
        }
    }
}

/// Confirm a placed order.
#[derive(Debug, Serialize, Deserialize, Command)]
#[command(aggregate = Order)]
pub struct ConfirmOrder {
    /// The order.
    #[aggregate_id]
    pub order_id: String,
}

impl Handle<PlaceOrder> for Order {
    fn handle(&self, cmd: PlaceOrder) -> Result<Vec<OrderEvent>, OrderError> {
        if self.status != Status::New {
            return Err(OrderError::AlreadyPlaced);
        }
        if cmd.lines.is_empty() {
            return Err(OrderError::NoLines);
        }
        Ok(vec![OrderEvent::Placed {
            customer: cmd.customer,
            lines: cmd.lines,
        }])
    }
}

impl Handle<ConfirmOrder> for Order {
    fn handle(&self, _cmd: ConfirmOrder) -> Result<Vec<OrderEvent>, OrderError> {
        match self.status {
            Status::Placed => Ok(vec![OrderEvent::Confirmed]),
            other => Err(OrderError::NotPlaced(other)),
        }
    }
}

impl Apply<OrderEvent> for Order {
    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Placed { lines, .. } => {
                self.status = Status::Placed;
                self.lines = lines.clone();
            }
            OrderEvent::Confirmed => self.status = Status::Confirmed,
            OrderEvent::Cancelled { .. } => self.status = Status::Cancelled,
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use tributary::testkit::AggregateTest;

    use super::*;

    #[test]
    fn places_an_order() {
        let cmd = PlaceOrder::example("o-1");
        let lines = cmd.lines.clone();
        AggregateTest::<Order>::given_no_previous_events()
            .when(cmd)
            .then_expect_events([OrderEvent::Placed {
                customer: "cust-1".into(),
                lines,
            }]);
    }

    #[test]
    fn refuses_an_empty_order() {
        AggregateTest::<Order>::given_no_previous_events()
            .when(PlaceOrder {
                lines: vec![],
                ..PlaceOrder::example("o-1")
            })
            .then_expect_error(OrderError::NoLines);
    }

    #[test]
    fn confirms_only_placed_orders() {
        AggregateTest::<Order>::given([OrderEvent::Placed {
            customer: "c".into(),
            lines: vec![],
        }])
        .when(ConfirmOrder {
            order_id: "o-1".into(),
        })
        .then_expect_events([OrderEvent::Confirmed]);
        AggregateTest::<Order>::given_no_previous_events()
            .when(ConfirmOrder {
                order_id: "o-1".into(),
            })
            .then_expect_error(OrderError::NotPlaced(Status::New));
    }

    #[test]
    fn a_mismatch_panics_with_a_line_diff() {
        let result = std::panic::catch_unwind(|| {
            AggregateTest::<Order>::given([OrderEvent::Placed {
                customer: "c".into(),
                lines: vec![],
            }])
            .when(ConfirmOrder {
                order_id: "o-1".into(),
            })
            .then_expect_events([OrderEvent::Cancelled { reason: "x".into() }]);
        });
        let payload = result.expect_err("a wrong expectation must fail");
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(message.contains("diff (- expected, + actual)"), "{message}");
        assert!(message.contains("-     Cancelled {"), "{message}");
        assert!(message.contains("+     Confirmed,"), "{message}");
    }
}

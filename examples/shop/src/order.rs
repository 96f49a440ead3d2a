//! The order aggregate: placed with lines, tracks the reservation of each line,
//! confirmed when every line is reserved, cancelled on the first rejection or on
//! request, then paid and shipped.
//!
//! The order never talks to the inventory itself: the process manager
//! ([`crate::saga`]) turns its events into inventory commands and the inventory's
//! answers into [`RecordReservation`] commands.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use tributary::{Aggregate, Apply, Command, DomainEvent, Handle};

/// Most lines an order may have.
pub const MAX_LINES: usize = 50;
/// Most units of one SKU in one order.
pub const MAX_QUANTITY: u32 = 10_000;

/// One order line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// Stock keeping unit.
    pub sku: String,
    /// How many (1..=[`MAX_QUANTITY`]).
    pub quantity: u32,
    /// Unit price in cents.
    pub price_cents: u64,
}

/// What happened to an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = Order)]
pub enum OrderEvent {
    /// The customer placed the order.
    Placed {
        /// Who.
        customer: String,
        /// What.
        lines: Vec<Line>,
    },
    /// The stock of one line was reserved.
    LineReserved {
        /// The line's SKU.
        sku: String,
    },
    /// Every line is reserved: the order stands.
    Confirmed {
        /// Who (carried so that readers need no lookup).
        customer: String,
        /// Sum of the lines.
        total_cents: u64,
    },
    /// The order was cancelled; its reservations are to be released.
    Cancelled {
        /// Who.
        customer: String,
        /// Why, for people.
        reason: String,
        /// The SKUs whose reservations the process manager releases.
        skus: Vec<String>,
    },
    /// The customer paid.
    Paid,
    /// The order left the warehouse.
    Shipped {
        /// Who (carried so that readers need no lookup).
        customer: String,
        /// The SKUs whose reservations the process manager ships.
        skus: Vec<String>,
    },
}

/// Why an order command was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum OrderError {
    /// Placing twice.
    #[error("the order was already placed")]
    AlreadyPlaced,
    /// A command for an order that was never placed.
    #[error("no such order")]
    NotFound,
    /// Placing nothing, or too much.
    #[error("invalid order: {0}")]
    Invalid(String),
    /// The command does not fit the order's status.
    #[error("the order is {status:?}; cannot {action}")]
    WrongStatus {
        /// Where the order is.
        status: Status,
        /// What was asked.
        action: String,
    },
    /// A reservation answer for a SKU the order does not contain.
    #[error("the order has no line for SKU {0}")]
    UnknownLine(String),
}

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Not placed yet.
    #[default]
    New,
    /// Placed, waiting for its reservations.
    Placed,
    /// Every line reserved.
    Confirmed,
    /// Cancelled (final).
    Cancelled,
    /// Paid.
    Paid,
    /// Shipped (final).
    Shipped,
}

impl Status {
    /// The status as the read model stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::New => "new",
            Status::Placed => "placed",
            Status::Confirmed => "confirmed",
            Status::Cancelled => "cancelled",
            Status::Paid => "paid",
            Status::Shipped => "shipped",
        }
    }
}

/// The order aggregate.
#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "order", event = OrderEvent, error = OrderError, snapshot_every = 100)]
#[aggregate(commands(PlaceOrder, RecordReservation, CancelOrder, MarkPaid, MarkShipped))]
pub struct Order {
    status: Status,
    customer: String,
    lines: Vec<Line>,
    reserved: BTreeSet<String>,
}

impl Order {
    /// The order's status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Sum of the lines.
    pub fn total_cents(&self) -> u64 {
        total_cents(&self.lines)
    }

    fn skus(&self) -> Vec<String> {
        self.lines.iter().map(|l| l.sku.clone()).collect()
    }

    fn wrong_status(&self, action: &str) -> OrderError {
        if self.status == Status::New {
            OrderError::NotFound
        } else {
            OrderError::WrongStatus {
                status: self.status,
                action: action.to_owned(),
            }
        }
    }
}

/// Sum of `price × quantity` over the lines (saturating).
pub fn total_cents(lines: &[Line]) -> u64 {
    lines.iter().fold(0u64, |sum, l| {
        sum.saturating_add(l.price_cents.saturating_mul(u64::from(l.quantity)))
    })
}

/// Checks lines the way [`PlaceOrder`] does; the HTTP API calls it before sending.
pub fn validate_lines(lines: &[Line]) -> Result<(), String> {
    if lines.is_empty() {
        return Err("an order needs at least one line".into());
    }
    if lines.len() > MAX_LINES {
        return Err(format!("an order has at most {MAX_LINES} lines"));
    }
    let mut seen = BTreeSet::new();
    for line in lines {
        if line.sku.trim().is_empty() {
            return Err("every line needs a SKU".into());
        }
        if line.quantity == 0 || line.quantity > MAX_QUANTITY {
            return Err(format!(
                "quantity of {} must be between 1 and {MAX_QUANTITY}, not {}",
                line.sku, line.quantity
            ));
        }
        if !seen.insert(line.sku.as_str()) {
            return Err(format!("SKU {} appears twice; merge the lines", line.sku));
        }
    }
    Ok(())
}

/// Place a new order.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
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

/// The inventory's answer for one line, delivered by the process manager.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(aggregate = Order)]
pub struct RecordReservation {
    /// The order.
    #[aggregate_id]
    pub order_id: String,
    /// The line's SKU.
    pub sku: String,
    /// `None` when reserved, the reason when rejected.
    pub rejected: Option<String>,
}

/// Cancel an order on the customer's request.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(aggregate = Order)]
pub struct CancelOrder {
    /// The order.
    #[aggregate_id]
    pub order_id: String,
    /// Why.
    pub reason: String,
}

/// Record the payment of a confirmed order.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(aggregate = Order)]
pub struct MarkPaid {
    /// The order.
    #[aggregate_id]
    pub order_id: String,
}

/// Record that a paid order shipped.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(aggregate = Order)]
pub struct MarkShipped {
    /// The order.
    #[aggregate_id]
    pub order_id: String,
}

impl Handle<PlaceOrder> for Order {
    fn handle(&self, cmd: PlaceOrder) -> Result<Vec<OrderEvent>, OrderError> {
        if self.status != Status::New {
            return Err(OrderError::AlreadyPlaced);
        }
        if cmd.customer.trim().is_empty() {
            return Err(OrderError::Invalid("an order needs a customer".into()));
        }
        validate_lines(&cmd.lines).map_err(OrderError::Invalid)?;
        Ok(vec![OrderEvent::Placed {
            customer: cmd.customer,
            lines: cmd.lines,
        }])
    }
}

impl Handle<RecordReservation> for Order {
    fn handle(&self, cmd: RecordReservation) -> Result<Vec<OrderEvent>, OrderError> {
        if !self.lines.iter().any(|l| l.sku == cmd.sku) {
            return Err(if self.status == Status::New {
                OrderError::NotFound
            } else {
                OrderError::UnknownLine(cmd.sku)
            });
        }
        // Answers that arrive after the order was decided change nothing: the
        // inventory releases (or refuses) whatever a cancelled order holds.
        if self.status != Status::Placed || self.reserved.contains(&cmd.sku) {
            return Ok(vec![]);
        }
        if let Some(reason) = cmd.rejected {
            return Ok(vec![OrderEvent::Cancelled {
                customer: self.customer.clone(),
                reason: format!("{}: {reason}", cmd.sku),
                skus: self.skus(),
            }]);
        }
        let mut events = vec![OrderEvent::LineReserved {
            sku: cmd.sku.clone(),
        }];
        if self.reserved.len() + 1 == self.lines.len() {
            events.push(OrderEvent::Confirmed {
                customer: self.customer.clone(),
                total_cents: self.total_cents(),
            });
        }
        Ok(events)
    }
}

impl Handle<CancelOrder> for Order {
    fn handle(&self, cmd: CancelOrder) -> Result<Vec<OrderEvent>, OrderError> {
        match self.status {
            Status::Placed | Status::Confirmed => Ok(vec![OrderEvent::Cancelled {
                customer: self.customer.clone(),
                reason: cmd.reason,
                skus: self.skus(),
            }]),
            _ => Err(self.wrong_status("cancel")),
        }
    }
}

impl Handle<MarkPaid> for Order {
    fn handle(&self, _cmd: MarkPaid) -> Result<Vec<OrderEvent>, OrderError> {
        match self.status {
            Status::Confirmed => Ok(vec![OrderEvent::Paid]),
            _ => Err(self.wrong_status("mark it paid")),
        }
    }
}

impl Handle<MarkShipped> for Order {
    fn handle(&self, _cmd: MarkShipped) -> Result<Vec<OrderEvent>, OrderError> {
        match self.status {
            Status::Paid => Ok(vec![OrderEvent::Shipped {
                customer: self.customer.clone(),
                skus: self.skus(),
            }]),
            _ => Err(self.wrong_status("ship it")),
        }
    }
}

impl Apply<OrderEvent> for Order {
    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Placed { customer, lines } => {
                self.status = Status::Placed;
                self.customer = customer.clone();
                self.lines = lines.clone();
            }
            OrderEvent::LineReserved { sku } => {
                self.reserved.insert(sku.clone());
            }
            OrderEvent::Confirmed { .. } => self.status = Status::Confirmed,
            OrderEvent::Cancelled { .. } => self.status = Status::Cancelled,
            OrderEvent::Paid => self.status = Status::Paid,
            OrderEvent::Shipped { .. } => self.status = Status::Shipped,
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use tributary::testkit::AggregateTest;

    use super::*;

    fn line(sku: &str, quantity: u32) -> Line {
        Line {
            sku: sku.into(),
            quantity,
            price_cents: 450,
        }
    }

    fn place(lines: Vec<Line>) -> PlaceOrder {
        PlaceOrder {
            order_id: "o-1".into(),
            customer: "ada".into(),
            lines,
        }
    }

    fn placed() -> OrderEvent {
        OrderEvent::Placed {
            customer: "ada".into(),
            lines: vec![line("tea", 2), line("mug", 1)],
        }
    }

    fn answer(sku: &str, rejected: Option<&str>) -> RecordReservation {
        RecordReservation {
            order_id: "o-1".into(),
            sku: sku.into(),
            rejected: rejected.map(Into::into),
        }
    }

    #[test]
    fn places_an_order() {
        AggregateTest::<Order>::given_no_previous_events()
            .when(place(vec![line("tea", 2), line("mug", 1)]))
            .then_expect_events([placed()]);
    }

    #[test]
    fn refuses_invalid_orders() {
        AggregateTest::<Order>::given_no_previous_events()
            .when(place(vec![]))
            .then_expect_error(OrderError::Invalid(
                "an order needs at least one line".into(),
            ));
        AggregateTest::<Order>::given_no_previous_events()
            .when(place(vec![line("tea", 0)]))
            .then_expect_error(OrderError::Invalid(
                "quantity of tea must be between 1 and 10000, not 0".into(),
            ));
        AggregateTest::<Order>::given_no_previous_events()
            .when(place(vec![line("tea", 1), line("tea", 2)]))
            .then_expect_error(OrderError::Invalid(
                "SKU tea appears twice; merge the lines".into(),
            ));
        AggregateTest::<Order>::given([placed()])
            .when(place(vec![line("tea", 1)]))
            .then_expect_error(OrderError::AlreadyPlaced);
    }

    #[test]
    fn confirms_when_the_last_line_is_reserved() {
        AggregateTest::<Order>::given([placed()])
            .when(answer("tea", None))
            .then_expect_events([OrderEvent::LineReserved { sku: "tea".into() }]);
        AggregateTest::<Order>::given([placed(), OrderEvent::LineReserved { sku: "tea".into() }])
            .when(answer("mug", None))
            .then_expect_events([
                OrderEvent::LineReserved { sku: "mug".into() },
                OrderEvent::Confirmed {
                    customer: "ada".into(),
                    total_cents: 1350,
                },
            ]);
    }

    #[test]
    fn cancels_on_the_first_rejection() {
        AggregateTest::<Order>::given([placed(), OrderEvent::LineReserved { sku: "tea".into() }])
            .when(answer("mug", Some("insufficient stock")))
            .then_expect_events([OrderEvent::Cancelled {
                customer: "ada".into(),
                reason: "mug: insufficient stock".into(),
                skus: vec!["tea".into(), "mug".into()],
            }]);
    }

    #[test]
    fn late_answers_change_nothing() {
        let cancelled = OrderEvent::Cancelled {
            customer: "ada".into(),
            reason: "mug: insufficient stock".into(),
            skus: vec!["tea".into(), "mug".into()],
        };
        AggregateTest::<Order>::given([placed(), cancelled])
            .when(answer("tea", None))
            .then_expect_events([]);
        AggregateTest::<Order>::given([placed(), OrderEvent::LineReserved { sku: "tea".into() }])
            .when(answer("tea", None))
            .then_expect_events([]);
        AggregateTest::<Order>::given([placed()])
            .when(answer("cake", None))
            .then_expect_error(OrderError::UnknownLine("cake".into()));
    }

    #[test]
    fn cancel_on_request_until_paid() {
        AggregateTest::<Order>::given([placed()])
            .when(CancelOrder {
                order_id: "o-1".into(),
                reason: "changed my mind".into(),
            })
            .then_expect_events([OrderEvent::Cancelled {
                customer: "ada".into(),
                reason: "changed my mind".into(),
                skus: vec!["tea".into(), "mug".into()],
            }]);
        AggregateTest::<Order>::given_no_previous_events()
            .when(CancelOrder {
                order_id: "o-1".into(),
                reason: "x".into(),
            })
            .then_expect_error(OrderError::NotFound);
        AggregateTest::<Order>::given([
            placed(),
            OrderEvent::Confirmed {
                customer: "ada".into(),
                total_cents: 1350,
            },
            OrderEvent::Paid,
        ])
        .when(CancelOrder {
            order_id: "o-1".into(),
            reason: "x".into(),
        })
        .then_expect_error(OrderError::WrongStatus {
            status: Status::Paid,
            action: "cancel".into(),
        });
    }

    #[test]
    fn pays_and_ships_a_confirmed_order() {
        let confirmed = [
            placed(),
            OrderEvent::Confirmed {
                customer: "ada".into(),
                total_cents: 1350,
            },
        ];
        AggregateTest::<Order>::given(confirmed.clone())
            .when(MarkPaid {
                order_id: "o-1".into(),
            })
            .then_expect_events([OrderEvent::Paid]);
        AggregateTest::<Order>::given(confirmed.clone())
            .when(MarkShipped {
                order_id: "o-1".into(),
            })
            .then_expect_error(OrderError::WrongStatus {
                status: Status::Confirmed,
                action: "ship it".into(),
            });
        let mut paid = confirmed.to_vec();
        paid.push(OrderEvent::Paid);
        AggregateTest::<Order>::given(paid)
            .when(MarkShipped {
                order_id: "o-1".into(),
            })
            .then_expect_events([OrderEvent::Shipped {
                customer: "ada".into(),
                skus: vec!["tea".into(), "mug".into()],
            }]);
    }

    #[test]
    fn a_mismatch_panics_with_a_line_diff() {
        let result = std::panic::catch_unwind(|| {
            AggregateTest::<Order>::given([placed()])
                .when(answer("tea", None))
                .then_expect_events([OrderEvent::Paid]);
        });
        let payload = result.expect_err("a wrong expectation must fail");
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(message.contains("diff (- expected, + actual)"), "{message}");
        assert!(message.contains("-     Paid,"), "{message}");
        assert!(message.contains("+     LineReserved {"), "{message}");
    }
}

//! The inventory aggregate, one per SKU: stock, reservations per order, release,
//! shipping and restock. Available stock never goes negative: a reservation that
//! does not fit is rejected with an event the order reacts to.
//!
//! Releasing an order closes it on this SKU: a reservation for a closed order is
//! rejected, whichever of the two commands the process manager's concurrent sends
//! deliver first. That makes the saga independent of the order in which its
//! commands arrive.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tributary::{Aggregate, Apply, Command, DomainEvent, Handle};

/// What happened to one SKU's stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = Inventory)]
pub enum InventoryEvent {
    /// Goods arrived.
    Restocked {
        /// Units added to the available stock.
        quantity: u64,
    },
    /// Units were set aside for an order.
    Reserved {
        /// The order.
        order_id: String,
        /// Units reserved.
        quantity: u64,
    },
    /// A reservation could not be made; nothing changed.
    ReservationRejected {
        /// The order.
        order_id: String,
        /// Units requested.
        requested: u64,
        /// Units available when the request arrived.
        available: u64,
        /// Why, for people.
        reason: String,
    },
    /// An order's reservation was returned to the available stock (`quantity` 0
    /// when it held none) and the order is closed on this SKU.
    Released {
        /// The order.
        order_id: String,
        /// Units returned.
        quantity: u64,
    },
    /// A reserved quantity left the warehouse.
    Shipped {
        /// The order.
        order_id: String,
        /// Units shipped.
        quantity: u64,
    },
}

/// Why an inventory command was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum InventoryError {
    /// Restocking nothing.
    #[error("restock quantity must be at least 1")]
    ZeroQuantity,
    /// Shipping an order that holds no reservation here.
    #[error("order {0} holds no reservation of this SKU")]
    NoReservation(String),
    /// Too much stock for a `u64`.
    #[error("stock would overflow")]
    Overflow,
    /// The SKU was never restocked ([`VerifySku`]).
    #[error("unknown SKU {0}")]
    UnknownSku(String),
}

/// One SKU's stock.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "inventory", event = InventoryEvent, error = InventoryError, snapshot_every = 200)]
#[aggregate(commands(Restock, VerifySku, ReserveStock, ReleaseStock, ShipStock))]
pub struct Inventory {
    known: bool,
    available: u64,
    reservations: BTreeMap<String, u64>,
    closed: BTreeSet<String>,
}

impl Inventory {
    /// Units that can still be reserved.
    pub fn available(&self) -> u64 {
        self.available
    }

    /// Units held by reservations.
    pub fn reserved(&self) -> u64 {
        self.reservations.values().sum()
    }
}

/// Add stock to a SKU (the first restock creates it).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(aggregate = Inventory)]
pub struct Restock {
    /// The SKU.
    #[aggregate_id]
    pub sku: String,
    /// Units to add.
    pub quantity: u64,
}

/// Ask whether a SKU exists (was ever restocked), without changing it: accepted
/// with no events when it does, rejected with [`InventoryError::UnknownSku`] when
/// it does not.
///
/// The HTTP API sends it for the SKUs of an order that the `stock_levels` read
/// model does not list (yet): the aggregate is the authority, the read model lags.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(aggregate = Inventory)]
pub struct VerifySku {
    /// The SKU.
    #[aggregate_id]
    pub sku: String,
}

/// Reserve units of a SKU for an order.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(aggregate = Inventory)]
pub struct ReserveStock {
    /// The SKU.
    #[aggregate_id]
    pub sku: String,
    /// The order.
    pub order_id: String,
    /// Units.
    pub quantity: u64,
}

/// Return an order's reservation of a SKU and close the order on it.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(aggregate = Inventory)]
pub struct ReleaseStock {
    /// The SKU.
    #[aggregate_id]
    pub sku: String,
    /// The order.
    pub order_id: String,
}

/// Ship an order's reserved units.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(aggregate = Inventory)]
pub struct ShipStock {
    /// The SKU.
    #[aggregate_id]
    pub sku: String,
    /// The order.
    pub order_id: String,
}

impl Handle<Restock> for Inventory {
    fn handle(&self, cmd: Restock) -> Result<Vec<InventoryEvent>, InventoryError> {
        if cmd.quantity == 0 {
            return Err(InventoryError::ZeroQuantity);
        }
        if self.available.checked_add(cmd.quantity).is_none() {
            return Err(InventoryError::Overflow);
        }
        Ok(vec![InventoryEvent::Restocked {
            quantity: cmd.quantity,
        }])
    }
}

impl Handle<VerifySku> for Inventory {
    fn handle(&self, cmd: VerifySku) -> Result<Vec<InventoryEvent>, InventoryError> {
        if self.known {
            Ok(vec![])
        } else {
            Err(InventoryError::UnknownSku(cmd.sku))
        }
    }
}

impl Handle<ReserveStock> for Inventory {
    fn handle(&self, cmd: ReserveStock) -> Result<Vec<InventoryEvent>, InventoryError> {
        if self.reservations.contains_key(&cmd.order_id) {
            return Ok(vec![]);
        }
        let reason = if !self.known {
            Some("unknown SKU".to_owned())
        } else if self.closed.contains(&cmd.order_id) {
            Some("the order was already released".to_owned())
        } else if cmd.quantity == 0 {
            Some("quantity must be at least 1".to_owned())
        } else if cmd.quantity > self.available {
            Some(format!(
                "insufficient stock: {} requested, {} available",
                cmd.quantity, self.available
            ))
        } else {
            None
        };
        Ok(vec![match reason {
            Some(reason) => InventoryEvent::ReservationRejected {
                order_id: cmd.order_id,
                requested: cmd.quantity,
                available: self.available,
                reason,
            },
            None => InventoryEvent::Reserved {
                order_id: cmd.order_id,
                quantity: cmd.quantity,
            },
        }])
    }
}

impl Handle<ReleaseStock> for Inventory {
    fn handle(&self, cmd: ReleaseStock) -> Result<Vec<InventoryEvent>, InventoryError> {
        if self.closed.contains(&cmd.order_id) {
            return Ok(vec![]);
        }
        let quantity = self.reservations.get(&cmd.order_id).copied().unwrap_or(0);
        Ok(vec![InventoryEvent::Released {
            order_id: cmd.order_id,
            quantity,
        }])
    }
}

impl Handle<ShipStock> for Inventory {
    fn handle(&self, cmd: ShipStock) -> Result<Vec<InventoryEvent>, InventoryError> {
        match self.reservations.get(&cmd.order_id) {
            Some(&quantity) => Ok(vec![InventoryEvent::Shipped {
                order_id: cmd.order_id,
                quantity,
            }]),
            None if self.closed.contains(&cmd.order_id) => Ok(vec![]),
            None => Err(InventoryError::NoReservation(cmd.order_id)),
        }
    }
}

impl Apply<InventoryEvent> for Inventory {
    fn apply(&mut self, event: &InventoryEvent) {
        match event {
            InventoryEvent::Restocked { quantity } => {
                self.known = true;
                self.available = self.available.saturating_add(*quantity);
            }
            InventoryEvent::Reserved { order_id, quantity } => {
                self.available = self.available.saturating_sub(*quantity);
                self.reservations.insert(order_id.clone(), *quantity);
            }
            InventoryEvent::ReservationRejected { .. } => {}
            InventoryEvent::Released { order_id, quantity } => {
                self.reservations.remove(order_id);
                self.available = self.available.saturating_add(*quantity);
                self.closed.insert(order_id.clone());
            }
            InventoryEvent::Shipped { order_id, .. } => {
                self.reservations.remove(order_id);
                self.closed.insert(order_id.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tributary::testkit::AggregateTest;

    use super::*;

    fn reserve(order: &str, quantity: u64) -> ReserveStock {
        ReserveStock {
            sku: "tea".into(),
            order_id: order.into(),
            quantity,
        }
    }

    fn release(order: &str) -> ReleaseStock {
        ReleaseStock {
            sku: "tea".into(),
            order_id: order.into(),
        }
    }

    fn stocked(quantity: u64) -> Vec<InventoryEvent> {
        vec![InventoryEvent::Restocked { quantity }]
    }

    #[test]
    fn reserves_what_is_available() {
        AggregateTest::<Inventory>::given(stocked(5))
            .when(reserve("o-1", 5))
            .then_expect_events([InventoryEvent::Reserved {
                order_id: "o-1".into(),
                quantity: 5,
            }]);
    }

    #[test]
    fn rejects_a_reservation_that_does_not_fit() {
        AggregateTest::<Inventory>::given(stocked(2))
            .when(reserve("o-1", 3))
            .then_expect_events([InventoryEvent::ReservationRejected {
                order_id: "o-1".into(),
                requested: 3,
                available: 2,
                reason: "insufficient stock: 3 requested, 2 available".into(),
            }]);
    }

    #[test]
    fn rejects_reservations_of_unknown_skus() {
        AggregateTest::<Inventory>::given_no_previous_events()
            .when(reserve("o-1", 1))
            .then_expect_events([InventoryEvent::ReservationRejected {
                order_id: "o-1".into(),
                requested: 1,
                available: 0,
                reason: "unknown SKU".into(),
            }]);
    }

    #[test]
    fn a_second_reservation_for_the_same_order_changes_nothing() {
        let mut history = stocked(5);
        history.push(InventoryEvent::Reserved {
            order_id: "o-1".into(),
            quantity: 2,
        });
        AggregateTest::<Inventory>::given(history)
            .when(reserve("o-1", 2))
            .then_expect_events([]);
    }

    #[test]
    fn release_returns_the_reservation_and_closes_the_order() {
        let mut history = stocked(5);
        history.push(InventoryEvent::Reserved {
            order_id: "o-1".into(),
            quantity: 2,
        });
        AggregateTest::<Inventory>::given(history.clone())
            .when(release("o-1"))
            .then_expect_events([InventoryEvent::Released {
                order_id: "o-1".into(),
                quantity: 2,
            }]);
        history.push(InventoryEvent::Released {
            order_id: "o-1".into(),
            quantity: 2,
        });
        AggregateTest::<Inventory>::given(history.clone())
            .when(release("o-1"))
            .then_expect_events([]);
        AggregateTest::<Inventory>::given(history)
            .when(reserve("o-1", 1))
            .then_expect_events([InventoryEvent::ReservationRejected {
                order_id: "o-1".into(),
                requested: 1,
                available: 5,
                reason: "the order was already released".into(),
            }]);
    }

    #[test]
    fn a_release_that_overtakes_its_reservation_blocks_it() {
        AggregateTest::<Inventory>::given(stocked(5))
            .when(release("o-1"))
            .then_expect_events([InventoryEvent::Released {
                order_id: "o-1".into(),
                quantity: 0,
            }]);
    }

    #[test]
    fn restock_of_zero_is_rejected() {
        AggregateTest::<Inventory>::given_no_previous_events()
            .when(Restock {
                sku: "tea".into(),
                quantity: 0,
            })
            .then_expect_error(InventoryError::ZeroQuantity);
    }

    #[test]
    fn verify_sku_knows_restocked_skus_and_changes_nothing() {
        let verify = || VerifySku { sku: "tea".into() };
        AggregateTest::<Inventory>::given_no_previous_events()
            .when(verify())
            .then_expect_error(InventoryError::UnknownSku("tea".into()));
        AggregateTest::<Inventory>::given(stocked(5))
            .when(verify())
            .then_expect_events([]);
        // Known even when every unit is reserved.
        let mut history = stocked(1);
        history.push(InventoryEvent::Reserved {
            order_id: "o-1".into(),
            quantity: 1,
        });
        AggregateTest::<Inventory>::given(history)
            .when(verify())
            .then_expect_events([]);
    }

    #[test]
    fn shipping_needs_a_reservation() {
        AggregateTest::<Inventory>::given(stocked(5))
            .when(ShipStock {
                sku: "tea".into(),
                order_id: "o-9".into(),
            })
            .then_expect_error(InventoryError::NoReservation("o-9".into()));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Restock(u64),
        Reserve(u8, u64),
        Release(u8),
        Ship(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..20).prop_map(Op::Restock),
            (0u8..8, 0u64..15).prop_map(|(o, q)| Op::Reserve(o, q)),
            (0u8..8).prop_map(Op::Release),
            (0u8..8).prop_map(Op::Ship),
        ]
    }

    proptest! {
        /// Whatever arrives in whatever order: stock never goes negative, restocked =
        /// available + reserved + shipped, and a closed order holds nothing.
        #[test]
        fn stock_is_conserved_and_never_negative(ops in proptest::collection::vec(op(), 0..60)) {
            let mut state = Inventory::default();
            let (mut restocked, mut shipped) = (0u64, 0u64);
            for op in ops {
                let result = match op {
                    Op::Restock(q) => state.handle(Restock { sku: "s".into(), quantity: q }),
                    Op::Reserve(o, q) => state.handle(ReserveStock { sku: "s".into(), order_id: format!("o{o}"), quantity: q }),
                    Op::Release(o) => state.handle(ReleaseStock { sku: "s".into(), order_id: format!("o{o}") }),
                    Op::Ship(o) => state.handle(ShipStock { sku: "s".into(), order_id: format!("o{o}") }),
                };
                for event in result.unwrap_or_default() {
                    match &event {
                        InventoryEvent::Restocked { quantity } => restocked += quantity,
                        InventoryEvent::Shipped { quantity, .. } => shipped += quantity,
                        InventoryEvent::Reserved { quantity, .. } => prop_assert!(*quantity <= state.available()),
                        _ => {}
                    }
                    state.apply(&event);
                }
                prop_assert_eq!(restocked, state.available() + state.reserved() + shipped);
                for order in &state.closed {
                    prop_assert!(!state.reservations.contains_key(order));
                }
            }
        }
    }
}

//! `crate = "..."` makes the generated code use another path to the framework.
#![deny(warnings)]

extern crate tributary_core as tb;

mod reexport {
    pub use ::tributary_core as framework;
}

use serde::{Deserialize, Serialize};
use tb::{Aggregate, Apply, Command, DomainEvent, Handle};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, tb::DomainEvent)]
#[event(crate = "tb", aggregate = Ledger)]
enum LedgerEvent {
    Credited(i64),
}

#[derive(Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("overdrawn")]
struct Overdrawn;

#[derive(Debug, Default, Serialize, Deserialize, tb::Aggregate)]
#[aggregate(name = "ledger", event = LedgerEvent, error = Overdrawn, crate = "crate::reexport::framework")]
#[aggregate(commands(Credit))]
struct Ledger {
    balance: i64,
}

impl Apply<LedgerEvent> for Ledger {
    fn apply(&mut self, event: &LedgerEvent) {
        match event {
            LedgerEvent::Credited(amount) => self.balance += amount,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, tb::Command)]
#[command(aggregate = Ledger, crate = "::tb")]
struct Credit {
    #[aggregate_id]
    account: String,
    amount: i64,
}

impl Handle<Credit> for Ledger {
    fn handle(&self, command: Credit) -> Result<Vec<LedgerEvent>, Overdrawn> {
        Ok(vec![LedgerEvent::Credited(command.amount)])
    }
}

fn main() {
    assert_eq!(LedgerEvent::EVENT_TYPES[0].ce_type, "ledger.credited.v1");
    let payload = LedgerEvent::Credited(5).to_payload().expect("serializes");
    assert_eq!(payload, serde_json::json!(5));
    let back = LedgerEvent::from_payload(&LedgerEvent::EVENT_TYPES[0], payload).expect("deserializes");
    assert_eq!(back, LedgerEvent::Credited(5));

    assert_eq!(Ledger::NAME, "ledger");
    let mut ledger = Ledger::default();
    ledger.apply(&back);
    assert_eq!(ledger.balance, 5);

    let credit = Credit { account: "acc-1".to_owned(), amount: 5 };
    assert_eq!(credit.aggregate_id().as_str(), "acc-1");
    assert_eq!(<Credit as Command>::NAME, "credit");
    assert_eq!(credit.amount, 5);
    assert_eq!(Ledger::COMMANDS, ["credit"]);
}

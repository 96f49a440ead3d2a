//! G7 on the read side: records written as v1, before the v2 event type existed,
//! are projected as v2 through the codec's upcaster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use tributary::projection::{HandlerError, Handles, Projection, ProjectionWorker};
use tributary::{Aggregate, Apply, DomainEvent, EventCodec, EventEnvelope, Upcaster};
use tributary_integration_tests::projection_support::{
    EventsTopic, RawRecord, kafka_config, produce, test_config, test_store, wait_caught_up,
};
use tributary_integration_tests::{create_topic, kafka_bootstrap, unique_prefix};

/// The aggregate and its events as the old application had them.
mod v1 {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
    #[aggregate(name = "payment", event = PaymentEvent, error = PaymentError)]
    pub(crate) struct Payment;

    impl Apply<PaymentEvent> for Payment {
        fn apply(&mut self, _: &PaymentEvent) {}
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
    #[event(aggregate = Payment)]
    pub(crate) enum PaymentEvent {
        Received { amount: i64 },
    }
}

/// The aggregate today: the same name, so the same topic.
#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "payment", event = PaymentEvent, error = PaymentError)]
struct Payment;

impl Apply<PaymentEvent> for Payment {
    fn apply(&mut self, _: &PaymentEvent) {}
}

#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
#[error("payment error")]
struct PaymentError;

/// The events today: `Received` is at v2 with cents and a currency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = Payment)]
enum PaymentEvent {
    #[event(version = 2)]
    Received { cents: i64, currency: String },
}

struct Payments;

impl Projection for Payments {
    const NAME: &'static str = "payments";

    async fn migrate(&self, tx: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS payments (id text PRIMARY KEY, cents bigint NOT NULL, currency text NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query("TRUNCATE payments").execute(&mut *tx).await?;
        Ok(())
    }
}

impl Handles<PaymentEvent> for Payments {
    async fn handle(
        &self,
        e: &EventEnvelope<PaymentEvent>,
        tx: &mut PgConnection,
    ) -> Result<(), HandlerError> {
        let PaymentEvent::Received { cents, currency } = &e.event;
        sqlx::query("INSERT INTO payments VALUES ($1, $2, $3)")
            .bind(e.aggregate_id.as_str())
            .bind(cents)
            .bind(currency)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn v1_records_are_projected_as_v2() {
    let bootstrap = kafka_bootstrap();
    let prefix = unique_prefix("proj-upcast");
    let old_codec = EventsTopic::<v1::PaymentEvent>::new(&prefix);
    let topic = old_codec.name.clone();
    create_topic(&bootstrap, &topic, 1).await;

    // Written by the old application: v1 records.
    let mut records: Vec<RawRecord> = (1..=3)
        .map(|i| {
            let envelope = EventEnvelope::new(
                format!("p{i}"),
                1,
                v1::PaymentEvent::Received { amount: i * 10 },
            );
            old_codec.encode(&envelope).into()
        })
        .collect();
    // And one by the new application.
    let codec = EventCodec::<PaymentEvent>::new()
        .with_upcaster(Upcaster::new("payment.received", 1, |payload| {
            let amount = payload["amount"]
                .as_i64()
                .ok_or_else(|| tributary::UpcastError::new("no amount"))?;
            Ok(serde_json::json!({ "cents": amount * 100, "currency": "EUR" }))
        }))
        .unwrap();
    let codec = EventsTopic::with_codec(&prefix, codec);
    let envelope = EventEnvelope::new(
        "p4",
        1,
        PaymentEvent::Received {
            cents: 4,
            currency: "USD".into(),
        },
    );
    records.push(codec.encode(&envelope).into());
    let headers: Vec<String> = records
        .iter()
        .map(|r| {
            String::from_utf8(
                r.headers
                    .iter()
                    .find(|(n, _)| n == "ce_type")
                    .unwrap()
                    .1
                    .clone(),
            )
            .unwrap()
        })
        .collect();
    assert_eq!(
        headers,
        [
            "payment.received.v1",
            "payment.received.v1",
            "payment.received.v1",
            "payment.received.v2"
        ]
    );
    produce(&bootstrap, &topic, records).await;

    let store = test_store(&prefix).await;
    let worker = ProjectionWorker::new(Payments, store.clone(), kafka_config(&bootstrap))
        .subscribe(&prefix, codec.codec)
        .settings(test_config());
    let handle = worker.clone().spawn();
    wait_caught_up(&store, &bootstrap, &topic, Duration::from_secs(60)).await;
    handle.shutdown().await.unwrap();
    let rows: Vec<(String, i64, String)> =
        sqlx::query_as("SELECT id, cents, currency FROM payments ORDER BY id")
            .fetch_all(store.pool())
            .await
            .unwrap();
    let expected: Vec<(String, i64, String)> = vec![
        ("p1".into(), 1000, "EUR".into()),
        ("p2".into(), 2000, "EUR".into()),
        ("p3".into(), 3000, "EUR".into()),
        ("p4".into(), 4, "USD".into()),
    ];
    assert_eq!(rows, expected);
    assert!(worker.dead_letters().await.unwrap().is_empty());
}

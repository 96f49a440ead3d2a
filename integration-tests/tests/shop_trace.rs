//! One order in the sample shop is one OpenTelemetry trace (feature `otel`): the
//! API's send, the order processor's command, the read-model updates of its
//! events, the process manager's next commands, the inventory processor's
//! commands and the stock read model's updates all share the trace id of the
//! API's send, through the `traceparent` header of every record in between.
//! Spans are collected with the SDK's in-memory exporter.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeSet;
use std::time::Duration;

use example_shop::api::{ApiState, router};
use example_shop::app::Role;
use example_shop::load::{self, LoadPlan};
use opentelemetry::Value;
use opentelemetry::trace::{TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tributary_integration_tests::shop_support::shop_config;
use tributary_integration_tests::{pg_store, unique_prefix};

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a str> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .and_then(|kv| match &kv.value {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
}

/// `name/attribute value` of a span, e.g. `command/place_order` or
/// `projection_event/stock_levels`.
fn step(span: &SpanData) -> String {
    let detail = match span.name.as_ref() {
        // The processor names commands `aggregate.command`, the gateway `command`.
        "send_command" | "command" => attribute(span, "command_type")
            .map(|name| name.rsplit_once('.').map_or(name, |(_, command)| command)),
        "projection_event" => attribute(span, "projection"),
        _ => None,
    };
    format!("{}/{}", span.name, detail.unwrap_or("-"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_order_is_one_trace_from_the_api_to_the_stock_read_model() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    // Before anything logs: the test support's own subscriber then stays out.
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("shop_trace")))
        .init();

    let prefix = unique_prefix("shoptrace");
    let store = pg_store(&prefix).await;
    let config = shop_config(&prefix, &store, 2);
    let running = config.start(&Role::ALL, &store).await.unwrap();
    // One order of one line, fully stocked: placed, reserved, confirmed.
    let plan = LoadPlan::half_stocked(1, 1, 1, &prefix);
    let api = router(
        ApiState::new(config.gateway().await.unwrap(), store.pool().clone())
            .with_keys(plan.tokens.api_keys().unwrap()),
    );
    load::seed_catalogue(&api, store.pool(), &plan)
        .await
        .unwrap();
    let report = load::place_orders(&api, &plan, std::sync::Arc::new(|_| {}))
        .await
        .unwrap();
    assert_eq!(report.accepted, 1);
    let settled = load::wait_settled(store.pool(), 1, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(settled.settled, "the order was not decided");

    // The steps the trace must reach.
    let wanted: BTreeSet<&str> = [
        "send_command/place_order",
        "command/place_order",
        "projection_event/order_summaries",
        "projection_event/notifications",
        "projection_event/order_fulfilment",
        "send_command/reserve_stock",
        "command/reserve_stock",
        "projection_event/stock_levels",
        "send_command/record_reservation",
        "command/record_reservation",
    ]
    .into_iter()
    .collect();
    // Spans are exported when they end; the last steps end a moment after the
    // read models settle.
    let mut missing = wanted.clone();
    let mut trace = TraceId::INVALID;
    for _ in 0..100 {
        provider.force_flush().unwrap();
        let spans = exporter.get_finished_spans().unwrap();
        let placed: Vec<&SpanData> = spans
            .iter()
            .filter(|s| step(s) == "send_command/place_order")
            .collect();
        if let [placed] = placed.as_slice() {
            trace = placed.span_context.trace_id();
            let steps: BTreeSet<String> = spans
                .iter()
                .filter(|s| s.span_context.trace_id() == trace)
                .map(step)
                .collect();
            missing = wanted
                .iter()
                .copied()
                .filter(|w| !steps.contains(*w))
                .collect();
            if missing.is_empty() {
                println!("trace {trace}: {steps:?}");
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(
        trace,
        TraceId::INVALID,
        "no span of the API's PlaceOrder send; spans: {:?}",
        exporter
            .get_finished_spans()
            .unwrap()
            .iter()
            .map(step)
            .collect::<BTreeSet<_>>()
    );
    assert!(
        missing.is_empty(),
        "trace {trace} lacks {missing:?}; every span: {:?}",
        exporter
            .get_finished_spans()
            .unwrap()
            .iter()
            .map(|s| (s.span_context.trace_id(), step(s)))
            .collect::<Vec<_>>()
    );

    // The processor's command span is a child of the API's send (through the
    // command record), not a root of its own.
    let spans = exporter.get_finished_spans().unwrap();
    let send = spans
        .iter()
        .find(|s| step(s) == "send_command/place_order")
        .unwrap();
    let decided = spans
        .iter()
        .find(|s| step(s) == "command/place_order" && s.span_context.trace_id() == trace)
        .unwrap();
    assert_eq!(decided.parent_span_id, send.span_context.span_id());
    assert!(decided.parent_span_is_remote);

    running.shutdown().await.unwrap();
}

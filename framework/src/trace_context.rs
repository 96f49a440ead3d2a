//! W3C trace context across Kafka: which span a `traceparent` header continues,
//! and which `traceparent` a span hands on.
//!
//! With the `otel` feature, a span recorded by a `tracing-opentelemetry` layer gets
//! the remote parent named by a record's `traceparent`, and the records it writes
//! carry its own context. Without the feature (or without such a layer) spans keep
//! their local parents and the `traceparent` received is handed on unchanged: the
//! trace id still travels from a command to its events and the next commands.

/// The parts of a W3C `traceparent` (version 00): trace id, parent span id, flags.
#[cfg_attr(not(feature = "otel"), allow(dead_code))]
fn parse(traceparent: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || trace.len() != 32 || span.len() != 16 {
        return None;
    }
    let hex = |s: &str, out: &mut [u8]| -> Option<()> {
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(())
    };
    let (mut t, mut s) = ([0u8; 16], [0u8; 8]);
    hex(trace, &mut t)?;
    hex(span, &mut s)?;
    let flags = u8::from_str_radix(flags, 16)
        .ok()
        .filter(|_| flags.len() == 2)?;
    // All-zero ids are invalid (W3C Trace Context, 3.2.2.3 and 3.2.2.4).
    (t != [0; 16] && s != [0; 8]).then_some((t, s, flags))
}

/// Makes the span of a record's `traceparent` the parent of `span`.
#[cfg(feature = "otel")]
pub(crate) fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let Some((trace, parent, flags)) = traceparent.and_then(parse) else {
        return;
    };
    let remote = SpanContext::new(
        TraceId::from_bytes(trace),
        SpanId::from_bytes(parent),
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}

/// Without the `otel` feature spans keep their local parents.
#[cfg(not(feature = "otel"))]
pub(crate) fn continue_trace(_span: &tracing::Span, _traceparent: Option<&str>) {}

/// The `traceparent` of `span`, if OpenTelemetry records it.
#[cfg(feature = "otel")]
pub(crate) fn traceparent_of(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

/// Without the `otel` feature no span has a context of its own to hand on.
#[cfg(not(feature = "otel"))]
pub(crate) fn traceparent_of(_span: &tracing::Span) -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_version_00_and_refuses_the_rest() {
        let (trace, span, flags) =
            parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(trace[0], 0x4b);
        assert_eq!(trace[15], 0x36);
        assert_eq!(span, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(flags, 1);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-00",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[cfg(not(feature = "otel"))]
    #[test]
    fn without_otel_a_span_hands_on_nothing_of_its_own() {
        let span = tracing::info_span!("x");
        continue_trace(
            &span,
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert_eq!(traceparent_of(&span), None);
    }
}

//! W3C trace context over NATS headers, through OpenTelemetry's
//! [`TraceContextPropagator`]: the remote parent of a request or event (its
//! `traceparent` and `tracestate` headers, and the envelope's `traceparent`
//! attribute), and the current span's context for what goes out.

use async_nats::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use toronto_protocol::TraceParent;
use toronto_protocol::trace::TRACESTATE_HEADER;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Reads trace context from NATS headers.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes trace context into NATS headers.
struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

/// The remote parent of an incoming message: the envelope's `traceparent` attribute
/// when it has one (it is what the sender signed and stored), else the
/// `traceparent` header; `tracestate` from the header, kept when it belongs to the
/// same trace. An empty context when there is neither.
pub fn remote_context(headers: Option<&HeaderMap>, envelope: Option<&TraceParent>) -> Context {
    let from_headers = headers
        .map(|h| TraceContextPropagator::new().extract(&HeaderExtractor(h)))
        .unwrap_or_default();
    let Some(tp) = envelope else {
        return from_headers;
    };
    let header_span = from_headers.span().span_context().clone();
    let Some((trace_id, span_id, flags)) = ids(tp) else {
        return from_headers;
    };
    if header_span.is_valid()
        && header_span.trace_id() == trace_id
        && header_span.span_id() == span_id
    {
        return from_headers;
    }
    let state = if header_span.is_valid() && header_span.trace_id() == trace_id {
        header_span.trace_state().clone()
    } else {
        TraceState::default()
    };
    Context::new().with_remote_span_context(SpanContext::new(trace_id, span_id, flags, true, state))
}

fn ids(tp: &TraceParent) -> Option<(TraceId, SpanId, TraceFlags)> {
    Some((
        TraceId::from_hex(&tp.trace_id).ok()?,
        SpanId::from_hex(&tp.span_id).ok()?,
        TraceFlags::new(tp.flags),
    ))
}

/// Makes `cx` the parent of `span` (a span just created, not yet entered). Nothing
/// happens when traces are not exported.
pub fn set_parent(span: &tracing::Span, cx: Context) {
    if super::exporting() && !span.is_disabled() {
        let _ = span.set_parent(cx);
    }
}

/// The current span's context, when a traced span is active.
pub fn current() -> Option<SpanContext> {
    Context::map_current(|cx| {
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| sc.clone())
    })
}

/// The context of `span` (its own ids once entered), when traces are exported.
pub fn span_context(span: &tracing::Span) -> Option<SpanContext> {
    if !super::exporting() || span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// `sc` as a `traceparent`.
pub fn traceparent_of(sc: &SpanContext) -> TraceParent {
    TraceParent {
        trace_id: sc.trace_id().to_string(),
        span_id: sc.span_id().to_string(),
        flags: sc.trace_flags().to_u8(),
    }
}

/// The current span as a `traceparent` (the hook
/// [`toronto_protocol::trace::set_current_source`] calls).
pub fn current_traceparent() -> Option<TraceParent> {
    current().map(|sc| traceparent_of(&sc))
}

/// Adds the `tracestate` of the current span to `headers` when the message's
/// `traceparent` belongs to the same trace (W3C: `tracestate` travels with the
/// `traceparent` it was received with).
pub fn add_tracestate(headers: &mut HeaderMap, traceparent: &str) {
    let Some(sc) = current() else {
        return;
    };
    add_tracestate_of(headers, traceparent, &sc);
}

/// Adds `sc`'s `tracestate` to `headers` when `traceparent` is in its trace.
pub fn add_tracestate_of(headers: &mut HeaderMap, traceparent: &str, sc: &SpanContext) {
    let state = sc.trace_state().header();
    if state.is_empty() {
        return;
    }
    let same_trace = TraceParent::parse(traceparent)
        .is_some_and(|tp| TraceId::from_hex(&tp.trace_id).ok() == Some(sc.trace_id()));
    if same_trace {
        headers.insert(TRACESTATE_HEADER, state.as_str());
    }
}

/// Writes `sc` as `traceparent` and `tracestate` headers.
pub fn inject(headers: &mut HeaderMap, sc: &SpanContext) {
    let cx = Context::new().with_remote_span_context(sc.clone());
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, *v);
        }
        h
    }

    #[test]
    fn headers_give_the_parent_and_its_tracestate() {
        let h = headers(&[("traceparent", TP), ("tracestate", "vendor=abc,other=1")]);
        let cx = remote_context(Some(&h), None);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_remote());
        assert_eq!(traceparent_of(&sc).to_string(), TP);
        assert_eq!(sc.trace_state().header(), "vendor=abc,other=1");
        let mut out = HeaderMap::new();
        inject(&mut out, &sc);
        assert_eq!(out.get("traceparent").unwrap().as_str(), TP);
        assert_eq!(
            out.get("tracestate").unwrap().as_str(),
            "vendor=abc,other=1"
        );
    }

    #[test]
    fn the_envelope_attribute_wins_and_keeps_the_state_of_its_trace() {
        let other_span = "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01";
        let h = headers(&[("traceparent", other_span), ("tracestate", "vendor=abc")]);
        let tp = TraceParent::parse(TP).unwrap();
        let sc = remote_context(Some(&h), Some(&tp))
            .span()
            .span_context()
            .clone();
        assert_eq!(traceparent_of(&sc).to_string(), TP);
        assert_eq!(sc.trace_state().header(), "vendor=abc");

        // Another trace's state is not carried over.
        let foreign = "00-0af7651916cd43dd8448eb211c80319c-1111111111111111-01";
        let h = headers(&[("traceparent", foreign), ("tracestate", "vendor=abc")]);
        let sc = remote_context(Some(&h), Some(&tp))
            .span()
            .span_context()
            .clone();
        assert_eq!(traceparent_of(&sc).to_string(), TP);
        assert!(sc.trace_state().header().is_empty());
    }

    #[test]
    fn nothing_valid_is_an_empty_context() {
        let h = headers(&[("traceparent", "garbage")]);
        assert!(
            !remote_context(Some(&h), None)
                .span()
                .span_context()
                .is_valid()
        );
        assert!(!remote_context(None, None).span().span_context().is_valid());
    }

    #[test]
    fn tracestate_goes_only_with_its_own_trace() {
        let sc = remote_context(
            Some(&headers(&[("traceparent", TP), ("tracestate", "v=1")])),
            None,
        )
        .span()
        .span_context()
        .clone();
        let mut h = HeaderMap::new();
        add_tracestate_of(
            &mut h,
            "00-0af7651916cd43dd8448eb211c80319c-1111111111111111-01",
            &sc,
        );
        assert!(h.get("tracestate").is_none());
        add_tracestate_of(
            &mut h,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01",
            &sc,
        );
        assert_eq!(h.get("tracestate").unwrap().as_str(), "v=1");
    }
}

//! W3C trace context (`traceparent`), carried as a NATS header and as the envelope
//! extension attribute of the same name; `tracestate` travels beside it as a NATS
//! header.
//!
//! A process that traces its work ([`set_current_source`]) makes the `traceparent`
//! of what it sends name its current span, so that the receiver's span is a child of
//! it; otherwise span ids are made up, the trace id carried along.

use std::fmt;
use std::sync::OnceLock;

use uuid::Uuid;

/// The NATS header (and envelope attribute) name.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The NATS header of the W3C `tracestate` that goes with a `traceparent`.
pub const TRACESTATE_HEADER: &str = "tracestate";

/// Where the current span's context comes from, once a tracer is installed.
static CURRENT: OnceLock<fn() -> Option<TraceParent>> = OnceLock::new();

/// Installs the source of the current span's context (the runtime's tracing layer).
/// From then on [`TraceParent::new_root`] continues the current span's trace and
/// [`TraceParent::child`] names the current span when it is in the same trace. The
/// first source installed stays.
pub fn set_current_source(source: fn() -> Option<TraceParent>) {
    let _ = CURRENT.set(source);
}

/// The current span's context, when a source is installed and a span is active.
pub fn current() -> Option<TraceParent> {
    CURRENT.get().and_then(|source| source())
}

/// A parsed `traceparent`: `00-<trace id>-<parent span id>-<flags>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 lowercase hex digits, not all zero.
    pub trace_id: String,
    /// 16 lowercase hex digits, not all zero: the span of the sender.
    pub span_id: String,
    /// Trace flags; bit 0 is `sampled`.
    pub flags: u8,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

/// 16 random lowercase hex digits, never all zero (the high half of a v4 UUID holds
/// its version digit, 4), written without the formatting machinery.
fn random_span_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = Uuid::new_v4().as_u64_pair().0;
    let digits: [u8; 16] = std::array::from_fn(|i| HEX[((bits >> ((15 - i) * 4)) & 0xf) as usize]);
    String::from(std::str::from_utf8(&digits).expect("hex digits"))
}

/// 32 random lowercase hex digits (a v4 UUID's), never all zero.
fn random_trace_id() -> String {
    let mut digits = [0u8; 32];
    String::from(&*Uuid::new_v4().simple().encode_lower(&mut digits))
}

impl TraceParent {
    /// Parses a `traceparent` value; `None` when it is not valid W3C trace context.
    pub fn parse(value: &str) -> Option<Self> {
        let (trace_id, span_id, flags) = Self::fields(value)?;
        Some(Self {
            trace_id: trace_id.to_owned(),
            span_id: span_id.to_owned(),
            flags,
        })
    }

    /// Whether `value` is a valid `traceparent` ([`TraceParent::parse`] would take
    /// it), checked without allocating.
    pub fn is_valid(value: &str) -> bool {
        Self::fields(value).is_some()
    }

    /// The trace id, span id and flags of a valid `traceparent`.
    fn fields(value: &str) -> Option<(&str, &str, u8)> {
        // Version 00, as every sender writes it: the fields at fixed places.
        let b = value.as_bytes();
        if b.len() == 55 && b.starts_with(b"00-") && b[35] == b'-' && b[52] == b'-' {
            // Every cut is next to an ASCII `-`, so on a character boundary.
            let (trace_id, span_id, flags) = (&value[3..35], &value[36..52], &value[53..]);
            if !is_hex(trace_id, 32) || !is_hex(span_id, 16) {
                return None;
            }
            return Some((trace_id, span_id, u8::from_str_radix(flags, 16).ok()?));
        }
        let mut parts = value.trim().split('-');
        let (version, trace_id, span_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || u8::from_str_radix(version, 16).is_err() {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        if !is_hex(trace_id, 32) || !is_hex(span_id, 16) || flags.len() != 2 {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some((trace_id, span_id, flags))
    }

    /// Starts a new trace (sampled), or, inside a traced span, the current span's
    /// context (the message is sent from it).
    pub fn new_root() -> Self {
        if let Some(current) = current() {
            return current;
        }
        Self {
            trace_id: random_trace_id(),
            span_id: random_span_id(),
            flags: 1,
        }
    }

    /// The `traceparent` text (as `to_string` writes it), in one allocation of the
    /// right size.
    pub fn header_value(&self) -> String {
        let mut text = String::with_capacity(3 + self.trace_id.len() + 1 + self.span_id.len() + 3);
        // `fmt::Write` for `String` cannot fail.
        let _ = fmt::write(&mut text, format_args!("{self}"));
        text
    }

    /// A new span in the same trace: the current span when one of this trace is
    /// active, else a made-up span id.
    pub fn child(&self) -> Self {
        if let Some(current) = current().filter(|c| c.trace_id == self.trace_id) {
            return current;
        }
        Self {
            trace_id: self.trace_id.clone(),
            span_id: random_span_id(),
            flags: self.flags,
        }
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `00-{trace_id}-{span_id}-{flags:02x}`, piece by piece (no format parsing).
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let flags = [
            HEX[usize::from(self.flags >> 4)],
            HEX[usize::from(self.flags & 0xf)],
        ];
        f.write_str("00-")?;
        f.write_str(&self.trace_id)?;
        f.write_str("-")?;
        f.write_str(&self.span_id)?;
        f.write_str("-")?;
        f.write_str(std::str::from_utf8(&flags).expect("hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_trace_in_children() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(tp).unwrap();
        assert_eq!(parsed.to_string(), tp);
        let child = parsed.child();
        assert_eq!(child.trace_id, parsed.trace_id);
        assert_ne!(child.span_id, parsed.span_id);
        assert!(TraceParent::parse(&child.to_string()).is_some());
        assert!(TraceParent::parse(&TraceParent::new_root().to_string()).is_some());
        let root = TraceParent::new_root();
        assert_eq!(root.header_value(), root.to_string());
        assert_eq!(root.header_value().len(), 55);
    }

    thread_local! {
        static TEST_CURRENT: std::cell::RefCell<Option<TraceParent>> =
            const { std::cell::RefCell::new(None) };
    }

    fn test_source() -> Option<TraceParent> {
        TEST_CURRENT.with(|c| c.borrow().clone())
    }

    #[test]
    fn a_traced_process_sends_from_its_current_span() {
        // The source answers only on this test's thread: other tests see no span.
        set_current_source(test_source);
        let current =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        TEST_CURRENT.with(|c| *c.borrow_mut() = Some(current.clone()));
        assert_eq!(TraceParent::new_root(), current);
        let received = TraceParent {
            span_id: "1111111111111111".into(),
            ..current.clone()
        };
        assert_eq!(received.child(), current);
        // Another trace keeps its own trace id.
        let other =
            TraceParent::parse("00-0af7651916cd43dd8448eb211c80319c-1111111111111111-01").unwrap();
        let child = other.child();
        assert_eq!(child.trace_id, other.trace_id);
        assert_ne!(child.span_id, current.span_id);
        TEST_CURRENT.with(|c| *c.borrow_mut() = None);
        assert_ne!(TraceParent::new_root().trace_id, current.trace_id);
    }

    #[test]
    fn refuses_invalid_context() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad:?} parsed");
        }
    }
}

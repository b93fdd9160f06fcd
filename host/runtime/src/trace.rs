//! W3C Trace Context (`traceparent`): carried from an incoming request or
//! event into a function's outbound calls and the events it publishes.
//!
//! Every invocation gets its own span id in the caller's trace (or a new
//! trace when the caller sent none). Its outbound HTTP requests and calls
//! to other functions carry `traceparent` with that span as the parent
//! (unless the guest set the header itself), and the events it publishes or
//! replies with carry it as the CloudEvents `traceparent` extension (unless
//! they have one). Sluice exports no spans; the ids let a tracing backend
//! and the logs (`trace_id` on every invocation's log lines) join up.

use std::cell::Cell;
use std::fmt;

/// The header, and the CloudEvents extension of the same name.
pub const TRACEPARENT: &str = "traceparent";

/// One span's place in a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace, shared by every span in it.
    pub trace_id: [u8; 16],
    /// This span.
    pub span_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceContext {
    /// Parses a `traceparent` value. Version `00` must have exactly four
    /// fields; a later version may have more (they are ignored, as the
    /// specification asks). All-zero ids and version `ff` are invalid.
    pub fn parse(value: &str) -> Option<TraceContext> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        let rest = parts.next();
        if version.len() != 2
            || !is_lower_hex(version)
            || version == "ff"
            || (version == "00" && rest.is_some())
        {
            return None;
        }
        let trace_id: [u8; 16] = decode_hex(trace)?;
        let span_id: [u8; 8] = decode_hex(span)?;
        let [flags]: [u8; 1] = decode_hex(flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            flags,
        })
    }

    /// A span in a new trace, sampled.
    pub fn root() -> TraceContext {
        let trace_id = u128::from(next_random()) << 64 | u128::from(next_random());
        TraceContext {
            trace_id: nonzero(trace_id.to_be_bytes()),
            span_id: nonzero(next_random().to_be_bytes()),
            flags: 1,
        }
    }

    /// A new span in the same trace, child of this one.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            span_id: nonzero(next_random().to_be_bytes()),
            ..*self
        }
    }

    /// The span for an invocation called with `incoming` (`traceparent` of
    /// the request or event): its child, or a new trace's root.
    pub fn for_invocation(incoming: Option<&str>) -> TraceContext {
        incoming
            .and_then(TraceContext::parse)
            .map_or_else(TraceContext::root, |parent| parent.child())
    }

    /// The trace id in hex, for logs.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

impl Default for TraceContext {
    /// A new trace's root span (ids are random: no two defaults are equal).
    fn default() -> TraceContext {
        TraceContext::root()
    }
}

impl fmt::Display for TraceContext {
    /// The `traceparent` value, version `00`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        )
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn decode_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !is_lower_hex(s) {
        return None;
    }
    let mut out = [0; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * bytes.len());
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

fn nonzero<const N: usize>(mut bytes: [u8; N]) -> [u8; N] {
    if bytes == [0; N] {
        bytes[N - 1] = 1;
    }
    bytes
}

/// A fast per-thread generator (splitmix64), seeded from the OS once per
/// thread: ids must be unique, not secret.
fn next_random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            // Falls back to the clock if the OS refuses (ids stay unique enough).
            if getrandom::fill(&mut seed).is_err() {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                seed = now.to_le_bytes();
            }
            u64::from_le_bytes(seed)
        });
    }
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIVEN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_prints_the_w3c_example() {
        let context = TraceContext::parse(GIVEN).unwrap();
        assert_eq!(context.to_string(), GIVEN);
        assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.flags, 1);
    }

    #[test]
    fn refuses_what_the_specification_refuses() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
        // A later version may carry more fields.
        assert!(
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-zz")
                .is_some()
        );
    }

    #[test]
    fn an_invocation_continues_the_callers_trace_or_starts_one() {
        let child = TraceContext::for_invocation(Some(GIVEN));
        let parent = TraceContext::parse(GIVEN).unwrap();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.span_id, parent.span_id);
        assert_eq!(child.flags, parent.flags);
        let a = TraceContext::for_invocation(None);
        let b = TraceContext::for_invocation(Some("garbage"));
        assert_ne!(a.trace_id, b.trace_id);
        assert_eq!(TraceContext::parse(&a.to_string()), Some(a));
    }
}

//! Host log lines a guest causes, bounded per invocation.
//!
//! A guest can make the host log: a denied outbound request, a call chain
//! too deep, an invalid reply event. Looping over such a call, one
//! invocation once made the host write ~480,000 warnings (75 MB) in three
//! seconds. Each invocation logs the first [`WARNINGS_PER_CALL`] of them;
//! the rest are counted and reported in one line when the call ends.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Host warnings one invocation may cause before the rest are only
/// counted. Defends the host's log (and its disk) against a guest that
/// repeats a refused call in a loop.
pub const WARNINGS_PER_CALL: u32 = 5;

/// Bytes of text from a guest (a failure's reason, an error response's
/// body) the host keeps in its log and in a dead letter's reason; Knative
/// cuts `knativeerrordata` at the same length.
pub const GUEST_TEXT_BYTES: usize = 1024;

/// `text` from a guest made safe for the host's log: at most
/// [`GUEST_TEXT_BYTES`] (cut at a character boundary, with how much was
/// cut), and control characters (newlines, escape sequences) escaped, so
/// a guest can neither flood the log nor forge lines in it.
pub fn guest_text(text: &str) -> String {
    guest_bytes(text.as_bytes())
}

/// [`guest_text`] of bytes a guest wrote, read as UTF-8 (a bad sequence
/// becomes U+FFFD); only what is shown is looked at, however long `bytes`.
pub fn guest_bytes(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut shown = 0;
    // False once `c`, escaped if need be, no longer fits.
    let push = |out: &mut String, c: char| {
        let mut escaped = [0u8; 16];
        let text: &str = if c.is_control() {
            let mut n = 0;
            for e in c.escape_default() {
                n += e.encode_utf8(&mut escaped[n..]).len();
            }
            std::str::from_utf8(&escaped[..n]).expect("escapes are ASCII")
        } else {
            c.encode_utf8(&mut escaped)
        };
        if out.len() + text.len() > GUEST_TEXT_BYTES {
            return false;
        }
        out.push_str(text);
        true
    };
    'chunks: for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if !push(&mut out, c) {
                break 'chunks;
            }
            shown += c.len_utf8();
        }
        if !chunk.invalid().is_empty() {
            if !push(&mut out, char::REPLACEMENT_CHARACTER) {
                break 'chunks;
            }
            shown += chunk.invalid().len();
        }
    }
    if shown < bytes.len() {
        out.push_str(&format!("… ({} bytes more)", bytes.len() - shown));
    }
    out
}

/// The warnings budget of one invocation.
#[derive(Debug, Default)]
pub struct GuestWarnings {
    logged: AtomicU32,
    suppressed: AtomicU64,
}

impl GuestWarnings {
    /// Whether the next warning may be logged; if not, it is counted.
    pub fn allow(&self) -> bool {
        if self.logged.fetch_add(1, Ordering::Relaxed) < WARNINGS_PER_CALL {
            return true;
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Warnings counted instead of logged so far.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }

    /// Logs, at the end of the invocation, how many warnings were only
    /// counted (nothing when none were).
    pub fn finish(&self, function: &str, invocation: &str) {
        let suppressed = self.suppressed();
        if suppressed > 0 {
            tracing::warn!(
                %function,
                %invocation,
                suppressed,
                logged = WARNINGS_PER_CALL,
                "the call caused more host warnings than are logged per call; the rest were counted"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_text_is_cut_and_its_control_characters_escaped() {
        assert_eq!(guest_text("plain"), "plain");
        assert_eq!(
            guest_text("a\nFAKE host line\x1b[2J"),
            "a\\nFAKE host line\\u{1b}[2J"
        );
        let long = "é".repeat(1000);
        let cut = guest_text(&long);
        assert!(cut.starts_with(&"é".repeat(512)), "{cut}");
        assert!(cut.ends_with("… (976 bytes more)"), "{cut}");
        // Escapes count against the bound too.
        let escapes = guest_text(&"\x1b".repeat(1000));
        assert!(escapes.len() < GUEST_TEXT_BYTES + 32, "{}", escapes.len());
        assert!(escapes.ends_with("… (830 bytes more)"), "{escapes}");
        // Bytes: the count is of the whole body, bad UTF-8 shown as U+FFFD.
        let mut body = vec![0xff];
        body.extend(b"x".repeat(5000));
        let shown = guest_bytes(&body);
        assert!(shown.starts_with("\u{fffd}xxx"), "{shown}");
        assert!(shown.ends_with("… (3979 bytes more)"), "{shown}");
    }

    #[test]
    fn the_first_few_are_logged_and_the_rest_counted() {
        let warnings = GuestWarnings::default();
        let allowed = (0..1000).filter(|_| warnings.allow()).count();
        assert_eq!(allowed, WARNINGS_PER_CALL as usize);
        assert_eq!(warnings.suppressed(), 1000 - u64::from(WARNINGS_PER_CALL));
    }
}

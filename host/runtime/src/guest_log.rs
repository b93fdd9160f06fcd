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
    fn the_first_few_are_logged_and_the_rest_counted() {
        let warnings = GuestWarnings::default();
        let allowed = (0..1000).filter(|_| warnings.allow()).count();
        assert_eq!(allowed, WARNINGS_PER_CALL as usize);
        assert_eq!(warnings.suppressed(), 1000 - u64::from(WARNINGS_PER_CALL));
    }
}

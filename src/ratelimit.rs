//! Logging what repeats without letting it flood the log: a [`LogLimiter`] lets one line per
//! kind through every [`LOG_EVERY`] and counts the rest, which the next line reports as
//! `suppressed`. A client hammering the API with refused requests, or a node out of file
//! descriptors failing every agent spawn, costs a few lines a minute, not thousands a second.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// One line per kind at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Kinds remembered at most (the oldest are forgotten first; kinds are few and fixed).
const KINDS: usize = 256;

/// When each kind of line was last let through, and how many were held back since.
#[derive(Debug, Default)]
pub struct LogLimiter {
    kinds: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl LogLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether to log a line of `kind` now: `Some(n)` with the number of lines of that kind
    /// held back since the last one, or `None` to hold this one back too.
    pub fn allow(&self, kind: &'static str) -> Option<u64> {
        let now = Instant::now();
        let mut kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        match kinds.get_mut(kind) {
            Some((last, held)) if now.duration_since(*last) < LOG_EVERY => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                *last = now;
                Some(std::mem::take(held))
            }
            None => {
                if kinds.len() >= KINDS {
                    kinds.clear();
                }
                kinds.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_line_per_kind_and_period() {
        let l = LogLimiter::new();
        assert_eq!(l.allow("a"), Some(0));
        assert_eq!(l.allow("a"), None);
        assert_eq!(l.allow("a"), None);
        assert_eq!(l.allow("b"), Some(0));
        tokio::time::advance(LOG_EVERY).await;
        assert_eq!(l.allow("a"), Some(2));
        assert_eq!(l.allow("a"), None);
    }
}

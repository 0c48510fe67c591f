//! The process's file descriptors: the daemon raises its own limit (`RLIMIT_NOFILE`) to the
//! hard limit at start, and its API never holds more connections than that limit less a
//! reserve, so that agents can always be spawned and heartbeat sockets, the store and
//! connectors can always open what they need, whatever clients do to the API.
//!
//! Many distributions start services with a soft limit of 1,024; the hard limit is usually far
//! higher (524,288 under systemd). An `exec` agent inherits the raised limit.

/// Descriptors kept for everything but the API's connections: at least this many...
pub const RESERVE_MIN: u64 = 64;
/// ...and at least this share of the limit (1/4).
pub const RESERVE_DIVISOR: u64 = 4;
/// The soft limit is raised no further than this (Linux's default `fs.nr_open`).
const CEILING: u64 = 1 << 20;

/// The limit before and after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The soft limit found at start.
    pub was: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit (`None`: unlimited).
    pub hard: Option<u64>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (at most 2^20) and logs what it did.
#[cfg(unix)]
pub fn raise() -> Limit {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    let was = before.current.unwrap_or(CEILING);
    let target = before.maximum.unwrap_or(CEILING).min(CEILING);
    if target > was {
        let new = Rlimit {
            current: Some(target),
            maximum: before.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, new) {
            tracing::warn!(soft = was, hard = ?before.maximum, error = %e, "Cannot raise the file-descriptor limit.");
        }
    }
    let soft = soft_limit();
    tracing::info!(was, soft, hard = ?before.maximum, reserve = reserve(soft), "File-descriptor limit.");
    Limit {
        was,
        soft,
        hard: before.maximum,
    }
}

#[cfg(not(unix))]
pub fn raise() -> Limit {
    Limit {
        was: CEILING,
        soft: CEILING,
        hard: None,
    }
}

/// The soft `RLIMIT_NOFILE` now.
#[cfg(unix)]
pub fn soft_limit() -> u64 {
    use rustix::process::{Resource, getrlimit};
    getrlimit(Resource::Nofile).current.unwrap_or(CEILING)
}

#[cfg(not(unix))]
pub fn soft_limit() -> u64 {
    CEILING
}

/// Descriptors kept for everything but the API's connections under a limit of `limit`.
pub fn reserve(limit: u64) -> u64 {
    (limit / RESERVE_DIVISOR).max(RESERVE_MIN)
}

/// How many connections the API may hold at once under a limit of `limit`: `limit` less the
/// [`reserve`], at most `cap`.
pub fn connection_budget(limit: u64, cap: usize) -> usize {
    let budget = limit.saturating_sub(reserve(limit));
    usize::try_from(budget).unwrap_or(usize::MAX).min(cap)
}

/// Descriptors open now (`/proc/self/fd`); `None` where that cannot be read.
pub fn open_count() -> Option<u64> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    // The directory's own descriptor is among them.
    Some((dir.count() as u64).saturating_sub(1))
}

/// Whether an I/O error says the process or the system ran out of descriptors, processes or
/// memory (`EMFILE`, `ENFILE`, `EAGAIN` from fork, `ENOMEM`): the node's trouble, not a
/// resource's.
pub fn is_exhaustion(e: &std::io::Error) -> bool {
    // EAGAIN 11, ENOMEM 12, ENFILE 23, EMFILE 24 on Linux.
    #[cfg(target_os = "linux")]
    const CODES: [i32; 4] = [11, 12, 23, 24];
    #[cfg(not(target_os = "linux"))]
    const CODES: [i32; 0] = [];
    e.raw_os_error().is_some_and(|c| CODES.contains(&c))
        || e.kind() == std::io::ErrorKind::OutOfMemory
}

/// Whether `e` or one of its sources is an [`is_exhaustion`] I/O error.
pub fn caused_by_exhaustion(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            // A wrapping I/O error's `source` skips what it wraps: look at that too.
            let inner = io
                .get_ref()
                .map(|i| i as &(dyn std::error::Error + 'static));
            if is_exhaustion(io) || inner.is_some_and(caused_by_exhaustion) {
                return true;
            }
        }
        next = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_leave_a_reserve() {
        assert_eq!(reserve(1024), 256);
        assert_eq!(reserve(100), 64);
        assert_eq!(connection_budget(1024, 512), 512);
        assert_eq!(connection_budget(512, 512), 384);
        assert_eq!(connection_budget(64, 512), 0);
        assert_eq!(connection_budget(524_288, 512), 512);
    }

    #[test]
    fn exhaustion_errors() {
        assert!(is_exhaustion(&std::io::Error::from_raw_os_error(24)));
        assert!(is_exhaustion(&std::io::Error::from_raw_os_error(23)));
        assert!(!is_exhaustion(&std::io::Error::from_raw_os_error(2)));
        let wrapped = std::io::Error::other(std::io::Error::from_raw_os_error(24));
        assert!(caused_by_exhaustion(&wrapped));
    }
}

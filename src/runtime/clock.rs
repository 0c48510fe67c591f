//! The wall clock, behind a seam: the core has no clock, and the runtime reads this one when an
//! event happens to give it its wall-clock time ([`crate::cloudevents::Clock`]). Tests step it
//! without sleeping: in-process with their own [`WallClock`], and on a real node through
//! [`SteppedClock`] (fault injection).

use std::fmt::Debug;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Where the runtime reads wall-clock time.
pub trait WallClock: Send + Sync + Debug {
    fn now(&self) -> SystemTime;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Fault injection (`BUDDYGATE_FAULT_INJECTION`): the system clock stepped by the signed
/// number of milliseconds in `file` (`3600000` is an hour ahead, `-5000` five seconds back;
/// no file, no step), read at every call, as an NTP step would move it.
#[derive(Debug, Clone)]
pub struct SteppedClock {
    pub file: PathBuf,
}

impl WallClock for SteppedClock {
    fn now(&self) -> SystemTime {
        let now = SystemTime::now();
        let step: i64 = std::fs::read_to_string(&self.file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let by = Duration::from_millis(step.unsigned_abs());
        if step >= 0 {
            now + by
        } else {
            now.checked_sub(by)
                .filter(|t| *t >= SystemTime::UNIX_EPOCH)
                .unwrap_or(SystemTime::UNIX_EPOCH)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stepped_clock_follows_its_file() {
        let file = std::env::temp_dir().join(format!("buddygate-clock-{}", std::process::id()));
        let _ = std::fs::remove_file(&file);
        let c = SteppedClock { file: file.clone() };
        let diff = |c: &SteppedClock| {
            let (a, b) = (c.now(), SystemTime::now());
            a.duration_since(b)
                .map(|d| d.as_secs_f64())
                .unwrap_or_else(|e| -e.duration().as_secs_f64())
        };
        assert!(diff(&c).abs() < 1.0);
        std::fs::write(&file, "3600000\n").unwrap();
        assert!((diff(&c) - 3600.0).abs() < 1.0);
        std::fs::write(&file, "-5000").unwrap();
        assert!((diff(&c) + 5.0).abs() < 1.0);
        let _ = std::fs::remove_file(&file);
    }
}

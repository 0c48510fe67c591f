//! `xs:dateTime` and `xs:duration` as ONVIF uses them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `2026-11-24T22:00:00Z` (UTC, whole seconds).
pub fn format_datetime(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `PT60S`, `PT0.5S`.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("PT{}S", d.as_secs())
    } else {
        format!("PT{}.{:03}S", d.as_secs(), d.subsec_millis())
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn digits(s: &str, n: usize) -> Option<(i64, &str)> {
    if s.len() < n || !s.as_bytes()[..n].iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some((s[..n].parse().ok()?, &s[n..]))
}

fn expect(s: &str, c: char) -> Option<&str> {
    s.strip_prefix(c)
}

/// An `xs:dateTime`: `YYYY-MM-DDThh:mm:ss[.fff][Z|±hh:mm]`; without a zone it is taken as UTC.
pub fn parse_datetime(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let (year, r) = digits(s, 4)?;
    let (month, r) = digits(expect(r, '-')?, 2)?;
    let (day, r) = digits(expect(r, '-')?, 2)?;
    let (hour, r) = digits(expect(r, 'T')?, 2)?;
    let (minute, r) = digits(expect(r, ':')?, 2)?;
    let (second, mut r) = digits(expect(r, ':')?, 2)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 24 || minute > 59 {
        return None;
    }
    if second > 60 || (hour == 24 && (minute, second) != (0, 0)) {
        return None;
    }
    let mut nanos = 0u32;
    if let Some(frac) = r.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        let kept = &frac[..n.min(9)];
        nanos = kept.parse::<u32>().ok()? * 10u32.pow(9 - kept.len() as u32);
        r = &frac[n..];
    }
    let offset = match r {
        "" | "Z" => 0,
        _ => {
            let sign = match r.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, rest) = digits(&r[1..], 2)?;
            let (om, rest) = digits(expect(rest, ':')?, 2)?;
            if !rest.is_empty() || oh > 14 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// An `xs:duration` without a sign: `P[nY][nM][nW][nD][T[nH][nM][n[.f]S]]`; a year counts
/// 365 days and a month 30.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let mut r = s.strip_prefix('P')?;
    if r.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut in_time = false;
    let mut any = false;
    while !r.is_empty() {
        if let Some(rest) = r.strip_prefix('T') {
            if in_time || rest.is_empty() {
                return None;
            }
            in_time = true;
            r = rest;
            continue;
        }
        let n = r
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        if n == 0 || n >= r.len() {
            return None;
        }
        let value: f64 = r[..n].parse().ok()?;
        let unit = r.as_bytes()[n];
        let secs = match (in_time, unit) {
            (false, b'Y') => 365.0 * 86_400.0,
            (false, b'M') => 30.0 * 86_400.0,
            (false, b'W') => 7.0 * 86_400.0,
            (false, b'D') => 86_400.0,
            (true, b'H') => 3600.0,
            (true, b'M') => 60.0,
            (true, b'S') => 1.0,
            _ => return None,
        };
        if unit != b'S' && r[..n].contains('.') {
            return None;
        }
        total += value * secs;
        any = true;
        r = &r[n + 1..];
    }
    if !any || !total.is_finite() || total > 1e12 {
        return None;
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes() {
        let t = parse_datetime("2026-11-24T22:00:00Z").unwrap();
        assert_eq!(format_datetime(t), "2026-11-24T22:00:00Z");
        assert_eq!(parse_datetime("2026-11-24T22:00:00"), Some(t));
        assert_eq!(parse_datetime("2026-11-25T00:30:00+02:30"), Some(t));
        assert_eq!(
            parse_datetime("2026-11-24T22:00:00.25Z"),
            Some(t + Duration::from_millis(250))
        );
        assert_eq!(parse_datetime("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        for bad in [
            "",
            "2026-13-01T00:00:00Z",
            "2026-11-24 22:00:00Z",
            "2026-11-24T22:00:00+2",
            "x",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad}");
        }
    }

    #[test]
    fn durations() {
        let secs = |s| parse_duration(s).map(|d| d.as_secs_f64());
        assert_eq!(secs("PT60S"), Some(60.0));
        assert_eq!(secs("PT1M30.5S"), Some(90.5));
        assert_eq!(secs("P1DT1H"), Some(90_000.0));
        assert_eq!(secs("P1W"), Some(604_800.0));
        for bad in [
            "", "P", "PT", "60", "PT-1S", "P1H", "PTS", "PT1.5M", "PT1S2",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(60)), "PT60S");
        assert_eq!(format_duration(Duration::from_millis(1500)), "PT1.500S");
    }
}

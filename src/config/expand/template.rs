//! One string with `{A..B}` ranges (and, in resource ids, `{server}`): parsed once into a
//! [`Template`], then rendered per value.

use super::MAX_EXPANSION;

/// The digits of a range bound: enough for any `u64`.
const MAX_DIGITS: usize = 20;

/// What is wrong with a string that holds ranges.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("unmatched `{{`")]
    Unclosed,
    #[error("unmatched `}}`")]
    UnmatchedClose,
    #[error("`{{{0}}}` is not a range; write `{{A..B}}` with decimal numbers A <= B")]
    NotARange(String),
    #[error("range `{{{0}}}` is empty: it runs backwards")]
    Backwards(String),
    #[error("range `{{{0}}}` has {1} values; at most {MAX_EXPANSION} are allowed")]
    TooLarge(String, u64),
    #[error("`{{server}}` is only allowed in the `id` of a [[resources]] block")]
    ServerNotAllowed,
    #[error("ranges `{{{0}}}` ({1} values) and `{{{2}}}` ({3} values) differ in length")]
    Mismatch(String, u64, String, u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Range {
        text: String,
        start: u64,
        len: u64,
        width: usize,
    },
    Server,
}

/// A string with its ranges parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    /// The length of its ranges; `None` without any.
    len: Option<u64>,
}

impl Template {
    /// Parses `s`; `{server}` is accepted only when `allow_server`.
    pub fn parse(s: &str, allow_server: bool) -> Result<Self, RangeError> {
        let mut parts = Vec::new();
        let mut len: Option<(String, u64)> = None;
        let mut rest = s;
        while !rest.is_empty() {
            let open = rest.find('{');
            let close = rest.find('}');
            match (open, close) {
                (_, Some(c)) if open.is_none_or(|o| c < o) => {
                    return Err(RangeError::UnmatchedClose);
                }
                (None, _) => {
                    parts.push(Part::Lit(rest.to_string()));
                    break;
                }
                (Some(o), _) => {
                    if o > 0 {
                        parts.push(Part::Lit(rest[..o].to_string()));
                    }
                    let after = &rest[o + 1..];
                    let end = after.find('}').ok_or(RangeError::Unclosed)?;
                    let inner = &after[..end];
                    if inner.contains('{') {
                        return Err(RangeError::Unclosed);
                    }
                    let part = Self::part(inner, allow_server)?;
                    if let Part::Range { text, len: n, .. } = &part {
                        match &len {
                            Some((first, m)) if m != n => {
                                return Err(RangeError::Mismatch(
                                    first.clone(),
                                    *m,
                                    text.clone(),
                                    *n,
                                ));
                            }
                            Some(_) => {}
                            None => len = Some((text.clone(), *n)),
                        }
                    }
                    parts.push(part);
                    rest = &after[end + 1..];
                }
            }
        }
        Ok(Self {
            parts,
            len: len.map(|(_, n)| n),
        })
    }

    fn part(inner: &str, allow_server: bool) -> Result<Part, RangeError> {
        if inner == "server" {
            return if allow_server {
                Ok(Part::Server)
            } else {
                Err(RangeError::ServerNotAllowed)
            };
        }
        let not_a_range = || RangeError::NotARange(inner.to_string());
        let (a, b) = inner.split_once("..").ok_or_else(not_a_range)?;
        let digits = |s: &str| {
            !s.is_empty() && s.len() <= MAX_DIGITS && s.bytes().all(|c| c.is_ascii_digit())
        };
        if !digits(a) || !digits(b) {
            return Err(not_a_range());
        }
        let start: u64 = a.parse().map_err(|_| not_a_range())?;
        let end: u64 = b.parse().map_err(|_| not_a_range())?;
        if end < start {
            return Err(RangeError::Backwards(inner.to_string()));
        }
        let len = (end - start).saturating_add(1);
        if len > MAX_EXPANSION {
            return Err(RangeError::TooLarge(inner.to_string(), len));
        }
        let width = if a.len() > 1 && a.starts_with('0') {
            a.len()
        } else {
            0
        };
        Ok(Part::Range {
            text: inner.to_string(),
            start,
            len,
            width,
        })
    }

    /// The number of values of its ranges, `None` without ranges.
    pub fn range_len(&self) -> Option<u64> {
        self.len
    }

    pub fn uses_server(&self) -> bool {
        self.parts.contains(&Part::Server)
    }

    /// Value `i` (taken modulo the range length), with `{server}` replaced by `server`.
    pub fn render(&self, i: u64, server: &str) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Server => out.push_str(server),
                Part::Range {
                    start, len, width, ..
                } => {
                    let n = start.saturating_add(i % len.max(&1));
                    out.push_str(&format!("{n:0width$}"));
                }
            }
        }
        out
    }

    /// Every value, in order (one when it has no range).
    pub fn values(&self) -> Vec<String> {
        (0..self.len.unwrap_or(1))
            .map(|i| self.render(i, ""))
            .collect()
    }
}

/// Expands one string: `"cam-{01..03}"` gives `cam-01`, `cam-02`, `cam-03`.
pub fn expand(s: &str) -> Result<Vec<String>, RangeError> {
    Ok(Template::parse(s, false)?.values())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_plain_padded_and_single_ranges() {
        assert_eq!(expand("cam-1").unwrap(), ["cam-1"]);
        assert_eq!(expand("cam-{1..3}").unwrap(), ["cam-1", "cam-2", "cam-3"]);
        assert_eq!(
            expand("cam-{08..11}").unwrap(),
            ["cam-08", "cam-09", "cam-10", "cam-11"]
        );
        assert_eq!(expand("{098..100}x").unwrap(), ["098x", "099x", "100x"]);
        assert_eq!(expand("{0..2}").unwrap(), ["0", "1", "2"]);
        assert_eq!(expand("n{5..5}").unwrap(), ["n5"]);
        assert_eq!(
            expand("10.0.{1..2}.{11..12}").unwrap(),
            ["10.0.1.11", "10.0.2.12"]
        );
    }

    #[test]
    fn rejects_bad_ranges() {
        let err = |s: &str| expand(s).unwrap_err().to_string();
        assert_eq!(
            err("cam-{3..1}"),
            "range `{3..1}` is empty: it runs backwards"
        );
        assert_eq!(
            err("cam-{}"),
            "`{}` is not a range; write `{A..B}` with decimal numbers A <= B"
        );
        assert_eq!(
            err("cam-{a..b}"),
            "`{a..b}` is not a range; write `{A..B}` with decimal numbers A <= B"
        );
        assert_eq!(
            err("cam-{1..}"),
            "`{1..}` is not a range; write `{A..B}` with decimal numbers A <= B"
        );
        assert_eq!(
            err("cam-{-1..3}"),
            "`{-1..3}` is not a range; write `{A..B}` with decimal numbers A <= B"
        );
        assert_eq!(err("cam-{1..3"), "unmatched `{`");
        assert_eq!(err("cam-{1..{3}"), "unmatched `{`");
        assert_eq!(err("cam-1}"), "unmatched `}`");
        assert_eq!(
            err("cam-{1..100001}"),
            "range `{1..100001}` has 100001 values; at most 100000 are allowed"
        );
        assert_eq!(
            err("{1..99999999999999999999999}"),
            "`{1..99999999999999999999999}` is not a range; write `{A..B}` with decimal numbers A <= B"
        );
        assert_eq!(
            err("{1..3}-{1..2}"),
            "ranges `{1..3}` (3 values) and `{1..2}` (2 values) differ in length"
        );
        assert_eq!(
            err("{server}-1"),
            "`{server}` is only allowed in the `id` of a [[resources]] block"
        );
        assert_eq!(
            expand("{0..18446744073709551615}").unwrap_err(),
            RangeError::TooLarge("0..18446744073709551615".into(), u64::MAX)
        );
    }

    #[test]
    fn server_placeholder_renders_per_server() {
        let t = Template::parse("{server}-cam-{01..02}", true).unwrap();
        assert_eq!(t.range_len(), Some(2));
        assert!(t.uses_server());
        assert_eq!(t.render(1, "live-7"), "live-7-cam-02");
    }
}

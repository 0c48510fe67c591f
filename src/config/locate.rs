//! Where things are in the site file. Decoding, expansion and validation report an [`Issue`]
//! against a [`KeyPath`] such as `servers[3].buddies[1]`; the [`Locator`] walks the span tree
//! that the TOML parser produced to turn that path into `line:col`.

use std::fmt;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diag::Severity;

/// One step of a [`KeyPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A path from the document root to a key or value, displayed as `servers[3].buddies[1]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct KeyPath(Vec<Seg>);

impl KeyPath {
    pub(crate) fn root() -> Self {
        Self(Vec::new())
    }

    pub(crate) fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_string()));
        Self(segs)
    }

    pub(crate) fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        Self(segs)
    }

    pub(crate) fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Which part of a `key = value` pair an issue points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Point {
    /// The key itself: unknown keys.
    Key,
    /// The value, or the table header when the path names a table. A path that is not in the
    /// file (a default value) points at the nearest enclosing table that is.
    Value,
}

/// Where an [`Issue`] is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum At {
    /// A key or value, named in the message.
    Path(KeyPath, Point),
    /// A raw byte span (TOML syntax errors), not named.
    Span(Range<usize>),
}

/// A problem found before positions are known; [`Locator`] turns it into a
/// [`super::Diagnostic`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issue {
    pub(crate) severity: Severity,
    pub(crate) at: At,
    pub(crate) message: String,
    /// For a block that expands to many servers or resources: which one this is about. Issues
    /// that differ only in their subject are reported once, listing the subjects.
    pub(crate) subject: Option<String>,
}

impl Issue {
    pub(crate) fn error(path: &KeyPath, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, path, Point::Value, message)
    }

    pub(crate) fn warning(path: &KeyPath, message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, path, Point::Value, message)
    }

    pub(crate) fn new(
        severity: Severity,
        path: &KeyPath,
        point: Point,
        message: impl Into<String>,
    ) -> Self {
        Self {
            severity,
            at: At::Path(path.clone(), point),
            message: message.into(),
            subject: None,
        }
    }

    pub(crate) fn syntax(span: Range<usize>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            at: At::Span(span),
            message: message.into(),
            subject: None,
        }
    }

    pub(crate) fn about(mut self, subject: Option<&str>) -> Self {
        self.subject = subject.map(str::to_string);
        self
    }

    pub(crate) fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The message as shown: the key path first.
    pub(crate) fn text(&self) -> String {
        match &self.at {
            At::Path(path, _) if !path.is_root() => format!("{path}: {}", self.message),
            _ => self.message.clone(),
        }
    }
}

/// Turns paths and byte offsets into 1-based `line:col` (columns in characters).
pub(crate) struct Locator<'a> {
    text: &'a str,
    doc: Option<&'a Spanned<DeTable<'a>>>,
    line_starts: Vec<usize>,
}

impl<'a> Locator<'a> {
    pub(crate) fn new(text: &'a str, doc: Option<&'a Spanned<DeTable<'a>>>) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            text,
            doc,
            line_starts,
        }
    }

    /// `line:col` of a byte offset (clamped to the text).
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line.saturating_sub(1)];
        let col = self.text[start..offset].chars().count() + 1;
        (line.max(1), col)
    }

    /// The start of what `at` points at.
    pub(crate) fn offset(&self, at: &At) -> usize {
        match at {
            At::Span(span) => span.start,
            At::Path(path, point) => self.span(path, *point).start,
        }
    }

    /// The span of a key or value; see [`Point`] for what a missing path gives.
    pub(crate) fn span(&self, path: &KeyPath, point: Point) -> Range<usize> {
        let Some(doc) = self.doc else {
            return 0..0;
        };
        let mut table: Option<&DeTable<'_>> = Some(doc.get_ref());
        let mut array: Option<&[Spanned<DeValue<'_>>]> = None;
        let mut found = doc.span();
        let mut key_span = None;
        for (i, seg) in path.0.iter().enumerate() {
            let next = match (seg, table, array) {
                (Seg::Key(k), Some(t), _) => t.get_key_value(k.as_str()).map(|(key, value)| {
                    if i + 1 == path.0.len() {
                        key_span = Some(key.span());
                    }
                    value
                }),
                (Seg::Index(n), _, Some(a)) => a.get(*n),
                _ => None,
            };
            let Some(value) = next else {
                return found;
            };
            found = value.span();
            table = value.get_ref().as_table();
            array = value.get_ref().as_array().map(|a| &a[..]);
        }
        match (point, key_span) {
            (Point::Key, Some(span)) => span,
            _ => found,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str =
        "[site]\nname = \"hq\"\n\n[[servers]]\nid = \"é-1\"\nbuddies = [\"a\", \"b\"]\n";

    #[test]
    fn paths_display_like_the_file() {
        let p = KeyPath::root()
            .key("servers")
            .index(3)
            .key("buddies")
            .index(1);
        assert_eq!(p.to_string(), "servers[3].buddies[1]");
        assert_eq!(
            KeyPath::root().key("site").key("name").to_string(),
            "site.name"
        );
    }

    #[test]
    fn locates_keys_values_headers_and_missing_paths() {
        let doc = DeTable::parse(TEXT).expect("valid toml");
        let loc = Locator::new(TEXT, Some(&doc));
        let at = |p: &KeyPath, point| loc.line_col(loc.span(p, point).start);
        let servers0 = KeyPath::root().key("servers").index(0);
        assert_eq!(at(&servers0.key("buddies").index(1), Point::Value), (6, 17));
        assert_eq!(at(&servers0.key("buddies"), Point::Key), (6, 1));
        assert_eq!(at(&servers0, Point::Value), (4, 1));
        // Not in the file: the enclosing table's header.
        assert_eq!(at(&servers0.key("address"), Point::Value), (4, 1));
        assert_eq!(
            at(&KeyPath::root().key("api").key("token"), Point::Value),
            (1, 1)
        );
        assert_eq!(
            at(&KeyPath::root().key("site").key("name"), Point::Value),
            (2, 8)
        );
        // Columns count characters, not bytes.
        assert_eq!(loc.line_col(TEXT.find("-1").expect("present")), (5, 8));
    }
}

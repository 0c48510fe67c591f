//! Diagnostics: one problem in a site file, located as `file:line:col`, and the sorted list of
//! every problem found in one load.

use std::fmt;

/// How bad a [`Diagnostic`] is: an error makes the file invalid, a warning does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem, displayed as `file:line:col: message` (warnings as
/// `file:line:col: warning: message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as the user named it.
    pub file: String,
    /// 1-based line; 0 when the problem is with the file as a whole (it cannot be read).
    pub line: usize,
    /// 1-based column, counted in characters; 0 together with `line`.
    pub col: usize,
    pub severity: Severity,
    /// Names the key first (`servers[3].buddies[1]: ...`) unless it is a TOML syntax error.
    pub message: String,
}

impl Diagnostic {
    /// A problem with the file as a whole, such as "cannot read".
    pub fn whole_file(file: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_string(),
            line: 0,
            col: 0,
            severity: Severity::Error,
            message: message.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.col)?;
        }
        f.write_str(": ")?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one load, errors and warnings together, sorted by position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Sorts by position (line, then column); problems at one position keep the order they were
    /// found in.
    pub fn sorted(mut list: Vec<Diagnostic>) -> Self {
        list.sort_by_key(|d| (d.line, d.col));
        Self(list)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| !d.is_error())
    }

    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a Diagnostics {
    type Item = &'a Diagnostic;
    type IntoIter = std::slice::Iter<'a, Diagnostic>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// One diagnostic per line.
impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

#[cfg(test)]
mod tests {
    use super::*;

    fn diag(line: usize, col: usize, severity: Severity, message: &str) -> Diagnostic {
        Diagnostic {
            file: "site.toml".into(),
            line,
            col,
            severity,
            message: message.into(),
        }
    }

    #[test]
    fn displays_errors_warnings_and_whole_file_problems() {
        assert_eq!(
            diag(3, 7, Severity::Error, "site.name: must not be empty").to_string(),
            "site.toml:3:7: site.name: must not be empty"
        );
        assert_eq!(
            diag(1, 1, Severity::Warning, "api.token: not set").to_string(),
            "site.toml:1:1: warning: api.token: not set"
        );
        assert_eq!(
            Diagnostic::whole_file("x.toml", "cannot read: gone").to_string(),
            "x.toml: cannot read: gone"
        );
    }

    #[test]
    fn sorts_by_position_and_keeps_order_within_one_position() {
        let d = Diagnostics::sorted(vec![
            diag(9, 1, Severity::Error, "c"),
            diag(2, 5, Severity::Warning, "b1"),
            diag(2, 5, Severity::Error, "b2"),
            diag(2, 1, Severity::Error, "a"),
        ]);
        let order: Vec<_> = d.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(order, ["a", "b1", "b2", "c"]);
        assert_eq!(d.errors().count(), 3);
        assert_eq!(d.warnings().count(), 1);
        assert!(d.has_errors());
    }
}

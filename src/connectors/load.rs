//! Connector files: `connectors/*.toml` beside the site file (the folder `site.connectors`
//! names), one connector each, named by the file's stem. Loaded and checked with the same
//! diagnostics as the site file: every problem at once, as `file:line:col: message`.
//! [`load_site`] reads the site file and its connector files together, as `buddygate check`
//! and `buddygate run` do.

use std::path::{Path, PathBuf};

use toml::de::DeTable;

use super::mqtt::MqttFile;
use super::onvif::OnvifFile;
use super::webhook::WebhookFile;
use super::{Connector, ConnectorFile, ConnectorKind};
use crate::config::decode::decode_table;
use crate::config::locate::{Issue, KeyPath, Locator, Point};
use crate::config::{self, Diagnostic, Diagnostics, Severity, Site};

/// A valid site, its connector files, and the warnings found in both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteFiles {
    pub site: Site,
    /// The `[api]` settings of the node's listener.
    pub ingress: config::Ingress,
    /// `[store]` of the site file.
    pub store: crate::config::StoreSettings,
    pub connectors: Vec<Connector>,
    pub warnings: Vec<Diagnostic>,
}

/// Reads and checks the site file at `path` ([`config::load`]) and the connector files of its
/// `connectors` folder, which are checked even when the site file has errors: all problems at
/// once.
pub fn load_site(path: &Path) -> Result<SiteFiles, Diagnostics> {
    let site = config::load(path);
    let Some(dir) = config::connectors_dir(path, site.as_ref().ok().map(|l| &l.site)) else {
        // The site file cannot be read: that is the one problem to report.
        return site.map(|l| SiteFiles {
            site: l.site,
            ingress: l.ingress,
            store: l.store,
            connectors: Vec::new(),
            warnings: l.warnings,
        });
    };
    let (found, diagnostics) = load_dir(&dir);
    match site {
        Ok(loaded) if !diagnostics.iter().any(Diagnostic::is_error) => {
            let mut warnings = loaded.warnings;
            warnings.extend(diagnostics);
            Ok(SiteFiles {
                site: loaded.site,
                ingress: loaded.ingress,
                store: loaded.store,
                connectors: found,
                warnings,
            })
        }
        Ok(loaded) => {
            let mut all = loaded.warnings;
            all.extend(diagnostics);
            Err(Diagnostics::sorted(all))
        }
        Err(mut d) => {
            d.0.extend(diagnostics);
            Err(d)
        }
    }
}

/// Loads every `*.toml` in `dir` (a missing folder is no connectors). Diagnostics of all files
/// together; connectors only when none has an error.
pub fn load_dir(dir: &Path) -> (Vec<Connector>, Vec<Diagnostic>) {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect(),
        Err(_) => return (Vec::new(), Vec::new()),
    };
    files.sort();
    let mut connectors = Vec::new();
    let mut diagnostics = Vec::new();
    for path in files {
        let name = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let base = path.parent().unwrap_or(Path::new("."));
                let (c, d) = check_file(&text, &name, &path, Some(base));
                connectors.extend(c);
                diagnostics.extend(d);
            }
            Err(e) => diagnostics.push(Diagnostic::whole_file(
                &name,
                format!("cannot read connector file: {e}"),
            )),
        }
    }
    if diagnostics.iter().any(Diagnostic::is_error) {
        connectors.clear();
    }
    (connectors, diagnostics)
}

/// Checks one connector file's text. `base` (the file's folder) is where templates and TLS
/// files are read from; `None` skips those reads.
pub fn check_file(
    text: &str,
    file: &str,
    path: &Path,
    base: Option<&Path>,
) -> (Option<Connector>, Vec<Diagnostic>) {
    let (doc, syntax) = DeTable::parse_recoverable(text);
    let mut issues = Vec::new();
    if !syntax.is_empty() {
        for e in &syntax {
            issues.push(Issue::syntax(
                e.span().unwrap_or(0..0),
                e.message().to_string(),
            ));
        }
        let d = Diagnostics::sorted(to_diagnostics(&Locator::new(text, None), file, issues));
        return (None, d.0);
    }
    let locator = Locator::new(text, Some(&doc));
    let root = KeyPath::root();
    let kind = doc
        .get_ref()
        .get("type")
        .and_then(|v| v.get_ref().as_str().map(str::to_string));
    let value = toml::Spanned::new(doc.span(), toml::de::DeValue::Table(doc.get_ref().clone()));
    let connector = match kind.as_deref() {
        Some("webhook") => {
            decode::<WebhookFile>(&value, base, &mut issues).map(ConnectorKind::Webhook)
        }
        Some("mqtt") => decode::<MqttFile>(&value, base, &mut issues).map(ConnectorKind::Mqtt),
        Some("onvif") => decode::<OnvifFile>(&value, base, &mut issues).map(ConnectorKind::Onvif),
        Some(other) => {
            issues.push(Issue::new(
                Severity::Error,
                &root.key("type"),
                Point::Value,
                format!(
                    "unknown connector type \"{other}\"; expected \"webhook\", \"mqtt\" or \"onvif\""
                ),
            ));
            None
        }
        None => {
            issues.push(Issue::error(
                &root,
                "missing key `type`: the kind of connector (\"webhook\", \"mqtt\" or \"onvif\")",
            ));
            None
        }
    };
    let failed = issues.iter().any(Issue::is_error);
    let diagnostics = to_diagnostics(&locator, file, issues);
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let connector = connector.filter(|_| !failed).map(|kind| Connector {
        name,
        file: path.to_path_buf(),
        kind,
    });
    (connector, Diagnostics::sorted(diagnostics).0)
}

/// One connector file of kind `F`, decoded and checked.
fn decode<F: ConnectorFile>(
    value: &toml::Spanned<toml::de::DeValue<'_>>,
    base: Option<&Path>,
    issues: &mut Vec<Issue>,
) -> Option<F::Config> {
    decode_table::<F>(value, &KeyPath::root(), issues).and_then(|b| b.value.check(base, issues))
}

fn to_diagnostics(locator: &Locator<'_>, file: &str, issues: Vec<Issue>) -> Vec<Diagnostic> {
    issues
        .into_iter()
        .map(|issue| {
            let (line, col) = locator.line_col(locator.offset(&issue.at));
            Diagnostic {
                file: file.to_string(),
                line,
                col,
                severity: issue.severity,
                message: issue.text(),
            }
        })
        .collect()
}

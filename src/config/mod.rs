//! The site file: parse, expand id ranges, validate purely, then hand out a [`Site`].
//!
//! [`load`] and [`parse_str`] report every problem at once as [`Diagnostics`], sorted by
//! position, each as `file:line:col: key: message`.
//!
//! - [`file`](mod@file): the serde types of the TOML as written, and its JSON Schema.
//! - `decode`: the TOML span tree to those types, one section or block at a time.
//! - [`expand`]: `{A..B}` id ranges and `{server}`.
//! - `validate`: pure checks on the expanded site, section by section, then the resolved
//!   [`Site`].
//! - `load`: reading the site file, and the checks that look at the disk (secret files and
//!   `exec` commands that do not exist), which only [`load`] runs.
//! - `agent`: the agent settings of a `[[resources]]` block and their templates.
//! - `params`: a resource's own agent settings (`params = { url = ... }`).
//! - `ingress`: the `[api]` settings of the node's listener (read access, HTTPS, host names,
//!   ONVIF push consumers), kept beside the [`Site`] in [`Loaded`].
//! - `locate`: key paths to `line:col`.
//! - [`summary`]: the one-screen text `buddygate check` prints.

mod agent;
pub mod connectors;
pub(crate) mod decode;
mod diag;
pub mod expand;
pub mod file;
mod ingress;
mod load;
pub(crate) mod locate;
mod model;
mod params;
pub mod summary;
mod validate;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::Path;

use toml::de::DeTable;

pub use agent::{PARAMS_VARIABLE, template_environment};
pub use diag::{Diagnostic, Diagnostics, Severity};
pub use ingress::{ApiTls, Ingress, PushAllow, ReadAccess, canonical_ip, is_host_name};
pub use load::{connectors_dir, load};
pub use model::*;
pub use params::{MAX_PARAMS, ParamText, env_suffix as param_env_suffix};

use locate::{Issue, Locator};

/// A valid site and the warnings found on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub site: Site,
    /// How the node's API is reached and read (`[api]`: `read`, `read_token`, `tls`, `hosts`,
    /// `onvif_push_allow`).
    pub ingress: Ingress,
    /// `[store]`: each node's own store (not part of [`Site`]: the failover core never
    /// looks at it).
    pub store: StoreSettings,
    pub warnings: Vec<Diagnostic>,
}

/// Checks a site file's text; `file` is the name used in diagnostics. No I/O.
pub fn parse_str(text: &str, file: &str) -> Result<Loaded, Diagnostics> {
    check(text, file, None)
}

fn check(text: &str, file: &str, base: Option<&Path>) -> Result<Loaded, Diagnostics> {
    let (doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        let issues = syntax
            .iter()
            .map(|e| {
                let span = e.span().unwrap_or(0..0);
                let mut message = e.message().to_string();
                if message == "duplicate key" {
                    let key = text.get(span.clone()).unwrap_or_default().trim();
                    message = format!("duplicate key `{key}`");
                }
                Issue::syntax(span, message)
            })
            .collect();
        return Err(finish(&Locator::new(text, None), file, issues));
    }
    let locator = Locator::new(text, Some(&doc));
    let mut issues = Vec::new();
    let decoded = decode::decode(&doc, &mut issues);
    let mut budget = expand::Budget::default();
    let (servers, servers_complete) =
        expand::expand_servers(&decoded.servers, &mut budget, &mut issues);
    let (resources, resources_complete) =
        expand::expand_resources(&decoded.resources, &mut budget, &mut issues);
    let site = validate::Expanded {
        site: decoded.site.as_ref(),
        api: decoded.api.as_ref(),
        store: decoded.store.as_ref(),
        servers,
        resources,
        resource_blocks: &decoded.resources,
        base,
        servers_complete,
        resources_complete,
    };
    issues.extend(validate::validate(&site));
    for (i, block) in decoded.resources.iter().enumerate() {
        issues.extend(block.iter().flat_map(|b| params::check(i, b)));
    }
    if let Some(base) = base {
        issues.extend(load::missing_files(&site, &decoded.resources, base));
        issues.extend(params::missing_secret_files(&decoded.resources, base));
    }
    let failed = issues.iter().any(Issue::is_error);
    let diagnostics = finish(&locator, file, issues);
    if failed {
        return Err(diagnostics);
    }
    match (validate::resolve(&site), validate::resolve_ingress(&site)) {
        (Some(site), Some(ingress)) => Ok(Loaded {
            site,
            ingress,
            store: decoded
                .store
                .as_ref()
                .map(|s| StoreSettings {
                    retention: s.value.retention,
                    max_size: s.value.max_size,
                })
                .unwrap_or_default(),
            warnings: diagnostics.0,
        }),
        _ => {
            // Validation passed but resolving failed: a missing rule, reported, never a panic.
            let mut d = diagnostics;
            d.0.push(Diagnostic::whole_file(
                file,
                "internal error: the site passed validation but could not be resolved",
            ));
            Err(d)
        }
    }
}

/// Turns issues into sorted diagnostics, merging those that differ only in their subject (one
/// mistake in a block that declares 100 servers is reported once).
fn finish(locator: &Locator<'_>, file: &str, issues: Vec<Issue>) -> Diagnostics {
    let mut merged: Vec<(Diagnostic, Vec<String>)> = Vec::new();
    let mut seen: HashMap<(usize, Severity, String), usize> = HashMap::new();
    for issue in issues {
        let offset = locator.offset(&issue.at);
        let text = issue.text();
        match seen.entry((offset, issue.severity, text)) {
            Entry::Occupied(e) => merged[*e.get()].1.extend(issue.subject),
            Entry::Vacant(e) => {
                let (line, col) = locator.line_col(offset);
                let diagnostic = Diagnostic {
                    file: file.to_string(),
                    line,
                    col,
                    severity: issue.severity,
                    message: e.key().2.clone(),
                };
                e.insert(merged.len());
                merged.push((diagnostic, issue.subject.into_iter().collect()));
            }
        }
    }
    let list = merged
        .into_iter()
        .map(|(mut d, subjects)| {
            if !subjects.is_empty() {
                d.message
                    .push_str(&format!(" (for {})", list_subjects(&subjects)));
            }
            d
        })
        .collect();
    Diagnostics::sorted(list)
}

/// "live-1", "live-1 and live-2", "live-1, live-2 and 98 more".
fn list_subjects(subjects: &[String]) -> String {
    match subjects {
        [] => String::new(),
        [one] => one.clone(),
        [a, b] => format!("{a} and {b}"),
        [a, b, c] => format!("{a}, {b} and {c}"),
        [a, b, rest @ ..] => format!("{a}, {b} and {} more", rest.len()),
    }
}

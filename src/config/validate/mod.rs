//! Pure validation of the expanded site (no I/O), then [`resolve`] into a [`Site`] whose indices
//! all point somewhere. Every rule reports through [`Issue`]s against key paths, so that all
//! problems are found in one pass. The checks that look at the disk (secret files, `exec`
//! commands) are loading's ([`super::load`]).
//!
//! One file per section: `site` (`[site]`, `[api]`), `servers` (ids, roles, buddies, picks,
//! coverage, addresses), `resources`; `resolve` builds the [`Site`].
//!
//! When a block did not decode or expand, its servers or resources are missing; rules that
//! would then report a false "does not exist" (or "unused") are skipped for that kind.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

mod resolve;
mod resources;
mod servers;
mod site;

pub(crate) use resolve::{resolve, resolve_ingress};

use super::agent;
use super::decode::Block;
use super::expand::{ExResource, ExServer};
use super::file::{ApiSection, ResourceBlock, SiteSection, StoreSection};
use super::locate::{Issue, KeyPath};
use super::model::SecretRef;

/// Longest id or site name.
pub(crate) const MAX_ID_LEN: usize = 64;

/// The site after decoding and expansion.
#[derive(Debug)]
pub(crate) struct Expanded<'a> {
    pub(crate) site: Option<&'a Block<SiteSection>>,
    pub(crate) api: Option<&'a Block<ApiSection>>,
    pub(crate) store: Option<&'a Block<StoreSection>>,
    pub(crate) servers: Vec<ExServer>,
    pub(crate) resources: Vec<ExResource>,
    /// The `[[resources]]` blocks as decoded: their agent settings are checked once per block.
    pub(crate) resource_blocks: &'a [Option<Block<ResourceBlock>>],
    /// The site file's folder, when it was loaded from a file: relative `command`s start there.
    pub(crate) base: Option<&'a Path>,
    /// Every `[[servers]]` block decoded and expanded.
    pub(crate) servers_complete: bool,
    /// Every `[[resources]]` block decoded and expanded.
    pub(crate) resources_complete: bool,
}

/// Every problem in the site, errors and warnings.
pub(crate) fn validate(x: &Expanded<'_>) -> Vec<Issue> {
    let mut v = Validator {
        x,
        issues: Vec::new(),
        servers: HashMap::new(),
        resources: HashMap::new(),
        homes: x.resources.iter().map(|r| r.server.as_str()).collect(),
    };
    if let Some(site) = x.site {
        v.site(&site.value, &site.broken);
    }
    if let Some(api) = x.api {
        v.api(&api.value, &api.broken);
    }
    if let Some(store) = x.store {
        v.store(&store.value, &store.broken);
    }
    v.index();
    for s in &x.servers {
        v.server(s);
    }
    for r in &x.resources {
        v.resource(r);
    }
    for (i, block) in x.resource_blocks.iter().enumerate() {
        if let Some(block) = block {
            v.issues.extend(agent::check(i, block));
        }
    }
    v.coverage();
    v.issues.extend(servers::addresses(x));
    v.issues
}

pub(super) struct Validator<'a> {
    pub(super) x: &'a Expanded<'a>,
    pub(super) issues: Vec<Issue>,
    /// Server id to its index in `x.servers` (the first, when duplicated).
    pub(super) servers: HashMap<&'a str, usize>,
    pub(super) resources: HashMap<&'a str, usize>,
    /// Servers that are the home of some resource.
    pub(super) homes: HashSet<&'a str>,
}

impl<'a> Validator<'a> {
    pub(super) fn error(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.issues.push(Issue::error(path, message));
    }

    pub(super) fn warning(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.issues.push(Issue::warning(path, message));
    }

    /// Ids and the site name: letters, digits, `.`, `_` and `-`.
    pub(super) fn name(&mut self, path: &KeyPath, name: &str) {
        if name.is_empty() {
            self.error(path, "must not be empty");
        } else if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            self.error(
                path,
                format!("\"{name}\" may contain only letters, digits, '.', '_' and '-'"),
            );
        } else if name.len() > MAX_ID_LEN {
            self.error(
                path,
                format!("\"{name}\" is longer than {MAX_ID_LEN} characters"),
            );
        }
    }

    pub(super) fn secret(&mut self, path: &KeyPath, secret: &SecretRef) {
        match secret {
            SecretRef::File(p) if p.as_os_str().is_empty() => {
                self.error(path, "`file:` needs a path");
            }
            SecretRef::Env(var) if var.is_empty() => {
                self.error(path, "`env:` needs a variable name");
            }
            SecretRef::Env(var)
                if var.starts_with(|c: char| c.is_ascii_digit())
                    || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                self.error(
                    path,
                    format!("\"{var}\" is not an environment variable name"),
                );
            }
            SecretRef::Inline(s) if s.is_empty() => self.error(path, "empty secret"),
            SecretRef::Inline(_) => {
                self.warning(
                    path,
                    "inline secret; use file:PATH or env:VAR in production",
                );
            }
            _ => {}
        }
    }

    /// An `IP:port` that peers can reach.
    pub(super) fn socket(&mut self, path: &KeyPath, s: &str) -> Option<SocketAddr> {
        let Ok(addr) = s.parse::<SocketAddr>() else {
            self.error(path, format!("\"{s}\" is not an IP:port address"));
            return None;
        };
        if addr.port() == 0 {
            self.error(path, format!("{s}: port 0 is not a fixed port"));
        } else if addr.ip().is_unspecified() {
            self.error(
                path,
                format!(
                    "{s}: {} is not an address other servers can reach",
                    addr.ip()
                ),
            );
        } else {
            return Some(addr);
        }
        None
    }
}

/// Ids grouped by where they are reported, in first-seen order.
pub(super) struct Groups<K> {
    index: HashMap<K, usize>,
    groups: Vec<(K, Vec<String>)>,
}

impl<K> Default for Groups<K> {
    fn default() -> Self {
        Self {
            index: HashMap::new(),
            groups: Vec::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Groups<K> {
    pub(super) fn push(&mut self, key: K, id: &str) {
        match self.index.get(&key) {
            Some(&i) => self.groups[i].1.push(id.to_string()),
            None => {
                self.index.insert(key.clone(), self.groups.len());
                self.groups.push((key, vec![id.to_string()]));
            }
        }
    }

    pub(super) fn take(&mut self) -> Vec<(K, Vec<String>)> {
        self.index.clear();
        std::mem::take(&mut self.groups)
    }
}

/// `"a"`, `"a", "b"`, `"a", "b", "c" and 7 more`.
pub(super) fn some_ids(ids: &[String]) -> String {
    let shown: Vec<String> = ids.iter().take(3).map(|id| format!("\"{id}\"")).collect();
    let mut out = shown.join(", ");
    if ids.len() > 3 {
        out.push_str(&format!(" and {} more", ids.len() - 3));
    }
    out
}

/// "1 heartbeat path", "2 heartbeat paths".
pub(super) fn paths(n: usize) -> String {
    format!("{n} heartbeat path{}", if n == 1 { "" } else { "s" })
}

/// `200ms`, `1s`, `1m 30s`.
pub(super) fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

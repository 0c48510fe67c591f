//! Compact declarations: `{A..B}` id ranges and `{server}` in server and resource blocks, so a
//! site of 100 servers and 5,000 cameras fits in a short file.
//!
//! - `{A..B}` is an inclusive decimal range; when `A` has leading zeros every value is padded to
//!   `A`'s width (`cam-{001..050}`). A string may hold several ranges of one length.
//! - All ranges in one `[[servers]]` block (`id`, `address`, `api`, every `heartbeat` and
//!   `buddies` entry) are zipped and must have the same length; each `pick` entry is expanded on
//!   its own.
//! - In `[[resources]]`, `server` may be a range; `id` is then expanded once per server and
//!   uses `{server}` for the server's id.
//!
//! [`Template`] (in `template.rs`) parses and renders one string; this module expands whole
//! blocks, within a budget of values and bytes.

mod template;

use std::fmt;

pub use self::template::{RangeError, Template, expand};
use super::decode::{Block, Broken};
use super::file::{ResourceBlock, ServerBlock};
use super::locate::{Issue, KeyPath};
use super::model::{Kind, Mode, Role};

/// At most this many values from one range, and entries from one block.
pub const MAX_EXPANSION: u64 = 100_000;

/// At most this many resources in a site.
pub const MAX_RESOURCES: usize = 1_000_000;

/// At most this many bytes of expanded strings in a site, so that a long string times a large
/// range cannot exhaust memory.
pub const MAX_TEXT: u64 = 64 << 20;

/// One `pick` entry after expansion, with the index of the entry it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pick {
    pub(crate) id: String,
    pub(crate) entry: usize,
}

/// A server from an expanded `[[servers]]` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExServer {
    /// Index of its `[[servers]]` block.
    pub(crate) block: usize,
    /// The block declares more than one server.
    pub(crate) many: bool,
    pub(crate) id: String,
    pub(crate) role: Role,
    pub(crate) address: String,
    pub(crate) heartbeat: Vec<String>,
    pub(crate) api: Option<String>,
    pub(crate) buddies: Vec<String>,
    pub(crate) mode: Option<Mode>,
    pub(crate) max_servers: Option<u32>,
    pub(crate) max_cameras: Option<u32>,
    pub(crate) pick: Vec<Pick>,
    /// Keys that had an error (reported); checks on them are skipped.
    pub(crate) broken: Broken,
}

impl ExServer {
    pub(crate) fn path(&self) -> KeyPath {
        KeyPath::root().key("servers").index(self.block)
    }

    /// Who an issue is about, when the path alone does not say.
    pub(crate) fn subject(&self) -> Option<&str> {
        self.many.then_some(self.id.as_str())
    }
}

/// A resource from an expanded `[[resources]]` block. Its agent settings are the block's,
/// checked once per block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExResource {
    /// Index of its `[[resources]]` block.
    pub(crate) block: usize,
    pub(crate) id: String,
    pub(crate) kind: Kind,
    pub(crate) server: String,
    pub(crate) priority: i32,
    /// Which value of the id's range it is (0 without a range): the value its `params`
    /// ranges take.
    pub(crate) index: u64,
}

impl ExResource {
    pub(crate) fn path(&self) -> KeyPath {
        KeyPath::root().key("resources").index(self.block)
    }
}

/// A zipped field of a server block: its key, path and template (`None` after an error).
struct Field {
    key: &'static str,
    path: KeyPath,
    template: Option<Template>,
}

impl Field {
    fn new(key: &'static str, path: KeyPath, s: &str, issues: &mut Vec<Issue>) -> Self {
        let template = Template::parse(s, false)
            .map_err(|e| issues.push(Issue::error(&path, e.to_string())))
            .ok();
        Self {
            key,
            path,
            template,
        }
    }

    fn len(&self) -> Option<u64> {
        self.template.as_ref().and_then(Template::range_len)
    }

    /// Value `i`, or an empty stand-in after an error.
    fn value(&self, i: u64) -> String {
        self.template
            .as_ref()
            .map(|t| t.render(i, ""))
            .unwrap_or_default()
    }
}

fn fmt_values(n: u64) -> impl fmt::Display {
    struct Values(u64);
    impl fmt::Display for Values {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(
                f,
                "{} {}",
                self.0,
                if self.0 == 1 { "value" } else { "values" }
            )
        }
    }
    Values(n)
}

/// What is left of [`MAX_TEXT`].
pub(crate) struct Budget {
    left: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Self { left: MAX_TEXT }
    }
}

impl Budget {
    /// Takes `count` times `bytes`; reports on `path` and returns false when that is too much.
    fn take(&mut self, count: u64, bytes: u64, path: &KeyPath, issues: &mut Vec<Issue>) -> bool {
        let want = count.saturating_mul(bytes);
        if want > self.left {
            issues.push(Issue::error(
                path,
                format!(
                    "expands to too much text ({count} x {bytes} bytes); the whole site may \
                     expand to at most {} MiB",
                    MAX_TEXT >> 20
                ),
            ));
            return false;
        }
        self.left -= want;
        true
    }
}

/// Expands every `[[servers]]` block; `None` stands for a block that could not be decoded.
/// Returns the servers and whether every block's servers are known.
pub(crate) fn expand_servers(
    blocks: &[Option<Block<ServerBlock>>],
    budget: &mut Budget,
    issues: &mut Vec<Issue>,
) -> (Vec<ExServer>, bool) {
    let mut out = Vec::new();
    let mut complete = true;
    for (block, raw) in blocks.iter().enumerate() {
        let Some(raw) = raw else {
            complete = false;
            continue;
        };
        match expand_server(block, raw, budget, issues) {
            Some(servers) => out.extend(servers),
            None => complete = false,
        }
    }
    (out, complete)
}

/// The servers of one block. The `id` decides how many; a field whose ranges do not fit is
/// reported and marked broken. `None` when the id itself is wrong.
fn expand_server(
    block: usize,
    raw: &Block<ServerBlock>,
    budget: &mut Budget,
    issues: &mut Vec<Issue>,
) -> Option<Vec<ExServer>> {
    let b = &raw.value;
    let path = KeyPath::root().key("servers").index(block);
    let mut broken = raw.broken.clone();
    let id = Field::new("id", path.key("id"), &b.id, issues);
    let address = Field::new("address", path.key("address"), &b.address, issues);
    let api = b
        .api
        .as_ref()
        .map(|a| Field::new("api", path.key("api"), a, issues));
    let list = |key: &'static str, items: &[String], issues: &mut Vec<Issue>| -> Vec<Field> {
        items
            .iter()
            .enumerate()
            .map(|(j, s)| Field::new(key, path.key(key).index(j), s, issues))
            .collect()
    };
    let heartbeat = list("heartbeat", &b.heartbeat, issues);
    let buddies = list("buddies", &b.buddies, issues);
    // Every field is parsed (and reported) first; without an id the block is lost.
    id.template.as_ref()?;
    let others: Vec<&Field> = std::iter::once(&address)
        .chain(api.as_ref())
        .chain(&heartbeat)
        .chain(&buddies)
        .collect();
    for f in &others {
        if f.template.is_none() {
            broken.insert(f.key);
        }
    }
    let n = match (
        id.len(),
        others.iter().find_map(|f| f.len().map(|n| (f, n))),
    ) {
        (Some(n), _) => n,
        (None, None) => 1,
        (None, Some((f, n))) => {
            issues.push(Issue::error(
                &id.path,
                format!(
                    "{} has {}, so id needs a range of that length too (e.g. \"live-{{01..{n:02}}}\"), \
                     or every server gets the same id",
                    f.path,
                    fmt_values(n)
                ),
            ));
            return None;
        }
    };
    for f in &others {
        match f.len() {
            Some(m) if m != n => {
                issues.push(Issue::error(
                    &f.path,
                    format!(
                        "{} here but {n} in {}; all ranges in one block are zipped and must \
                         have the same length",
                        fmt_values(m),
                        id.path
                    ),
                ));
                broken.insert(f.key);
            }
            _ => {}
        }
    }
    let mut pick = Vec::new();
    let mut pick_bytes = 0;
    for (entry, p) in b.pick.iter().enumerate() {
        let at = path.key("pick").index(entry);
        match Template::parse(p, false) {
            Ok(t) => {
                let count = t.range_len().unwrap_or(1);
                if !budget.take(count, p.len() as u64, &at, issues) {
                    return None;
                }
                pick_bytes += count.saturating_mul(p.len() as u64);
                pick.extend(t.values().into_iter().map(|id| Pick { id, entry }));
            }
            Err(e) => {
                issues.push(Issue::error(&at, e.to_string()));
                broken.insert("pick");
            }
        }
    }
    let fields: u64 = [&b.id, &b.address]
        .into_iter()
        .chain(&b.api)
        .chain(&b.heartbeat)
        .chain(&b.buddies)
        .map(|s| s.len() as u64)
        .sum();
    let copies = if n > 1 { pick_bytes } else { 0 };
    if !budget.take(n, fields.saturating_add(copies), &path, issues) {
        return None;
    }
    let servers = (0..n)
        .map(|i| ExServer {
            block,
            many: n > 1,
            id: id.value(i),
            role: b.role,
            address: address.value(i),
            heartbeat: heartbeat.iter().map(|f| f.value(i)).collect(),
            api: api.as_ref().map(|f| f.value(i)),
            buddies: buddies.iter().map(|f| f.value(i)).collect(),
            mode: b.mode,
            max_servers: b.max_servers,
            max_cameras: b.max_cameras,
            pick: pick.clone(),
            broken: broken.clone(),
        })
        .collect();
    Some(servers)
}

/// Expands every `[[resources]]` block, like [`expand_servers`].
pub(crate) fn expand_resources(
    blocks: &[Option<Block<ResourceBlock>>],
    budget: &mut Budget,
    issues: &mut Vec<Issue>,
) -> (Vec<ExResource>, bool) {
    let mut out = Vec::new();
    let mut complete = true;
    for (block, raw) in blocks.iter().enumerate() {
        let Some(Block { value: raw, .. }) = raw else {
            complete = false;
            continue;
        };
        let path = KeyPath::root().key("resources").index(block);
        let Some((servers, id)) = resource_templates(&path, raw, issues) else {
            complete = false;
            continue;
        };
        let per_server = id.range_len().unwrap_or(1);
        let total = (servers.len() as u64).saturating_mul(per_server);
        if total > MAX_EXPANSION {
            issues.push(Issue::error(
                &path,
                format!(
                    "declares {total} resources ({} servers x {}); at most {MAX_EXPANSION} per block",
                    servers.len(),
                    fmt_values(per_server)
                ),
            ));
            complete = false;
            continue;
        }
        let longest_server = servers.iter().map(String::len).max().unwrap_or(0);
        let bytes = (raw.id.len() + 2 * longest_server) as u64;
        if !budget.take(total, bytes, &path, issues) {
            complete = false;
            continue;
        }
        if out.len() + total as usize > MAX_RESOURCES {
            issues.push(Issue::error(
                &path,
                format!("the site would have more than {MAX_RESOURCES} resources"),
            ));
            complete = false;
            break;
        }
        for server in &servers {
            for i in 0..per_server {
                out.push(ExResource {
                    block,
                    id: id.render(i, server),
                    kind: raw.kind,
                    server: server.clone(),
                    priority: raw.priority,
                    index: i,
                });
            }
        }
    }
    (out, complete)
}

/// The block's home servers and its id template.
fn resource_templates(
    path: &KeyPath,
    raw: &ResourceBlock,
    issues: &mut Vec<Issue>,
) -> Option<(Vec<String>, Template)> {
    let servers = expand(&raw.server).map_err(|e| {
        issues.push(Issue::error(&path.key("server"), e.to_string()));
    });
    let id = Template::parse(&raw.id, true).map_err(|e| {
        issues.push(Issue::error(&path.key("id"), e.to_string()));
    });
    let (servers, id) = (servers.ok()?, id.ok()?);
    if servers.len() > 1 && !id.uses_server() {
        issues.push(Issue::error(
            &path.key("id"),
            format!(
                "server has {}, so id must use `{{server}}` (e.g. \"{{server}}-cam-{{01..50}}\"), \
                 or every server gets the same ids",
                fmt_values(servers.len() as u64)
            ),
        ));
        return None;
    }
    Some((servers, id))
}

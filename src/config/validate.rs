//! Pure validation of the expanded site (no I/O), then [`resolve`] into a [`Site`] whose indices
//! all point somewhere. Every rule reports through [`Issue`]s against key paths, so that all
//! problems are found in one pass.
//!
//! When a block did not decode or expand, its servers or resources are missing; rules that
//! would then report a false "does not exist" (or "unused") are skipped for that kind.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use super::decode::{Block, Broken};
use super::expand::{ExResource, ExServer};
use super::file::{ApiSection, ResourceBlock, SiteSection};
use super::locate::{Issue, KeyPath};
use super::model::{
    Api, Mode, OnvifUser, Resource, ResourceIdx, Role, SecretRef, Server, ServerIdx, Site,
};
use super::{agent, params};

/// Longest id or site name.
pub(crate) const MAX_ID_LEN: usize = 64;

/// The site after decoding and expansion.
#[derive(Debug)]
pub(crate) struct Expanded<'a> {
    pub(crate) site: Option<&'a Block<SiteSection>>,
    pub(crate) api: Option<&'a Block<ApiSection>>,
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
    v.issues.extend(addresses(x));
    v.issues
}

struct Validator<'a> {
    x: &'a Expanded<'a>,
    issues: Vec<Issue>,
    /// Server id to its index in `x.servers` (the first, when duplicated).
    servers: HashMap<&'a str, usize>,
    resources: HashMap<&'a str, usize>,
    /// Servers that are the home of some resource.
    homes: HashSet<&'a str>,
}

impl<'a> Validator<'a> {
    fn error(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.issues.push(Issue::error(path, message));
    }

    fn warning(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.issues.push(Issue::warning(path, message));
    }

    fn site(&mut self, site: &SiteSection, broken: &Broken) {
        let path = KeyPath::root().key("site");
        if !broken.has("name") {
            self.name(&path.key("name"), &site.name);
        }
        if !broken.has("secret") {
            self.secret(&path.key("secret"), &site.secret);
        }
        let (hb, ft) = (site.heartbeat_interval, site.failure_timeout);
        if broken.has("heartbeat_interval") {
            // Reported; failure_timeout cannot be compared with it.
        } else if hb.is_zero() {
            self.error(&path.key("heartbeat_interval"), "must be greater than zero");
        } else if ft <= hb.saturating_mul(2) && !broken.has("failure_timeout") {
            self.error(
                &path.key("failure_timeout"),
                format!(
                    "{} must be greater than 2 x heartbeat_interval ({}), \
                     or one lost heartbeat looks like a dead server",
                    show(ft),
                    show(hb.saturating_mul(2))
                ),
            );
        }
        let mut seen = HashSet::new();
        for (i, w) in site.witnesses.iter().enumerate() {
            let at = path.key("witnesses").index(i);
            if let Some(addr) = self.socket(&at, w)
                && !seen.insert(addr)
            {
                self.error(&at, format!("{addr} is listed twice"));
            }
        }
        let n = site.witnesses.len();
        if n >= 2 && n.is_multiple_of(2) {
            self.warning(
                &path.key("witnesses"),
                format!(
                    "{n} witnesses survive as few witness failures as {} do; use an odd number",
                    n - 1
                ),
            );
        }
        if site.connectors.as_os_str().is_empty() {
            self.error(&path.key("connectors"), "must not be empty");
        }
    }

    fn api(&mut self, api: &ApiSection, broken: &Broken) {
        let path = KeyPath::root().key("api");
        match &api.token {
            Some(token) => self.secret(&path.key("token"), token),
            None if broken.has("token") => {}
            None => self.warning(
                &path.key("token"),
                "not set: every API mutation (failover, failback, replay) will be refused",
            ),
        }
        let mut seen = HashSet::new();
        for (i, u) in api.onvif_users.iter().enumerate() {
            let at = path.key("onvif_users").index(i);
            if u.user.is_empty() {
                self.error(&at.key("user"), "must not be empty");
            } else if !seen.insert(u.user.as_str()) {
                self.error(&at.key("user"), format!("\"{}\" is listed twice", u.user));
            }
            self.secret(&at.key("password"), &u.password);
        }
    }

    /// Indexes ids; reports duplicates and the size limits.
    fn index(&mut self) {
        let x = self.x;
        if x.servers.is_empty() && x.servers_complete {
            self.error(
                &KeyPath::root().key("servers"),
                "no [[servers]]: a site needs live servers and failover servers",
            );
        }
        if x.servers.len() > usize::from(u16::MAX) {
            self.error(
                &KeyPath::root().key("servers"),
                format!("{} servers; at most {}", x.servers.len(), u16::MAX),
            );
        }
        if x.resources.is_empty() && x.resources_complete && !x.servers.is_empty() {
            self.warning(
                &KeyPath::root().key("resources"),
                "no [[resources]]: there is nothing to fail over",
            );
        }
        let mut dups = Groups::default();
        for (i, s) in x.servers.iter().enumerate() {
            if let Some(&first) = self.servers.get(s.id.as_str()) {
                dups.push((x.servers[first].block, s.block), &s.id);
            } else {
                self.servers.insert(&s.id, i);
            }
        }
        for ((first, block), ids) in dups.take() {
            self.error(
                &KeyPath::root().key("servers").index(block).key("id"),
                format!(
                    "duplicate server id {} (first declared at servers[{first}])",
                    some_ids(&ids)
                ),
            );
        }
        for (i, r) in x.resources.iter().enumerate() {
            if let Some(&first) = self.resources.get(r.id.as_str()) {
                dups.push((x.resources[first].block, r.block), &r.id);
            } else {
                self.resources.insert(&r.id, i);
            }
        }
        for ((first, block), ids) in dups.take() {
            self.error(
                &KeyPath::root().key("resources").index(block).key("id"),
                format!(
                    "duplicate resource id {} (first declared at resources[{first}])",
                    some_ids(&ids)
                ),
            );
        }
    }

    fn server(&mut self, s: &'a ExServer) {
        let path = s.path();
        let who = s.subject();
        self.name(&path.key("id"), &s.id);
        match s.address.parse::<IpAddr>() {
            _ if s.broken.has("address") => {}
            Err(_) => self.error(
                &path.key("address"),
                format!("\"{}\" is not an IP address", s.address),
            ),
            Ok(ip) if ip.is_unspecified() => self.error(
                &path.key("address"),
                format!("{ip} cannot be announced; use the server's own address"),
            ),
            Ok(_) => {}
        }
        if s.broken.has("heartbeat") {
            // Reported.
        } else if s.heartbeat.is_empty() {
            self.error(
                &path.key("heartbeat"),
                "needs at least one IP:port listen address",
            );
        } else {
            for (j, hb) in s.heartbeat.iter().enumerate() {
                self.socket(&path.key("heartbeat").index(j), hb);
            }
        }
        if let Some(api) = s.api.as_ref().filter(|_| !s.broken.has("api")) {
            self.socket(&path.key("api"), api);
        }
        match s.role {
            _ if s.broken.has("role") => {}
            Role::Live => self.live(s),
            Role::Failover => self.failover(s),
        }
        if s.role == Role::Live
            && !s.broken.has("role")
            && self.x.resources_complete
            && !self.x.resources.is_empty()
            && !self.homes.contains(s.id.as_str())
        {
            self.issues
                .push(Issue::warning(&path, "live server has no resources").about(who));
        }
    }

    fn live(&mut self, s: &'a ExServer) {
        let path = s.path();
        let who = s.subject();
        for (key, set) in [
            ("mode", s.mode.is_some()),
            ("max_servers", s.max_servers.is_some()),
            ("max_cameras", s.max_cameras.is_some()),
            ("pick", !s.pick.is_empty()),
        ] {
            if set {
                self.error(
                    &path.key(key),
                    "only for failover servers; this is a live server (add role = \"failover\")",
                );
            }
        }
        if s.broken.has("buddies") {
            return;
        }
        if s.buddies.is_empty() {
            self.issues.push(
                Issue::warning(
                    &path,
                    "live server has no buddies: nothing takes over when it fails",
                )
                .about(who),
            );
        }
        let mut seen = HashSet::new();
        for (j, b) in s.buddies.iter().enumerate() {
            let at = path.key("buddies").index(j);
            if !seen.insert(b.as_str()) {
                self.issues
                    .push(Issue::error(&at, format!("\"{b}\" is listed twice")).about(who));
                continue;
            }
            if *b == s.id {
                self.issues
                    .push(Issue::error(&at, "a server cannot be its own buddy").about(who));
                continue;
            }
            let Some(&bi) = self.servers.get(b.as_str()) else {
                if self.x.servers_complete {
                    self.error(&at, format!("no server \"{b}\""));
                }
                continue;
            };
            let buddy = &self.x.servers[bi];
            if buddy.broken.has("role") {
                // Its role is unknown.
            } else if buddy.role == Role::Live {
                self.error(
                    &at,
                    format!("\"{b}\" is a live server; a buddy must be a failover server"),
                );
            } else if buddy.heartbeat.len() != s.heartbeat.len()
                && !buddy.heartbeat.is_empty()
                && !s.heartbeat.is_empty()
                && !buddy.broken.has("heartbeat")
                && !s.broken.has("heartbeat")
            {
                self.issues.push(
                    Issue::warning(
                        &at,
                        format!(
                            "\"{b}\" has {} and this server {}; they share only {}",
                            paths(buddy.heartbeat.len()),
                            s.heartbeat.len(),
                            buddy.heartbeat.len().min(s.heartbeat.len())
                        ),
                    )
                    .about(who),
                );
            }
        }
    }

    fn failover(&mut self, s: &'a ExServer) {
        let path = s.path();
        if !s.buddies.is_empty() {
            self.error(
                &path.key("buddies"),
                "only for live servers; a failover server is named in the buddies of the live servers it covers",
            );
        }
        for (key, value) in [
            ("max_servers", s.max_servers),
            ("max_cameras", s.max_cameras),
        ] {
            match (value, s.mode) {
                (Some(0), _) => {
                    self.error(&path.key(key), "must be at least 1 (leave it out for no limit)");
                }
                (Some(_), Some(Mode::Mirrored)) => self.error(
                    &path.key(key),
                    "only for spread-servers and spread-cameras; a mirrored server takes everything of its one live server",
                ),
                _ => {}
            }
        }
        match s.mode {
            _ if s.broken.has("mode") || s.broken.has("pick") => {}
            None => self.error(
                &path,
                "failover server needs a mode: mirrored, spread-servers or spread-cameras",
            ),
            Some(Mode::SpreadCameras) if s.pick.is_empty() => self.error(
                &path.key("pick"),
                "a spread-cameras server needs pick: the resources it takes",
            ),
            Some(Mode::SpreadCameras) => self.picks(s),
            Some(_) if !s.pick.is_empty() => self.error(
                &path.key("pick"),
                "only for spread-cameras servers (mode = \"spread-cameras\")",
            ),
            Some(_) => {}
        }
    }

    fn picks(&mut self, s: &'a ExServer) {
        let path = s.path();
        let mut seen = HashSet::new();
        let mut missing = Groups::default();
        let mut twice = Groups::default();
        for p in &s.pick {
            if !seen.insert(p.id.as_str()) {
                twice.push(p.entry, &p.id);
            } else if self.x.resources_complete && !self.resources.contains_key(p.id.as_str()) {
                missing.push(p.entry, &p.id);
            }
        }
        for (entry, ids) in missing.take() {
            let noun = if ids.len() == 1 {
                "resource"
            } else {
                "resources"
            };
            self.error(
                &path.key("pick").index(entry),
                format!("no {noun} {}", some_ids(&ids)),
            );
        }
        for (entry, ids) in twice.take() {
            self.error(
                &path.key("pick").index(entry),
                format!("{} picked twice", some_ids(&ids)),
            );
        }
    }

    fn resource(&mut self, r: &'a ExResource) {
        let path = r.path();
        self.name(&path.key("id"), &r.id);
        match self.servers.get(r.server.as_str()) {
            None if self.x.servers_complete => {
                self.error(&path.key("server"), format!("no server \"{}\"", r.server));
            }
            Some(&i) if self.x.servers[i].role == Role::Failover => self.error(
                &path.key("server"),
                format!(
                    "\"{}\" is a failover server; resources are homed on live servers",
                    r.server
                ),
            ),
            _ => {}
        }
    }

    /// Failover servers that cover too many or no live servers.
    fn coverage(&mut self) {
        // Warnings about servers nobody covers need every live server's buddies.
        let complete = self.x.servers_complete
            && self
                .x
                .servers
                .iter()
                .all(|s| !s.broken.has("role") && !s.broken.has("buddies"));
        let mut covers: HashMap<&str, Vec<&str>> = HashMap::new();
        for s in self.x.servers.iter().filter(|s| s.role == Role::Live) {
            let mut seen = HashSet::new();
            for b in s.buddies.iter().filter(|b| seen.insert(b.as_str())) {
                covers.entry(b.as_str()).or_default().push(&s.id);
            }
        }
        for s in self.x.servers.iter().filter(|s| s.role == Role::Failover) {
            let path = s.path();
            let live = covers.get(s.id.as_str()).map_or(&[][..], Vec::as_slice);
            let msg = match (s.mode, live.len()) {
                (Some(Mode::Mirrored), n) if n >= 2 => {
                    let ids: Vec<String> = live.iter().map(|s| s.to_string()).collect();
                    self.issues.push(
                        Issue::error(
                            &path.key("mode"),
                            format!(
                                "mirrored, but the buddy of {n} live servers ({}); a mirrored server covers one (use spread-servers to share it)",
                                some_ids(&ids)
                            ),
                        )
                        .about(s.subject()),
                    );
                    continue;
                }
                (_, 0) if !complete => continue,
                (Some(Mode::Mirrored), 0) => "mirrored server is no live server's buddy",
                (Some(Mode::SpreadServers), 0) => {
                    "failover server is no live server's buddy: it never takes over"
                }
                _ => continue,
            };
            self.issues
                .push(Issue::warning(&path, msg).about(s.subject()));
        }
    }

    /// Ids and the site name: letters, digits, `.`, `_` and `-`.
    fn name(&mut self, path: &KeyPath, name: &str) {
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

    fn secret(&mut self, path: &KeyPath, secret: &SecretRef) {
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
    fn socket(&mut self, path: &KeyPath, s: &str) -> Option<SocketAddr> {
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

/// Heartbeat and API addresses used twice: a second pass, since it needs every server.
fn addresses(x: &Expanded<'_>) -> Vec<Issue> {
    let mut issues = Vec::new();
    let mut heartbeat: HashMap<SocketAddr, &str> = HashMap::new();
    let mut api: HashMap<SocketAddr, &str> = HashMap::new();
    for s in &x.servers {
        let path = s.path();
        for (j, hb) in s.heartbeat.iter().enumerate() {
            let Ok(addr) = hb.parse::<SocketAddr>() else {
                continue;
            };
            if let Some(first) = heartbeat.insert(addr, &s.id) {
                let message = if first == s.id {
                    format!("{addr} is listed twice")
                } else {
                    format!("heartbeat address {addr} is already used by \"{first}\"")
                };
                issues.push(
                    Issue::error(&path.key("heartbeat").index(j), message).about(s.subject()),
                );
                heartbeat.insert(addr, first);
            }
        }
        let Some(Ok(addr)) = s.api.as_ref().map(|a| a.parse::<SocketAddr>()) else {
            continue;
        };
        if let Some(first) = api.insert(addr, &s.id) {
            issues.push(
                Issue::error(
                    &path.key("api"),
                    format!("api address {addr} is already used by \"{first}\""),
                )
                .about(s.subject()),
            );
            api.insert(addr, first);
        }
    }
    issues
}

/// Warnings for `file:` secrets that do not exist, relative to `base`. This is the one check
/// that looks at the disk.
pub(crate) fn missing_secret_files(x: &Expanded<'_>, base: &Path) -> Vec<Issue> {
    let mut secrets = Vec::new();
    if let Some(site) = x.site {
        secrets.push((
            KeyPath::root().key("site").key("secret"),
            &site.value.secret,
        ));
    }
    if let Some(api) = x.api.map(|a| &a.value) {
        let path = KeyPath::root().key("api");
        if let Some(token) = &api.token {
            secrets.push((path.key("token"), token));
        }
        for (i, u) in api.onvif_users.iter().enumerate() {
            secrets.push((
                path.key("onvif_users").index(i).key("password"),
                &u.password,
            ));
        }
    }
    secrets
        .into_iter()
        .filter_map(|(path, secret)| match secret {
            SecretRef::File(p) if !p.as_os_str().is_empty() && !base.join(p).exists() => {
                Some(Issue::warning(
                    &path,
                    format!("secret file {} does not exist", base.join(p).display()),
                ))
            }
            _ => None,
        })
        .collect()
}

/// The resolved site. Call only when [`validate`] found no error; `None` means a rule is
/// missing there (reported as an internal error, never a panic).
pub(crate) fn resolve(x: &Expanded<'_>) -> Option<Site> {
    let site = &x.site?.value;
    let api = &x.api?.value;
    let server_idx: HashMap<&str, ServerIdx> = x
        .servers
        .iter()
        .enumerate()
        .map(|(i, s)| Some((s.id.as_str(), ServerIdx(u16::try_from(i).ok()?))))
        .collect::<Option<_>>()?;
    let resource_idx: HashMap<&str, ResourceIdx> = x
        .resources
        .iter()
        .enumerate()
        .map(|(i, r)| Some((r.id.as_str(), ResourceIdx(u32::try_from(i).ok()?))))
        .collect::<Option<_>>()?;
    let servers = x
        .servers
        .iter()
        .map(|s| {
            Some(Server {
                id: s.id.clone(),
                role: s.role,
                address: s.address.parse().ok()?,
                heartbeat: s
                    .heartbeat
                    .iter()
                    .map(|h| h.parse().ok())
                    .collect::<Option<_>>()?,
                api: match &s.api {
                    Some(a) => Some(a.parse().ok()?),
                    None => None,
                },
                buddies: s
                    .buddies
                    .iter()
                    .map(|b| server_idx.get(b.as_str()).copied())
                    .collect::<Option<_>>()?,
                mode: s.mode,
                max_servers: s.max_servers,
                max_cameras: s.max_cameras,
                pick: s
                    .pick
                    .iter()
                    .map(|p| resource_idx.get(p.id.as_str()).copied())
                    .collect::<Option<_>>()?,
            })
        })
        .collect::<Option<_>>()?;
    let agents: Vec<_> = x
        .resource_blocks
        .iter()
        .map(|b| agent::resolve(&b.as_ref()?.value, x.base))
        .collect();
    let resources = x
        .resources
        .iter()
        .map(|r| {
            let (agent, timings) = agents.get(r.block)?.clone()?;
            let block = &x.resource_blocks.get(r.block)?.as_ref()?.value;
            Some(Resource {
                id: r.id.clone(),
                kind: r.kind,
                server: *server_idx.get(r.server.as_str())?,
                priority: r.priority,
                agent,
                timings,
                params: params::render(block, r, x.base),
            })
        })
        .collect::<Option<_>>()?;
    Some(Site {
        name: site.name.clone(),
        secret: site.secret.clone(),
        heartbeat_interval: site.heartbeat_interval,
        failure_timeout: site.failure_timeout,
        failback: site.failback,
        failback_delay: site.failback_delay,
        witnesses: site
            .witnesses
            .iter()
            .map(|w| w.parse().ok())
            .collect::<Option<_>>()?,
        connectors: site.connectors.clone(),
        api: Api {
            token: api.token.clone(),
            onvif_users: api
                .onvif_users
                .iter()
                .map(|u| OnvifUser {
                    user: u.user.clone(),
                    password: u.password.clone(),
                })
                .collect(),
        },
        servers,
        resources,
    })
}

/// Ids grouped by where they are reported, in first-seen order.
struct Groups<K> {
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
    fn push(&mut self, key: K, id: &str) {
        match self.index.get(&key) {
            Some(&i) => self.groups[i].1.push(id.to_string()),
            None => {
                self.index.insert(key.clone(), self.groups.len());
                self.groups.push((key, vec![id.to_string()]));
            }
        }
    }

    fn take(&mut self) -> Vec<(K, Vec<String>)> {
        self.index.clear();
        std::mem::take(&mut self.groups)
    }
}

/// `"a"`, `"a", "b"`, `"a", "b", "c" and 7 more`.
fn some_ids(ids: &[String]) -> String {
    let shown: Vec<String> = ids.iter().take(3).map(|id| format!("\"{id}\"")).collect();
    let mut out = shown.join(", ");
    if ids.len() > 3 {
        out.push_str(&format!(" and {} more", ids.len() - 3));
    }
    out
}

/// "1 heartbeat path", "2 heartbeat paths".
fn paths(n: usize) -> String {
    format!("{n} heartbeat path{}", if n == 1 { "" } else { "s" })
}

/// `200ms`, `1s`, `1m 30s`.
fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

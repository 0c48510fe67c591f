//! `[[servers]]`: ids and their duplicates, live servers and their buddies, failover servers
//! and their modes and picks, which live servers each failover server covers, and heartbeat
//! and API addresses used twice.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use super::{Expanded, Groups, Validator, paths, some_ids};
use crate::config::expand::ExServer;
use crate::config::locate::{Issue, KeyPath};
use crate::config::model::{Mode, Role};

impl<'a> Validator<'a> {
    /// Indexes ids; reports duplicates and the size limits.
    pub(super) fn index(&mut self) {
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
        let servers = x.servers.iter().map(|s| (s.id.as_str(), s.block));
        self.servers = index_ids(servers, "server", "servers", &mut self.issues);
        let resources = x.resources.iter().map(|r| (r.id.as_str(), r.block));
        self.resources = index_ids(resources, "resource", "resources", &mut self.issues);
    }

    pub(super) fn server(&mut self, s: &'a ExServer) {
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

    pub(super) fn live(&mut self, s: &'a ExServer) {
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

    pub(super) fn failover(&mut self, s: &'a ExServer) {
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

    pub(super) fn picks(&mut self, s: &'a ExServer) {
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

    /// Failover servers that cover too many or no live servers.
    pub(super) fn coverage(&mut self) {
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
}

/// `(id, block)` pairs by id (the first, when duplicated), and an error per block that repeats
/// an id of an earlier one: `duplicate {noun} id ... (first declared at {key}[n])`.
fn index_ids<'a>(
    ids: impl Iterator<Item = (&'a str, usize)>,
    noun: &str,
    key: &str,
    issues: &mut Vec<Issue>,
) -> HashMap<&'a str, usize> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut blocks = Vec::new();
    let mut dups = Groups::default();
    for (i, (id, block)) in ids.enumerate() {
        blocks.push(block);
        match index.get(id) {
            Some(&first) => dups.push((blocks[first], block), id),
            None => {
                index.insert(id, i);
            }
        }
    }
    for ((first, block), ids) in dups.take() {
        issues.push(Issue::error(
            &KeyPath::root().key(key).index(block).key("id"),
            format!(
                "duplicate {noun} id {} (first declared at {key}[{first}])",
                some_ids(&ids)
            ),
        ));
    }
    index
}

/// Heartbeat and API addresses used twice: a second pass, since it needs every server.
pub(super) fn addresses(x: &Expanded<'_>) -> Vec<Issue> {
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

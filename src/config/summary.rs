//! The one-screen summary `buddygate check` prints for a valid site: name and timings, server
//! and resource counts, and who covers whom.
//!
//! [`render`] joins one section per function; a section that needs the placement code (capacity
//! left when each live server fails alone) belongs in the failover module and is appended by the
//! caller, not guessed here.

use std::fmt::Write as _;

use super::model::{AgentKind, Kind, Mode, Role, Server, ServerIdx, Site};

/// The whole summary, ending in a newline.
pub fn render(site: &Site) -> String {
    [overview(site), coverage(site), picks(site)]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Name, timings, witnesses, counts.
pub fn overview(site: &Site) -> String {
    let mut out = String::new();
    let live = site.servers.iter().filter(|s| s.role == Role::Live).count();
    let failover = site.servers.len() - live;
    let _ = writeln!(out, "site {}", site.name);
    let _ = writeln!(
        out,
        "  heartbeat {} on every path, server down after {} of silence",
        show(site.heartbeat_interval),
        show(site.failure_timeout)
    );
    let failback = match site.failback {
        super::model::Failback::Auto => format!("auto, after {} stable", show(site.failback_delay)),
        super::model::Failback::Manual => "manual".to_string(),
    };
    let _ = writeln!(out, "  failback {failback}");
    if !site.witnesses.is_empty() {
        let list: Vec<String> = site.witnesses.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "  witnesses {}", list.join(", "));
    }
    let _ = writeln!(
        out,
        "servers: {} ({live} live, {failover} failover)",
        site.servers.len()
    );
    let kinds: Vec<String> = Kind::ALL
        .iter()
        .filter_map(|&k| {
            let n = site.resources.iter().filter(|r| r.kind == k).count();
            (n > 0).then(|| format!("{n} {}", k.as_str()))
        })
        .collect();
    let _ = write!(out, "resources: {}", site.resources.len());
    if !kinds.is_empty() {
        let _ = write!(out, " ({})", kinds.join(", "));
    }
    out.push('\n');
    let agents: Vec<String> = [AgentKind::Simulated, AgentKind::Exec, AgentKind::Http]
        .iter()
        .filter_map(|&k| {
            let n = site
                .resources
                .iter()
                .filter(|r| r.agent.kind() == k)
                .count();
            (n > 0).then(|| format!("{n} {}", k.as_str()))
        })
        .collect();
    if !agents.is_empty() {
        let _ = writeln!(out, "agents: {}", agents.join(", "));
    }
    out
}

/// Each live server (consecutive servers with the same buddies on one line) and its buddies.
pub fn coverage(site: &Site) -> String {
    let live: Vec<ServerIdx> = site
        .server_indices()
        .filter(|&i| site.server(i).role == Role::Live)
        .collect();
    if live.is_empty() {
        return String::new();
    }
    let mut out = String::from("who covers whom:\n");
    let mut groups: Vec<Vec<ServerIdx>> = Vec::new();
    for i in live {
        match groups.last_mut() {
            Some(g) if site.server(g[0]).buddies == site.server(i).buddies => g.push(i),
            _ => groups.push(vec![i]),
        }
    }
    for group in groups {
        let first = site.server(group[0]);
        let (resources, cameras) = group.iter().fold((0, 0), |(r, c), &s| {
            let (r2, c2) = load_of(site, s);
            (r + r2, c + c2)
        });
        let name = match group.last() {
            Some(&last) if group.len() > 1 => {
                format!(
                    "{} .. {} ({} servers)",
                    first.id,
                    site.server(last).id,
                    group.len()
                )
            }
            _ => first.id.clone(),
        };
        let buddies: Vec<String> = first
            .buddies
            .iter()
            .map(|&b| describe(site.server(b)))
            .collect();
        let to = if buddies.is_empty() {
            "nobody".to_string()
        } else {
            buddies.join(", ")
        };
        let _ = writeln!(
            out,
            "  {name}: {}, {} -> {to}",
            count(resources, "resource"),
            count(cameras, "camera")
        );
    }
    out
}

/// Each spread-cameras server and what it picks.
pub fn picks(site: &Site) -> String {
    let mut out = String::new();
    for s in site
        .servers
        .iter()
        .filter(|s| s.mode == Some(Mode::SpreadCameras))
    {
        let mut homes: Vec<ServerIdx> = s.pick.iter().map(|&r| site.resource(r).server).collect();
        homes.sort();
        homes.dedup();
        let _ = writeln!(
            out,
            "  {} picks {} from {}",
            describe(s),
            count(s.pick.len(), "resource"),
            count(homes.len(), "live server")
        );
    }
    if out.is_empty() {
        out
    } else {
        format!("spread-cameras:\n{out}")
    }
}

/// `fo-1 (spread-servers, max 2 servers, max 60 cameras)`.
fn describe(s: &Server) -> String {
    let mut parts = vec![
        match s.mode {
            Some(Mode::Mirrored) => "mirrored",
            Some(Mode::SpreadServers) => "spread-servers",
            Some(Mode::SpreadCameras) => "spread-cameras",
            None => "no mode",
        }
        .to_string(),
    ];
    if let Some(n) = s.max_servers {
        parts.push(format!("max {}", count(n as usize, "server")));
    }
    if let Some(n) = s.max_cameras {
        parts.push(format!("max {}", count(n as usize, "camera")));
    }
    format!("{} ({})", s.id, parts.join(", "))
}

/// Resources and cameras homed on `server`.
fn load_of(site: &Site, server: ServerIdx) -> (usize, usize) {
    site.resources
        .iter()
        .filter(|r| r.server == server)
        .fold((0, 0), |(n, c), r| {
            (n + 1, c + usize::from(r.kind == Kind::Camera))
        })
}

/// "1 camera", "2 cameras".
fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

fn show(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

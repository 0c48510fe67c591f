//! Placement: which failover server takes which orphaned resource.
//!
//! A pure function of the site, the set of orphaned resources, each failover server's
//! availability, the load each already carries for resources outside that set, and the
//! (resource, server) pairs known to have failed. Every node computes it from its own view;
//! equal views give equal answers, so buddies agree without talking. Rules (DESIGN section 1,
//! "Failover modes"):
//! - resources are placed one by one, highest `priority` first (ties by site order);
//! - each stays with the failover server holding it now if that one is up (booting counts:
//!   it is about to resume it), has not failed it and has room (sticky: a heal or a buddy
//!   coming back moves nothing); else it goes to the first candidate in its home server's
//!   `buddies` order that is available, has not failed it, and has room: `max_servers`
//!   distinct home servers and `max_cameras` cameras at once, counting what it already holds
//!   for other live servers (which this node may not even heartbeat with); a spread-cameras
//!   server takes only what it `pick`s;
//! - what finds no room stays unplaced.

use std::collections::HashSet;

use super::topology::Topology;
use crate::config::{Kind, Mode, ResourceIdx, ServerIdx, Site};

/// The answer: owner per placed resource, and what could not be placed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub assigned: Vec<(ResourceIdx, ServerIdx)>,
    pub unplaced: Vec<ResourceIdx>,
}

impl Placement {
    pub fn owner(&self, r: ResourceIdx) -> Option<ServerIdx> {
        self.assigned.iter().find(|(x, _)| *x == r).map(|&(_, s)| s)
    }
}

/// Whether a failover server may take work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Down, leaving or held by an operator.
    No,
    /// Booting: keeps what it holds, takes nothing new yet.
    Keep,
    Yes,
}

/// What a failover server hosts: distinct home servers and cameras.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Load {
    pub homes: Vec<ServerIdx>,
    pub cameras: u32,
}

impl Load {
    pub fn add(&mut self, site: &Site, r: ResourceIdx) {
        let res = site.resource(r);
        if !self.homes.contains(&res.server) {
            self.homes.push(res.server);
        }
        if res.kind == Kind::Camera {
            self.cameras += 1;
        }
    }

    /// Whether this load breaks the capacity of failover server `s`.
    pub fn exceeds(&self, site: &Site, s: ServerIdx) -> bool {
        let srv = site.server(s);
        (srv.mode == Some(Mode::Mirrored) && self.homes.len() > 1)
            || srv.max_servers.is_some_and(|m| self.homes.len() as u32 > m)
            || srv.max_cameras.is_some_and(|m| self.cameras > m)
    }
}

/// Places `orphans`. `available(s)` says whether failover server `s` may take work;
/// `failed(r, s)` whether `s` already failed to run `r`; `holder(r)` which server holds `r`
/// now (the highest epoch known), if any; `committed(s)` what `s` already carries for
/// resources that are not orphans.
pub fn place(
    site: &Site,
    topo: &Topology,
    orphans: &[ResourceIdx],
    available: impl Fn(ServerIdx) -> Availability,
    failed: impl Fn(ResourceIdx, ServerIdx) -> bool,
    holder: impl Fn(ResourceIdx) -> Option<ServerIdx>,
    committed: impl Fn(ServerIdx) -> Load,
) -> Placement {
    let mut order: Vec<ResourceIdx> = orphans.to_vec();
    order.sort_unstable_by_key(|&r| (std::cmp::Reverse(site.resource(r).priority), r));
    order.dedup();
    let mut loads: Vec<Option<Load>> = vec![None; site.servers.len()];
    let mut out = Placement::default();
    for r in order {
        let res = site.resource(r);
        let home = res.server;
        let candidates = topo.candidates(r);
        let mut room = |s: ServerIdx| {
            let load = loads[s.0 as usize].get_or_insert_with(|| committed(s));
            fits(site, load, s, home, res.kind)
        };
        let mut keeps = |s: ServerIdx, need: Availability| {
            let a = available(s);
            let ok = match need {
                Availability::Yes => a == Availability::Yes,
                _ => a != Availability::No,
            };
            ok && !failed(r, s) && room(s)
        };
        let chosen = holder(r)
            .filter(|&s| candidates.contains(&s) && keeps(s, Availability::Keep))
            .or_else(|| {
                candidates
                    .iter()
                    .copied()
                    .find(|&s| keeps(s, Availability::Yes))
            });
        match chosen {
            Some(s) => {
                loads[s.0 as usize]
                    .get_or_insert_with(|| committed(s))
                    .add(site, r);
                out.assigned.push((r, s));
            }
            None => out.unplaced.push(r),
        }
    }
    out
}

fn fits(site: &Site, load: &Load, s: ServerIdx, home: ServerIdx, kind: Kind) -> bool {
    let srv = site.server(s);
    if srv.mode == Some(Mode::Mirrored) && load.homes.iter().any(|&h| h != home) {
        return false;
    }
    if let Some(max) = srv.max_servers
        && !load.homes.contains(&home)
        && load.homes.len() as u32 >= max
    {
        return false;
    }
    if let Some(max) = srv.max_cameras
        && kind == Kind::Camera
        && load.cameras >= max
    {
        return false;
    }
    true
}

/// Placement when `failed` alone is down and every failover server is up: what `check`
/// prints as "capacity left if each live server failed alone".
pub fn place_alone(site: &Site, topo: &Topology, failed: ServerIdx) -> Placement {
    place(
        site,
        topo,
        topo.homed(failed),
        |_| Availability::Yes,
        |_, _| false,
        |_| None,
        |_| Load::default(),
    )
}

/// Checks the placement rules on an answer; used by property tests and the simulator.
/// Returns a description of the first rule broken.
pub fn check_rules(
    site: &Site,
    topo: &Topology,
    orphans: &[ResourceIdx],
    placement: &Placement,
) -> Result<(), String> {
    let mut seen = HashSet::new();
    let mut loads: Vec<Load> = vec![Load::default(); site.servers.len()];
    for &(r, s) in &placement.assigned {
        if !seen.insert(r) {
            return Err(format!("resource {} placed twice", site.resource(r).id));
        }
        if !orphans.contains(&r) {
            return Err(format!(
                "resource {} placed but not orphaned",
                site.resource(r).id
            ));
        }
        if !topo.candidates(r).contains(&s) {
            return Err(format!(
                "resource {} placed on {}, not one of its candidates",
                site.resource(r).id,
                site.server(s).id
            ));
        }
        loads[s.0 as usize].add(site, r);
    }
    for s in site.server_indices() {
        let srv = site.server(s);
        let load = &loads[s.0 as usize];
        if srv.max_servers.is_some_and(|m| load.homes.len() as u32 > m) {
            return Err(format!("{} hosts more than max_servers", srv.id));
        }
        if srv.max_cameras.is_some_and(|m| load.cameras > m) {
            return Err(format!("{} hosts more than max_cameras", srv.id));
        }
        if srv.mode == Some(Mode::Mirrored) && load.homes.len() > 1 {
            return Err(format!("mirrored {} hosts two live servers", srv.id));
        }
        if srv.mode == Some(Mode::SpreadCameras) {
            for &(r, owner) in &placement.assigned {
                if owner == s && !srv.pick.contains(&r) {
                    return Err(format!(
                        "spread-cameras {} took {}, which it does not pick",
                        srv.id,
                        site.resource(r).id
                    ));
                }
            }
        }
    }
    for &r in &placement.unplaced {
        if seen.contains(&r) {
            return Err(format!(
                "resource {} both placed and unplaced",
                site.resource(r).id
            ));
        }
    }
    Ok(())
}

/// The section of `buddygate check` that says, for each live server failing alone, where its
/// resources would go and what room each failover server would have left.
pub fn capacity_report(site: &Site) -> String {
    use std::fmt::Write as _;
    let topo = Topology::new(site);
    let mut out = String::from("capacity if each live server fails alone:\n");
    // Consecutive live servers with the same outcome share a line.
    let mut lines: Vec<(ServerIdx, ServerIdx, String)> = Vec::new();
    for live in site
        .server_indices()
        .filter(|&s| site.server(s).role == crate::config::Role::Live)
    {
        let p = place_alone(site, &topo, live);
        let mut parts = Vec::new();
        let mut hosts: Vec<ServerIdx> = p.assigned.iter().map(|&(_, s)| s).collect();
        hosts.sort_unstable();
        hosts.dedup();
        for h in hosts {
            let taken: Vec<ResourceIdx> = p
                .assigned
                .iter()
                .filter(|&&(_, s)| s == h)
                .map(|&(r, _)| r)
                .collect();
            let cameras = taken
                .iter()
                .filter(|&&r| site.resource(r).kind == Kind::Camera)
                .count() as u32;
            let srv = site.server(h);
            let mut room = Vec::new();
            if let Some(m) = srv.max_cameras {
                room.push(format!("{} cameras", m.saturating_sub(cameras)));
            }
            if let Some(m) = srv.max_servers {
                let n = m.saturating_sub(1);
                room.push(format!("{n} server{}", if n == 1 { "" } else { "s" }));
            }
            let left = if room.is_empty() {
                "no limit".to_string()
            } else {
                format!("{} left", room.join(", "))
            };
            parts.push(format!("{} takes {} ({left})", srv.id, taken.len()));
        }
        if !p.unplaced.is_empty() {
            parts.push(format!("{} UNPLACED", p.unplaced.len()));
        }
        if parts.is_empty() {
            parts.push("nothing to move".to_string());
        }
        let text = format!(
            "({} resources): {}",
            topo.homed(live).len(),
            parts.join("; ")
        );
        match lines.last_mut() {
            Some((_, last, t)) if *t == text => *last = live,
            _ => lines.push((live, live, text)),
        }
    }
    for (first, last, text) in lines {
        let name = if first == last {
            site.server(first).id.clone()
        } else {
            format!("{} .. {}", site.server(first).id, site.server(last).id)
        };
        let _ = writeln!(out, "  {name} {text}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SiteBuilder;

    #[test]
    fn capacity_report_names_hosts_room_and_what_does_not_fit() {
        let site = SiteBuilder::new("t")
            .live("live-1", &["fo-1", "fo-2"])
            .live("live-2", &["fo-1", "fo-2"])
            .live("live-3", &["fo-1"])
            .failover("fo-1", Mode::SpreadServers, Some(2), Some(10))
            .failover("fo-2", Mode::SpreadServers, None, None)
            .many("live-1", Kind::Camera, 12, 0)
            .many("live-2", Kind::Camera, 12, 0)
            .many("live-3", Kind::Camera, 12, 0)
            .build();
        assert_eq!(
            capacity_report(&site),
            "capacity if each live server fails alone:\n\
             \x20 live-1 .. live-2 (12 resources): fo-1 takes 10 (0 cameras, 1 server left); fo-2 takes 2 (no limit)\n\
             \x20 live-3 (12 resources): fo-1 takes 10 (0 cameras, 1 server left); 2 UNPLACED\n"
        );
    }
}

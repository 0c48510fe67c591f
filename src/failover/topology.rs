//! Facts derived once from the site: who heartbeats whom, and for every resource the
//! failover servers that may take it, in order of preference.

use crate::config::{Mode, ResourceIdx, Role, ServerIdx, Site};

/// Precomputed, read-only relations of a site.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Per resource: the failover servers that may take it, in order of preference: the home
    /// server's `buddies` (a spread-cameras buddy only for its picks), then spread-cameras
    /// servers that pick it without being listed.
    candidates: Vec<Vec<ServerIdx>>,
    /// Per server: the servers it heartbeats with, sorted.
    peers: Vec<Vec<ServerIdx>>,
    /// Per server: the resources homed on it.
    homed: Vec<Vec<ResourceIdx>>,
    /// Per server: the network paths it shares with each server (min of both path counts).
    path_count: Vec<usize>,
    /// Per server: the home servers whose resources it may claim (itself if live, and the
    /// homes of the resources it is a candidate for), sorted.
    interests: Vec<Vec<ServerIdx>>,
}

impl Topology {
    pub fn new(site: &Site) -> Self {
        let n = site.servers.len();
        let mut homed = vec![Vec::new(); n];
        for r in site.resource_indices() {
            homed[site.resource(r).server.0 as usize].push(r);
        }
        let picks = |s: ServerIdx, r: ResourceIdx| site.server(s).pick.contains(&r);
        let mut candidates = Vec::with_capacity(site.resources.len());
        for r in site.resource_indices() {
            let home = site.server(site.resource(r).server);
            let mut list: Vec<ServerIdx> = home
                .buddies
                .iter()
                .copied()
                .filter(|&b| site.server(b).mode != Some(Mode::SpreadCameras) || picks(b, r))
                .collect();
            for s in site.server_indices() {
                let srv = site.server(s);
                if srv.role == Role::Failover
                    && srv.mode == Some(Mode::SpreadCameras)
                    && picks(s, r)
                    && !list.contains(&s)
                {
                    list.push(s);
                }
            }
            candidates.push(list);
        }
        let mut peers: Vec<Vec<ServerIdx>> = vec![Vec::new(); n];
        for r in site.resource_indices() {
            let home = site.resource(r).server;
            let cands = &candidates[r.0 as usize];
            for &c in cands {
                peers[home.0 as usize].push(c);
                peers[c.0 as usize].push(home);
                for &d in cands {
                    if d != c {
                        peers[c.0 as usize].push(d);
                    }
                }
            }
        }
        // A live server's buddies are peers even before it has resources.
        for s in site.server_indices() {
            for &b in &site.server(s).buddies {
                peers[s.0 as usize].push(b);
                peers[b.0 as usize].push(s);
            }
        }
        for p in &mut peers {
            p.sort_unstable();
            p.dedup();
        }
        let path_count = site.servers.iter().map(|s| s.heartbeat.len()).collect();
        let mut interests: Vec<Vec<ServerIdx>> = vec![Vec::new(); n];
        for r in site.resource_indices() {
            let home = site.resource(r).server;
            interests[home.0 as usize].push(home);
            for &c in &candidates[r.0 as usize] {
                interests[c.0 as usize].push(home);
            }
        }
        for i in &mut interests {
            i.sort_unstable();
            i.dedup();
        }
        Self {
            candidates,
            peers,
            homed,
            path_count,
            interests,
        }
    }

    pub fn candidates(&self, r: ResourceIdx) -> &[ServerIdx] {
        &self.candidates[r.0 as usize]
    }

    pub fn peers(&self, s: ServerIdx) -> &[ServerIdx] {
        &self.peers[s.0 as usize]
    }

    pub fn is_peer(&self, a: ServerIdx, b: ServerIdx) -> bool {
        self.peers[a.0 as usize].binary_search(&b).is_ok()
    }

    pub fn homed(&self, s: ServerIdx) -> &[ResourceIdx] {
        &self.homed[s.0 as usize]
    }

    /// The home servers whose resources `s` may claim.
    pub fn interests(&self, s: ServerIdx) -> &[ServerIdx] {
        &self.interests[s.0 as usize]
    }

    /// Network paths `a` and `b` share: path `i` of one talks to path `i` of the other.
    pub fn shared_paths(&self, a: ServerIdx, b: ServerIdx) -> usize {
        self.path_count[a.0 as usize].min(self.path_count[b.0 as usize])
    }

    /// Tie-break rank of `s` as an owner of `r`: the home server first, then the candidates
    /// in order; lower wins. Servers that may not own `r` rank last.
    pub fn rank(&self, site: &Site, r: ResourceIdx, s: ServerIdx) -> usize {
        if site.resource(r).server == s {
            return 0;
        }
        match self.candidates(r).iter().position(|&c| c == s) {
            Some(i) => i + 1,
            None => usize::MAX,
        }
    }
}

//! The peers: each one's network paths and liveness (rule 2), replay protection that survives a
//! restart, what it says about itself, and the claims it advertises, indexed by resource so
//! that "who holds r" costs the holders of r, not every claim of every peer.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Node, Output};
use crate::config::{ResourceIdx, ServerIdx, Site};
use crate::failover::event::{DownReason, Event};
use crate::failover::io::{Epoch, PeerRecord};
use crate::failover::topology::Topology;
use crate::failover::views::ServerState;
use crate::failover::wire::{ClaimKind, ClaimState, PeerState};

#[derive(Debug, Clone, Default)]
pub(super) struct PathInfo {
    pub up: bool,
    /// A `path.down` was emitted and no `path.up` since.
    pub announced_down: bool,
    /// Down, and its `path.down` waits until another path shows the server alive (not a
    /// moment from timing out too): a server that dies is one event, `server.down`, even
    /// when its paths time out a millisecond apart.
    pub down_unannounced: bool,
    pub good: u8,
    pub last_heard: Option<Duration>,
    pub last_seq: u64,
}

#[derive(Debug, Clone)]
pub(super) struct Peer {
    pub paths: Vec<PathInfo>,
    pub incarnation: u64,
    pub applied_seq: u64,
    /// The replay floor last persisted: (incarnation, seq).
    pub persisted: (u64, u64),
    /// Its state as it says (from heartbeats that echo our current incarnation only).
    pub reported: PeerState,
    /// A heartbeat that echoes our current incarnation was heard: what it says is applied.
    pub confirmed: bool,
    /// The pages its claims come in, and which of them were heard since that changed: until
    /// every page was, its claims are not known in full.
    pub pages: u8,
    pub seen_pages: u128,
    pub state: ServerState,
    pub last_heard: Option<Duration>,
    pub down_since: Duration,
    /// The claims it advertises (also in the index by resource).
    pub claims: BTreeMap<ResourceIdx, Holder>,
    /// Resources it could not run, with the epoch it tried.
    pub failed: Vec<(ResourceIdx, Epoch)>,
    /// A failover server's whole load, as it says.
    pub load: Option<crate::failover::placement::Load>,
    /// The live servers it hears (of those this node may claim for).
    pub hears: Vec<ServerIdx>,
    pub digest: [u8; 8],
    pub mismatch_reported: Option<[u8; 8]>,
    /// A `server.down` was emitted and no `server.up` since.
    pub announced_down: bool,
    /// Nothing heard on any path for `failure_timeout` (the takeover rule), as of the last
    /// refresh: its change must re-run placement even when no path or server state changes.
    pub silent: bool,
    /// An operator's failback of it was learned after its last heartbeat: its `leaving`
    /// (held) is stale until it speaks again.
    pub hold_lifted: bool,
}

/// One claim on a resource, as its holder advertises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Holder {
    pub server: ServerIdx,
    pub epoch: Epoch,
    pub state: ClaimState,
    pub kind: ClaimKind,
}

impl Peer {
    /// Every page of its claims was heard: what it does not claim, it does not hold.
    pub fn complete(&self) -> bool {
        let all = match self.pages {
            0 => return false,
            128.. => u128::MAX,
            n => (1u128 << n) - 1,
        };
        self.seen_pages & all == all
    }
}

impl Holder {
    /// Starting or active: it runs the resource or is about to.
    pub fn holds(&self) -> bool {
        matches!(self.state, ClaimState::Starting | ClaimState::Active)
    }
}

#[derive(Debug, Clone)]
pub(super) struct Peers {
    pub by_server: BTreeMap<ServerIdx, Peer>,
    /// Per resource: the peers' claims on it.
    index: Vec<Vec<Holder>>,
}

impl Peers {
    pub fn new(
        site: &Site,
        topo: &Topology,
        me: ServerIdx,
        restored: &[PeerRecord],
        now: Duration,
    ) -> Self {
        let by_server = topo
            .peers(me)
            .iter()
            .map(|&p| {
                let (incarnation, seq) = restored
                    .iter()
                    .find(|r| r.server == p)
                    .map_or((0, 0), |r| (r.incarnation, r.seq));
                let paths = vec![
                    PathInfo {
                        last_seq: seq,
                        ..PathInfo::default()
                    };
                    topo.shared_paths(me, p)
                ];
                let peer = Peer {
                    paths,
                    incarnation,
                    applied_seq: seq,
                    persisted: (incarnation, seq),
                    reported: PeerState::Booting,
                    confirmed: false,
                    pages: 0,
                    seen_pages: 0,
                    state: ServerState::Down,
                    last_heard: None,
                    down_since: now,
                    claims: BTreeMap::new(),
                    failed: Vec::new(),
                    load: None,
                    hears: Vec::new(),
                    digest: [0; 8],
                    mismatch_reported: None,
                    announced_down: false,
                    hold_lifted: false,
                    silent: true,
                };
                (p, peer)
            })
            .collect();
        Self {
            by_server,
            index: vec![Vec::new(); site.resources.len()],
        }
    }

    pub fn get(&self, s: ServerIdx) -> Option<&Peer> {
        self.by_server.get(&s)
    }

    /// Every peer answered this incarnation of ours with all its claims (the start-up wait
    /// may end).
    pub fn all_heard(&self) -> bool {
        self.by_server.values().all(|p| p.confirmed && p.complete())
    }

    /// The peers' claims on `r`, heard from or not.
    pub fn holders(&self, r: ResourceIdx) -> &[Holder] {
        self.index.get(r.0 as usize).map_or(&[], Vec::as_slice)
    }

    /// Replaces what `s` claims on the resources of heartbeat page `page` of `pages`;
    /// returns what changed: (resource, the claim before, the claim now). Costs the claims of
    /// `s`, and index updates for what changed only.
    pub(super) fn set_claims(
        &mut self,
        topo: &Topology,
        s: ServerIdx,
        (page, pages): (u8, u8),
        claims: Vec<(ResourceIdx, Holder)>,
    ) -> Vec<(ResourceIdx, Option<Holder>, Option<Holder>)> {
        let in_page = |r: ResourceIdx| topo.page(r, pages) == page;
        let mut new: BTreeMap<ResourceIdx, Holder> =
            claims.into_iter().filter(|(r, _)| in_page(*r)).collect();
        let peer = self.by_server.get_mut(&s).expect("peer");
        let old: Vec<(ResourceIdx, Holder)> = peer
            .claims
            .iter()
            .filter(|(r, _)| in_page(**r))
            .map(|(&r, &h)| (r, h))
            .collect();
        let mut changed = Vec::new();
        for (r, h) in old {
            match new.remove(&r) {
                Some(n) if n == h => {}
                Some(n) => {
                    peer.claims.insert(r, n);
                    changed.push((r, Some(h), Some(n)));
                }
                None => {
                    peer.claims.remove(&r);
                    changed.push((r, Some(h), None));
                }
            }
        }
        for (r, h) in new {
            peer.claims.insert(r, h);
            changed.push((r, None, Some(h)));
        }
        for &(r, _, h) in &changed {
            let holders = &mut self.index[r.0 as usize];
            holders.retain(|x| x.server != s);
            holders.extend(h);
        }
        changed
    }

    /// The earliest moment a path or a peer's silence times out.
    pub fn next_deadline(&self, ft: Duration) -> Option<Duration> {
        let mut next: Option<Duration> = None;
        let mut at = |t: Duration| next = Some(next.map_or(t, |n| n.min(t)));
        for peer in self.by_server.values() {
            for path in &peer.paths {
                if let (true, Some(t)) = (path.up, path.last_heard) {
                    at(t + ft);
                }
            }
            if let (false, Some(t)) = (peer.silent, peer.last_heard) {
                at(t + ft);
            }
        }
        next
    }

    /// Replay floors that moved since they were last persisted: (server, incarnation, seq).
    pub fn checkpoint(&mut self) -> Vec<(ServerIdx, u64, u64)> {
        let mut out = Vec::new();
        for (&s, p) in &mut self.by_server {
            let now = (p.incarnation, p.applied_seq);
            if now != p.persisted && p.incarnation > 0 {
                p.persisted = now;
                out.push((s, now.0, now.1));
            }
        }
        out
    }
}

impl Node {
    pub(super) fn reject(&mut self, reason: &'static str) {
        *self.stats.rejected.entry(reason).or_default() += 1;
    }

    /// Heard within `failure_timeout`.
    pub(super) fn recently_heard(&self, s: ServerIdx, now: Duration) -> bool {
        self.peers
            .get(s)
            .and_then(|p| p.last_heard)
            .is_some_and(|t| now < t + self.ctx.site.failure_timeout)
    }

    /// Path timeouts and hysteresis, server up/down transitions and their events.
    pub(super) fn refresh_peers(&mut self, now: Duration, out: &mut Vec<Output>) {
        let ft = self.ctx.site.failure_timeout;
        let booting = self.is_booting();
        let mut unstable = false;
        for (&s, peer) in &mut self.peers.by_server {
            let was_down = peer.state == ServerState::Down;
            let mut path_events = Vec::new();
            for (i, p) in peer.paths.iter_mut().enumerate() {
                if p.up && p.last_heard.is_some_and(|t| now >= t + ft) {
                    p.up = false;
                    p.good = 0;
                    path_events.push((i, false));
                } else if !p.up && p.good >= 2 {
                    p.up = true;
                    path_events.push((i, true));
                }
            }
            let any_up = peer.paths.iter().any(|p| p.up);
            let prev = peer.state;
            let new_state = if !any_up {
                ServerState::Down
            } else {
                match peer.reported {
                    PeerState::Leaving => ServerState::Leaving,
                    PeerState::Unhealthy => ServerState::Unhealthy,
                    _ => ServerState::Up,
                }
            };
            let gone = |st: ServerState| matches!(st, ServerState::Down | ServerState::Leaving);
            if !path_events.is_empty() || prev != new_state {
                self.placement_dirty = true;
            }
            if !path_events.is_empty() {
                unstable = true;
            }
            peer.state = new_state;
            // The server state follows the paths (with hysteresis); takeovers follow silence
            // on every path. A heartbeat on a path not up yet keeps a server "heard" past the
            // moment its last up path times out: when that silence reaches failure_timeout,
            // placement must run again, or the server is never taken over.
            let silent = peer.last_heard.is_none_or(|t| now >= t + ft);
            if peer.silent != silent {
                peer.silent = silent;
                self.placement_dirty = true;
                // Co-buddies learn at once whom this node still hears.
                self.send_now = true;
            }
            if booting {
                continue;
            }
            // Path events only while the server is reachable; a whole server is one event.
            if any_up && !was_down {
                for (i, up) in path_events {
                    let p = &mut peer.paths[i];
                    p.down_unannounced = !up;
                    if up && std::mem::take(&mut p.announced_down) {
                        out.push(Output::Event(Event::PathUp { server: s, path: i }));
                    }
                }
                let hb = self.ctx.site.heartbeat_interval;
                let alive = peer
                    .paths
                    .iter()
                    .any(|q| q.up && q.last_heard.is_some_and(|t| now + hb < t + ft));
                if alive {
                    for (i, p) in peer.paths.iter_mut().enumerate() {
                        if std::mem::take(&mut p.down_unannounced) {
                            p.announced_down = true;
                            out.push(Output::Event(Event::PathDown { server: s, path: i }));
                        }
                    }
                }
            }
            if !gone(prev) && gone(new_state) {
                let (reason, since) = if new_state == ServerState::Leaving {
                    (DownReason::Leaving, now)
                } else {
                    (DownReason::Timeout, peer.last_heard.unwrap_or(now))
                };
                peer.down_since = since;
                peer.announced_down = true;
                for p in &mut peer.paths {
                    p.announced_down = false;
                    p.down_unannounced = false;
                }
                out.push(Output::Event(Event::ServerDown {
                    server: s,
                    reason,
                    down_since: since,
                }));
                unstable = true;
            } else if gone(prev) && !gone(new_state) {
                if std::mem::take(&mut peer.announced_down) {
                    out.push(Output::Event(Event::ServerUp { server: s }));
                }
                unstable = true;
            }
        }
        if unstable {
            self.stable_since = now;
        }
    }

    /// Whether `s` (a peer) is reachable and says it is up, booting included.
    pub(super) fn peer_state(&self, s: ServerIdx) -> Option<PeerState> {
        self.peers.get(s).map(|p| p.reported)
    }
}

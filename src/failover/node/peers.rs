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
use crate::failover::wire::{self, ClaimKind, ClaimState, Heartbeat, PeerState};

#[derive(Debug, Clone, Default)]
pub(super) struct PathInfo {
    pub up: bool,
    /// A `path.down` was emitted and no `path.up` since.
    pub announced_down: bool,
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
    pub state: ServerState,
    pub last_heard: Option<Duration>,
    pub down_since: Duration,
    /// The claims it advertises (also in the [`ClaimIndex`]).
    pub claims: Vec<(ResourceIdx, Holder)>,
    /// Resources it could not run, with the epoch it tried.
    pub failed: Vec<(ResourceIdx, Epoch)>,
    pub digest: [u8; 8],
    pub mismatch_reported: Option<[u8; 8]>,
    /// A `server.down` was emitted and no `server.up` since.
    pub announced_down: bool,
    /// Nothing heard on any path for `failure_timeout` (the takeover rule), as of the last
    /// refresh: its change must re-run placement even when no path or server state changes.
    pub silent: bool,
}

/// One claim on a resource, as its holder advertises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Holder {
    pub server: ServerIdx,
    pub epoch: Epoch,
    pub state: ClaimState,
    pub kind: ClaimKind,
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
                    state: ServerState::Down,
                    last_heard: None,
                    down_since: now,
                    claims: Vec::new(),
                    failed: Vec::new(),
                    digest: [0; 8],
                    mismatch_reported: None,
                    announced_down: false,
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

    /// Every peer answered this incarnation of ours (the start-up wait may end).
    pub fn all_heard(&self) -> bool {
        self.by_server.values().all(|p| p.confirmed)
    }

    /// The peers' claims on `r`, heard from or not.
    pub fn holders(&self, r: ResourceIdx) -> &[Holder] {
        self.index.get(r.0 as usize).map_or(&[], Vec::as_slice)
    }

    /// Replaces what `s` claims; whether it changed.
    fn set_claims(&mut self, s: ServerIdx, mut claims: Vec<(ResourceIdx, Holder)>) -> bool {
        claims.sort_unstable_by_key(|(r, _)| *r);
        claims.dedup_by_key(|(r, _)| *r);
        let peer = self.by_server.get_mut(&s).expect("peer");
        if peer.claims == claims {
            return false;
        }
        for (r, _) in &peer.claims {
            self.index[r.0 as usize].retain(|h| h.server != s);
        }
        for &(r, h) in &claims {
            self.index[r.0 as usize].push(h);
        }
        peer.claims = claims;
        true
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

    pub(super) fn on_datagram(
        &mut self,
        path: usize,
        bytes: &[u8],
        now: Duration,
        out: &mut Vec<Output>,
    ) {
        let hb = match wire::decode(&self.ctx.key, bytes) {
            Ok(hb) => hb,
            Err(e) => return self.reject(e.reason()),
        };
        let Some(&from) = self.ctx.servers.get(&hb.from) else {
            return self.reject("unknown_sender");
        };
        if from == self.ctx.me {
            return self.reject("own_datagram");
        }
        if hb.path as usize != path {
            return self.reject("wrong_path");
        }
        let ft = self.ctx.site.failure_timeout;
        let Some(peer) = self.peers.by_server.get_mut(&from) else {
            return self.reject("not_a_peer");
        };
        let Some(p) = peer.paths.get(path) else {
            return self.reject("wrong_path");
        };
        if hb.incarnation < peer.incarnation
            || (hb.incarnation == peer.incarnation && hb.seq <= p.last_seq)
        {
            return self.reject("replay");
        }
        self.stats.heartbeats_received += 1;
        if hb.incarnation > peer.incarnation {
            peer.incarnation = hb.incarnation;
            peer.applied_seq = 0;
            for p in &mut peer.paths {
                p.last_seq = 0;
            }
            // It does not know our incarnation yet: answer at once, so that its leaving or
            // unhealthy state is confirmed (and its replays refused) within a round trip.
            self.send_now = true;
        }
        let p = &mut peer.paths[path];
        p.last_seq = hb.seq;
        if p.last_heard.is_some_and(|t| now >= t + ft) {
            p.good = 0;
        }
        p.last_heard = Some(now);
        if !p.up {
            p.good = p.good.saturating_add(1);
        }
        peer.last_heard = Some(now);
        if hb.seq <= peer.applied_seq {
            // An older datagram that took a slower path: liveness only.
            return;
        }
        peer.applied_seq = hb.seq;
        if peer.persisted.0 != peer.incarnation {
            // A new incarnation is persisted at once; sequence numbers at checkpoints.
            self.checkpoint_peers();
        }
        if (hb.echo, hb.echo_seq) > (self.incarnation, self.seq) {
            // The peer heard a later life of ours than this one: jump past it.
            self.jump_incarnation(hb.echo);
        }
        if hb.echo != self.incarnation {
            // Sent before the peer heard this incarnation of ours: authentic, but it may be a
            // replay captured while we were down (a "leaving", a hold, claims of long ago). It
            // counts for liveness only; the peer answers our first heartbeat within a round
            // trip, and what it says then is applied.
            self.stats.unconfirmed += 1;
            return;
        }
        let peer = self.peers.by_server.get_mut(&from).expect("peer");
        peer.confirmed = true;
        self.apply_heartbeat(from, hb, out);
    }

    /// The content of an authentic, new heartbeat from `from` that echoes our incarnation.
    fn apply_heartbeat(&mut self, from: ServerIdx, hb: Heartbeat, out: &mut Vec<Output>) {
        let state = hb.state;
        let mut claims = Vec::with_capacity(hb.claims.len());
        for c in &hb.claims {
            if let Some(&r) = self.ctx.resources.get(&c.resource) {
                self.known.raise(r, c.epoch);
                let h = Holder {
                    server: from,
                    epoch: c.epoch,
                    state: c.state,
                    kind: c.kind,
                };
                claims.push((r, h));
            }
        }
        let mut failed: Vec<(ResourceIdx, Epoch)> = hb
            .failed
            .iter()
            .filter_map(|f| Some((*self.ctx.resources.get(&f.resource)?, f.epoch)))
            .collect();
        failed.sort_unstable();
        for &(r, e) in &failed {
            self.known.raise(r, e);
        }
        for w in &hb.newer {
            if let Some(&r) = self.ctx.resources.get(&w.resource) {
                self.known.raise(r, w.epoch);
            }
        }
        for w in &hb.rounds {
            if let Some(&h) = self.ctx.servers.get(&w.server) {
                self.known.raise_floor(h, w.round);
            }
        }
        for h in hb.holds {
            if let Some(&s) = self.ctx.servers.get(&h.server)
                && self.holds.merge(s, h.held, h.counter, h.origin)
            {
                self.pending.push(self.holds.record(s));
                self.placement_dirty = true;
                self.send_now = true;
            }
        }
        let changed = self.peers.set_claims(from, claims);
        let peer = self.peers.by_server.get_mut(&from).expect("peer");
        if peer.reported != state {
            peer.reported = state;
            self.placement_dirty = true;
        }
        if peer.failed != failed {
            peer.failed = failed;
            self.placement_dirty = true;
        }
        if changed {
            self.placement_dirty = true;
        }
        peer.digest = hb.digest;
        if hb.digest != self.ctx.digest {
            if peer.mismatch_reported != Some(hb.digest) {
                peer.mismatch_reported = Some(hb.digest);
                self.stats.config_mismatches += 1;
                out.push(Output::Event(Event::ConfigMismatch {
                    server: from,
                    local: self.ctx.digest,
                    remote: hb.digest,
                }));
            }
        } else {
            peer.mismatch_reported = None;
        }
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
            }
            if booting {
                continue;
            }
            // Path events only while the server is reachable; a whole server is one event.
            if any_up && !was_down {
                for (i, up) in path_events {
                    let p = &mut peer.paths[i];
                    if !up {
                        p.announced_down = true;
                        out.push(Output::Event(Event::PathDown { server: s, path: i }));
                    } else if std::mem::take(&mut p.announced_down) {
                        out.push(Output::Event(Event::PathUp { server: s, path: i }));
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

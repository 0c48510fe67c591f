//! A heartbeat received: authenticated and checked against replay (floors that survive a
//! restart, the echo of this node's incarnation), then what it says about the peer, its claims,
//! failures, holds and newer epochs applied to this node's view.

use std::time::Duration;

use super::peers::Holder;
use super::{Node, Output};
use crate::config::{ResourceIdx, ServerIdx};
use crate::failover::event::Event;
use crate::failover::io::Epoch;
use crate::failover::wire::{self, Heartbeat, Name, Names};

impl Node {
    pub(super) fn on_datagram(
        &mut self,
        path: usize,
        bytes: &[u8],
        at: Duration,
        out: &mut Vec<Output>,
    ) {
        match wire::decode(&self.ctx.key, bytes) {
            Ok(hb) => self.on_heartbeat(path, hb, at, out),
            Err(e) => self.reject(e.reason()),
        }
    }

    /// An authentic heartbeat that arrived on path `path` at `at`.
    pub(super) fn on_heartbeat(
        &mut self,
        path: usize,
        hb: Heartbeat,
        at: Duration,
        out: &mut Vec<Output>,
    ) {
        let now = at;
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
            peer.pages = 0;
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
        self.apply_heartbeat(from, hb, now, out);
    }

    /// The content of an authentic, new heartbeat from `from` that echoes our incarnation.
    fn apply_heartbeat(
        &mut self,
        from: ServerIdx,
        hb: Heartbeat,
        now: Duration,
        out: &mut Vec<Output>,
    ) {
        // Names by index mean this node's site file only if it is the sender's.
        let by_index = hb.digest == self.ctx.digest;
        let unreadable = std::cell::Cell::new(0usize);
        let n_resources = self.ctx.site.resources.len();
        let n_servers = self.ctx.site.servers.len();
        let resource = |n: &Name| match n {
            Name::Index(i) if by_index && (*i as usize) < n_resources => Some(ResourceIdx(*i)),
            Name::Id(id) => self.ctx.resources.get(id).copied(),
            Name::Index(_) => {
                unreadable.set(unreadable.get() + 1);
                None
            }
        };
        let mut claims = Vec::new();
        for g in &hb.claims {
            let rs: Vec<ResourceIdx> = match &g.resources {
                Names::Index(v) if by_index => v
                    .iter()
                    .filter(|&&i| (i as usize) < n_resources)
                    .map(|&i| ResourceIdx(i))
                    .collect(),
                Names::Index(v) => {
                    unreadable.set(unreadable.get() + v.len());
                    Vec::new()
                }
                Names::Id(v) => v
                    .iter()
                    .filter_map(|id| self.ctx.resources.get(id).copied())
                    .collect(),
            };
            for r in rs {
                let h = Holder {
                    server: from,
                    epoch: g.epoch,
                    state: g.state,
                    kind: g.kind,
                };
                claims.push((r, h));
            }
        }
        let mut failed: Vec<(ResourceIdx, Epoch)> = hb
            .failed
            .iter()
            .filter_map(|f| Some((resource(&f.resource)?, f.epoch)))
            .collect();
        let newer: Vec<(ResourceIdx, Epoch, Option<&Name>, bool)> = hb
            .newer
            .iter()
            .filter_map(|f| Some((resource(&f.resource)?, f.epoch, f.holder.as_ref(), f.active)))
            .collect();
        let servers = &self.ctx.servers;
        let server = |n: &Name| match n {
            Name::Index(i) if by_index && (*i as usize) < n_servers => Some(ServerIdx(*i as u16)),
            Name::Id(id) => servers.get(id).copied(),
            Name::Index(_) => None,
        };
        let rounds: Vec<(ServerIdx, u64)> = hb
            .rounds
            .iter()
            .filter_map(|w| Some((server(&w.server)?, w.round)))
            .collect();
        let holds: Vec<(ServerIdx, bool, u64, String)> = hb
            .holds
            .into_iter()
            .filter_map(|h| Some((server(&h.server)?, h.held, h.counter, h.origin)))
            .collect();
        let load = hb.load.map(|l| crate::failover::placement::Load {
            homes: l.homes.iter().filter_map(server).collect(),
            cameras: l.cameras,
        });
        self.stats.unreadable += unreadable.get() as u64;
        for &(r, h) in &claims {
            self.known.raise(r, h.epoch);
        }
        for &(r, e) in &failed {
            self.known.raise(r, e);
        }
        let ft = self.ctx.site.failure_timeout;
        for &(r, e, holder, active) in &newer {
            self.known.raise(r, e);
            match holder.and_then(server) {
                Some(x) => {
                    self.relayed.insert(r, (x, e, active, now + ft));
                }
                None => {
                    self.relayed.remove(&r);
                }
            }
        }
        let hears: Vec<ServerIdx> = hb.hears.iter().filter_map(server).collect();
        for (h, round) in rounds {
            self.known.raise_floor(h, round);
        }
        for (s, held, counter, origin) in holds {
            if self.holds.merge(s, held, counter, origin) {
                self.lifted(s, held);
                self.pending.push(self.holds.record(s));
                self.placement_dirty = true;
                self.send_now = true;
            }
        }
        let page = (hb.page, hb.pages.max(1));
        let topo = self.ctx.topo.clone();
        let changes = self.peers.set_claims(&topo, from, page, claims);
        let changed = !changes.is_empty();
        // A live server that stops its own resource without failing it hands it to a claim
        // that beat its own, which this node may not hear yet (a heal heard late): see
        // `takeover::orphans`.
        let site = &self.ctx.site;
        for (r, before, now_) in changes {
            let stood_down = before.is_some_and(|h| h.holds()) && now_.is_none_or(|h| !h.holds());
            if stood_down && site.resource(r).server == from && !failed.iter().any(|&(x, _)| x == r)
            {
                self.handed.insert(r, now + self.ctx.site.failure_timeout);
            }
        }
        let peer = self.peers.by_server.get_mut(&from).expect("peer");
        if peer.pages != page.1 {
            peer.pages = page.1;
            peer.seen_pages = 0;
        }
        if u32::from(page.0) < 128 {
            peer.seen_pages |= 1u128 << page.0;
        }
        failed.extend(
            peer.failed
                .iter()
                .filter(|(r, _)| topo.page(*r, page.1) != page.0)
                .copied(),
        );
        failed.sort_unstable();
        failed.dedup_by_key(|(r, _)| *r);
        peer.hold_lifted = false;
        if peer.reported != hb.state {
            peer.reported = hb.state;
            self.placement_dirty = true;
        }
        if peer.failed != failed {
            peer.failed = failed;
            self.placement_dirty = true;
        }
        if peer.load != load {
            peer.load = load;
            self.placement_dirty = true;
        }
        if peer.hears != hears {
            peer.hears = hears;
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
}

//! What a failover server takes over, keeps, gives up and reports.
//!
//! Every failover node runs the same pure [`placement::place`] over the resources that need a
//! host in its view, counting what every failover server already holds for other live
//! servers (its claims travel in its heartbeats), so two buddies that do not serve the same
//! live servers still agree on who has room. It claims what placement gives it. When a
//! higher-priority takeover leaves it over capacity, it stops the lowest-priority resources
//! placement moved on, once the higher ones are active. A resource that needs a host and that
//! no buddy can take is reported (`resource.unplaced`) by its first buddy that is up: a camera
//! nobody records is never silent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use super::batches::BatchKind;
use super::own::OwnState;
use super::{Node, Output};
use crate::config::{Kind, ResourceIdx, Role, ServerIdx};
use crate::failover::event::{Event, UnplacedReason};
use crate::failover::placement::{self, Availability, Load, Placement};
use crate::failover::wire::{ClaimKind, PeerState};

impl Node {
    /// Whether `s` may take work, as this node sees it.
    pub(super) fn availability(&self, s: ServerIdx, now: Duration) -> Availability {
        if s == self.ctx.me {
            return if self.phase == super::Phase::Running && !self.holds.held(s) && self.storage_ok
            {
                Availability::Yes
            } else {
                Availability::No
            };
        }
        if !self.recently_heard(s, now) || self.holds.held(s) {
            return Availability::No;
        }
        match self.peer_state(s) {
            Some(PeerState::Leaving) | None => Availability::No,
            Some(PeerState::Booting) => Availability::Keep,
            Some(_) => Availability::Yes,
        }
    }

    fn failed_at(&self, r: ResourceIdx, s: ServerIdx) -> bool {
        if s == self.ctx.me {
            return self.own.failed.contains_key(&r);
        }
        self.peers
            .get(s)
            .is_some_and(|p| p.failed.iter().any(|&(x, _)| x == r))
    }

    /// Why the resources of live server `home` need a new host, if they do.
    /// `Some(true)` when the cause is silence, which a witness majority must confirm.
    fn home_gone(&self, home: ServerIdx, now: Duration) -> Option<bool> {
        if self.holds.held(home) {
            return Some(false);
        }
        if !self.recently_heard(home, now) {
            // Silence on every path for failure_timeout (or never heard since we booted),
            // unless a peer this node hears still hears it (a cut on our side only).
            let vouched =
                self.peers.by_server.iter().any(|(&s, p)| {
                    s != home && p.hears.contains(&home) && self.recently_heard(s, now)
                });
            return (!vouched).then_some(true);
        }
        let lifted = self.peers.get(home).is_some_and(|p| p.hold_lifted);
        (self.peer_state(home) == Some(PeerState::Leaving) && !lifted).then_some(false)
    }

    /// Resources that need a host in this node's view: those of live servers that are gone,
    /// and those a live server that is up does not hold (its monitor failed, or it waits for
    /// failback).
    fn orphans(&self, now: Duration) -> Vec<ResourceIdx> {
        let mut out = Vec::new();
        for (&home, p) in &self.peers.by_server {
            if self.ctx.site.server(home).role != Role::Live {
                continue;
            }
            let gone = self.home_gone(home, now).is_some();
            for &r in self.ctx.topo.homed(home) {
                // Held at home as its own heartbeats say, or as a peer that hears it sooner
                // relays (a heal heard late on our side).
                let held_at_home = self
                    .peers
                    .holders(r)
                    .iter()
                    .any(|h| h.server == home && h.holds())
                    || self.relayed.get(&r).is_some_and(|&(x, ..)| x == home);
                // Not holding it counts only once all its claims were heard, and not while
                // it was handed to a claim this node has not heard yet.
                let handed = self.handed.contains_key(&r) && self.best_other(r, now).is_none();
                let dropped = p.reported != PeerState::Booting
                    && p.complete()
                    && !held_at_home
                    && !handed
                    && !p.hold_lifted;
                // A peer that hears sooner says another server runs it (a failback or a heal
                // heard late on our side): it has a host.
                // (Not when that server is the home, which says itself that it is leaving with
                // that claim: the relay is no newer than what the home says.)
                let leaving = self.peer_state(home) == Some(PeerState::Leaving);
                let says = |e| {
                    leaving
                        && self
                            .peers
                            .holders(r)
                            .iter()
                            .any(|h| h.server == home && h.epoch >= e)
                };
                let relayed = self.relayed.get(&r).is_some_and(|&(x, e, active, _)| {
                    active && x != self.ctx.me && !(x == home && says(e))
                });
                // Dropped by a home that is up and may run it, while another buddy holds it:
                // it stays there until the home takes it back (after failback_delay, or at
                // once if that buddy is over its capacity): never a move to a third server.
                let going_home = !gone
                    && self.availability(home, now) == Availability::Yes
                    && !self.failed_at(r, home)
                    && self.best_other(r, now).is_some_and(|h| h.server != home);
                if (gone || dropped) && !relayed && !going_home {
                    out.push(r);
                }
            }
        }
        out
    }

    /// Who holds each orphan now (starting or active, highest epoch): placement keeps it
    /// there when it can.
    fn current_holders(
        &self,
        orphans: &[ResourceIdx],
        now: Duration,
    ) -> HashMap<ResourceIdx, ServerIdx> {
        let mut out = HashMap::with_capacity(orphans.len());
        for &r in orphans {
            let mine = self
                .own
                .get(r)
                .filter(|c| c.state.holds() || c.state == OwnState::Resumed)
                .map(|c| (c.epoch, self.ctx.me));
            let theirs = self
                .peers
                .holders(r)
                .iter()
                .filter(|h| h.holds() && self.recently_heard(h.server, now))
                .map(|h| (h.epoch, h.server));
            if let Some((_, s)) = mine.into_iter().chain(theirs).max_by_key(|&(e, _)| e) {
                out.insert(r, s);
            }
        }
        out
    }

    /// What each failover server holds for resources outside `orphans`. Its claims on the
    /// live servers this node shares with it are known one by one; the rest comes from the
    /// load it says it carries in all.
    fn committed_loads(
        &self,
        orphans: &BTreeSet<ResourceIdx>,
        now: Duration,
    ) -> HashMap<ServerIdx, Load> {
        let site = &self.ctx.site;
        let mine = self.ctx.topo.interests(self.ctx.me);
        let mut loads: HashMap<ServerIdx, Load> = HashMap::new();
        for (&r, c) in &self.own.claims {
            if c.state.holds() && !orphans.contains(&r) {
                loads.entry(self.ctx.me).or_default().add(site, r);
            }
        }
        for (&s, p) in &self.peers.by_server {
            if site.server(s).role != Role::Failover || !self.recently_heard(s, now) {
                continue;
            }
            let held = p.claims.iter().filter(|(_, h)| h.holds()).map(|(&r, _)| r);
            let mut load = Load::default();
            if let Some(all) = &p.load {
                let orphan_cameras = held
                    .clone()
                    .filter(|r| orphans.contains(r) && site.resource(*r).kind == Kind::Camera)
                    .count() as u32;
                load.cameras = all.cameras.saturating_sub(orphan_cameras);
                load.homes = all
                    .homes
                    .iter()
                    .copied()
                    .filter(|h| mine.binary_search(h).is_err())
                    .collect();
                for r in held.filter(|r| !orphans.contains(r)) {
                    let home = site.resource(r).server;
                    if !load.homes.contains(&home) {
                        load.homes.push(home);
                    }
                }
            } else {
                for r in held.filter(|r| !orphans.contains(r)) {
                    load.add(site, r);
                }
            }
            loads.insert(s, load);
        }
        loads
    }

    /// A failover server: take what placement gives us and we do not hold yet; give up what
    /// capacity no longer allows; report what nobody can take.
    pub(super) fn take_over(&mut self, now: Duration, out: &mut Vec<Output>) {
        // A co-buddy whose claims are not all heard yet may hold what looks free.
        let partial = self.peers.by_server.iter().any(|(&s, p)| {
            self.ctx.site.server(s).role == Role::Failover
                && self.recently_heard(s, now)
                && !p.complete()
        });
        if partial {
            return;
        }
        self.placement_dirty = false;
        let orphans = self.orphans(now);
        let orphan_set: BTreeSet<ResourceIdx> = orphans.iter().copied().collect();
        let holders = self.current_holders(&orphans, now);
        let committed = self.committed_loads(&orphan_set, now);
        let placement = placement::place(
            &self.ctx.site,
            &self.ctx.topo,
            &orphans,
            |s| self.availability(s, now),
            |r, s| self.failed_at(r, s),
            |r| holders.get(&r).copied(),
            |s| committed.get(&s).cloned().unwrap_or_default(),
        );
        let majority = self.witnesses.silence_counts();
        let me = self.ctx.me;
        let mut by_home: BTreeMap<ServerIdx, Vec<ResourceIdx>> = BTreeMap::new();
        for &(r, s) in &placement.assigned {
            if s != me || self.own.get(r).is_some() {
                continue;
            }
            let home = self.ctx.site.resource(r).server;
            if self.home_gone(home, now) == Some(true) && !majority {
                continue;
            }
            by_home.entry(home).or_default().push(r);
        }
        for (home, rs) in by_home {
            let since = match (self.home_gone(home, now), self.peers.get(home)) {
                (Some(_), Some(p)) => p.down_since,
                _ => now,
            };
            self.claim(
                rs,
                BatchKind::Failover,
                ClaimKind::Takeover,
                home,
                since,
                now,
                out,
            );
        }
        self.report_unplaced(&placement, now, out);
        self.restore_capacity(&placement, now, out);
    }

    /// Reports resources no buddy can take, once, from their first buddy that is up.
    fn report_unplaced(&mut self, placement: &Placement, now: Duration, out: &mut Vec<Output>) {
        let me = self.ctx.me;
        let mut mine = BTreeSet::new();
        let mut new: BTreeMap<ServerIdx, Vec<(ResourceIdx, UnplacedReason)>> = BTreeMap::new();
        for &r in &placement.unplaced {
            let candidates = self.ctx.topo.candidates(r);
            let reporter = candidates
                .iter()
                .copied()
                .find(|&s| self.availability(s, now) != Availability::No);
            if reporter != Some(me) {
                continue;
            }
            mine.insert(r);
            if !self.unplaced.contains(&r) {
                let why = if candidates.iter().all(|&s| self.failed_at(r, s)) {
                    UnplacedReason::Failed
                } else if candidates.iter().any(|&s| {
                    self.availability(s, now) == Availability::Yes && !self.failed_at(r, s)
                }) {
                    UnplacedReason::Capacity
                } else {
                    UnplacedReason::Unavailable
                };
                new.entry(self.ctx.site.resource(r).server)
                    .or_default()
                    .push((r, why));
            }
        }
        for (server, resources) in new {
            out.push(Output::Event(Event::ResourceUnplaced { server, resources }));
        }
        self.unplaced = mine;
    }

    /// Over capacity (a higher-priority takeover took the room of what it held): once nothing
    /// is starting, stop the lowest-priority resources placement left unplaced until the load
    /// fits. What placement gave another buddy is handed over when that one is active.
    fn restore_capacity(&mut self, placement: &Placement, now: Duration, out: &mut Vec<Output>) {
        let site = self.ctx.site.clone();
        let me = self.ctx.me;
        if self
            .own
            .claims
            .values()
            .any(|c| c.state == OwnState::Starting)
        {
            return;
        }
        let active: Vec<ResourceIdx> = self
            .own
            .claims
            .iter()
            .filter(|(_, c)| c.state == OwnState::Active)
            .map(|(&r, _)| r)
            .collect();
        let load_of = |rs: &[ResourceIdx]| {
            let mut l = Load::default();
            for &r in rs {
                l.add(&site, r);
            }
            l
        };
        if !load_of(&active).exceeds(&site, me) {
            return;
        }
        let unplaced: BTreeSet<ResourceIdx> = placement.unplaced.iter().copied().collect();
        let mut victims: Vec<ResourceIdx> = active
            .iter()
            .copied()
            .filter(|r| unplaced.contains(r))
            .collect();
        victims.sort_by_key(|&r| (site.resource(r).priority, std::cmp::Reverse(r)));
        let mut keep = active;
        for r in victims {
            if !load_of(&keep).exceeds(&site, me) {
                break;
            }
            keep.retain(|&x| x != r);
            self.stats.evictions += 1;
            self.stop_claim(r, "over capacity", now, out);
        }
    }
}

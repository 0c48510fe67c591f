//! This node's own claims (rule 4), what it failed to run, and ownership conflicts.
//!
//! - A claim is held from the moment it is persisted until its agent's `stop` succeeded: a
//!   failed stop keeps it (the resource may still run), is retried with backoff and reported
//!   (`resource.failed`, the `stops_failing` count). A conflict is resolved only once the
//!   loser's stop succeeded.
//! - The loser of a conflict stops once the winner is active (make-before-break); higher
//!   epoch wins, equal epochs (only between differing site files) go to the smaller server id.
//! - A claim below the highest epoch known for its resource is stale: consumers were told of a
//!   newer owner. If nobody holds the resource above it, its holder renews it at a new round.
//! - A failure bars this node from a resource until it expires: after `failback_delay`, or at
//!   once when the home server runs the resource again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::batches::BatchKind;
use super::peers::Holder;
use super::{Ctx, Node, Output, Phase, beats};
use crate::config::{ResourceIdx, ServerIdx};
use crate::failover::event::Event;
use crate::failover::io::{AgentOp, ClaimRecord, Durable, Epoch, new_epoch, stop_retry_delay};
use crate::failover::wire::{ClaimKind, ClaimState, PeerState};

/// A claim's state as this node holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnState {
    /// Held before a restart; advertised while booting, then renewed or stopped.
    Resumed,
    Starting,
    Active,
    /// Its agent is being stopped, or its stop failed and is retried.
    Stopping,
}

impl OwnState {
    pub fn wire(self) -> ClaimState {
        match self {
            OwnState::Resumed | OwnState::Starting => ClaimState::Starting,
            OwnState::Active => ClaimState::Active,
            OwnState::Stopping => ClaimState::Stopping,
        }
    }

    /// Starting or active: it runs the resource or is about to.
    pub fn holds(self) -> bool {
        matches!(self, OwnState::Starting | OwnState::Active)
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Claim {
    pub epoch: Epoch,
    pub state: OwnState,
    pub kind: ClaimKind,
    /// Failed stops in a row.
    pub stop_failures: u32,
    /// When the next stop is due after a failed one (`None`: none pending).
    pub retry_at: Option<Duration>,
}

/// A resource this node could not run.
#[derive(Debug, Clone, Copy)]
pub(super) struct Failure {
    pub epoch: Epoch,
    pub until: Duration,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Own {
    pub claims: BTreeMap<ResourceIdx, Claim>,
    pub failed: BTreeMap<ResourceIdx, Failure>,
    /// Resources in an ownership conflict, reported and not yet resolved.
    pub conflicts: BTreeSet<ResourceIdx>,
}

impl Own {
    pub fn resume(&mut self, ctx: &Ctx, r: ResourceIdx, epoch: Epoch) {
        let kind = if ctx.is_home(r) {
            ClaimKind::Home
        } else {
            ClaimKind::Takeover
        };
        self.claims
            .insert(r, Claim::new(epoch, OwnState::Resumed, kind));
    }

    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (ResourceIdx, Epoch, OwnState)> + '_ {
        self.claims.iter().map(|(&r, c)| (r, c.epoch, c.state))
    }

    pub fn get(&self, r: ResourceIdx) -> Option<&Claim> {
        self.claims.get(&r)
    }

    pub fn stops_failing(&self) -> usize {
        self.claims.values().filter(|c| c.stop_failures > 0).count()
    }

    pub fn next_deadline(&self) -> Option<Duration> {
        let retries = self.claims.values().filter_map(|c| c.retry_at);
        let expiries = self.failed.values().map(|f| f.until);
        retries.chain(expiries).min()
    }
}

impl Claim {
    fn new(epoch: Epoch, state: OwnState, kind: ClaimKind) -> Self {
        Self {
            epoch,
            state,
            kind,
            stop_failures: 0,
            retry_at: None,
        }
    }
}

impl Node {
    /// What this node says about itself.
    pub(super) fn my_state(&self) -> PeerState {
        match self.phase {
            Phase::Booting { .. } => PeerState::Booting,
            Phase::Leaving => PeerState::Leaving,
            Phase::Running if self.holds.held(self.ctx.me) || !self.storage_ok => {
                PeerState::Leaving
            }
            Phase::Running => {
                if self.own.failed.keys().any(|&r| self.ctx.is_home(r)) {
                    PeerState::Unhealthy
                } else {
                    PeerState::Up
                }
            }
        }
    }

    /// Who holds `r` at `epoch` now (starting or active), and whether it is active, as this
    /// node hears it.
    pub(super) fn holder_at(
        &self,
        r: ResourceIdx,
        epoch: Epoch,
        now: Duration,
    ) -> Option<(ServerIdx, bool)> {
        if let Some(c) = self.own.get(r)
            && c.epoch == epoch
            && c.state.holds()
        {
            return Some((self.ctx.me, c.state == OwnState::Active));
        }
        self.peers
            .holders(r)
            .iter()
            .find(|h| h.epoch == epoch && h.holds() && self.recently_heard(h.server, now))
            .map(|h| (h.server, h.state == ClaimState::Active))
    }

    /// The best claim on `r` among peers heard recently, starting or active.
    pub(super) fn best_other(&self, r: ResourceIdx, now: Duration) -> Option<Holder> {
        let mut best: Option<Holder> = None;
        for h in self.peers.holders(r) {
            if !h.holds() || !self.recently_heard(h.server, now) {
                continue;
            }
            if best.is_none_or(|b| self.beats_holder(h, &b)) {
                best = Some(*h);
            }
        }
        best
    }

    fn beats_holder(&self, a: &Holder, b: &Holder) -> bool {
        beats(
            (a.epoch, self.ctx.id(a.server)),
            (b.epoch, self.ctx.id(b.server)),
        )
    }

    /// Whether `h` beats this node's claim at `epoch`.
    fn beats_mine(&self, h: &Holder, epoch: Epoch) -> bool {
        beats(
            (h.epoch, self.ctx.id(h.server)),
            (epoch, self.ctx.id(self.ctx.me)),
        )
    }

    pub(super) fn on_agent_done(
        &mut self,
        r: ResourceIdx,
        epoch: Epoch,
        op: AgentOp,
        result: Result<(), String>,
        now: Duration,
        out: &mut Vec<Output>,
    ) {
        let Some(claim) = self.own.claims.get(&r).copied() else {
            return;
        };
        if claim.epoch != epoch {
            return;
        }
        match (op, claim.state, result) {
            (AgentOp::Start, OwnState::Starting, Ok(())) => {
                self.own.claims.get_mut(&r).expect("claim").state = OwnState::Active;
                self.send_now = true;
                // Capacity is restored once the higher-priority takeovers are active.
                self.placement_dirty = true;
                self.batch_progress(r, None, now, out);
            }
            (AgentOp::Start, OwnState::Starting, Err(reason)) => {
                self.fail_claim(r, reason, now, out)
            }
            (AgentOp::Stop, OwnState::Stopping, Ok(())) => self.release(r, epoch, now, out),
            (AgentOp::Stop, OwnState::Stopping, Err(reason)) => {
                let c = self.own.claims.get_mut(&r).expect("claim");
                c.stop_failures += 1;
                c.retry_at = Some(now + stop_retry_delay(c.stop_failures));
                self.stats.stop_failures += 1;
                if c.stop_failures == 1 {
                    // Once per failing streak; the retries are counted, not announced.
                    out.push(Output::Event(Event::ResourceFailed {
                        resource: r,
                        server: self.ctx.me,
                        epoch,
                        reason: format!("stop failed, retrying: {reason}"),
                    }));
                }
            }
            _ => {}
        }
    }

    /// The stop succeeded: the claim is released.
    fn release(&mut self, r: ResourceIdx, epoch: Epoch, now: Duration, out: &mut Vec<Output>) {
        self.own.claims.remove(&r);
        self.persist_now(
            out,
            vec![Durable::Claim(ClaimRecord {
                resource: r,
                epoch,
                held: false,
            })],
        );
        self.send_now = true;
        self.placement_dirty = true;
        if self.own.conflicts.remove(&r)
            && let Some(h) = self.best_other(r, now)
        {
            out.push(Output::Event(Event::OwnershipResolved {
                resource: r,
                owner: h.server,
                epoch: h.epoch,
            }));
        }
    }

    pub(super) fn on_monitor_failed(
        &mut self,
        r: ResourceIdx,
        reason: String,
        now: Duration,
        out: &mut Vec<Output>,
    ) {
        if self.own.get(r).is_some_and(|c| c.state == OwnState::Active) {
            self.fail_claim(r, reason, now, out);
        }
    }

    /// A start or monitor failed: stop it (it may be half-started), tell everyone it failed
    /// here so another buddy takes it, and keep away from it until the failure expires.
    fn fail_claim(&mut self, r: ResourceIdx, reason: String, now: Duration, out: &mut Vec<Output>) {
        let Some(c) = self.own.claims.get_mut(&r) else {
            return;
        };
        let epoch = c.epoch;
        c.state = OwnState::Stopping;
        self.own.failed.insert(
            r,
            super::own::Failure {
                epoch,
                until: now + self.ctx.site.failback_delay,
            },
        );
        self.stats.resources_failed += 1;
        out.push(Output::Stop { resource: r, epoch });
        out.push(Output::Event(Event::ResourceFailed {
            resource: r,
            server: self.ctx.me,
            epoch,
            reason: reason.clone(),
        }));
        if self.ctx.is_home(r) {
            self.stable_since = now;
        }
        self.send_now = true;
        self.placement_dirty = true;
        self.batch_progress(r, Some(reason), now, out);
    }

    /// Failures expire after their time, or at once when the home server runs the resource
    /// again at a newer epoch (a failback).
    pub(super) fn expire_failures(&mut self, now: Duration) {
        let mut expired = Vec::new();
        for (&r, f) in &self.own.failed {
            let home = self.ctx.site.resource(r).server;
            let home_runs_it = home != self.ctx.me
                && self.peers.holders(r).iter().any(|h| {
                    h.server == home && h.state == ClaimState::Active && h.epoch > f.epoch
                });
            if now >= f.until || home_runs_it {
                expired.push(r);
            }
        }
        for r in expired {
            self.own.failed.remove(&r);
            self.placement_dirty = true;
            self.send_now = true;
        }
    }

    /// Rule 4 on every claim this node holds: stop what a higher active claim beats, report
    /// and resolve conflicts, renew what is stale.
    pub(super) fn resolve_ownership(&mut self, now: Duration, out: &mut Vec<Output>) {
        let mut to_stop = Vec::new();
        let mut stale = Vec::new();
        let mut conflicts_now = BTreeSet::new();
        let leaving = self.my_state() == PeerState::Leaving;
        for (&r, c) in &self.own.claims {
            if !c.state.holds() {
                continue;
            }
            let mut owners = vec![(self.ctx.me, c.epoch)];
            let mut beaten = false;
            let mut tie = false;
            for h in self.peers.holders(r) {
                if !h.holds() || !self.recently_heard(h.server, now) {
                    continue;
                }
                let theirs_wins = self.beats_mine(h, c.epoch);
                beaten |= theirs_wins;
                tie |= h.epoch == c.epoch;
                if h.state != ClaimState::Active {
                    continue;
                }
                if theirs_wins {
                    to_stop.push((r, c.epoch));
                }
                if c.state == OwnState::Active {
                    let (higher_kind, lower_leaving) = if theirs_wins {
                        (h.kind, leaving)
                    } else {
                        (
                            c.kind,
                            self.peer_state(h.server) == Some(PeerState::Leaving),
                        )
                    };
                    // A takeover from a node that said it is leaving is a planned hand-over.
                    if h.epoch == c.epoch || (higher_kind == ClaimKind::Takeover && !lower_leaving)
                    {
                        conflicts_now.insert(r);
                        owners.push((h.server, h.epoch));
                    }
                }
            }
            // Stale, or tied with a peer (site files that differ): an epoch must name one owner.
            let tied_active = tie && c.state == OwnState::Active;
            // A peer says another server holds it above us, which we may not hear: we are
            // beaten, and stop once it is active.
            if let Some(&(x, e, active, _)) = self.relayed.get(&r)
                && x != self.ctx.me
                && beats((e, self.ctx.id(x)), (c.epoch, self.ctx.id(self.ctx.me)))
            {
                beaten = true;
                if active {
                    to_stop.push((r, c.epoch));
                }
            }
            if !beaten && (c.epoch < self.known.get(r) || tied_active) && !leaving {
                stale.push(r);
            }
            if owners.len() > 1 && !self.own.conflicts.contains(&r) {
                // Two owners: the network was split a moment ago. Failback waits
                // failback_delay from here, not from the last path transition, which a heal
                // heard late (before the paths count as up) may leave in the past.
                self.stable_since = now;
                owners.sort_by(|a, b| {
                    let (ka, kb) = ((a.1, self.ctx.id(a.0)), (b.1, self.ctx.id(b.0)));
                    if beats(ka, kb) {
                        std::cmp::Ordering::Less
                    } else {
                        std::cmp::Ordering::Greater
                    }
                });
                self.stats.conflicts += 1;
                out.push(Output::Event(Event::OwnershipConflict {
                    resource: r,
                    owners,
                }));
            }
        }
        // A conflict this node won ends when nobody else advertises the resource any more:
        // the loser's stop succeeded (a failing stop keeps it unresolved).
        let ended: Vec<ResourceIdx> = self
            .own
            .conflicts
            .iter()
            .copied()
            .filter(|r| {
                !conflicts_now.contains(r)
                    && self
                        .own
                        .get(*r)
                        .is_some_and(|c| c.state == OwnState::Active)
                    && !self
                        .peers
                        .holders(*r)
                        .iter()
                        .any(|h| self.recently_heard(h.server, now))
            })
            .collect();
        for r in ended {
            self.own.conflicts.remove(&r);
            let epoch = self.own.claims[&r].epoch;
            out.push(Output::Event(Event::OwnershipResolved {
                resource: r,
                owner: self.ctx.me,
                epoch,
            }));
        }
        self.own.conflicts.extend(conflicts_now);
        to_stop.dedup();
        for (r, _) in to_stop {
            self.stop_claim(r, "superseded by a higher epoch", now, out);
        }
        // Renewed together once nothing is starting, so a batch renews at one epoch.
        let starting = self
            .own
            .claims
            .values()
            .any(|c| c.state == OwnState::Starting);
        if !stale.is_empty() && !starting {
            self.renew(stale, now, out);
        }
    }

    /// Stops a claim this node gives up (make-before-break: a winner is active).
    pub(super) fn stop_claim(
        &mut self,
        r: ResourceIdx,
        why: &str,
        now: Duration,
        out: &mut Vec<Output>,
    ) {
        let Some(c) = self.own.claims.get_mut(&r) else {
            return;
        };
        if c.state == OwnState::Stopping {
            return;
        }
        let was_starting = c.state == OwnState::Starting;
        c.state = OwnState::Stopping;
        let epoch = c.epoch;
        self.send_now = true;
        self.placement_dirty = true;
        if was_starting {
            self.batch_progress(r, Some(why.to_string()), now, out);
        }
        out.push(Output::Stop { resource: r, epoch });
    }

    /// Failed stops whose retry is due.
    pub(super) fn retry_stops(&mut self, now: Duration, out: &mut Vec<Output>) {
        for (&r, c) in &mut self.own.claims {
            if c.state == OwnState::Stopping && c.retry_at.is_some_and(|t| now >= t) {
                c.retry_at = None;
                out.push(Output::Stop {
                    resource: r,
                    epoch: c.epoch,
                });
            }
        }
    }

    /// Claims this node holds below the newest epoch known for them, which nobody holds
    /// above: claimed again at a new round, so the newest epoch names this node.
    pub(super) fn renew(&mut self, rs: Vec<ResourceIdx>, now: Duration, out: &mut Vec<Output>) {
        self.stats.renewals += rs.len() as u64;
        let (home, away): (Vec<_>, Vec<_>) = rs.into_iter().partition(|&r| self.ctx.is_home(r));
        if !home.is_empty() {
            self.claim(
                home,
                BatchKind::Failback,
                ClaimKind::Handback,
                self.ctx.me,
                now,
                now,
                out,
            );
        }
        let mut by_home: BTreeMap<ServerIdx, Vec<ResourceIdx>> = BTreeMap::new();
        for r in away {
            by_home
                .entry(self.ctx.site.resource(r).server)
                .or_default()
                .push(r);
        }
        for (h, rs) in by_home {
            self.claim(
                rs,
                BatchKind::Failover,
                ClaimKind::Takeover,
                h,
                now,
                now,
                out,
            );
        }
    }

    /// Claims `rs` at one new round: persist first, then start (rule 4).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn claim(
        &mut self,
        rs: Vec<ResourceIdx>,
        batch: BatchKind,
        kind: ClaimKind,
        home: ServerIdx,
        since: Duration,
        now: Duration,
        out: &mut Vec<Output>,
    ) {
        let round = rs
            .iter()
            .map(|&r| self.known.next_round(r))
            .max()
            .unwrap_or(1);
        for &r in &rs {
            // A claim renewed while it was starting leaves the batch it was in.
            self.batch_progress(r, Some("claimed again at a newer epoch".into()), now, out);
        }
        let (site, topo, me) = (&self.ctx.site, &self.ctx.topo, self.ctx.me);
        let epochs: Vec<Epoch> = rs
            .iter()
            .map(|&r| new_epoch(round, topo.rank(site, r, me)))
            .collect();
        let epoch = epochs.iter().copied().max().unwrap_or(0);
        // What was learned before this claim goes first, as it was.
        let mut records = std::mem::take(&mut self.pending);
        records.extend(self.known.take_dirty());
        for (&r, &e) in rs.iter().zip(&epochs) {
            self.known.claimed(r, e);
            self.own
                .claims
                .insert(r, Claim::new(e, OwnState::Starting, kind));
            records.push(Durable::Claim(ClaimRecord {
                resource: r,
                epoch: e,
                held: true,
            }));
        }
        out.push(Output::Persist(records));
        if batch == BatchKind::Failover {
            out.push(Output::Event(Event::FailoverStarted {
                server: home,
                new_server: me,
                epoch,
                resources: rs.clone(),
            }));
        }
        // A takeover covers from when the home server was last heard, less a heartbeat
        // interval for what its agent had not written yet.
        let cover_from = (batch == BatchKind::Failover)
            .then(|| since.saturating_sub(self.ctx.site.heartbeat_interval));
        for (&r, &e) in rs.iter().zip(&epochs) {
            self.standby.remove(&r);
            out.push(Output::Start {
                resource: r,
                epoch: e,
                cover_from,
            });
        }
        self.batches.open(batch, home, epoch, rs, since, now);
        self.send_now = true;
        self.urgent = true;
        self.placement_dirty = true;
    }

    /// Persists `records` (with anything pending) before any later output.
    pub(super) fn persist_now(&mut self, out: &mut Vec<Output>, records: Vec<Durable>) {
        let mut all = std::mem::take(&mut self.pending);
        all.extend(self.known.take_dirty());
        all.extend(records);
        if !all.is_empty() {
            out.push(Output::Persist(all));
        }
    }
}

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
use super::{Ctx, Node, Output, Phase};
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

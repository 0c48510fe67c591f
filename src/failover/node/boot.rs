//! Start-up (rule 6) and failback (rule 7).
//!
//! A node boots advertising the claims its store held (so nobody takes what it is about to
//! resume) and starts nothing until it has heard every peer or `2 x failure_timeout` passed.
//! Then each resumed claim is stopped if a peer holds the resource at a higher epoch (after a
//! daemon-only crash its agent may still run), renewed at a new round if a newer epoch is
//! known for it, and resumed otherwise. A live server claims its own resources that nobody
//! holds at once, and takes back from a buddy on failback: after `failback_delay` of stability
//! (auto) or an operator's failback, make-before-break.

use std::time::Duration;

use super::batches::BatchKind;
use super::own::OwnState;
use super::{Node, Output, Phase};
use crate::config::{Failback, ServerIdx};
use crate::failover::event::{DownReason, Event};
use crate::failover::io::epoch_round;
use crate::failover::wire::ClaimKind;

impl Node {
    pub(super) fn finish_boot(&mut self, now: Duration, out: &mut Vec<Output>) {
        self.phase = Phase::Running;
        self.stable_since = now;
        self.placement_dirty = true;
        self.send_now = true;
        // Servers not heard during the start-up wait are down.
        let ft = self.ctx.site.failure_timeout;
        for (&s, p) in &mut self.peers.by_server {
            if p.last_heard.is_none_or(|t| now >= t + ft) {
                p.announced_down = true;
                p.down_since = p.last_heard.unwrap_or(now);
                out.push(Output::Event(Event::ServerDown {
                    server: s,
                    reason: DownReason::Timeout,
                    down_since: p.down_since,
                }));
            }
        }
        let resumed: Vec<_> = self
            .own
            .iter()
            .filter(|(_, _, s)| *s == OwnState::Resumed)
            .map(|(r, e, _)| (r, e))
            .collect();
        let mut stale = Vec::new();
        let mut resume = Vec::new();
        for (r, epoch) in resumed {
            let beaten = self.best_other(r, now).is_some_and(|h| {
                super::beats(
                    (h.epoch, self.ctx.id(h.server)),
                    (epoch, self.ctx.id(self.ctx.me)),
                )
            });
            let home = self.ctx.site.resource(r).server;
            if beaten {
                self.own.claims.get_mut(&r).expect("resumed").state = OwnState::Starting;
                self.stop_claim(r, "held above by a peer", now, out);
            } else if epoch < self.known.get(r) || epoch_round(epoch) < self.known.floor(home) {
                stale.push(r);
            } else {
                resume.push((r, epoch));
            }
        }
        if !resume.is_empty() {
            let rs: Vec<_> = resume.iter().map(|&(r, _)| r).collect();
            let epoch = resume.iter().map(|&(_, e)| e).max().unwrap_or(0);
            for &(r, e) in &resume {
                self.own.claims.get_mut(&r).expect("resumed").state = OwnState::Starting;
                out.push(Output::Start {
                    resource: r,
                    epoch: e,
                    cover_from: None,
                });
            }
            self.batches
                .open(BatchKind::Boot, self.ctx.me, epoch, rs, now, now);
        }
        if !stale.is_empty() {
            self.renew(stale, now, out);
        }
    }

    /// Whether auto failback is waiting for `failback_delay` of stability.
    pub(super) fn failback_pending(&self) -> bool {
        self.ctx.site.failback == Failback::Auto
            && self.phase == Phase::Running
            && !self.holds.held(self.ctx.me)
            && self
                .ctx
                .topo
                .homed(self.ctx.me)
                .iter()
                .any(|r| self.own.get(*r).is_none())
    }

    /// Whether failover server `s` says it holds more than its capacity, and hears this node
    /// (so that it sees the claim that takes its excess back; at a heal it may not yet).
    fn over_capacity(&self, s: ServerIdx) -> bool {
        self.peers.get(s).is_some_and(|p| {
            p.hears.contains(&self.ctx.me)
                && p.load
                    .as_ref()
                    .is_some_and(|l| l.exceeds(&self.ctx.site, s))
        })
    }

    /// Our own resources: claim what nobody holds; hand back on failback.
    pub(super) fn claim_home(&mut self, now: Duration, out: &mut Vec<Output>) {
        let site = self.ctx.site.clone();
        // A failback waits while this node still stops copies of its own resources it ran
        // before (a restart beaten by a buddy's claim): it brings back every resource or none.
        let stopping = self.ctx.topo.homed(self.ctx.me).iter().any(|&r| {
            self.own
                .get(r)
                .is_some_and(|c| matches!(c.state, OwnState::Stopping | OwnState::Resumed))
        });
        let operator = !stopping && self.take_failback_request();
        let failback_due = operator
            || (!stopping
                && site.failback == Failback::Auto
                && now >= self.stable_since + site.failback_delay);
        let mut boot = Vec::new();
        let mut back = Vec::new();
        let me = self.ctx.me;
        for &r in self.ctx.topo.clone().homed(me) {
            if self.own.get(r).is_some() {
                continue;
            }
            let failed = self.own.failed.contains_key(&r);
            match self.best_other(r, now) {
                None if !failed => {
                    // Nobody holds it (first start, or its holder is gone): claim at once.
                    if self.known.get(r) == 0 && self.known.floor(me) == 0 {
                        boot.push(r);
                    } else {
                        back.push(r);
                    }
                }
                _ if failback_due => back.push(r),
                // A buddy over its capacity (both sides of a healed partition took work)
                // gives back to a home that is up rather than to a third server.
                Some(h) if !failed && self.over_capacity(h.server) => back.push(r),
                _ => {}
            }
        }
        if failback_due {
            let ctx = &self.ctx;
            self.own.failed.retain(|r, _| !ctx.is_home(*r));
            self.stable_since = now;
        }
        if !boot.is_empty() {
            self.claim(boot, BatchKind::Boot, ClaimKind::Home, me, now, now, out);
        }
        if !back.is_empty() {
            self.claim(
                back,
                BatchKind::Failback,
                ClaimKind::Handback,
                me,
                now,
                now,
                out,
            );
        }
    }
}

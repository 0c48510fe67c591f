//! Ownership conflicts (rule 4): who holds a resource as this node hears it, and what this node
//! does about every claim it holds that another one contests: the loser stops once the winner
//! is active (make-before-break), higher epoch wins, equal epochs (only between differing site
//! files) go to the smaller server id; a conflict is resolved only once the loser's stop
//! succeeded; a stale claim nobody holds above is renewed at a new round.

use std::collections::BTreeSet;
use std::time::Duration;

use super::own::OwnState;
use super::peers::Holder;
use super::{Node, Output, beats};
use crate::config::{ResourceIdx, ServerIdx};
use crate::failover::event::Event;
use crate::failover::io::Epoch;
use crate::failover::wire::{ClaimKind, ClaimState, PeerState};

impl Node {
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
}

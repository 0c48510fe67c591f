//! Hot standby (`standby = true` on a resource). The first buddy that may take a resource over
//! (in its home server's `buddies` order, among those up) prepares it while the home server
//! runs it: a recorder keeps the stream open with a short rolling buffer. The takeover's
//! `start` then covers from when the home server was last heard. The standby is released when
//! this node stops being that buddy, when the home server no longer runs the resource (someone
//! took it, or it failed), or when this node itself takes it over (the start supersedes it).

use std::collections::BTreeSet;
use std::time::Duration;

use super::{Node, Output, Phase};
use crate::config::ResourceIdx;
use crate::failover::placement::Availability;

impl Node {
    pub(super) fn update_standby(&mut self, now: Duration, out: &mut Vec<Output>) {
        let site = self.ctx.site.clone();
        let topo = self.ctx.topo.clone();
        let me = self.ctx.me;
        if self.standby_candidates.is_empty() {
            return;
        }
        let mut want = BTreeSet::new();
        if self.phase == Phase::Running && !self.listening(now) {
            for &r in self.standby_candidates.iter() {
                let home = site.resource(r).server;
                if !self.recently_heard(home, now) || self.own.get(r).is_some() {
                    continue;
                }
                let runs_at_home = self
                    .peers
                    .holders(r)
                    .iter()
                    .any(|h| h.server == home && h.holds());
                let first = topo
                    .candidates(r)
                    .iter()
                    .copied()
                    .find(|&s| self.availability(s, now) == Availability::Yes);
                if runs_at_home && first == Some(me) {
                    want.insert(r);
                }
            }
        }
        if want == self.standby {
            return;
        }
        let released: Vec<ResourceIdx> = self.standby.difference(&want).copied().collect();
        for r in released {
            out.push(Output::Standby {
                resource: r,
                prepare: false,
            });
        }
        for &r in want.difference(&self.standby) {
            out.push(Output::Standby {
                resource: r,
                prepare: true,
            });
        }
        self.standby = want;
    }

    /// Resources this node keeps in hot standby now.
    pub fn standing_by(&self) -> impl Iterator<Item = ResourceIdx> + '_ {
        self.standby.iter().copied()
    }
}

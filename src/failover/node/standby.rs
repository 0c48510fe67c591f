//! Standby (`standby` on a resource). The first buddy that may take a resource over (in its
//! home server's `buddies` order, among those up) prepares it while the home server runs it: a
//! recorder keeps the stream open with a short rolling buffer. The takeover's `start` then
//! covers from when the home server was last heard. A hot standby is prepared all the time; a
//! warm one only once the home server misses heartbeats (silent on every path for
//! [`WARM_SILENCE`] intervals), and kept for [`WARM_HOLD`] failure timeouts after the last time
//! it was: a cold start after the failure timeout waits for the recorder, the RTSP session and
//! the camera's next keyframe, which a warm standby has behind it by then. The standby is
//! released when this node stops being that buddy, when the home server no longer runs the
//! resource (someone took it, or it failed), when a warm one's home server has been heard
//! steadily again, or when this node itself takes it over (the start supersedes it).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{Node, Output, Phase};
use crate::config::{ResourceIdx, ServerIdx, Site, Standby};
use crate::failover::placement::Availability;
use crate::failover::topology::Topology;

/// A warm standby is prepared once its home server has been silent on every path for this many
/// heartbeat intervals, in tenths (1.5: one heartbeat late by half an interval).
pub const WARM_SILENCE: u32 = 15;
/// ... and kept for this many failure timeouts after the home server was last found silent.
pub const WARM_HOLD: u32 = 10;

/// The resources a node may keep in standby: those it may take over.
#[derive(Debug, Default)]
pub(super) struct Candidates {
    hot: Vec<ResourceIdx>,
    /// By home server: judged only while it misses heartbeats.
    warm: BTreeMap<ServerIdx, Vec<ResourceIdx>>,
}

impl Candidates {
    pub fn of(site: &Site, topo: &Topology, me: ServerIdx) -> Self {
        let mut c = Candidates::default();
        for r in site.resource_indices() {
            if !topo.candidates(r).contains(&me) {
                continue;
            }
            match site.resource(r).timings.standby {
                Standby::Off => {}
                Standby::Hot => c.hot.push(r),
                Standby::Warm => c.warm.entry(site.resource(r).server).or_default().push(r),
            }
        }
        c
    }

    fn is_empty(&self) -> bool {
        self.hot.is_empty() && self.warm.is_empty()
    }
}

impl Node {
    /// Silence after which a warm standby's home server counts as missing heartbeats.
    fn warm_silence(&self) -> Duration {
        self.ctx.site.heartbeat_interval * WARM_SILENCE / 10
    }

    /// How long a warm standby is kept after its home server was last found missing heartbeats.
    fn warm_hold(&self) -> Duration {
        self.ctx.site.failure_timeout * WARM_HOLD
    }

    /// The warm standbys' home servers that missed heartbeats within the last [`WARM_HOLD`]
    /// failure timeouts; notes those that miss them now (and are not down yet: a takeover has
    /// the rest). On a healthy site this looks at them once in a while, not at every step: a
    /// home heard at `t` cannot miss heartbeats before `t + silence`, one that is down (or never
    /// heard) not before it is heard again plus `silence`, and what they are heard later only
    /// moves that on.
    fn missing_homes(&mut self, now: Duration) -> Vec<ServerIdx> {
        if self.missed.is_empty() && now < self.warm_check_at {
            return Vec::new();
        }
        let candidates = self.standby_candidates.clone();
        let (silence, hold) = (self.warm_silence(), self.warm_hold());
        let ft = self.ctx.site.failure_timeout;
        let mut next = Duration::MAX;
        let mut missing = Vec::new();
        for &home in candidates.warm.keys() {
            let last = self.peers.get(home).and_then(|p| p.last_heard);
            match last.filter(|&t| now < t + ft) {
                Some(t) if now >= t + silence => {
                    self.missed.insert(home, now);
                }
                Some(t) => next = next.min(t + silence),
                None => next = next.min(now + silence),
            }
            match self.missed.get(&home) {
                Some(&t) if now < t + hold => missing.push(home),
                Some(_) => {
                    self.missed.remove(&home);
                }
                None => {}
            }
        }
        self.warm_check_at = next;
        missing
    }

    /// When a warm standby's home server may count as missing heartbeats, or stop counting so;
    /// only instants after the last input (while booting or stopping nothing is judged, and a
    /// passed instant would wake the driver again and again).
    pub(super) fn standby_deadline(&self) -> Option<Duration> {
        let hold = self.warm_hold();
        let last = self.last_input.unwrap_or_default();
        let held = self.missed.values().map(|&t| t + hold);
        let check = (self.warm_check_at != Duration::MAX).then_some(self.warm_check_at);
        held.chain(check).filter(|&t| t > last).min()
    }

    pub(super) fn update_standby(&mut self, now: Duration, out: &mut Vec<Output>) {
        let site = self.ctx.site.clone();
        let topo = self.ctx.topo.clone();
        let me = self.ctx.me;
        let candidates = self.standby_candidates.clone();
        if candidates.is_empty() {
            return;
        }
        let mut want = BTreeSet::new();
        if self.phase == Phase::Running && !self.listening(now) {
            // Warm ones only of the home servers that miss heartbeats: on a healthy site this
            // is a look at each home's last heartbeat, not at each camera.
            let warm: Vec<&Vec<ResourceIdx>> = self
                .missing_homes(now)
                .iter()
                .filter_map(|home| candidates.warm.get(home))
                .collect();
            if candidates.hot.is_empty() && warm.is_empty() && self.standby.is_empty() {
                return;
            }
            for &r in candidates.hot.iter().chain(warm.into_iter().flatten()) {
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

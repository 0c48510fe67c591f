//! Faults: the network (per-direction, per-path links; partitions; witnesses) and the nodes
//! (machine and daemon crashes, restarts with and without a store, stalls, clean shutdowns,
//! failing agents, operator commands, differing site files).

use std::sync::Arc;
use std::time::Duration;

use super::{Ev, NodeStatus, Sim};
use crate::config::{ResourceIdx, ServerIdx, Site};
use crate::failover::wire::Action;
use crate::failover::{Input, Restored, Topology};

/// Faults of one direction of one path between two nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub cut: bool,
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Probability a datagram arrives twice.
    pub duplicate: f64,
    pub delay: Duration,
    /// Uniform extra delay in `0..jitter`; datagrams may overtake each other.
    pub jitter: Duration,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            cut: false,
            loss: 0.0,
            duplicate: 0.0,
            delay: Duration::from_micros(300),
            jitter: Duration::ZERO,
        }
    }
}

impl Sim {
    // ---- the network ----------------------------------------------------------------------

    /// One direction of one path.
    pub fn link(&mut self, from: ServerIdx, to: ServerIdx, path: usize) -> &mut Link {
        self.links.entry((from, to, path)).or_default()
    }

    /// Applies `f` to both directions of `path` between every pair of nodes.
    pub fn set_path(&mut self, path: usize, f: impl Fn(&mut Link)) {
        let n = self.site.servers.len() as u16;
        for a in 0..n {
            for b in 0..n {
                if a != b {
                    f(self.link(ServerIdx(a), ServerIdx(b), path));
                }
            }
        }
    }

    /// Cuts (or restores) every path from `from` to `to` (one way).
    pub fn cut_one_way(&mut self, from: ServerIdx, to: ServerIdx, cut: bool) {
        for p in 0..self.topo.shared_paths(from, to) {
            self.link(from, to, p).cut = cut;
        }
    }

    /// Cuts (or restores) every path between `a` and `b`, both ways.
    pub fn cut(&mut self, a: ServerIdx, b: ServerIdx, cut: bool) {
        self.cut_one_way(a, b, cut);
        self.cut_one_way(b, a, cut);
    }

    /// Two-way partition between the two groups (or heals it with `cut = false`).
    pub fn partition(&mut self, left: &[ServerIdx], right: &[ServerIdx], cut: bool) {
        for &a in left {
            for &b in right {
                self.cut(a, b, cut);
            }
        }
    }

    /// Whether node `s` reaches witness `w`.
    pub fn set_witness(&mut self, s: ServerIdx, w: usize, reachable: bool) {
        self.nodes[s.0 as usize].witnesses[w] = reachable;
        self.feed_witnesses(s);
    }

    /// Restores every link and witness.
    pub fn heal_all(&mut self) {
        self.links.clear();
        for s in (0..self.nodes.len()).map(|i| ServerIdx(i as u16)) {
            for w in &mut self.nodes[s.0 as usize].witnesses {
                *w = true;
            }
            self.feed_witnesses(s);
        }
    }

    /// Hands a raw datagram to node `to` on `path`, as if it arrived from the network.
    pub fn inject(&mut self, to: ServerIdx, path: usize, bytes: Vec<u8>) {
        self.schedule(self.now, Ev::Deliver { to, path, bytes });
    }

    // ---- nodes ----------------------------------------------------------------------------

    /// The daemon dies (`kill -9`) but the machine runs on: its resources keep running, its
    /// store survives, agent operations in flight never report.
    pub fn kill_daemon(&mut self, s: ServerIdx) {
        let n = &mut self.nodes[s.0 as usize];
        n.node = None;
        if n.status != NodeStatus::Crashed {
            self.status_log.push((self.now, s, NodeStatus::Crashed));
        }
        let n = &mut self.nodes[s.0 as usize];
        n.status = NodeStatus::Crashed;
        n.generation += 1;
        n.tick_at = None;
        n.inbox.clear();
        n.busy_until.clear();
    }

    /// The machine dies (power cut): its daemon and its resources stop; its store survives.
    pub fn crash(&mut self, s: ServerIdx) {
        self.kill_daemon(s);
        let n = &mut self.nodes[s.0 as usize];
        n.standby.clear();
        let stopped: Vec<ResourceIdx> = n.running.keys().copied().collect();
        n.running.clear();
        for r in stopped {
            self.update_truth(r);
        }
    }

    /// A crashed node boots again: a new incarnation, resuming from its store.
    pub fn start(&mut self, s: ServerIdx) {
        if self.nodes[s.0 as usize].status == NodeStatus::Crashed {
            self.boot(s);
        }
    }

    /// The server comes back: a new incarnation, resuming from its store.
    pub fn restart(&mut self, s: ServerIdx) {
        self.crash(s);
        self.boot(s);
    }

    /// The store of a crashed node is lost (a new disk, a wiped data dir).
    pub fn wipe(&mut self, s: ServerIdx) {
        self.nodes[s.0 as usize].store = Restored::default();
        self.forget(s);
    }

    /// A restart with an empty data dir.
    pub fn restart_empty(&mut self, s: ServerIdx) {
        self.crash(s);
        self.wipe(s);
        self.boot(s);
    }

    /// A restart with an empty data dir on a machine whose clock was set back: the new
    /// incarnation is below the one its peers remember.
    pub fn restart_empty_clock_behind(&mut self, s: ServerIdx) {
        self.crash(s);
        self.wipe(s);
        self.nodes[s.0 as usize].incarnation = 0;
        self.boot(s);
    }

    /// Runs `s` on another site file from its next boot on (a rollout; the servers and
    /// resources must be those of the site, in the same order).
    pub fn set_site(&mut self, s: ServerIdx, site: Site) {
        assert_eq!(site.servers.len(), self.site.servers.len());
        assert_eq!(site.resources.len(), self.site.resources.len());
        let n = &mut self.nodes[s.0 as usize];
        n.topo = Arc::new(Topology::new(&site));
        n.site = Arc::new(site);
    }

    /// SIGSTOP: the daemon stops; its resources keep running; datagrams queue.
    pub fn pause(&mut self, s: ServerIdx) {
        let n = &mut self.nodes[s.0 as usize];
        if n.status == NodeStatus::Running {
            n.status = NodeStatus::Paused;
            self.status_log.push((self.now, s, NodeStatus::Paused));
        }
    }

    /// SIGCONT.
    pub fn resume(&mut self, s: ServerIdx) {
        let n = &mut self.nodes[s.0 as usize];
        if n.status != NodeStatus::Paused {
            return;
        }
        n.status = NodeStatus::Running;
        let inbox = std::mem::take(&mut n.inbox);
        self.status_log.push((self.now, s, NodeStatus::Running));
        // Everything queued is read at once, as the daemon drains its sockets.
        self.inputs(s, inbox);
    }

    /// Clean shutdown: the node says it is leaving; its daemon exits once it has handed
    /// everything over, or after `grace`, and the machine then goes down.
    pub fn shutdown(&mut self, s: ServerIdx, grace: Duration) {
        self.input(s, Input::Shutdown);
        let deadline = self.now + grace;
        while self.now < deadline {
            if self.node(s).is_none_or(|n| n.drained()) {
                break;
            }
            self.step_once(deadline);
        }
        self.crash(s);
    }

    /// An operator command sent to node `at`.
    pub fn command(&mut self, at: ServerIdx, action: Action, server: ServerIdx) {
        let stamp = self.now.as_millis() as u64;
        self.input(
            at,
            Input::Command {
                action,
                server,
                stamp,
            },
        );
    }

    /// The store of `s` can (or cannot: a full disk) make things durable.
    pub fn set_storage(&mut self, s: ServerIdx, ok: bool) {
        self.input(s, Input::Storage { ok });
    }

    /// The agent of `s` will fail to start `r` from now on.
    pub fn fail_start(&mut self, s: ServerIdx, r: ResourceIdx, fail: bool) {
        let n = &mut self.nodes[s.0 as usize];
        if fail {
            n.fail_start.insert(r);
        } else {
            n.fail_start.remove(&r);
        }
    }

    /// The agent of `s` will fail to stop `r` from now on (it keeps running).
    pub fn fail_stop(&mut self, s: ServerIdx, r: ResourceIdx, fail: bool) {
        let n = &mut self.nodes[s.0 as usize];
        if fail {
            n.fail_stop.insert(r);
        } else {
            n.fail_stop.remove(&r);
        }
    }

    /// `r`'s monitor on `s` reports it failed (it stops running).
    pub fn fail_monitor(&mut self, s: ServerIdx, r: ResourceIdx) {
        if self.nodes[s.0 as usize].running.remove(&r).is_some() {
            self.update_truth(r);
        }
        self.input(
            s,
            Input::MonitorFailed {
                resource: r,
                reason: "monitor reported not running".into(),
            },
        );
    }
}

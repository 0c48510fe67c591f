//! The simulator: many [`Node`]s in virtual time over a simulated network.
//!
//! Links are per direction and per path, each with loss, delay, jitter, duplication and a cut
//! switch, so one-way and two-way partitions, a lost path and a lossy path are all settings.
//! Nodes can crash (state lost, store kept), restart (new incarnation, resumes from its
//! store), pause (nothing processed; datagrams queue) and shut down cleanly. Agents are
//! simulated: a start takes `activation`, a stop `deactivation`, and failures can be
//! injected. Everything random comes from one seed, so a failing schedule replays exactly.
//!
//! The simulator also keeps the ground truth the protocol is judged by: which node actually
//! runs which resource at every instant, and the intervals where a resource had no owner or
//! more than one.

mod site;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

pub use site::SiteBuilder;

use crate::config::{ResourceIdx, ServerIdx, Site};
use crate::failover::wire::Action;
use crate::failover::{AgentOp, ClaimRecord, Epoch, Event, Input, Key, Node, Output, Topology};

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

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub seed: u64,
    /// Time a simulated agent takes to start a resource.
    pub activation: Duration,
    /// Time a simulated agent takes to stop one.
    pub deactivation: Duration,
    /// Nodes boot at random times in `0..boot_spread`.
    pub boot_spread: Duration,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            seed: 1,
            activation: Duration::from_millis(20),
            deactivation: Duration::from_millis(10),
            boot_spread: Duration::from_millis(100),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    Running,
    Paused,
    Crashed,
}

/// An interval during which a resource had no owner or more than one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub resource: ResourceIdx,
    pub from: Duration,
    /// `None` while it lasts.
    pub to: Option<Duration>,
    pub owners: usize,
}

impl Gap {
    pub fn length(&self, now: Duration) -> Duration {
        self.to.unwrap_or(now) - self.from
    }
}

#[derive(Debug)]
enum Ev {
    Boot(ServerIdx),
    Deliver {
        to: ServerIdx,
        path: usize,
        bytes: Vec<u8>,
    },
    Tick(ServerIdx),
    Agent {
        node: ServerIdx,
        generation: u64,
        resource: ResourceIdx,
        epoch: Epoch,
        op: AgentOp,
    },
}

struct SimNode {
    node: Option<Node>,
    status: NodeStatus,
    generation: u64,
    incarnation: u64,
    store: BTreeMap<ResourceIdx, ClaimRecord>,
    tick_at: Option<Duration>,
    /// Inputs that reached a paused daemon, handled when it resumes.
    inbox: Vec<Input>,
    /// Ground truth: resources this server actually runs, with the epoch started at.
    running: BTreeMap<ResourceIdx, Epoch>,
    busy_until: HashMap<ResourceIdx, Duration>,
    fail_start: BTreeSet<ResourceIdx>,
    witnesses: Vec<bool>,
}

/// A site in virtual time.
pub struct Sim {
    site: Arc<Site>,
    topo: Arc<Topology>,
    key: Key,
    opts: SimOptions,
    rng: fastrand::Rng,
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    pending: HashMap<u64, Ev>,
    nodes: Vec<SimNode>,
    links: HashMap<(ServerIdx, ServerIdx, usize), Link>,
    events: Vec<(Duration, ServerIdx, Event)>,
    gaps: Vec<Gap>,
    open_gap: Vec<Option<usize>>,
    /// Starts whose claim was not durable first, which would break rule 4 (must stay 0).
    pub ordering_violations: usize,
    /// Times two nodes ran one resource at the same epoch (must stay 0).
    pub epoch_collisions: usize,
    /// Every change of a node's status: (time, node, status).
    status_log: Vec<(Duration, ServerIdx, NodeStatus)>,
}

impl Sim {
    /// Every server of `site` gets a node, booting within `opts.boot_spread`.
    pub fn new(site: Site, opts: SimOptions) -> Self {
        let site = Arc::new(site);
        let topo = Arc::new(Topology::new(&site));
        let n = site.servers.len();
        let nw = site.witnesses.len();
        let mut sim = Self {
            key: Key::new(b"sim-site-key"),
            rng: fastrand::Rng::with_seed(opts.seed),
            opts,
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            pending: HashMap::new(),
            nodes: (0..n)
                .map(|_| SimNode {
                    node: None,
                    status: NodeStatus::Crashed,
                    generation: 0,
                    incarnation: 0,
                    store: BTreeMap::new(),
                    tick_at: None,
                    inbox: Vec::new(),
                    running: BTreeMap::new(),
                    busy_until: HashMap::new(),
                    fail_start: BTreeSet::new(),
                    witnesses: vec![true; nw],
                })
                .collect(),
            links: HashMap::new(),
            events: Vec::new(),
            gaps: Vec::new(),
            open_gap: vec![None; site.resources.len()],
            ordering_violations: 0,
            epoch_collisions: 0,
            status_log: Vec::new(),
            site,
            topo,
        };
        for r in sim.site.resource_indices() {
            sim.open_gap[r.0 as usize] = Some(sim.gaps.len());
            sim.gaps.push(Gap {
                resource: r,
                from: Duration::ZERO,
                to: None,
                owners: 0,
            });
        }
        for s in (0..n).map(|i| ServerIdx(i as u16)) {
            let spread = sim.opts.boot_spread.as_micros() as u64;
            let at = Duration::from_micros(if spread == 0 {
                0
            } else {
                sim.rng.u64(0..spread)
            });
            sim.schedule(at, Ev::Boot(s));
        }
        sim
    }

    pub fn site(&self) -> &Arc<Site> {
        &self.site
    }

    pub fn topology(&self) -> &Arc<Topology> {
        &self.topo
    }

    pub fn now(&self) -> Duration {
        self.now
    }

    pub fn key(&self) -> &Key {
        &self.key
    }

    pub fn idx(&self, id: &str) -> ServerIdx {
        self.site
            .server_idx(id)
            .unwrap_or_else(|| panic!("no server {id}"))
    }

    pub fn ridx(&self, id: &str) -> ResourceIdx {
        self.site
            .resource_idx(id)
            .unwrap_or_else(|| panic!("no resource {id}"))
    }

    pub fn node(&self, s: ServerIdx) -> Option<&Node> {
        self.nodes[s.0 as usize].node.as_ref()
    }

    pub fn status(&self, s: ServerIdx) -> NodeStatus {
        self.nodes[s.0 as usize].status
    }

    /// Runs `f` on a copy of `s`'s node as it is now (benchmarks, what-if tests).
    pub fn clone_node(&self, s: ServerIdx) -> Option<Node> {
        self.node(s).cloned()
    }

    /// Every event every node emitted: (time, node, event).
    pub fn events(&self) -> &[(Duration, ServerIdx, Event)] {
        &self.events
    }

    /// Ground truth: who runs `r` now, with the epoch each started it at.
    pub fn owners(&self, r: ResourceIdx) -> Vec<(ServerIdx, Epoch)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.running.get(&r).map(|&e| (ServerIdx(i as u16), e)))
            .collect()
    }

    /// Resources `s` actually runs.
    pub fn running_on(&self, s: ServerIdx) -> Vec<ResourceIdx> {
        self.nodes[s.0 as usize].running.keys().copied().collect()
    }

    /// Since when `s` has been running without a break at `t`, if it was running at `t`.
    pub fn running_since(&self, s: ServerIdx, t: Duration) -> Option<Duration> {
        let mut since = None;
        for &(at, n, status) in &self.status_log {
            if at > t {
                break;
            }
            if n == s {
                since = (status == NodeStatus::Running).then_some(at);
            }
        }
        since
    }

    /// Intervals with no owner (`owners == 0`) or several (`owners > 1`).
    pub fn gaps(&self) -> &[Gap] {
        &self.gaps
    }

    // ---- the network --------------------------------------------------------------------

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

    // ---- nodes ----------------------------------------------------------------------------

    /// The server dies: its process and its resources stop; its store survives.
    pub fn crash(&mut self, s: ServerIdx) {
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
        let stopped: Vec<ResourceIdx> = n.running.keys().copied().collect();
        n.running.clear();
        for r in stopped {
            self.update_gap(r);
        }
    }

    /// The server comes back: a new incarnation, resuming from its store.
    pub fn restart(&mut self, s: ServerIdx) {
        self.crash(s);
        self.boot(s);
    }

    /// A restart with an empty data dir.
    pub fn restart_empty(&mut self, s: ServerIdx) {
        self.crash(s);
        self.nodes[s.0 as usize].store.clear();
        self.boot(s);
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
        for input in inbox {
            self.input(s, input);
        }
        self.input(s, Input::Tick);
    }

    /// Clean shutdown: the node says it is leaving; crash it once it has handed everything
    /// over, or after `grace`.
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
        self.input(at, Input::Command { action, server });
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

    /// `r`'s monitor on `s` reports it failed (it stops running).
    pub fn fail_monitor(&mut self, s: ServerIdx, r: ResourceIdx) {
        if self.nodes[s.0 as usize].running.remove(&r).is_some() {
            self.update_gap(r);
        }
        self.input(
            s,
            Input::MonitorFailed {
                resource: r,
                reason: "monitor reported not running".into(),
            },
        );
    }

    /// Hands a raw datagram to node `to` on `path`, as if it arrived from the network.
    pub fn inject(&mut self, to: ServerIdx, path: usize, bytes: Vec<u8>) {
        self.schedule(self.now, Ev::Deliver { to, path, bytes });
    }

    // ---- running ----------------------------------------------------------------------------

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    pub fn run_until(&mut self, until: Duration) {
        while self.step_once(until) {}
        self.now = self.now.max(until);
    }

    /// Runs until `cond` holds (checked after every event) or `limit` passes; returns
    /// whether it held.
    pub fn run_until_cond(&mut self, limit: Duration, mut cond: impl FnMut(&Sim) -> bool) -> bool {
        let until = self.now + limit;
        loop {
            if cond(self) {
                return true;
            }
            if !self.step_once(until) {
                self.now = self.now.max(until);
                return cond(self);
            }
        }
    }

    /// Processes the next event at or before `until`; false if there is none.
    fn step_once(&mut self, until: Duration) -> bool {
        let Some(&Reverse((at, id))) = self.queue.peek() else {
            return false;
        };
        if at > until {
            return false;
        }
        self.queue.pop();
        self.now = self.now.max(at);
        let ev = self.pending.remove(&id).expect("pending event");
        match ev {
            Ev::Boot(s) => self.boot(s),
            Ev::Deliver { to, path, bytes } => {
                let n = &mut self.nodes[to.0 as usize];
                match n.status {
                    NodeStatus::Running => self.input(to, Input::Datagram { path, bytes }),
                    NodeStatus::Paused if n.inbox.len() < 4096 => {
                        n.inbox.push(Input::Datagram { path, bytes })
                    }
                    _ => {}
                }
            }
            Ev::Tick(s) => {
                let n = &mut self.nodes[s.0 as usize];
                if n.status == NodeStatus::Running && n.tick_at == Some(self.now) {
                    n.tick_at = None;
                    self.input(s, Input::Tick);
                }
            }
            Ev::Agent {
                node,
                generation,
                resource,
                epoch,
                op,
            } => {
                let n = &mut self.nodes[node.0 as usize];
                if n.generation != generation {
                    return true;
                }
                let result = match op {
                    AgentOp::Start if n.fail_start.contains(&resource) => {
                        Err("simulated start failure".to_string())
                    }
                    AgentOp::Start => {
                        n.running.insert(resource, epoch);
                        let twins = self
                            .nodes
                            .iter()
                            .filter(|o| o.running.get(&resource) == Some(&epoch))
                            .count();
                        if twins > 1 {
                            self.epoch_collisions += 1;
                        }
                        Ok(())
                    }
                    AgentOp::Stop => {
                        n.running.remove(&resource);
                        Ok(())
                    }
                };
                self.update_gap(resource);
                if self.nodes[node.0 as usize].status == NodeStatus::Crashed {
                    return true;
                }
                let done = Input::AgentDone {
                    resource,
                    epoch,
                    op,
                    result,
                };
                let n = &mut self.nodes[node.0 as usize];
                if n.status == NodeStatus::Paused {
                    // The resource changed already; the paused daemon hears of it on resume.
                    n.inbox.push(done);
                    return true;
                }
                self.input(node, done);
            }
        }
        true
    }
    fn schedule(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.pending.insert(self.seq, ev);
        self.queue.push(Reverse((at, self.seq)));
    }

    fn boot(&mut self, s: ServerIdx) {
        let n = &mut self.nodes[s.0 as usize];
        n.incarnation += 1;
        n.generation += 1;
        n.status = NodeStatus::Running;
        self.status_log.push((self.now, s, NodeStatus::Running));
        let persisted: Vec<ClaimRecord> = n.store.values().copied().collect();
        n.node = Some(Node::new(
            self.site.clone(),
            self.topo.clone(),
            s,
            self.key.clone(),
            n.incarnation,
            &persisted,
            self.now,
        ));
        self.input(s, Input::Tick);
        self.feed_witnesses(s);
    }

    fn feed_witnesses(&mut self, s: ServerIdx) {
        let ws = self.nodes[s.0 as usize].witnesses.clone();
        for (index, reachable) in ws.into_iter().enumerate() {
            self.input(s, Input::Witness { index, reachable });
        }
    }

    /// Feeds one input to a running node and carries out its outputs.
    pub fn input(&mut self, s: ServerIdx, input: Input) {
        let now = self.now;
        let n = &mut self.nodes[s.0 as usize];
        if n.status != NodeStatus::Running {
            return;
        }
        let Some(node) = n.node.as_mut() else {
            return;
        };
        let outputs = node.handle(input, now);
        let deadline = node.next_deadline().max(now + Duration::from_micros(100));
        for o in outputs {
            self.carry_out(s, o);
        }
        let n = &mut self.nodes[s.0 as usize];
        if n.tick_at.is_none_or(|t| deadline < t || t <= now) {
            n.tick_at = Some(deadline);
            self.schedule(deadline, Ev::Tick(s));
        }
    }

    fn carry_out(&mut self, s: ServerIdx, o: Output) {
        match o {
            Output::Send { path, to, bytes } => self.send(s, to, path, bytes),
            Output::Persist(records) => {
                let n = &mut self.nodes[s.0 as usize];
                for rec in records {
                    n.store.insert(rec.resource, rec);
                }
            }
            Output::Start { resource, epoch } => {
                let n = &self.nodes[s.0 as usize];
                if n.store
                    .get(&resource)
                    .is_none_or(|rec| !rec.held || rec.epoch != epoch)
                {
                    self.ordering_violations += 1;
                }
                self.agent(s, resource, epoch, AgentOp::Start);
            }
            Output::Stop { resource, epoch } => self.agent(s, resource, epoch, AgentOp::Stop),
            Output::Event(e) => self.events.push((self.now, s, e)),
        }
    }

    fn agent(&mut self, s: ServerIdx, resource: ResourceIdx, epoch: Epoch, op: AgentOp) {
        let took = match op {
            AgentOp::Start => self.opts.activation,
            AgentOp::Stop => self.opts.deactivation,
        };
        let n = &mut self.nodes[s.0 as usize];
        let begin = n
            .busy_until
            .get(&resource)
            .copied()
            .unwrap_or(self.now)
            .max(self.now);
        let done = begin + took;
        n.busy_until.insert(resource, done);
        let generation = n.generation;
        self.schedule(
            done,
            Ev::Agent {
                node: s,
                generation,
                resource,
                epoch,
                op,
            },
        );
    }

    fn send(&mut self, from: ServerIdx, to: ServerIdx, path: usize, bytes: Vec<u8>) {
        let link = self
            .links
            .get(&(from, to, path))
            .cloned()
            .unwrap_or_default();
        if link.cut || (link.loss > 0.0 && self.rng.f64() < link.loss) {
            return;
        }
        let copies = if link.duplicate > 0.0 && self.rng.f64() < link.duplicate {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let jitter = link.jitter.as_micros() as u64;
            let extra = if jitter == 0 {
                0
            } else {
                self.rng.u64(0..jitter)
            };
            let at = self.now + link.delay + Duration::from_micros(extra);
            self.schedule(
                at,
                Ev::Deliver {
                    to,
                    path,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    fn update_gap(&mut self, r: ResourceIdx) {
        let owners = self.owners(r).len();
        let ri = r.0 as usize;
        let class = owners.min(2);
        if let Some(g) = self.open_gap[ri] {
            if self.gaps[g].owners.min(2) == class {
                self.gaps[g].owners = self.gaps[g].owners.max(owners);
                return;
            }
            self.gaps[g].to = Some(self.now);
            self.open_gap[ri] = None;
        }
        if owners != 1 {
            self.open_gap[ri] = Some(self.gaps.len());
            self.gaps.push(Gap {
                resource: r,
                from: self.now,
                to: None,
                owners,
            });
        }
    }
}

//! The simulator: many [`Node`]s in virtual time over a simulated network.
//!
//! Links are per direction and per path, each with loss, delay, jitter, duplication and a cut
//! switch, so one-way and two-way partitions, a lost path and a lossy path are all settings.
//! Nodes meet every fault a site meets ([`faults`]): a crash of the machine (resources stop,
//! the store survives) or of the daemon only (its resources keep running), a restart with or
//! without its store (and with a clock set back), a stall (nothing processed; datagrams
//! queue), a clean shutdown, agents whose starts, stops or monitors fail, operator commands,
//! and site files that differ between nodes. Agents are simulated: a start takes
//! `activation`, a stop `deactivation`. Everything random comes from one seed, so a failing
//! schedule replays exactly.
//!
//! The simulator also keeps the ground truth the protocol is judged by ([`truth`]): which node
//! actually runs which resource at every instant, the intervals where a resource had no owner
//! or more than one, and every epoch each node was told.

mod faults;
mod site;
mod truth;
mod world;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

pub use faults::Link;
pub use site::SiteBuilder;
pub use truth::{Gap, Told};

use crate::config::{ResourceIdx, ServerIdx, Site};
use crate::failover::{AgentOp, Epoch, Event, Input, Key, Node, Restored, Topology};

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
    /// Changes at every crash: agent reports of an earlier daemon are dropped.
    generation: u64,
    /// The boot counter the store keeps (and the clock floor); see [`Sim::restart_empty`].
    incarnation: u64,
    store: Restored,
    /// The site file this node runs (differs from the site's during a rollout).
    site: Arc<Site>,
    topo: Arc<Topology>,
    tick_at: Option<Duration>,
    /// Inputs that reached a paused daemon, handled when it resumes.
    inbox: Vec<Input>,
    /// Ground truth: resources this server actually runs, with the epoch started at.
    running: BTreeMap<ResourceIdx, Epoch>,
    busy_until: HashMap<ResourceIdx, Duration>,
    fail_start: BTreeSet<ResourceIdx>,
    fail_stop: BTreeSet<ResourceIdx>,
    /// Resources its agents keep in hot standby.
    standby: BTreeSet<ResourceIdx>,
    /// The instant the last start of each resource had to cover from.
    cover_from: HashMap<ResourceIdx, Option<Duration>>,
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
    truth: truth::Truth,
    /// Starts whose claim was not durable first, which would break rule 4 (must stay 0).
    pub ordering_violations: usize,
    /// Times two nodes ran one resource at the same epoch (must stay 0 while every node runs
    /// the same site file).
    pub epoch_collisions: usize,
    /// Each of them: (time, resource, epoch).
    pub collisions: Vec<(Duration, ResourceIdx, Epoch)>,
    /// The largest datagram any node sent, and how many datagrams were sent.
    pub max_datagram: usize,
    pub datagrams: u64,
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
                    store: Restored::default(),
                    site: site.clone(),
                    topo: topo.clone(),
                    tick_at: None,
                    inbox: Vec::new(),
                    running: BTreeMap::new(),
                    busy_until: HashMap::new(),
                    fail_start: BTreeSet::new(),
                    fail_stop: BTreeSet::new(),
                    standby: BTreeSet::new(),
                    cover_from: HashMap::new(),
                    witnesses: vec![true; nw],
                })
                .collect(),
            links: HashMap::new(),
            events: Vec::new(),
            truth: truth::Truth::new(&site),
            ordering_violations: 0,
            epoch_collisions: 0,
            collisions: Vec::new(),
            max_datagram: 0,
            datagrams: 0,
            status_log: Vec::new(),
            site,
            topo,
        };
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

    /// Resources `s`'s agents keep in hot standby.
    pub fn standby_on(&self, s: ServerIdx) -> Vec<ResourceIdx> {
        self.nodes[s.0 as usize].standby.iter().copied().collect()
    }

    /// The instant `s`'s last start of `r` had to cover from (`None`: not a takeover).
    pub fn cover_from(&self, s: ServerIdx, r: ResourceIdx) -> Option<Duration> {
        self.nodes[s.0 as usize]
            .cover_from
            .get(&r)
            .copied()
            .flatten()
    }

    /// What `s`'s store holds.
    pub fn store(&self, s: ServerIdx) -> &Restored {
        &self.nodes[s.0 as usize].store
    }

    /// Every event every node emitted: (time, node, event).
    pub fn events(&self) -> &[(Duration, ServerIdx, Event)] {
        &self.events
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
                    NodeStatus::Running => {
                        let at = self.now;
                        self.input(to, Input::Datagram { path, bytes, at })
                    }
                    NodeStatus::Paused if n.inbox.len() < 4096 => n.inbox.push(Input::Datagram {
                        path,
                        bytes,
                        at: self.now,
                    }),
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
            } => self.agent_done(node, generation, resource, epoch, op),
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
        n.node = Some(Node::new(
            n.site.clone(),
            n.topo.clone(),
            s,
            self.key.clone(),
            n.incarnation,
            &n.store,
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
        self.inputs(s, vec![input]);
    }

    /// Feeds inputs that are ready at once (a stalled daemon's queue) to a running node, and
    /// carries out its outputs.
    pub fn inputs(&mut self, s: ServerIdx, inputs: Vec<Input>) {
        let now = self.now;
        let n = &mut self.nodes[s.0 as usize];
        if n.status != NodeStatus::Running {
            return;
        }
        let Some(node) = n.node.as_mut() else {
            return;
        };
        let outputs = node.handle_all(inputs, now);
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
}

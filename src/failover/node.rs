//! One node's state machine. No clock, no sockets: [`Node::handle`] takes an [`Input`] and the
//! current monotonic time and returns [`Output`]s for the runtime to carry out, in order.
//!
//! The runtime's contract:
//! - carry out outputs in the order given; an [`Output::Persist`] must be durable before the
//!   next output is carried out (a claim is on disk before its agent starts);
//! - start and stop of one resource are carried out one after another, never concurrently;
//! - call `handle(Input::Tick, now)` no later than [`Node::next_deadline`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::event::{DownReason, Event, FailedResource};
use super::placement;
use super::topology::Topology;
use super::wire::{self, Action, ClaimKind, ClaimState, Directive, Heartbeat, Key, PeerState};
use crate::config::{Failback, ResourceIdx, Role, ServerIdx, Site};

/// Fencing token: every change of owner of a resource gets a higher one.
pub type Epoch = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentOp {
    Start,
    Stop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Timers: call at least by [`Node::next_deadline`].
    Tick,
    /// A datagram that arrived on our heartbeat path `path`.
    Datagram { path: usize, bytes: Vec<u8> },
    /// An agent finished a start or stop it was asked for.
    AgentDone {
        resource: ResourceIdx,
        epoch: Epoch,
        op: AgentOp,
        result: Result<(), String>,
    },
    /// A running resource failed its monitor (after the agent's own retries).
    MonitorFailed {
        resource: ResourceIdx,
        reason: String,
    },
    /// Whether witness `index` (position in `site.witnesses`) answers.
    Witness { index: usize, reachable: bool },
    /// An operator's manual failover or failback of `server`, sent to this node.
    Command { action: Action, server: ServerIdx },
    /// Clean shutdown: tell the buddies we are leaving so they take over at once.
    Shutdown,
}

/// A claim as the store keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimRecord {
    pub resource: ResourceIdx,
    pub epoch: Epoch,
    /// `true` while this node holds the resource; `false` once released.
    pub held: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a heartbeat on our path `path` to `to`'s address on the same path.
    Send {
        path: usize,
        to: ServerIdx,
        bytes: Vec<u8>,
    },
    /// Make these claims durable before carrying out any later output.
    Persist(Vec<ClaimRecord>),
    Start {
        resource: ResourceIdx,
        epoch: Epoch,
    },
    Stop {
        resource: ResourceIdx,
        epoch: Epoch,
    },
    Event(Event),
}

/// A server's state as this node sees it (`GET /site`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    Up,
    /// Reachable, but some path is down or heartbeats are late.
    Suspect,
    Down,
    Leaving,
    Unhealthy,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Up => "up",
            ServerState::Suspect => "suspect",
            ServerState::Down => "down",
            ServerState::Leaving => "leaving",
            ServerState::Unhealthy => "unhealthy",
        }
    }
}

/// A resource's state as this node knows it (`GET /resources`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceState {
    Active,
    Starting,
    Stopping,
    Failed,
    Unassigned,
}

impl ResourceState {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceState::Active => "active",
            ResourceState::Starting => "starting",
            ResourceState::Stopping => "stopping",
            ResourceState::Failed => "failed",
            ResourceState::Unassigned => "unassigned",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathView {
    pub up: bool,
    pub last_heard: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerView {
    pub server: ServerIdx,
    pub state: ServerState,
    /// Empty for this node itself and for servers it does not heartbeat with.
    pub paths: Vec<PathView>,
    /// Whether this node heartbeats with the server (or is it).
    pub known: bool,
    /// The server runs a different site file.
    pub config_mismatch: bool,
    /// The server says it has just started and is waiting to hear its buddies (for this
    /// node: it is still in its start-up wait).
    pub booting: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceView {
    pub resource: ResourceIdx,
    pub owner: Option<ServerIdx>,
    pub epoch: Epoch,
    pub state: ResourceState,
}

/// Counters for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub heartbeats_sent: u64,
    pub heartbeats_received: u64,
    /// Rejected datagrams by reason (`hmac`, `replay`, `malformed`, ...).
    pub rejected: BTreeMap<&'static str, u64>,
    pub takeovers: u64,
    pub failbacks: u64,
    pub resources_failed: u64,
    pub conflicts: u64,
    pub config_mismatches: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Booting {
        until: Duration,
    },
    Running,
    /// Shutting down: no new claims; hand everything over.
    Leaving,
}

#[derive(Debug, Clone, Copy)]
struct Claim {
    epoch: Epoch,
    state: ClaimState,
    kind: ClaimKind,
}

#[derive(Debug, Clone)]
struct PeerClaim {
    resource: ResourceIdx,
    epoch: Epoch,
    state: ClaimState,
    kind: ClaimKind,
}

#[derive(Debug, Clone, Default)]
struct PathInfo {
    up: bool,
    /// A `path.down` was emitted and no `path.up` since.
    announced_down: bool,
    good: u8,
    last_heard: Option<Duration>,
    last_seq: u64,
}

#[derive(Debug, Clone)]
struct Peer {
    paths: Vec<PathInfo>,
    incarnation: u64,
    applied_seq: u64,
    reported: PeerState,
    state: ServerState,
    last_heard: Option<Duration>,
    down_since: Duration,
    claims: Vec<PeerClaim>,
    digest: [u8; 8],
    mismatch_reported: Option<[u8; 8]>,
    /// A `server.down` was emitted and no `server.up` since.
    announced_down: bool,
    /// Nothing heard on any path for `failure_timeout` (the takeover rule), as of the last
    /// refresh: its change must re-run placement even when no path or server state changes.
    silent: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchKind {
    Boot,
    Failover,
    Failback,
}

#[derive(Debug, Clone)]
struct Batch {
    kind: BatchKind,
    home: ServerIdx,
    epoch: Epoch,
    pending: BTreeSet<ResourceIdx>,
    ok: Vec<ResourceIdx>,
    failed: Vec<FailedResource>,
    since: Duration,
    started: Duration,
}

/// Heartbeat rounds a directive is relayed for.
const DIRECTIVE_ROUNDS: u32 = 10;

/// One server's failover state machine.
#[derive(Debug, Clone)]
pub struct Node {
    site: Arc<Site>,
    topo: Arc<Topology>,
    ids: Arc<HashMap<String, ResourceIdx>>,
    me: ServerIdx,
    key: Key,
    digest: [u8; 8],
    incarnation: u64,
    seq: u64,
    phase: Phase,
    manual_hold: bool,
    failback_now: bool,
    stable_since: Duration,
    peers: BTreeMap<ServerIdx, Peer>,
    claims: BTreeMap<ResourceIdx, Claim>,
    /// Claims held before a restart, resumed once the start-up wait is over.
    resume: BTreeMap<ResourceIdx, Epoch>,
    /// Resources this node could not run, with the epoch it tried.
    failed_here: BTreeMap<ResourceIdx, Epoch>,
    /// Highest epoch seen per resource.
    known: Vec<Epoch>,
    witnesses: Vec<bool>,
    /// Set when a witness majority is regained: until then, silence does not count (it was
    /// heard while this node was cut off; see `silence_counts`).
    majority_settles_at: Option<Duration>,
    forced: BTreeSet<ServerIdx>,
    directives: Vec<(Directive, Duration)>,
    seen_directives: HashMap<(String, u64), Duration>,
    serial: u64,
    next_heartbeat: Duration,
    send_now: bool,
    placement_dirty: bool,
    batches: Vec<Batch>,
    conflicts: BTreeSet<ResourceIdx>,
    stats: Stats,
}

impl Node {
    /// A node for server `me`, booting at `now`. `incarnation` must be greater than the one of
    /// any earlier run of this server (the runtime keeps a boot counter in its store).
    /// `persisted` are the claims the store holds from earlier runs.
    pub fn new(
        site: Arc<Site>,
        topo: Arc<Topology>,
        me: ServerIdx,
        key: Key,
        incarnation: u64,
        persisted: &[ClaimRecord],
        now: Duration,
    ) -> Self {
        let mut known = vec![0; site.resources.len()];
        let mut resume = BTreeMap::new();
        for rec in persisted {
            if let Some(k) = known.get_mut(rec.resource.0 as usize) {
                *k = (*k).max(rec.epoch);
                if rec.held {
                    resume.insert(rec.resource, rec.epoch);
                }
            }
        }
        let peers = topo
            .peers(me)
            .iter()
            .map(|&p| {
                let paths = vec![PathInfo::default(); topo.shared_paths(me, p)];
                let peer = Peer {
                    paths,
                    incarnation: 0,
                    applied_seq: 0,
                    reported: PeerState::Booting,
                    state: ServerState::Down,
                    last_heard: None,
                    down_since: now,
                    claims: Vec::new(),
                    digest: [0; 8],
                    mismatch_reported: None,
                    announced_down: false,
                    silent: true,
                };
                (p, peer)
            })
            .collect();
        let until = now + 2 * site.failure_timeout;
        Self {
            ids: Arc::new(site.resource_map()),
            digest: site.digest(),
            witnesses: vec![false; site.witnesses.len()],
            majority_settles_at: None,
            site,
            topo,
            me,
            key,
            incarnation,
            seq: 0,
            phase: Phase::Booting { until },
            manual_hold: false,
            failback_now: false,
            stable_since: now,
            peers,
            claims: BTreeMap::new(),
            resume,
            failed_here: BTreeMap::new(),
            known,
            forced: BTreeSet::new(),
            directives: Vec::new(),
            seen_directives: HashMap::new(),
            serial: 0,
            next_heartbeat: now,
            send_now: true,
            placement_dirty: true,
            batches: Vec::new(),
            conflicts: BTreeSet::new(),
            stats: Stats::default(),
        }
    }

    pub fn me(&self) -> ServerIdx {
        self.me
    }

    pub fn site(&self) -> &Arc<Site> {
        &self.site
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn is_booting(&self) -> bool {
        matches!(self.phase, Phase::Booting { .. })
    }

    /// After [`Input::Shutdown`]: `true` once every resource has been handed over (or there
    /// was nothing to hand over). Resources nobody took over keep running.
    pub fn drained(&self) -> bool {
        self.phase == Phase::Leaving && self.claims.is_empty()
    }

    /// Resources this node holds now, with epoch and state.
    pub fn held(&self) -> impl Iterator<Item = (ResourceIdx, Epoch, ClaimState)> + '_ {
        self.claims.iter().map(|(&r, c)| (r, c.epoch, c.state))
    }

    /// When the runtime must call `handle(Input::Tick, ..)` next at the latest.
    pub fn next_deadline(&self) -> Duration {
        let ft = self.site.failure_timeout;
        let mut next = self.next_heartbeat;
        if let Phase::Booting { until } = self.phase {
            next = next.min(until);
        }
        for peer in self.peers.values() {
            for path in &peer.paths {
                if let (true, Some(t)) = (path.up, path.last_heard) {
                    next = next.min(t + ft);
                }
            }
            if let (false, Some(t)) = (peer.silent, peer.last_heard) {
                next = next.min(t + ft);
            }
        }
        if self.failback_pending() {
            next = next.min(self.stable_since + self.site.failback_delay);
        }
        if let Some(t) = self.majority_settles_at {
            next = next.min(t);
        }
        next
    }

    /// Feeds one input; returns what the runtime must do, in order.
    pub fn handle(&mut self, input: Input, now: Duration) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Tick => {}
            Input::Datagram { path, bytes } => self.on_datagram(path, &bytes, now, &mut out),
            Input::AgentDone {
                resource,
                epoch,
                op,
                result,
            } => self.on_agent_done(resource, epoch, op, result, now, &mut out),
            Input::MonitorFailed { resource, reason } => {
                if self
                    .claims
                    .get(&resource)
                    .is_some_and(|c| c.state == ClaimState::Active)
                {
                    self.fail_claim(resource, reason, now, &mut out);
                }
            }
            Input::Witness { index, reachable } => {
                let had = self.witness_majority();
                if let Some(w) = self.witnesses.get_mut(index)
                    && *w != reachable
                {
                    *w = reachable;
                    self.placement_dirty = true;
                }
                match (had, self.witness_majority()) {
                    (false, true) => {
                        self.majority_settles_at = Some(now + self.site.failure_timeout)
                    }
                    (true, false) => self.majority_settles_at = None,
                    _ => {}
                }
            }
            Input::Command { action, server } => {
                self.serial += 1;
                let d = Directive {
                    origin: self.site.server(self.me).id.clone(),
                    serial: self.serial,
                    action,
                    server: self.site.server(server).id.clone(),
                };
                self.accept_directive(d, now);
            }
            Input::Shutdown => {
                if self.phase != Phase::Leaving {
                    self.phase = Phase::Leaving;
                    self.send_now = true;
                    self.placement_dirty = true;
                }
            }
        }
        self.step(now, &mut out);
        out
    }

    // ---- views -------------------------------------------------------------------------

    pub fn server_view(&self, s: ServerIdx, now: Duration) -> ServerView {
        if s == self.me {
            let state = match self.my_state() {
                PeerState::Leaving => ServerState::Leaving,
                PeerState::Unhealthy => ServerState::Unhealthy,
                PeerState::Up | PeerState::Booting => ServerState::Up,
            };
            return ServerView {
                server: s,
                state,
                paths: Vec::new(),
                known: true,
                config_mismatch: false,
                booting: self.is_booting(),
            };
        }
        match self.peers.get(&s) {
            Some(p) => ServerView {
                server: s,
                state: self.peer_state(p, now),
                paths: p
                    .paths
                    .iter()
                    .map(|x| PathView {
                        up: x.up,
                        last_heard: x.last_heard,
                    })
                    .collect(),
                known: true,
                config_mismatch: p.digest != self.digest && p.last_heard.is_some(),
                booting: p.reported == PeerState::Booting && p.paths.iter().any(|x| x.up),
            },
            None => ServerView {
                server: s,
                state: ServerState::Down,
                paths: Vec::new(),
                known: false,
                config_mismatch: false,
                booting: false,
            },
        }
    }

    /// Who serves `r` now as this node knows it: the active claim that wins (highest epoch,
    /// ties to the earlier buddy), else the best starting one.
    pub fn resource_view(&self, r: ResourceIdx, now: Duration) -> ResourceView {
        let mut best: Option<(u8, Epoch, usize, ServerIdx, ClaimState)> = None;
        let mut consider = |s: ServerIdx, epoch: Epoch, state: ClaimState| {
            let class = match state {
                ClaimState::Active => 3,
                ClaimState::Starting => 2,
                ClaimState::Stopping => 1,
                ClaimState::Failed => 0,
            };
            let rank = self.topo.rank(&self.site, r, s);
            let better = match best {
                None => true,
                Some((c, e, k, _, _)) => {
                    (class, epoch, std::cmp::Reverse(rank)) > (c, e, std::cmp::Reverse(k))
                }
            };
            if better {
                best = Some((class, epoch, rank, s, state));
            }
        };
        if let Some(c) = self.claims.get(&r) {
            consider(self.me, c.epoch, c.state);
        }
        if let Some(&e) = self.failed_here.get(&r) {
            consider(self.me, e, ClaimState::Failed);
        }
        for (&s, p) in &self.peers {
            if !self.recently_heard(p, now) {
                continue;
            }
            for c in p.claims.iter().filter(|c| c.resource == r) {
                consider(s, c.epoch, c.state);
            }
        }
        match best {
            Some((_, epoch, _, s, state)) => ResourceView {
                resource: r,
                owner: (state != ClaimState::Failed).then_some(s),
                epoch,
                state: match state {
                    ClaimState::Active => ResourceState::Active,
                    ClaimState::Starting => ResourceState::Starting,
                    ClaimState::Stopping => ResourceState::Stopping,
                    ClaimState::Failed => ResourceState::Failed,
                },
            },
            None => ResourceView {
                resource: r,
                owner: None,
                epoch: self.known[r.0 as usize],
                state: ResourceState::Unassigned,
            },
        }
    }

    // ---- input handling ----------------------------------------------------------------

    fn reject(&mut self, reason: &'static str) {
        *self.stats.rejected.entry(reason).or_default() += 1;
    }

    fn on_datagram(&mut self, path: usize, bytes: &[u8], now: Duration, out: &mut Vec<Output>) {
        let hb = match wire::decode(&self.key, bytes) {
            Ok(hb) => hb,
            Err(e) => return self.reject(e.reason()),
        };
        let Some(from) = self.site.server_idx(&hb.from) else {
            return self.reject("unknown_sender");
        };
        if from == self.me {
            return self.reject("own_datagram");
        }
        if hb.path as usize != path {
            return self.reject("wrong_path");
        }
        let ft = self.site.failure_timeout;
        let Some(peer) = self.peers.get_mut(&from) else {
            return self.reject("not_a_peer");
        };
        let Some(p) = peer.paths.get(path) else {
            return self.reject("wrong_path");
        };
        if hb.incarnation < peer.incarnation
            || (hb.incarnation == peer.incarnation && hb.seq <= p.last_seq)
        {
            return self.reject("replay");
        }
        self.stats.heartbeats_received += 1;
        let fresh_boot = hb.incarnation > peer.incarnation;
        if fresh_boot {
            peer.incarnation = hb.incarnation;
            peer.applied_seq = 0;
            for p in &mut peer.paths {
                p.last_seq = 0;
            }
        }
        let p = &mut peer.paths[path];
        p.last_seq = hb.seq;
        if p.last_heard.is_some_and(|t| now >= t + ft) {
            p.good = 0;
        }
        p.last_heard = Some(now);
        if !p.up {
            p.good = p.good.saturating_add(1);
        }
        peer.last_heard = Some(now);
        if hb.seq <= peer.applied_seq {
            // An older datagram that took a slower path: liveness only.
            return;
        }
        peer.applied_seq = hb.seq;
        if peer.reported != hb.state {
            peer.reported = hb.state;
            self.placement_dirty = true;
        }
        let mut claims = Vec::with_capacity(hb.claims.len());
        for c in &hb.claims {
            if let Some(&r) = self.ids.get(&c.resource) {
                let k = &mut self.known[r.0 as usize];
                *k = (*k).max(c.epoch);
                claims.push(PeerClaim {
                    resource: r,
                    epoch: c.epoch,
                    state: c.state,
                    kind: c.kind,
                });
            }
        }
        let peer = self.peers.get_mut(&from).expect("peer exists");
        if !same_claims(&peer.claims, &claims) {
            peer.claims = claims;
            self.placement_dirty = true;
        }
        peer.digest = hb.digest;
        if hb.digest != self.digest {
            if peer.mismatch_reported != Some(hb.digest) {
                peer.mismatch_reported = Some(hb.digest);
                self.stats.config_mismatches += 1;
                out.push(Output::Event(Event::ConfigMismatch {
                    server: from,
                    local: self.digest,
                    remote: hb.digest,
                }));
            }
        } else {
            peer.mismatch_reported = None;
        }
        for d in hb.directives {
            self.accept_directive(d, now);
        }
    }

    fn accept_directive(&mut self, d: Directive, now: Duration) {
        let key = (d.origin.clone(), d.serial);
        if self.seen_directives.contains_key(&key) {
            return;
        }
        let Some(server) = self.site.server_idx(&d.server) else {
            return;
        };
        let ttl = self.site.heartbeat_interval * DIRECTIVE_ROUNDS;
        self.seen_directives.insert(key, now + 4 * ttl);
        match d.action {
            Action::Failover => {
                self.forced.insert(server);
                if server == self.me {
                    self.manual_hold = true;
                }
            }
            Action::Failback => {
                self.forced.remove(&server);
                if server == self.me {
                    self.manual_hold = false;
                    self.failback_now = true;
                }
            }
        }
        self.directives.push((d, now + ttl));
        self.placement_dirty = true;
        self.send_now = true;
    }

    fn on_agent_done(
        &mut self,
        r: ResourceIdx,
        epoch: Epoch,
        op: AgentOp,
        result: Result<(), String>,
        now: Duration,
        out: &mut Vec<Output>,
    ) {
        let Some(claim) = self.claims.get(&r).copied() else {
            return;
        };
        if claim.epoch != epoch {
            return;
        }
        match (op, claim.state) {
            (AgentOp::Start, ClaimState::Starting) => match result {
                Ok(()) => {
                    self.claims.get_mut(&r).expect("claim").state = ClaimState::Active;
                    self.send_now = true;
                    self.batch_progress(r, None, now, out);
                }
                Err(reason) => self.fail_claim(r, reason, now, out),
            },
            (AgentOp::Stop, ClaimState::Stopping) => {
                self.claims.remove(&r);
                out.push(Output::Persist(vec![ClaimRecord {
                    resource: r,
                    epoch,
                    held: false,
                }]));
                self.send_now = true;
                self.placement_dirty = true;
                if self.conflicts.remove(&r)
                    && let Some((owner, e)) = self.best_holder(r, now)
                {
                    out.push(Output::Event(Event::OwnershipResolved {
                        resource: r,
                        owner,
                        epoch: e,
                    }));
                }
            }
            _ => {}
        }
    }

    /// A start failed or a monitor failed: drop the claim, tell everyone it failed here.
    fn fail_claim(&mut self, r: ResourceIdx, reason: String, now: Duration, out: &mut Vec<Output>) {
        let Some(claim) = self.claims.remove(&r) else {
            return;
        };
        self.failed_here.insert(r, claim.epoch);
        self.stats.resources_failed += 1;
        out.push(Output::Persist(vec![ClaimRecord {
            resource: r,
            epoch: claim.epoch,
            held: false,
        }]));
        out.push(Output::Stop {
            resource: r,
            epoch: claim.epoch,
        });
        out.push(Output::Event(Event::ResourceFailed {
            resource: r,
            server: self.me,
            epoch: claim.epoch,
            reason: reason.clone(),
        }));
        if self.site.resource(r).server == self.me {
            self.stable_since = now;
        }
        self.send_now = true;
        self.placement_dirty = true;
        self.batch_progress(r, Some(reason), now, out);
    }

    fn batch_progress(
        &mut self,
        r: ResourceIdx,
        failure: Option<String>,
        now: Duration,
        out: &mut Vec<Output>,
    ) {
        let Some(i) = self.batches.iter().position(|b| b.pending.contains(&r)) else {
            return;
        };
        let b = &mut self.batches[i];
        b.pending.remove(&r);
        match failure {
            None => b.ok.push(r),
            Some(reason) => b.failed.push(FailedResource {
                resource: r,
                reason,
            }),
        }
        if !b.pending.is_empty() {
            return;
        }
        let b = self.batches.remove(i);
        match b.kind {
            BatchKind::Boot => {}
            BatchKind::Failover => {
                self.stats.takeovers += 1;
                out.push(Output::Event(Event::FailoverCompleted {
                    server: b.home,
                    new_server: self.me,
                    epoch: b.epoch,
                    resources: b.ok,
                    failed: b.failed,
                    down_since: b.since,
                    takeover: now.saturating_sub(b.since),
                }));
            }
            BatchKind::Failback => {
                self.stats.failbacks += 1;
                out.push(Output::Event(Event::FailbackCompleted {
                    server: self.me,
                    epoch: b.epoch,
                    resources: b.ok,
                    failed: b.failed,
                    duration: now.saturating_sub(b.started),
                }));
            }
        }
    }

    // ---- the step after every input ----------------------------------------------------

    fn step(&mut self, now: Duration, out: &mut Vec<Output>) {
        if self.majority_settles_at.is_some_and(|t| now >= t) {
            self.majority_settles_at = None;
            self.placement_dirty = true;
        }
        self.refresh_peers(now, out);
        self.directives.retain(|(_, exp)| *exp > now);
        self.seen_directives.retain(|_, exp| *exp > now);
        if let Phase::Booting { until } = self.phase {
            let heard_all = self.peers.values().all(|p| p.last_heard.is_some());
            if heard_all || now >= until {
                self.finish_boot(now, out);
            }
        }
        if !self.is_booting() {
            self.yield_and_detect_conflicts(now, out);
            if self.phase == Phase::Running && !self.manual_hold {
                self.claim_home(now, out);
            }
            if self.phase == Phase::Running
                && self.site.server(self.me).role == Role::Failover
                && self.placement_dirty
            {
                self.take_over(now, out);
            }
        }
        if self.send_now || now >= self.next_heartbeat {
            self.send_heartbeats(out);
            self.send_now = false;
            self.next_heartbeat = now + self.site.heartbeat_interval;
        }
    }

    fn peer_state(&self, p: &Peer, now: Duration) -> ServerState {
        if !p.paths.iter().any(|x| x.up) {
            return ServerState::Down;
        }
        match p.reported {
            PeerState::Leaving => ServerState::Leaving,
            PeerState::Unhealthy => ServerState::Unhealthy,
            PeerState::Up | PeerState::Booting => {
                let late = p
                    .last_heard
                    .is_some_and(|t| now > t + 2 * self.site.heartbeat_interval);
                if late || !p.paths.iter().all(|x| x.up) {
                    ServerState::Suspect
                } else {
                    ServerState::Up
                }
            }
        }
    }

    fn recently_heard(&self, p: &Peer, now: Duration) -> bool {
        p.last_heard
            .is_some_and(|t| now < t + self.site.failure_timeout)
    }

    /// Path timeouts and hysteresis, server up/down transitions and their events.
    fn refresh_peers(&mut self, now: Duration, out: &mut Vec<Output>) {
        let ft = self.site.failure_timeout;
        let booting = self.is_booting();
        let me = self.me;
        let buddies: Vec<ServerIdx> = self.topo.peers(me).to_vec();
        let mut unstable = false;
        for s in buddies {
            let peer = self.peers.get_mut(&s).expect("peer");
            let was_down = peer.state == ServerState::Down;
            let mut path_events = Vec::new();
            for (i, p) in peer.paths.iter_mut().enumerate() {
                if p.up && p.last_heard.is_some_and(|t| now >= t + ft) {
                    p.up = false;
                    p.good = 0;
                    path_events.push((i, false));
                } else if !p.up && p.good >= 2 {
                    p.up = true;
                    path_events.push((i, true));
                }
            }
            let any_up = peer.paths.iter().any(|p| p.up);
            let prev = peer.state;
            let last_heard = peer.last_heard;
            let reported = peer.reported;
            let new_state = if !any_up {
                ServerState::Down
            } else {
                match reported {
                    PeerState::Leaving => ServerState::Leaving,
                    PeerState::Unhealthy => ServerState::Unhealthy,
                    _ => ServerState::Up,
                }
            };
            let gone = |st: ServerState| matches!(st, ServerState::Down | ServerState::Leaving);
            if !path_events.is_empty() {
                unstable = true;
                self.placement_dirty = true;
            }
            let peer = self.peers.get_mut(&s).expect("peer");
            peer.state = new_state;
            if prev != new_state {
                self.placement_dirty = true;
            }
            // The server state follows the paths (with hysteresis); takeovers follow silence
            // on every path. A heartbeat on a path not up yet keeps a server "heard" past the
            // moment its last up path times out: when that silence reaches failure_timeout,
            // placement must run again, or the server is never taken over.
            let silent = last_heard.is_none_or(|t| now >= t + ft);
            if peer.silent != silent {
                peer.silent = silent;
                self.placement_dirty = true;
            }
            if booting {
                continue;
            }
            // Path events only while the server is reachable; a whole server is one event.
            if any_up && !was_down {
                for (i, up) in path_events {
                    let p = &mut peer.paths[i];
                    if !up {
                        p.announced_down = true;
                        out.push(Output::Event(Event::PathDown { server: s, path: i }));
                    } else if std::mem::take(&mut p.announced_down) {
                        out.push(Output::Event(Event::PathUp { server: s, path: i }));
                    }
                }
            }
            if !gone(prev) && gone(new_state) {
                let (reason, since) = if new_state == ServerState::Leaving {
                    (DownReason::Leaving, now)
                } else {
                    (DownReason::Timeout, last_heard.unwrap_or(now))
                };
                peer.down_since = since;
                peer.announced_down = true;
                for p in &mut peer.paths {
                    p.announced_down = false;
                }
                out.push(Output::Event(Event::ServerDown {
                    server: s,
                    reason,
                    down_since: since,
                }));
                unstable = true;
            } else if gone(prev) && !gone(new_state) {
                if std::mem::take(&mut peer.announced_down) {
                    out.push(Output::Event(Event::ServerUp { server: s }));
                }
                unstable = true;
            }
        }
        if unstable {
            self.stable_since = now;
        }
    }

    fn finish_boot(&mut self, now: Duration, out: &mut Vec<Output>) {
        self.phase = Phase::Running;
        self.stable_since = now;
        self.placement_dirty = true;
        self.send_now = true;
        // Servers not heard during the start-up wait are down.
        let ft = self.site.failure_timeout;
        for (&s, p) in &mut self.peers {
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
        // Resume what we held before a restart, unless someone holds it at a higher epoch.
        let resume = std::mem::take(&mut self.resume);
        let mut records = Vec::new();
        let mut starts = Vec::new();
        for (r, epoch) in resume {
            let mine = (epoch, self.topo.rank(&self.site, r, self.me));
            let beaten = self
                .best_other(r, now)
                .is_some_and(|(s, e, _)| beats((e, self.topo.rank(&self.site, r, s)), mine));
            if beaten {
                records.push(ClaimRecord {
                    resource: r,
                    epoch,
                    held: false,
                });
            } else {
                let kind = if self.site.resource(r).server == self.me {
                    ClaimKind::Home
                } else {
                    ClaimKind::Takeover
                };
                self.claims.insert(
                    r,
                    Claim {
                        epoch,
                        state: ClaimState::Starting,
                        kind,
                    },
                );
                starts.push((r, epoch));
            }
        }
        if !records.is_empty() {
            out.push(Output::Persist(records));
        }
        for (resource, epoch) in starts {
            out.push(Output::Start { resource, epoch });
        }
    }

    /// The best claim on `r` among peers heard recently, Starting or Active:
    /// (server, epoch, state).
    fn best_other(&self, r: ResourceIdx, now: Duration) -> Option<(ServerIdx, Epoch, ClaimState)> {
        let mut best: Option<(ServerIdx, Epoch, ClaimState)> = None;
        for (&s, p) in &self.peers {
            if !self.recently_heard(p, now) {
                continue;
            }
            for c in &p.claims {
                if c.resource != r || !matches!(c.state, ClaimState::Starting | ClaimState::Active)
                {
                    continue;
                }
                let cand = (c.epoch, self.topo.rank(&self.site, r, s));
                if best
                    .is_none_or(|(bs, be, _)| beats(cand, (be, self.topo.rank(&self.site, r, bs))))
                {
                    best = Some((s, c.epoch, c.state));
                }
            }
        }
        best
    }

    /// The winning active holder of `r`, this node included.
    fn best_holder(&self, r: ResourceIdx, now: Duration) -> Option<(ServerIdx, Epoch)> {
        let v = self.resource_view(r, now);
        (v.state == ResourceState::Active)
            .then_some(())
            .and(v.owner.map(|o| (o, v.epoch)))
    }

    /// Rule 4: for one resource the higher epoch wins, ties to the earlier buddy; the loser
    /// stops once the winner is active (make-before-break). Two active owners where one took
    /// over believing the other gone is a conflict, reported once and resolved once.
    fn yield_and_detect_conflicts(&mut self, now: Duration, out: &mut Vec<Output>) {
        let mut to_stop = Vec::new();
        let mut conflicts_now = BTreeSet::new();
        for (&r, c) in &self.claims {
            if !matches!(c.state, ClaimState::Starting | ClaimState::Active) {
                continue;
            }
            let mine = (c.epoch, self.topo.rank(&self.site, r, self.me));
            let mut owners = vec![(self.me, c.epoch)];
            let mut conflict = false;
            for (&s, p) in &self.peers {
                if !self.recently_heard(p, now) {
                    continue;
                }
                for pc in p.claims.iter().filter(|pc| pc.resource == r) {
                    if pc.state != ClaimState::Active {
                        continue;
                    }
                    let theirs = (pc.epoch, self.topo.rank(&self.site, r, s));
                    if beats(theirs, mine) {
                        to_stop.push((r, c.epoch));
                    }
                    if c.state == ClaimState::Active {
                        let (higher_kind, lower_leaving) = if beats(theirs, mine) {
                            (pc.kind, self.my_state() == PeerState::Leaving)
                        } else {
                            (c.kind, p.reported == PeerState::Leaving)
                        };
                        // A takeover from a node that said it is leaving is a planned hand-over.
                        if pc.epoch == c.epoch
                            || (higher_kind == ClaimKind::Takeover && !lower_leaving)
                        {
                            conflict = true;
                            owners.push((s, pc.epoch));
                        }
                    }
                }
            }
            if conflict {
                conflicts_now.insert(r);
                if !self.conflicts.contains(&r) {
                    // Two owners: the network was split a moment ago. Failback waits
                    // failback_delay from here, not from the last path transition, which a
                    // heal heard late (before the paths count as up) may leave in the past.
                    self.stable_since = now;
                    owners.sort_by_key(|&(s, e)| {
                        (std::cmp::Reverse(e), self.topo.rank(&self.site, r, s))
                    });
                    self.stats.conflicts += 1;
                    out.push(Output::Event(Event::OwnershipConflict {
                        resource: r,
                        owners,
                    }));
                }
            }
        }
        // Conflicts that ended without us stopping: the other side stood down.
        let ended: Vec<ResourceIdx> = self
            .conflicts
            .iter()
            .copied()
            .filter(|r| {
                !conflicts_now.contains(r)
                    && self
                        .claims
                        .get(r)
                        .is_some_and(|c| c.state == ClaimState::Active)
            })
            .collect();
        for r in ended {
            self.conflicts.remove(&r);
            let epoch = self.claims[&r].epoch;
            out.push(Output::Event(Event::OwnershipResolved {
                resource: r,
                owner: self.me,
                epoch,
            }));
        }
        self.conflicts.extend(conflicts_now);
        to_stop.dedup();
        for (r, epoch) in to_stop {
            let Some(c) = self.claims.get_mut(&r) else {
                continue;
            };
            if c.state == ClaimState::Stopping {
                continue;
            }
            let was_starting = c.state == ClaimState::Starting;
            c.state = ClaimState::Stopping;
            self.send_now = true;
            self.placement_dirty = true;
            if was_starting {
                self.batch_progress(r, Some("superseded by a higher epoch".into()), now, out);
            }
            out.push(Output::Stop { resource: r, epoch });
        }
    }

    fn failback_pending(&self) -> bool {
        self.site.failback == Failback::Auto
            && self.phase == Phase::Running
            && !self.manual_hold
            && self
                .topo
                .homed(self.me)
                .iter()
                .any(|r| !self.claims.contains_key(r))
    }

    /// Our own resources: claim what nobody holds; hand back on failback.
    fn claim_home(&mut self, now: Duration, out: &mut Vec<Output>) {
        let failback_due = self.failback_now
            || (self.site.failback == Failback::Auto
                && now >= self.stable_since + self.site.failback_delay);
        let mut boot = Vec::new();
        let mut back = Vec::new();
        for &r in self.topo.homed(self.me) {
            if self.claims.contains_key(&r) {
                continue;
            }
            let failed = self.failed_here.contains_key(&r);
            match self.best_other(r, now) {
                None if !failed => {
                    // Nobody holds it (first start, or its holder is gone): claim at once.
                    if self.known[r.0 as usize] == 0 {
                        boot.push(r);
                    } else {
                        back.push(r);
                    }
                }
                _ if failback_due => back.push(r),
                _ => {}
            }
        }
        if failback_due {
            self.failback_now = false;
            self.failed_here
                .retain(|r, _| self.site.resource(*r).server != self.me);
            self.stable_since = now;
        }
        if !boot.is_empty() {
            self.claim(
                boot,
                BatchKind::Boot,
                ClaimKind::Home,
                self.me,
                now,
                now,
                out,
            );
        }
        if !back.is_empty() {
            self.claim(
                back,
                BatchKind::Failback,
                ClaimKind::Handback,
                self.me,
                now,
                now,
                out,
            );
        }
    }

    /// Whether `s` may take work, as this node sees it.
    fn available(&self, s: ServerIdx, now: Duration) -> bool {
        if s == self.me {
            return self.phase == Phase::Running;
        }
        self.peers.get(&s).is_some_and(|p| {
            self.recently_heard(p, now)
                && !matches!(p.reported, PeerState::Booting | PeerState::Leaving)
                && !self.forced.contains(&s)
        })
    }

    /// Who holds each resource (starting or active) in this node's view, by highest epoch:
    /// placement keeps a resource where it is when it can.
    fn holders(&self) -> HashMap<ResourceIdx, (Epoch, ServerIdx)> {
        let mut out: HashMap<ResourceIdx, (Epoch, ServerIdx)> = HashMap::new();
        let held = |state| matches!(state, ClaimState::Starting | ClaimState::Active);
        let mine = self
            .claims
            .iter()
            .filter(|(_, c)| held(c.state))
            .map(|(&r, c)| (r, c.epoch, self.me));
        let theirs = self.peers.iter().flat_map(|(&s, p)| {
            p.claims
                .iter()
                .filter(|c| held(c.state))
                .map(move |c| (c.resource, c.epoch, s))
        });
        for (r, epoch, s) in mine.chain(theirs) {
            let e = out.entry(r).or_insert((epoch, s));
            if epoch > e.0 {
                *e = (epoch, s);
            }
        }
        out
    }

    fn failed_at(&self, r: ResourceIdx, s: ServerIdx) -> bool {
        if s == self.me {
            return self.failed_here.contains_key(&r);
        }
        self.peers.get(&s).is_some_and(|p| {
            p.claims
                .iter()
                .any(|c| c.resource == r && c.state == ClaimState::Failed)
        })
    }

    fn witness_majority(&self) -> bool {
        let n = self.witnesses.len();
        n == 0 || self.witnesses.iter().filter(|&&w| w).count() * 2 > n
    }

    /// Whether silence may be taken for a failure: this node reaches a majority of the
    /// witnesses and has for `failure_timeout`. Silence heard while it was cut off from them
    /// proves nothing: coming back, its witness probe may answer a moment before the first
    /// heartbeat arrives, and it would take over live servers that never failed.
    fn silence_counts(&self) -> bool {
        self.witness_majority() && self.majority_settles_at.is_none()
    }

    /// Why the resources of live server `home` need a new host, if they do.
    /// `Some(true)` when the cause is silence, which a witness majority must confirm.
    fn home_gone(&self, home: ServerIdx, now: Duration) -> Option<bool> {
        if self.forced.contains(&home) {
            return Some(false);
        }
        let p = self.peers.get(&home)?;
        if !self.recently_heard(p, now) {
            // Silence on every path for failure_timeout (or never heard since we booted).
            return Some(true);
        }
        (p.reported == PeerState::Leaving).then_some(false)
    }

    /// Resources that need a host in this node's view.
    fn orphans(&self, now: Duration) -> Vec<ResourceIdx> {
        let mut out = Vec::new();
        for (&home, p) in &self.peers {
            if self.site.server(home).role != Role::Live {
                continue;
            }
            let gone = self.home_gone(home, now).is_some();
            for &r in self.topo.homed(home) {
                let orphan = gone
                    || (p.reported != PeerState::Booting
                        && !p.claims.iter().any(|c| {
                            c.resource == r
                                && matches!(c.state, ClaimState::Starting | ClaimState::Active)
                        }));
                if orphan {
                    out.push(r);
                }
            }
        }
        out
    }

    /// A failover server: take what placement gives us and we do not hold yet.
    fn take_over(&mut self, now: Duration, out: &mut Vec<Output>) {
        self.placement_dirty = false;
        let orphans = self.orphans(now);
        if orphans.is_empty() {
            return;
        }
        let holders = self.holders();
        let placement = placement::place(
            &self.site,
            &self.topo,
            &orphans,
            |s| self.available(s, now),
            |r, s| self.failed_at(r, s),
            |r| holders.get(&r).map(|&(_, s)| s),
        );
        let majority = self.silence_counts();
        let mut by_home: BTreeMap<ServerIdx, Vec<ResourceIdx>> = BTreeMap::new();
        for (r, s) in placement.assigned {
            if s != self.me || self.claims.contains_key(&r) {
                continue;
            }
            // Someone already holds it at a higher epoch than ours would be? Leave it.
            let home = self.site.resource(r).server;
            if self.home_gone(home, now) == Some(true) && !majority {
                continue;
            }
            by_home.entry(home).or_default().push(r);
        }
        for (home, rs) in by_home {
            let since = self
                .peers
                .get(&home)
                .map(|p| {
                    if self.home_gone(home, now).is_some() {
                        p.down_since
                    } else {
                        now
                    }
                })
                .unwrap_or(now);
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
    }

    /// Claims `rs` at one new epoch: persist first, then start (rule 4).
    #[allow(clippy::too_many_arguments)]
    fn claim(
        &mut self,
        rs: Vec<ResourceIdx>,
        kind: BatchKind,
        claim_kind: ClaimKind,
        home: ServerIdx,
        since: Duration,
        now: Duration,
        out: &mut Vec<Output>,
    ) {
        let round = rs
            .iter()
            .map(|r| epoch_round(self.known[r.0 as usize]))
            .max()
            .unwrap_or(0)
            + 1;
        let epochs: Vec<Epoch> = rs
            .iter()
            .map(|&r| new_epoch(round, self.topo.rank(&self.site, r, self.me)))
            .collect();
        let epoch = epochs.iter().copied().max().unwrap_or(0);
        let mut records = Vec::with_capacity(rs.len());
        for (&r, &e) in rs.iter().zip(&epochs) {
            self.known[r.0 as usize] = e;
            self.claims.insert(
                r,
                Claim {
                    epoch: e,
                    state: ClaimState::Starting,
                    kind: claim_kind,
                },
            );
            records.push(ClaimRecord {
                resource: r,
                epoch: e,
                held: true,
            });
        }
        out.push(Output::Persist(records));
        if kind == BatchKind::Failover {
            out.push(Output::Event(Event::FailoverStarted {
                server: home,
                new_server: self.me,
                epoch,
                resources: rs.clone(),
            }));
        }
        for (&r, &e) in rs.iter().zip(&epochs) {
            out.push(Output::Start {
                resource: r,
                epoch: e,
            });
        }
        self.batches.push(Batch {
            kind,
            home,
            epoch,
            pending: rs.into_iter().collect(),
            ok: Vec::new(),
            failed: Vec::new(),
            since,
            started: now,
        });
        self.send_now = true;
        self.placement_dirty = true;
    }

    fn my_state(&self) -> PeerState {
        match self.phase {
            Phase::Booting { .. } => PeerState::Booting,
            Phase::Leaving => PeerState::Leaving,
            Phase::Running if self.manual_hold => PeerState::Leaving,
            Phase::Running => {
                let me = self.me;
                if self
                    .failed_here
                    .keys()
                    .any(|&r| self.site.resource(r).server == me)
                {
                    PeerState::Unhealthy
                } else {
                    PeerState::Up
                }
            }
        }
    }

    fn send_heartbeats(&mut self, out: &mut Vec<Output>) {
        let mut claims: Vec<wire::WireClaim> = self
            .claims
            .iter()
            .map(|(&r, c)| wire::WireClaim {
                resource: self.site.resource(r).id.clone(),
                epoch: c.epoch,
                state: c.state,
                kind: c.kind,
            })
            .collect();
        claims.extend(self.failed_here.iter().map(|(&r, &epoch)| wire::WireClaim {
            resource: self.site.resource(r).id.clone(),
            epoch,
            state: ClaimState::Failed,
            kind: ClaimKind::Takeover,
        }));
        let mut hb = Heartbeat {
            from: self.site.server(self.me).id.clone(),
            incarnation: self.incarnation,
            seq: 0,
            path: 0,
            state: self.my_state(),
            digest: self.digest,
            claims,
            directives: self.directives.iter().map(|(d, _)| d.clone()).collect(),
        };
        for &to in self.topo.peers(self.me) {
            for path in 0..self.topo.shared_paths(self.me, to) {
                self.seq += 1;
                hb.seq = self.seq;
                hb.path = path as u8;
                out.push(Output::Send {
                    path,
                    to,
                    bytes: wire::encode(&self.key, &hb),
                });
                self.stats.heartbeats_sent += 1;
            }
        }
    }
}

/// Epochs are `round * 100 + slot`. Every claim of a resource starts a new round, above every
/// epoch known for it; the slot is `99 - rank` of the claimant (home server 99, first buddy 98,
/// ...). Two nodes that claim the same resource at once, each unaware of the other, so pick
/// different epochs: an epoch names one owner, and the preferred claimant's is the higher.
pub const EPOCH_SLOTS: u64 = 100;

/// The round an epoch belongs to.
pub fn epoch_round(epoch: Epoch) -> u64 {
    epoch / EPOCH_SLOTS
}

/// The epoch of a claim in `round` by a server of tie-break `rank` for the resource.
pub fn new_epoch(round: u64, rank: usize) -> Epoch {
    round * EPOCH_SLOTS + (EPOCH_SLOTS - 1).saturating_sub(rank as u64)
}

/// `a` beats `b`: higher epoch, or the same epoch and an earlier rank.
fn beats(a: (Epoch, usize), b: (Epoch, usize)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

fn same_claims(a: &[PeerClaim], b: &[PeerClaim]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.resource == y.resource && x.epoch == y.epoch && x.state == y.state && x.kind == y.kind
        })
}

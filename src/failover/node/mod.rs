//! One node's state machine. No clock, no sockets: [`Node::handle`] takes an [`Input`] and the
//! current monotonic time and returns [`Output`]s for the driver to carry out, in order (the
//! contract is in [`crate::failover::io`]).
//!
//! `Node` drives; each concern is a sub-state in a file of its own with the methods that change
//! it:
//! - [`peers`]: each peer's paths, liveness, replay protection and the claims it advertises
//!   (indexed by resource); [`receive`]: a heartbeat checked and applied;
//! - [`own`]: this node's claims, failures and failing stops; [`conflicts`]: ownership
//!   conflicts between its claims and others';
//! - [`known`]: the highest epoch seen per resource, durable, and the round floors exchanged
//!   so that epochs never go backwards;
//! - [`holds`]: operator holds (manual failover until failback), durable and gossiped;
//! - [`boot`]: the start-up wait, resuming stored claims, home claims and failback;
//! - [`takeover`]: what a failover server takes, keeps, gives up and reports unplaced;
//! - [`standby`]: the hot-standby resources a failover server prepares;
//! - [`batches`]: the claims of one takeover or failback, for their completion events;
//! - [`heartbeat`]: what a heartbeat carries to each peer.

mod batches;
mod boot;
mod conflicts;
pub mod heartbeat;
mod holds;
mod known;
mod own;
mod peers;
mod receive;
mod standby;
mod takeover;
mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::io::{Durable, Input, Output, PeerRecord, Restored};
use super::topology::Topology;
use super::views::Stats;
use super::wire::Key;
use crate::config::{ResourceIdx, ServerIdx, Site};

use batches::Batches;
use holds::Holds;
use known::Known;
use own::Own;
use peers::Peers;

pub use own::OwnState;

/// Persist replay floors (each peer's newest sequence number) at least this often.
const PEER_CHECKPOINT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Booting {
        until: Duration,
    },
    Running,
    /// Shutting down: no new claims; hand everything over.
    Leaving,
}

/// What a node knows about its site, fixed for its life.
#[derive(Debug, Clone)]
struct Ctx {
    site: Arc<Site>,
    topo: Arc<Topology>,
    resources: Arc<HashMap<String, ResourceIdx>>,
    servers: Arc<HashMap<String, ServerIdx>>,
    me: ServerIdx,
    key: Key,
    digest: [u8; 8],
}

impl Ctx {
    fn id(&self, s: ServerIdx) -> &str {
        &self.site.server(s).id
    }

    fn is_home(&self, r: ResourceIdx) -> bool {
        self.site.resource(r).server == self.me
    }
}

/// Witness reachability; silence counts only while a majority is in reach, and has been for
/// `failure_timeout`.
#[derive(Debug, Clone)]
struct Witnesses {
    reachable: Vec<bool>,
    /// Set when a majority is regained: until then, silence does not count (it was heard
    /// while this node was cut off).
    settles_at: Option<Duration>,
}

impl Witnesses {
    fn majority(&self) -> bool {
        let n = self.reachable.len();
        n == 0 || self.reachable.iter().filter(|&&w| w).count() * 2 > n
    }

    /// Whether silence may be taken for a failure.
    fn silence_counts(&self) -> bool {
        self.majority() && self.settles_at.is_none()
    }
}

/// One server's failover state machine.
#[derive(Debug, Clone)]
pub struct Node {
    ctx: Ctx,
    incarnation: u64,
    seq: u64,
    phase: Phase,
    peers: Peers,
    own: Own,
    known: Known,
    holds: Holds,
    batches: Batches,
    witnesses: Witnesses,
    /// Resources this node reports unplaced (see [`takeover`]).
    unplaced: BTreeSet<ResourceIdx>,
    /// Resources their live home server stood down for a claim this node has not heard,
    /// until when it waits to hear it (see [`takeover`]).
    handed: BTreeMap<ResourceIdx, Duration>,
    /// The driver can make things durable (see [`Input::Storage`]).
    storage_ok: bool,
    /// Resources this node keeps in standby now (see [`standby`]).
    standby: BTreeSet<ResourceIdx>,
    /// The hot- and warm-standby resources this node may take over (see [`standby`]).
    standby_candidates: Arc<standby::Candidates>,
    /// When the home servers of warm-standby candidates were last found missing heartbeats...
    missed: BTreeMap<ServerIdx, Duration>,
    /// ... and when one may next be (see [`standby`]).
    warm_check_at: Duration,
    /// Active claims a peer heard and this node may not (a one-way cut): resource ->
    /// (holder, epoch, until when the report holds).
    /// (holder, epoch, active, until when the report holds).
    relayed: BTreeMap<ResourceIdx, (ServerIdx, super::Epoch, bool, Duration)>,
    /// Since when this node's view has been stable (no path or server transition, no failure
    /// of its own resources, no conflict): auto failback waits `failback_delay` from here.
    stable_since: Duration,
    next_heartbeat: Duration,
    /// Which heartbeat page each peer gets next (claims that take more than one datagram).
    page_cursor: usize,
    /// When the last burst sent on a change went out.
    last_burst: Duration,
    /// When the driver last fed an input; a long gap is a stall.
    last_input: Option<Duration>,
    /// After a stall: no silence is judged and nothing decided before this.
    listen_until: Duration,
    next_checkpoint: Duration,
    send_now: bool,
    /// The change must go out now, whatever the burst spacing: new claims (their epochs must
    /// be known before anyone announces them), leaving, an operator's hold.
    urgent: bool,
    placement_dirty: bool,
    /// Durable records not yet handed out (those with no ordering constraint).
    pending: Vec<Durable>,
    stats: Stats,
}

impl Node {
    /// A node for server `me`, booting at `now`. `incarnation` must be greater than the one of
    /// any earlier run of this server (the runtime keeps a boot counter in its store; should
    /// it go backwards, peers tell the node and it jumps past). `restored` is what the store
    /// holds from earlier runs.
    pub fn new(
        site: Arc<Site>,
        topo: Arc<Topology>,
        me: ServerIdx,
        key: Key,
        incarnation: u64,
        restored: &Restored,
        now: Duration,
    ) -> Self {
        let servers = site
            .server_indices()
            .map(|s| (site.server(s).id.clone(), s))
            .collect();
        let ctx = Ctx {
            resources: Arc::new(site.resource_map()),
            servers: Arc::new(servers),
            digest: site.digest(),
            site: site.clone(),
            topo: topo.clone(),
            me,
            key,
        };
        let mut known = Known::new(&site);
        for &(r, e) in &restored.known {
            known.restore(r, e);
        }
        for &(h, round) in &restored.floors {
            known.restore_floor(h, round);
        }
        let mut own = Own::default();
        for c in &restored.claims {
            known.restore(c.resource, c.epoch);
            if c.held && (c.resource.0 as usize) < site.resources.len() {
                own.resume(&ctx, c.resource, c.epoch);
            }
        }
        let until = now + 2 * site.failure_timeout;
        Self {
            peers: Peers::new(&site, &topo, me, &restored.peers, now),
            holds: Holds::restore(&restored.holds, restored.failback_done.clone()),
            witnesses: Witnesses {
                reachable: vec![false; site.witnesses.len()],
                settles_at: None,
            },
            ctx,
            incarnation,
            seq: 0,
            phase: Phase::Booting { until },
            own,
            known,
            batches: Batches::default(),
            unplaced: BTreeSet::new(),
            handed: BTreeMap::new(),
            relayed: BTreeMap::new(),
            standby: BTreeSet::new(),
            standby_candidates: Arc::new(standby::Candidates::of(&site, &topo, me)),
            missed: BTreeMap::new(),
            warm_check_at: Duration::ZERO,
            storage_ok: true,
            stable_since: now,
            next_heartbeat: now,
            page_cursor: 0,
            last_burst: Duration::ZERO,
            last_input: None,
            listen_until: Duration::ZERO,
            next_checkpoint: now + PEER_CHECKPOINT,
            send_now: true,
            urgent: true,
            placement_dirty: true,
            pending: Vec::new(),
            stats: Stats::default(),
        }
    }

    pub fn me(&self) -> ServerIdx {
        self.ctx.me
    }

    pub fn site(&self) -> &Arc<Site> {
        &self.ctx.site
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.stops_failing = self.own.stops_failing() as u64;
        s.unplaced = self.unplaced.len() as u64;
        s
    }

    pub fn is_booting(&self) -> bool {
        matches!(self.phase, Phase::Booting { .. })
    }

    /// After [`Input::Shutdown`]: `true` once every resource has been handed over (or there
    /// was nothing to hand over). Resources nobody took over keep running.
    pub fn drained(&self) -> bool {
        self.phase == Phase::Leaving && self.own.is_empty()
    }

    /// After [`Input::Shutdown`]: whether no buddy that could take a resource this node still
    /// holds is up (heard within `failure_timeout`, not leaving itself): waiting for a
    /// hand-over is pointless.
    pub fn nobody_takes_over(&self, now: Duration) -> bool {
        self.phase == Phase::Leaving
            && self.own.iter().all(|(r, _, _)| {
                self.ctx.topo.candidates(r).iter().all(|&s| {
                    s == self.ctx.me
                        || !self.recently_heard(s, now)
                        || self.peer_state(s) == Some(super::wire::PeerState::Leaving)
                })
            })
    }

    /// Whether the node can make things durable (see [`Input::Storage`]).
    pub fn storage_ok(&self) -> bool {
        self.storage_ok
    }

    /// Resources this node holds now (its agent may run them), with epoch and state.
    pub fn held(&self) -> impl Iterator<Item = (ResourceIdx, super::Epoch, OwnState)> + '_ {
        self.own.iter()
    }

    /// The least time between two bursts sent on a change: a tenth of the heartbeat interval,
    /// at most 20 ms.
    fn burst_spacing(&self) -> Duration {
        (self.ctx.site.heartbeat_interval / 10).min(Duration::from_millis(20))
    }

    /// When the driver must call `handle(Input::Tick, ..)` next at the latest.
    pub fn next_deadline(&self) -> Duration {
        let mut sends = self.next_heartbeat;
        if self.send_now {
            sends = sends.min(self.last_burst + self.burst_spacing());
        }
        let mut next = sends.min(self.next_checkpoint);
        if let Phase::Booting { until } = self.phase {
            next = next.min(until);
        }
        if let Some(t) = self.peers.next_deadline(self.ctx.site.failure_timeout) {
            next = next.min(t);
        }
        if self.failback_pending() {
            next = next.min(self.stable_since + self.ctx.site.failback_delay);
        }
        if let Some(t) = self.witnesses.settles_at {
            next = next.min(t);
        }
        if let Some(t) = self.own.next_deadline() {
            next = next.min(t);
        }
        if let Some(t) = self.standby_deadline() {
            next = next.min(t);
        }
        if let Some(&t) = self.handed.values().min() {
            next = next.min(t);
        }
        if self.last_input.is_some_and(|t| t < self.listen_until) {
            // Listening after a stall: only heartbeats go out before it ends, nothing is
            // judged, and a silence that timed out meanwhile must not wake the driver again
            // and again.
            next = next.max(self.listen_until).min(sends);
        }
        next
    }

    /// Feeds one input; returns what the driver must do, in order.
    pub fn handle(&mut self, input: Input, now: Duration) -> Vec<Output> {
        self.handle_all([input], now)
    }

    /// Feeds every input that is ready at once (datagrams read in one go, agent reports),
    /// then decides and sends once: what they change goes out in one burst, and silence is
    /// judged only after every queued datagram was read.
    pub fn handle_all(
        &mut self,
        inputs: impl IntoIterator<Item = Input>,
        now: Duration,
    ) -> Vec<Output> {
        let mut out = Vec::new();
        self.notice_stall(now);
        for input in inputs {
            self.input(input, now, &mut out);
        }
        self.step(now, &mut out);
        out
    }

    /// A node that did not run for a while (a stalled VM, a SIGSTOP, CPU starvation) heard
    /// nothing meanwhile that it has read yet: it judges no silence and decides nothing until
    /// it has listened afresh for two heartbeat intervals.
    fn notice_stall(&mut self, now: Duration) {
        let hb = self.ctx.site.heartbeat_interval;
        if let Some(last) = self.last_input
            && now > last + 2 * hb + Duration::from_millis(50)
        {
            self.listen_until = now + 2 * hb;
            self.stats.stalls += 1;
        }
        self.last_input = Some(now);
    }

    /// Still listening after a stall.
    fn listening(&self, now: Duration) -> bool {
        now < self.listen_until
    }

    fn input(&mut self, input: Input, now: Duration, out: &mut Vec<Output>) {
        match input {
            Input::Tick => {}
            Input::Datagram { path, bytes, at } => self.on_datagram(path, &bytes, at.min(now), out),
            Input::Heartbeat {
                path,
                heartbeat,
                at,
            } => self.on_heartbeat(path, *heartbeat, at.min(now), out),
            Input::AgentDone {
                resource,
                epoch,
                op,
                result,
            } => self.on_agent_done(resource, epoch, op, result, now, out),
            Input::MonitorFailed { resource, reason } => {
                self.on_monitor_failed(resource, reason, now, out)
            }
            Input::Witness { index, reachable } => self.on_witness(index, reachable, now),
            Input::Command {
                action,
                server,
                stamp,
            } => self.on_command(action, server, stamp),
            Input::Shutdown => self.on_shutdown(),
            Input::Storage { ok } => {
                if self.storage_ok != ok {
                    self.storage_ok = ok;
                    self.send_now = true;
                    self.urgent = true;
                    self.placement_dirty = true;
                    // Back from a full disk is a disturbance: failback waits from here.
                    self.stable_since = now;
                }
            }
        }
    }

    /// What every input is followed by: timers, then the decisions, then the heartbeats.
    fn step(&mut self, now: Duration, out: &mut Vec<Output>) {
        if self.witnesses.settles_at.is_some_and(|t| now >= t) {
            self.witnesses.settles_at = None;
            self.placement_dirty = true;
        }
        if self.listening(now) {
            // Fresh datagrams first; then everything is judged again.
            self.placement_dirty = true;
        } else {
            self.refresh_peers(now, out);
        }
        self.expire_failures(now);
        self.relayed.retain(|_, (_, _, _, until)| now < *until);
        let handed = self.handed.len();
        self.handed.retain(|_, until| now < *until);
        if self.handed.len() != handed {
            self.placement_dirty = true;
        }
        if let Phase::Booting { until } = self.phase
            && (self.peers.all_heard() || now >= until)
        {
            self.finish_boot(now, out);
        }
        if !self.is_booting() && !self.listening(now) {
            self.resolve_ownership(now, out);
            self.retry_stops(now, out);
            let claims = self.phase == Phase::Running && self.storage_ok;
            if claims && !self.holds.held(self.ctx.me) {
                self.claim_home(now, out);
            }
            let failover = self.ctx.site.server(self.ctx.me).role == crate::config::Role::Failover;
            if claims && failover && self.placement_dirty {
                self.take_over(now, out);
            }
            if failover {
                self.update_standby(now, out);
            }
        }
        if now >= self.next_checkpoint {
            self.next_checkpoint = now + PEER_CHECKPOINT;
            self.checkpoint_peers();
        }
        self.flush_durable(out);
        // A change goes out at once, but changes that follow within `burst_spacing` (a
        // takeover's starts completing one by one) share the next burst.
        let burst = self.send_now && (self.urgent || now >= self.last_burst + self.burst_spacing());
        if burst || now >= self.next_heartbeat {
            self.send_heartbeats(self.send_now, now, out);
            if self.send_now {
                self.last_burst = now;
            }
            self.send_now = false;
            self.urgent = false;
            self.next_heartbeat = now + self.ctx.site.heartbeat_interval;
        }
    }

    fn on_witness(&mut self, index: usize, reachable: bool, now: Duration) {
        let had = self.witnesses.majority();
        if let Some(w) = self.witnesses.reachable.get_mut(index)
            && *w != reachable
        {
            *w = reachable;
            self.placement_dirty = true;
        }
        match (had, self.witnesses.majority()) {
            (false, true) => self.witnesses.settles_at = Some(now + self.ctx.site.failure_timeout),
            (true, false) => self.witnesses.settles_at = None,
            _ => {}
        }
    }

    fn on_shutdown(&mut self) {
        if self.phase != Phase::Leaving {
            self.phase = Phase::Leaving;
            self.send_now = true;
            self.urgent = true;
            self.placement_dirty = true;
            // What a restart needs to refuse replays of what was heard until now.
            self.checkpoint_peers();
        }
    }

    /// Hands out the pending durable records (learned epochs, holds, replay floors) as one
    /// [`Output::Persist`], before anything that follows in `out`.
    fn flush_durable(&mut self, out: &mut Vec<Output>) {
        self.pending.extend(self.known.take_dirty());
        if !self.pending.is_empty() {
            out.push(Output::Persist(std::mem::take(&mut self.pending)));
        }
    }

    /// Queues each peer's replay floor if it moved since the last checkpoint.
    fn checkpoint_peers(&mut self) {
        for (server, incarnation, seq) in self.peers.checkpoint() {
            self.pending.push(Durable::Peer(PeerRecord {
                server,
                incarnation,
                seq,
            }));
        }
    }

    /// A peer remembers a later incarnation of ours than we booted with (our store was wiped
    /// and our clock is behind): jump past it, or every peer refuses us as a replay.
    fn jump_incarnation(&mut self, past: u64) {
        if past < self.incarnation {
            return;
        }
        self.incarnation = past + 1;
        self.seq = 0;
        for p in self.peers.by_server.values_mut() {
            p.confirmed = false;
        }
        self.stats.incarnation_jumps += 1;
        self.pending.push(Durable::Incarnation(self.incarnation));
        self.send_now = true;
    }
}

/// `a` beats `b` for one resource: the higher epoch, or at the same epoch (only possible
/// between nodes whose site files differ) the smaller server id, which every node computes
/// the same way whatever its site file says.
fn beats(a: (super::Epoch, &str), b: (super::Epoch, &str)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

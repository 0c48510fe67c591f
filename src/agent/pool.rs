//! The [`AgentPool`]: runs the starts and stops the failover core asks for, and reports back.
//!
//! - One worker task per resource, created on its first operation, runs that resource's
//!   operations one after another in the order they were asked for: a stop asked while a start
//!   runs waits for it.
//! - Different resources run in parallel. Starts (with hot standbys), stops, monitors and
//!   merges each have permits of their own (the pool's concurrency each; a quarter of it for
//!   merges), so that 32 starts in flight never delay a stop or a monitor.
//! - A start is complete when the resource really works: with a `ready_timeout`, `monitor` is
//!   polled after `start` succeeds until it reports running (under the start's permit); still
//!   not running at the `ready_timeout` is a failed start.
//! - A failed start is tried again `retries` times, after an exponential [`Backoff`].
//! - How long each resource's last start and stop took, from the moment it was asked for, is
//!   kept ([`AgentPool::last_op`]) and logged.
//! - A started resource is monitored every `monitor_interval` until its next operation; two
//!   failed monitors in a row are reported as [`AgentReport::MonitorFailed`], and monitoring
//!   stops.
//! - An operation the node could not even run ([`AgentError::Exhausted`]: out of file
//!   descriptors or processes) is the node's trouble, not the resource's: counted
//!   (`outcome="exhausted"`), logged at a bounded rate, and retried; a monitor that could not
//!   run is not a failed monitor, and a start or stop that could not run is tried again (up to
//!   [`EXHAUSTED_RETRIES`] times) without using up its `retries`.
//! - Hot standby ([`AgentPool::standby`]): `standby` runs in the resource's order like a start,
//!   its release ([`AgentPool::release`]) is a `stop`; neither is reported to the core, and a
//!   failed or unimplemented standby is never a failure of the resource (a failed one is tried
//!   again while nothing else is asked). A start after a standby supersedes it (the agent keeps
//!   what it prepared), and is told from when to cover (`BUDDYGATE_COVER_FROM`).
//! - Merges ([`AgentPool::merge`]) run beside the resource's order (they may copy footage for
//!   minutes; a stop must not wait for them), one call per interval, retried like starts; an
//!   agent without `merge` is logged once.
//! - [`AgentPool::idle`] waits until every operation asked for is done (a clean shutdown waits
//!   for its last stops).
//! - Everything ends when the pool's cancellation token is cancelled.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::{Semaphore, SemaphorePermit, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::{AgentError, Agents, Op, ResourceEnv};
use crate::backoff::{Backoff, Jitter};
use crate::config::{Resource, ResourceIdx, ServerIdx, Site};
use crate::failover::{AgentOp, Epoch, Input};
use crate::ratelimit::LogLimiter;

/// Starts that run at once unless the runtime says otherwise (and as many stops, and monitors).
pub const DEFAULT_CONCURRENCY: usize = 16;

/// Failed monitors in a row that fail the resource.
const MONITOR_FAILURES: u32 = 2;

/// Times a start or stop the node could not run ([`AgentError::Exhausted`]) is tried again
/// before it counts as an attempt.
pub const EXHAUSTED_RETRIES: u32 = 10;

/// The wait before an operation the node could not run is tried again.
const EXHAUSTED_BACKOFF: Duration = Duration::from_millis(500);

/// The first wait between readiness monitors; it doubles up to [`READY_POLL_MAX`].
const READY_POLL_FIRST: Duration = Duration::from_millis(25);

/// The longest wait between readiness monitors.
const READY_POLL_MAX: Duration = Duration::from_millis(400);

/// What the pool tells the task that owns the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentReport {
    /// A start or stop asked for finished (a start after its retries).
    Done {
        resource: ResourceIdx,
        epoch: Epoch,
        op: AgentOp,
        result: Result<(), String>,
    },
    /// A started resource failed two monitors in a row.
    MonitorFailed {
        resource: ResourceIdx,
        reason: String,
    },
}

impl From<AgentReport> for Input {
    fn from(report: AgentReport) -> Self {
        match report {
            AgentReport::Done {
                resource,
                epoch,
                op,
                result,
            } => Input::AgentDone {
                resource,
                epoch,
                op,
                result,
            },
            AgentReport::MonitorFailed { resource, reason } => {
                Input::MonitorFailed { resource, reason }
            }
        }
    }
}

/// The wait before each retry of a failed start: 100ms, doubling each time, at most 5s; a
/// random 50% to 100% of that, so that many resources that failed together do not retry
/// together.
pub const START_BACKOFF: Backoff =
    Backoff::doubling(Duration::from_millis(100), Duration::from_secs(5))
        .with_jitter(Jitter::down_to(0.5));

/// The wait before a failed standby is tried again (while nothing else is asked for the
/// resource): 2 s doubling to a minute.
const STANDBY_RETRY: Backoff = Backoff::doubling(Duration::from_secs(2), Duration::from_secs(60))
    .with_jitter(Jitter::down_to(0.5));

/// Where the pool counts the operations it ran (the runtime's metrics).
pub trait OpCounter: Send + Sync {
    /// One more `op` (`start`, `stop`, `monitor`, `standby`, `merge`) that ended with `outcome`
    /// (`ok`, `failed`, `timeout`, `unimplemented`, `exhausted`: the node could not run it).
    fn agent_op(&self, op: &'static str, outcome: &'static str);
}

/// An operation asked for, in the resource's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Job {
    kind: JobKind,
    epoch: Epoch,
    /// When it was asked for.
    asked: tokio::time::Instant,
    asked_at: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobKind {
    /// A start; after a takeover, the instant from which it must cover.
    Start {
        cover_from: Option<SystemTime>,
    },
    Stop,
    /// Prepare a hot standby.
    Standby,
    /// Release the hot standby (a `stop`), if one was prepared.
    Release,
    /// Stop a hot standby an earlier run of the node left (it was killed with it prepared).
    Leftover,
}

/// One interval a buddy recorded, for `merge`: `BUDDYGATE_MERGE_FROM`, `_TO`, `_SERVER`,
/// `_ADDRESS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeInterval {
    pub from: SystemTime,
    pub to: SystemTime,
    /// The server that recorded it.
    pub server: String,
    /// Its announced address.
    pub address: IpAddr,
}

impl MergeInterval {
    fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("merge_from", rfc3339(self.from)),
            ("merge_to", rfc3339(self.to)),
            ("merge_server", self.server.clone()),
            ("merge_address", self.address.to_string()),
        ]
    }
}

/// RFC 3339 in UTC with milliseconds: `2026-11-24T22:00:00.250Z`.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// How a resource's start or stop went, as the pool measured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpTime {
    pub op: AgentOp,
    pub epoch: Epoch,
    /// When it was asked for (wall clock).
    pub asked_at: SystemTime,
    /// From asked to done: the wait behind the resource's earlier operations and for a free
    /// permit, every attempt and backoff, and for a start the wait until it was ready.
    pub took: Duration,
    /// Starts with a `ready_timeout`: from the successful `start`'s exit to the first
    /// `monitor` that said running.
    pub ready_after: Option<Duration>,
    /// Attempts made (1 for a stop).
    pub attempts: u32,
    pub ok: bool,
    /// Starts after a takeover: the instant it was told to cover from.
    pub cover_from: Option<SystemTime>,
    /// Starts: it superseded a standby this node had prepared.
    pub from_standby: bool,
    /// Starts from a standby: when that standby was ready (its `standby` succeeded). What it
    /// kept begins no earlier: a warm standby, opened once the home server missed heartbeats,
    /// may be ready after `cover_from`.
    pub standby_ready: Option<SystemTime>,
}

impl OpTime {
    /// When it was done (wall clock): asked for, plus what it took.
    pub fn done_at(&self) -> SystemTime {
        self.asked_at + self.took
    }
}

/// Runs the agents of this node's resources; see the module docs. `start`, `stop`, `standby`,
/// `release` and `merge` never block: they queue the operation and return.
pub struct AgentPool {
    shared: Arc<Shared>,
    backoff: Backoff,
    workers: Mutex<HashMap<ResourceIdx, mpsc::UnboundedSender<Job>>>,
    tracker: TaskTracker,
    /// The runtime the workers run on: the one the pool was made in.
    runtime: Option<tokio::runtime::Handle>,
}

/// What every worker uses.
struct Shared {
    site: Arc<Site>,
    node: ServerIdx,
    reports: mpsc::Sender<AgentReport>,
    metrics: Arc<dyn OpCounter>,
    cancel: CancellationToken,
    /// Starts and standbys.
    permits: Semaphore,
    stop_permits: Semaphore,
    monitor_permits: Semaphore,
    merge_permits: Semaphore,
    agents: Agents,
    /// The last start and the last stop of each resource.
    last: Mutex<HashMap<(ResourceIdx, Op), OpTime>>,
    /// Operations the node could not run are logged at this rate.
    exhausted_log: LogLimiter,
    /// Operations asked for and not done yet (merges and monitors aside).
    pending: watch::Sender<usize>,
    /// Merges running or waiting.
    merging: watch::Sender<usize>,
    /// Hot standbys prepared now, with the epoch they were asked at.
    prepared: Mutex<HashMap<ResourceIdx, Epoch>>,
    /// Where the ids of the prepared hot standbys are kept, for the next run to release what a
    /// crash left.
    standby_file: Option<std::path::PathBuf>,
    /// An agent without `standby` or `merge` was logged (once per node).
    told_unimplemented: [AtomicBool; 2],
}

impl AgentPool {
    /// A pool for `node`'s agents that sends its reports to `reports` and runs at most
    /// `concurrency` starts (and standbys) at once, as many stops and as many monitors, and a
    /// quarter as many merges (each at least 1). Nothing runs until the first operation.
    pub fn new(
        site: Arc<Site>,
        node: ServerIdx,
        reports: mpsc::Sender<AgentReport>,
        metrics: Arc<dyn OpCounter>,
        cancel: CancellationToken,
        concurrency: usize,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                site,
                node,
                reports,
                metrics,
                cancel,
                permits: Semaphore::new(concurrency.clamp(1, Semaphore::MAX_PERMITS)),
                stop_permits: Semaphore::new(concurrency.clamp(1, Semaphore::MAX_PERMITS)),
                monitor_permits: Semaphore::new(concurrency.clamp(1, Semaphore::MAX_PERMITS)),
                merge_permits: Semaphore::new((concurrency / 4).clamp(1, Semaphore::MAX_PERMITS)),
                agents: Agents::new(),
                last: Mutex::new(HashMap::new()),
                exhausted_log: LogLimiter::new(),
                pending: watch::Sender::new(0),
                merging: watch::Sender::new(0),
                prepared: Mutex::new(HashMap::new()),
                standby_file: None,
                told_unimplemented: [AtomicBool::new(false), AtomicBool::new(false)],
            }),
            backoff: START_BACKOFF,
            workers: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// Keeps the ids of the prepared hot standbys in `file` (one per line), and releases the
    /// ones an earlier run left there (it died with them prepared), unless `keep` says the
    /// resource is this node's now (a start will take it over). Call before anything else.
    pub fn with_standby_file(
        mut self,
        file: std::path::PathBuf,
        keep: impl Fn(ResourceIdx) -> bool,
    ) -> Self {
        let left = std::fs::read_to_string(&file).unwrap_or_default();
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.standby_file = Some(file);
        }
        for id in left.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let Some(i) = self.shared.site.resources.iter().position(|r| r.id == id) else {
                continue;
            };
            let r = ResourceIdx(i as u32);
            if keep(r) {
                continue;
            }
            info!(resource = %id, "Releasing the hot standby an earlier run left.");
            self.ask(r, JobKind::Leftover, 0);
        }
        self
    }

    /// Uses `backoff` between start attempts (for resources whose worker does not exist yet).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Starts `resource` at `epoch`, after the operations already asked for it.
    pub fn start(&self, resource: ResourceIdx, epoch: Epoch) {
        self.start_covering(resource, epoch, None);
    }

    /// Starts `resource` at `epoch` after a takeover: the agent must cover from `cover_from`
    /// (`BUDDYGATE_COVER_FROM`); a hot standby keeps what it buffered since.
    pub fn start_covering(
        &self,
        resource: ResourceIdx,
        epoch: Epoch,
        cover_from: Option<SystemTime>,
    ) {
        self.ask(resource, JobKind::Start { cover_from }, epoch);
    }

    /// Stops `resource` at `epoch`, after the operations already asked for it.
    pub fn stop(&self, resource: ResourceIdx, epoch: Epoch) {
        self.ask(resource, JobKind::Stop, epoch);
    }

    /// Prepares `resource` in hot standby (its home server runs it at `epoch`), after the
    /// operations already asked for it. Never reported to the core.
    pub fn standby(&self, resource: ResourceIdx, epoch: Epoch) {
        self.ask(resource, JobKind::Standby, epoch);
    }

    /// Releases the hot standby of `resource` (a `stop`, when one was prepared), after the
    /// operations already asked for it. Never reported to the core.
    pub fn release(&self, resource: ResourceIdx, epoch: Epoch) {
        self.ask(resource, JobKind::Release, epoch);
    }

    /// Releases every hot standby prepared now (a node that stops).
    pub fn release_all(&self) {
        let prepared: Vec<(ResourceIdx, Epoch)> = self
            .shared
            .prepared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(&r, &e)| (r, e))
            .collect();
        for (r, epoch) in prepared {
            self.release(r, epoch);
        }
    }

    /// Resources in hot standby now (their `standby` succeeded and was not released).
    pub fn standing_by(&self) -> Vec<ResourceIdx> {
        let prepared = self
            .shared
            .prepared
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut rs: Vec<ResourceIdx> = prepared.keys().copied().collect();
        rs.sort_by_key(|r| r.0);
        rs
    }

    /// After a failback at `epoch`: runs `merge` for each interval a buddy recorded `resource`
    /// (one call per interval, in order), beside the resource's other operations. Never
    /// reported to the core; failures are logged and counted.
    pub fn merge(&self, resource: ResourceIdx, epoch: Epoch, intervals: Vec<MergeInterval>) {
        if intervals.is_empty() || self.shared.cancel.is_cancelled() {
            return;
        }
        if self.shared.resource(resource).is_none() {
            warn!(
                resource = resource.0,
                epoch, "No such resource in the site; no merge."
            );
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let ctx = Ctx {
            shared: self.shared.clone(),
            resource,
            backoff: self.backoff.clone(),
        };
        self.shared.merging.send_modify(|n| *n += 1);
        self.tracker.spawn(async move {
            ctx.merge(epoch, intervals).await;
            ctx.shared.merging.send_modify(|n| *n = n.saturating_sub(1));
        });
    }

    /// Waits until no merge runs or waits.
    pub async fn wait_merges(&self) {
        let mut merging = self.shared.merging.subscribe();
        let _ = merging.wait_for(|&n| n == 0).await;
    }

    /// Waits until every start, stop, standby and release asked for so far is done (monitors
    /// and merges aside); at once when there is none.
    pub async fn idle(&self) {
        let mut pending = self.shared.pending.subscribe();
        let _ = pending.wait_for(|&n| n == 0).await;
    }

    /// How the last `op` (a start or a stop) of `resource` went; `None` before one finished.
    pub fn last_op(&self, resource: ResourceIdx, op: AgentOp) -> Option<OpTime> {
        let last = self
            .shared
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        last.get(&(resource, Op::from(op))).copied()
    }

    /// Every resource's last start and last stop, in one look.
    pub fn last_ops(&self) -> HashMap<ResourceIdx, (Option<OpTime>, Option<OpTime>)> {
        let last = self
            .shared
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut all: HashMap<ResourceIdx, (Option<OpTime>, Option<OpTime>)> = HashMap::new();
        for (&(r, op), &time) in last.iter() {
            let entry = all.entry(r).or_default();
            match op {
                Op::Start => entry.0 = Some(time),
                _ => entry.1 = Some(time),
            }
        }
        all
    }

    /// Waits until every worker has ended; they end when the pool's token is cancelled (or
    /// the pool is dropped).
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    fn ask(&self, resource: ResourceIdx, kind: JobKind, epoch: Epoch) {
        let op = kind.op();
        let job = Job {
            kind,
            epoch,
            asked: tokio::time::Instant::now(),
            asked_at: SystemTime::now(),
        };
        let Some(id) = self.shared.resource(resource).map(|r| r.id.as_str()) else {
            warn!(resource = resource.0, epoch, op = %op, "No such resource in the site; ignoring the operation.");
            return;
        };
        if self.shared.cancel.is_cancelled() {
            debug!(resource = %id, epoch, op = %op, "Agent pool is shut down; ignoring the operation.");
            return;
        }
        // Workers run on the runtime the pool was made in, whoever asks (the failover core
        // runs on a thread of its own).
        let Some(runtime) = self
            .runtime
            .clone()
            .or_else(|| tokio::runtime::Handle::try_current().ok())
        else {
            warn!(resource = %id, epoch, op = %op, "Agent operation asked outside the runtime; ignoring it.");
            return;
        };
        let mut workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        let sender = match workers.entry(resource) {
            Entry::Occupied(e) if !e.get().is_closed() => e.into_mut(),
            entry => {
                let (tx, rx) = mpsc::unbounded_channel();
                let worker = Worker {
                    ctx: Ctx {
                        shared: self.shared.clone(),
                        resource,
                        backoff: self.backoff.clone(),
                    },
                    jobs: rx,
                    prepared: false,
                    prepared_at: None,
                    standby_retry: None,
                };
                self.tracker.spawn_on(worker.run(), &runtime);
                match entry {
                    Entry::Occupied(mut e) => {
                        e.insert(tx);
                        e.into_mut()
                    }
                    Entry::Vacant(e) => e.insert(tx),
                }
            }
        };
        // Counted before it is sent: the worker may finish it before `send` returns (and a
        // count taken after would never come back to 0). Fails only when the worker has
        // ended, that is after cancellation.
        self.shared.pending.send_modify(|n| *n += 1);
        if sender.send(job).is_err() {
            self.shared
                .pending
                .send_modify(|n| *n = n.saturating_sub(1));
        }
    }
}

impl JobKind {
    /// The agent operation it runs.
    fn op(self) -> Op {
        match self {
            JobKind::Start { .. } => Op::Start,
            JobKind::Stop | JobKind::Release | JobKind::Leftover => Op::Stop,
            JobKind::Standby => Op::Standby,
        }
    }
}

impl Shared {
    fn resource(&self, r: ResourceIdx) -> Option<&Resource> {
        self.site.resources.get(usize::try_from(r.0).ok()?)
    }
}

mod worker;
use worker::{Ctx, Worker};

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
    /// Starts: it superseded a hot standby this node had prepared.
    pub from_standby: bool,
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
        // Fails only when the worker has ended, that is after cancellation.
        if sender.send(job).is_ok() {
            self.shared.pending.send_modify(|n| *n += 1);
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

/// One resource's worker: its jobs in order, then its monitor loop.
struct Worker {
    ctx: Ctx,
    jobs: mpsc::UnboundedReceiver<Job>,
    /// A hot standby was prepared (or its `standby` failed and may have left something): a
    /// release stops it, a start supersedes it.
    prepared: bool,
    /// A failed standby: when to try again, and how many attempts were made.
    standby_retry: Option<(tokio::time::Instant, u32, Job)>,
}

/// The worker's resource and what it runs operations with; apart from `jobs`, so that a
/// monitor can run while the worker listens for the next job.
struct Ctx {
    shared: Arc<Shared>,
    resource: ResourceIdx,
    backoff: Backoff,
}

impl Worker {
    async fn run(mut self) {
        let mut next = None;
        loop {
            let job = match next.take() {
                Some(job) => job,
                None => match self.next_job().await {
                    Some(job) => job,
                    None => return,
                },
            };
            let running = match job.kind {
                JobKind::Start { .. } => {
                    let from_standby = self.superseded();
                    self.ctx.start(&job, from_standby).await
                }
                JobKind::Stop => {
                    self.superseded();
                    self.ctx.stop(&job).await.map(|()| false)
                }
                JobKind::Standby => self.standby(job, 1).await.map(|()| false),
                JobKind::Release => self.release(&job).await.map(|()| false),
                JobKind::Leftover => {
                    self.prepared = true;
                    self.release(&job).await.map(|()| false)
                }
            };
            self.ctx
                .shared
                .pending
                .send_modify(|n| *n = n.saturating_sub(1));
            match running {
                None => return,
                Some(true) => next = self.monitor(job.epoch).await,
                Some(false) => {}
            }
        }
    }

    /// The next job; meanwhile a failed standby is tried again when its time comes. `None` on
    /// shutdown.
    async fn next_job(&mut self) -> Option<Job> {
        loop {
            let cancel = self.ctx.shared.cancel.clone();
            let Some((at, attempt, job)) = self.standby_retry else {
                return cancel.run_until_cancelled(self.jobs.recv()).await?;
            };
            tokio::select! {
                biased;
                () = cancel.cancelled() => return None,
                job = self.jobs.recv() => return job,
                () = tokio::time::sleep_until(at) => {}
            }
            self.standby_retry = None;
            // Not asked for again: not counted as pending.
            self.ctx.shared.pending.send_modify(|n| *n += 1);
            let done = self.standby(job, attempt + 1).await;
            self.ctx
                .shared
                .pending
                .send_modify(|n| *n = n.saturating_sub(1));
            done?;
        }
    }

    /// A start or stop supersedes the hot standby: whether there was one.
    fn superseded(&mut self) -> bool {
        self.standby_retry = None;
        let was = std::mem::take(&mut self.prepared);
        if was {
            self.ctx.set_prepared(None);
        }
        was
    }

    /// Prepares the hot standby (attempt `attempt`); a failure is tried again later, an agent
    /// without `standby` is left alone. `None` on shutdown.
    async fn standby(&mut self, job: Job, attempt: u32) -> Option<()> {
        if self.prepared && self.standby_retry.is_none() && attempt == 1 {
            return Some(());
        }
        let result = self.ctx.op(Op::Standby, job.epoch).await?;
        let id = self.ctx.id().to_string();
        match result {
            Ok(()) => {
                info!(resource = %id, epoch = job.epoch, attempt, "Hot standby prepared.");
                self.prepared = true;
                self.ctx.set_prepared(Some(job.epoch));
            }
            Err(AgentError::Unimplemented(why)) => {
                self.ctx.unimplemented(Op::Standby, &why);
            }
            Err(e) => {
                // What a failed standby left is released by the next release or start.
                self.prepared = true;
                self.ctx.set_prepared(Some(job.epoch));
                if let Some(delay) = STANDBY_RETRY.delay(attempt) {
                    warn!(resource = %id, epoch = job.epoch, attempt, retry_in = ?delay, error = %e, "Hot standby failed; trying again later (a takeover would start it cold).");
                    self.standby_retry = Some((tokio::time::Instant::now() + delay, attempt, job));
                }
            }
        }
        Some(())
    }

    /// Releases the hot standby, if there is one. `None` on shutdown.
    async fn release(&mut self, job: &Job) -> Option<()> {
        self.standby_retry = None;
        if !std::mem::take(&mut self.prepared) {
            return Some(());
        }
        self.ctx.set_prepared(None);
        let result = self.ctx.op(Op::Stop, job.epoch).await?;
        match result {
            Ok(()) => {
                debug!(resource = %self.ctx.id(), epoch = job.epoch, "Hot standby released.");
            }
            Err(e) => {
                warn!(resource = %self.ctx.id(), epoch = job.epoch, error = %e, "Could not release the hot standby; it may keep running.");
            }
        }
        Some(())
    }

    /// Monitors the started resource until the next job, which it returns. `None` when
    /// monitoring ended otherwise: it is off, the resource failed (reported), or shutdown.
    async fn monitor(&mut self, epoch: Epoch) -> Option<Job> {
        let every = self.ctx.resource()?.timings.monitor_interval?;
        let cancel = self.ctx.shared.cancel.clone();
        let mut failures = 0;
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return None,
                job = self.jobs.recv() => return job,
                () = tokio::time::sleep(every) => {}
            }
            // A job abandons a monitor in flight (an exec agent is killed): monitors only look.
            let result = tokio::select! {
                biased;
                job = self.jobs.recv() => return job,
                result = self.ctx.op(Op::Monitor, epoch) => result?,
            };
            match result {
                Ok(()) => failures = 0,
                // The node could not run the monitor: nothing is known about the resource.
                Err(e) if e.is_exhausted() => {}
                Err(e) => {
                    failures += 1;
                    if failures >= MONITOR_FAILURES {
                        let id = self.ctx.id();
                        warn!(resource = %id, epoch, failures, error = %e, "Resource failed its monitors; reporting it failed.");
                        let reason = format!("monitor: {e}");
                        self.ctx
                            .report(AgentReport::MonitorFailed {
                                resource: self.ctx.resource,
                                reason,
                            })
                            .await;
                        return None;
                    }
                }
            }
        }
    }
}

impl Ctx {
    fn resource(&self) -> Option<&Resource> {
        self.shared.resource(self.resource)
    }

    fn id(&self) -> &str {
        self.resource().map_or("?", |r| r.id.as_str())
    }

    /// Starts the resource, retrying as configured, and reports the outcome. Whether it is
    /// running; `None` on shutdown. `from_standby`: it supersedes a hot standby.
    async fn start(&self, job: &Job, from_standby: bool) -> Option<bool> {
        let epoch = job.epoch;
        let timings = self.resource()?.timings;
        let cover_from = match job.kind {
            JobKind::Start { cover_from } => cover_from,
            _ => None,
        };
        let vars: Vec<(&'static str, String)> = cover_from
            .map(|t| ("cover_from", rfc3339(t)))
            .into_iter()
            .collect();
        let mut attempt: u32 = 0;
        let mut spared: u32 = 0;
        let mut ready_after = None;
        let result = loop {
            attempt += 1;
            // The start and its readiness polls are one operation: they share one permit, so
            // that a started resource is not kept waiting behind other resources' starts.
            let permit = self.permit().await?;
            let outcome = match self.run_with(Op::Start, epoch, false, &vars).await? {
                Ok(()) => match timings.ready_timeout {
                    Some(limit) => {
                        let started = tokio::time::Instant::now();
                        let ready = self.ready(epoch, limit).await?;
                        ready_after = Some(started.elapsed());
                        ready
                    }
                    None => Ok(()),
                },
                Err(e) => Err(e),
            };
            drop(permit);
            match outcome {
                Ok(()) => break Ok(()),
                Err(e) if e.is_exhausted() && spared < EXHAUSTED_RETRIES => {
                    // Not an attempt: the agent never ran.
                    spared += 1;
                    attempt -= 1;
                    let cancel = &self.shared.cancel;
                    cancel
                        .run_until_cancelled(tokio::time::sleep(EXHAUSTED_BACKOFF))
                        .await?;
                }
                Err(e) if attempt > timings.retries => break Err(e),
                Err(e) => {
                    let Some(delay) = self.backoff.delay(attempt) else {
                        break Err(e);
                    };
                    info!(resource = %self.id(), epoch, attempt, delay = ?delay, error = %e, "Start failed; trying again.");
                    let cancel = &self.shared.cancel;
                    cancel
                        .run_until_cancelled(tokio::time::sleep(delay))
                        .await?;
                }
            }
        };
        let running = result.is_ok();
        let mut time = self.time(job, attempt, ready_after.filter(|_| running), running);
        time.cover_from = cover_from;
        time.from_standby = from_standby;
        self.keep(time);
        if running {
            info!(resource = %self.id(), epoch, took = ?time.took, ready_after = ?time.ready_after, attempts = attempt, from_standby, "Resource started.");
        }
        let result = result.map_err(|e| match attempt {
            1 => e.to_string(),
            n => format!("{e} (after {n} attempts)"),
        });
        self.report(AgentReport::Done {
            resource: self.resource,
            epoch,
            op: AgentOp::Start,
            result,
        })
        .await;
        Some(running)
    }

    /// Polls `monitor` until it reports the started resource running: at once, then after
    /// 25 ms, waits doubling up to 400 ms, the last one at `limit` after the first. `None` on
    /// shutdown.
    async fn ready(&self, epoch: Epoch, limit: Duration) -> Option<Result<(), AgentError>> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut wait = READY_POLL_FIRST;
        loop {
            let last = match self.run(Op::Monitor, epoch, true).await? {
                Ok(()) => return Some(Ok(())),
                Err(e) => e.to_string(),
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Some(Err(AgentError::NotReady {
                    timeout: limit,
                    last,
                }));
            }
            debug!(resource = %self.id(), epoch, monitor = %last, "Started; not ready yet.");
            let next = (now + wait).min(deadline);
            let cancel = &self.shared.cancel;
            cancel
                .run_until_cancelled(tokio::time::sleep_until(next))
                .await?;
            wait = (wait * 2).min(READY_POLL_MAX);
        }
    }

    /// Stops the resource and reports the outcome; `None` on shutdown. A stop the node could
    /// not run is tried again first (up to [`EXHAUSTED_RETRIES`] times).
    async fn stop(&self, job: &Job) -> Option<()> {
        let mut result = self.op(Op::Stop, job.epoch).await?;
        let mut spared = 0;
        while result.as_ref().is_err_and(AgentError::is_exhausted) && spared < EXHAUSTED_RETRIES {
            spared += 1;
            let cancel = &self.shared.cancel;
            cancel
                .run_until_cancelled(tokio::time::sleep(EXHAUSTED_BACKOFF))
                .await?;
            result = self.op(Op::Stop, job.epoch).await?;
        }
        let time = self.time(job, 1, None, result.is_ok());
        self.keep(time);
        debug!(resource = %self.id(), epoch = job.epoch, took = ?time.took, "Stop done.");
        self.report(AgentReport::Done {
            resource: self.resource,
            epoch: job.epoch,
            op: AgentOp::Stop,
            result: result.map_err(|e| e.to_string()),
        })
        .await;
        Some(())
    }

    /// How `job` (a start or a stop) went.
    fn time(&self, job: &Job, attempts: u32, ready_after: Option<Duration>, ok: bool) -> OpTime {
        let op = match job.kind {
            JobKind::Start { .. } => AgentOp::Start,
            _ => AgentOp::Stop,
        };
        OpTime {
            op,
            epoch: job.epoch,
            asked_at: job.asked_at,
            took: job.asked.elapsed(),
            ready_after,
            attempts,
            ok,
            cover_from: None,
            from_standby: false,
        }
    }

    /// Keeps `time` as the resource's last start or stop.
    fn keep(&self, time: OpTime) {
        let mut last = self
            .shared
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        last.insert((self.resource, Op::from(time.op)), time);
    }

    /// Notes the resource's hot standby as prepared (at `epoch`) or not.
    fn set_prepared(&self, epoch: Option<Epoch>) {
        let mut prepared = self
            .shared
            .prepared
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let changed = match epoch {
            Some(e) => prepared.insert(self.resource, e).is_none(),
            None => prepared.remove(&self.resource).is_some(),
        };
        if let (true, Some(file)) = (changed, &self.shared.standby_file) {
            let mut ids: Vec<&str> = prepared
                .keys()
                .filter_map(|r| self.shared.resource(*r).map(|r| r.id.as_str()))
                .collect();
            ids.sort_unstable();
            let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
            let tmp = file.with_extension("tmp");
            let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, file));
            if let Err(e) = written {
                debug!(file = %file.display(), error = %e, "Cannot note the hot standbys.");
            }
        }
    }

    /// Logs, once per node and operation, that an agent does without an optional operation.
    fn unimplemented(&self, op: Op, why: &str) {
        let i = usize::from(op == Op::Merge);
        let told = &self.shared.told_unimplemented[i];
        if !told.swap(true, Ordering::Relaxed) {
            info!(resource = %self.id(), op = %op, detail = %why, "This agent does not implement the operation; skipping it (logged once).");
        } else {
            debug!(resource = %self.id(), op = %op, "Agent does not implement the operation.");
        }
    }

    /// Runs `merge` for each interval in turn, each retried like a start; an agent without
    /// `merge` ends it.
    async fn merge(&self, epoch: Epoch, intervals: Vec<MergeInterval>) {
        let Some(retries) = self.resource().map(|r| r.timings.retries) else {
            return;
        };
        for interval in intervals {
            let vars = interval.vars();
            let mut attempt = 0;
            let result = loop {
                attempt += 1;
                let Some(permit) = self.permit_for(Op::Merge).await else {
                    return;
                };
                let Some(result) = self.run_with(Op::Merge, epoch, false, &vars).await else {
                    return;
                };
                drop(permit);
                match result {
                    Err(e) if attempt <= retries && !matches!(e, AgentError::Unimplemented(_)) => {
                        let Some(delay) = self.backoff.delay(attempt) else {
                            break Err(e);
                        };
                        let cancel = &self.shared.cancel;
                        if cancel
                            .run_until_cancelled(tokio::time::sleep(delay))
                            .await
                            .is_none()
                        {
                            return;
                        }
                    }
                    other => break other,
                }
            };
            let (from, to) = (rfc3339(interval.from), rfc3339(interval.to));
            match result {
                Ok(()) => {
                    info!(resource = %self.id(), epoch, server = %interval.server, %from, %to, "Merged what the buddy recorded.");
                }
                Err(AgentError::Unimplemented(why)) => {
                    self.unimplemented(Op::Merge, &why);
                    return;
                }
                Err(e) => {
                    warn!(resource = %self.id(), epoch, server = %interval.server, %from, %to, attempts = attempt, error = %e, "Merge failed; that footage stays on the buddy.");
                }
            }
        }
    }

    /// A permit to run starts (and standbys); `None` on shutdown.
    async fn permit(&self) -> Option<SemaphorePermit<'_>> {
        self.permit_for(Op::Start).await
    }

    /// A permit to run `op`: starts and standbys, stops, monitors and merges each have their
    /// own. `None` on shutdown.
    async fn permit_for(&self, op: Op) -> Option<SemaphorePermit<'_>> {
        let shared = &self.shared;
        let permits = match op {
            Op::Start | Op::Standby => &shared.permits,
            Op::Stop => &shared.stop_permits,
            Op::Monitor => &shared.monitor_permits,
            Op::Merge => &shared.merge_permits,
        };
        shared
            .cancel
            .run_until_cancelled(permits.acquire())
            .await?
            .ok()
    }

    /// One attempt at `op`, once a permit is free; counted and logged. `None` on shutdown.
    async fn op(&self, op: Op, epoch: Epoch) -> Option<Result<(), AgentError>> {
        let _permit = self.permit_for(op).await?;
        self.run(op, epoch, false).await
    }

    /// One attempt at `op` under a permit the caller holds; counted and logged (a `polling`
    /// monitor's failure only at debug level: readiness polls expect "not running" at first).
    /// `None` on shutdown.
    async fn run(&self, op: Op, epoch: Epoch, polling: bool) -> Option<Result<(), AgentError>> {
        self.run_with(op, epoch, polling, &[]).await
    }

    /// [`Ctx::run`] with the operation's own variables (`cover_from`, `merge_*`).
    async fn run_with(
        &self,
        op: Op,
        epoch: Epoch,
        polling: bool,
        vars: &[(&'static str, String)],
    ) -> Option<Result<(), AgentError>> {
        let shared = &self.shared;
        let resource = self.resource()?;
        let mut env = match ResourceEnv::new(&shared.site, shared.node, self.resource, epoch) {
            Ok(env) => env,
            Err(e) => {
                warn!(resource = %resource.id, epoch, op = %op, node = shared.node.0, error = %e, "Cannot prepare the agent's environment; the operation fails.");
                return Some(Err(e));
            }
        };
        env.op_vars = vars.to_vec();
        let timeout = match op {
            Op::Merge => resource.timings.merge_timeout,
            _ => resource.timings.timeout,
        };
        let began = tokio::time::Instant::now();
        let result = shared
            .cancel
            .run_until_cancelled(shared.agents.run(&resource.agent, &env, op, timeout))
            .await?;
        let took = began.elapsed();
        let outcome = match &result {
            Ok(()) => "ok",
            Err(e) => e.outcome(),
        };
        shared.metrics.agent_op(op.as_str(), outcome);
        match (&result, op) {
            (Ok(()), Op::Monitor) => {
                debug!(resource = %resource.id, epoch, op = %op, took = ?took, "Resource is running.");
            }
            (Ok(()), _) => {
                info!(resource = %resource.id, epoch, op = %op, took = ?took, "Agent operation succeeded.");
            }
            (Err(e), _) if e.is_exhausted() => {
                if let Some(suppressed) = shared.exhausted_log.allow("agent_exhausted") {
                    warn!(resource = %resource.id, epoch, op = %op, error = %e, suppressed, "The node cannot run agents (out of file descriptors, processes or memory); the operation is retried, and is not held against the resource.");
                }
            }
            (Err(AgentError::Unimplemented(_)), _) => {
                debug!(resource = %resource.id, epoch, op = %op, "Not implemented by the agent.");
            }
            (Err(e), _) if polling => {
                debug!(resource = %resource.id, epoch, op = %op, took = ?took, error = %e, "Agent operation failed.");
            }
            (Err(e), _) => {
                warn!(resource = %resource.id, epoch, op = %op, took = ?took, error = %e, "Agent operation failed.");
            }
        }
        Some(result)
    }

    async fn report(&self, report: AgentReport) {
        let shared = &self.shared;
        let sent = shared
            .cancel
            .run_until_cancelled(shared.reports.send(report))
            .await;
        if let Some(Err(_)) = sent {
            debug!(resource = %self.id(), "Nobody takes agent reports any more; dropping one.");
        }
    }
}

//! The [`AgentPool`]: runs the starts and stops the failover core asks for, and reports back.
//!
//! - One worker task per resource, created on its first operation, runs that resource's
//!   operations one after another in the order they were asked for: a stop asked while a start
//!   runs waits for it.
//! - Different resources run in parallel; a semaphore bounds how many operations (starts,
//!   stops and monitors) run at once.
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
//! - Everything ends when the pool's cancellation token is cancelled.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::{Semaphore, SemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::{AgentError, Agents, Op, ResourceEnv};
use crate::backoff::{Backoff, Jitter};
use crate::config::{Resource, ResourceIdx, ServerIdx, Site};
use crate::failover::{AgentOp, Epoch, Input};
use crate::ratelimit::LogLimiter;

/// Operations that run at once unless the runtime says otherwise.
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

/// Where the pool counts the operations it ran (the runtime's metrics).
pub trait OpCounter: Send + Sync {
    /// One more `op` (`start`, `stop`, `monitor`) that ended with `outcome` (`ok`, `failed`,
    /// `timeout`, `exhausted`: the node could not run it).
    fn agent_op(&self, op: &'static str, outcome: &'static str);
}

/// A start or stop asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Job {
    op: AgentOp,
    epoch: Epoch,
    /// When it was asked for.
    asked: tokio::time::Instant,
    asked_at: SystemTime,
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
}

/// Runs the agents of this node's resources; see the module docs. `start` and `stop` never
/// block: they queue the operation and return.
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
    permits: Semaphore,
    agents: Agents,
    /// The last start and the last stop of each resource.
    last: Mutex<HashMap<(ResourceIdx, Op), OpTime>>,
    /// Operations the node could not run are logged at this rate.
    exhausted_log: LogLimiter,
}

impl AgentPool {
    /// A pool for `node`'s agents that sends its reports to `reports` and runs at most
    /// `concurrency` operations at once (at least 1). Nothing runs until the first `start`.
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
                agents: Agents::new(),
                last: Mutex::new(HashMap::new()),
                exhausted_log: LogLimiter::new(),
            }),
            backoff: START_BACKOFF,
            workers: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// Uses `backoff` between start attempts (for resources whose worker does not exist yet).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Starts `resource` at `epoch`, after the operations already asked for it.
    pub fn start(&self, resource: ResourceIdx, epoch: Epoch) {
        self.ask(resource, AgentOp::Start, epoch);
    }

    /// Stops `resource` at `epoch`, after the operations already asked for it.
    pub fn stop(&self, resource: ResourceIdx, epoch: Epoch) {
        self.ask(resource, AgentOp::Stop, epoch);
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

    /// Waits until every worker has ended; they end when the pool's token is cancelled (or
    /// the pool is dropped).
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    fn ask(&self, resource: ResourceIdx, op: AgentOp, epoch: Epoch) {
        let job = Job {
            op,
            epoch,
            asked: tokio::time::Instant::now(),
            asked_at: SystemTime::now(),
        };
        let Some(id) = self.shared.resource(resource).map(|r| r.id.as_str()) else {
            warn!(resource = resource.0, epoch, op = %Op::from(op), "No such resource in the site; ignoring the operation.");
            return;
        };
        if self.shared.cancel.is_cancelled() {
            debug!(resource = %id, epoch, op = %Op::from(op), "Agent pool is shut down; ignoring the operation.");
            return;
        }
        // Workers run on the runtime the pool was made in, whoever asks (the failover core
        // runs on a thread of its own).
        let Some(runtime) = self
            .runtime
            .clone()
            .or_else(|| tokio::runtime::Handle::try_current().ok())
        else {
            warn!(resource = %id, epoch, op = %Op::from(op), "Agent operation asked outside the runtime; ignoring it.");
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
        let _ = sender.send(job);
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
                None => match self
                    .ctx
                    .shared
                    .cancel
                    .run_until_cancelled(self.jobs.recv())
                    .await
                {
                    Some(Some(job)) => job,
                    _ => return,
                },
            };
            let running = match job.op {
                AgentOp::Start => self.ctx.start(&job).await,
                AgentOp::Stop => self.ctx.stop(&job).await.map(|()| false),
            };
            match running {
                None => return,
                Some(true) => next = self.monitor(job.epoch).await,
                Some(false) => {}
            }
        }
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
    /// running; `None` on shutdown.
    async fn start(&self, job: &Job) -> Option<bool> {
        let epoch = job.epoch;
        let timings = self.resource()?.timings;
        let mut attempt: u32 = 0;
        let mut spared: u32 = 0;
        let mut ready_after = None;
        let result = loop {
            attempt += 1;
            // The start and its readiness polls are one operation: they share one permit, so
            // that a started resource is not kept waiting behind other resources' starts.
            let permit = self.permit().await?;
            let outcome = match self.run(Op::Start, epoch, false).await? {
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
        let time = self.record(job, attempt, ready_after.filter(|_| running), running);
        if running {
            info!(resource = %self.id(), epoch, took = ?time.took, ready_after = ?time.ready_after, attempts = attempt, "Resource started.");
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
        let time = self.record(job, 1, None, result.is_ok());
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

    /// Keeps how `job` went as the resource's last start or stop.
    fn record(&self, job: &Job, attempts: u32, ready_after: Option<Duration>, ok: bool) -> OpTime {
        let time = OpTime {
            op: job.op,
            epoch: job.epoch,
            asked_at: job.asked_at,
            took: job.asked.elapsed(),
            ready_after,
            attempts,
            ok,
        };
        let mut last = self
            .shared
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        last.insert((self.resource, Op::from(job.op)), time);
        time
    }

    /// A permit to run operations; `None` on shutdown.
    async fn permit(&self) -> Option<SemaphorePermit<'_>> {
        let shared = &self.shared;
        shared
            .cancel
            .run_until_cancelled(shared.permits.acquire())
            .await?
            .ok()
    }

    /// One attempt at `op`, once a permit is free; counted and logged. `None` on shutdown.
    async fn op(&self, op: Op, epoch: Epoch) -> Option<Result<(), AgentError>> {
        let _permit = self.permit().await?;
        self.run(op, epoch, false).await
    }

    /// One attempt at `op` under a permit the caller holds; counted and logged (a `polling`
    /// monitor's failure only at debug level: readiness polls expect "not running" at first).
    /// `None` on shutdown.
    async fn run(&self, op: Op, epoch: Epoch, polling: bool) -> Option<Result<(), AgentError>> {
        let shared = &self.shared;
        let resource = self.resource()?;
        let env = match ResourceEnv::new(&shared.site, shared.node, self.resource, epoch) {
            Ok(env) => env,
            Err(e) => {
                warn!(resource = %resource.id, epoch, op = %op, node = shared.node.0, error = %e, "Cannot prepare the agent's environment; the operation fails.");
                return Some(Err(e));
            }
        };
        let began = tokio::time::Instant::now();
        let result = shared
            .cancel
            .run_until_cancelled(shared.agents.run(
                &resource.agent,
                &env,
                op,
                resource.timings.timeout,
            ))
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

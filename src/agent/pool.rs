//! The [`AgentPool`]: runs the starts and stops the failover core asks for, and reports back.
//!
//! - One worker task per resource, created on its first operation, runs that resource's
//!   operations one after another in the order they were asked for: a stop asked while a start
//!   runs waits for it.
//! - Different resources run in parallel; a semaphore bounds how many operations (starts,
//!   stops and monitors) run at once.
//! - A failed start is tried again `retries` times, after an exponential [`Backoff`].
//! - A started resource is monitored every `monitor_interval` until its next operation; two
//!   failed monitors in a row are reported as [`AgentReport::MonitorFailed`], and monitoring
//!   stops.
//! - Everything ends when the pool's cancellation token is cancelled.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::{AgentError, Agents, Op, ResourceEnv};
use crate::config::{Resource, ResourceIdx, ServerIdx, Site};
use crate::failover::{AgentOp, Epoch, Input};
use crate::runtime::state::Metrics;

/// Operations that run at once unless the runtime says otherwise.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// Failed monitors in a row that fail the resource.
const MONITOR_FAILURES: u32 = 2;

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

/// The wait before each retry of a failed start: `first`, doubling each time, at most `max`;
/// with `jitter`, a random 50% to 100% of that, so that many resources that failed together do
/// not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    pub jitter: bool,
}

impl Default for Backoff {
    /// 100ms, 200ms, 400ms ... at most 5s, with jitter.
    fn default() -> Self {
        Self {
            first: Duration::from_millis(100),
            max: Duration::from_secs(5),
            jitter: true,
        }
    }
}

impl Backoff {
    /// The wait before retry number `retry` (1 for the first).
    pub fn delay(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        let full = self.first.saturating_mul(1 << doublings).min(self.max);
        if self.jitter {
            full.mul_f64(0.5 + fastrand::f64() / 2.0)
        } else {
            full
        }
    }
}

/// A start or stop asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Job {
    op: AgentOp,
    epoch: Epoch,
}

/// Runs the agents of this node's resources; see the module docs. `start` and `stop` never
/// block: they queue the operation and return.
pub struct AgentPool {
    shared: Arc<Shared>,
    backoff: Backoff,
    workers: Mutex<HashMap<ResourceIdx, mpsc::UnboundedSender<Job>>>,
    tracker: TaskTracker,
}

/// What every worker uses.
struct Shared {
    site: Arc<Site>,
    node: ServerIdx,
    reports: mpsc::Sender<AgentReport>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    permits: Semaphore,
    agents: Agents,
}

impl AgentPool {
    /// A pool for `node`'s agents that sends its reports to `reports` and runs at most
    /// `concurrency` operations at once (at least 1). Nothing runs until the first `start`.
    pub fn new(
        site: Arc<Site>,
        node: ServerIdx,
        reports: mpsc::Sender<AgentReport>,
        metrics: Arc<Metrics>,
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
            }),
            backoff: Backoff::default(),
            workers: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
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

    /// Waits until every worker has ended; they end when the pool's token is cancelled (or
    /// the pool is dropped).
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    fn ask(&self, resource: ResourceIdx, op: AgentOp, epoch: Epoch) {
        let job = Job { op, epoch };
        let Some(id) = self.shared.resource(resource).map(|r| r.id.as_str()) else {
            warn!(resource = resource.0, epoch, op = %Op::from(op), "No such resource in the site; ignoring the operation.");
            return;
        };
        if self.shared.cancel.is_cancelled() {
            debug!(resource = %id, epoch, op = %Op::from(op), "Agent pool is shut down; ignoring the operation.");
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            warn!(resource = %id, epoch, op = %Op::from(op), "Agent operation asked outside the runtime; ignoring it.");
            return;
        }
        let mut workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        let sender = match workers.entry(resource) {
            Entry::Occupied(e) if !e.get().is_closed() => e.into_mut(),
            entry => {
                let (tx, rx) = mpsc::unbounded_channel();
                let worker = Worker {
                    ctx: Ctx {
                        shared: self.shared.clone(),
                        resource,
                        backoff: self.backoff,
                    },
                    jobs: rx,
                };
                self.tracker.spawn(worker.run());
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
                AgentOp::Start => self.ctx.start(job.epoch).await,
                AgentOp::Stop => self.ctx.stop(job.epoch).await.map(|()| false),
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
    async fn start(&self, epoch: Epoch) -> Option<bool> {
        let retries = self.resource()?.timings.retries;
        let mut attempt: u32 = 0;
        let result = loop {
            attempt += 1;
            match self.op(Op::Start, epoch).await? {
                Ok(()) => break Ok(()),
                Err(e) if attempt > retries => break Err(e),
                Err(e) => {
                    let delay = self.backoff.delay(attempt);
                    info!(resource = %self.id(), epoch, attempt, delay = ?delay, error = %e, "Start failed; trying again.");
                    let cancel = &self.shared.cancel;
                    cancel
                        .run_until_cancelled(tokio::time::sleep(delay))
                        .await?;
                }
            }
        };
        let running = result.is_ok();
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

    /// Stops the resource and reports the outcome; `None` on shutdown.
    async fn stop(&self, epoch: Epoch) -> Option<()> {
        let result = self.op(Op::Stop, epoch).await?;
        self.report(AgentReport::Done {
            resource: self.resource,
            epoch,
            op: AgentOp::Stop,
            result: result.map_err(|e| e.to_string()),
        })
        .await;
        Some(())
    }

    /// One attempt at `op`, once a permit is free; counted and logged. `None` on shutdown.
    async fn op(&self, op: Op, epoch: Epoch) -> Option<Result<(), AgentError>> {
        let shared = &self.shared;
        let resource = self.resource()?;
        let env = match ResourceEnv::new(&shared.site, shared.node, self.resource, epoch) {
            Ok(env) => env,
            Err(e) => {
                warn!(resource = %resource.id, epoch, op = %op, node = shared.node.0, error = %e, "Cannot prepare the agent's environment; the operation fails.");
                return Some(Err(e));
            }
        };
        let _permit = shared
            .cancel
            .run_until_cancelled(shared.permits.acquire())
            .await?
            .ok()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_max_and_jitters_within_half() {
        let fixed = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_millis(700),
            jitter: false,
        };
        let delays: Vec<u128> = (1..=5).map(|n| fixed.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 700, 700]);
        assert_eq!(fixed.delay(u32::MAX), Duration::from_millis(700));
        let jittered = Backoff {
            jitter: true,
            ..fixed
        };
        for n in 1..=5 {
            let d = jittered.delay(n);
            assert!(d >= fixed.delay(n) / 2 && d <= fixed.delay(n), "{d:?}");
        }
    }
}

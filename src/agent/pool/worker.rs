//! One worker per resource: runs its operations in order (start with retries and readiness,
//! stop, standby and its release, merges beside them) and monitors it between them.

use super::*;

/// One resource's worker: its jobs in order, then its monitor loop.
pub(super) struct Worker {
    pub(super) ctx: Ctx,
    pub(super) jobs: mpsc::UnboundedReceiver<Job>,
    /// A hot standby was prepared (or its `standby` failed and may have left something): a
    /// release stops it, a start supersedes it.
    pub(super) prepared: bool,
    /// When the prepared standby's `standby` succeeded (its first frame buffered).
    pub(super) prepared_at: Option<SystemTime>,
    /// A failed standby: when to try again, and how many attempts were made.
    pub(super) standby_retry: Option<(tokio::time::Instant, u32, Job)>,
}

/// The worker's resource and what it runs operations with; apart from `jobs`, so that a
/// monitor can run while the worker listens for the next job.
pub(super) struct Ctx {
    pub(super) shared: Arc<Shared>,
    pub(super) resource: ResourceIdx,
    pub(super) backoff: Backoff,
}

impl Worker {
    pub(super) async fn run(mut self) {
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
                    let standby = self.superseded();
                    self.ctx.start(&job, standby).await
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

    /// The standby a start or stop supersedes: whether there was one, and when it was ready.
    fn superseded(&mut self) -> Superseded {
        self.standby_retry = None;
        let ready_at = self.prepared_at.take();
        let was = std::mem::take(&mut self.prepared);
        if was {
            self.ctx.set_prepared(None);
        }
        Superseded { was, ready_at }
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
                info!(resource = %id, epoch = job.epoch, attempt, "Standby prepared.");
                self.prepared = true;
                self.prepared_at = Some(SystemTime::now());
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
        self.prepared_at = None;
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
    /// running; `None` on shutdown. `standby`: the standby it supersedes.
    async fn start(&self, job: &Job, standby: Superseded) -> Option<bool> {
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
        time.from_standby = standby.was;
        time.standby_ready = standby.ready_at;
        self.keep(time);
        if running {
            info!(resource = %self.id(), epoch, took = ?time.took, ready_after = ?time.ready_after, attempts = attempt, from_standby = standby.was, "Resource started.");
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
            standby_ready: None,
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
    pub(super) async fn merge(&self, epoch: Epoch, intervals: Vec<MergeInterval>) {
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

/// The standby a start supersedes.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Superseded {
    /// There was one (prepared, or its `standby` failed and may have left something).
    pub was: bool,
    /// When its `standby` succeeded.
    pub ready_at: Option<SystemTime>,
}

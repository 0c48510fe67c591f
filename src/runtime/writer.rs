//! The store writer: a thread of its own that owns the node's [`Store`]. The core hands it the
//! durable records and events of each step and goes on, so heartbeats never wait for a disk;
//! what must wait for them (agent starts and stops, rule 4) waits for its ticket. Jobs are
//! committed in order, one transaction (one fsync) each.
//!
//! When a commit fails (a full or failing disk), the writer says so once
//! ([`Report::Storage`]: the core then says it is leaving and claims nothing), answers that job
//! and every later one at once as not stored (so what waits for them goes on: starts fail,
//! stops run), and keeps what they carried in memory, in order: their records coalesced
//! ([`RecordSet`], bounded by the site's size) and their events, at most [`MAX_WAITING`] (the
//! oldest go beyond that, counted). Every [`PROBE_EVERY`] it tries to store them again: once
//! they are all stored, in order and before anything newer, it says the store is back.
//!
//! Between jobs it keeps the store bounded (retention, in batches that take about
//! [`crate::store::BATCH_BUDGET`]: a job waits for one batch at most); a second thread
//! checkpoints the WAL on a connection of its own.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::failover::Event;
use crate::store::{
    Checkpointer, Pruner, Record, RecordSet, Retention, Store, StoreError, StoredEvent,
};
use crate::view::{StoreFailure, StoreFigures};

/// What one step of the core needs stored.
pub(super) struct Job {
    pub ticket: u64,
    pub records: Vec<Record>,
    pub events: Vec<PendingEvent>,
}

/// Builds an event's CloudEvent once its sequence number is known (again, if a commit failed).
pub(super) type BuildJson = Box<dyn Fn(u64) -> String + Send>;

/// An event to store.
pub(super) struct PendingEvent {
    pub event: Event,
    pub json: BuildJson,
}

/// What the writer tells the core.
pub(super) enum Report {
    /// A job handled, in ticket order: its events as stored, or `None` when it could not be
    /// stored now (what it carried waits in memory).
    Done {
        ticket: u64,
        stored: Option<Vec<(Event, StoredEvent)>>,
    },
    /// Events that waited in memory, stored now, in order.
    Stored(Vec<(Event, StoredEvent)>),
    /// The store stopped taking writes (`Some(why)`), or takes them again (`None`).
    Storage(Option<String>),
}

/// Events kept in memory at most while the store takes no writes.
pub const MAX_WAITING: usize = 10_000;
/// How often a store that takes no writes is tried again.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How often a retention pass starts (it also starts after [`PASS_AFTER`] new events).
const PASS_EVERY: Duration = Duration::from_secs(60);
const PASS_AFTER: u64 = 10_000;
/// How often the WAL is checkpointed.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Events stored per transaction when the waiting ones are written.
const FLUSH_BATCH: usize = 512;
/// A store that failed takes writes again only once its filesystem has this much free: a
/// write that fits in the space SQLite already holds is no sign that the disk has room.
pub const MIN_FREE: u64 = 4 << 20;

/// What the writer is given.
pub(super) struct Setup {
    /// `None` when the store could not be opened: it is opened on the first probe.
    pub store: Option<Store>,
    pub dir: PathBuf,
    /// Why the store takes no writes from the start (it could not be opened or written).
    pub failing: Option<String>,
    /// Records to write first (the incarnation a node that could not write its store chose).
    pub records: Vec<Record>,
    pub retention: Retention,
    /// The connectors the node runs: their cursors hold events back.
    pub connectors: Vec<String>,
    pub figures: Arc<crate::view::Metrics>,
    /// Fault injection: wait before each commit while this file exists (a slow disk).
    pub stall: Option<PathBuf>,
}

/// Starts the writer and its checkpointer. The writer ends when every sender of jobs is
/// dropped (after a last try to store what waits), the checkpointer with it.
pub(super) fn spawn(
    setup: Setup,
) -> std::io::Result<(Sender<Job>, mpsc::UnboundedReceiver<Report>)> {
    let (jobs_tx, jobs) = std::sync::mpsc::channel::<Job>();
    let (report_tx, report_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let dir = setup.dir.clone();
    std::thread::Builder::new()
        .name("store-checkpoint".into())
        .spawn(move || checkpoints(&dir, &stop_rx))?;
    let mut w = Writer::new(setup, report_tx);
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || {
            w.run(&jobs);
            drop(stop_tx);
        })?;
    Ok((jobs_tx, report_rx))
}

/// Passive WAL checkpoints every [`CHECKPOINT_EVERY`] until `stop` is dropped.
fn checkpoints(dir: &std::path::Path, stop: &Receiver<()>) {
    let mut cp: Option<Checkpointer> = None;
    let mut warned = false;
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if cp.is_none() {
            cp = Checkpointer::open(dir).ok();
        }
        let Some(c) = &cp else { continue };
        match c.checkpoint() {
            Ok(_) => warned = false,
            Err(e) if !warned => {
                warned = true;
                debug!(error = %e, "WAL checkpoint failed; trying again.");
            }
            Err(_) => {}
        }
    }
}

struct Writer {
    store: Option<Store>,
    dir: PathBuf,
    reports: mpsc::UnboundedSender<Report>,
    metrics: Arc<crate::view::Metrics>,
    stall: Option<PathBuf>,
    /// Why the store takes no writes; `None` while it does.
    failing: Option<String>,
    next_probe: Instant,
    records: RecordSet,
    events: VecDeque<PendingEvent>,
    /// Events given up in this outage (memory bound).
    dropped: u64,
    pruner: Pruner,
    /// When the next retention pass starts, and events stored since the last one.
    next_pass: Instant,
    appended: u64,
}

impl Writer {
    fn new(s: Setup, reports: mpsc::UnboundedSender<Report>) -> Self {
        let mut records = RecordSet::default();
        for r in s.records {
            records.add(r);
        }
        let failing = s.failing.or_else(|| {
            s.store
                .is_none()
                .then(|| "the store could not be opened".to_string())
        });
        let mut w = Self {
            store: s.store,
            dir: s.dir,
            reports,
            metrics: s.figures,
            stall: s.stall,
            failing: None,
            next_probe: Instant::now() + PROBE_EVERY,
            records,
            events: VecDeque::new(),
            dropped: 0,
            pruner: Pruner::new(s.retention, s.connectors),
            next_pass: Instant::now() + Duration::from_secs(5),
            appended: 0,
        };
        if let Some(why) = failing {
            w.fail(why);
        }
        w
    }

    fn figures(&self) -> &StoreFigures {
        &self.metrics.store
    }

    fn run(&mut self, jobs: &Receiver<Job>) {
        loop {
            let wait = self.idle_wait();
            match jobs.recv_timeout(wait) {
                Ok(job) => self.on_job(job),
                Err(RecvTimeoutError::Timeout) => self.on_idle(),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        if self.failing.is_some() {
            self.probe();
        }
        let waiting = self.events.len();
        if waiting > 0 {
            error!(
                events = waiting,
                "The node stopped with events its store could not take; they are lost."
            );
        }
    }

    /// How long to wait for a job before there is something else to do.
    fn idle_wait(&self) -> Duration {
        let now = Instant::now();
        if self.failing.is_some() {
            return self.next_probe.saturating_duration_since(now);
        }
        if self.pruner.in_pass() || self.appended >= PASS_AFTER {
            return Duration::ZERO;
        }
        self.next_pass.saturating_duration_since(now)
    }

    fn on_job(&mut self, job: Job) {
        if let Some(file) = &self.stall {
            while file.exists() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if self.failing.is_some() {
            self.keep(job.records, job.events);
            self.report(Report::Done {
                ticket: job.ticket,
                stored: None,
            });
            return;
        }
        let Some(store) = self.store.as_mut() else {
            unreachable!("a writer without a store is failing");
        };
        match commit(store, &job.records, &job.events) {
            Ok(stored) => {
                self.appended += stored.len() as u64;
                let stored = job
                    .events
                    .into_iter()
                    .map(|e| e.event)
                    .zip(stored)
                    .collect();
                self.report(Report::Done {
                    ticket: job.ticket,
                    stored: Some(stored),
                });
            }
            Err(e) => {
                self.fail(e.to_string());
                self.keep(job.records, job.events);
                self.report(Report::Done {
                    ticket: job.ticket,
                    stored: None,
                });
            }
        }
    }

    fn on_idle(&mut self) {
        if self.failing.is_some() {
            if Instant::now() >= self.next_probe {
                self.probe();
            }
            return;
        }
        self.prune_once();
    }

    /// The store takes no writes: say so once.
    fn fail(&mut self, why: String) {
        self.figures()
            .write_failures
            .fetch_add(1, Ordering::Relaxed);
        if self.failing.is_some() {
            return;
        }
        error!(error = %why, "The store takes no writes: this node says it is leaving (its buddies take over) until it does again.");
        if let Ok(mut f) = self.figures().failing.lock() {
            *f = Some(StoreFailure {
                reason: why.clone(),
                since: SystemTime::now(),
            });
        }
        self.failing = Some(why.clone());
        self.next_probe = Instant::now() + PROBE_EVERY;
        self.report(Report::Storage(Some(why)));
    }

    /// Keeps what a job carried until the store takes writes again.
    fn keep(&mut self, records: Vec<Record>, events: Vec<PendingEvent>) {
        for r in records {
            self.records.add(r);
        }
        self.events.extend(events);
        let over = self.events.len().saturating_sub(MAX_WAITING);
        if over > 0 {
            if self.dropped == 0 {
                error!(
                    kept = MAX_WAITING,
                    "Too many events wait for the store: the oldest are dropped."
                );
            }
            self.events.drain(..over);
            self.dropped += over as u64;
            self.figures()
                .events_dropped_memory
                .fetch_add(over as u64, Ordering::Relaxed);
        }
        self.figures()
            .events_waiting
            .store(self.events.len() as u64, Ordering::Relaxed);
    }

    /// Tries to store what waits, in order; says the store is back once all of it is.
    fn probe(&mut self) {
        self.next_probe = Instant::now() + PROBE_EVERY;
        if crate::store::free_bytes(&self.dir).is_some_and(|free| free < MIN_FREE) {
            return;
        }
        if self.store.is_none() {
            match Store::open_for_writer(&self.dir) {
                Ok(s) => self.store = Some(s),
                Err(e) => {
                    debug!(error = %e, "The store still cannot be opened.");
                    self.figures()
                        .write_failures
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        let Some(store) = self.store.as_mut() else {
            return;
        };
        if self.records.is_empty()
            && self.events.is_empty()
            && let Err(e) = store.probe_write()
        {
            debug!(error = %e, "The store still takes no writes.");
            return;
        }
        while !self.records.is_empty() || !self.events.is_empty() {
            let n = self.events.len().min(FLUSH_BATCH);
            let records = self.records.records();
            let batch: Vec<&PendingEvent> = self.events.iter().take(n).collect();
            match commit_refs(store, &records, &batch) {
                Ok(stored) => {
                    self.records = RecordSet::default();
                    let events: Vec<Event> = self.events.drain(..n).map(|e| e.event).collect();
                    self.metrics
                        .store
                        .events_waiting
                        .store(self.events.len() as u64, Ordering::Relaxed);
                    if !stored.is_empty() {
                        let _ = self
                            .reports
                            .send(Report::Stored(events.into_iter().zip(stored).collect()));
                    }
                }
                Err(e) => {
                    debug!(error = %e, waiting = self.events.len(), "The store still takes no writes.");
                    self.metrics
                        .store
                        .write_failures
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        info!(
            dropped = self.dropped,
            "The store takes writes again: every waiting event is stored; this node comes back."
        );
        self.failing = None;
        self.dropped = 0;
        if let Ok(mut f) = self.figures().failing.lock() {
            *f = None;
        }
        self.report(Report::Storage(None));
    }

    /// One batch of retention, when a pass is due or under way.
    fn prune_once(&mut self) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        if !self.pruner.in_pass() {
            self.appended = 0;
            self.next_pass = Instant::now() + PASS_EVERY;
        }
        let figures = &self.metrics.store;
        match self.pruner.step(store, SystemTime::now()) {
            Ok((done, took)) => {
                figures.prune_batch_seconds.observe(took);
                figures
                    .events_pruned
                    .fetch_add(done.events, Ordering::Relaxed);
                if done.undelivered > 0 {
                    figures
                        .events_dropped_size
                        .fetch_add(done.undelivered, Ordering::Relaxed);
                    warn!(
                        events = done.undelivered,
                        max_size = self.pruner.policy.max_size,
                        "The store reached its size limit: events not yet delivered by every connector were deleted."
                    );
                }
                if !done.more
                    && let Ok(used) = store.used_bytes()
                {
                    figures.used_bytes.store(used, Ordering::Relaxed);
                }
            }
            // A failing disk shows on the next job; retention waits for the next pass.
            Err(e) => debug!(error = %e, "Retention batch failed."),
        }
    }

    fn report(&self, r: Report) {
        if self.reports.send(r).is_err() {
            debug!("The node stopped listening to its store writer.");
        }
    }
}

fn commit(
    store: &mut Store,
    records: &[Record],
    events: &[PendingEvent],
) -> Result<Vec<StoredEvent>, StoreError> {
    let refs: Vec<&PendingEvent> = events.iter().collect();
    commit_refs(store, records, &refs)
}

fn commit_refs(
    store: &mut Store,
    records: &[Record],
    events: &[&PendingEvent],
) -> Result<Vec<StoredEvent>, StoreError> {
    let kinds: Vec<&str> = events.iter().map(|e| e.event.type_name()).collect();
    store.commit(records, &kinds, |seq, i| (events[i].json)(seq))
}

//! The task that owns the failover core (no `Mutex` around it). Each turn it waits for one
//! input, takes every other input already waiting (datagrams read meanwhile, agent reports),
//! feeds them to the core at once and carries out the outputs:
//! - heartbeats are sent at once: nothing on this task waits for a disk;
//! - durable records and events go to the store writer as one job;
//! - agent starts and stops wait until every job handed out before them is committed, so a
//!   claim is on disk before its agent starts (rule 4), and a node whose disk is slow keeps
//!   heartbeating meanwhile;
//! - events are published once stored; the runtime's own events (a connector that cannot
//!   start, or starts at last) take the same path without going through the core;
//! - a store that takes no writes (a full disk) makes the node say it is leaving
//!   ([`Input::Storage`]): its buddies take over at once, it claims nothing, and it comes back
//!   by itself once the writer has stored what waited ([`Report::Storage`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::clock::WallClock;
use super::net::Received;
use super::records::record;
use super::writer::{Job, PendingEvent, Report};
use crate::agent::{AgentPool, AgentReport};
use crate::cloudevents::{self, Clock, Emitter};
use crate::config::{ResourceIdx, ServerIdx, Site};
use crate::connectors::StoredAt;
use crate::failover::{AgentOp, Epoch, Event, Input, Node, Output};
use crate::store::StoredEvent;
use crate::view::{AgentTimes, Command, Metrics, Snapshot};

/// Inputs taken in one turn, at most (the rest wait for the next turn).
const BATCH: usize = 1024;

/// A snapshot is published on every change, and at least this often (path ages).
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// The channels the core task reads.
pub(super) struct Inputs {
    pub heartbeats: mpsc::Receiver<Received>,
    pub queued: Arc<AtomicUsize>,
    pub agent_reports: mpsc::Receiver<AgentReport>,
    pub commands: mpsc::Receiver<Command>,
    pub witnesses: mpsc::Receiver<(usize, bool)>,
    pub stored: mpsc::UnboundedReceiver<Report>,
    /// `connector.failed` and `connector.recovered`, from the connectors' tasks.
    pub connectors: mpsc::Receiver<Event>,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Action {
    /// With the wall-clock instant a takeover must cover from.
    Start(ResourceIdx, Epoch, Option<SystemTime>),
    Stop(ResourceIdx, Epoch),
    /// Prepare (`true`) or release a hot standby; the home server's epoch.
    Standby(ResourceIdx, bool, Epoch),
}

/// Where a clean shutdown is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaving {
    No,
    /// Told the buddies; they take over until the grace period ends.
    HandingOver(Instant),
    /// Stopping what is left, until the agents are done or this instant.
    Stopping(Instant),
}

impl Leaving {
    fn until(self) -> Option<Instant> {
        match self {
            Leaving::No => None,
            Leaving::HandingOver(t) | Leaving::Stopping(t) => Some(t),
        }
    }
}

pub(super) struct Core {
    pub site: Arc<Site>,
    pub me: ServerIdx,
    pub node: Node,
    pub writer: std::sync::mpsc::Sender<Job>,
    pub sockets: Vec<Arc<UdpSocket>>,
    pub agents: Arc<AgentPool>,
    /// Where the footage is: asked for the intervals a failback's `merge` needs.
    pub history: Option<super::history::Handle>,
    /// Starts (and stops) the pool runs at once.
    pub agent_concurrency: usize,
    pub origin: Instant,
    /// Read when outputs are carried out: events get the wall-clock time they happened at.
    pub wall: Arc<dyn WallClock>,
    /// This start's run id, in every event id.
    pub run: Arc<str>,
    /// When each event was stored (the connectors' delivery latency).
    pub stored_at: Arc<StoredAt>,
    pub events: broadcast::Sender<Arc<StoredEvent>>,
    pub snapshots: watch::Sender<Arc<Snapshot>>,
    pub metrics: Arc<Metrics>,
    pub last_publish: Instant,
    /// The last job handed to the writer, and the last one committed.
    pub handed: u64,
    pub committed: u64,
    /// Agent operations waiting for the job they follow.
    pub waiting: VecDeque<(u64, Action)>,
}

impl Core {
    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }

    pub(super) async fn run(
        &mut self,
        cancel: CancellationToken,
        mut inputs: Inputs,
        grace: Duration,
    ) {
        let mut leaving = Leaving::No;
        loop {
            let deadline = self.origin + self.node.next_deadline();
            let until = leaving.until().unwrap_or(deadline);
            let first = tokio::select! {
                _ = cancel.cancelled(), if leaving == Leaving::No => {
                    info!(grace = ?grace, "Shutting down: telling the buddies we are leaving.");
                    leaving = Leaving::HandingOver(Instant::now() + grace);
                    Some(Input::Shutdown)
                }
                _ = tokio::time::sleep_until(until), if leaving != Leaving::No => {
                    match leaving {
                        Leaving::HandingOver(_) => {
                            let left = self.node.held().count();
                            warn!(left, "Buddies did not take everything over within the grace period; stopping what is left.");
                            leaving = Leaving::Stopping(Instant::now() + self.final_stops());
                            None
                        }
                        _ => {
                            warn!("Agents did not finish their last stops in time; leaving anyway.");
                            break;
                        }
                    }
                }
                () = self.agents.idle(), if matches!(leaving, Leaving::Stopping(_)) && self.waiting.is_empty() => {
                    info!("Every resource and hot standby of this node is stopped.");
                    break;
                }
                Some(report) = inputs.stored.recv() => self.on_report(report),
                Some(r) = inputs.heartbeats.recv() => Some(heartbeat(r, &inputs.queued)),
                Some(report) = inputs.agent_reports.recv() => Some(report.into()),
                Some(cmd) = inputs.commands.recv() => Some(Input::Command {
                    action: cmd.action,
                    server: cmd.server,
                    stamp: super::wall_ms(),
                }),
                Some((index, reachable)) = inputs.witnesses.recv() => Some(Input::Witness { index, reachable }),
                Some(event) = inputs.connectors.recv() => {
                    self.raise(event);
                    None
                }
                _ = tokio::time::sleep_until(deadline) => Some(Input::Tick),
            };
            if let Some(first) = first {
                let mut batch = vec![first];
                while batch.len() < BATCH {
                    match inputs.heartbeats.try_recv() {
                        Ok(r) => batch.push(heartbeat(r, &inputs.queued)),
                        Err(_) => break,
                    }
                }
                while batch.len() < BATCH {
                    match inputs.agent_reports.try_recv() {
                        Ok(report) => batch.push(report.into()),
                        Err(_) => break,
                    }
                }
                let now = self.now();
                let began = Instant::now();
                let outputs = self.node.handle_all(batch, now);
                self.metrics
                    .core_micros
                    .fetch_add(began.elapsed().as_micros() as u64, Ordering::Relaxed);
                let changed = outputs.iter().any(|o| !matches!(o, Output::Send { .. }));
                self.carry_out(outputs, now);
                if changed || Instant::now() >= self.last_publish + PUBLISH_EVERY {
                    self.publish();
                }
            }
            if matches!(leaving, Leaving::HandingOver(_)) && self.waiting.is_empty() {
                if self.node.drained() {
                    info!("Everything handed over; stopping.");
                    leaving = Leaving::Stopping(Instant::now() + self.final_stops());
                } else if self.node.nobody_takes_over(self.now()) {
                    let left = self.node.held().count();
                    warn!(left, "No buddy is up to take over; stopping what is left.");
                    leaving = Leaving::Stopping(Instant::now() + self.final_stops());
                }
            }
        }
        // What was handed to the writer is committed (or kept by it) before the node stops.
        while self.committed < self.handed {
            match inputs.stored.recv().await {
                Some(report) => {
                    self.on_report(report);
                }
                None => break,
            }
        }
        self.publish();
    }

    /// At the end of a clean shutdown: stops every resource this node still holds (nobody
    /// took it over within the grace period) and releases its hot standbys, after everything
    /// already asked. How long to wait for them at most.
    fn final_stops(&mut self) -> Duration {
        let held: Vec<(ResourceIdx, Epoch)> =
            self.node.held().map(|(r, epoch, _)| (r, epoch)).collect();
        let mut longest = Duration::ZERO;
        for &(r, epoch) in &held {
            longest = longest.max(self.site.resource(r).timings.timeout);
            self.waiting
                .push_back((self.handed, Action::Stop(r, epoch)));
        }
        for r in self.agents.standing_by() {
            longest = longest.max(self.site.resource(r).timings.timeout);
        }
        self.agents.release_all();
        self.run_ready();
        let rounds = held.len().div_ceil(self.agent_concurrency.max(1)) as u32;
        // A start in flight finishes first, then each stop in turn.
        longest * (rounds + 2) + Duration::from_secs(1)
    }

    pub(super) fn publish(&mut self) {
        self.last_publish = Instant::now();
        let mut snap = Snapshot::of(&self.node, self.now());
        snap.agents = Arc::new(AgentTimes {
            last: self.agents.last_ops(),
            standby: self.agents.standing_by().into_iter().collect(),
        });
        if let Ok(wire) = self.metrics.wire_rejected.lock() {
            for (&reason, &n) in wire.iter() {
                *snap.stats.rejected.entry(reason).or_default() += n;
            }
        }
        self.snapshots.send_replace(Arc::new(snap));
    }

    /// An event the runtime raises itself (the core knows nothing of connectors): stored,
    /// numbered and published like the core's own.
    fn raise(&mut self, event: Event) {
        let now = self.now();
        self.carry_out(vec![Output::Event(event)], now);
    }

    /// Sends at once; hands what must be durable to the writer; queues agent operations
    /// behind it.
    fn carry_out(&mut self, outputs: Vec<Output>, now: Duration) {
        // The wall clock now, for the events and instants of these outputs.
        let clock = Clock {
            mono: now,
            wall: self.wall.now(),
        };
        let mut records = Vec::new();
        let mut events = Vec::new();
        let mut actions = Vec::new();
        for o in outputs {
            match o {
                Output::Send { path, to, bytes } => self.send(path, to, &bytes),
                Output::Persist(ds) => records.extend(ds.iter().map(|d| record(&self.site, d))),
                Output::Event(e) => events.push(e),
                Output::Start {
                    resource,
                    epoch,
                    cover_from,
                } => {
                    let cover_from = cover_from.map(|t| clock.wall(t));
                    actions.push(Action::Start(resource, epoch, cover_from));
                }
                Output::Standby { resource, prepare } => {
                    let epoch = self.node.resource_view(resource, now).epoch;
                    actions.push(Action::Standby(resource, prepare, epoch));
                }
                Output::Stop { resource, epoch } => actions.push(Action::Stop(resource, epoch)),
            }
        }
        if !records.is_empty() || !events.is_empty() {
            self.handed += 1;
            let events = self.pending_events(events, now, clock);
            let job = Job {
                ticket: self.handed,
                records,
                events,
            };
            if self.writer.send(job).is_err() {
                error!("The store writer is gone; nothing more can be stored.");
                self.committed = self.handed;
            }
        }
        let after = self.handed;
        self.waiting.extend(actions.into_iter().map(|a| (after, a)));
        self.run_ready();
    }

    /// Events with what their CloudEvent needs, built once their sequence number is known.
    fn pending_events(&self, events: Vec<Event>, now: Duration, clock: Clock) -> Vec<PendingEvent> {
        let needs_epochs = events.iter().any(|e| {
            matches!(
                e,
                Event::FailoverStarted { .. }
                    | Event::FailoverCompleted { .. }
                    | Event::FailbackCompleted { .. }
            )
        });
        let mut held = cloudevents::Held::default();
        if needs_epochs {
            held.epochs = self.node.held().map(|(r, epoch, _)| (r, epoch)).collect();
        }
        for e in &events {
            if let Event::FailoverCompleted { resources, .. }
            | Event::FailbackCompleted { resources, .. } = e
            {
                held.started.extend(resources.iter().filter_map(|&r| {
                    let t = self.agents.last_op(r, AgentOp::Start)?;
                    let current = held.epochs.get(&r) == Some(&t.epoch);
                    (t.ok && current).then_some((
                        r,
                        cloudevents::Started {
                            at: t.done_at(),
                            took: t.took,
                        },
                    ))
                }));
            }
        }
        let held = Arc::new(held);
        events
            .into_iter()
            .map(|event| {
                let (site, node, run) = (self.site.clone(), self.me, self.run.clone());
                let (e, held) = (event.clone(), held.clone());
                PendingEvent {
                    event,
                    json: Box::new(move |seq| {
                        let from = Emitter {
                            site: &site,
                            node,
                            run: &run,
                        };
                        cloudevents::to_cloudevent(from, seq, now, clock, &e, &held).to_string()
                    }),
                }
            })
            .collect()
    }

    /// What the store writer reports: a job committed (publish its events, run what waited
    /// for it) or not (its starts fail: rule 4), events that waited stored at last, the store
    /// failing or back, which is an input for the core.
    fn on_report(&mut self, report: Report) -> Option<Input> {
        match report {
            Report::Done {
                ticket,
                stored: Some(stored),
            } => {
                self.committed = ticket;
                self.publish_stored(stored);
                self.run_ready();
                None
            }
            Report::Done {
                ticket,
                stored: None,
            } => {
                self.committed = ticket;
                self.not_stored(ticket);
                None
            }
            Report::Stored(stored) => {
                self.publish_stored(stored);
                None
            }
            Report::Storage(Some(reason)) => {
                warn!(%reason, "Store failing: leaving until it takes writes again.");
                Some(Input::Storage { ok: false })
            }
            Report::Storage(None) => {
                info!("Store back: this node takes part again.");
                Some(Input::Storage { ok: true })
            }
        }
    }

    fn publish_stored(&mut self, stored: Vec<(Event, StoredEvent)>) {
        let at = std::time::Instant::now();
        for (e, stored) in stored {
            self.metrics.events_stored.fetch_add(1, Ordering::Relaxed);
            if let Event::FailoverCompleted { takeover, .. } = &e {
                self.metrics.takeover_seconds.observe(*takeover);
            }
            if let Event::FailbackCompleted { resources, .. } = &e {
                self.merge(resources);
            }
            log_event(&self.site, &e);
            self.stored_at.record(stored.seq, at);
            let _ = self.events.send(Arc::new(stored));
        }
    }

    /// Job `ticket` could not be stored now (the writer keeps it): the starts that waited
    /// for it fail, since a claim must be durable before its agent starts (rule 4); stops and
    /// standbys go on.
    fn not_stored(&mut self, ticket: u64) {
        let now = self.now();
        let failed: Vec<Input> = self
            .waiting
            .iter()
            .filter(|(t, _)| *t == ticket)
            .filter_map(|(_, a)| match *a {
                Action::Start(resource, epoch, _) => Some(Input::AgentDone {
                    resource,
                    epoch,
                    op: AgentOp::Start,
                    result: Err("claim could not be stored".into()),
                }),
                Action::Stop(..) | Action::Standby(..) => None,
            })
            .collect();
        self.waiting
            .retain(|(t, a)| *t != ticket || !matches!(a, Action::Start(..)));
        self.run_ready();
        if !failed.is_empty() {
            let outputs = self.node.handle_all(failed, now);
            self.carry_out(outputs, now);
        }
    }

    /// After a failback: each resource taken back gets a `merge` of what its buddies recorded
    /// meanwhile, from the history (asked for now, at the failback's end).
    fn merge(&self, resources: &[ResourceIdx]) {
        let Some(history) = &self.history else {
            return;
        };
        let at = SystemTime::now();
        for &r in resources {
            let Some((_, epoch, _)) = self.node.held().find(|(x, _, _)| *x == r) else {
                continue;
            };
            let (history, agents) = (history.clone(), self.agents.clone());
            let id = self.site.resource(r).id.clone();
            tokio::spawn(async move {
                let intervals = history.merge_intervals(id, epoch, at).await;
                agents.merge(r, epoch, intervals);
            });
        }
    }

    /// Agent operations whose jobs are committed, in order.
    fn run_ready(&mut self) {
        while let Some(&(after, action)) = self.waiting.front() {
            if after > self.committed {
                return;
            }
            self.waiting.pop_front();
            match action {
                Action::Start(resource, epoch, cover_from) => {
                    debug!(resource = %self.site.resource(resource).id, epoch, ?cover_from, "Starting.");
                    self.agents.start_covering(resource, epoch, cover_from);
                }
                Action::Standby(resource, prepare, epoch) => {
                    debug!(resource = %self.site.resource(resource).id, prepare, epoch, "Hot standby.");
                    if prepare {
                        self.agents.standby(resource, epoch);
                    } else {
                        self.agents.release(resource, epoch);
                    }
                }
                Action::Stop(resource, epoch) => {
                    debug!(resource = %self.site.resource(resource).id, epoch, "Stopping.");
                    self.agents.stop(resource, epoch);
                }
            }
        }
    }

    fn send(&self, path: usize, to: ServerIdx, bytes: &[u8]) {
        let Some(addr) = self.site.server(to).heartbeat.get(path) else {
            return;
        };
        // Straight to the socket: tokio's `try_send_to` answers "would block" from a cached
        // readiness until the reactor runs again, which would drop a whole burst.
        match socket2::SockRef::from(&*self.sockets[path]).send_to(bytes, &(*addr).into()) {
            Ok(_) => {
                self.metrics.datagrams_sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.metrics.send_errors.fetch_add(1, Ordering::Relaxed);
                debug!(to = %self.site.server(to).id, path, error = %e, "Heartbeat not sent.");
            }
        }
    }
}

fn heartbeat(r: Received, queued: &AtomicUsize) -> Input {
    queued.fetch_sub(r.size, Ordering::Relaxed);
    Input::Heartbeat {
        path: r.path,
        heartbeat: r.heartbeat,
        at: r.at,
    }
}

fn log_event(site: &Site, e: &Event) {
    let text = e.describe(site);
    match e {
        Event::ServerDown { .. }
        | Event::ResourceFailed { .. }
        | Event::ResourceUnplaced { .. }
        | Event::OwnershipConflict { .. }
        | Event::ConfigMismatch { .. }
        | Event::ConnectorFailed { .. }
        | Event::PathDown { .. } => warn!(event = e.type_name(), "{text}"),
        _ => info!(event = e.type_name(), "{text}"),
    }
}

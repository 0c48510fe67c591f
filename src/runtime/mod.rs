//! The node daemon's runtime: drives the failover core with tokio. Nothing here decides
//! failover policy; it carries out what the core asks, in order.
//!
//! One task owns the [`Node`] and the [`Store`]: it `select!`s over datagrams from every
//! heartbeat socket, agent reports, operator commands, witness probes, the core's next
//! deadline and shutdown, feeds each to the core and carries out the outputs: a claim is
//! written (and fsynced) before its agent starts, events are stored before they are
//! published.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use thiserror::Error;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::agent::{AgentPool, AgentReport};
use crate::api::Shared;
use crate::cloudevents::{self, Clock};
use crate::config::{ResourceIdx, ServerIdx, Site};
use crate::failover::wire::MAX_DATAGRAM;
use crate::failover::{
    ClaimRecord, Durable, Event, HoldRecord, Input, Key, Node, Output, PeerRecord, Restored,
    Topology,
};
use crate::store::{NodeState, Record, Store, StoredEvent, StoredHold};
use crate::view::{Command, Metrics, Snapshot};

/// Everything a node needs to run, resolved (secrets read, paths absolute).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub site: Arc<Site>,
    pub node: ServerIdx,
    pub data_dir: PathBuf,
    /// The heartbeat HMAC key.
    pub key: Vec<u8>,
    pub api_token: Option<String>,
    /// ONVIF accounts `(user, password)`, secrets resolved.
    pub onvif_users: Vec<(String, String)>,
    /// Resources started at once at most.
    pub agent_concurrency: usize,
    /// How long a clean shutdown waits for the buddies to take over.
    pub shutdown_grace: Duration,
    /// Connector files of the site.
    pub connectors: Vec<crate::connectors::Connector>,
    /// The API's read access, host names, ONVIF push consumers and TLS.
    pub api_access: crate::api::Access,
}

#[derive(Debug, Error)]
pub enum BuildError {
    #[error("cannot bind heartbeat path {path} on {addr}: {source}")]
    Heartbeat {
        path: usize,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot bind the API on {addr}: {source}")]
    Api {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A node whose sockets are bound and store is open, ready to [`Daemon::run`].
pub struct Daemon {
    cfg: NodeConfig,
    store: Store,
    sockets: Vec<Arc<UdpSocket>>,
    api: Option<TcpListener>,
    incarnation: u64,
}

impl Daemon {
    /// Opens the store and binds every socket. Fails before anything runs.
    pub async fn build(cfg: NodeConfig) -> Result<Self, BuildError> {
        // Before anything opens a descriptor; the API keeps a reserve of them (crate::fds).
        crate::fds::raise();
        let mut store = Store::open(&cfg.data_dir)?;
        let incarnation = store.next_incarnation(wall_ms())?;
        let me = cfg.site.server(cfg.node);
        let mut sockets = Vec::new();
        for (path, &addr) in me.heartbeat.iter().enumerate() {
            let sock = UdpSocket::bind(addr)
                .await
                .map_err(|source| BuildError::Heartbeat { path, addr, source })?;
            sockets.push(Arc::new(sock));
        }
        let api = match me.api {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| BuildError::Api { addr, source })?,
            ),
            None => None,
        };
        Ok(Self {
            cfg,
            store,
            sockets,
            api,
            incarnation,
        })
    }

    /// The API's bound address, if it has one.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Runs until `cancel`, then leaves cleanly: tells the buddies, waits up to the grace
    /// period for them to take over, stops.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let Daemon {
            cfg,
            store,
            sockets,
            api,
            incarnation,
        } = self;
        let site = cfg.site.clone();
        let topo = Arc::new(Topology::new(&site));
        let me = cfg.node;
        let restored = restore(&site, store.node_state()?);
        let origin = Instant::now();
        let clock = Clock {
            wall_at_zero: SystemTime::now(),
        };
        let node = Node::new(
            site.clone(),
            topo,
            me,
            Key::new(&cfg.key),
            incarnation,
            &restored,
            Duration::ZERO,
        );
        info!(
            node = %site.server(me).id,
            incarnation,
            resumed = restored.claims.iter().filter(|c| c.held).count(),
            holds = restored.holds.iter().filter(|h| h.held).count(),
            "Node starting."
        );

        let tasks = TaskTracker::new();
        // Not a child of `cancel`: sockets, agents and the API keep working while the node
        // hands over after a shutdown request; they stop once `run` is done.
        let inner = CancellationToken::new();
        let metrics = Arc::new(Metrics::default());
        let (dgram_tx, dgram_rx) = mpsc::channel::<(usize, Vec<u8>)>(4096);
        for (path, sock) in sockets.iter().enumerate() {
            tasks.spawn(recv_loop(
                path,
                sock.clone(),
                dgram_tx.clone(),
                metrics.clone(),
                inner.clone(),
            ));
        }
        drop(dgram_tx);
        let (witness_tx, witness_rx) = mpsc::channel(64);
        for (index, &addr) in site.witnesses.iter().enumerate() {
            tasks.spawn(witness_loop(
                index,
                addr,
                site.heartbeat_interval,
                witness_tx.clone(),
                inner.clone(),
            ));
        }
        drop(witness_tx);
        let (agent_tx, agent_rx) = mpsc::channel(1024);
        let agents = AgentPool::new(
            site.clone(),
            me,
            agent_tx,
            metrics.clone(),
            inner.clone(),
            cfg.agent_concurrency,
        );
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (events_tx, _) = broadcast::channel(1024);
        let first = Arc::new(snapshot(&node, origin));
        let (snap_tx, snap_rx) = watch::channel(first);
        let connectors = crate::connectors::start(
            crate::connectors::NodeFeeds {
                site: site.clone(),
                node: me,
                data_dir: &cfg.data_dir,
                events: &events_tx,
                snapshot: &snap_rx,
            },
            &cfg.connectors,
            &tasks,
            &inner,
        )?;
        let shared = Shared {
            snapshot: snap_rx,
            events: events_tx.clone(),
            commands: cmd_tx,
            data_dir: cfg.data_dir.clone(),
            token: cfg.api_token.clone(),
            onvif_users: cfg.onvif_users.clone(),
            metrics: metrics.clone(),
            connectors: Arc::new(connectors),
            access: cfg.api_access.clone(),
        };
        if let Some(listener) = api {
            let shared = shared.clone();
            let cancel = inner.clone();
            tasks.spawn(async move {
                if let Err(e) = crate::api::serve(listener, shared, cancel).await {
                    error!(error = %e, "API server stopped.");
                }
            });
        }

        let mut core = Core {
            site,
            me,
            node,
            store,
            sockets,
            agents,
            origin,
            clock,
            events: events_tx,
            snapshots: snap_tx,
            metrics,
            last_publish: origin,
        };
        let result = core
            .run(
                cancel,
                dgram_rx,
                agent_rx,
                cmd_rx,
                witness_rx,
                cfg.shutdown_grace,
            )
            .await;
        inner.cancel();
        tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .is_err()
        {
            warn!("Some tasks did not stop within 5 s.");
        }
        result
    }
}

/// The task that owns the core.
struct Core {
    site: Arc<Site>,
    me: ServerIdx,
    node: Node,
    store: Store,
    sockets: Vec<Arc<UdpSocket>>,
    agents: AgentPool,
    origin: Instant,
    clock: Clock,
    events: broadcast::Sender<Arc<StoredEvent>>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
    last_publish: Instant,
}

impl Core {
    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }

    async fn run(
        &mut self,
        cancel: CancellationToken,
        mut datagrams: mpsc::Receiver<(usize, Vec<u8>)>,
        mut agent_reports: mpsc::Receiver<AgentReport>,
        mut commands: mpsc::Receiver<Command>,
        mut witnesses: mpsc::Receiver<(usize, bool)>,
        grace: Duration,
    ) -> anyhow::Result<()> {
        let mut leaving_until: Option<Instant> = None;
        loop {
            let deadline = self.origin + self.node.next_deadline();
            let input = tokio::select! {
                _ = cancel.cancelled(), if leaving_until.is_none() => {
                    info!("Shutting down: telling the buddies we are leaving.");
                    leaving_until = Some(Instant::now() + grace);
                    Input::Shutdown
                }
                _ = tokio::time::sleep_until(leaving_until.unwrap_or(deadline)), if leaving_until.is_some() => {
                    warn!("Buddies did not take everything over within the grace period; leaving anyway.");
                    break;
                }
                Some((path, bytes)) = datagrams.recv() => Input::Datagram { path, bytes },
                Some(report) = agent_reports.recv() => match report {
                    AgentReport::Done { resource, epoch, op, result } => {
                        Input::AgentDone { resource, epoch, op, result }
                    }
                    AgentReport::MonitorFailed { resource, reason } => {
                        Input::MonitorFailed { resource, reason }
                    }
                },
                Some(cmd) = commands.recv() => Input::Command { action: cmd.action, server: cmd.server, stamp: wall_ms() },
                Some((index, reachable)) = witnesses.recv() => Input::Witness { index, reachable },
                _ = tokio::time::sleep_until(deadline) => Input::Tick,
            };
            let now = self.now();
            let outputs = self.node.handle(input, now);
            let changed = outputs.iter().any(|o| !matches!(o, Output::Send { .. }));
            self.carry_out(outputs, now)?;
            if changed || Instant::now() >= self.last_publish + Duration::from_millis(250) {
                self.publish();
            }
            if leaving_until.is_some() && self.node.drained() {
                info!("Everything handed over; stopping.");
                break;
            }
        }
        self.publish();
        Ok(())
    }

    fn publish(&mut self) {
        self.last_publish = Instant::now();
        let snap = snapshot(&self.node, self.origin);
        self.snapshots.send_replace(Arc::new(snap));
    }

    /// Carries out the core's outputs. What must be durable (claims, rule 4) and the events
    /// are stored first, in one transaction, so a takeover pays one fsync before its agents
    /// start and a crash at any moment after that loses neither a claim nor an event. Then the
    /// actions run in the order given.
    fn carry_out(&mut self, outputs: Vec<Output>, now: Duration) -> anyhow::Result<()> {
        let mut claims = Vec::new();
        let mut events = Vec::new();
        let mut actions = Vec::with_capacity(outputs.len());
        for o in outputs {
            match o {
                Output::Persist(records) => {
                    claims.extend(records.iter().map(|d| record(&self.site, d)))
                }
                Output::Event(e) => events.push(e),
                action => actions.push(action),
            }
        }
        let durable = claims.is_empty() && events.is_empty() || {
            match self.store_events(&claims, &events, now) {
                Ok(()) => {
                    events.clear();
                    true
                }
                Err(e) => {
                    error!(error = %e, "Cannot persist claims; their resources will not start.");
                    false
                }
            }
        };
        for action in actions {
            match action {
                Output::Send { path, to, bytes } => self.send(path, to, &bytes),
                Output::Start { resource, epoch } if !durable => {
                    // Rule 4: never start what is not durable. Report it failed.
                    let out = self.node.handle(
                        Input::AgentDone {
                            resource,
                            epoch,
                            op: crate::failover::AgentOp::Start,
                            result: Err("claim could not be stored".into()),
                        },
                        now,
                    );
                    self.carry_out(out, now)?;
                }
                Output::Start { resource, epoch } => {
                    debug!(resource = %self.site.resource(resource).id, epoch, "Starting.");
                    self.agents.start(resource, epoch);
                }
                Output::Stop { resource, epoch } => {
                    debug!(resource = %self.site.resource(resource).id, epoch, "Stopping.");
                    self.agents.stop(resource, epoch);
                }
                Output::Persist(_) | Output::Event(_) => unreachable!("stored above"),
            }
        }
        if !events.is_empty() {
            // The store failed above; an event we cannot store is fatal (nothing may be lost).
            self.store_events(&[], &events, now)
                .context("cannot store events")?;
        }
        Ok(())
    }

    fn send(&self, path: usize, to: ServerIdx, bytes: &[u8]) {
        let Some(addr) = self.site.server(to).heartbeat.get(path) else {
            return;
        };
        match self.sockets[path].try_send_to(bytes, *addr) {
            Ok(_) => {
                self.metrics.datagrams_sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.metrics.send_errors.fetch_add(1, Ordering::Relaxed);
                debug!(to = %self.site.server(to).id, path, error = %e, "Heartbeat not sent.");
            }
        }
    }

    fn store_events(
        &mut self,
        claims: &[Record],
        events: &[Event],
        now: Duration,
    ) -> Result<(), crate::store::StoreError> {
        let epochs: HashMap<ResourceIdx, u64> = if events.is_empty() {
            HashMap::new()
        } else {
            self.node.held().map(|(r, epoch, _)| (r, epoch)).collect()
        };
        let (site, me, clock) = (self.site.clone(), self.me, self.clock);
        let kinds: Vec<&str> = events.iter().map(Event::type_name).collect();
        let stored = self.store.commit(claims, &kinds, |seq, i| {
            cloudevents::to_cloudevent(&site, me, seq, now, clock, &events[i], &epochs).to_string()
        })?;
        for (e, stored) in events.iter().zip(stored) {
            self.metrics.events_stored.fetch_add(1, Ordering::Relaxed);
            if let Event::FailoverCompleted { takeover, .. } = e {
                self.metrics.takeover_seconds.observe(*takeover);
            }
            log_event(&site, e);
            let _ = self.events.send(Arc::new(stored));
        }
        Ok(())
    }
}

/// The wall clock in ms since the Unix epoch (0 if the clock is before it).
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the store kept, by index for this site file (ids it no longer has are dropped).
fn restore(site: &Site, state: NodeState) -> Restored {
    let rs = site.resource_map();
    let server = |id: &str| site.server_idx(id);
    Restored {
        claims: state
            .claims
            .iter()
            .filter_map(|c| {
                Some(ClaimRecord {
                    resource: *rs.get(&c.resource)?,
                    epoch: c.epoch,
                    held: c.held,
                })
            })
            .collect(),
        known: state
            .known
            .iter()
            .filter_map(|(id, e)| Some((*rs.get(id)?, *e)))
            .collect(),
        floors: state
            .floors
            .iter()
            .filter_map(|(id, round)| Some((server(id)?, *round)))
            .collect(),
        holds: state
            .holds
            .iter()
            .filter_map(|h| {
                Some(HoldRecord {
                    server: server(&h.server)?,
                    held: h.held,
                    counter: h.counter,
                    origin: h.origin.clone(),
                })
            })
            .collect(),
        peers: state
            .peers
            .iter()
            .filter_map(|(id, incarnation, seq)| {
                Some(PeerRecord {
                    server: server(id)?,
                    incarnation: *incarnation,
                    seq: *seq,
                })
            })
            .collect(),
        failback_done: state.failback_done,
    }
}

/// A durable record of the core, by id for the store.
fn record(site: &Site, d: &Durable) -> Record {
    let r = |r: ResourceIdx| site.resource(r).id.clone();
    let s = |s: ServerIdx| site.server(s).id.clone();
    match d {
        Durable::Claim(c) => Record::Claim {
            resource: r(c.resource),
            epoch: c.epoch,
            held: c.held,
        },
        Durable::Known { resource, epoch } => Record::Known {
            resource: r(*resource),
            epoch: *epoch,
        },
        Durable::Floor { server, round } => Record::Floor {
            server: s(*server),
            round: *round,
        },
        Durable::Hold(h) => Record::Hold(StoredHold {
            server: s(h.server),
            held: h.held,
            counter: h.counter,
            origin: h.origin.clone(),
        }),
        Durable::Peer(p) => Record::Peer {
            server: s(p.server),
            incarnation: p.incarnation,
            seq: p.seq,
        },
        Durable::Incarnation(n) => Record::Incarnation(*n),
        Durable::FailbackDone { counter, origin } => Record::FailbackDone {
            counter: *counter,
            origin: origin.clone(),
        },
    }
}

fn log_event(site: &Site, e: &Event) {
    let text = e.describe(site);
    match e {
        Event::ServerDown { .. }
        | Event::ResourceFailed { .. }
        | Event::OwnershipConflict { .. }
        | Event::ConfigMismatch { .. }
        | Event::PathDown { .. } => warn!(event = e.type_name(), "{text}"),
        _ => info!(event = e.type_name(), "{text}"),
    }
}

fn snapshot(node: &Node, origin: Instant) -> Snapshot {
    Snapshot::of(node, Instant::now().saturating_duration_since(origin))
}

async fn recv_loop(
    path: usize,
    sock: Arc<UdpSocket>,
    tx: mpsc::Sender<(usize, Vec<u8>)>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let received = tokio::select! {
            _ = cancel.cancelled() => return,
            r = sock.recv_from(&mut buf) => r,
        };
        match received {
            Ok((n, _from)) => {
                metrics.datagrams_received.fetch_add(1, Ordering::Relaxed);
                if tx.send((path, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
            // ICMP errors surface on the next recv on some systems; keep listening.
            Err(e) => debug!(path, error = %e, "Heartbeat receive error."),
        }
    }
}

/// A witness answers if a TCP connection to it opens within one heartbeat interval.
async fn witness_loop(
    index: usize,
    addr: SocketAddr,
    every: Duration,
    tx: mpsc::Sender<(usize, bool)>,
    cancel: CancellationToken,
) {
    let mut last = None;
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ok = matches!(
            tokio::time::timeout(every, tokio::net::TcpStream::connect(addr)).await,
            Ok(Ok(_))
        );
        if last != Some(ok) {
            if last.is_some() {
                info!(witness = %addr, reachable = ok, "Witness reachability changed.");
            }
            last = Some(ok);
            if tx.send((index, ok)).await.is_err() {
                return;
            }
        }
    }
}

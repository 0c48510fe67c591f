//! The node daemon's runtime: drives the failover core with tokio. Nothing here decides
//! failover policy; it carries out what the core asks, in order.
//!
//! - [`core`]: the task that owns the [`Node`]: inputs in batches, outputs carried out;
//! - [`writer`]: the thread that owns the [`Store`]: a claim is fsynced before its agent
//!   starts, events are stored before they are published, and no heartbeat waits for a disk;
//! - [`net`]: a receive task per heartbeat path (read, timestamp, authenticate, queue bounded
//!   in bytes) and the witness probes;
//! - [`records`]: the core's durable records to and from the store's;
//! - [`clock`]: the wall clock behind a seam tests can step.
//! - [`history`]: the history of owners (where the footage is), written from the snapshots on
//!   a thread of its own, and read for a failback's merges.

pub mod clock;
mod core;
mod history;
mod net;
mod records;
mod writer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use thiserror::Error;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::agent::AgentPool;
use crate::api::Shared;
use crate::config::{ServerIdx, Site, StoreSettings};
use crate::failover::{Key, Node, Topology};
use crate::store::{NodeState, Record, Retention, Store};
use crate::view::{Metrics, Snapshot};

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
    /// Agent starts run at once at most (and as many stops, and monitors).
    pub agent_concurrency: usize,
    /// How long a clean shutdown waits for the buddies to take over; then the node stops what
    /// is left itself.
    pub shutdown_grace: Duration,
    /// Connector files of the site.
    pub connectors: Vec<crate::connectors::Connector>,
    /// The API's read access, host names, ONVIF push consumers and TLS.
    pub api_access: crate::api::Access,
    /// `[store]` of the site file.
    pub store: StoreSettings,
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

/// The receive buffer each heartbeat socket asks for.
const RECV_BUFFER: usize = 1 << 20;

/// A node whose sockets are bound and store is open, ready to [`Daemon::run`].
pub struct Daemon {
    cfg: NodeConfig,
    store: Opened,
    /// Bound here; registered with the failover core's own runtime when it starts.
    sockets: Vec<std::net::UdpSocket>,
    api: Option<TcpListener>,
    incarnation: u64,
}

/// The store as the node found it at start.
struct Opened {
    /// `None` when it could not be opened for writing.
    store: Option<Store>,
    state: NodeState,
    /// Why it takes no writes, when it does not (a full disk).
    failing: Option<String>,
    /// What must be written once it does.
    records: Vec<Record>,
}

/// Opens the store and moves the incarnation on. A store that cannot be written (a full or
/// failing disk) is no reason not to run: the node starts from what it can read, says it is
/// leaving (its buddies take over) and comes back once the store takes writes. A store this
/// build cannot read (written by a newer one) is.
fn open_store(dir: &std::path::Path) -> Result<(Opened, u64), crate::store::StoreError> {
    use crate::store::StoreError;
    let wall = wall_ms();
    match Store::open_for_writer(dir) {
        Ok(mut store) => {
            let state = store.node_state()?;
            match store.next_incarnation(wall) {
                Ok(n) => Ok((
                    Opened {
                        store: Some(store),
                        state,
                        failing: None,
                        records: Vec::new(),
                    },
                    n,
                )),
                Err(e) => {
                    let n = store.incarnation().unwrap_or(0).saturating_add(1).max(wall);
                    let opened = Opened {
                        store: Some(store),
                        state,
                        failing: Some(e.to_string()),
                        records: vec![Record::Incarnation(n)],
                    };
                    Ok((opened, n))
                }
            }
        }
        Err(e @ StoreError::Migrate { .. }) => Err(e),
        Err(e) => {
            // Read what it holds if it can; an empty state is allowed (the node relearns from
            // its peers before it claims anything).
            // A reader needs the WAL index (a file it may have to create); a store closed
            // cleanly is read without it.
            let read = |r: crate::store::Reader| Ok((r.node_state()?, r.incarnation()?));
            let found = Store::open_reader(dir).and_then(read).or_else(|first| {
                Store::open_closed(dir).and_then(read).map_err(|second| {
                    warn!(error = %first, closed = %second, "Cannot read the store either: starting from an empty state.");
                })
            });
            let (state, prev) = found.unwrap_or_default();
            let n = prev.saturating_add(1).max(wall);
            let opened = Opened {
                store: None,
                state,
                failing: Some(e.to_string()),
                records: vec![Record::Incarnation(n)],
            };
            Ok((opened, n))
        }
    }
}

impl Daemon {
    /// Opens the store and binds every socket. Fails before anything runs, but not for a
    /// store that takes no writes (see [`open_store`]).
    pub async fn build(cfg: NodeConfig) -> Result<Self, BuildError> {
        // Before anything opens a descriptor; the API keeps a reserve of them (crate::fds).
        crate::fds::raise();
        let (store, incarnation) = open_store(&cfg.data_dir)?;
        if let Some(why) = &store.failing {
            error!(error = %why, "The store takes no writes: starting anyway, as leaving.");
        }
        let me = cfg.site.server(cfg.node);
        let mut sockets = Vec::new();
        for (path, &addr) in me.heartbeat.iter().enumerate() {
            let err = |source| BuildError::Heartbeat { path, addr, source };
            let sock = std::net::UdpSocket::bind(addr).map_err(err)?;
            sock.set_nonblocking(true).map_err(err)?;
            // Room for bursts (the kernel caps it at net.core.rmem_max): what does not fit is
            // dropped before the receive loop can tell a heartbeat from junk.
            let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(RECV_BUFFER);
            sockets.push(sock);
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
        let Opened {
            store,
            state,
            failing,
            records: first_records,
        } = store;
        let restored = records::restore(&site, state);
        let origin = Instant::now();
        let fault_injection = std::env::var_os("BUDDYGATE_FAULT_INJECTION").is_some();
        let wall: Arc<dyn clock::WallClock> = if fault_injection {
            Arc::new(clock::SteppedClock {
                file: cfg.data_dir.join("clock-step"),
            })
        } else {
            Arc::new(clock::SystemClock)
        };
        let run: Arc<str> = crate::cloudevents::run_id().into();
        let key = Key::new(&cfg.key);
        let node = Node::new(
            site.clone(),
            topo,
            me,
            key.clone(),
            incarnation,
            &restored,
            Duration::ZERO,
        );
        info!(
            node = %site.server(me).id,
            incarnation,
            run = %run,
            resumed = restored.claims.iter().filter(|c| c.held).count(),
            holds = restored.holds.iter().filter(|h| h.held).count(),
            "Node starting."
        );
        // A store failing from the start is the writer's first report: the core hears it
        // before anything can be claimed (it boots first).
        let metrics = Arc::new(Metrics::default());
        let (writer, stored) = writer::spawn(writer::Setup {
            store,
            dir: cfg.data_dir.clone(),
            failing,
            records: first_records,
            retention: Retention {
                keep: cfg.store.retention,
                max_size: cfg.store.max_size,
            },
            connectors: cfg.connectors.iter().map(|c| c.name.clone()).collect(),
            figures: metrics.clone(),
            stall: fault_injection.then(|| cfg.data_dir.join("stall-store")),
        })
        .context("cannot start the store writer")?;

        let tasks = TaskTracker::new();
        // Not a child of `cancel`: sockets, agents and the API keep working while the node
        // hands over after a shutdown request; they stop once `run` is done.
        let inner = CancellationToken::new();
        let (hb_tx, heartbeats) = mpsc::channel(4096);
        let queued = Arc::new(AtomicUsize::new(0));
        let receiver = net::Receiver {
            key,
            origin,
            tx: hb_tx,
            queued: queued.clone(),
            metrics: metrics.clone(),
            cancel: inner.clone(),
        };
        let (witness_tx, witnesses) = mpsc::channel(64);
        for (index, &addr) in site.witnesses.iter().enumerate() {
            tasks.spawn(net::witness_loop(
                index,
                addr,
                site.heartbeat_interval,
                witness_tx.clone(),
                inner.clone(),
            ));
        }
        drop(witness_tx);
        let (agent_tx, agent_reports) = mpsc::channel(1024);
        let agents = AgentPool::new(
            site.clone(),
            me,
            agent_tx,
            metrics.clone(),
            inner.clone(),
            cfg.agent_concurrency,
        )
        .with_standby_file(cfg.data_dir.join("standby"), |r| {
            restored.claims.iter().any(|c| c.resource == r && c.held)
        });
        let (cmd_tx, commands) = mpsc::channel(64);
        let (events_tx, _) = broadcast::channel(1024);
        let first = Arc::new(Snapshot::of(&node, Duration::ZERO));
        let (snap_tx, snap_rx) = watch::channel(first);
        let stored_at = Arc::new(crate::connectors::StoredAt::default());
        let (raise, connector_events) = mpsc::channel(64);
        let (history, history_thread) =
            match history::spawn(cfg.data_dir.clone(), snap_rx.clone(), inner.clone(), &tasks) {
                Ok((h, t)) => (Some(h), Some(t)),
                Err(e) => {
                    warn!(error = %e, "Cannot start the history of owners; going on without it.");
                    (None, None)
                }
            };
        let connectors = crate::connectors::start(
            crate::connectors::NodeFeeds {
                site: site.clone(),
                node: me,
                data_dir: &cfg.data_dir,
                events: &events_tx,
                snapshot: &snap_rx,
                stored_at: &stored_at,
                raise: &raise,
            },
            &cfg.connectors,
            &tasks,
            &inner,
        );
        drop(raise);
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

        let mut core = core::Core {
            site,
            me,
            node,
            writer,
            sockets: Vec::new(),
            agents: Arc::new(agents),
            history,
            agent_concurrency: cfg.agent_concurrency,
            origin,
            wall,
            run,
            stored_at,
            events: events_tx,
            snapshots: snap_tx,
            metrics,
            last_publish: origin,
            handed: 0,
            committed: 0,
            waiting: Default::default(),
        };
        let inputs = core::Inputs {
            heartbeats,
            queued,
            agent_reports,
            commands,
            witnesses,
            stored,
            connectors: connector_events,
        };
        let grace = cfg.shutdown_grace;
        let net_cancel = inner.clone();
        // The core and the heartbeat sockets run on a thread of their own: nothing else the
        // node does (agents, the API, connectors) can delay a heartbeat or the reading of one.
        let (result_tx, result_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("failover-core".into())
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start the failover core's runtime")
                    .and_then(|rt| {
                        rt.block_on(async move {
                            let sockets = sockets
                                .into_iter()
                                .map(|s| UdpSocket::from_std(s).map(Arc::new))
                                .collect::<Result<Vec<_>, _>>()
                                .context("cannot register the heartbeat sockets")?;
                            let receivers = TaskTracker::new();
                            for (path, sock) in sockets.iter().enumerate() {
                                receivers.spawn(receiver.clone().run(path, sock.clone()));
                            }
                            drop(receiver);
                            core.sockets = sockets;
                            core.run(cancel, inputs, grace).await;
                            net_cancel.cancel();
                            receivers.close();
                            receivers.wait().await;
                            Ok(())
                        })
                    });
                let _ = result_tx.send(result);
            })
            .context("cannot start the failover core's thread")?;
        let result = result_rx
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the failover core's thread ended")));
        inner.cancel();
        tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .is_err()
        {
            warn!("Some tasks did not stop within 5 s.");
        }
        // The core (and its handle on the history) ended with its thread.
        if let Some(thread) = history_thread {
            thread.finish(Duration::from_secs(2)).await;
        }
        result
    }
}

/// The wall clock in ms since the Unix epoch (0 if the clock is before it).
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

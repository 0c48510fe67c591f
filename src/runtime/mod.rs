//! The node daemon's runtime: drives the failover core with tokio. Nothing here decides
//! failover policy; it carries out what the core asks, in order.
//!
//! - [`core`]: the task that owns the [`Node`]: inputs in batches, outputs carried out;
//! - [`writer`]: the thread that owns the [`Store`]: a claim is fsynced before its agent
//!   starts, events are stored before they are published, and no heartbeat waits for a disk;
//! - [`net`]: a receive task per heartbeat path (read, timestamp, authenticate, queue bounded
//!   in bytes) and the witness probes;
//! - [`records`]: the core's durable records to and from the store's;
//! - [`history`]: the history of owners (where the footage is), written from the snapshots on
//!   a thread of its own, and read for a failback's merges.

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
use crate::cloudevents::Clock;
use crate::config::{ServerIdx, Site};
use crate::failover::{Key, Node, Topology};
use crate::store::Store;
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
        let restored = records::restore(&site, store.node_state()?);
        let origin = Instant::now();
        let clock = Clock {
            wall_at_zero: SystemTime::now(),
        };
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
            resumed = restored.claims.iter().filter(|c| c.held).count(),
            holds = restored.holds.iter().filter(|h| h.held).count(),
            "Node starting."
        );
        let stall =
            std::env::var_os("BUDDYGATE_FAULT_INJECTION").map(|_| cfg.data_dir.join("stall-store"));
        let (writer, stored) =
            writer::spawn(store, stall).context("cannot start the store writer")?;

        let tasks = TaskTracker::new();
        // Not a child of `cancel`: sockets, agents and the API keep working while the node
        // hands over after a shutdown request; they stop once `run` is done.
        let inner = CancellationToken::new();
        let metrics = Arc::new(Metrics::default());
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
        for (path, sock) in sockets.iter().enumerate() {
            tasks.spawn(receiver.clone().run(path, sock.clone()));
        }
        drop(receiver);
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
            sockets,
            agents: Arc::new(agents),
            history,
            agent_concurrency: cfg.agent_concurrency,
            origin,
            clock,
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
        };
        let result = core.run(cancel, inputs, cfg.shutdown_grace).await;
        inner.cancel();
        tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .is_err()
        {
            warn!("Some tasks did not stop within 5 s.");
        }
        drop(core);
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

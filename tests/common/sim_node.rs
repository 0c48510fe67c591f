//! One simulated node's HTTP API over real HTTP: a real `Shared` (channels, counters) around a
//! snapshot of a node in the simulator, served on a listener the caller bound. Used by
//! tests/api.rs, tests/onvif.rs and examples/dashboard_fixture.rs (which includes this file on
//! its own: it uses nothing else of tests/common).

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use buddygate::api::{self, Shared};
use buddygate::config::{Kind, Mode};
use buddygate::failover::Node;
use buddygate::sim::{Sim, SimOptions, SiteBuilder};
use buddygate::store::StoredEvent;
use buddygate::view::{Command, Metrics, Snapshot};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// fo-1's view 3 s after live-1 crashed, in a site of two live servers (`cameras[0]` cameras
/// and an I/O unit on live-1, `cameras[1]` cameras on live-2) and one spread-servers failover
/// server: fo-1 serves live-1's resources; live-2 serves its own. With `forged`, fo-1 got one
/// datagram that is not a heartbeat before the crash.
pub fn node_after_takeover(cameras: [usize; 2], forged: bool) -> (Node, Duration) {
    let site = SiteBuilder::new("hq")
        .live("live-1", &["fo-1"])
        .live("live-2", &["fo-1"])
        .failover("fo-1", Mode::SpreadServers, Some(2), Some(100))
        .many("live-1", Kind::Camera, cameras[0], 0)
        .resource("live-1-io", Kind::Io, "live-1", 5)
        .many("live-2", Kind::Camera, cameras[1], 0)
        .build();
    let mut sim = Sim::new(site, SimOptions::default());
    sim.run_for(Duration::from_secs(5));
    let (live, fo) = (sim.idx("live-1"), sim.idx("fo-1"));
    if forged {
        sim.inject(fo, 0, b"not a heartbeat".to_vec());
    }
    sim.crash(live);
    sim.run_for(Duration::from_secs(3));
    (sim.clone_node(fo).expect("fo-1 runs"), sim.now())
}

/// What the served API is given besides the snapshot.
pub struct ApiOptions {
    /// Bearer token for mutations.
    pub token: Option<String>,
    pub onvif_users: Vec<(String, String)>,
    /// Where `GET /events` opens the store.
    pub data_dir: PathBuf,
    /// Capacity of the event broadcast.
    pub channel: usize,
    /// Capacity of the command channel.
    pub commands: usize,
    pub metrics: Arc<Metrics>,
    /// Read access, host names, ONVIF push consumers, TLS.
    pub access: api::Access,
}

/// The runtime's side of a served API: publish snapshots and events, read commands.
pub struct NodeApi {
    /// `http://ADDR`.
    pub base: String,
    pub snapshot: watch::Sender<Arc<Snapshot>>,
    pub events: broadcast::Sender<Arc<StoredEvent>>,
    pub commands: mpsc::Receiver<Command>,
    pub cancel: CancellationToken,
    pub server: JoinHandle<std::io::Result<()>>,
}

/// Serves the API of a node whose view is `snapshot` on `listener`, until `cancel`.
pub fn serve(listener: TcpListener, snapshot: Snapshot, opts: ApiOptions) -> NodeApi {
    let (snapshot_tx, snapshot) = watch::channel(Arc::new(snapshot));
    let (events, _) = broadcast::channel(opts.channel);
    let (commands_tx, commands) = mpsc::channel(opts.commands);
    let shared = Shared {
        snapshot,
        events: events.clone(),
        commands: commands_tx,
        data_dir: opts.data_dir,
        token: opts.token,
        onvif_users: opts.onvif_users,
        metrics: opts.metrics,
        connectors: Default::default(),
        access: opts.access,
    };
    let scheme = if shared.access.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let base = format!("{scheme}://{}", listener.local_addr().expect("bound"));
    let cancel = CancellationToken::new();
    let server = tokio::spawn(api::serve(listener, shared, cancel.clone()));
    NodeApi {
        base,
        snapshot: snapshot_tx,
        events,
        commands,
        cancel,
        server,
    }
}

//! Sites built in code, for the simulator, tests and benchmarks.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{
    AgentSpec, AgentTimings, Api, Failback, Kind, Mode, Resource, ResourceIdx, Role, SecretRef,
    Server, ServerIdx, Site, Standby,
};

#[derive(Clone)]
struct PendingServer {
    id: String,
    role: Role,
    buddies: Vec<String>,
    mode: Option<Mode>,
    max_servers: Option<u32>,
    max_cameras: Option<u32>,
    pick: Vec<String>,
}

/// Builds a [`Site`] without a file. Addresses are loopback labels (`127.1.x.y`); the
/// simulator never opens a socket.
#[derive(Clone)]
pub struct SiteBuilder {
    name: String,
    heartbeat_interval: Duration,
    failure_timeout: Duration,
    failback: Failback,
    failback_delay: Duration,
    witnesses: usize,
    paths: usize,
    servers: Vec<PendingServer>,
    resources: Vec<(String, Kind, String, i32)>,
    /// Resources in hot or warm standby.
    standby: BTreeMap<String, Standby>,
}

impl SiteBuilder {
    /// Default timings of the design: 200 ms heartbeats, 1 s failure timeout, auto failback
    /// after 30 s, two network paths.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            heartbeat_interval: Duration::from_millis(200),
            failure_timeout: Duration::from_secs(1),
            failback: Failback::Auto,
            failback_delay: Duration::from_secs(30),
            witnesses: 0,
            paths: 2,
            servers: Vec::new(),
            resources: Vec::new(),
            standby: BTreeMap::new(),
        }
    }

    pub fn timings(mut self, heartbeat_interval: Duration, failure_timeout: Duration) -> Self {
        self.heartbeat_interval = heartbeat_interval;
        self.failure_timeout = failure_timeout;
        self
    }

    pub fn failback(mut self, failback: Failback, delay: Duration) -> Self {
        self.failback = failback;
        self.failback_delay = delay;
        self
    }

    pub fn witnesses(mut self, n: usize) -> Self {
        self.witnesses = n;
        self
    }

    pub fn paths(mut self, n: usize) -> Self {
        self.paths = n;
        self
    }

    pub fn live(mut self, id: &str, buddies: &[&str]) -> Self {
        self.servers.push(PendingServer {
            id: id.to_string(),
            role: Role::Live,
            buddies: buddies.iter().map(|b| b.to_string()).collect(),
            mode: None,
            max_servers: None,
            max_cameras: None,
            pick: Vec::new(),
        });
        self
    }

    pub fn failover(
        mut self,
        id: &str,
        mode: Mode,
        max_servers: Option<u32>,
        max_cameras: Option<u32>,
    ) -> Self {
        self.servers.push(PendingServer {
            id: id.to_string(),
            role: Role::Failover,
            buddies: Vec::new(),
            mode: Some(mode),
            max_servers,
            max_cameras,
            pick: Vec::new(),
        });
        self
    }

    /// Resources a spread-cameras server `id` takes.
    pub fn pick(mut self, id: &str, resources: &[&str]) -> Self {
        let s = self
            .servers
            .iter_mut()
            .find(|s| s.id == id)
            .expect("pick on a server added before");
        s.pick.extend(resources.iter().map(|r| r.to_string()));
        self
    }

    /// One resource.
    pub fn resource(mut self, id: &str, kind: Kind, server: &str, priority: i32) -> Self {
        self.resources
            .push((id.to_string(), kind, server.to_string(), priority));
        self
    }

    /// `count` resources of `kind` on `server`, named `{server}-{kind}-{n:03}`.
    pub fn many(mut self, server: &str, kind: Kind, count: usize, priority: i32) -> Self {
        for n in 1..=count {
            let id = format!("{server}-{}-{n:03}", kind.as_str());
            self.resources
                .push((id, kind, server.to_string(), priority));
        }
        self
    }

    /// Puts resources `ids` (added before) in hot standby.
    pub fn standby(mut self, ids: &[&str]) -> Self {
        let hot = ids.iter().map(|id| (id.to_string(), Standby::Hot));
        self.standby.extend(hot);
        self
    }

    /// Puts resources `ids` (added before) in warm standby.
    pub fn warm_standby(mut self, ids: &[&str]) -> Self {
        let warm = ids.iter().map(|id| (id.to_string(), Standby::Warm));
        self.standby.extend(warm);
        self
    }

    /// Resolves ids. Panics on a dangling id: builders are for code, not for user input.
    pub fn build(self) -> Site {
        let idx = |id: &str| -> ServerIdx {
            ServerIdx(
                self.servers
                    .iter()
                    .position(|s| s.id == id)
                    .unwrap_or_else(|| panic!("no server {id}")) as u16,
            )
        };
        let ridx = |id: &str| -> ResourceIdx {
            ResourceIdx(
                self.resources
                    .iter()
                    .position(|r| r.0 == id)
                    .unwrap_or_else(|| panic!("no resource {id}")) as u32,
            )
        };
        let servers = self
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let ip = Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8);
                Server {
                    id: s.id.clone(),
                    role: s.role,
                    address: IpAddr::V4(ip),
                    heartbeat: (0..self.paths)
                        .map(|p| SocketAddr::new(IpAddr::V4(ip), 7400 + p as u16))
                        .collect(),
                    api: Some(SocketAddr::new(IpAddr::V4(ip), 8400)),
                    buddies: s.buddies.iter().map(|b| idx(b)).collect(),
                    mode: s.mode,
                    max_servers: s.max_servers,
                    max_cameras: s.max_cameras,
                    pick: s.pick.iter().map(|r| ridx(r)).collect(),
                }
            })
            .collect();
        let resources = self
            .resources
            .iter()
            .map(|(id, kind, server, priority)| Resource {
                id: id.clone(),
                kind: *kind,
                server: idx(server),
                priority: *priority,
                agent: AgentSpec::default(),
                timings: AgentTimings {
                    standby: self.standby.get(id).copied().unwrap_or_default(),
                    ..AgentTimings::default()
                },
                params: Default::default(),
            })
            .collect();
        Site {
            name: self.name,
            secret: SecretRef::Inline("sim".into()),
            heartbeat_interval: self.heartbeat_interval,
            failure_timeout: self.failure_timeout,
            failback: self.failback,
            failback_delay: self.failback_delay,
            witnesses: (0..self.witnesses)
                .map(|w| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 2, 0, 1)), 9000 + w as u16))
                .collect(),
            connectors: PathBuf::from("connectors"),
            api: Api {
                token: None,
                onvif_users: Vec::new(),
            },
            servers,
            resources,
        }
    }
}

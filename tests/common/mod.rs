//! Real nodes on loopback for integration tests: a site file with free ports in a temp dir,
//! `buddygate run` processes started from the built binary, and an HTTP client for their APIs.
//! For connectors run in-process: a real store to deliver from ([`Outbox`]).

#![allow(dead_code)]

pub mod receiver;
pub mod sim_node;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use buddygate::connectors::{self, ConnectorKind, ConnectorStatus};
use buddygate::store::{Store, StoredEvent};
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-token-7f3a";

/// A free port on `ip` for both UDP and TCP (bound, then released).
pub fn free_port(ip: &str) -> u16 {
    loop {
        let udp = UdpSocket::bind(format!("{ip}:0")).expect("bind udp");
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(format!("{ip}:{port}")).is_ok() {
            return port;
        }
    }
}

pub struct ServerSpec {
    pub id: String,
    pub live: bool,
    pub buddies: Vec<String>,
    pub cameras: usize,
    pub heartbeat: Vec<SocketAddr>,
    pub api: SocketAddr,
    pub address: String,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub site: PathBuf,
    pub servers: Vec<ServerSpec>,
    children: Vec<Option<Child>>,
    starts: Vec<usize>,
}

/// Options of the site file.
pub struct SiteOptions {
    /// Failover servers `fo-1`..`fo-N`; every live server lists them all as buddies.
    pub failover: usize,
    pub failback: &'static str,
    pub failback_delay: &'static str,
    pub extra_resource_keys: &'static str,
    /// Connector files (name, TOML) in `connectors/` beside the site file.
    pub connectors: Vec<(&'static str, String)>,
    /// Extra keys for every failover server (`max_servers = 3`, ...).
    pub extra_failover_keys: &'static str,
    /// Extra keys of `[api]` (after `token = "file:api.token"`): `read_token`, `tls`, ...
    pub extra_api_keys: String,
}

/// A server of a hand-built topology: `buddies` empty makes it a failover server.
pub struct Spec {
    pub id: &'static str,
    pub buddies: &'static [&'static str],
    pub cameras: usize,
}

impl Default for SiteOptions {
    fn default() -> Self {
        Self {
            failover: 1,
            failback: "auto",
            failback_delay: "3s",
            extra_resource_keys: "",
            connectors: Vec::new(),
            extra_failover_keys: "",
            extra_api_keys: String::new(),
        }
    }
}

impl Cluster {
    /// `live` live servers with `cameras` cameras each, covered by spread-servers failover
    /// servers `fo-1`.. (`opts.failover`). Not started.
    pub fn new(name: &str, live: usize, cameras: usize, opts: SiteOptions) -> Self {
        let fos: Vec<String> = (1..=opts.failover).map(|f| format!("fo-{f}")).collect();
        let mut specs: Vec<(String, Vec<String>, usize)> = (1..=live)
            .map(|i| (format!("live-{i}"), fos.clone(), cameras))
            .collect();
        specs.extend(fos.iter().map(|f| (f.clone(), Vec::new(), 0)));
        Self::build(name, specs, opts)
    }

    /// A hand-built topology: live servers with their own buddies, failover servers.
    pub fn with_servers(name: &str, specs: &[Spec], opts: SiteOptions) -> Self {
        let specs = specs
            .iter()
            .map(|s| {
                let buddies = s.buddies.iter().map(|b| b.to_string()).collect();
                (s.id.to_string(), buddies, s.cameras)
            })
            .collect();
        Self::build(name, specs, opts)
    }

    fn build(name: &str, specs: Vec<(String, Vec<String>, usize)>, opts: SiteOptions) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "buddygate-it-{name}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("site.key"),
            "integration-test-site-key-0123456789\n",
        )
        .unwrap();
        std::fs::write(dir.join("api.token"), format!("{TOKEN}\n")).unwrap();
        let mut servers = Vec::new();
        for (i, (id, buddies, cameras)) in specs.into_iter().enumerate() {
            let is_live = !buddies.is_empty();
            let a = format!("127.0.1.{}", i + 1);
            let b = format!("127.0.2.{}", i + 1);
            let heartbeat = vec![
                format!("{a}:{}", free_port(&a)).parse().unwrap(),
                format!("{b}:{}", free_port(&b)).parse().unwrap(),
            ];
            let api = format!("{a}:{}", free_port(&a)).parse().unwrap();
            servers.push(ServerSpec {
                id,
                live: is_live,
                buddies,
                cameras,
                heartbeat,
                api,
                address: a,
            });
        }
        let mut toml = format!(
            "[site]\nname = \"{name}\"\nsecret = \"file:site.key\"\nheartbeat_interval = \"200ms\"\n\
             failure_timeout = \"1s\"\nfailback = \"{}\"\nfailback_delay = \"{}\"\n\n\
             [api]\ntoken = \"file:api.token\"\n{}\n",
            opts.failback, opts.failback_delay, opts.extra_api_keys
        );
        for s in &servers {
            let hb: Vec<String> = s.heartbeat.iter().map(|a| format!("\"{a}\"")).collect();
            toml.push_str(&format!(
                "[[servers]]\nid = \"{}\"\naddress = \"{}\"\nheartbeat = [{}]\napi = \"{}\"\n",
                s.id,
                s.address,
                hb.join(", "),
                s.api
            ));
            if s.live {
                let b: Vec<String> = s.buddies.iter().map(|b| format!("\"{b}\"")).collect();
                toml.push_str(&format!("buddies = [{}]\n\n", b.join(", ")));
            } else {
                toml.push_str(&format!(
                    "role = \"failover\"\nmode = \"spread-servers\"\n{}\n",
                    opts.extra_failover_keys
                ));
            }
        }
        for s in servers.iter().filter(|s| s.live && s.cameras > 0) {
            toml.push_str(&format!(
                "[[resources]]\nserver = \"{}\"\nid = \"{{server}}-cam-{{01..{:02}}}\"\nkind = \"camera\"\n{}\n",
                s.id, s.cameras, opts.extra_resource_keys
            ));
        }
        let site = dir.join("site.toml");
        std::fs::write(&site, toml).unwrap();
        std::fs::create_dir_all(dir.join("connectors")).unwrap();
        for (name, text) in &opts.connectors {
            std::fs::write(dir.join("connectors").join(format!("{name}.toml")), text).unwrap();
        }
        Self {
            children: servers.iter().map(|_| None).collect(),
            starts: vec![0; servers.len()],
            dir,
            site,
            servers,
        }
    }

    pub fn index(&self, id: &str) -> usize {
        self.servers
            .iter()
            .position(|s| s.id == id)
            .expect("server")
    }

    pub fn start(&mut self, id: &str) {
        self.start_limited(id, &[], &[], None);
    }

    /// Starts `id` with extra arguments to `buddygate run` (`--shutdown-grace 1s`, ...).
    pub fn start_with(&mut self, id: &str, args: &[&str]) {
        self.start_limited(id, args, &[], None);
    }

    /// Starts `id` with extra environment variables (fault injection).
    pub fn start_with_env(&mut self, id: &str, env: &[(&str, &str)]) {
        self.start_limited(id, &[], env, None);
    }

    /// Starts `id` with its file-descriptor limits set to `(soft, hard)` first (`ulimit -n` in
    /// a shell that then execs the daemon: the pid is the daemon's).
    pub fn start_with_nofile(&mut self, id: &str, soft: u64, hard: u64) {
        self.start_limited(id, &[], &[], Some((soft, hard)));
    }

    fn start_limited(
        &mut self,
        id: &str,
        args: &[&str],
        env: &[(&str, &str)],
        nofile: Option<(u64, u64)>,
    ) {
        let i = self.index(id);
        self.starts[i] += 1;
        let log =
            std::fs::File::create(self.dir.join(format!("{id}.{}.log", self.starts[i]))).unwrap();
        let mut command = match nofile {
            None => Command::new(env!("CARGO_BIN_EXE_buddygate")),
            Some((soft, hard)) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!(
                        "ulimit -S -n {soft} && ulimit -H -n {hard} && exec \"$0\" \"$@\""
                    ))
                    .arg(env!("CARGO_BIN_EXE_buddygate"));
                c
            }
        };
        let child = command
            .args(["run", "--config"])
            .arg(&self.site)
            .args(["--node", id])
            .args(args)
            .env("BUDDYGATE_LOG", "info,buddygate=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn buddygate run");
        self.children[i] = Some(child);
    }

    pub fn start_all(&mut self) {
        let ids: Vec<String> = self.servers.iter().map(|s| s.id.clone()).collect();
        for id in ids {
            self.start(&id);
        }
    }

    pub fn pid(&self, id: &str) -> u32 {
        self.children[self.index(id)]
            .as_ref()
            .expect("running")
            .id()
    }

    pub fn kill9(&mut self, id: &str) {
        let i = self.index(id);
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for a process that was sent a signal to exit (at most 10 s).
    pub fn term_wait(&mut self, id: &str) -> std::process::ExitStatus {
        let i = self.index(id);
        let mut c = self.children[i].take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "{id} did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and wait for the process to exit (at most 10 s).
    pub fn term(&mut self, id: &str) -> std::process::ExitStatus {
        let i = self.index(id);
        let mut c = self.children[i].take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "{id} did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn api(&self, id: &str) -> String {
        format!("http://{}", self.servers[self.index(id)].api)
    }

    pub fn data_dir(&self, id: &str) -> PathBuf {
        self.dir.join("data").join(id)
    }

    pub fn logs(&self, id: &str) -> String {
        let i = self.index(id);
        (1..=self.starts[i])
            .map(|n| {
                std::fs::read_to_string(self.dir.join(format!("{id}.{n}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n----- restart -----\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("logs kept in {}", self.dir.display());
        }
    }
}

/// An HTTP client for the nodes' APIs: every request carries the site's API token (reads need
/// one), unless it sets its own `Authorization`. [`anonymous`] sends none.
pub fn client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {TOKEN}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .default_headers(headers)
        .build()
        .unwrap()
}

/// An HTTP client without credentials.
pub fn anonymous() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap()
}

pub async fn get(url: &str) -> Option<Value> {
    let resp = client().get(url).send().await.ok()?;
    resp.json().await.ok()
}

/// Polls `f` every 20 ms until it returns `Some`, or panics after `limit` with `what`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The node's view of every resource homed on `home`: (owner, address, epoch, state).
pub async fn owners(api: &str, home: &str) -> Option<Vec<(String, String, u64, String)>> {
    let v = get(&format!("{api}/api/v1/resources")).await?;
    Some(
        v["resources"]
            .as_array()?
            .iter()
            .filter(|r| r["server"] == home)
            .map(|r| {
                (
                    r["owner"].as_str().unwrap_or("").to_string(),
                    r["address"].as_str().unwrap_or("").to_string(),
                    r["epoch"].as_u64().unwrap_or(0),
                    r["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
    )
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate signed by it, written as
/// `ca.pem`, `client.pem` and `client.key` into `dir`. Returns the CA, the server certificate,
/// the server key and the client certificate, as PEM.
pub fn pki(dir: &Path) -> (String, String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "buddygate test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(vec!["fo-1.buddygate".to_string()]).unwrap();
    client_params
        .distinguished_name
        .push(DnType::CommonName, "fo-1");
    let client = client_params.signed_by(&client_key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("client.pem"), client.pem()).unwrap();
    std::fs::write(dir.join("client.key"), client_key.serialize_pem()).unwrap();
    (
        ca_cert.pem(),
        server.pem(),
        server_key.serialize_pem(),
        client.pem(),
    )
}

/// A TLS server configuration (ring) with `cert`/`key` that requires a client certificate
/// from `ca`.
pub fn tls_server_config(
    ca: &str,
    cert: &str,
    key: &str,
) -> std::sync::Arc<tokio_rustls::rustls::ServerConfig> {
    use std::sync::Arc;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .unwrap(),
    )
}

/// A node's real store in a temp dir and the broadcast a connector wakes on: an outbox for a
/// connector run in the test's process.
pub struct Outbox {
    pub dir: PathBuf,
    pub store: Store,
    pub events: broadcast::Sender<Arc<StoredEvent>>,
}

impl Outbox {
    pub fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("buddygate-outbox-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        Self {
            dir,
            store,
            events: broadcast::channel(64).0,
        }
    }

    /// Stores a CloudEvent of type `ty` from fo-1 (id `fo-1:{seq}`, time now) with `data`, and
    /// announces it.
    pub fn append(&mut self, ty: &str, data: Value) -> StoredEvent {
        let e = self
            .store
            .append_event(ty, |seq| cloud_event(ty, seq, data))
            .unwrap();
        let _ = self.events.send(Arc::new(e.clone()));
        e
    }
}

/// The CloudEvent of type `ty` that fo-1 of site `hq` stores as `seq` (id `fo-1:{seq}`, time
/// now) with `data`.
pub fn cloud_event(ty: &str, seq: u64, data: Value) -> String {
    json!({
        "specversion": "1.0", "id": format!("fo-1:{seq}"), "type": ty,
        "source": "buddygate://hq/fo-1",
        "time": buddygate::cloudevents::rfc3339(std::time::SystemTime::now()),
        "datacontenttype": "application/json", "seq": seq, "data": data,
    })
    .to_string()
}

/// A small CloudEvent of type `ty`: fo-1 at 127.0.0.3, epoch 298 (the benchmarks' load).
pub fn small_event(ty: &str, seq: u64) -> String {
    let data =
        json!({"site": "hq", "new_server": {"id": "fo-1", "address": "127.0.0.3"}, "epoch": 298});
    cloud_event(ty, seq, data)
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A connector file's text, checked (panics with the diagnostics when it has errors).
pub fn connector(text: &str, file: &str, base: Option<&Path>) -> ConnectorKind {
    let (c, d) = connectors::check_file(text, file, Path::new(file), base);
    assert!(
        !d.iter().any(|d| d.is_error()),
        "{}",
        d.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    c.unwrap().kind
}

/// A connector file's diagnostics, as printed, when it is refused (panics when it is valid).
/// `base`: the file's folder, where its TLS and template files are read.
pub fn refused(text: &str, file: &str, base: Option<&Path>) -> Vec<String> {
    let (c, d) = connectors::check_file(text, file, Path::new(file), base);
    assert!(c.is_none(), "{file} was accepted");
    d.iter().map(|d| d.to_string()).collect()
}

/// A connector task running in the test's process.
pub struct Running {
    pub status: Arc<ConnectorStatus>,
    pub replay: Arc<Notify>,
    pub cancel: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn spawn<F>(
        status: Arc<ConnectorStatus>,
        run: impl FnOnce(Arc<Notify>, CancellationToken) -> F,
    ) -> Self
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let replay = Arc::new(Notify::new());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(replay.clone(), cancel.clone()));
        Self {
            status,
            replay,
            cancel,
            task,
        }
    }
}

/// The resident memory of process `pid`, in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// The value of the first sample of `name` (a full metric name) whose labels contain `label`
/// (`""`: any) in a Prometheus exposition.
pub fn metric(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
                && l.contains(label)
        })
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A GET's body as text.
pub async fn text(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The committed JSON Schema `path` (from the repository root) is `schema`; with `BLESS` set,
/// writes it first. `test` names the test target that regenerates it.
pub fn assert_schema_fresh(schema: &schemars::Schema, path: &str, test: &str) {
    let fresh = serde_json::to_string_pretty(schema).unwrap() + "\n";
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&file, &fresh).unwrap();
    }
    let committed = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        committed == fresh,
        "{path} is stale: run BLESS=1 cargo test --test {test}"
    );
}

/// `node`'s view with `live` down and its first `resources` resources active on `owner` at
/// `epoch`: what a connector publishes after a failover, without running one.
pub fn owners_snapshot(
    site: &Arc<buddygate::config::Site>,
    live: buddygate::config::ServerIdx,
    node: buddygate::config::ServerIdx,
    owner: buddygate::config::ServerIdx,
    epoch: u64,
    resources: u32,
) -> buddygate::view::Snapshot {
    use buddygate::failover::{ResourceState, ResourceView, ServerState, ServerView, Stats};
    buddygate::view::Snapshot {
        site: site.clone(),
        node,
        booting: false,
        now: Duration::ZERO,
        taken_at: std::time::SystemTime::now(),
        servers: [live, node]
            .into_iter()
            .map(|s| ServerView {
                server: s,
                state: if s == live {
                    ServerState::Down
                } else {
                    ServerState::Up
                },
                paths: Vec::new(),
                known: true,
                config_mismatch: false,
                booting: false,
                held: false,
            })
            .collect(),
        resources: (0..resources)
            .map(|i| ResourceView {
                resource: buddygate::config::ResourceIdx(i),
                owner: Some(owner),
                epoch,
                state: ResourceState::Active,
                unplaced: false,
            })
            .collect(),
        stats: Stats::default(),
        agents: Default::default(),
    }
}

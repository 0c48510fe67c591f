//! The live demo's site: its files (site file, secrets, connector files) and its nodes, each a
//! real `buddygate run` process, with what the demo asks their APIs.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail};
use serde_json::Value;

pub(super) const NODES: [&str; 3] = ["live-1", "live-2", "fo-1"];
pub(super) const TOKEN: &str = "demo-token";

pub(super) struct Node {
    id: &'static str,
    ip: String,
    api: String,
    child: Option<Child>,
    starts: u32,
}

pub(super) struct Site {
    pub(super) dir: PathBuf,
    pub(super) file: PathBuf,
    pub(super) nodes: Vec<Node>,
    pub(super) t0: Instant,
    pub(super) client: reqwest::Client,
}

fn free_port(ip: &str) -> anyhow::Result<u16> {
    for _ in 0..100 {
        let udp = UdpSocket::bind(format!("{ip}:0"))?;
        let port = udp.local_addr()?.port();
        if TcpListener::bind(format!("{ip}:{port}")).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port on {ip}")
}

/// The PSIM's signing secret in the demo.
pub(super) const WHSEC: &str = "whsec_ZGVtby1zaWduaW5nLWtleS1mb3ItYnVkZHlnYXRl";
pub(super) const ONVIF_USER: &str = "demo";
pub(super) const ONVIF_PASS: &str = "demo-onvif-pass";

pub(super) fn write_site(
    dir: &Path,
    psim_url: &str,
    mqtt_port: u16,
) -> anyhow::Result<(PathBuf, Vec<Node>)> {
    std::fs::create_dir_all(dir.join("connectors"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(
        dir.join("site.key"),
        format!("demo-{}\n", std::process::id()),
    )?;
    std::fs::write(dir.join("api.token"), format!("{TOKEN}\n"))?;
    std::fs::write(dir.join("onvif.pass"), format!("{ONVIF_PASS}\n"))?;
    std::fs::write(dir.join("connectors/psim.secret"), format!("{WHSEC}\n"))?;
    std::fs::write(
        dir.join("connectors/psim.toml"),
        format!(
            "# The demo's PSIM: signed CloudEvents of failovers and failbacks.\n\
             type = \"webhook\"\nurl = \"{psim_url}\"\nsecret = \"file:psim.secret\"\n\
             events = [\"buddygate.failover.completed\", \"buddygate.failback.completed\"]\n"
        ),
    )?;
    std::fs::write(
        dir.join("connectors/bus.toml"),
        format!(
            "# The demo's embedded MQTT broker: retained owners, online flags, every event.\n\
             type = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{mqtt_port}\"\nkeep_alive = \"2s\"\n"
        ),
    )?;
    let mut toml = format!(
        "# Written by `buddygate demo`.\n[site]\nname = \"demo\"\nsecret = \"file:site.key\"\n\
         heartbeat_interval = \"200ms\"\nfailure_timeout = \"1s\"\nfailback = \"auto\"\n\
         failback_delay = \"5s\"\n\n[api]\ntoken = \"file:api.token\"\n\
         onvif_users = [{{ user = \"{ONVIF_USER}\", password = \"file:onvif.pass\" }}]\n\n",
    );
    let mut nodes = Vec::new();
    for (i, id) in NODES.iter().enumerate() {
        let ip = format!("127.0.0.{}", 11 + i);
        let ip2 = format!("127.0.1.{}", 11 + i);
        let hb1 = format!("{ip}:{}", free_port(&ip)?);
        let hb2 = format!("{ip2}:{}", free_port(&ip2)?);
        let api = format!("{ip}:{}", free_port(&ip)?);
        toml.push_str(&format!(
            "[[servers]]\nid = \"{id}\"\naddress = \"{ip}\"\nheartbeat = [\"{hb1}\", \"{hb2}\"]\napi = \"{api}\"\n"
        ));
        if id.starts_with("live") {
            toml.push_str("buddies = [\"fo-1\"]\n\n");
        } else {
            toml.push_str(
                "role = \"failover\"\nmode = \"spread-servers\"\nmax_servers = 2\nmax_cameras = 60\n\n",
            );
        }
        nodes.push(Node {
            id,
            ip,
            api: format!("http://{api}"),
            child: None,
            starts: 0,
        });
    }
    toml.push_str(
        "[[resources]]\nserver = \"live-{1..2}\"\nid = \"{server}-cam-{01..25}\"\nkind = \"camera\"\n\n\
         [[resources]]\nserver = \"live-{1..2}\"\nid = \"{server}-io\"\nkind = \"io\"\npriority = 5\n\n\
         [[resources]]\nserver = \"live-{1..2}\"\nid = \"{server}-lpr\"\nkind = \"lpr\"\npriority = 8\n\n\
         [[resources]]\nserver = \"live-{1..2}\"\nid = \"{server}-analytics\"\nkind = \"analytics\"\npriority = 3\n",
    );
    let file = dir.join("site.toml");
    std::fs::write(&file, toml)?;
    Ok((file, nodes))
}

impl Site {
    pub(super) fn say(&self, msg: &str) {
        println!("[{:>7.3}s] {msg}", self.t0.elapsed().as_secs_f64());
        let _ = std::io::stdout().flush();
    }

    fn node(&mut self, id: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("demo node")
    }

    pub(super) fn start(&mut self, id: &str) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("cannot find the buddygate binary")?;
        let (file, dir) = (self.file.clone(), self.dir.clone());
        let n = self.node(id);
        n.starts += 1;
        let log = std::fs::File::create(dir.join(format!("{id}.{}.log", n.starts)))?;
        let child = Command::new(exe)
            .args(["run", "--config"])
            .arg(&file)
            .args(["--node", id])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {id}"))?;
        n.child = Some(child);
        Ok(())
    }

    pub(super) fn kill9(&mut self, id: &str) {
        if let Some(mut c) = self.node(id).child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(super) fn api(&self, id: &str) -> String {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .expect("node")
            .api
            .clone()
    }

    pub(super) fn ip(&self, id: &str) -> String {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .expect("node")
            .ip
            .clone()
    }

    async fn get(&self, id: &str, path: &str) -> Option<Value> {
        let resp = self
            .client
            .get(format!("{}{path}", self.api(id)))
            .bearer_auth(TOKEN)
            .send()
            .await
            .ok()?;
        resp.json().await.ok()
    }

    /// fo-1's view of every resource: id -> (owner, epoch, state).
    pub(super) async fn owners(
        &self,
        from: &str,
    ) -> Option<BTreeMap<String, (String, u64, String)>> {
        let v = self.get(from, "/api/v1/resources").await?;
        Some(
            v["resources"]
                .as_array()?
                .iter()
                .map(|r| {
                    (
                        r["id"].as_str().unwrap_or("").to_string(),
                        (
                            r["owner"].as_str().unwrap_or("-").to_string(),
                            r["epoch"].as_u64().unwrap_or(0),
                            r["state"].as_str().unwrap_or("").to_string(),
                        ),
                    )
                })
                .collect(),
        )
    }

    /// Prints the events `id` logged after `after`; returns the last sequence seen.
    pub(super) async fn print_events(&self, id: &str, after: u64) -> u64 {
        let Some(v) = self
            .get(id, &format!("/api/v1/events?after={after}&limit=1000"))
            .await
        else {
            return after;
        };
        let mut last = after;
        for e in v["events"].as_array().into_iter().flatten() {
            last = last.max(e["seq"].as_u64().unwrap_or(last));
            let ty = e["type"].as_str().unwrap_or("?");
            if ty.ends_with("path.up") || ty.ends_with("path.down") {
                continue;
            }
            let d = &e["data"];
            let detail = match ty.trim_start_matches("buddygate.") {
                "failover.completed" => format!(
                    "{} -> {} ({}) epoch {}, {} resources, takeover {} ms",
                    d["server"]["id"].as_str().unwrap_or("?"),
                    d["new_server"]["id"].as_str().unwrap_or("?"),
                    d["new_server"]["address"].as_str().unwrap_or("?"),
                    d["epoch"],
                    d["resources"].as_array().map_or(0, Vec::len),
                    d["takeover_ms"]
                ),
                "failback.completed" => format!(
                    "{} ({}) epoch {}, {} resources back in {} ms",
                    d["server"]["id"].as_str().unwrap_or("?"),
                    d["server"]["address"].as_str().unwrap_or("?"),
                    d["epoch"],
                    d["resources"].as_array().map_or(0, Vec::len),
                    d["failback_ms"]
                ),
                "failover.started" => format!(
                    "{} -> {}: {} resources at epoch {}",
                    d["server"]["id"].as_str().unwrap_or("?"),
                    d["new_server"]["id"].as_str().unwrap_or("?"),
                    d["resources"].as_array().map_or(0, Vec::len),
                    d["epoch"]
                ),
                _ => d["server"]["id"]
                    .as_str()
                    .or(d["resource"]["id"].as_str())
                    .unwrap_or("")
                    .to_string(),
            };
            self.say(&format!("  event from {id}: {ty} {detail}"));
        }
        last
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

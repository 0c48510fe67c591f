//! The API clients of the CLI: `status`, `failover`, `failback` and `replay`, through any
//! node's API (`--api URL`, or the site file's address of `--node`), over HTTP or HTTPS, with
//! the bearer token every read and mutation needs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::{EXIT_INVALID, EXIT_UNAVAILABLE, Target, load_all};

/// What a client command needs: the node's API and how to talk to it.
struct Endpoint {
    /// `http(s)://host:port`.
    base: String,
    /// The bearer token to send.
    token: Option<String>,
    client: reqwest::Client,
}

/// How a client command speaks TLS: the CA certificates it trusts (only them, or the system's
/// too), and the certificate it presents.
#[derive(Debug, Default)]
struct ClientTls {
    cas: Vec<PathBuf>,
    only: bool,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// Resolves the API base URL, the token and the TLS settings of a client command: `--api`,
/// `--token`, `--cacert`, `--cert`/`--key`; or, with `--config`, the node's address, the
/// site file's `api.token` (or `api.read_token` for a read), and with `[api] tls` HTTPS that
/// trusts the certificates of the node's certificate file and of `client_ca` (besides the
/// system's), presenting the node's own certificate when the API asks for one.
fn target(t: &Target, read: bool, err: &mut dyn Write) -> Option<Endpoint> {
    let mut tls = ClientTls {
        cas: t.cacert.iter().cloned().collect(),
        only: t.cacert.is_some(),
        cert: t.cert.clone(),
        key: t.key.clone(),
    };
    if t.cert.is_some() != t.key.is_some() {
        let _ = writeln!(err, "buddygate: --cert and --key go together");
        return None;
    }
    let (base, token) = if let Some(api) = &t.api {
        (api.trim_end_matches('/').to_string(), t.token.clone())
    } else {
        let Some(config) = &t.config else {
            let _ = writeln!(
                err,
                "buddygate: give --api URL, or --config FILE [--node ID]"
            );
            return None;
        };
        let loaded = load_all(config, err)?;
        let (site, ingress) = (&loaded.site, &loaded.ingress);
        let server = match &t.node {
            Some(id) => site.servers.iter().find(|s| &s.id == id),
            None => site.servers.iter().find(|s| s.api.is_some()),
        };
        let Some(addr) = server.and_then(|s| s.api) else {
            let _ = writeln!(
                err,
                "buddygate: no API address for that node in {}",
                config.display()
            );
            return None;
        };
        let dir = config.parent().unwrap_or(Path::new("."));
        let secret = |s: &Option<crate::config::SecretRef>| {
            s.as_ref()
                .and_then(|s| s.resolve(dir).ok())
                .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        };
        let token = t.token.clone().or_else(|| {
            secret(&site.api.token).or_else(|| read.then(|| secret(&ingress.read_token)).flatten())
        });
        let scheme = match &ingress.tls {
            Some(api_tls) => {
                if tls.cas.is_empty() {
                    tls.cas.push(api_tls.cert.clone());
                    tls.cas.extend(api_tls.client_ca.clone());
                }
                if api_tls.client_ca.is_some() && tls.cert.is_none() {
                    tls.cert = Some(api_tls.cert.clone());
                    tls.key = Some(api_tls.key.clone());
                }
                "https"
            }
            None => "http",
        };
        (format!("{scheme}://{addr}"), token)
    };
    match client(&tls) {
        Ok(client) => Some(Endpoint {
            base,
            token,
            client,
        }),
        Err(e) => {
            let _ = writeln!(err, "buddygate: {e}");
            None
        }
    }
}

/// The HTTP client of a command: 5 s per request; trusting `tls.cas` (only them with
/// `tls.only`, else the system's too); presenting `tls.cert`/`tls.key`.
fn client(tls: &ClientTls) -> Result<reqwest::Client, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(5));
    let mut certs = Vec::new();
    for ca in &tls.cas {
        certs.extend(
            reqwest::Certificate::from_pem_bundle(&read(ca)?)
                .map_err(|e| format!("{}: {e}", ca.display()))?,
        );
    }
    if !certs.is_empty() {
        builder = if tls.only {
            builder.tls_certs_only(certs)
        } else {
            builder.tls_certs_merge(certs)
        };
    }
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        let mut pem = read(cert)?;
        pem.push(b'\n');
        pem.extend(read(key)?);
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|e| format!("client certificate {}: {e}", cert.display()))?;
        builder = builder.identity(identity);
    }
    builder.build().map_err(|e| e.to_string())
}

fn client_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// A request's error with its causes (a TLS refusal is several levels down).
fn failed(url: &str, e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        let next = inner.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = inner.source();
    }
    format!("{url}: {text}")
}

async fn get_json(api: &Endpoint, url: &str) -> Result<Value, String> {
    let mut req = api.client.get(url);
    if let Some(t) = &api.token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| failed(url, &e))?;
    let status = resp.status();
    let body: Value = resp.json().await.map_err(|e| failed(url, &e))?;
    if !status.is_success() {
        let hint = match status.as_u16() {
            401 if api.token.is_none() => {
                " (give --token, or --config with the site file's api.token or api.read_token)"
            }
            _ => "",
        };
        return Err(format!("{url}: {status}: {}{hint}", body["error"]));
    }
    Ok(body)
}

/// `buddygate status`.
pub(super) fn status(t: &Target, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let Some(api) = target(t, true, err) else {
        return EXIT_INVALID;
    };
    let Ok(rt) = client_runtime() else {
        return EXIT_UNAVAILABLE;
    };
    let base = &api.base;
    let fetched = rt.block_on(async {
        let site = get_json(&api, &format!("{base}/api/v1/site")).await?;
        let resources = get_json(&api, &format!("{base}/api/v1/resources")).await?;
        let connectors = get_json(&api, &format!("{base}/api/v1/connectors"))
            .await
            .unwrap_or(Value::Null);
        Ok::<_, String>((site, resources, connectors))
    });
    let (site, resources, connectors) = match fetched {
        Ok(x) => x,
        Err(e) => {
            let _ = writeln!(err, "buddygate status: {e}");
            return EXIT_UNAVAILABLE;
        }
    };
    let _ = out.write_all(render_status(&site, &resources).as_bytes());
    let _ = out.write_all(render_connectors(&connectors).as_bytes());
    0
}

/// Connector health, from the API's `connectors` document.
pub fn render_connectors(v: &Value) -> String {
    use std::fmt::Write as _;
    let list = v["connectors"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "\n{:<16} {:<8} {:<9} {:>9} {:>6} {:>7} {:>5}  target / last error\n",
        "CONNECTOR", "TYPE", "STATE", "DELIVERED", "QUEUE", "RETRIED", "DEAD"
    );
    for c in list {
        let last = c["disabled_reason"]
            .as_str()
            .or(c["last_error"].as_str())
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "{:<16} {:<8} {:<9} {:>9} {:>6} {:>7} {:>5}  {}{last}",
            c["name"].as_str().unwrap_or("?"),
            c["type"].as_str().unwrap_or("?"),
            c["state"].as_str().unwrap_or("?"),
            c["delivered"].as_u64().unwrap_or(0),
            c["queue_depth"].as_u64().unwrap_or(0),
            c["retried"].as_u64().unwrap_or(0),
            c["dead_letters"].as_array().map_or(0, Vec::len),
            c["target"].as_str().unwrap_or("")
        );
    }
    s
}

/// The status tables, from the API's `site` and `resources` documents.
pub fn render_status(site: &Value, resources: &Value) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "site {} as node {} sees it\n",
        site["site"].as_str().unwrap_or("?"),
        site["node"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        s,
        "{:<14} {:<9} {:<10} {:<16} paths",
        "SERVER", "ROLE", "STATE", "ADDRESS"
    );
    for srv in site["servers"].as_array().into_iter().flatten() {
        let paths: Vec<String> = srv["paths"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let age = p["last_heard_ms"]
                    .as_u64()
                    .map(|ms| format!(" {ms}ms ago"))
                    .unwrap_or_default();
                format!(
                    "{} {}{age}",
                    p["address"].as_str().unwrap_or("?"),
                    p["state"].as_str().unwrap_or("?")
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "{:<14} {:<9} {:<10} {:<16} {}",
            srv["id"].as_str().unwrap_or("?"),
            srv["role"].as_str().unwrap_or("?"),
            srv["state"].as_str().unwrap_or("?"),
            srv["address"].as_str().unwrap_or("?"),
            if paths.is_empty() {
                "-".to_string()
            } else {
                paths.join(", ")
            }
        );
    }
    // Resources grouped by (home, owner, state): one line per group, so 5,000 cameras fit.
    let mut groups: Vec<(String, String, String, Vec<u64>, usize)> = Vec::new();
    for r in resources["resources"].as_array().into_iter().flatten() {
        let home = r["server"].as_str().unwrap_or("?").to_string();
        let owner = r["owner"].as_str().unwrap_or("-").to_string();
        let state = r["state"].as_str().unwrap_or("?").to_string();
        let epoch = r["epoch"].as_u64().unwrap_or(0);
        match groups
            .iter_mut()
            .find(|g| g.0 == home && g.1 == owner && g.2 == state)
        {
            Some(g) => {
                g.3.push(epoch);
                g.4 += 1;
            }
            None => groups.push((home, owner, state, vec![epoch], 1)),
        }
    }
    let _ = writeln!(
        s,
        "\n{:<14} {:<14} {:<11} {:>9} epochs",
        "HOME", "SERVED BY", "STATE", "RESOURCES"
    );
    for (home, owner, state, mut epochs, n) in groups {
        epochs.sort_unstable();
        epochs.dedup();
        let e = match (epochs.first(), epochs.last()) {
            (Some(a), Some(b)) if a != b => format!("{a}..{b}"),
            (Some(a), _) => a.to_string(),
            _ => "-".into(),
        };
        let _ = writeln!(s, "{home:<14} {owner:<14} {state:<11} {n:>9} {e}");
    }
    s
}

/// `buddygate replay CONNECTOR`.
pub(super) fn replay(t: &Target, connector: &str, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    post(
        t,
        &format!("connectors/{connector}/replay"),
        &format!("replay of {connector}"),
        out,
        err,
    )
}

/// `buddygate failover|failback SERVER`.
pub(super) fn command(
    t: &Target,
    action: &str,
    server: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    post(
        t,
        &format!("servers/{server}/{action}"),
        &format!("{action} of {server} (it reaches the nodes concerned with the next heartbeats)"),
        out,
        err,
    )
}

/// An authenticated POST to `{api}/api/v1/{path}`.
fn post(t: &Target, path: &str, what: &str, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let Some(api) = target(t, false, err) else {
        return EXIT_INVALID;
    };
    let Ok(rt) = client_runtime() else {
        return EXIT_UNAVAILABLE;
    };
    let url = format!("{}/api/v1/{path}", api.base);
    let result = rt.block_on(async {
        let mut req = api.client.post(&url);
        if let Some(t) = &api.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| failed(&url, &e))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        Ok::<_, String>((status, body))
    });
    match result {
        Ok((status, _)) if status.is_success() => {
            let _ = writeln!(out, "{what} accepted");
            0
        }
        Ok((status, body)) => {
            let _ = writeln!(
                err,
                "buddygate: {what}: {status}: {}",
                body["error"].as_str().unwrap_or("refused")
            );
            1
        }
        Err(e) => {
            let _ = writeln!(err, "buddygate: {what}: {e}");
            EXIT_UNAVAILABLE
        }
    }
}

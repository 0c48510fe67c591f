//! `buddygate run`: reads the site file and its secrets, then runs one server's daemon until
//! SIGTERM or Ctrl-C.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{EXIT_INVALID, EXIT_UNAVAILABLE, load_all};
use crate::config;
use crate::runtime::{Daemon, NodeConfig};

fn read_secret(what: &str, secret: &config::SecretRef, base: &Path) -> Result<Vec<u8>, String> {
    let bytes = secret
        .resolve(base)
        .map_err(|e| format!("cannot read {what} ({secret:?}): {e}"))?;
    if bytes.is_empty() {
        return Err(format!("{what} ({secret:?}) is empty"));
    }
    Ok(bytes)
}

/// The API's access settings with their secrets and TLS files read.
fn api_access(ingress: &config::Ingress, base: &Path) -> Result<crate::api::Access, String> {
    let read_token = match &ingress.read_token {
        Some(t) => Some(
            String::from_utf8_lossy(&read_secret("api.read_token", t, base)?)
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let tls = match &ingress.tls {
        Some(tls) => {
            Some(crate::api::listener::tls_config(tls).map_err(|e| format!("api.tls: {e}"))?)
        }
        None => None,
    };
    Ok(crate::api::Access {
        open_reads: ingress.read == config::ReadAccess::Open,
        read_token,
        hosts: ingress.hosts.clone(),
        onvif_push_allow: ingress.onvif_push_allow.clone(),
        tls,
    })
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BUDDYGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// What `buddygate run` takes besides the site file (flags or their environment variables).
#[derive(Debug, Clone, Copy)]
pub(super) struct RunSettings {
    /// `--agent-concurrency`.
    pub agent_concurrency: usize,
    /// `--shutdown-grace`.
    pub shutdown_grace: Duration,
}

/// `buddygate run`.
pub(super) fn run_node(
    config: &Path,
    node: &str,
    data_dir: Option<PathBuf>,
    settings: RunSettings,
    err: &mut dyn Write,
) -> u8 {
    let Some(loaded) = load_all(config, err) else {
        return EXIT_INVALID;
    };
    let (site, ingress, connectors, store) =
        (loaded.site, loaded.ingress, loaded.connectors, loaded.store);
    let Some(idx) = site.server_idx(node) else {
        let ids: Vec<&str> = site.servers.iter().map(|s| s.id.as_str()).collect();
        let _ = writeln!(
            err,
            "{}: no server {node:?} (servers: {})",
            config.display(),
            ids.join(", ")
        );
        return EXIT_INVALID;
    };
    let base = config.parent().unwrap_or(Path::new(".")).to_path_buf();
    let key = match read_secret("site.secret", &site.secret, &base) {
        Ok(k) => k,
        Err(e) => {
            let _ = writeln!(err, "buddygate: {e}");
            return EXIT_INVALID;
        }
    };
    let api_token = match &site.api.token {
        Some(t) => match read_secret("api.token", t, &base) {
            Ok(t) => Some(String::from_utf8_lossy(&t).trim().to_string()),
            Err(e) => {
                let _ = writeln!(err, "buddygate: {e}");
                return EXIT_INVALID;
            }
        },
        None => None,
    };
    let mut onvif_users = Vec::new();
    for (i, u) in site.api.onvif_users.iter().enumerate() {
        match read_secret(
            &format!("api.onvif_users[{i}].password"),
            &u.password,
            &base,
        ) {
            Ok(p) => onvif_users.push((u.user.clone(), String::from_utf8_lossy(&p).to_string())),
            Err(e) => {
                let _ = writeln!(err, "buddygate: {e}");
                return EXIT_INVALID;
            }
        }
    }
    let api_access = match api_access(&ingress, &base) {
        Ok(a) => a,
        Err(e) => {
            let _ = writeln!(err, "buddygate: {e}");
            return EXIT_INVALID;
        }
    };
    let data_dir = data_dir.unwrap_or_else(|| base.join("data").join(node));
    init_logging();
    let cfg = NodeConfig {
        site: Arc::new(site),
        node: idx,
        data_dir,
        key,
        api_token,
        onvif_users,
        agent_concurrency: settings.agent_concurrency,
        shutdown_grace: settings.shutdown_grace,
        connectors,
        api_access,
        store,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(err, "buddygate: cannot start the runtime: {e}");
            return EXIT_UNAVAILABLE;
        }
    };
    rt.block_on(async move {
        let daemon = match Daemon::build(cfg).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "Cannot start the node.");
                return EXIT_UNAVAILABLE;
            }
        };
        let cancel = CancellationToken::new();
        tokio::spawn(shutdown_on_signal(cancel.clone()));
        match daemon.run(cancel).await {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "The node stopped on an error.");
                1
            }
        }
    })
}

async fn shutdown_on_signal(cancel: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    cancel.cancel();
}

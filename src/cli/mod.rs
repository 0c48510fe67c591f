//! The command line: a clap [`Command`] per subcommand, each run by a function that writes to
//! the given outputs and returns the process exit code. `main` only parses and calls [`run`].
//!
//! - `check`: `buddygate check`, the site file's diagnostics or its summary.
//! - `node`: `buddygate run`, one server's daemon.
//! - `client`: `status`, `failover`, `failback`, `replay` through a node's API.
//! - `buddygate demo` runs [`crate::demo`].

mod check;
mod client;
mod node;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config;
use crate::connectors::{self, SiteFiles};

/// Exit code for an invalid site file (BSD `EX_USAGE`, as DESIGN fixes it).
pub const EXIT_INVALID: u8 = 64;
/// Exit code when the daemon or a client cannot start (BSD `EX_UNAVAILABLE`).
const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Debug, Parser)]
#[command(
    name = "buddygate",
    version,
    about = "Peer-to-peer buddy-server failover for CCTV video servers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// A whole site on this machine, nothing to install: kills a live node, shows the takeover
    /// and the failback as they happen, ends with a summary table.
    Demo {
        /// Leave the site running at the end, with the dashboard URLs printed.
        #[arg(long)]
        keep_running: bool,
        /// Where the site file, stores and logs go [default: a temp dir].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Run the same story in the simulator instead (the failover core over a simulated
        /// network, in virtual time).
        #[arg(long)]
        simulated: bool,
        /// With --simulated: as fast as possible instead of at wall-clock pace.
        #[arg(long, requires = "simulated")]
        fast: bool,
        /// With --simulated: seed of the simulated network.
        #[arg(long, default_value_t = 1, requires = "simulated")]
        seed: u64,
    },
    /// Validate the site file; print every problem as file:line:col: message (exit 64 when
    /// invalid), else a summary of the site.
    Check {
        /// The site file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run one server's daemon.
    Run {
        /// The site file (the same on every server).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// This server's id in the site file.
        #[arg(long, value_name = "ID")]
        node: String,
        /// Where claims, epochs and the event log are kept [default: data/ID beside the site file].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Agent starts run at once at most (hot standbys count as starts); stops and monitors
        /// have as many permits of their own, merges a quarter. Each start of an exec agent is
        /// a process: size it to the CPU and the VMS.
        #[arg(long, value_name = "N", env = "BUDDYGATE_AGENT_CONCURRENCY",
              default_value_t = crate::agent::DEFAULT_CONCURRENCY,
              value_parser = parse_concurrency)]
        agent_concurrency: usize,
        /// On SIGTERM, how long the buddies get to take everything over (make-before-break);
        /// then the node stops what is left itself, waits for those stops and exits.
        #[arg(long, value_name = "DURATION", env = "BUDDYGATE_SHUTDOWN_GRACE",
              default_value = "30s", value_parser = parse_duration)]
        shutdown_grace: std::time::Duration,
    },
    /// Servers, paths, who serves which resource, epochs, as a node sees them.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Manual takeover of SERVER's resources by its buddies (through any node's API).
    Failover {
        /// The live server to fail over.
        server: String,
        #[command(flatten)]
        target: Target,
    },
    /// Manual hand-back of SERVER's resources to it (through any node's API).
    Failback {
        /// The live server to fail back.
        server: String,
        #[command(flatten)]
        target: Target,
    },
    /// Re-deliver a connector's dead letters (and re-enable it after a 410), through any node
    /// that runs it.
    Replay {
        /// The connector (its file's stem).
        connector: String,
        #[command(flatten)]
        target: Target,
    },
    /// Print the JSON Schema of the site file (committed as schemas/site.schema.json).
    #[command(hide = true)]
    Schema,
}

/// Which node's API a client command talks to.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The node's API, e.g. http://127.0.0.1:8400.
    #[arg(long, value_name = "URL")]
    pub api: Option<String>,
    /// Or: take the API address (and the token) from the site file...
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// ...for this node [default: the first server with an API].
    #[arg(long, value_name = "ID")]
    pub node: Option<String>,
    /// Bearer token [default: $BUDDYGATE_TOKEN, or with --config the site file's api.token
    /// (for status also api.read_token)].
    #[arg(long, env = "BUDDYGATE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// An https API: PEM CA certificate(s) to trust for it [default: the system's roots; with
    /// --config, also the node's [api] tls certificate file].
    #[arg(long, value_name = "FILE", env = "BUDDYGATE_CACERT")]
    pub cacert: Option<PathBuf>,
    /// An https API that wants client certificates: this PEM certificate... [default with
    /// --config: the node's own [api] tls certificate]
    #[arg(long, value_name = "FILE", env = "BUDDYGATE_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// ...and its PEM private key.
    #[arg(long, value_name = "FILE", env = "BUDDYGATE_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
}

/// Runs the command with the process's stdout and stderr.
pub fn run(cli: Cli) -> ExitCode {
    // Not locked: the daemon's threads log to stderr while a command runs.
    let code = run_with(cli, &mut std::io::stdout(), &mut std::io::stderr());
    ExitCode::from(code)
}

/// Runs the command, writing results to `out` and diagnostics to `err`; returns the exit code.
pub fn run_with(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let result = match cli.command {
        Command::Check { config } => return check::check(&config, out, err),
        Command::Run {
            config,
            node,
            data_dir,
            agent_concurrency,
            shutdown_grace,
        } => {
            let settings = node::RunSettings {
                agent_concurrency,
                shutdown_grace,
            };
            return node::run_node(&config, &node, data_dir, settings, err);
        }
        Command::Status { target } => return client::status(&target, out, err),
        Command::Failover { server, target } => {
            return client::command(&target, "failover", &server, out, err);
        }
        Command::Replay { connector, target } => {
            return client::replay(&target, &connector, out, err);
        }
        Command::Failback { server, target } => {
            return client::command(&target, "failback", &server, out, err);
        }
        Command::Demo {
            keep_running,
            dir,
            simulated,
            fast,
            seed,
        } => {
            let result = if simulated {
                crate::demo::simulated::run(crate::demo::simulated::DemoOptions { fast, seed })
            } else {
                crate::demo::live::run(crate::demo::live::LiveOptions { keep_running, dir })
            };
            return match result {
                Ok(()) => 0,
                Err(e) => {
                    let _ = writeln!(err, "buddygate demo: {e:#}");
                    1
                }
            };
        }
        Command::Schema => out.write_all(config::file::schema_json().as_bytes()),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "buddygate: {e}");
            1
        }
    }
}

/// A number of agent operations at once: 1 to 4096.
fn parse_concurrency(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n @ 1..=4096) => Ok(n),
        _ => Err("expected a number from 1 to 4096".into()),
    }
}

/// A humantime duration: `500ms`, `30s`, `1m 30s`.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (e.g. \"30s\" or \"1m 30s\")"))
}

/// The site and its connector files.
pub(crate) fn load_all(config: &Path, err: &mut dyn Write) -> Option<SiteFiles> {
    match connectors::load_site(config) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                let _ = writeln!(err, "{w}");
            }
            Some(loaded)
        }
        Err(diagnostics) => {
            let _ = writeln!(err, "{diagnostics}");
            None
        }
    }
}

//! The command line: a clap [`Command`] per subcommand, each run by a function that writes to
//! the given outputs and returns the process exit code. `main` only parses and calls [`run`].

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config;

/// Exit code for an invalid site file (BSD `EX_USAGE`, as DESIGN fixes it).
pub const EXIT_INVALID: u8 = 64;

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
        /// Run in virtual time as fast as possible instead of at wall-clock pace.
        #[arg(long)]
        fast: bool,
        /// Seed of the simulated network.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Validate the site file; print every problem as file:line:col: message (exit 64 when
    /// invalid), else a summary of the site.
    Check {
        /// The site file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print the JSON Schema of the site file (committed as schemas/site.schema.json).
    #[command(hide = true)]
    Schema,
}

/// Runs the command with the process's stdout and stderr.
pub fn run(cli: Cli) -> ExitCode {
    let code = run_with(
        cli,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    ExitCode::from(code)
}

/// Runs the command, writing results to `out` and diagnostics to `err`; returns the exit code.
pub fn run_with(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let result = match cli.command {
        Command::Check { config } => return check(&config, out, err),
        Command::Demo { fast, seed } => {
            return match crate::demo::run(crate::demo::DemoOptions { fast, seed }) {
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

/// `buddygate check`: diagnostics to `err`, the summary to `out`.
fn check(path: &std::path::Path, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    match config::load(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                let _ = writeln!(err, "{w}");
            }
            let _ = out.write_all(config::summary::render(&loaded.site).as_bytes());
            let _ = writeln!(out);
            let _ =
                out.write_all(crate::failover::placement::capacity_report(&loaded.site).as_bytes());
            0
        }
        Err(diagnostics) => {
            let _ = writeln!(err, "{diagnostics}");
            let errors = diagnostics.errors().count();
            let _ = writeln!(
                err,
                "{}: invalid: {errors} error{}",
                path.display(),
                if errors == 1 { "" } else { "s" }
            );
            EXIT_INVALID
        }
    }
}

//! The `buddygate` binary: parse the command line, run it in the library.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    buddygate::cli::run(buddygate::cli::Cli::parse())
}

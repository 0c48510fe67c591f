//! The `exec` agent: runs `COMMAND start|stop|monitor|standby|merge` with the resource in
//! `BUDDYGATE_*` environment variables (its params in `BUDDYGATE_PARAM_<NAME>`, the
//! operation's own variables such as `BUDDYGATE_COVER_FROM` when set), stdin empty, and the
//! last lines of its output kept for the error.
//!
//! Exit 0 is success. Exit 7 means "not running": an error for `monitor`, success for `stop`
//! (stopping what is not running is done). Exit 3 ("unimplemented", as in Pacemaker) from the
//! optional `standby` and `merge` means the agent has no such operation. The program runs in a process group of its own;
//! when the operation is abandoned (timeout, shutdown) the whole group is killed, so a script's
//! children do not outlive it. A program that a start leaves in the background is not killed.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::task::AbortOnDropHandle;

use super::{AgentError, Op, ResourceEnv};

/// Bytes of output kept per stream.
const TAIL_BYTES: usize = 4096;

/// Lines of output kept for an error message.
const TAIL_LINES: usize = 5;

/// How long output is still read after the program exited: a program it left running in the
/// background may hold the pipes open.
const DRAIN: Duration = Duration::from_millis(100);

/// The exit status of `monitor` for "not running", and of `stop` for "was not running".
const NOT_RUNNING: i32 = 7;

/// The exit status of an optional operation the agent does not implement.
const UNIMPLEMENTED: i32 = 3;

pub(super) async fn run(command: &Path, env: &ResourceEnv, op: Op) -> Result<(), AgentError> {
    let io_error = |source| AgentError::Io {
        command: command.to_path_buf(),
        source,
    };
    let mut cmd = tokio::process::Command::new(command);
    cmd.arg(op.as_str())
        .envs(
            env.vars(op)
                .map(|(name, value)| (format!("BUDDYGATE_{}", name.to_ascii_uppercase()), value)),
        )
        .envs(env.params.iter().map(|p| (p.env_name(), &p.value)))
        .envs(
            env.op_vars
                .iter()
                .map(|(name, value)| (format!("BUDDYGATE_{}", name.to_ascii_uppercase()), value)),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    let mut child = cmd.spawn().map_err(|e| {
        if crate::fds::is_exhaustion(&e) {
            AgentError::Exhausted(format!("cannot start {}: {e}", command.display()))
        } else {
            io_error(e)
        }
    })?;
    // Declared after `child`, so dropped before it: the group dies first.
    let mut group = Group::of(&child);
    let mut stdout = Tail::read(child.stdout.take());
    let mut stderr = Tail::read(child.stderr.take());
    let status = child.wait().await.map_err(io_error)?;
    group.disarm();
    let _ = tokio::time::timeout(DRAIN, async {
        stdout.finished().await;
        stderr.finished().await;
    })
    .await;
    let output = match stderr.lines() {
        lines if lines.is_empty() => stdout.lines(),
        lines => lines,
    };
    outcome(op, status, output)
}

fn outcome(op: Op, status: ExitStatus, output: String) -> Result<(), AgentError> {
    match (status.code(), op) {
        (Some(0), _) | (Some(NOT_RUNNING), Op::Stop) => Ok(()),
        (Some(NOT_RUNNING), Op::Monitor) => Err(AgentError::NotRunning),
        (Some(UNIMPLEMENTED), op) if op.is_optional() => Err(AgentError::Unimplemented(output)),
        (Some(code), _) => Err(AgentError::Exited {
            status: format!("exit status {code}"),
            output,
        }),
        (None, _) => Err(AgentError::Exited {
            status: killed_by(status),
            output,
        }),
    }
}

#[cfg(unix)]
fn killed_by(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(signal) => format!("killed by signal {signal}"),
        None => status.to_string(),
    }
}

#[cfg(not(unix))]
fn killed_by(status: ExitStatus) -> String {
    status.to_string()
}

/// The agent's process group, killed on drop unless disarmed (the agent exited by itself).
struct Group {
    #[cfg(unix)]
    leader: Option<rustix::process::Pid>,
}

impl Group {
    #[cfg(unix)]
    fn of(child: &tokio::process::Child) -> Self {
        let leader = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(rustix::process::Pid::from_raw);
        Self { leader }
    }

    #[cfg(not(unix))]
    fn of(_: &tokio::process::Child) -> Self {
        Self {}
    }

    fn disarm(&mut self) {
        #[cfg(unix)]
        {
            self.leader = None;
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(leader) = self.leader {
            // Gone already is fine: there is nothing left to kill.
            let _ = rustix::process::kill_process_group(leader, rustix::process::Signal::KILL);
        }
    }
}

/// The end of one output stream, read by a task of its own (aborted when dropped).
struct Tail {
    bytes: Arc<Mutex<Vec<u8>>>,
    reader: Option<AbortOnDropHandle<()>>,
}

impl Tail {
    fn read<R: AsyncRead + Unpin + Send + 'static>(pipe: Option<R>) -> Self {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let reader = pipe.map(|mut pipe| {
            let bytes = bytes.clone();
            AbortOnDropHandle::new(tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = pipe.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut kept = bytes.lock().unwrap_or_else(PoisonError::into_inner);
                    kept.extend_from_slice(&buf[..n]);
                    let excess = kept.len().saturating_sub(TAIL_BYTES);
                    kept.drain(..excess);
                }
            }))
        });
        Self { bytes, reader }
    }

    /// Waits until the stream is closed.
    async fn finished(&mut self) {
        if let Some(reader) = &mut self.reader {
            let _ = reader.await;
            self.reader = None;
        }
    }

    /// The last non-empty lines, trimmed, joined with ` | `.
    fn lines(&self) -> String {
        let bytes = self.bytes.lock().unwrap_or_else(PoisonError::into_inner);
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        lines[lines.len().saturating_sub(TAIL_LINES)..].join(" | ")
    }
}

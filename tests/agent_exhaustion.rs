//! A node that cannot spawn its agents (out of file descriptors: `EMFILE`) has a problem of its
//! own, not its resources': a monitor that could not run is not a failed monitor (no takeover
//! because the node ran out of descriptors), a start that could not run is tried again without
//! using up its retries; both are counted (`outcome="exhausted"`) and logged.
//!
//! Its own test binary: it lowers the process's `RLIMIT_NOFILE`, which every thread shares.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use buddygate::agent::{AgentPool, AgentReport};
use buddygate::config::{AgentSpec, AgentTimings, Kind, Mode, ResourceIdx, ServerIdx};
use buddygate::failover::AgentOp;
use buddygate::sim::SiteBuilder;
use buddygate::view::Metrics;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const NODE: ServerIdx = ServerIdx(1);
const PATIENCE: Duration = Duration::from_secs(20);

fn ok_agent() -> AgentSpec {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/agents/ok.sh");
    AgentSpec::Exec {
        command: script,
        written: PathBuf::from("ok.sh"),
    }
}

fn count(metrics: &Metrics, op: &'static str, outcome: &'static str) -> u64 {
    let ops = metrics.agent_ops.lock().unwrap();
    ops.get(&(op, outcome)).copied().unwrap_or(0)
}

/// Waits (in real time: the agents are real processes) until `f` holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// No descriptor can be opened until the limit is put back (0, 1 and 2 stay open).
fn exhaust() -> Rlimit {
    let before = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(3),
            maximum: before.maximum,
        },
    )
    .unwrap();
    before
}

#[tokio::test(flavor = "current_thread")]
async fn a_node_out_of_descriptors_fails_no_monitor_and_uses_up_no_start_retries() {
    let mut site = SiteBuilder::new(&format!("exhausted-{}", std::process::id()))
        .live("live-1", &["fo-1"])
        .failover("fo-1", Mode::Mirrored, None, None)
        .many("live-1", Kind::Camera, 2, 0)
        .build();
    for r in &mut site.resources {
        r.agent = ok_agent();
        let mut timings = AgentTimings::DEFAULT;
        timings.timeout = Duration::from_secs(5);
        timings.monitor_interval = Some(Duration::from_millis(50));
        // No retries: a start that could not run must not count as the one attempt.
        timings.retries = 0;
        r.timings = timings;
    }
    let (tx, mut reports) = mpsc::channel(64);
    let metrics = Arc::new(Metrics::default());
    let cancel = CancellationToken::new();
    let pool = AgentPool::new(Arc::new(site), NODE, tx, metrics.clone(), cancel.clone(), 4);
    let (cam1, cam2) = (ResourceIdx(0), ResourceIdx(1));
    pool.start(cam1, 7);
    let done = tokio::time::timeout(PATIENCE, reports.recv())
        .await
        .unwrap();
    assert!(
        matches!(done, Some(AgentReport::Done { result: Ok(()), .. })),
        "{done:?}"
    );
    until("a monitor ran", || count(&metrics, "monitor", "ok") >= 1).await;

    // Out of descriptors: every monitor fails to spawn, and none of that is held against
    // cam-1 (two failed monitors would have failed it over).
    let limit = exhaust();
    let before = count(&metrics, "monitor", "exhausted");
    until("five monitors could not run", || {
        count(&metrics, "monitor", "exhausted") >= before + 5
    })
    .await;
    // A start asked for now cannot run either; it waits for the node to recover.
    pool.start(cam2, 7);
    until("the start could not run", || {
        count(&metrics, "start", "exhausted") >= 1
    })
    .await;
    setrlimit(Resource::Nofile, limit).unwrap();

    // The node recovered: monitors run again, the start succeeds at its first real attempt.
    let ok = count(&metrics, "monitor", "ok");
    until("monitors ran again", || {
        count(&metrics, "monitor", "ok") > ok
    })
    .await;
    let done = tokio::time::timeout(PATIENCE, reports.recv())
        .await
        .unwrap();
    match done {
        Some(AgentReport::Done {
            resource,
            op: AgentOp::Start,
            result,
            ..
        }) => {
            assert_eq!(resource, cam2);
            assert_eq!(result, Ok(()));
        }
        other => panic!("expected cam-2's start, got {other:?}"),
    }
    assert_eq!(pool.last_op(cam2, AgentOp::Start).unwrap().attempts, 1);
    assert_eq!(count(&metrics, "monitor", "failed"), 0);
    assert!(
        reports.try_recv().is_err(),
        "no MonitorFailed: the resource never failed"
    );
    cancel.cancel();
    pool.wait().await;
}

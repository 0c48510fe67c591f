//! Resource agents against real processes (the scripts in `tests/fixtures/agents/`) and a real
//! HTTP server on 127.0.0.1, and the agent pool's ordering, concurrency, retries, monitoring
//! and shutdown. Scripts and servers take real time, so those tests use short timeouts; the
//! simulated agent runs in paused time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use buddygate::agent::{AgentError, AgentPool, AgentReport, Agents, Op, ResourceEnv};
use buddygate::backoff::Backoff;
use buddygate::config::{
    AgentSpec, AgentTimings, FailMode, Kind, Mode, ParamValue, Params, ResourceIdx, SecretRef,
    ServerIdx, Site,
};
use buddygate::failover::AgentOp;
use buddygate::sim::SiteBuilder;
use buddygate::view::Metrics;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The node the agents run on in these tests: the failover server.
const NODE: ServerIdx = ServerIdx(1);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/agents")
        .join(name)
}

fn exec(name: &str) -> AgentSpec {
    AgentSpec::Exec {
        command: fixture(name),
        written: PathBuf::from(name),
    }
}

/// A site named `name` (unique per test: the fixtures name their files after it) with
/// `count` cameras on live-1, all with `agent` and `timings`; the node is fo-1.
fn site(name: &str, count: usize, agent: AgentSpec, timings: AgentTimings) -> Arc<Site> {
    let mut site = SiteBuilder::new(&format!("{name}-{}", std::process::id()))
        .live("live-1", &["fo-1"])
        .failover("fo-1", Mode::Mirrored, None, None)
        .many("live-1", Kind::Camera, count, 0)
        .build();
    for r in &mut site.resources {
        r.agent = agent.clone();
        r.timings = timings;
    }
    Arc::new(site)
}

fn timings(timeout: Duration, monitor_interval: Option<Duration>, retries: u32) -> AgentTimings {
    AgentTimings {
        timeout,
        monitor_interval,
        retries,
        ready_timeout: None,
        standby: buddygate::config::Standby::Off,
        merge_timeout: Duration::from_secs(600),
    }
}

/// `timings` with a `ready_timeout`.
fn ready_within(timeout: Duration, ready_timeout: Duration, retries: u32) -> AgentTimings {
    AgentTimings {
        ready_timeout: Some(ready_timeout),
        ..timings(timeout, None, retries)
    }
}

/// The environment of the first resource of `site` at epoch 7.
fn env_of(site: &Site) -> ResourceEnv {
    ResourceEnv::new(site, NODE, ResourceIdx(0), 7).expect("in the site")
}

/// A file the fixtures write: `$TMPDIR/buddygate-{what}.{site}.{resource}{suffix}`.
fn fixture_file(what: &str, env: &ResourceEnv, suffix: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "buddygate-{what}.{}.{}{suffix}",
        env.site, env.resource
    ))
}

/// Runs `op` on the first resource of `site` with its agent and timeout.
async fn run(site: &Site, op: Op) -> Result<(), AgentError> {
    let r = &site.resources[0];
    Agents::new()
        .run(&r.agent, &env_of(site), op, r.timings.timeout)
        .await
}

/// Whether process `pid` is gone (or a zombie nobody has reaped yet), waiting up to 2s.
async fn gone(pid: u32) -> bool {
    for _ in 0..200 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|s| s.trim_start().starts_with('Z')) =>
            {
                return true;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    false
}

fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid")
}

const SHORT: Duration = Duration::from_millis(300);

#[tokio::test]
async fn exec_agent_exit_0_is_success_and_a_failure_carries_the_scripts_stderr() {
    let ok = site("exec-ok", 1, exec("ok.sh"), timings(SHORT * 10, None, 0));
    for op in [Op::Start, Op::Monitor, Op::Stop] {
        assert!(run(&ok, op).await.is_ok(), "{op}");
    }
    let fail = site(
        "exec-fail",
        1,
        exec("fail-start.sh"),
        timings(SHORT * 10, None, 0),
    );
    let error = run(&fail, Op::Start).await.expect_err("start fails");
    assert_eq!(
        error.to_string(),
        "exit status 1: cannot attach live-1-camera-001: the VMS refused the connection"
    );
    assert_eq!(error.outcome(), "failed");
    assert!(run(&fail, Op::Stop).await.is_ok());

    let missing = site("exec-missing", 1, exec("nope.sh"), timings(SHORT, None, 0));
    let error = run(&missing, Op::Start).await.expect_err("no such program");
    assert_eq!(
        error.to_string(),
        format!(
            "cannot run {}: No such file or directory (os error 2)",
            fixture("nope.sh").display()
        )
    );
}

#[tokio::test]
async fn exec_agent_is_killed_with_its_children_when_it_times_out() {
    let site = site("exec-hang", 1, exec("hang.sh"), timings(SHORT, None, 0));
    let pid_file = fixture_file("hang", &env_of(&site), ".pid");
    let _ = std::fs::remove_file(&pid_file);
    let began = Instant::now();
    let error = run(&site, Op::Start).await.expect_err("times out");
    let took = began.elapsed();
    assert_eq!(error.to_string(), "timed out after 300ms");
    assert_eq!(error.outcome(), "timeout");
    assert!(took >= SHORT && took < SHORT * 4, "took {took:?}");
    // The script's `sleep 60` went with it.
    let sleep = read_pid(&pid_file);
    assert!(gone(sleep).await, "sleep {sleep} outlived its agent");
    std::fs::remove_file(&pid_file).expect("cleanup");
}

#[tokio::test]
async fn exec_monitor_exit_7_is_not_running_and_stop_exit_7_is_done() {
    let site = site(
        "exec-7",
        1,
        exec("not-running.sh"),
        timings(SHORT * 10, None, 0),
    );
    let error = run(&site, Op::Monitor).await.expect_err("not running");
    assert!(matches!(error, AgentError::NotRunning));
    assert_eq!(error.to_string(), "not running");
    assert!(run(&site, Op::Stop).await.is_ok(), "idempotent stop");
    assert!(run(&site, Op::Start).await.is_ok());
}

#[tokio::test]
async fn exec_agent_sees_the_resource_in_its_environment_and_an_empty_stdin() {
    let site = site("exec-env", 1, exec("env.sh"), timings(SHORT * 10, None, 0));
    let env = env_of(&site);
    let out = fixture_file("env", &env, ".monitor");
    let _ = std::fs::remove_file(&out);
    run(&site, Op::Monitor).await.expect("runs");
    let written = std::fs::read_to_string(&out).expect("the script wrote its environment");
    let expected = format!(
        "arg=monitor\n\
         BUDDYGATE_ADDRESS=127.1.0.2\n\
         BUDDYGATE_EPOCH=7\n\
         BUDDYGATE_KIND=camera\n\
         BUDDYGATE_NODE=fo-1\n\
         BUDDYGATE_OP=monitor\n\
         BUDDYGATE_RESOURCE=live-1-camera-001\n\
         BUDDYGATE_SERVER=live-1\n\
         BUDDYGATE_SITE={}\n\
         stdin=0\n",
        site.name
    );
    assert_eq!(written, expected);
    assert_eq!(site.server(NODE).address.to_string(), "127.1.0.2");
    std::fs::remove_file(&out).expect("cleanup");
}

#[tokio::test]
async fn exec_start_that_leaves_a_program_holding_its_output_still_returns() {
    let site = site(
        "exec-daemon",
        1,
        exec("daemon.sh"),
        timings(SHORT * 10, None, 0),
    );
    let pid_file = fixture_file("daemon", &env_of(&site), ".pid");
    let began = Instant::now();
    run(&site, Op::Start)
        .await
        .expect("exit 0 counts, whoever holds stdout");
    assert!(began.elapsed() < SHORT * 10, "{:?}", began.elapsed());
    // The program a start leaves behind is the VMS's now: not killed.
    let daemon = read_pid(&pid_file);
    assert!(!gone_now(daemon), "the background program was killed");
    let _ = std::process::Command::new("kill")
        .arg(daemon.to_string())
        .status();
    std::fs::remove_file(&pid_file).expect("cleanup");
}

fn gone_now(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'))
    })
}

/// One request the test server received.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: String,
    uri: String,
    body: String,
    token: Option<String>,
}

/// A local HTTP server that records requests. Paths containing `fail` answer 500, `slow` wait
/// 2s, everything else 204 after `hold`; it counts the most requests in flight at once.
#[derive(Clone, Default)]
struct Vms {
    seen: Arc<Mutex<Vec<Seen>>>,
    in_flight: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    hold: Duration,
}

impl Vms {
    async fn serve(self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new().fallback(answer).with_state(self);
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn answer(
    State(vms): State<Vms>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let now = vms.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    vms.most.fetch_max(now, Ordering::SeqCst);
    vms.seen.lock().expect("lock").push(Seen {
        method: method.to_string(),
        uri: uri.to_string(),
        body: String::from_utf8_lossy(&body).into_owned(),
        token: headers
            .get("x-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    });
    let path = uri.path().to_string();
    let wait = if path.contains("slow") {
        Duration::from_secs(2)
    } else {
        vms.hold
    };
    tokio::time::sleep(wait).await;
    vms.in_flight.fetch_sub(1, Ordering::SeqCst);
    if path.contains("fail") {
        (StatusCode::INTERNAL_SERVER_ERROR, "camera 7 is offline\n")
    } else {
        (StatusCode::NO_CONTENT, "")
    }
}

fn http(url: String, method: &str, body: Option<&str>) -> AgentSpec {
    AgentSpec::Http {
        url,
        method: method.into(),
        body: body.map(str::to_string),
        headers: vec![("x-token".into(), "s3cret".into())],
        standby_url: None,
        merge_url: None,
    }
}

#[tokio::test]
async fn http_agent_sends_the_rendered_request_and_2xx_is_success() {
    let vms = Vms::default();
    let addr = vms.clone().serve().await;
    let agent = http(
        format!(
            "http://{addr}/api/{{{{ kind }}}}/{{{{ resource }}}}/{{{{ op }}}}?epoch={{{{ epoch }}}}"
        ),
        "PUT",
        Some(
            r#"{"epoch": {{ epoch }}, "server": "{{ node }}", "address": "{{ address }}", "home": "{{ server }}", "site": "{{ site }}"}"#,
        ),
    );
    let site = site("http-ok", 1, agent, timings(SHORT * 10, None, 0));
    run(&site, Op::Start).await.expect("204 is success");
    run(&site, Op::Stop).await.expect("204 is success");
    let body = format!(
        r#"{{"epoch": 7, "server": "fo-1", "address": "127.1.0.2", "home": "live-1", "site": "{}"}}"#,
        site.name
    );
    let seen = |op: &str| Seen {
        method: "PUT".into(),
        uri: format!("/api/camera/live-1-camera-001/{op}?epoch=7"),
        body: body.clone(),
        token: Some("s3cret".into()),
    };
    assert_eq!(vms.seen(), [seen("start"), seen("stop")]);
}

#[tokio::test]
async fn http_agent_errors_say_what_the_server_answered_or_why_there_was_no_answer() {
    let vms = Vms::default();
    let addr = vms.clone().serve().await;
    let failing = site(
        "http-500",
        1,
        http(
            format!("http://{addr}/fail/{{{{ resource }}}}"),
            "POST",
            None,
        ),
        timings(SHORT * 10, None, 0),
    );
    let error = run(&failing, Op::Monitor).await.expect_err("500");
    assert_eq!(
        error.to_string(),
        "HTTP 500 Internal Server Error: camera 7 is offline"
    );
    assert_eq!(
        vms.seen(),
        [Seen {
            method: "POST".into(),
            uri: "/fail/live-1-camera-001".into(),
            body: String::new(),
            token: Some("s3cret".into()),
        }]
    );

    let slow = site(
        "http-slow",
        1,
        http(format!("http://{addr}/slow"), "POST", None),
        timings(SHORT, None, 0),
    );
    let error = run(&slow, Op::Start).await.expect_err("too slow");
    assert_eq!(error.to_string(), "timed out after 300ms");

    // A port nobody listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let refused = site(
        "http-refused",
        1,
        http(format!("http://{closed}/x"), "POST", None),
        timings(SHORT * 10, None, 0),
    );
    let error = run(&refused, Op::Start).await.expect_err("refused");
    let text = error.to_string();
    assert!(
        text.starts_with("request failed: error sending request for url (http://")
            && text.contains("Connection refused"),
        "{text}"
    );
}

/// A pool on fo-1 of `site`, its reports and its metrics.
fn new_pool(
    site: &Arc<Site>,
    concurrency: usize,
) -> (
    AgentPool,
    mpsc::Receiver<AgentReport>,
    Arc<Metrics>,
    CancellationToken,
) {
    let (tx, rx) = mpsc::channel(64);
    let metrics = Arc::new(Metrics::default());
    let cancel = CancellationToken::new();
    let pool = AgentPool::new(
        site.clone(),
        NODE,
        tx,
        metrics.clone(),
        cancel.clone(),
        concurrency,
    )
    .with_backoff(Backoff::doubling(
        Duration::from_millis(20),
        Duration::from_secs(1),
    ));
    (pool, rx, metrics, cancel)
}

async fn next(reports: &mut mpsc::Receiver<AgentReport>) -> AgentReport {
    tokio::time::timeout(Duration::from_secs(60), reports.recv())
        .await
        .expect("a report in time")
        .expect("the pool is alive")
}

fn done(resource: u32, epoch: u64, op: AgentOp, result: Result<(), &str>) -> AgentReport {
    AgentReport::Done {
        resource: ResourceIdx(resource),
        epoch,
        op,
        result: result.map_err(str::to_string),
    }
}

fn count(metrics: &Metrics, op: &'static str, outcome: &'static str) -> u64 {
    metrics
        .agent_ops
        .lock()
        .expect("lock")
        .get(&(op, outcome))
        .copied()
        .unwrap_or(0)
}

#[tokio::test]
async fn pool_runs_different_resources_in_parallel_up_to_its_concurrency() {
    let vms = Vms {
        hold: Duration::from_millis(250),
        ..Vms::default()
    };
    let addr = vms.clone().serve().await;
    let agent = http(
        format!("http://{addr}/{{{{ resource }}}}/{{{{ op }}}}"),
        "POST",
        None,
    );
    let site = site("pool-bound", 6, agent, timings(SHORT * 10, None, 0));
    let (pool, mut reports, metrics, _cancel) = new_pool(&site, 2);
    for r in 0..6 {
        pool.start(ResourceIdx(r), 3);
    }
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(next(&mut reports).await);
    }
    got.sort_by_key(|r| match r {
        AgentReport::Done { resource, .. } => resource.0,
        AgentReport::MonitorFailed { resource, .. } => resource.0 + 100,
    });
    let expected: Vec<_> = (0..6).map(|r| done(r, 3, AgentOp::Start, Ok(()))).collect();
    assert_eq!(got, expected);
    assert_eq!(
        vms.most.load(Ordering::SeqCst),
        2,
        "at most 2 at once, and 2 did run together"
    );
    assert_eq!(vms.seen().len(), 6);
    assert_eq!(count(&metrics, "start", "ok"), 6);
}

#[tokio::test(start_paused = true)]
async fn pool_runs_one_resources_operations_in_the_order_asked() {
    let agent = AgentSpec::Simulated {
        activation: Duration::from_secs(1),
        fail: None,
    };
    let site = site(
        "pool-order",
        2,
        agent,
        timings(Duration::from_secs(10), None, 0),
    );
    let (pool, mut reports, metrics, _cancel) = new_pool(&site, 16);
    let began = Instant::now();
    pool.start(ResourceIdx(0), 4);
    pool.stop(ResourceIdx(0), 4);
    pool.start(ResourceIdx(1), 4);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next(&mut reports).await);
    }
    // Both starts took their 1s side by side; the stop then took no time.
    assert_eq!(began.elapsed(), Duration::from_secs(1));
    let of = |r: u32| -> Vec<&AgentReport> {
        got.iter()
            .filter(|g| matches!(g, AgentReport::Done { resource, .. } if resource.0 == r))
            .collect()
    };
    // The stop asked while cam 0 was starting waited for the start.
    assert_eq!(
        of(0),
        [
            &done(0, 4, AgentOp::Start, Ok(())),
            &done(0, 4, AgentOp::Stop, Ok(()))
        ]
    );
    assert_eq!(of(1), [&done(1, 4, AgentOp::Start, Ok(()))]);
    assert_eq!(count(&metrics, "start", "ok"), 2);
    assert_eq!(count(&metrics, "stop", "ok"), 1);
}

#[tokio::test]
async fn pool_retries_a_failed_start_with_backoff_before_reporting() {
    let retrying = site(
        "pool-retry",
        1,
        exec("flaky.sh"),
        timings(SHORT * 10, None, 2),
    );
    let counter = fixture_file("flaky", &env_of(&retrying), "");
    let _ = std::fs::remove_file(&counter);
    let (pool, mut reports, metrics, _cancel) = new_pool(&retrying, 4);
    pool.start(ResourceIdx(0), 9);
    assert_eq!(next(&mut reports).await, done(0, 9, AgentOp::Start, Ok(())));
    let attempts = std::fs::read_to_string(&counter).expect("counter");
    assert_eq!(attempts.lines().count(), 3);
    assert_eq!(count(&metrics, "start", "failed"), 2);
    assert_eq!(count(&metrics, "start", "ok"), 1);
    std::fs::remove_file(&counter).expect("cleanup");

    // With one retry the flaky start fails for good, and says how often it was tried.
    let giving_up = site(
        "pool-give-up",
        1,
        exec("flaky.sh"),
        timings(SHORT * 10, None, 1),
    );
    let counter = fixture_file("flaky", &env_of(&giving_up), "");
    let _ = std::fs::remove_file(&counter);
    let (pool, mut reports, metrics, _cancel) = new_pool(&giving_up, 4);
    pool.start(ResourceIdx(0), 9);
    assert_eq!(
        next(&mut reports).await,
        done(
            0,
            9,
            AgentOp::Start,
            Err("exit status 1: start 2 fails (after 2 attempts)")
        )
    );
    assert_eq!(count(&metrics, "start", "failed"), 2);
    std::fs::remove_file(&counter).expect("cleanup");
}

#[tokio::test(start_paused = true)]
async fn pool_reports_two_failed_monitors_in_a_row_and_stops_monitoring() {
    let agent = AgentSpec::Simulated {
        activation: Duration::from_millis(50),
        fail: Some(FailMode::Monitor),
    };
    let every = Duration::from_secs(5);
    let site = site(
        "pool-monitor",
        1,
        agent,
        timings(Duration::from_secs(1), Some(every), 0),
    );
    let (pool, mut reports, metrics, _cancel) = new_pool(&site, 16);
    let began = Instant::now();
    pool.start(ResourceIdx(0), 2);
    assert_eq!(next(&mut reports).await, done(0, 2, AgentOp::Start, Ok(())));
    assert_eq!(
        next(&mut reports).await,
        AgentReport::MonitorFailed {
            resource: ResourceIdx(0),
            reason: "monitor: simulated monitor failure".into()
        }
    );
    assert_eq!(began.elapsed(), Duration::from_millis(50) + every * 2);
    // No more monitors after the report.
    tokio::time::sleep(every * 10).await;
    assert_eq!(count(&metrics, "monitor", "failed"), 2);
    assert!(reports.try_recv().is_err());
}

#[tokio::test(start_paused = true)]
async fn pool_monitors_a_started_resource_until_it_is_stopped() {
    let site = site(
        "pool-monitor-ok",
        1,
        AgentSpec::default(),
        timings(Duration::from_secs(1), Some(Duration::from_secs(5)), 0),
    );
    let (pool, mut reports, metrics, _cancel) = new_pool(&site, 16);
    pool.start(ResourceIdx(0), 1);
    assert_eq!(next(&mut reports).await, done(0, 1, AgentOp::Start, Ok(())));
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert_eq!(count(&metrics, "monitor", "ok"), 3);
    pool.stop(ResourceIdx(0), 1);
    assert_eq!(next(&mut reports).await, done(0, 1, AgentOp::Stop, Ok(())));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(count(&metrics, "monitor", "ok"), 3);
    assert_eq!(count(&metrics, "monitor", "failed"), 0);
}

#[tokio::test]
async fn pool_reports_an_exec_resource_whose_monitor_says_not_running() {
    let site = site(
        "pool-exec-monitor",
        1,
        exec("not-running.sh"),
        timings(SHORT * 10, Some(Duration::from_millis(50)), 0),
    );
    let (pool, mut reports, metrics, _cancel) = new_pool(&site, 16);
    pool.start(ResourceIdx(0), 5);
    assert_eq!(next(&mut reports).await, done(0, 5, AgentOp::Start, Ok(())));
    assert_eq!(
        next(&mut reports).await,
        AgentReport::MonitorFailed {
            resource: ResourceIdx(0),
            reason: "monitor: not running".into()
        }
    );
    assert_eq!(count(&metrics, "monitor", "failed"), 2);
}

#[tokio::test]
async fn pool_ends_everything_on_cancel_and_kills_running_agents() {
    let site = site(
        "pool-cancel",
        1,
        exec("hang.sh"),
        timings(Duration::from_secs(30), None, 0),
    );
    let pid_file = fixture_file("hang", &env_of(&site), ".pid");
    let _ = std::fs::remove_file(&pid_file);
    let (pool, mut reports, metrics, cancel) = new_pool(&site, 16);
    pool.start(ResourceIdx(0), 1);
    // Wait until the agent runs.
    for _ in 0..200 {
        if pid_file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sleep = read_pid(&pid_file);
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), pool.wait())
        .await
        .expect("the workers end");
    assert!(gone(sleep).await, "sleep {sleep} outlived the pool");
    // Nothing is reported for an operation cut short by shutdown, nor counted.
    assert!(reports.try_recv().is_err());
    assert_eq!(
        count(&metrics, "start", "ok") + count(&metrics, "start", "failed"),
        0
    );
    // And nothing runs after it.
    pool.start(ResourceIdx(0), 2);
    tokio::time::timeout(Duration::from_secs(1), pool.wait())
        .await
        .expect("no worker was started");
    assert!(reports.try_recv().is_err());
    std::fs::remove_file(&pid_file).expect("cleanup");
}

#[test]
fn reports_become_core_inputs() {
    use buddygate::failover::Input;
    let input: Input = done(3, 8, AgentOp::Stop, Err("exit status 2")).into();
    assert_eq!(
        input,
        Input::AgentDone {
            resource: ResourceIdx(3),
            epoch: 8,
            op: AgentOp::Stop,
            result: Err("exit status 2".into())
        }
    );
    let input: Input = AgentReport::MonitorFailed {
        resource: ResourceIdx(1),
        reason: "monitor: not running".into(),
    }
    .into();
    assert_eq!(
        input,
        Input::MonitorFailed {
            resource: ResourceIdx(1),
            reason: "monitor: not running".into()
        }
    );
}

#[test]
fn resource_env_lists_every_agent_variable_in_order() {
    let site = site("vars", 1, AgentSpec::default(), AgentTimings::default());
    let env = env_of(&site);
    let vars: BTreeMap<&str, String> = env.vars(Op::Stop).into_iter().collect();
    let names: Vec<&str> = env.vars(Op::Stop).iter().map(|(n, _)| *n).collect();
    assert_eq!(names, buddygate::config::AGENT_VARIABLES);
    assert_eq!(vars["op"], "stop");
    assert_eq!(vars["epoch"], "7");
    assert_eq!(vars["server"], "live-1");
    assert!(matches!(
        ResourceEnv::new(&site, ServerIdx(9), ResourceIdx(0), 1),
        Err(AgentError::NotInSite)
    ));
    assert!(matches!(
        ResourceEnv::new(&site, NODE, ResourceIdx(9), 1),
        Err(AgentError::NotInSite)
    ));
}

#[tokio::test]
async fn the_example_vms_agent_follows_the_contract() {
    let site = site(
        "example",
        1,
        AgentSpec::Exec {
            command: Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agents/vms-camera.sh"),
            written: PathBuf::from("agents/vms-camera.sh"),
        },
        timings(SHORT * 10, None, 0),
    );
    let r = &site.resources[0];
    let env = ResourceEnv {
        // Its state file is named after the resource: unique per test run.
        resource: format!("cam-example-{}", std::process::id()),
        ..env_of(&site)
    };
    let agents = Agents::new();
    let run = |op| agents.run(&r.agent, &env, op, r.timings.timeout);
    // BUDDYGATE_STATE_DIR is not set: its default.
    let state = Path::new("/tmp/buddygate-vms/fo-1").join(&env.resource);
    let monitor = run(Op::Monitor).await.expect_err("not started");
    assert!(matches!(monitor, AgentError::NotRunning), "{monitor}");
    run(Op::Start).await.expect("start");
    run(Op::Start).await.expect("start again: idempotent");
    assert_eq!(
        std::fs::read_to_string(&state).expect("state file"),
        "kind=camera\nhome=live-1\nepoch=7\naddress=127.1.0.2\n"
    );
    run(Op::Monitor).await.expect("running");
    run(Op::Stop).await.expect("stop");
    run(Op::Stop).await.expect("stop again: idempotent");
    assert!(!state.exists());
    let monitor = run(Op::Monitor).await.expect_err("stopped");
    assert!(matches!(monitor, AgentError::NotRunning), "{monitor}");
}

/// `site` with `params` on every resource.
fn with_params(site: Arc<Site>, params: &[(&str, ParamValue)]) -> Arc<Site> {
    let mut site = Arc::unwrap_or_clone(site);
    for r in &mut site.resources {
        r.params = Params(
            params
                .iter()
                .map(|(n, v)| (n.to_string(), v.clone()))
                .collect(),
        );
    }
    Arc::new(site)
}

fn text(value: &str) -> ParamValue {
    ParamValue::Text(value.into())
}

#[tokio::test]
async fn exec_agent_gets_its_params_with_secrets_read_when_it_runs() {
    let dir = std::env::temp_dir().join(format!("buddygate-params-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("cam.pass"), "pa ss\n").expect("secret");
    let secret = |path: &str| ParamValue::Secret {
        written: SecretRef::File(path.into()),
        base: dir.clone(),
    };
    let params = with_params(
        site(
            "exec-params",
            1,
            exec("env.sh"),
            timings(SHORT * 10, None, 0),
        ),
        &[
            ("password", secret("cam.pass")),
            ("url", text("rtsp://10.0.5.1/cam-1")),
            ("vms_id", text("17")),
        ],
    );
    let env = env_of(&params);
    assert_eq!(
        format!("{:?}", env.params),
        r#"[password=<secret>, url="rtsp://10.0.5.1/cam-1", vms_id="17"]"#,
        "a secret's value is never shown"
    );
    let out = fixture_file("env", &env, ".start");
    let _ = std::fs::remove_file(&out);
    run(&params, Op::Start).await.expect("runs");
    let written = std::fs::read_to_string(&out).expect("the script wrote its environment");
    let params: Vec<&str> = written
        .lines()
        .filter(|l| l.starts_with("BUDDYGATE_PARAM_"))
        .collect();
    assert_eq!(
        params,
        [
            "BUDDYGATE_PARAM_PASSWORD=pa ss",
            "BUDDYGATE_PARAM_URL=rtsp://10.0.5.1/cam-1",
            "BUDDYGATE_PARAM_VMS_ID=17",
        ]
    );
    std::fs::remove_file(&out).expect("cleanup");

    // A secret that cannot be read fails the operation before anything runs, and says which.
    let missing = with_params(
        site(
            "exec-params-missing",
            1,
            exec("env.sh"),
            timings(SHORT * 10, None, 0),
        ),
        &[("password", secret("nope.pass"))],
    );
    let error = run_env(&missing, Op::Start)
        .await
        .expect_err("unreadable secret");
    assert_eq!(
        error.to_string(),
        "param password: cannot read file:nope.pass: No such file or directory (os error 2)"
    );
    assert!(!fixture_file("env", &env_of_any(&missing), ".start").exists());
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Like [`run`], but an environment that cannot be built is the operation's error.
async fn run_env(site: &Site, op: Op) -> Result<(), AgentError> {
    let r = &site.resources[0];
    let env = ResourceEnv::new(site, NODE, ResourceIdx(0), 7)?;
    Agents::new()
        .run(&r.agent, &env, op, r.timings.timeout)
        .await
}

/// The environment of the first resource without its params (they may not be readable).
fn env_of_any(site: &Site) -> ResourceEnv {
    let mut site = site.clone();
    site.resources[0].params = Params::default();
    env_of(&site)
}

#[tokio::test]
async fn http_templates_see_params() {
    let vms = Vms::default();
    let addr = vms.clone().serve().await;
    let agent = http(
        format!("http://{addr}/cameras/{{{{ params.vms_id }}}}/{{{{ op }}}}"),
        "POST",
        Some(r#"{"url": "{{ params.url }}", "epoch": {{ epoch }}}"#),
    );
    let site = with_params(
        site("http-params", 1, agent, timings(SHORT * 10, None, 0)),
        &[
            ("url", text("rtsp://10.0.5.1/cam-1")),
            ("vms_id", text("17")),
        ],
    );
    run(&site, Op::Start).await.expect("204 is success");
    assert_eq!(
        vms.seen(),
        [Seen {
            method: "POST".into(),
            uri: "/cameras/17/start".into(),
            body: r#"{"url": "rtsp://10.0.5.1/cam-1", "epoch": 7}"#.into(),
            token: Some("s3cret".into()),
        }]
    );
}

#[tokio::test]
async fn pool_start_is_done_only_once_monitor_says_running() {
    let site = site(
        "pool-ready",
        1,
        exec("slow-ready.sh"),
        ready_within(SHORT * 10, Duration::from_secs(5), 0),
    );
    let counter = fixture_file("ready", &env_of(&site), "");
    let (pool, mut reports, metrics, _cancel) = new_pool(&site, 4);
    pool.start(ResourceIdx(0), 3);
    assert_eq!(next(&mut reports).await, done(0, 3, AgentOp::Start, Ok(())));
    // Two "not running" answers, then "running": the report came after the third monitor.
    let monitors = std::fs::read_to_string(&counter).expect("counter");
    assert_eq!(monitors.lines().count(), 3);
    assert_eq!(count(&metrics, "monitor", "failed"), 2);
    assert_eq!(count(&metrics, "monitor", "ok"), 1);
    let time = pool
        .last_op(ResourceIdx(0), AgentOp::Start)
        .expect("measured");
    assert!(time.ok && time.attempts == 1 && time.epoch == 3, "{time:?}");
    // Polled at once, after 25 ms and after 50 ms more.
    let ready = time.ready_after.expect("a readiness wait");
    assert!(ready >= Duration::from_millis(75), "{ready:?}");
    assert!(time.took >= ready, "{time:?}");
    assert_eq!(pool.last_op(ResourceIdx(0), AgentOp::Stop), None);
    pool.stop(ResourceIdx(0), 3);
    assert_eq!(next(&mut reports).await, done(0, 3, AgentOp::Stop, Ok(())));
    let stop = pool
        .last_op(ResourceIdx(0), AgentOp::Stop)
        .expect("measured");
    assert!(stop.ok && stop.ready_after.is_none(), "{stop:?}");
    std::fs::remove_file(&counter).expect("cleanup");
}

#[tokio::test]
async fn pool_start_that_never_gets_ready_fails_at_the_ready_timeout_and_is_retried() {
    let site = site(
        "pool-never-ready",
        1,
        exec("not-running.sh"),
        ready_within(SHORT * 10, SHORT, 1),
    );
    let (pool, mut reports, metrics, _cancel) = new_pool(&site, 4);
    let began = Instant::now();
    pool.start(ResourceIdx(0), 4);
    assert_eq!(
        next(&mut reports).await,
        done(
            0,
            4,
            AgentOp::Start,
            Err("not ready within 300ms: monitor: not running (after 2 attempts)")
        )
    );
    assert!(began.elapsed() >= SHORT * 2, "{:?}", began.elapsed());
    assert_eq!(count(&metrics, "start", "ok"), 2);
    let time = pool
        .last_op(ResourceIdx(0), AgentOp::Start)
        .expect("measured");
    assert!(
        !time.ok && time.attempts == 2 && time.ready_after.is_none(),
        "{time:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn pool_measures_each_start_and_stop_from_the_moment_it_was_asked() {
    let site = site(
        "pool-times",
        2,
        AgentSpec::Simulated {
            activation: Duration::from_millis(400),
            fail: None,
        },
        ready_within(Duration::from_secs(5), Duration::from_secs(1), 0),
    );
    // One permit: the second start waits for the first.
    let (pool, mut reports, _metrics, _cancel) = new_pool(&site, 1);
    pool.start(ResourceIdx(0), 1);
    pool.start(ResourceIdx(1), 1);
    let mut took = Vec::new();
    for _ in 0..2 {
        let AgentReport::Done { resource, .. } = next(&mut reports).await else {
            panic!("a start report");
        };
        let time = pool.last_op(resource, AgentOp::Start).expect("measured");
        assert_eq!(
            time.ready_after,
            Some(Duration::ZERO),
            "a simulated start works at once"
        );
        took.push((resource.0, time.took));
    }
    took.sort();
    assert_eq!(
        took,
        [
            (0, Duration::from_millis(400)),
            (1, Duration::from_millis(800))
        ]
    );
}

/// The lines the `ops.sh` fixture wrote for the first resource of `site` (and removes them).
fn ops_written(site: &Site) -> Vec<String> {
    let path = fixture_file("ops", &env_of_any(site), "");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    text.lines().map(str::to_string).collect()
}

#[tokio::test]
async fn optional_operations_an_agent_lacks_are_unimplemented_not_failures() {
    let lacking = with_params(
        site(
            "ops-lacking",
            1,
            exec("ops.sh"),
            timings(SHORT * 10, None, 0),
        ),
        &[("extras", text("no"))],
    );
    ops_written(&lacking);
    for op in [Op::Standby, Op::Merge] {
        let e = run(&lacking, op).await.expect_err("exit 3");
        assert!(matches!(e, AgentError::Unimplemented(_)), "{op}: {e:?}");
        assert_eq!(e.outcome(), "unimplemented");
        assert_eq!(
            e.to_string(),
            format!("not implemented by this agent: {op}: unknown operation")
        );
    }
    run(&lacking, Op::Start).await.expect("start is there");
    assert_eq!(ops_written(&lacking), ["start epoch=7 cover= merge=..@/"]);

    // An http agent without `standby_url` / `merge_url` sends nothing for them.
    let vms = Vms::default();
    let addr = vms.clone().serve().await;
    let plain = http(format!("http://{addr}/{{{{ op }}}}"), "POST", None);
    let site_plain = site("http-ops", 1, plain, timings(SHORT * 10, None, 0));
    let e = run(&site_plain, Op::Standby)
        .await
        .expect_err("no standby_url");
    assert_eq!(
        e.to_string(),
        "not implemented by this agent: no standby_url"
    );
    let e = run(&site_plain, Op::Merge).await.expect_err("no merge_url");
    assert_eq!(e.to_string(), "not implemented by this agent: no merge_url");
    assert!(vms.seen().is_empty());
}

#[tokio::test]
async fn cover_from_and_merge_variables_reach_exec_and_http_agents() {
    let site_exec = site("ops-vars", 1, exec("ops.sh"), timings(SHORT * 10, None, 0));
    ops_written(&site_exec);
    let agents = Agents::new();
    let r = &site_exec.resources[0];
    let mut env = env_of(&site_exec);
    env.op_vars = vec![("cover_from", "2026-11-24T22:00:00.250Z".into())];
    agents
        .run(&r.agent, &env, Op::Start, r.timings.timeout)
        .await
        .expect("start");
    env.op_vars = vec![
        ("merge_from", "2026-11-24T22:00:00.250Z".into()),
        ("merge_to", "2026-11-24T22:05:00.000Z".into()),
        ("merge_server", "fo-1".into()),
        ("merge_address", "10.0.1.21".into()),
    ];
    agents
        .run(&r.agent, &env, Op::Merge, r.timings.timeout)
        .await
        .expect("merge");
    env.op_vars = Vec::new();
    agents
        .run(&r.agent, &env, Op::Stop, r.timings.timeout)
        .await
        .expect("stop");
    assert_eq!(
        ops_written(&site_exec),
        [
            "start epoch=7 cover=2026-11-24T22:00:00.250Z merge=..@/",
            "merge epoch=7 cover= merge=2026-11-24T22:00:00.250Z..2026-11-24T22:05:00.000Z@fo-1/10.0.1.21",
            "stop epoch=7 cover= merge=..@/",
        ]
    );

    // http: `standby_url` and `merge_url` for those operations; every op variable is defined,
    // `none` when the operation has none.
    let vms = Vms::default();
    let addr = vms.clone().serve().await;
    let agent = AgentSpec::Http {
        url: format!("http://{addr}/cams/{{{{ resource }}}}/{{{{ op }}}}"),
        method: "POST".into(),
        body: Some(
            "{{ op }} {{ cover_from or '-' }} {{ merge_from or '-' }} {{ merge_server or '-' }}"
                .into(),
        ),
        headers: Vec::new(),
        standby_url: Some(format!("http://{addr}/standby/{{{{ resource }}}}")),
        merge_url: Some(format!(
            "http://{addr}/merge/{{{{ resource }}}}?from={{{{ merge_from }}}}&to={{{{ merge_to }}}}&server={{{{ merge_server }}}}"
        )),
    };
    let site_http = site("http-ops-vars", 1, agent, timings(SHORT * 10, None, 0));
    let r = &site_http.resources[0];
    let mut env = env_of(&site_http);
    for op in [Op::Standby, Op::Start, Op::Merge] {
        env.op_vars = match op {
            Op::Start => vec![("cover_from", "2026-11-24T22:00:00.250Z".into())],
            Op::Merge => vec![
                ("merge_from", "2026-11-24T22:00:00.250Z".into()),
                ("merge_to", "2026-11-24T22:05:00.000Z".into()),
                ("merge_server", "fo-1".into()),
                ("merge_address", "10.0.1.21".into()),
            ],
            _ => Vec::new(),
        };
        agents
            .run(&r.agent, &env, op, r.timings.timeout)
            .await
            .unwrap_or_else(|e| panic!("{op}: {e}"));
    }
    let seen: Vec<(String, String)> = vms.seen().into_iter().map(|s| (s.uri, s.body)).collect();
    let cam = &env.resource;
    assert_eq!(
        seen,
        [
            (format!("/standby/{cam}"), "standby - - -".to_string()),
            (
                format!("/cams/{cam}/start"),
                "start 2026-11-24T22:00:00.250Z - -".to_string()
            ),
            (
                format!(
                    "/merge/{cam}?from=2026-11-24T22:00:00.250Z&to=2026-11-24T22:05:00.000Z&server=fo-1"
                ),
                "merge - 2026-11-24T22:00:00.250Z fo-1".to_string()
            ),
        ]
    );
}

#[tokio::test]
async fn pool_prepares_a_standby_that_a_start_supersedes_and_a_release_stops() {
    let site = site(
        "pool-standby",
        2,
        exec("ops.sh"),
        timings(SHORT * 10, None, 0),
    );
    ops_written(&site);
    let (pool, mut reports, metrics, _cancel) = new_pool(&site, 4);
    let cam = ResourceIdx(0);
    let cover = std::time::UNIX_EPOCH + Duration::from_millis(1_795_557_600_250);
    let asked = std::time::SystemTime::now();
    pool.standby(cam, 199);
    pool.standby(cam, 199); // prepared already: nothing more runs
    pool.idle().await;
    assert_eq!(pool.standing_by(), [cam]);
    pool.start_covering(cam, 298, Some(cover));
    assert_eq!(
        next(&mut reports).await,
        done(0, 298, AgentOp::Start, Ok(()))
    );
    assert!(
        pool.standing_by().is_empty(),
        "the start superseded the standby"
    );
    let time = pool.last_op(cam, AgentOp::Start).expect("measured");
    assert!(
        time.from_standby && time.cover_from == Some(cover),
        "{time:?}"
    );
    assert!(
        time.standby_ready
            .is_some_and(|t| asked <= t && t <= time.asked_at),
        "when the standby was ready: {time:?}"
    );
    pool.stop(cam, 298);
    assert_eq!(
        next(&mut reports).await,
        done(0, 298, AgentOp::Stop, Ok(()))
    );
    pool.release(cam, 399); // nothing prepared: nothing runs
    pool.standby(cam, 399);
    pool.release(cam, 399);
    pool.idle().await;
    assert_eq!(
        ops_written(&site),
        [
            "standby epoch=199 cover= merge=..@/",
            "start epoch=298 cover=2026-11-24T22:00:00.250Z merge=..@/",
            "stop epoch=298 cover= merge=..@/",
            "standby epoch=399 cover= merge=..@/",
            "stop epoch=399 cover= merge=..@/",
        ]
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), reports.recv())
            .await
            .is_err(),
        "standbys and releases are never reported to the core"
    );
    assert_eq!(count(&metrics, "standby", "ok"), 2);

    // An agent without `standby`: nothing prepared, so its release runs nothing either.
    let lacking = with_params(site.clone(), &[("extras", text("no"))]);
    ops_written(&lacking);
    let (pool, _reports, metrics, _cancel) = new_pool(&lacking, 4);
    pool.standby(cam, 199);
    pool.release(cam, 199);
    pool.release_all();
    pool.idle().await;
    assert!(ops_written(&lacking).is_empty());
    assert_eq!(count(&metrics, "standby", "unimplemented"), 1);
}

#[tokio::test(start_paused = true)]
async fn starts_in_flight_never_delay_a_stop_or_a_monitor() {
    let slow = AgentSpec::Simulated {
        activation: Duration::from_secs(5),
        fail: None,
    };
    let site = site(
        "pool-starve",
        4,
        slow,
        timings(Duration::from_secs(10), Some(Duration::from_secs(1)), 0),
    );
    // One start at a time: cam 0 starts, cam 1 waits for the permit.
    let (pool, mut reports, metrics, _cancel) = new_pool(&site, 1);
    let began = Instant::now();
    pool.start(ResourceIdx(0), 1);
    pool.start(ResourceIdx(1), 1);
    pool.stop(ResourceIdx(2), 1);
    assert_eq!(next(&mut reports).await, done(2, 1, AgentOp::Stop, Ok(())));
    assert!(
        began.elapsed() < Duration::from_millis(10),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(next(&mut reports).await, done(0, 1, AgentOp::Start, Ok(())));
    // cam 0 is monitored every second while cam 1 starts (5 s) under the only start permit.
    pool.start(ResourceIdx(3), 1);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(count(&metrics, "monitor", "ok"), 3);
    assert_eq!(next(&mut reports).await, done(1, 1, AgentOp::Start, Ok(())));
}

#[tokio::test]
async fn pool_merges_each_interval_and_logs_an_agent_without_merge_once() {
    use buddygate::agent::MergeInterval;
    let site = site(
        "pool-merge",
        1,
        exec("ops.sh"),
        timings(SHORT * 10, None, 0),
    );
    ops_written(&site);
    let at = |ms: u64| std::time::UNIX_EPOCH + Duration::from_millis(ms);
    let intervals = vec![
        MergeInterval {
            from: at(1_795_557_600_250),
            to: at(1_795_557_660_000),
            server: "fo-1".into(),
            address: "10.0.1.21".parse().unwrap(),
        },
        MergeInterval {
            from: at(1_795_557_660_000),
            to: at(1_795_557_700_000),
            server: "fo-2".into(),
            address: "10.0.1.22".parse().unwrap(),
        },
    ];
    let (pool, mut reports, metrics, _cancel) = new_pool(&site, 4);
    pool.merge(ResourceIdx(0), 399, intervals.clone());
    pool.wait_merges().await;
    assert_eq!(
        ops_written(&site),
        [
            "merge epoch=399 cover= merge=2026-11-24T22:00:00.250Z..2026-11-24T22:01:00.000Z@fo-1/10.0.1.21",
            "merge epoch=399 cover= merge=2026-11-24T22:01:00.000Z..2026-11-24T22:01:40.000Z@fo-2/10.0.1.22",
        ]
    );
    assert_eq!(count(&metrics, "merge", "ok"), 2);
    assert!(
        reports.try_recv().is_err(),
        "merges are not reported to the core"
    );

    let lacking = with_params(site.clone(), &[("extras", text("no"))]);
    let (pool, _reports, metrics, _cancel) = new_pool(&lacking, 4);
    pool.merge(ResourceIdx(0), 399, intervals);
    pool.wait_merges().await;
    assert_eq!(
        count(&metrics, "merge", "unimplemented"),
        1,
        "the first interval tells: the agent has no merge"
    );
    assert_eq!(count(&metrics, "merge", "failed"), 0);
}

#[tokio::test]
async fn a_pool_releases_the_hot_standbys_a_crashed_run_left_and_notes_its_own() {
    let site = site(
        "pool-leftover",
        3,
        exec("ops.sh"),
        timings(SHORT * 10, None, 0),
    );
    let ids: Vec<String> = site.resources.iter().map(|r| r.id.clone()).collect();
    let dir = std::env::temp_dir().join(format!("buddygate-leftover-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("standby");
    // The last run died with cams 0 and 1 in standby; cam 1 is this node's now (a claim).
    std::fs::write(&file, format!("{}\n{}\nno-such-cam\n", ids[0], ids[1])).expect("file");
    let logs = |r: usize| {
        let path = std::env::temp_dir().join(format!("buddygate-ops.{}.{}", site.name, ids[r]));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        text
    };
    for r in 0..3 {
        logs(r);
    }
    let (pool, _reports, _metrics, _cancel) = new_pool(&site, 4);
    let pool = pool.with_standby_file(file.clone(), |r| r == ResourceIdx(1));
    pool.idle().await;
    assert_eq!(logs(0), "stop epoch=0 cover= merge=..@/\n");
    assert_eq!(
        logs(1),
        "",
        "a resource this node holds is left to its start"
    );
    pool.standby(ResourceIdx(2), 199);
    pool.idle().await;
    assert_eq!(
        std::fs::read_to_string(&file).expect("noted"),
        format!("{}\n", ids[2])
    );
    pool.release(ResourceIdx(2), 199);
    pool.idle().await;
    assert_eq!(std::fs::read_to_string(&file).expect("noted"), "");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// `idle` waits for every operation asked, however fast the agents are: a worker on another
/// thread may finish a job before the pool has counted it (a count taken after the send then
/// never came back to 0, and a clean stop waited out its whole time limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_is_idle_once_every_operation_asked_is_done_however_fast() {
    let site = site(
        "pool-idle",
        8,
        AgentSpec::Simulated {
            activation: Duration::ZERO,
            fail: None,
        },
        timings(SHORT * 10, None, 0),
    );
    let (pool, _reports, _metrics, _cancel) = new_pool(&site, 4);
    for round in 0..200u64 {
        for r in 0..8 {
            pool.standby(ResourceIdx(r), 199 + round);
            pool.release(ResourceIdx(r), 199 + round);
        }
        tokio::time::timeout(Duration::from_secs(5), pool.idle())
            .await
            .unwrap_or_else(|_| panic!("not idle after round {round}"));
    }
}

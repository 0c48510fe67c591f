//! ONVIF event service over real HTTP on loopback: `cargo bench --bench onvif`.
//! - `failover.completed` published on the node's event channel -> the message returned by a
//!   PullMessages that was waiting for it (RUNS runs, default 200);
//! - 200 pull-point subscriptions open at once: memory, and the time for all 200 waiting pulls
//!   to return one event.
//!
//! The API runs in this process with a real `Shared` (fo-1's view from the simulator, 50
//! cameras), as the daemon runs it; the event is sent on `Shared::events` the way the runtime
//! sends it right after storing it. Prints figures for docs/benchmarks.md; asserts nothing.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use buddygate::api;
use buddygate::api::Shared;
use buddygate::config::{Kind, Mode};
use buddygate::onvif::security::password_digest;
use buddygate::onvif::soap::ns;
use buddygate::onvif::time::format_datetime;
use buddygate::sim::{Sim, SimOptions, SiteBuilder};
use buddygate::store::StoredEvent;
use buddygate::view::{Metrics, Snapshot};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

const USER: &str = "bench";
const PASS: &str = "bench-pass";

fn shared() -> (
    Shared,
    broadcast::Sender<Arc<StoredEvent>>,
    watch::Sender<Arc<Snapshot>>,
) {
    let site = SiteBuilder::new("hq")
        .live("live-1", &["fo-1"])
        .live("live-2", &["fo-1"])
        .failover("fo-1", Mode::SpreadServers, Some(2), Some(100))
        .many("live-1", Kind::Camera, 25, 0)
        .many("live-2", Kind::Camera, 25, 0)
        .build();
    let mut sim = Sim::new(site, SimOptions::default());
    sim.run_for(Duration::from_secs(5));
    let fo = sim.idx("fo-1");
    sim.crash(sim.idx("live-1"));
    sim.run_for(Duration::from_secs(3));
    let node = sim.clone_node(fo).expect("fo-1 runs");
    let (snap_tx, snapshot) = watch::channel(Arc::new(Snapshot::of(&node, sim.now())));
    let (events, _) = broadcast::channel(1024);
    let (commands, rx) = mpsc::channel(8);
    std::mem::forget(rx);
    (
        Shared {
            snapshot,
            events: events.clone(),
            commands,
            data_dir: std::env::temp_dir().join("buddygate-onvif-bench"),
            token: None,
            onvif_users: vec![(USER.into(), PASS.into())],
            connectors: Default::default(),
            metrics: Arc::new(Metrics::default()),
            access: Default::default(),
        },
        events,
        snap_tx,
    )
}

fn envelope(body: &str) -> String {
    let nonce: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let created = format_datetime(SystemTime::now());
    format!(
        r##"<s:Envelope xmlns:s="{}" xmlns:tev="{}" xmlns:wsnt="{}" xmlns:bg="{}"><s:Header><wsse:Security xmlns:wsse="{}" xmlns:wsu="{}"><wsse:UsernameToken><wsse:Username>{USER}</wsse:Username><wsse:Password Type="#PasswordDigest">{}</wsse:Password><wsse:Nonce>{}</wsse:Nonce><wsu:Created>{created}</wsu:Created></wsse:UsernameToken></wsse:Security></s:Header><s:Body>{body}</s:Body></s:Envelope>"##,
        ns::ENV,
        ns::TEV,
        ns::WSNT,
        ns::BG,
        ns::WSSE,
        ns::WSU,
        password_digest(&nonce, &created, PASS),
        base64::engine::general_purpose::STANDARD.encode(nonce),
    )
}

async fn post(http: &reqwest::Client, url: &str, body: &str) -> String {
    http.post(url)
        .header("content-type", "application/soap+xml")
        .body(envelope(body))
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body")
}

const FILTER: &str = r#"<tev:Filter><wsnt:TopicExpression Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet">bg:Failover/Completed</wsnt:TopicExpression></tev:Filter>"#;

async fn create(http: &reqwest::Client, base: &str) -> String {
    let r = post(
        http,
        &format!("{base}/onvif/event_service"),
        &format!("<tev:CreatePullPointSubscription>{FILTER}<tev:InitialTerminationTime>PT600S</tev:InitialTerminationTime></tev:CreatePullPointSubscription>"),
    )
    .await;
    let start = r.find("<wsa:Address>").expect("address") + "<wsa:Address>".len();
    let end = r[start..].find('<').expect("end") + start;
    r[start..end].to_string()
}

const PULL: &str = "<tev:PullMessages><tev:Timeout>PT30S</tev:Timeout><tev:MessageLimit>10</tev:MessageLimit></tev:PullMessages>";

fn failover_completed(seq: u64) -> Arc<StoredEvent> {
    let json = serde_json::json!({
        "specversion": "1.0", "id": format!("fo-1:{seq}"), "type": "buddygate.failover.completed",
        "source": "buddygate://hq/fo-1", "time": "2026-11-24T22:00:00.412Z", "seq": seq,
        "data": {"site": "hq", "server": {"id": "live-1", "address": "127.1.0.1"},
                 "new_server": {"id": "fo-1", "address": "127.1.0.3"}, "epoch": 298 + seq,
                 "resources": [], "failed": [], "takeover_ms": 1000}
    });
    Arc::new(StoredEvent {
        seq,
        kind: "buddygate.failover.completed".into(),
        json: json.to_string(),
    })
}

fn pct(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    v[((v.len() * p).div_ceil(100))
        .saturating_sub(1)
        .min(v.len() - 1)]
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn run() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let (shared, events, _snap) = shared();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let cancel = CancellationToken::new();
    tokio::spawn(api::serve(listener, shared, cancel.clone()));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut seq = 0;

    // 1. One waiting pull, one event at a time.
    let address = create(&http, &base).await;
    let mut times = Vec::new();
    for _ in 0..runs {
        let pull = {
            let (http, address) = (http.clone(), address.clone());
            tokio::spawn(async move { post(&http, &address, PULL).await })
        };
        // Let the pull reach the server and wait there.
        tokio::time::sleep(Duration::from_millis(20)).await;
        seq += 1;
        let t0 = Instant::now();
        let _ = events.send(failover_completed(seq));
        let body = pull.await.unwrap();
        times.push(t0.elapsed());
        assert!(body.contains("bg:Failover/Completed"), "{body}");
    }
    println!(
        "failover.completed -> waiting PullMessages returned it, {runs} runs: p50 {}, p99 {}, max {}",
        ms(pct(&mut times, 50)),
        ms(pct(&mut times, 99)),
        ms(*times.iter().max().unwrap())
    );

    // 2. 200 subscriptions at once.
    let before = rss_kib();
    let mut addresses = vec![address];
    let t0 = Instant::now();
    while addresses.len() < 200 {
        addresses.push(create(&http, &base).await);
    }
    let created = t0.elapsed();
    let after_create = rss_kib();
    let mut round = Vec::new();
    for r in 0..5 {
        let pulls: Vec<_> = addresses
            .iter()
            .map(|a| {
                let (http, a) = (http.clone(), a.clone());
                tokio::spawn(async move {
                    let body = post(&http, &a, PULL).await;
                    (Instant::now(), body)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        seq += 1;
        let t0 = Instant::now();
        let _ = events.send(failover_completed(seq));
        let mut each = Vec::new();
        for p in pulls {
            let (at, body) = p.await.unwrap();
            assert!(body.contains("bg:Failover/Completed"), "{body}");
            each.push(at.saturating_duration_since(t0));
        }
        let last = *each.iter().max().unwrap();
        println!(
            "  round {r}: 200 waiting pulls, one event: p50 {}, p99 {}, last {}",
            ms(pct(&mut each.clone(), 50)),
            ms(pct(&mut each.clone(), 99)),
            ms(last)
        );
        round.extend(each);
    }
    let waiting = rss_kib();
    println!(
        "200 pull-point subscriptions: created in {} ({} per subscription); RSS {} KiB before, {} KiB with 200 open (+{} KiB), {} KiB with 200 pulls waiting (client side included)",
        ms(created),
        ms(created / 200),
        before,
        after_create,
        after_create.saturating_sub(before),
        waiting
    );
    println!(
        "200 waiting pulls, one event, 5 rounds (1000 responses): p50 {}, p99 {}, max {}",
        ms(pct(&mut round, 50)),
        ms(pct(&mut round, 99)),
        ms(*round.iter().max().unwrap())
    );
    cancel.cancel();
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

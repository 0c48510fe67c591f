//! `buddygate demo`: a whole site on this machine, as real `buddygate run` processes on
//! loopback talking UDP, each with its own store and API. It starts two live servers (25
//! cameras, an I/O unit, an LPR and an analytics resource each) and a spread-servers failover
//! server, kills a live node with SIGKILL, prints the takeover resource by resource with its
//! timing, restarts the node, prints the failback, and ends with a summary table. Beside them
//! run the consumers ([`super::consumers`]): a PSIM webhook receiver, an ONVIF pull-point
//! client and an MQTT subscriber on an embedded broker that every node publishes to. The site's
//! processes and what the demo asks their APIs are in `super::site`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use std::sync::{Arc, Mutex};

use anyhow::bail;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::consumers::{
    Received, embedded_broker, mqtt_subscriber, onvif_consumer, webhook_receiver,
};
use super::site::{NODES, ONVIF_PASS, ONVIF_USER, Site, TOKEN, WHSEC, write_site};

/// Options of the live demo.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// Leave the site running at the end, with the dashboard URL printed (Ctrl-C stops it).
    pub keep_running: bool,
    /// Where the site file, stores and logs go [default: a fresh temp dir].
    pub dir: Option<PathBuf>,
}

/// Runs the demo. Returns an error if the site did not behave (the demo is also a smoke test).
pub fn run(opts: LiveOptions) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(opts))
}

async fn run_async(opts: LiveOptions) -> anyhow::Result<()> {
    let temp = opts.dir.is_none();
    let dir = opts.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("buddygate-demo-{}", std::process::id()))
    });
    let _ = std::fs::remove_dir_all(dir.join("data"));
    // The consumers: a PSIM receiving signed webhooks, an ONVIF pull-point client.
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let (tx, mut rx) = mpsc::unbounded_channel::<Received>();
    let key = crate::connectors::webhook::decode_whsec(WHSEC).map_err(anyhow::Error::msg)?;
    let psim_url = webhook_receiver(key, tx.clone(), cancel.clone()).await?;
    let mqtt_port = embedded_broker(false)?;
    let (file, nodes) = write_site(&dir, &psim_url, mqtt_port)?;
    let mut site = Site {
        dir: dir.clone(),
        file,
        nodes,
        t0: Instant::now(),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?,
    };
    println!(
        "buddygate demo: 2 live servers (25 cameras, an I/O unit, an LPR and an analytics resource each)"
    );
    println!(
        "and 1 spread-servers failover server, as real `buddygate run` processes on loopback over UDP."
    );
    println!(
        "heartbeats every 200 ms on 2 paths, failure timeout 1 s, auto failback after 5 s stable."
    );
    println!("a PSIM webhook receiver checks every signature: {psim_url}");
    println!("an ONVIF client pulls events from fo-1 (WS-UsernameToken, pull point).");
    println!(
        "every node publishes to an embedded MQTT broker on 127.0.0.1:{mqtt_port}; a subscriber prints what it gets,\n\
         in ms since the kill (then since the restart)."
    );
    println!("site file, stores and logs: {}\n", dir.display());
    let received: Arc<Mutex<Vec<(Instant, Received)>>> = Arc::default();
    // The kill, then the restart: what MQTT lines are timed from.
    let mark: Arc<Mutex<Option<Instant>>> = Arc::default();
    {
        let (t0, received, mark) = (site.t0, received.clone(), mark.clone());
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                let t = t0.elapsed().as_secs_f64();
                match *mark.lock().expect("lock") {
                    Some(m) if r.by == "MQTT" => println!(
                        "[{t:>7.3}s]   mqtt {:>+7} ms  {}",
                        m.elapsed().as_millis(),
                        r.what
                    ),
                    None if r.by == "MQTT" => println!("[{t:>7.3}s]   mqtt  {}", r.what),
                    _ => println!("[{t:>7.3}s]   >> {} received: {}", r.by, r.what),
                }
                received.lock().expect("lock").push((Instant::now(), r));
            }
        });
    }

    site.say("starting live-1, live-2 and fo-1");
    for id in NODES {
        site.start(id)?;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut shown = 0;
    loop {
        let o = site.owners("fo-1").await.unwrap_or_default();
        let active = o.values().filter(|(_, _, s)| s == "active").count();
        if active != shown {
            site.say(&format!("  {active} of 56 resources active"));
            shown = active;
        }
        if active == 56 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the site did not start within 15 s; see the logs in {}",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = site.owners("fo-1").await.unwrap_or_default();
    let mut seq_fo = site.print_events("fo-1", 0).await;
    tokio::spawn(onvif_consumer(
        site.api("fo-1"),
        ONVIF_USER.into(),
        ONVIF_PASS.into(),
        tx.clone(),
        cancel.clone(),
    ));
    tokio::spawn(mqtt_subscriber(
        mqtt_port,
        "buddygate/demo".into(),
        tx.clone(),
        cancel.clone(),
    ));
    // Both consumers subscribed, the subscriber's retained snapshot printed.
    let ready = |r: &Received| {
        (r.by == "MQTT" && r.what.starts_with("subscribed to"))
            || (r.by == "ONVIF client" && r.what.starts_with("pull-point subscription"))
    };
    let waiting = Instant::now();
    while received
        .lock()
        .expect("lock")
        .iter()
        .filter(|(_, r)| ready(r))
        .count()
        < 2
        && waiting.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    site.say("kill -9 live-1");
    site.kill9("live-1");
    let killed = Instant::now();
    *mark.lock().expect("lock") = Some(killed);
    let live1: Vec<String> = before
        .keys()
        .filter(|k| k.starts_with("live-1-"))
        .cloned()
        .collect();
    let mut moved: BTreeMap<String, Duration> = BTreeMap::new();
    let deadline = killed + Duration::from_secs(10);
    while moved.len() < live1.len() {
        if Instant::now() > deadline {
            bail!(
                "live-1's resources were not taken over within 10 s; see {}",
                dir.display()
            );
        }
        if let Some(o) = site.owners("fo-1").await {
            for id in &live1 {
                if let Some((owner, epoch, state)) = o.get(id)
                    && owner == "fo-1"
                    && state == "active"
                    && !moved.contains_key(id)
                {
                    let t = killed.elapsed();
                    moved.insert(id.clone(), t);
                    site.say(&format!(
                        "  {id:<20} now on fo-1 ({}) epoch {epoch}, {} ms after the kill",
                        site.ip("fo-1"),
                        t.as_millis()
                    ));
                }
            }
        }
        seq_fo = site.print_events("fo-1", seq_fo).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let takeover = moved.values().max().copied().unwrap_or_default();
    site.say(&format!(
        "all {} resources of live-1 active on fo-1 {} ms after the kill",
        live1.len(),
        takeover.as_millis()
    ));
    let during = site.owners("fo-1").await.unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(500)).await;
    seq_fo = site.print_events("fo-1", seq_fo).await;

    site.say("restarting live-1 (it waits for failback: 5 s of stability)");
    site.start("live-1")?;
    let restarted = Instant::now();
    *mark.lock().expect("lock") = Some(restarted);
    let mut seq_l1 = 0;
    let deadline = restarted + Duration::from_secs(20);
    let failback = loop {
        if Instant::now() > deadline {
            bail!(
                "live-1 did not fail back within 20 s; see {}",
                dir.display()
            );
        }
        seq_fo = site.print_events("fo-1", seq_fo).await;
        seq_l1 = site.print_events("live-1", seq_l1).await;
        if let Some(o) = site.owners("fo-1").await
            && live1.iter().all(|id| {
                o.get(id)
                    .is_some_and(|(w, _, s)| w == "live-1" && s == "active")
            })
        {
            break restarted.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    site.say(&format!(
        "all resources back on live-1 {} ms after its restart",
        failback.as_millis()
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    site.print_events("fo-1", seq_fo).await;
    site.print_events("live-1", seq_l1).await;
    let after = site.owners("fo-1").await.unwrap_or_default();

    println!("\nsummary: live-1's resources as fo-1 saw them (owner@epoch)");
    println!(
        "{:<20} {:<16} {:<16} {:<16} {:>10}",
        "resource", "before", "after kill -9", "after failback", "moved in"
    );
    let cell = |m: &BTreeMap<String, (String, u64, String)>, id: &str| {
        m.get(id)
            .map(|(o, e, _)| format!("{o}@{e}"))
            .unwrap_or_else(|| "-".into())
    };
    for (i, id) in live1.iter().enumerate() {
        if i >= 3 && i + 4 < live1.len() {
            if i == 3 {
                println!("{:<20} ...", "...");
            }
            continue;
        }
        println!(
            "{:<20} {:<16} {:<16} {:<16} {:>7} ms",
            id,
            cell(&before, id),
            cell(&during, id),
            cell(&after, id),
            moved.get(id).map_or(0, |d| d.as_millis())
        );
    }
    println!(
        "\ntakeover of {} resources: {} ms after kill -9 (failure timeout 1 s) | failback: {} ms after restart (failback_delay 5 s)",
        live1.len(),
        takeover.as_millis(),
        failback.as_millis()
    );

    let got = received.lock().expect("lock").clone();
    let first = |by: &str, what: &str| {
        got.iter()
            .find(|(_, r)| r.by == by && r.what.contains(what))
            .map(|(t, _)| t.saturating_duration_since(killed).as_millis())
    };
    let psim = first("PSIM webhook", "failover.completed");
    let onvif = first("ONVIF client", "Failover/Completed");
    let mqtt_event = first("MQTT", "events/buddygate.failover.completed");
    let mqtt_owner = got
        .iter()
        .find(|(_, r)| {
            r.by == "MQTT" && r.what.starts_with("resources/") && r.what.contains(" -> fo-1 ")
        })
        .map(|(t, _)| t.saturating_duration_since(killed).as_millis());
    let bad = got
        .iter()
        .filter(|(_, r)| r.what.contains("BAD SIGNATURE"))
        .count();
    println!(
        "consumers: the PSIM got failover.completed {} after the kill ({} deliveries, {} bad signatures); the ONVIF client pulled it {} after the kill",
        psim.map_or("never".into(), |ms| format!("{ms} ms")),
        got.iter().filter(|(_, r)| r.by == "PSIM webhook").count(),
        bad,
        onvif.map_or("never".into(), |ms| format!("{ms} ms"))
    );
    println!(
        "           the MQTT subscriber got the first retained owner fo-1 {} and events/buddygate.failover.completed {} after the kill",
        mqtt_owner.map_or("never".into(), |ms| format!("{ms} ms")),
        mqtt_event.map_or("never".into(), |ms| format!("{ms} ms")),
    );
    if psim.is_none() || onvif.is_none() || mqtt_event.is_none() || mqtt_owner.is_none() || bad > 0
    {
        bail!("a consumer did not get the failover; see {}", dir.display());
    }

    if opts.keep_running {
        println!("\nthe site keeps running. dashboards (token {TOKEN}):");
        for id in NODES {
            println!("  {id}: {}/", site.api(id));
        }
        println!(
            "try: buddygate status --api {} --token {TOKEN}",
            site.api("fo-1")
        );
        println!(
            "     buddygate failover live-2 --api {} --token {TOKEN}",
            site.api("fo-1")
        );
        println!("Ctrl-C stops it.");
        let _ = tokio::signal::ctrl_c().await;
    }
    drop(site);
    if temp && !opts.keep_running {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

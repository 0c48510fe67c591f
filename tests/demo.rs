//! `buddygate demo` end to end: real processes, a real kill -9, takeover and failback.

use std::process::Command;

#[test]
fn the_live_demo_runs_the_whole_story() {
    let dir = std::env::temp_dir().join(format!("buddygate-demo-test-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_buddygate"))
        .args(["demo", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("kill -9 live-1"), "{text}");
    assert!(
        text.contains("all 28 resources of live-1 active on fo-1"),
        "{text}"
    );
    assert!(
        text.contains("buddygate.failover.completed live-1 -> fo-1"),
        "{text}"
    );
    assert!(
        text.contains("buddygate.failback.completed live-1"),
        "{text}"
    );
    assert!(text.contains("all resources back on live-1"), "{text}");
    // The consumers: a PSIM checking signatures and an ONVIF pull-point client.
    assert!(
        text.contains("PSIM webhook received: buddygate.failover.completed: live-1 now at fo-1"),
        "{text}"
    );
    assert!(text.contains("signature ok"), "{text}");
    assert!(!text.contains("BAD SIGNATURE"), "{text}");
    assert!(
        text.contains("ONVIF client received: bg:Failover/Completed Server=live-1 NewServer=fo-1"),
        "{text}"
    );
    assert!(text.contains("Epoch=298"), "{text}");
    // The MQTT subscriber on the embedded broker: the retained snapshot, the will of the killed
    // node, the new owners and the event, timed from the kill; then the failback.
    assert!(
        text.contains("mqtt  subscribed to buddygate/demo/#: 62 retained topics"),
        "{text}"
    );
    let mqtt = |what: &str| {
        text.lines()
            .find(|l| l.contains("   mqtt ") && l.contains(what))
            .unwrap_or_else(|| panic!("no MQTT line with {what:?} in:\n{text}"))
    };
    mqtt("ms  nodes/live-1/online false");
    let owner = mqtt("ms  resources/live-1-");
    assert!(owner.contains(" -> fo-1 127.0.0.13 epoch 298"), "{owner}");
    let ms: i64 = owner
        .split("mqtt")
        .nth(1)
        .unwrap()
        .split("ms")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(ms > 0, "{owner}");
    mqtt("ms  servers/live-1 down, served by fo-1 127.0.0.13 epoch 298");
    mqtt("ms  events/buddygate.failover.completed live-1 -> fo-1 epoch 298");
    mqtt("more resources/ -> fo-1");
    mqtt("ms  events/buddygate.failback.completed live-1 home epoch 399");
    mqtt(" -> live-1 127.0.0.11 epoch 399");
    assert!(
        text.contains("the MQTT subscriber got the first retained owner fo-1"),
        "{text}"
    );
    // The summary: every row moved to fo-1 and came home at a higher epoch.
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("live-1-")).collect();
    assert!(rows.len() >= 7, "{text}");
    for row in rows.iter().filter(|r| r.contains(" ms")) {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[1], "live-1@199", "{row}");
        assert_eq!(cells[2], "fo-1@298", "{row}");
        assert_eq!(cells[3], "live-1@399", "{row}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_simulated_demo_runs_in_virtual_time() {
    let out = Command::new(env!("CARGO_BIN_EXE_buddygate"))
        .args(["demo", "--simulated", "--fast"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("all 28 resources of live-1 active on fo-1"),
        "{text}"
    );
    assert!(text.contains("failback.completed live-1"), "{text}");
}

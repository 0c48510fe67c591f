//! The node's events as CloudEvents 1.0 (structured JSON), the payloads DESIGN section 1 fixes.
//!
//! `id` is `{node}:{run}:{seq}`: `run` is a random id the node draws each time it starts
//! ([`run_id`]), `seq` its event sequence number. Unique in the site for good: a node whose
//! data dir was wiped, or restored from an old copy, numbers its events from an earlier `seq`
//! again, but in a new run. Stored with the event, so stable across retries of any delivery.
//!
//! Times are wall-clock times read when the event happens ([`Clock`]), not the wall clock at
//! boot plus the monotonic time since: a clock stepped by NTP while the node runs (appliances
//! without a real-time clock) is right from the next event on.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};

use crate::config::{ResourceIdx, ServerIdx, Site};
use crate::failover::{DownReason, Event, FailedResource};

/// The wall clock read at one instant of the core's monotonic clock: maps the core's instants
/// near it (an event's, a `down_since` in the past) to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// The core's clock when the wall clock was read.
    pub mono: Duration,
    /// The wall clock then.
    pub wall: SystemTime,
}

impl Clock {
    /// The wall-clock time of the core's instant `t`.
    pub fn wall(&self, t: Duration) -> SystemTime {
        if t >= self.mono {
            self.wall + (t - self.mono)
        } else {
            self.wall
                .checked_sub(self.mono - t)
                .filter(|w| *w >= SystemTime::UNIX_EPOCH)
                .unwrap_or(SystemTime::UNIX_EPOCH)
        }
    }
}

/// A new run id: 12 random hex digits (48 bits), drawn when a node starts.
pub fn run_id() -> String {
    let mut b = [0u8; 6];
    if getrandom::fill(&mut b).is_err() {
        // No OS randomness: the clock's nanoseconds still make a repeat unlikely.
        let n = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        b.copy_from_slice(&n.to_le_bytes()[..6]);
    }
    hex(&b)
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn server(site: &Site, s: ServerIdx) -> Value {
    let srv = site.server(s);
    json!({"id": srv.id, "address": srv.address.to_string()})
}

/// How one of the node's resources started: when the start was complete (the resource
/// worked), and how long it took from the moment it was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    pub at: SystemTime,
    pub took: Duration,
}

/// What the node knows of its own resources for an event: their epochs, and for
/// `failover.completed` and `failback.completed` how each started.
#[derive(Debug, Clone, Default)]
pub struct Held {
    pub epochs: HashMap<ResourceIdx, u64>,
    pub started: HashMap<ResourceIdx, Started>,
}

fn resources_with_owner(
    site: &Site,
    rs: &[ResourceIdx],
    owner: ServerIdx,
    held: &Held,
    fallback: u64,
) -> Value {
    let o = site.server(owner);
    Value::Array(
        rs.iter()
            .map(|&r| {
                let res = site.resource(r);
                let mut v = json!({
                    "id": res.id,
                    "kind": res.kind.as_str(),
                    "owner": o.id,
                    "address": o.address.to_string(),
                    "epoch": held.epochs.get(&r).copied().unwrap_or(fallback),
                });
                if let Some(s) = held.started.get(&r) {
                    v["started_at"] = rfc3339(s.at).into();
                    v["start_ms"] = (s.took.as_millis() as u64).into();
                }
                v
            })
            .collect(),
    )
}

/// What `failover.started` and `failover.completed` share: `server`'s `resources` moved to
/// `new_server` at `epoch`.
fn moved(
    site: &Site,
    s: ServerIdx,
    new_server: ServerIdx,
    epoch: u64,
    resources: &[ResourceIdx],
    held: &Held,
) -> Map<String, Value> {
    let mut data = Map::new();
    data.insert("site".into(), site.name.clone().into());
    data.insert("server".into(), server(site, s));
    data.insert("new_server".into(), server(site, new_server));
    data.insert("epoch".into(), epoch.into());
    data.insert(
        "resources".into(),
        resources_with_owner(site, resources, new_server, held, epoch),
    );
    data
}

fn failed(site: &Site, f: &[FailedResource]) -> Value {
    Value::Array(
        f.iter()
            .map(|x| {
                let res = site.resource(x.resource);
                json!({"id": res.id, "kind": res.kind.as_str(), "reason": x.reason})
            })
            .collect(),
    )
}

/// What a node's events share: who emits them and in which run.
#[derive(Debug, Clone, Copy)]
pub struct Emitter<'a> {
    pub site: &'a Site,
    pub node: ServerIdx,
    /// [`run_id`] of this start of the node.
    pub run: &'a str,
}

/// The CloudEvent for `event`, emitted at the core's instant `at` (`clock` read then), stored
/// as `seq`. `held`: the epoch of each resource this node holds, and how the ones of a
/// completed failover or failback started.
pub fn to_cloudevent(
    from: Emitter<'_>,
    seq: u64,
    at: Duration,
    clock: Clock,
    event: &Event,
    held: &Held,
) -> Value {
    let Emitter { site, node, run } = from;
    let me = &site.server(node).id;
    let data = match event {
        Event::ServerDown {
            server: s,
            reason,
            down_since,
        } => json!({
            "site": site.name,
            "server": server(site, *s),
            "reason": match reason { DownReason::Timeout => "timeout", DownReason::Leaving => "leaving" },
            "down_since": rfc3339(clock.wall(*down_since)),
        }),
        Event::ServerUp { server: s } => json!({"site": site.name, "server": server(site, *s)}),
        Event::PathDown { server: s, path } | Event::PathUp { server: s, path } => json!({
            "site": site.name,
            "server": server(site, *s),
            "path": path,
            "address": site.server(*s).heartbeat.get(*path).map(|a| a.to_string()),
        }),
        Event::FailoverStarted {
            server: s,
            new_server,
            epoch,
            resources,
        } => Value::Object(moved(site, *s, *new_server, *epoch, resources, held)),
        Event::FailoverCompleted {
            server: s,
            new_server,
            epoch,
            resources,
            failed: f,
            down_since,
            takeover,
        } => {
            let mut data = moved(site, *s, *new_server, *epoch, resources, held);
            data.insert("failed".into(), failed(site, f));
            data.insert("down_since".into(), rfc3339(clock.wall(*down_since)).into());
            data.insert("takeover_ms".into(), (takeover.as_millis() as u64).into());
            Value::Object(data)
        }
        Event::FailbackCompleted {
            server: s,
            epoch,
            resources,
            failed: f,
            duration,
        } => json!({
            "site": site.name,
            "server": server(site, *s),
            "new_server": server(site, *s),
            "epoch": epoch,
            "resources": resources_with_owner(site, resources, *s, held, *epoch),
            "failed": failed(site, f),
            "failback_ms": duration.as_millis() as u64,
        }),
        Event::ResourceFailed {
            resource,
            server: s,
            epoch,
            reason,
        } => {
            let res = site.resource(*resource);
            json!({
                "site": site.name,
                "resource": {"id": res.id, "kind": res.kind.as_str()},
                "server": server(site, *s),
                "epoch": epoch,
                "reason": reason,
            })
        }
        Event::ResourceUnplaced {
            server: s,
            resources,
        } => json!({
            "site": site.name,
            "server": server(site, *s),
            "resources": resources.iter().map(|&(r, why)| {
                let res = site.resource(r);
                json!({"id": res.id, "kind": res.kind.as_str(), "reason": why.as_str()})
            }).collect::<Vec<_>>(),
        }),
        Event::OwnershipConflict { resource, owners } => {
            let res = site.resource(*resource);
            json!({
                "site": site.name,
                "resource": {"id": res.id, "kind": res.kind.as_str()},
                "owners": owners.iter().map(|&(s, e)| {
                    let srv = site.server(s);
                    json!({"id": srv.id, "address": srv.address.to_string(), "epoch": e})
                }).collect::<Vec<_>>(),
            })
        }
        Event::OwnershipResolved {
            resource,
            owner,
            epoch,
        } => {
            let res = site.resource(*resource);
            let o = site.server(*owner);
            json!({
                "site": site.name,
                "resource": {"id": res.id, "kind": res.kind.as_str()},
                "owner": o.id,
                "address": o.address.to_string(),
                "epoch": epoch,
            })
        }
        Event::ConfigMismatch {
            server: s,
            local,
            remote,
        } => json!({
            "site": site.name,
            "server": server(site, *s),
            "local_digest": hex(local),
            "remote_digest": hex(remote),
        }),
        Event::ConnectorFailed {
            connector,
            kind,
            reason,
            attempts,
            retry_in,
        } => json!({
            "site": site.name,
            "server": server(site, node),
            "connector": connector,
            "kind": kind,
            "reason": reason,
            "attempts": attempts,
            "retry_in_ms": retry_in.as_millis() as u64,
        }),
        Event::ConnectorRecovered {
            connector,
            kind,
            attempts,
            failed_for,
        } => json!({
            "site": site.name,
            "server": server(site, node),
            "connector": connector,
            "kind": kind,
            "attempts": attempts,
            "failed_for_ms": failed_for.as_millis() as u64,
        }),
    };
    json!({
        "specversion": "1.0",
        "id": format!("{me}:{run}:{seq}"),
        "type": event.type_name(),
        "source": format!("buddygate://{}/{me}", site.name),
        "time": rfc3339(clock.wall(at)),
        "datacontenttype": "application/json",
        "seq": seq,
        "data": data,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_map_to_the_wall_clock_read_when_the_event_happens() {
        let t0 = humantime::parse_rfc3339("2026-11-25T00:00:10Z").unwrap();
        // Booted 100 s ago on the core's clock; the wall clock was stepped an hour back since.
        let clock = Clock {
            mono: Duration::from_secs(100),
            wall: t0,
        };
        assert_eq!(
            rfc3339(clock.wall(Duration::from_secs(100))),
            "2026-11-25T00:00:10.000Z"
        );
        // A `down_since` 1.5 s before the event.
        assert_eq!(
            rfc3339(clock.wall(Duration::from_millis(98_500))),
            "2026-11-25T00:00:08.500Z"
        );
        assert_eq!(
            rfc3339(clock.wall(Duration::from_millis(100_250))),
            "2026-11-25T00:00:10.250Z"
        );
        let early = Clock {
            mono: Duration::from_secs(10),
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1),
        };
        assert_eq!(early.wall(Duration::ZERO), SystemTime::UNIX_EPOCH);
    }

    #[test]
    fn run_ids_are_12_hex_digits_and_differ() {
        let a = run_id();
        assert_eq!(a.len(), 12);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, run_id());
    }
}

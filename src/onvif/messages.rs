//! The notification messages made from the node's events and snapshots, and how they are
//! written (`wsnt:NotificationMessage`).
//!
//! Properties follow ONVIF: `Initialized` when a subscription starts or synchronizes (and
//! when a resource gets an owner again), `Changed` on every change, `Deleted` when a resource
//! is left with no owner at all.
//!
//! Subscriptions take properties from the node's snapshots ([`Properties`]); the `onvif`
//! connector, which delivers from the durable event log, takes them from the stored events
//! ([`outbox_messages`]).

use std::time::SystemTime;

use serde_json::Value;

use super::time::format_datetime;
use super::topics::{CONCRETE_SET, Topic};
use super::xml::XmlOut;
use crate::cloudevents::rfc3339;
use crate::config::Site;
use crate::store::StoredEvent;
use crate::view::Snapshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyOperation {
    Initialized,
    Changed,
    Deleted,
}

impl PropertyOperation {
    pub fn as_str(self) -> &'static str {
        match self {
            PropertyOperation::Initialized => "Initialized",
            PropertyOperation::Changed => "Changed",
            PropertyOperation::Deleted => "Deleted",
        }
    }
}

/// One ONVIF notification message (`tt:Message` under its topic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: Topic,
    /// `xs:dateTime`, UTC.
    pub utc_time: String,
    /// Set for properties, `None` for events.
    pub operation: Option<PropertyOperation>,
    pub source: Vec<(&'static str, String)>,
    pub data: Vec<(&'static str, String)>,
}

impl AsRef<Message> for Message {
    fn as_ref(&self) -> &Message {
        self
    }
}

impl Message {
    /// A Data item's value.
    pub fn data(&self, name: &str) -> Option<&str> {
        self.data
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A Source item's value.
    pub fn source(&self, name: &str) -> Option<&str> {
        self.source
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn count(v: &Value) -> String {
    v.as_array().map_or(0, Vec::len).to_string()
}

/// The event messages for one stored CloudEvent: `failover.completed`,
/// `failback.completed`, `ownership.conflict`, `connector.failed` and `connector.recovered`
/// give one each, `resource.unplaced` one per resource; other types give none (ownership and
/// server state reach subscribers as properties, from the snapshots).
pub fn event_messages(e: &StoredEvent) -> Vec<Message> {
    let Ok(v) = serde_json::from_str::<Value>(&e.json) else {
        return Vec::new();
    };
    let d = &v["data"];
    let utc_time = v["time"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format_datetime(SystemTime::now()));
    let event = |topic, source, data| Message {
        topic,
        utc_time: utc_time.clone(),
        operation: None,
        source,
        data,
    };
    match e.kind.as_str() {
        "buddygate.failover.completed" | "buddygate.failback.completed" => {
            let completed = e.kind == "buddygate.failover.completed";
            let mut data = vec![
                ("NewServer", s(&d["new_server"]["id"])),
                ("Address", s(&d["new_server"]["address"])),
                ("Epoch", s(&d["epoch"])),
                ("Resources", count(&d["resources"])),
                ("Failed", count(&d["failed"])),
            ];
            let topic = if completed {
                data.push(("TakeoverMs", s(&d["takeover_ms"])));
                Topic::FailoverCompleted
            } else {
                Topic::FailoverFailback
            };
            vec![event(topic, vec![("Server", s(&d["server"]["id"]))], data)]
        }
        "buddygate.ownership.conflict" => {
            let owners = d["owners"].as_array().cloned().unwrap_or_default();
            let join = |k: &str| {
                owners
                    .iter()
                    .map(|o| s(&o[k]))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let epoch = owners.iter().filter_map(|o| o["epoch"].as_u64()).max();
            vec![event(
                Topic::OwnershipConflict,
                vec![("Resource", s(&d["resource"]["id"]))],
                vec![
                    ("Owners", join("id")),
                    ("Addresses", join("address")),
                    ("Epoch", epoch.unwrap_or(0).to_string()),
                ],
            )]
        }
        "buddygate.resource.unplaced" => d["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                event(
                    Topic::OwnershipUnplaced,
                    vec![("Resource", s(&r["id"]))],
                    vec![("Home", s(&d["server"]["id"])), ("Reason", s(&r["reason"]))],
                )
            })
            .collect(),
        "buddygate.connector.failed" | "buddygate.connector.recovered" => {
            let source = vec![
                ("Server", s(&d["server"]["id"])),
                ("Connector", s(&d["connector"])),
            ];
            let (topic, data) = if e.kind == "buddygate.connector.failed" {
                let data = vec![
                    ("Kind", s(&d["kind"])),
                    ("Reason", s(&d["reason"])),
                    ("Attempts", s(&d["attempts"])),
                    ("RetryInMs", s(&d["retry_in_ms"])),
                ];
                (Topic::ConnectorFailed, data)
            } else {
                let data = vec![
                    ("Kind", s(&d["kind"])),
                    ("Attempts", s(&d["attempts"])),
                    ("FailedForMs", s(&d["failed_for_ms"])),
                ];
                (Topic::ConnectorRecovered, data)
            };
            vec![event(topic, source, data)]
        }
        _ => Vec::new(),
    }
}

/// Every message one stored event gives the `onvif` connector: the `Changed` properties it
/// records (a server down or up; each resource of a failover or failback with its new owner,
/// address and epoch; a resolved conflict's owner; a resource that failed; resources nobody
/// can take, with no owner), then its event
/// message ([`event_messages`]), if it has one. Kinds and home servers come from `site`;
/// resources it does not know are left out. Events with nothing to say in ONVIF (paths,
/// `failover.started`, config mismatches) give none.
pub fn outbox_messages(site: &Site, e: &StoredEvent) -> Vec<Message> {
    let Ok(v) = serde_json::from_str::<Value>(&e.json) else {
        return Vec::new();
    };
    let d = &v["data"];
    let t = v["time"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| rfc3339(SystemTime::now()));
    let changed = PropertyOperation::Changed;
    let resource = |id: &Value, owner: &Value, address: &Value, epoch: &Value, state| {
        let res = site.resource(site.resource_idx(id.as_str()?)?);
        let p = ResourceProp {
            id: res.id.clone(),
            kind: res.kind.as_str(),
            home: site.server(res.server).id.clone(),
            owner: Some((s(owner), s(address))),
            epoch: epoch.as_u64().unwrap_or(0),
            state,
        };
        Some(Properties::resource_message(&p, changed, &t))
    };
    let mut out: Vec<Message> = match e.kind.as_str() {
        "buddygate.server.down" | "buddygate.server.up" => {
            let p = ServerProp {
                id: s(&d["server"]["id"]),
                state: if e.kind.ends_with("down") {
                    "down"
                } else {
                    "up"
                },
                address: s(&d["server"]["address"]),
            };
            vec![Properties::server_message(&p, changed, &t)]
        }
        "buddygate.failover.completed" | "buddygate.failback.completed" => d["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| resource(&r["id"], &r["owner"], &r["address"], &r["epoch"], "active"))
            .collect(),
        "buddygate.ownership.resolved" => resource(
            &d["resource"]["id"],
            &d["owner"],
            &d["address"],
            &d["epoch"],
            "active",
        )
        .into_iter()
        .collect(),
        "buddygate.resource.failed" => resource(
            &d["resource"]["id"],
            &d["server"]["id"],
            &d["server"]["address"],
            &d["epoch"],
            "failed",
        )
        .into_iter()
        .collect(),
        "buddygate.resource.unplaced" => d["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                let res = site.resource(site.resource_idx(r["id"].as_str()?)?);
                let p = ResourceProp {
                    id: res.id.clone(),
                    kind: res.kind.as_str(),
                    home: site.server(res.server).id.clone(),
                    owner: None,
                    epoch: 0,
                    state: "unassigned",
                };
                Some(Properties::resource_message(&p, changed, &t))
            })
            .collect(),
        _ => Vec::new(),
    };
    out.extend(event_messages(e));
    out
}

/// One server's state property.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerProp {
    id: String,
    state: &'static str,
    address: String,
}

/// One resource's ownership property.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ResourceProp {
    id: String,
    kind: &'static str,
    home: String,
    /// `(owner id, owner address)`; `None`: nobody serves it.
    owner: Option<(String, String)>,
    epoch: u64,
    state: &'static str,
}

/// Every property's value at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    servers: Vec<ServerProp>,
    resources: Vec<ResourceProp>,
}

impl Properties {
    pub fn of(snap: &Snapshot) -> Self {
        let site = &snap.site;
        let servers = snap
            .servers
            .iter()
            .filter_map(|v| {
                let srv = site.servers.get(usize::from(v.server.0))?;
                Some(ServerProp {
                    id: srv.id.clone(),
                    state: if v.known { v.state.as_str() } else { "unknown" },
                    address: srv.address.to_string(),
                })
            })
            .collect();
        let resources = snap
            .resources
            .iter()
            .filter_map(|v| {
                let res = site.resources.get(v.resource.0 as usize)?;
                let home = site.servers.get(usize::from(res.server.0))?;
                let owner = v
                    .owner
                    .and_then(|o| site.servers.get(usize::from(o.0)))
                    .map(|o| (o.id.clone(), o.address.to_string()));
                Some(ResourceProp {
                    id: res.id.clone(),
                    kind: res.kind.as_str(),
                    home: home.id.clone(),
                    owner,
                    epoch: v.epoch,
                    state: v.state.as_str(),
                })
            })
            .collect();
        Self { servers, resources }
    }

    fn server_message(p: &ServerProp, op: PropertyOperation, t: &str) -> Message {
        Message {
            topic: Topic::ServerState,
            utc_time: t.to_string(),
            operation: Some(op),
            source: vec![("Server", p.id.clone())],
            data: vec![
                ("State", p.state.to_string()),
                ("Address", p.address.clone()),
            ],
        }
    }

    fn resource_message(p: &ResourceProp, op: PropertyOperation, t: &str) -> Message {
        let (owner, address) = p.owner.clone().unwrap_or_default();
        Message {
            topic: Topic::OwnershipResource,
            utc_time: t.to_string(),
            operation: Some(op),
            source: vec![("Resource", p.id.clone())],
            data: vec![
                ("Kind", p.kind.to_string()),
                ("Home", p.home.clone()),
                ("Owner", owner),
                ("Address", address),
                ("Epoch", p.epoch.to_string()),
                ("State", p.state.to_string()),
            ],
        }
    }

    /// `Initialized` for every property: each server's state, each served resource's owner.
    pub fn initialized(&self, at: SystemTime) -> Vec<Message> {
        let t = rfc3339(at);
        let servers = self
            .servers
            .iter()
            .map(|p| Self::server_message(p, PropertyOperation::Initialized, &t));
        let resources = self
            .resources
            .iter()
            .filter(|p| p.owner.is_some())
            .map(|p| Self::resource_message(p, PropertyOperation::Initialized, &t));
        servers.chain(resources).collect()
    }

    /// What changed from `self` to `next`.
    pub fn changes(&self, next: &Properties, at: SystemTime) -> Vec<Message> {
        if self.servers.len() != next.servers.len() || self.resources.len() != next.resources.len()
        {
            return next.initialized(at);
        }
        let t = rfc3339(at);
        let mut out = Vec::new();
        for (a, b) in self.servers.iter().zip(&next.servers) {
            if a != b {
                out.push(Self::server_message(b, PropertyOperation::Changed, &t));
            }
        }
        for (a, b) in self.resources.iter().zip(&next.resources) {
            if a == b {
                continue;
            }
            let op = match (&a.owner, &b.owner) {
                (_, None) if a.owner.is_none() => continue,
                (_, None) => PropertyOperation::Deleted,
                (None, Some(_)) => PropertyOperation::Initialized,
                (Some(_), Some(_)) => PropertyOperation::Changed,
            };
            out.push(Self::resource_message(b, op, &t));
        }
        out
    }
}

fn write_items(o: &mut XmlOut, name: &str, items: &[(&'static str, String)]) {
    o.open(name, &[]);
    for (n, v) in items {
        o.empty("tt:SimpleItem", &[("Name", n), ("Value", v)]);
    }
    o.close(name);
}

/// Writes one `wsnt:NotificationMessage`. `subscription` and `producer` are the addresses put
/// in `SubscriptionReference` and `ProducerReference`, when given.
pub fn write_notification(
    o: &mut XmlOut,
    m: &Message,
    subscription: Option<&str>,
    producer: Option<&str>,
) {
    o.open("wsnt:NotificationMessage", &[]);
    if let Some(s) = subscription {
        o.open("wsnt:SubscriptionReference", &[]);
        o.leaf("wsa:Address", s);
        o.close("wsnt:SubscriptionReference");
    }
    o.leaf_with(
        "wsnt:Topic",
        &[("Dialect", CONCRETE_SET)],
        &m.topic.expression(),
    );
    if let Some(p) = producer {
        o.open("wsnt:ProducerReference", &[]);
        o.leaf("wsa:Address", p);
        o.close("wsnt:ProducerReference");
    }
    o.open("wsnt:Message", &[]);
    let mut attrs = vec![("UtcTime", m.utc_time.as_str())];
    if let Some(op) = m.operation {
        attrs.push(("PropertyOperation", op.as_str()));
    }
    o.open("tt:Message", &attrs);
    write_items(o, "tt:Source", &m.source);
    write_items(o, "tt:Data", &m.data);
    o.close("tt:Message");
    o.close("wsnt:Message");
    o.close("wsnt:NotificationMessage");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_completed_message() {
        let json = serde_json::json!({
            "type": "buddygate.failover.completed", "time": "2026-11-24T22:00:00.412Z",
            "data": {"server": {"id": "live-1", "address": "10.0.1.11"},
                     "new_server": {"id": "fo-1", "address": "10.0.1.21"}, "epoch": 7,
                     "resources": [{"id": "cam-001"}], "failed": [], "takeover_ms": 412}
        });
        let e = StoredEvent {
            seq: 3,
            kind: "buddygate.failover.completed".into(),
            json: json.to_string(),
        };
        let m = event_messages(&e);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].topic, Topic::FailoverCompleted);
        assert_eq!(m[0].source("Server"), Some("live-1"));
        assert_eq!(m[0].data("Address"), Some("10.0.1.21"));
        assert_eq!(m[0].data("Epoch"), Some("7"));
        assert_eq!(m[0].data("Resources"), Some("1"));
        let bad = StoredEvent {
            json: "not json".into(),
            ..e
        };
        assert!(event_messages(&bad).is_empty());
    }

    #[test]
    fn connector_messages() {
        let failed = serde_json::json!({
            "type": "buddygate.connector.failed", "time": "2026-11-24T22:00:00.412Z",
            "data": {"site": "hq", "server": {"id": "fo-1", "address": "10.0.1.21"},
                     "connector": "psim", "kind": "webhook",
                     "reason": "cannot read the signing secret (env:PSIM_SECRET): environment variable PSIM_SECRET is not set",
                     "attempts": 1, "retry_in_ms": 1000}
        });
        let e = StoredEvent {
            seq: 4,
            kind: "buddygate.connector.failed".into(),
            json: failed.to_string(),
        };
        let m = event_messages(&e);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].topic, Topic::ConnectorFailed);
        assert_eq!(m[0].topic.expression(), "bg:Connector/Failed");
        assert_eq!(m[0].operation, None);
        assert_eq!(m[0].source("Server"), Some("fo-1"));
        assert_eq!(m[0].source("Connector"), Some("psim"));
        assert_eq!(m[0].data("Kind"), Some("webhook"));
        assert!(m[0].data("Reason").unwrap().contains("PSIM_SECRET"));
        assert_eq!(m[0].data("Attempts"), Some("1"));
        assert_eq!(m[0].data("RetryInMs"), Some("1000"));
        let recovered = serde_json::json!({
            "type": "buddygate.connector.recovered", "time": "2026-11-24T22:00:09.412Z",
            "data": {"site": "hq", "server": {"id": "fo-1", "address": "10.0.1.21"},
                     "connector": "psim", "kind": "webhook", "attempts": 5, "failed_for_ms": 9000}
        });
        let e = StoredEvent {
            seq: 5,
            kind: "buddygate.connector.recovered".into(),
            json: recovered.to_string(),
        };
        let site = crate::sim::SiteBuilder::new("hq")
            .live("live-1", &["fo-1"])
            .failover("fo-1", crate::config::Mode::SpreadServers, None, None)
            .build();
        // The `onvif` connector delivers it (no property changes, the event message).
        let m = outbox_messages(&site, &e);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].topic.expression(), "bg:Connector/Recovered");
        assert_eq!(m[0].source("Connector"), Some("psim"));
        assert_eq!(m[0].data("Attempts"), Some("5"));
        assert_eq!(m[0].data("FailedForMs"), Some("9000"));
    }
}

//! buddygate's ONVIF topics (namespace [`ns::BG`], prefix `bg:`), the notification messages
//! made from the node's events and snapshots, and how they are written.
//!
//! | topic | kind | Source | Data |
//! |---|---|---|---|
//! | `bg:Server/State` | property | `Server` | `State`, `Address` |
//! | `bg:Ownership/Resource` | property | `Resource` | `Kind`, `Home`, `Owner`, `Address`, `Epoch`, `State` |
//! | `bg:Failover/Completed` | event | `Server` | `NewServer`, `Address`, `Epoch`, `Resources`, `Failed`, `TakeoverMs` |
//! | `bg:Failover/Failback` | event | `Server` | `NewServer`, `Address`, `Epoch`, `Resources`, `Failed` |
//! | `bg:Ownership/Conflict` | event | `Resource` | `Owners`, `Addresses`, `Epoch` |
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

use super::soap::ns;
use super::time::format_datetime;
use super::xml::{Element, XmlOut};
use crate::cloudevents::rfc3339;
use crate::config::Site;
use crate::store::StoredEvent;
use crate::view::Snapshot;

/// The ONVIF dialect for topic expressions (`|` unions, `*`, `//.` subtrees).
pub const CONCRETE_SET: &str = "http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet";
/// WS-Topics dialects accepted as well.
pub const WSTOP_DIALECTS: &[&str] = &[
    "http://docs.oasis-open.org/wsn/t-1/TopicExpression/Concrete",
    "http://docs.oasis-open.org/wsn/t-1/TopicExpression/ConcreteSet",
    "http://docs.oasis-open.org/wsn/t-1/TopicExpression/Simple",
];
/// The ONVIF message content filter dialect (not supported; refused with a fault).
pub const MESSAGE_CONTENT: &str = "http://www.onvif.org/ver10/tev/messageContentFilter/ItemFilter";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    ServerState,
    OwnershipResource,
    FailoverCompleted,
    FailoverFailback,
    OwnershipConflict,
}

impl Topic {
    pub const ALL: [Topic; 5] = [
        Topic::ServerState,
        Topic::OwnershipResource,
        Topic::FailoverCompleted,
        Topic::FailoverFailback,
        Topic::OwnershipConflict,
    ];

    /// `(root, leaf)` below the `bg:` namespace.
    pub fn path(self) -> (&'static str, &'static str) {
        match self {
            Topic::ServerState => ("Server", "State"),
            Topic::OwnershipResource => ("Ownership", "Resource"),
            Topic::FailoverCompleted => ("Failover", "Completed"),
            Topic::FailoverFailback => ("Failover", "Failback"),
            Topic::OwnershipConflict => ("Ownership", "Conflict"),
        }
    }

    /// `bg:Failover/Completed`.
    pub fn expression(self) -> String {
        let (root, leaf) = self.path();
        format!("bg:{root}/{leaf}")
    }

    pub fn is_property(self) -> bool {
        matches!(self, Topic::ServerState | Topic::OwnershipResource)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    fn source(self) -> &'static [&'static str] {
        match self {
            Topic::ServerState | Topic::FailoverCompleted | Topic::FailoverFailback => &["Server"],
            Topic::OwnershipResource | Topic::OwnershipConflict => &["Resource"],
        }
    }

    /// Data items with their `xs:` types.
    fn data(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Topic::ServerState => &[("State", "xs:string"), ("Address", "xs:string")],
            Topic::OwnershipResource => &[
                ("Kind", "xs:string"),
                ("Home", "xs:string"),
                ("Owner", "xs:string"),
                ("Address", "xs:string"),
                ("Epoch", "xs:unsignedLong"),
                ("State", "xs:string"),
            ],
            Topic::FailoverCompleted => &[
                ("NewServer", "xs:string"),
                ("Address", "xs:string"),
                ("Epoch", "xs:unsignedLong"),
                ("Resources", "xs:int"),
                ("Failed", "xs:int"),
                ("TakeoverMs", "xs:unsignedLong"),
            ],
            Topic::FailoverFailback => &[
                ("NewServer", "xs:string"),
                ("Address", "xs:string"),
                ("Epoch", "xs:unsignedLong"),
                ("Resources", "xs:int"),
                ("Failed", "xs:int"),
            ],
            Topic::OwnershipConflict => &[
                ("Owners", "xs:string"),
                ("Addresses", "xs:string"),
                ("Epoch", "xs:unsignedLong"),
            ],
        }
    }
}

/// Which topics a subscription wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicMask(u8);

impl TopicMask {
    pub const ALL: TopicMask = TopicMask(0b1_1111);
    pub const NONE: TopicMask = TopicMask(0);

    /// The topics both select.
    pub fn and(self, other: TopicMask) -> TopicMask {
        TopicMask(self.0 & other.0)
    }

    pub fn contains(self, t: Topic) -> bool {
        self.0 & t.bit() != 0
    }

    pub fn of(topics: &[Topic]) -> Self {
        TopicMask(topics.iter().fold(0, |m, t| m | t.bit()))
    }
}

/// Why a topic expression was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterError {
    Dialect(String),
    Expression(String),
}

/// The topics a `wsnt:TopicExpression` element selects. Every term of the `|` union is a path
/// whose first step is `prefix:Name` (the prefix bound where the element stands); a step may
/// be `*`, and a trailing `//.` takes the whole subtree. Terms in other namespaces select
/// nothing; an expression that selects nothing at all is refused.
pub fn parse_topic_expression(el: &Element) -> Result<TopicMask, FilterError> {
    let dialect = el.attr("", "Dialect").unwrap_or(CONCRETE_SET).trim();
    if dialect != CONCRETE_SET && !WSTOP_DIALECTS.contains(&dialect) {
        return Err(FilterError::Dialect(dialect.to_string()));
    }
    let mut mask = 0u8;
    for term in el.text().split('|') {
        let term = term.trim();
        if term.is_empty() {
            return Err(FilterError::Expression(format!(
                "empty term in {:?}",
                el.text()
            )));
        }
        let (path, subtree) = match term.strip_suffix("//.") {
            Some(p) => (p, true),
            None => (term, false),
        };
        let mut steps = path.split('/');
        let first = steps.next().unwrap_or_default();
        let (namespace, root) = match first.split_once(':') {
            Some((p, n)) => (el.resolve_prefix(p), n),
            None => (el.resolve_prefix(""), first),
        };
        let Some(namespace) = namespace else {
            return Err(FilterError::Expression(format!(
                "undeclared prefix in {term:?}"
            )));
        };
        let rest: Vec<&str> = steps.collect();
        if rest.iter().any(|s| s.is_empty()) || root.is_empty() {
            return Err(FilterError::Expression(format!("malformed term {term:?}")));
        }
        if namespace != ns::BG {
            continue;
        }
        for t in Topic::ALL {
            let (r, leaf) = t.path();
            let step = |pat: &str, name: &str| pat == "*" || pat == name;
            let hit = match rest.as_slice() {
                [] => step(root, r) && subtree,
                [l] => step(root, r) && step(l, leaf),
                _ => false,
            };
            if hit {
                mask |= t.bit();
            }
        }
    }
    if mask == 0 {
        return Err(FilterError::Expression(format!(
            "{:?} selects none of this node's topics (bg:Server/State, bg:Ownership/Resource, \
             bg:Ownership/Conflict, bg:Failover/Completed, bg:Failover/Failback)",
            el.text()
        )));
    }
    Ok(TopicMask(mask))
}

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
/// `failback.completed` and `ownership.conflict` give one each; other types give none
/// (ownership and server state reach subscribers as properties, from the snapshots).
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
        _ => Vec::new(),
    }
}

/// Every message one stored event gives the `onvif` connector: the `Changed` properties it
/// records (a server down or up; each resource of a failover or failback with its new owner,
/// address and epoch; a resolved conflict's owner; a resource that failed), then its event
/// message ([`event_messages`]). Kinds and home servers come from `site`; resources it does
/// not know are left out. Events with nothing to say in ONVIF (paths, `failover.started`,
/// config mismatches) give none.
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

/// Writes the `wstop:TopicSet` of `GetEventProperties`: every topic with its message
/// description.
pub fn write_topic_set(o: &mut XmlOut) {
    o.open("wstop:TopicSet", &[]);
    let mut roots: Vec<&str> = Vec::new();
    for t in Topic::ALL {
        let root = t.path().0;
        if !roots.contains(&root) {
            roots.push(root);
        }
    }
    for root in roots {
        let name = format!("bg:{root}");
        o.open(&name, &[]);
        for t in Topic::ALL.into_iter().filter(|t| t.path().0 == root) {
            let leaf = format!("bg:{}", t.path().1);
            o.open(&leaf, &[("wstop:topic", "true")]);
            o.open(
                "tt:MessageDescription",
                &[("IsProperty", if t.is_property() { "true" } else { "false" })],
            );
            o.open("tt:Source", &[]);
            for n in t.source() {
                o.empty(
                    "tt:SimpleItemDescription",
                    &[("Name", n), ("Type", "xs:string")],
                );
            }
            o.close("tt:Source");
            o.open("tt:Data", &[]);
            for (n, ty) in t.data() {
                o.empty("tt:SimpleItemDescription", &[("Name", n), ("Type", ty)]);
            }
            o.close("tt:Data");
            o.close("tt:MessageDescription");
            o.close(&leaf);
        }
        o.close(&name);
    }
    o.close("wstop:TopicSet");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::onvif::xml;

    fn expr(text: &str) -> Result<TopicMask, FilterError> {
        let doc = format!(
            r#"<wsnt:TopicExpression xmlns:wsnt="{}" xmlns:bg="{}" xmlns:tns1="{}" Dialect="{CONCRETE_SET}">{text}</wsnt:TopicExpression>"#,
            ns::WSNT,
            ns::BG,
            ns::TNS1
        );
        parse_topic_expression(&xml::parse(doc.as_bytes()).unwrap())
    }

    #[test]
    fn topic_expressions() {
        assert_eq!(
            expr("bg:Failover/Completed"),
            Ok(TopicMask::of(&[Topic::FailoverCompleted]))
        );
        assert_eq!(
            expr("bg:Failover//.|bg:Server/State"),
            Ok(TopicMask::of(&[
                Topic::FailoverCompleted,
                Topic::FailoverFailback,
                Topic::ServerState
            ]))
        );
        assert_eq!(
            expr("bg:*/Resource | tns1:Device//."),
            Ok(TopicMask::of(&[Topic::OwnershipResource]))
        );
        assert!(matches!(
            expr("tns1:Device//."),
            Err(FilterError::Expression(_))
        ));
        assert!(matches!(expr("zz:A/B"), Err(FilterError::Expression(_))));
        assert!(matches!(
            expr("bg:Failover"),
            Err(FilterError::Expression(_))
        ));
    }

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
}

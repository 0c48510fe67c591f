//! What the MQTT connector publishes, as values: the retained state of servers and resources
//! a node serves, the MQTT 5 properties of each publish, and the ONVIF Profile M form of
//! events (`onvif_topics = true`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::link::Props;
use crate::config::{ServerIdx, Site};
use crate::failover::ResourceState;
use crate::store::StoredEvent;
use crate::view::Snapshot;

/// MQTT 5 properties of an event: structured CloudEvent, a few attributes as user
/// properties so a broker rule or a subscriber can route without parsing the payload.
pub(super) fn event_props(ce: &Value, message_expiry: Option<Duration>) -> Props {
    let mut user = vec![("ce-specversion".to_string(), "1.0".to_string())];
    for key in ["id", "type", "source"] {
        if let Some(v) = ce[key].as_str() {
            user.push((format!("ce-{key}"), v.to_string()));
        }
    }
    if let Some(epoch) = ce["data"]["epoch"].as_u64() {
        user.push(("epoch".to_string(), epoch.to_string()));
    }
    Props {
        content_type: Some("application/cloudevents+json"),
        message_expiry,
        user,
    }
}

/// The retained state `snap`'s node publishes under `prefix`, by topic, without timestamps:
/// the resources it serves (`state: active`), those it reports unplaced (no owner,
/// `state: unplaced`), and the servers it is or serves.
pub(super) fn retained(site: &Site, prefix: &str, snap: &Snapshot) -> BTreeMap<String, Value> {
    let me = snap.node;
    let mut out = BTreeMap::new();
    for v in &snap.resources {
        let r = site.resource(v.resource);
        let topic = format!("{}/resources/{}", prefix, r.id);
        // Published once it runs here: a subscriber switching to this address then finds
        // the camera recording (not a claim still starting).
        if v.owner == Some(me) && v.state == ResourceState::Active {
            out.insert(
                topic,
                json!({
                    "kind": r.kind.as_str(),
                    "owner": site.server(me).id,
                    "address": site.server(me).address.to_string(),
                    "epoch": v.epoch,
                    "state": "active",
                }),
            );
        } else if v.unplaced {
            // Nobody serves it and no buddy can take it: the last owner's message must not
            // stay retained as the truth. This node reports it (its first buddy that is up).
            out.insert(
                topic,
                json!({
                    "kind": r.kind.as_str(),
                    "owner": null,
                    "address": null,
                    "epoch": v.epoch,
                    "state": "unplaced",
                }),
            );
        }
    }
    for sv in &snap.servers {
        let (served_by, epoch) = served_by(site, &snap.resources, sv.server);
        if sv.server != me && served_by != me {
            continue;
        }
        let server = site.server(sv.server);
        out.insert(
            format!("{}/servers/{}", prefix, server.id),
            json!({
                "state": sv.state.as_str(),
                "address": server.address.to_string(),
                "served_by": site.server(served_by).id,
                "served_address": site.server(served_by).address.to_string(),
                "epoch": epoch,
            }),
        );
    }
    out
}

/// The ONVIF Profile M event-broker form of an event (`onvif_topics = true`): the messages
/// the ONVIF event service gives for it (failover, failback, ownership conflict), each under
/// `{prefix}/onvif-ej/{topic without its namespace prefix}/&{source value}` as ONVIF event JSON:
/// `{"Topic","UtcTime","Source":{name: value},"Data":{name: value}}`.
pub fn onvif_messages(prefix: &str, ev: &StoredEvent) -> Vec<(String, Value)> {
    use crate::onvif::messages::event_messages;
    let items = |v: &[(&str, String)]| {
        Value::Object(
            v.iter()
                .map(|(k, v)| ((*k).to_string(), Value::String(v.clone())))
                .collect(),
        )
    };
    event_messages(ev)
        .into_iter()
        .map(|m| {
            let (root, leaf) = m.topic.path();
            let mut topic = format!("{prefix}/onvif-ej/{root}/{leaf}");
            for (_, value) in &m.source {
                // `+`, `#` and `/` cannot appear in one topic level.
                topic.push_str("/&");
                topic.extend(value.chars().filter(|c| !matches!(c, '+' | '#' | '/')));
            }
            let message = json!({
                "Topic": m.topic.expression(),
                "UtcTime": m.utc_time,
                "Source": items(&m.source),
                "Data": items(&m.data),
            });
            (topic, message)
        })
        .collect()
}

/// MQTT 5 properties of retained state and of the birth, death and will.
pub(super) fn state_props(epoch: Option<u64>) -> Props {
    Props {
        content_type: Some("application/json"),
        message_expiry: None,
        user: epoch
            .map(|e| vec![("epoch".to_string(), e.to_string())])
            .unwrap_or_default(),
    }
}

/// Who serves `server`'s resources in `views`: the owner of most of them (ties to the earlier
/// server in the site file; the server itself when none has an owner), and the epoch of
/// `{prefix}/servers/{id}`: the highest epoch among the resources that owner serves.
///
/// Not the highest among all of the server's resources: in the middle of a make-before-break
/// hand-over (a failback) the buddy still serves most of them while the returning server's
/// first claims are active at a higher epoch. The buddy then published `served_by` itself at
/// the returning server's epoch, and the returning server, a moment later, `served_by` itself
/// at that same epoch: a subscriber keeping the highest epoch (and ignoring an equal one, the
/// epoch rule) kept the buddy's message, and the broker retained whichever came last. Each
/// owner's own claims carry epochs no other owner shares, so the newer owner's message now
/// always has the higher epoch.
fn served_by(
    site: &Site,
    views: &[crate::failover::ResourceView],
    server: ServerIdx,
) -> (ServerIdx, crate::failover::Epoch) {
    let mut owners: BTreeMap<ServerIdx, usize> = BTreeMap::new();
    let mut any = 0;
    let mine = || {
        views
            .iter()
            .filter(|v| site.resource(v.resource).server == server)
    };
    for v in mine() {
        any = any.max(v.epoch);
        if let Some(o) = v.owner {
            *owners.entry(o).or_default() += 1;
        }
    }
    let by = owners
        .iter()
        .max_by_key(|(o, n)| (**n, std::cmp::Reverse(**o)))
        .map_or(server, |(o, _)| *o);
    let epoch = mine()
        .filter(|v| v.owner == Some(by))
        .map(|v| v.epoch)
        .max()
        .unwrap_or(any);
    (by, epoch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ResourceIdx;
    use crate::failover::{ResourceState, ResourceView};

    /// Fault lab (tests/faults), every failback: the buddy published `servers/live-1` as
    /// served by itself at the returning server's epoch, then live-1 as served by itself at
    /// the same epoch; a subscriber applying the epoch rule ended on the buddy.
    #[test]
    fn servers_topic_epoch_is_the_serving_owners_own() {
        let site = crate::config::parse_str(
            r#"
[site]
name = "t"
secret = "x"
[api]
token = "x"
[[servers]]
id = "live-1"
address = "10.0.0.1"
heartbeat = ["10.0.0.1:7400"]
api = "10.0.0.1:8400"
buddies = ["fo-1"]
[[servers]]
id = "fo-1"
role = "failover"
mode = "mirrored"
address = "10.0.0.2"
heartbeat = ["10.0.0.2:7400"]
api = "10.0.0.2:8400"
[[resources]]
server = "live-1"
id = "{server}-cam-{01..04}"
kind = "camera"
"#,
            "site.toml",
        )
        .expect("valid site")
        .site;
        let live = site.server_idx("live-1").unwrap();
        let fo = site.server_idx("fo-1").unwrap();
        // `back` cameras are active on live-1 again at 399, the rest still on fo-1 at 298.
        let views = |back: u32| -> Vec<ResourceView> {
            (0..4)
                .map(|i| ResourceView {
                    resource: ResourceIdx(i),
                    owner: Some(if i < back { live } else { fo }),
                    epoch: if i < back { 399 } else { 298 },
                    state: ResourceState::Active,
                    unplaced: false,
                })
                .collect()
        };
        // fo-1 still serves most: its message carries its own epoch, below live-1's claims.
        assert_eq!(served_by(&site, &views(1), live), (fo, 298));
        // Half back: ties go to the earlier server in the site file.
        assert_eq!(served_by(&site, &views(2), live), (live, 399));
        assert_eq!(served_by(&site, &views(4), live), (live, 399));
        assert_eq!(served_by(&site, &views(0), live), (fo, 298));
        // Nobody serves them: the server itself, at the highest epoch known.
        let none: Vec<_> = views(1)
            .into_iter()
            .map(|v| ResourceView { owner: None, ..v })
            .collect();
        assert_eq!(served_by(&site, &none, live), (live, 399));
    }
}

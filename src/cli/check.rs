//! `buddygate check`: every problem of the site file and its connector files, or a summary of
//! the site, its connectors and its failover capacity.

use std::io::Write;

use super::EXIT_INVALID;
use crate::config;
use crate::connectors::ConnectorKind;
use crate::connectors::mqtt::MqttProtocol;

/// `buddygate check`: diagnostics to `err`, the summary to `out`.
pub(super) fn check(path: &std::path::Path, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    match crate::connectors::load_site(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                let _ = writeln!(err, "{w}");
            }
            let _ = out.write_all(config::summary::render(&loaded.site).as_bytes());
            if !loaded.connectors.is_empty() {
                let _ = writeln!(out, "connectors:");
                for c in &loaded.connectors {
                    let (events, target, suffix) = match &c.kind {
                        ConnectorKind::Webhook(w) => (
                            &w.events,
                            format!("{} {}", w.method, crate::redact::url(&w.url)),
                            if w.secrets.is_empty() { "" } else { ", signed" },
                        ),
                        ConnectorKind::Mqtt(m) => (
                            &m.events,
                            format!("{} qos {}", m.url, m.qos),
                            match (m.protocol == MqttProtocol::V5, m.tls.cert.is_some()) {
                                (true, true) => ", MQTT 5, client certificate",
                                (true, false) => ", MQTT 5",
                                (false, true) => ", client certificate",
                                (false, false) => "",
                            },
                        ),
                        ConnectorKind::Onvif(o) => (
                            &o.events,
                            format!("Notify {}", crate::redact::url(&o.url)),
                            if o.username.is_some() {
                                ", WS-UsernameToken"
                            } else {
                                ""
                            },
                        ),
                    };
                    let events = match events.patterns() {
                        [] => "all events".to_string(),
                        patterns => patterns.join(", "),
                    };
                    let _ = writeln!(
                        out,
                        "  {} ({}): {target} [{events}]{suffix}",
                        c.name,
                        c.kind.type_name()
                    );
                }
            }
            let _ = writeln!(out, "{}", api_summary(&loaded.site, &loaded.ingress));
            let _ = writeln!(out);
            let _ =
                out.write_all(crate::failover::placement::capacity_report(&loaded.site).as_bytes());
            let paging = crate::failover::node::heartbeat::paging_report(&loaded.site);
            if !paging.is_empty() {
                let _ = writeln!(
                    err,
                    "warning: some heartbeats need more than one datagram (more claims than fit {} bytes); \
                     they are split into pages, and a lost page is re-sent a few rounds later:",
                    crate::failover::node::heartbeat::DATAGRAM_BUDGET
                );
                for line in &paging {
                    let _ = writeln!(err, "  {line}");
                }
            }
            0
        }
        Err(diagnostics) => {
            let _ = writeln!(err, "{diagnostics}");
            let errors = diagnostics.errors().count();
            let _ = writeln!(
                err,
                "{}: invalid: {errors} error{}",
                path.display(),
                if errors == 1 { "" } else { "s" }
            );
            EXIT_INVALID
        }
    }
}

/// One line on the API: who may read it, HTTP or HTTPS, extra host names, ONVIF push.
fn api_summary(site: &config::Site, ingress: &config::Ingress) -> String {
    let reads = match (ingress.read, &site.api.token, &ingress.read_token) {
        (config::ReadAccess::Open, _, _) => "reads open to anyone".to_string(),
        (_, None, None) => "reads and mutations refused (no token)".to_string(),
        (_, Some(_), Some(_)) => "reads with api.token or api.read_token".to_string(),
        (_, Some(_), None) => "reads with api.token".to_string(),
        (_, None, Some(_)) => "reads with api.read_token, mutations refused".to_string(),
    };
    let scheme = match &ingress.tls {
        Some(t) if t.client_ca.is_some() => "https with client certificates",
        Some(_) => "https",
        None => "http",
    };
    let mut line = format!("api: {reads}, {scheme}");
    if !ingress.hosts.is_empty() {
        line.push_str(&format!(", host names {}", ingress.hosts.join(", ")));
    }
    let push: Vec<String> = ingress
        .onvif_push_allow
        .iter()
        .map(ToString::to_string)
        .collect();
    line.push_str(&match push.as_slice() {
        [] => ", no ONVIF push subscriptions".to_string(),
        list => format!(", ONVIF push to {}", list.join(", ")),
    });
    line
}

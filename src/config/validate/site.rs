//! `[site]`, `[api]` and `[store]`.

use std::collections::HashSet;

use super::{Validator, show};
use crate::config::decode::Broken;
use crate::config::file::{ApiSection, SiteSection, StoreSection, size};
use crate::config::ingress::{PushAllow, ReadAccess, is_host_name};
use crate::config::locate::KeyPath;

impl<'a> Validator<'a> {
    pub(super) fn site(&mut self, site: &SiteSection, broken: &Broken) {
        let path = KeyPath::root().key("site");
        if !broken.has("name") {
            self.name(&path.key("name"), &site.name);
        }
        if !broken.has("secret") {
            self.secret(&path.key("secret"), &site.secret);
        }
        let (hb, ft) = (site.heartbeat_interval, site.failure_timeout);
        if broken.has("heartbeat_interval") {
            // Reported; failure_timeout cannot be compared with it.
        } else if hb.is_zero() {
            self.error(&path.key("heartbeat_interval"), "must be greater than zero");
        } else if ft <= hb.saturating_mul(2) && !broken.has("failure_timeout") {
            self.error(
                &path.key("failure_timeout"),
                format!(
                    "{} must be greater than 2 x heartbeat_interval ({}), \
                     or one lost heartbeat looks like a dead server",
                    show(ft),
                    show(hb.saturating_mul(2))
                ),
            );
        }
        let mut seen = HashSet::new();
        for (i, w) in site.witnesses.iter().enumerate() {
            let at = path.key("witnesses").index(i);
            if let Some(addr) = self.socket(&at, w)
                && !seen.insert(addr)
            {
                self.error(&at, format!("{addr} is listed twice"));
            }
        }
        let n = site.witnesses.len();
        if n >= 2 && n.is_multiple_of(2) {
            self.warning(
                &path.key("witnesses"),
                format!(
                    "{n} witnesses survive as few witness failures as {} do; use an odd number",
                    n - 1
                ),
            );
        }
        if site.connectors.as_os_str().is_empty() {
            self.error(&path.key("connectors"), "must not be empty");
        }
    }

    pub(super) fn api(&mut self, api: &ApiSection, broken: &Broken) {
        let path = KeyPath::root().key("api");
        let reads_refused = api.read == ReadAccess::Token
            && api.read_token.is_none()
            && !broken.has("read_token")
            && !broken.has("read");
        match &api.token {
            Some(token) => self.secret(&path.key("token"), token),
            None if broken.has("token") => {}
            None if reads_refused => self.warning(
                &path.key("token"),
                "not set: every API mutation (failover, failback, replay) and every read \
                 will be refused; set it, or `read_token`, or `read = \"open\"`",
            ),
            None => self.warning(
                &path.key("token"),
                "not set: every API mutation (failover, failback, replay) will be refused",
            ),
        }
        if let Some(read_token) = &api.read_token {
            self.secret(&path.key("read_token"), read_token);
            if api.token.as_ref() == Some(read_token) {
                self.warning(
                    &path.key("read_token"),
                    "the same secret as `token`: whoever may read may also fail servers over",
                );
            }
            if api.read == ReadAccess::Open {
                self.warning(
                    &path.key("read_token"),
                    "not needed with `read = \"open\"`: anyone may read",
                );
            }
        }
        if let Some(tls) = &api.tls {
            for (key, p) in [
                ("cert", Some(&tls.cert)),
                ("key", Some(&tls.key)),
                ("client_ca", tls.client_ca.as_ref()),
            ] {
                if p.is_some_and(|p| p.as_os_str().is_empty()) {
                    self.error(&path.key("tls").key(key), "must not be empty");
                }
            }
        }
        let mut seen = HashSet::new();
        for (i, h) in api.hosts.iter().enumerate() {
            let at = path.key("hosts").index(i);
            if h.parse::<std::net::IpAddr>().is_err() && !is_host_name(h) {
                self.error(
                    &at,
                    format!(
                        "\"{h}\" is not a host name (letters, digits, `-` and `.`) or an IP address"
                    ),
                );
            } else if !seen.insert(h.to_ascii_lowercase()) {
                self.error(&at, format!("\"{h}\" is listed twice"));
            }
        }
        for (i, entry) in api.onvif_push_allow.iter().enumerate() {
            if let Err(e) = PushAllow::parse(entry) {
                self.error(&path.key("onvif_push_allow").index(i), e);
            }
        }
        let mut seen = HashSet::new();
        for (i, u) in api.onvif_users.iter().enumerate() {
            let at = path.key("onvif_users").index(i);
            if u.user.is_empty() {
                self.error(&at.key("user"), "must not be empty");
            } else if !seen.insert(u.user.as_str()) {
                self.error(&at.key("user"), format!("\"{}\" is listed twice", u.user));
            }
            self.secret(&at.key("password"), &u.password);
        }
    }

    pub(super) fn store(&mut self, store: &StoreSection, broken: &Broken) {
        let path = KeyPath::root().key("store");
        if !broken.has("retention") && store.retention < MIN_RETENTION {
            self.error(
                &path.key("retention"),
                format!(
                    "{} is too short: at least {} (the event log is the API's history and \
                     what connectors deliver from)",
                    show(store.retention),
                    show(MIN_RETENTION)
                ),
            );
        }
        if !broken.has("max_size") && store.max_size < MIN_STORE_SIZE {
            self.error(
                &path.key("max_size"),
                format!(
                    "{} is too small: at least {}",
                    size::show(store.max_size),
                    size::show(MIN_STORE_SIZE)
                ),
            );
        }
    }
}

/// The shortest `[store] retention`.
const MIN_RETENTION: std::time::Duration = std::time::Duration::from_secs(3600);
/// The smallest `[store] max_size`.
const MIN_STORE_SIZE: u64 = 16 << 20;

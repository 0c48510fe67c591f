//! WS-UsernameToken `PasswordDigest` authentication (WS-Security UsernameToken Profile 1.0):
//! `Base64(SHA-1(nonce + created + password))` checked against the site's ONVIF accounts,
//! `Created` within [`SKEW`] of this node's clock, and each nonce accepted once.
//!
//! Every failure is the same fault ([`NOT_AUTHORIZED`]); why it failed is counted in
//! `buddygate_onvif_auth_failures_total{reason}`. A client address that keeps failing is
//! slowed down: after [`FREE_FAILURES`] its attempts are not even checked for a wait that
//! doubles with each failure up to [`MAX_PENALTY`] (about two guesses a minute).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::onvif::security::{DIGEST_TYPE, TEXT_TYPE, password_digest};
use crate::onvif::soap::{Fault, ns};
use crate::onvif::time::parse_datetime;
use crate::onvif::xml::Element;
use crate::ratelimit::LogLimiter;
use crate::view::Metrics;

/// How far `Created` may be from this node's clock, either way.
pub const SKEW: Duration = Duration::from_secs(300);
/// Nonces remembered at most; beyond it the oldest are forgotten first.
pub const NONCE_CACHE: usize = 100_000;

/// The accounts, the nonces already seen, and the failures per client address.
pub struct Authenticator {
    users: Vec<(String, String)>,
    nonces: Mutex<Nonces>,
    throttle: Mutex<Throttle>,
    metrics: Arc<Metrics>,
    /// Addresses being slowed down are logged at this rate.
    log: LogLimiter,
}

#[derive(Default)]
struct Nonces {
    seen: HashSet<Vec<u8>>,
    /// `(forget after, nonce)`, oldest first.
    order: VecDeque<(SystemTime, Vec<u8>)>,
}

impl Nonces {
    /// `false` if `nonce` was seen within its lifetime.
    fn insert(&mut self, nonce: &[u8], now: SystemTime) -> bool {
        while let Some((until, _)) = self.order.front() {
            if *until > now && self.order.len() < NONCE_CACHE {
                break;
            }
            if let Some((_, n)) = self.order.pop_front() {
                self.seen.remove(&n);
            }
        }
        if !self.seen.insert(nonce.to_vec()) {
            return false;
        }
        // A digest stays valid while its Created is within SKEW of the clock: at most 2 * SKEW.
        self.order.push_back((now + 2 * SKEW, nonce.to_vec()));
        true
    }
}

/// The one fault of every authentication failure, whatever went wrong: a client (or a
/// guesser) cannot tell a wrong password from a stale `Created`, a used nonce, an unknown user
/// or a throttled address. The node's metrics and debug log say which it was.
pub const NOT_AUTHORIZED: &str = "Sender not authorized";

fn fault() -> Fault {
    Fault::not_authorized(NOT_AUTHORIZED)
}

/// Why a WS-UsernameToken was refused (the `reason` of `buddygate_onvif_auth_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No `UsernameToken`, or no accounts on this node.
    Missing,
    /// Malformed, unknown user, or wrong password.
    Password,
    /// `Created` too far from this node's clock.
    Created,
    /// The nonce was used before.
    Nonce,
    /// The client's address failed too often lately: not checked at all.
    Throttled,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Missing => "missing",
            Refused::Password => "password",
            Refused::Created => "created",
            Refused::Nonce => "nonce",
            Refused::Throttled => "throttled",
        }
    }
}

/// Constant-time comparison of two byte strings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Failed authentications from one client address before it is slowed down.
pub const FREE_FAILURES: u32 = 5;
/// The first wait after [`FREE_FAILURES`]; it doubles with each further failure...
pub const FIRST_PENALTY: Duration = Duration::from_secs(1);
/// ...up to this.
pub const MAX_PENALTY: Duration = Duration::from_secs(30);
/// A client's failures are forgotten this long after its last one.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Client addresses remembered at most.
const MAX_CLIENTS: usize = 10_000;

/// One client address's recent failures.
#[derive(Debug, Clone, Copy)]
struct Strikes {
    failures: u32,
    last: Instant,
    /// No attempt of this client is checked before this.
    blocked_until: Option<Instant>,
}

/// Failed authentications per client address (IPv4, or an IPv6 /64): after
/// [`FREE_FAILURES`], each failure makes the address wait before its next attempt is even
/// checked, [`FIRST_PENALTY`] doubling up to [`MAX_PENALTY`]; an attempt during the wait is
/// refused unchecked. A success forgets the address's failures.
#[derive(Debug, Default)]
struct Throttle {
    clients: HashMap<IpAddr, Strikes>,
}

impl Throttle {
    fn blocked(&self, client: IpAddr, now: Instant) -> bool {
        self.clients
            .get(&client)
            .and_then(|s| s.blocked_until)
            .is_some_and(|until| now < until)
    }

    /// Counts a failure of `client`; whether it is slowed down now.
    fn failed(&mut self, client: IpAddr, now: Instant) -> bool {
        if self.clients.len() >= MAX_CLIENTS && !self.clients.contains_key(&client) {
            self.clients
                .retain(|_, s| now.duration_since(s.last) < FORGET_AFTER);
            if self.clients.len() >= MAX_CLIENTS {
                self.clients
                    .retain(|_, s| s.blocked_until.is_some_and(|u| now < u));
            }
            if self.clients.len() >= MAX_CLIENTS {
                self.clients.clear();
            }
        }
        let s = self.clients.entry(client).or_insert(Strikes {
            failures: 0,
            last: now,
            blocked_until: None,
        });
        if now.duration_since(s.last) >= FORGET_AFTER {
            s.failures = 0;
        }
        s.failures = s.failures.saturating_add(1);
        s.last = now;
        if s.failures > FREE_FAILURES {
            let doublings = (s.failures - FREE_FAILURES - 1).min(16);
            let wait = FIRST_PENALTY
                .saturating_mul(1 << doublings)
                .min(MAX_PENALTY);
            s.blocked_until = Some(now + wait);
            return true;
        }
        false
    }

    fn succeeded(&mut self, client: IpAddr) {
        self.clients.remove(&client);
    }
}

impl Authenticator {
    pub fn new(users: Vec<(String, String)>, metrics: Arc<Metrics>) -> Self {
        Self {
            users,
            nonces: Mutex::new(Nonces::default()),
            throttle: Mutex::new(Throttle::default()),
            metrics,
            log: LogLimiter::new(),
        }
    }

    /// Checks the `wsse:Security` header of a request from `client` (its address, when
    /// known); the authenticated user name, or the one `env:Sender/ter:NotAuthorized` fault.
    pub fn check(
        &self,
        security: Option<&Element>,
        now: SystemTime,
        client: Option<IpAddr>,
    ) -> Result<String, Fault> {
        let key = client.map(crate::api::listener::client_key);
        let mono = Instant::now();
        let mut throttle = self.throttle.lock().unwrap_or_else(|e| e.into_inner());
        if key.is_some_and(|k| throttle.blocked(k, mono)) {
            return Err(self.refuse(Refused::Throttled, client));
        }
        match self.verify(security, now) {
            Ok(user) => {
                if let Some(k) = key {
                    throttle.succeeded(k);
                }
                Ok(user)
            }
            Err(why) => {
                // A request without a token is a client that has not authenticated yet (many
                // ask unauthenticated first): counted, but never slowed down.
                if let (Some(k), false) = (key, why == Refused::Missing)
                    && throttle.failed(k, mono)
                    && let Some(suppressed) = self.log.allow("onvif_throttled")
                {
                    tracing::warn!(client = ?client, suppressed, "ONVIF authentication keeps failing from this address; slowing it down.");
                }
                Err(self.refuse(why, client))
            }
        }
    }

    fn refuse(&self, why: Refused, client: Option<IpAddr>) -> Fault {
        self.metrics.onvif_auth_failures.add(why.as_str());
        tracing::debug!(reason = why.as_str(), client = ?client, "ONVIF authentication refused.");
        fault()
    }

    /// The user name of a valid token, or why it is not. Every check is made, in the same
    /// order, whatever fails first: the time taken tells little.
    fn verify(&self, security: Option<&Element>, now: SystemTime) -> Result<String, Refused> {
        let token = security
            .and_then(|s| s.child(ns::WSSE, "UsernameToken"))
            .ok_or(Refused::Missing)?;
        if self.users.is_empty() {
            return Err(Refused::Missing);
        }
        let user = token
            .child(ns::WSSE, "Username")
            .map(Element::text)
            .unwrap_or_default();
        let password = token.child(ns::WSSE, "Password");
        let digest_type = password
            .and_then(|p| p.attr("", "Type"))
            .unwrap_or(TEXT_TYPE)
            .ends_with(DIGEST_TYPE);
        let given = password.map(Element::text).unwrap_or_default();
        let nonce = token
            .child(ns::WSSE, "Nonce")
            .and_then(|n| B64.decode(n.text()).ok())
            .filter(|n| !n.is_empty() && n.len() <= 128);
        let created_raw = token
            .child(ns::WSU, "Created")
            .or_else(|| token.child(ns::WSSE, "Created"))
            .map(|c| c.text.as_str());
        let created = created_raw.and_then(parse_datetime);
        // The digest is computed for an unknown user too (against a stand-in password).
        let expected = self
            .users
            .iter()
            .find(|(u, _)| u == user)
            .map_or(UNKNOWN_USER_PASSWORD, |(_, p)| p.as_str());
        let digest = password_digest(
            nonce.as_deref().unwrap_or(b"-"),
            created_raw.unwrap_or(""),
            expected,
        );
        let known = self.users.iter().any(|(u, _)| u == user);
        let matches = same(digest.as_bytes(), given.as_bytes());
        if !(known && matches && digest_type && nonce.is_some() && created.is_some()) {
            return Err(Refused::Password);
        }
        let skew = created.map_or(Duration::MAX, |c| match now.duration_since(c) {
            Ok(d) => d,
            Err(e) => e.duration(),
        });
        if skew > SKEW {
            return Err(Refused::Created);
        }
        let fresh = match (self.nonces.lock(), &nonce) {
            (Ok(mut n), Some(nonce)) => n.insert(nonce, now),
            _ => false,
        };
        if !fresh {
            return Err(Refused::Nonce);
        }
        Ok(user.to_string())
    }
}

/// What an unknown user's digest is computed against, so that refusing an unknown user takes
/// as long as refusing a wrong password (it is never compared as a password: `known` is false).
const UNKNOWN_USER_PASSWORD: &str = "buddygate: no such user";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onvif::security::write_username_token;
    use crate::onvif::xml::{self, XmlOut};

    fn token(user: &str, pass: &str, nonce: &[u8], created: &str) -> Element {
        let digest = password_digest(nonce, created, pass);
        let doc = format!(
            r#"<wsse:Security xmlns:wsse="{}" xmlns:wsu="{}"><wsse:UsernameToken><wsse:Username>{user}</wsse:Username><wsse:Password Type="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest">{digest}</wsse:Password><wsse:Nonce>{}</wsse:Nonce><wsu:Created>{created}</wsu:Created></wsse:UsernameToken></wsse:Security>"#,
            ns::WSSE,
            ns::WSU,
            B64.encode(nonce)
        );
        xml::parse(doc.as_bytes()).unwrap()
    }

    fn auth(users: &[(&str, &str)]) -> Authenticator {
        let users = users
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect();
        Authenticator::new(users, Arc::new(Metrics::default()))
    }

    #[test]
    fn digest_rules() {
        let a = auth(&[("admin", "pw")]);
        let created = "2026-11-24T22:00:00Z";
        let now = parse_datetime(created).unwrap() + Duration::from_secs(10);
        let good = token("admin", "pw", b"n1", created);
        assert_eq!(a.verify(Some(&good), now).unwrap(), "admin");
        assert_eq!(a.verify(Some(&good), now), Err(Refused::Nonce));
        let wrong = token("admin", "nope", b"n2", created);
        assert_eq!(a.verify(Some(&wrong), now), Err(Refused::Password));
        let nobody = token("root", "pw", b"n3", created);
        assert_eq!(a.verify(Some(&nobody), now), Err(Refused::Password));
        let late = now + SKEW + Duration::from_secs(1);
        let stale = token("admin", "pw", b"n4", created);
        assert_eq!(a.verify(Some(&stale), late), Err(Refused::Created));
        assert_eq!(a.verify(None, now), Err(Refused::Missing));
        // A failed attempt does not burn the nonce.
        assert!(
            a.verify(Some(&token("admin", "pw", b"n2", created)), now)
                .is_ok()
        );
    }

    #[test]
    fn every_failure_is_one_fault() {
        let a = auth(&[("admin", "pw")]);
        let created = "2026-11-24T22:00:00Z";
        let now = parse_datetime(created).unwrap() + Duration::from_secs(10);
        let good = token("admin", "pw", b"n1", created);
        let faults = [
            a.check(None, now, None).unwrap_err(),
            a.check(Some(&token("admin", "nope", b"n2", created)), now, None)
                .unwrap_err(),
            a.check(Some(&token("root", "pw", b"n3", created)), now, None)
                .unwrap_err(),
            a.check(Some(&good), now + SKEW * 2, None).unwrap_err(),
            {
                a.check(Some(&good), now, None).unwrap();
                a.check(Some(&good), now, None).unwrap_err()
            },
        ];
        for f in &faults {
            assert_eq!(f.reason, NOT_AUTHORIZED);
            assert_eq!(f.subcodes, ["ter:NotAuthorized"]);
        }
        let counted: Vec<_> = a.metrics.onvif_auth_failures.read();
        assert_eq!(
            counted,
            [
                ("created", 1),
                ("missing", 1),
                ("nonce", 1),
                ("password", 2)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failing_addresses_are_slowed_down() {
        let a = auth(&[("admin", "pw")]);
        let now = SystemTime::now();
        let created = crate::onvif::time::format_datetime(now);
        let guesser: IpAddr = "10.0.5.66".parse().unwrap();
        let other: IpAddr = "10.0.5.67".parse().unwrap();
        let mut n = 0u32;
        let mut attempt = |pass: &str, client: IpAddr| {
            n += 1;
            let t = token("admin", pass, &n.to_le_bytes(), &created);
            a.check(Some(&t), now, Some(client))
        };
        for _ in 0..FREE_FAILURES + 1 {
            assert!(attempt("guess", guesser).is_err());
        }
        // Blocked: even the right password is refused, unchecked, with the same fault.
        let blocked = attempt("pw", guesser).unwrap_err();
        assert_eq!(blocked.reason, NOT_AUTHORIZED);
        assert_eq!(a.metrics.onvif_auth_failures.get("throttled"), 1);
        // Another address is not affected.
        assert!(attempt("pw", other).is_ok());
        tokio::time::advance(FIRST_PENALTY).await;
        assert!(
            attempt("pw", guesser).is_ok(),
            "after the wait, checked again"
        );
        // The success forgot the failures: five free ones again.
        for _ in 0..FREE_FAILURES {
            assert!(attempt("guess", guesser).is_err());
        }
        assert_eq!(a.metrics.onvif_auth_failures.get("throttled"), 1);
    }

    #[test]
    fn penalties_double_up_to_the_maximum() {
        let mut t = Throttle::default();
        let c: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..FREE_FAILURES + 8 {
            t.failed(c, t0);
            let until = t.clients[&c].blocked_until;
            waits.push(until.map(|u| u.duration_since(t0).as_secs()));
        }
        let free = FREE_FAILURES as usize;
        assert!(waits[..free].iter().all(Option::is_none));
        assert_eq!(
            waits[free..],
            [
                Some(1),
                Some(2),
                Some(4),
                Some(8),
                Some(16),
                Some(30),
                Some(30),
                Some(30)
            ]
        );
    }

    #[test]
    fn a_written_token_verifies_once() {
        let now = SystemTime::now();
        let mut o = XmlOut::new();
        write_username_token(&mut o, "push", "s3cret", now);
        let header = xml::parse(o.finish().as_bytes()).unwrap();
        let a = auth(&[("push", "s3cret")]);
        assert_eq!(a.check(Some(&header), now, None).unwrap(), "push");
        assert!(
            a.check(Some(&header), now, None).is_err(),
            "the nonce is single-use"
        );
        let wrong = auth(&[("push", "other")]);
        assert!(wrong.check(Some(&header), now, None).is_err());
    }

    #[test]
    fn nonces_expire_and_are_bounded() {
        let mut n = Nonces::default();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(n.insert(b"a", t));
        assert!(!n.insert(b"a", t + SKEW));
        assert!(n.insert(b"a", t + 2 * SKEW + Duration::from_secs(1)));
        for i in 0..NONCE_CACHE + 10 {
            n.insert(&i.to_le_bytes(), t);
        }
        assert!(n.order.len() <= NONCE_CACHE + 1);
    }
}

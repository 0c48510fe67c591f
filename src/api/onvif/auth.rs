//! WS-UsernameToken `PasswordDigest` authentication (WS-Security UsernameToken Profile 1.0):
//! `Base64(SHA-1(nonce + created + password))` checked against the site's ONVIF accounts,
//! `Created` within [`SKEW`] of this node's clock, and each nonce accepted once.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::onvif::security::{DIGEST_TYPE, TEXT_TYPE, password_digest};
use crate::onvif::soap::{Fault, ns};
use crate::onvif::time::parse_datetime;
use crate::onvif::xml::Element;

/// How far `Created` may be from this node's clock, either way.
pub const SKEW: Duration = Duration::from_secs(300);
/// Nonces remembered at most; beyond it the oldest are forgotten first.
pub const NONCE_CACHE: usize = 100_000;

/// The accounts and the nonces already seen.
pub struct Authenticator {
    users: Vec<(String, String)>,
    nonces: Mutex<Nonces>,
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

fn fault(reason: &str) -> Fault {
    Fault::not_authorized(reason)
}

/// Constant-time comparison of two byte strings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Authenticator {
    pub fn new(users: Vec<(String, String)>) -> Self {
        Self {
            users,
            nonces: Mutex::new(Nonces::default()),
        }
    }

    /// Checks the `wsse:Security` header; the authenticated user name, or a
    /// `env:Sender/ter:NotAuthorized` fault.
    pub fn check(&self, security: Option<&Element>, now: SystemTime) -> Result<String, Fault> {
        let token = security
            .and_then(|s| s.child(ns::WSSE, "UsernameToken"))
            .ok_or_else(|| fault("this operation needs a WS-Security UsernameToken"))?;
        if self.users.is_empty() {
            return Err(fault("no ONVIF accounts are configured on this node"));
        }
        let user = token
            .child(ns::WSSE, "Username")
            .map(Element::text)
            .ok_or_else(|| fault("the UsernameToken has no Username"))?;
        let password = token
            .child(ns::WSSE, "Password")
            .ok_or_else(|| fault("the UsernameToken has no Password"))?;
        let kind = password.attr("", "Type").unwrap_or(TEXT_TYPE);
        if !kind.ends_with(DIGEST_TYPE) {
            return Err(fault("only PasswordDigest is accepted"));
        }
        let nonce = token
            .child(ns::WSSE, "Nonce")
            .ok_or_else(|| fault("PasswordDigest needs a Nonce"))?;
        let nonce = B64
            .decode(nonce.text())
            .ok()
            .filter(|n| !n.is_empty() && n.len() <= 128)
            .ok_or_else(|| fault("the Nonce is not Base64 of 1 to 128 bytes"))?;
        let created_raw = token
            .child(ns::WSU, "Created")
            .or_else(|| token.child(ns::WSSE, "Created"))
            .map(|c| c.text.as_str())
            .ok_or_else(|| fault("PasswordDigest needs a Created time"))?;
        let created =
            parse_datetime(created_raw).ok_or_else(|| fault("Created is not an xs:dateTime"))?;
        let skew = match now.duration_since(created) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        if skew > SKEW {
            return Err(fault(
                "Created is more than 5 minutes from this node's clock (see GetSystemDateAndTime)",
            ));
        }
        let given = password.text();
        let ok = self.users.iter().filter(|(u, _)| u == user).any(|(_, p)| {
            same(
                password_digest(&nonce, created_raw, p).as_bytes(),
                given.as_bytes(),
            )
        });
        if !ok {
            return Err(fault("wrong user name or password"));
        }
        let fresh = match self.nonces.lock() {
            Ok(mut n) => n.insert(&nonce, now),
            Err(_) => false,
        };
        if !fresh {
            return Err(fault("this Nonce was used before"));
        }
        Ok(user.to_string())
    }
}

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

    #[test]
    fn digest_rules() {
        let a = Authenticator::new(vec![("admin".into(), "pw".into())]);
        let created = "2026-11-24T22:00:00Z";
        let now = parse_datetime(created).unwrap() + Duration::from_secs(10);
        let good = token("admin", "pw", b"n1", created);
        assert_eq!(a.check(Some(&good), now).unwrap(), "admin");
        let again = a.check(Some(&good), now).unwrap_err();
        assert!(again.reason.contains("used before"), "{again}");
        let wrong = a.check(Some(&token("admin", "nope", b"n2", created)), now);
        assert!(wrong.unwrap_err().reason.contains("wrong"));
        let nobody = a.check(Some(&token("root", "pw", b"n3", created)), now);
        assert!(nobody.unwrap_err().reason.contains("wrong"));
        let late = now + SKEW + Duration::from_secs(1);
        let stale = a.check(Some(&token("admin", "pw", b"n4", created)), late);
        assert!(stale.unwrap_err().reason.contains("5 minutes"));
        let missing = a.check(None, now).unwrap_err();
        assert_eq!(missing.subcodes, ["ter:NotAuthorized"]);
        // A failed attempt does not burn the nonce.
        assert!(
            a.check(Some(&token("admin", "pw", b"n2", created)), now)
                .is_ok()
        );
    }

    #[test]
    fn a_written_token_verifies_once() {
        let now = SystemTime::now();
        let mut o = XmlOut::new();
        write_username_token(&mut o, "push", "s3cret", now);
        let header = xml::parse(o.finish().as_bytes()).unwrap();
        let a = Authenticator::new(vec![("push".into(), "s3cret".into())]);
        assert_eq!(a.check(Some(&header), now).unwrap(), "push");
        assert!(
            a.check(Some(&header), now).is_err(),
            "the nonce is single-use"
        );
        let wrong = Authenticator::new(vec![("push".into(), "other".into())]);
        assert!(wrong.check(Some(&header), now).is_err());
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

//! WS-Security UsernameToken Profile 1.0, `PasswordDigest`: the digest
//! `Base64(SHA-1(nonce + created + password))` and the `wsse:Security` header this node sends
//! to consumers that want authentication. Checking a received token is the API's
//! (`api::onvif::auth`).

use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha1::{Digest, Sha1};

use super::soap::ns;
use super::time::format_datetime;
use super::xml::XmlOut;

/// `Type` of a digest password, after [`TOKEN_PROFILE`].
pub const DIGEST_TYPE: &str = "#PasswordDigest";
/// `Type` of a clear-text password, after [`TOKEN_PROFILE`].
pub const TEXT_TYPE: &str = "#PasswordText";
/// The token profile, before [`DIGEST_TYPE`].
pub const TOKEN_PROFILE: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0";
/// `EncodingType` of the nonce.
const BASE64_BINARY: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-soap-message-security-1.0#Base64Binary";

/// `Base64(SHA-1(nonce + created + password))`.
pub fn password_digest(nonce: &[u8], created: &str, password: &str) -> String {
    let mut h = Sha1::new();
    h.update(nonce);
    h.update(created.as_bytes());
    h.update(password.as_bytes());
    B64.encode(h.finalize())
}

/// Writes a `wsse:Security` header with a `PasswordDigest` UsernameToken for `user`, a fresh
/// random nonce and `now` as `Created`: what this node sends to consumers that want
/// authentication (the `onvif` connector).
pub fn write_username_token(o: &mut XmlOut, user: &str, password: &str, now: SystemTime) {
    let mut nonce = [0u8; 16];
    if getrandom::fill(&mut nonce).is_err() {
        fastrand::fill(&mut nonce);
    }
    let created = format_datetime(now);
    let digest_type = format!("{TOKEN_PROFILE}{DIGEST_TYPE}");
    o.open(
        "wsse:Security",
        &[("xmlns:wsse", ns::WSSE), ("xmlns:wsu", ns::WSU)],
    );
    o.open("wsse:UsernameToken", &[]);
    o.leaf("wsse:Username", user);
    o.leaf_with(
        "wsse:Password",
        &[("Type", &digest_type)],
        &password_digest(&nonce, &created, password),
    );
    o.leaf_with(
        "wsse:Nonce",
        &[("EncodingType", BASE64_BINARY)],
        &B64.encode(nonce),
    );
    o.leaf("wsu:Created", &created);
    o.close("wsse:UsernameToken");
    o.close("wsse:Security");
}

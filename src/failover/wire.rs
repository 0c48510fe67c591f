//! The heartbeat datagram: a versioned, HMAC-SHA256-tagged message.
//!
//! ```text
//! "BG" | version (1 byte) | postcard(Heartbeat) | HMAC-SHA256(key, all before) (32 bytes)
//! ```
//! The tag covers the header, so a datagram from another version or another site key is
//! rejected before its body is decoded. Replay protection (incarnation + sequence per path,
//! and the echo of the receiver's own incarnation) lives in the node, which knows what it has
//! seen.

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;

pub const MAGIC: [u8; 2] = *b"BG";
pub const VERSION: u8 = 3;
const HEADER: usize = 3;
const TAG: usize = 32;
/// Larger datagrams are rejected unread: senders page their heartbeats to fit
/// `node::heartbeat::DATAGRAM_BUDGET` (1,400 bytes, one unfragmented datagram at the default
/// MTU), so anything this size or above is junk. A tight bound keeps a junk flood cheap to
/// drain: the receive loop copies at most this much and never MACs more.
pub const MAX_DATAGRAM: usize = 8_192;

/// What a node says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PeerState {
    /// Just started; waiting to hear its buddies before it starts anything. Its resumed
    /// claims are already listed, so nobody takes what it is about to resume.
    #[default]
    Booting,
    Up,
    /// Shutting down cleanly, or held by an operator's failover: buddies take over at once.
    Leaving,
    /// Some of its own resources failed; they are listed in `failed`.
    Unhealthy,
}

/// State of one claim as its holder reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ClaimState {
    Starting,
    Active,
    /// Its agent is being stopped (or its stop failed and is being retried): it may still
    /// run, so a conflict over it is not resolved yet.
    Stopping,
}

/// Why a claim was made. A takeover assumes the previous owner is gone; if that owner turns
/// out to be alive and active, the two are in conflict. A home claim or a hand-back is
/// planned: the previous owner hands over after the new one is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ClaimKind {
    Home,
    Takeover,
    Handback,
}

/// A server or resource: by its index in the site file when the sender knows the receiver
/// runs the same file (equal digests), by id otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Name {
    Index(u32),
    Id(String),
}

/// Many resources, named the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Names {
    Index(Vec<u32>),
    Id(Vec<String>),
}

impl Names {
    pub fn len(&self) -> usize {
        match self {
            Names::Index(v) => v.len(),
            Names::Id(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Claims at one epoch, state and kind (a takeover's claims share all three).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimGroup {
    pub epoch: u64,
    pub state: ClaimState,
    pub kind: ClaimKind,
    pub resources: Names,
}

/// A resource and an epoch: in `failed`, one its sender could not run at that epoch (its start
/// or monitor failed), so placement leaves it to another buddy; in `newer`, one the receiver
/// claims below an epoch the sender knows of, so the receiver's claim is stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEpoch {
    pub resource: Name,
    pub epoch: u64,
}

/// One of the receiver's claims below an epoch the sender knows of; `holder` holds the resource
/// at that epoch now (starting, or `active`), as far as the sender hears (none: nobody does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireNewer {
    pub resource: Name,
    pub epoch: u64,
    pub holder: Option<Name>,
    pub active: bool,
}

/// The highest epoch round the sender knows among the resources of home server `server`.
/// A node that lost its store (or was away) claims above it, so epochs never go backwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRound {
    pub server: Name,
    pub round: u64,
}

/// What a failover server holds in all (starting or active): the live servers and the
/// cameras. A co-buddy counts it against its capacity, including the live servers the
/// co-buddy does not heartbeat with and whose claims it is therefore not sent.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WireLoad {
    pub homes: Vec<Name>,
    pub cameras: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    Failover,
    Failback,
}

/// An operator hold: `held` after a manual failover of `server`, cleared by a failback. The
/// newest version wins everywhere, so every node ends on the operator's last word, however
/// late it hears it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireHold {
    pub server: Name,
    pub held: bool,
    /// Hybrid logical clock: above every version its origin had seen, and at least the
    /// origin's wall clock in ms when the command arrived.
    pub counter: u64,
    /// The node the command was sent to; breaks ties between equal counters.
    pub origin: String,
}

/// One heartbeat datagram, made for one receiver. What the receiver needs of the sender's
/// claims can take more than one datagram: the claims are then split into `pages` by a hash
/// of each resource's id, and page `page` carries every claim (and failure) of the resources
/// that hash to it, replacing what the receiver knew of them. Every page carries the rest.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Sender's server id.
    pub from: String,
    /// Per boot, strictly increasing across restarts of the sender.
    pub incarnation: u64,
    /// Per datagram, strictly increasing within an incarnation.
    pub seq: u64,
    /// The network path (index into `heartbeat`) this datagram was sent on.
    pub path: u8,
    pub state: PeerState,
    /// First 8 bytes of the SHA-256 of the sender's site. When it equals the receiver's, the
    /// datagram names servers and resources by index.
    pub digest: [u8; 8],
    /// The highest incarnation of the receiver the sender has heard (0: none). It proves the
    /// datagram is not older than the receiver's boot, and tells a receiver whose incarnation
    /// went backwards (an empty store and a clock set back) how far to jump.
    pub echo: u64,
    /// The newest sequence number of that incarnation the sender has heard. A receiver that
    /// restarted from an empty store into an incarnation its peers already saw finds it above
    /// its own sequence numbers.
    pub echo_seq: u64,
    pub page: u8,
    /// 0 means 1.
    pub pages: u8,
    pub claims: Vec<ClaimGroup>,
    pub failed: Vec<WireEpoch>,
    /// The receiver's claims the sender knows a newer epoch for (usually none): a node that
    /// kept recording through a partition learns that consumers were told of another owner,
    /// and renews its claim above it, or stops if that owner still runs it.
    pub newer: Vec<WireNewer>,
    /// The live servers the receiver may claim for that the sender heard within
    /// `failure_timeout`: a server one buddy cannot hear (a one-way cut) but another can is
    /// not down.
    pub hears: Vec<Name>,
    pub rounds: Vec<WireRound>,
    pub holds: Vec<WireHold>,
    /// Failover servers: what they hold in all.
    pub load: Option<WireLoad>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("datagram too short or too long")]
    Size,
    #[error("not a buddygate heartbeat")]
    Magic,
    #[error("unsupported heartbeat version {0}")]
    Version(u8),
    #[error("bad HMAC tag")]
    Tag,
    #[error("malformed heartbeat body")]
    Body,
}

impl WireError {
    /// Metric label.
    pub fn reason(self) -> &'static str {
        match self {
            WireError::Size => "size",
            WireError::Magic => "magic",
            WireError::Version(_) => "version",
            WireError::Tag => "hmac",
            WireError::Body => "malformed",
        }
    }
}

/// The site's heartbeat key, ready to tag and verify.
#[derive(Clone)]
pub struct Key(Hmac<Sha256>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl Key {
    pub fn new(secret: &[u8]) -> Self {
        Self(Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length"))
    }
}

pub fn encode(key: &Key, hb: &Heartbeat) -> Vec<u8> {
    let mut buf = Vec::with_capacity(128 + hb.claims.len() * 24);
    buf.extend_from_slice(&MAGIC);
    buf.push(VERSION);
    let mut buf = postcard::to_extend(hb, buf).expect("heartbeat serializes");
    let mut mac = key.0.clone();
    mac.update(&buf);
    buf.extend_from_slice(&mac.finalize().into_bytes());
    buf
}

/// The size of `hb` once encoded and tagged.
pub fn encoded_len(hb: &Heartbeat) -> usize {
    HEADER + postcard::experimental::serialized_size(hb).expect("heartbeat serializes") + TAG
}

pub fn decode(key: &Key, bytes: &[u8]) -> Result<Heartbeat, WireError> {
    if bytes.len() < HEADER + TAG || bytes.len() > MAX_DATAGRAM {
        return Err(WireError::Size);
    }
    if bytes[..2] != MAGIC {
        return Err(WireError::Magic);
    }
    if bytes[2] != VERSION {
        return Err(WireError::Version(bytes[2]));
    }
    let (signed, tag) = bytes.split_at(bytes.len() - TAG);
    let mut mac = key.0.clone();
    mac.update(signed);
    mac.verify_slice(tag).map_err(|_| WireError::Tag)?;
    let (hb, rest) =
        postcard::take_from_bytes::<Heartbeat>(&signed[HEADER..]).map_err(|_| WireError::Body)?;
    if !rest.is_empty() {
        return Err(WireError::Body);
    }
    Ok(hb)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Heartbeat {
        Heartbeat {
            from: "live-1".into(),
            incarnation: 7,
            seq: 42,
            path: 1,
            state: PeerState::Up,
            digest: [1, 2, 3, 4, 5, 6, 7, 8],
            echo: 5,
            echo_seq: 9,
            page: 1,
            pages: 2,
            claims: vec![ClaimGroup {
                epoch: 3,
                state: ClaimState::Active,
                kind: ClaimKind::Home,
                resources: Names::Id(vec!["cam-001".into()]),
            }],
            failed: vec![WireEpoch {
                resource: Name::Index(2),
                epoch: 298,
            }],
            newer: vec![WireNewer {
                resource: Name::Id("cam-003".into()),
                epoch: 399,
                holder: Some(Name::Index(0)),
                active: true,
            }],
            hears: vec![Name::Index(0)],
            rounds: vec![WireRound {
                server: Name::Index(0),
                round: 3,
            }],
            holds: vec![WireHold {
                server: Name::Id("live-1".into()),
                held: true,
                counter: 1_700_000_000_000,
                origin: "fo-1".into(),
            }],
            load: Some(WireLoad {
                homes: vec![Name::Index(3)],
                cameras: 50,
            }),
        }
    }

    #[test]
    fn encoded_len_is_the_length_of_the_datagram() {
        let key = Key::new(b"secret");
        assert_eq!(encoded_len(&sample()), encode(&key, &sample()).len());
    }

    #[test]
    fn round_trip() {
        let key = Key::new(b"secret");
        let bytes = encode(&key, &sample());
        assert_eq!(&bytes[..3], b"BG\x03");
        assert_eq!(decode(&key, &bytes), Ok(sample()));
    }

    #[test]
    fn wrong_key_is_rejected() {
        let bytes = encode(&Key::new(b"secret"), &sample());
        assert_eq!(decode(&Key::new(b"other"), &bytes), Err(WireError::Tag));
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let key = Key::new(b"secret");
        let bytes = encode(&key, &sample());
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(decode(&key, &b).is_err(), "bit {i} flipped was accepted");
        }
    }

    #[test]
    fn other_versions_and_garbage_are_rejected() {
        let key = Key::new(b"secret");
        let mut bytes = encode(&key, &sample());
        bytes[2] = 2;
        assert_eq!(decode(&key, &bytes), Err(WireError::Version(2)));
        assert_eq!(decode(&key, b"hello"), Err(WireError::Size));
        assert_eq!(decode(&key, &[0u8; 64]), Err(WireError::Magic));
    }

    #[test]
    fn a_valid_tag_over_a_bad_body_is_malformed() {
        let key = Key::new(b"secret");
        let mut signed = b"BG\x03\xff\xff\xff".to_vec();
        let mut mac = key.0.clone();
        mac.update(&signed);
        signed.extend_from_slice(&mac.finalize().into_bytes());
        assert_eq!(decode(&key, &signed), Err(WireError::Body));
    }
}

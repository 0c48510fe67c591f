//! One connection to the broker, and what the connector tracks of it: the publishes queued,
//! in flight and acknowledged.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use tokio::sync::mpsc;

use super::link::{Link, Note};

/// What a queued publish was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sent {
    Event(u64),
    /// A dead letter published again (a replay).
    Replay(u64),
    /// The same event under its ONVIF topic: acknowledged with nothing to account.
    Copy,
    State,
    Death,
}

/// One connection to the broker.
pub(super) struct Session {
    pub(super) client: Link,
    pub(super) rx: mpsc::Receiver<Note>,
    pub(super) poller: tokio::task::JoinHandle<()>,
    /// Handed to the client, not yet reported written by the event loop (in order).
    pub(super) queued: VecDeque<Sent>,
    /// Written, awaiting a PUBACK, by packet id.
    pub(super) inflight: HashMap<u16, Sent>,
    /// Events read from the outbox on this connection, by seq: whether acknowledged (or
    /// skipped by the filter).
    pub(super) pending: BTreeMap<u64, bool>,
    /// The last seq read from the outbox.
    pub(super) read: u64,
    /// Dead letters published again on this connection, not yet acknowledged.
    pub(super) replaying: BTreeSet<u64>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl Session {
    pub(super) fn new(
        client: Link,
        rx: mpsc::Receiver<Note>,
        poller: tokio::task::JoinHandle<()>,
    ) -> Self {
        Self {
            client,
            rx,
            poller,
            queued: VecDeque::new(),
            inflight: HashMap::new(),
            pending: BTreeMap::new(),
            read: 0,
            replaying: BTreeSet::new(),
        }
    }

    /// Publishes queued or written, not yet acknowledged.
    pub(super) fn outstanding(&self) -> usize {
        self.queued.len() + self.inflight.len()
    }
}

/// Why a connection ended.
pub(super) enum End {
    Cancelled,
    Lost(String),
}

//! The network side of a node: a receive task per heartbeat path, which reads, timestamps and
//! authenticates every datagram before anything is queued (junk costs a MAC check, never a
//! queue slot, and the queue is bounded in bytes), sending, and witness probes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::failover::wire::{self, Heartbeat, Key, MAX_DATAGRAM};
use crate::view::Metrics;

/// Heartbeats read but not yet handled, at most (bytes on the wire).
pub(super) const MAX_QUEUED_BYTES: usize = 4 << 20;

/// An authentic heartbeat, with when it was read.
pub(super) struct Received {
    pub path: usize,
    pub heartbeat: Box<Heartbeat>,
    /// On the core's clock (since `origin`).
    pub at: Duration,
    pub size: usize,
}

/// What the receive tasks share.
#[derive(Clone)]
pub(super) struct Receiver {
    pub key: Key,
    pub origin: Instant,
    pub tx: mpsc::Sender<Received>,
    /// Bytes queued now.
    pub queued: Arc<AtomicUsize>,
    pub metrics: Arc<Metrics>,
    pub cancel: CancellationToken,
}

impl Receiver {
    pub(super) async fn run(self, path: usize, sock: Arc<UdpSocket>) {
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            let received = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = sock.recv_from(&mut buf) => r,
            };
            match received {
                Ok((n, _from)) => {
                    let at = Instant::now().saturating_duration_since(self.origin);
                    self.metrics
                        .datagrams_received
                        .fetch_add(1, Ordering::Relaxed);
                    self.handle(path, &buf[..n], at);
                }
                // ICMP errors surface on the next recv on some systems; keep listening.
                Err(e) => debug!(path, error = %e, "Heartbeat receive error."),
            }
        }
    }

    fn handle(&self, path: usize, bytes: &[u8], at: Duration) {
        let heartbeat = match wire::decode(&self.key, bytes) {
            Ok(hb) => Box::new(hb),
            Err(e) => return self.metrics.wire_reject(e.reason()),
        };
        let size = bytes.len();
        if self.queued.fetch_add(size, Ordering::Relaxed) + size > MAX_QUEUED_BYTES {
            self.queued.fetch_sub(size, Ordering::Relaxed);
            return self.metrics.wire_reject("queue_full");
        }
        let r = Received {
            path,
            heartbeat,
            at,
            size,
        };
        if self.tx.try_send(r).is_err() {
            self.queued.fetch_sub(size, Ordering::Relaxed);
            self.metrics.wire_reject("queue_full");
        }
    }
}

/// A witness answers if a TCP connection to it opens within one heartbeat interval.
pub(super) async fn witness_loop(
    index: usize,
    addr: SocketAddr,
    every: Duration,
    tx: mpsc::Sender<(usize, bool)>,
    cancel: CancellationToken,
) {
    let mut last = None;
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ok = matches!(
            tokio::time::timeout(every, tokio::net::TcpStream::connect(addr)).await,
            Ok(Ok(_))
        );
        if last != Some(ok) {
            if last.is_some() {
                info!(witness = %addr, reachable = ok, "Witness reachability changed.");
            }
            last = Some(ok);
            if tx.send((index, ok)).await.is_err() {
                return;
            }
        }
    }
}

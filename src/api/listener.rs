//! The API's listener: accepts connections, admits each only under the connection caps,
//! speaks TLS when configured, and serves HTTP/1.1 on it with hyper, with the limits no
//! unauthenticated client may exceed:
//!
//! - at most [`MAX_CONNECTIONS`] connections at once (fewer when the file-descriptor limit
//!   leaves less after its reserve, see [`crate::fds`]), and [`MAX_CONNECTIONS_PER_CLIENT`]
//!   from one client address (one IPv6 /64); when the node is full, a new connection takes
//!   the place of the one idle longest (see [`Connections`]); a connection over a cap is
//!   closed at once;
//! - the TLS handshake within [`HANDSHAKE_TIMEOUT`];
//! - a request's headers within [`HEADER_TIMEOUT`] of the connection becoming idle (a
//!   connection that sends nothing, or half a request, is closed), in at most
//!   [`MAX_HEADER_BYTES`] and [`MAX_HEADERS`] headers (431 beyond);
//! - a client that stops reading what it is sent is cut after [`WRITE_STALL`].
//!
//! What a request may then do (bodies, timeouts, authorization) is decided by the router's
//! layers (`super::app`).
//!
//! (Over ~500 lines with its tests.)

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::guard::{LocalAddr, Refusals};
use crate::config::canonical_ip;
use crate::view::Metrics;

/// Connections served at once at most.
pub const MAX_CONNECTIONS: usize = 512;
/// Connections from one client address (an IPv4 address, an IPv6 /64) at once at most.
pub const MAX_CONNECTIONS_PER_CLIENT: usize = 64;
/// A request's headers must arrive within this once the connection waits for them (also the
/// longest a kept-alive connection stays idle).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A TLS handshake must be done within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The request line and headers fit in this (hyper's read buffer; 8 KiB at least).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Headers per request at most.
pub const MAX_HEADERS: usize = 64;
/// A response that cannot be written for this long (the client does not read) ends the
/// connection.
pub const WRITE_STALL: Duration = Duration::from_secs(30);
/// How long open connections get to finish on shutdown.
const DRAIN: Duration = Duration::from_secs(5);
/// The wait after a failed `accept` (out of descriptors: let some close first).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The connections open now, in all and per client. When all the node's places are taken, a
/// new connection takes the place of the one that has been idle longest (no request in
/// flight: waiting for its first request or its next one), which is closed: connections that
/// send nothing, or half a request, cannot keep anyone out. Only when every connection has a
/// request in flight is a new one refused.
pub(crate) struct Connections {
    max: usize,
    per_client: usize,
    open: Mutex<Open>,
    /// Where the number open is shown (`buddygate_api_connections`).
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Open {
    /// By id: oldest first.
    conns: BTreeMap<u64, Arc<Conn>>,
    per_client: HashMap<IpAddr, usize>,
    next_id: u64,
}

/// One admitted connection, as [`Connections`] sees it.
pub(crate) struct Conn {
    id: u64,
    key: IpAddr,
    /// Requests whose answer is not written yet (an event stream's until it ends).
    in_flight: AtomicUsize,
    /// Cancelled to close the connection for a newer one.
    evicted: CancellationToken,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// All [`MAX_CONNECTIONS`] (or the descriptor budget) are in use, each with a request in
    /// flight.
    Node,
    /// This client holds [`MAX_CONNECTIONS_PER_CLIENT`].
    Client,
}

impl Connections {
    pub(crate) fn new(max: usize, per_client: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            max,
            per_client,
            open: Mutex::new(Open::default()),
            metrics,
        })
    }

    /// Admits one more connection from `client` (closing the longest-idle one if the node is
    /// full), or says which cap it hits.
    pub(crate) fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Admitted, Full> {
        let key = client_key(client);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.per_client.get(&key).copied().unwrap_or(0) >= self.per_client {
            return Err(Full::Client);
        }
        if open.conns.len() >= self.max {
            let idle = open
                .conns
                .values()
                .find(|c| c.in_flight.load(Ordering::Acquire) == 0)
                .cloned()
                .ok_or(Full::Node)?;
            open.remove(&idle);
            idle.evicted.cancel();
            self.metrics.api_refused.add("evicted");
        }
        let conn = Arc::new(Conn {
            id: open.next_id,
            key,
            in_flight: AtomicUsize::new(0),
            evicted: CancellationToken::new(),
        });
        open.next_id += 1;
        open.conns.insert(conn.id, conn.clone());
        *open.per_client.entry(key).or_insert(0) += 1;
        self.metrics
            .api_connections
            .store(open.conns.len() as u64, Ordering::Relaxed);
        Ok(Admitted {
            conns: self.clone(),
            conn,
        })
    }

    /// Connections open now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .conns
            .len()
    }
}

impl Open {
    /// Forgets `conn` (once: an evicted connection is forgotten when evicted).
    fn remove(&mut self, conn: &Conn) {
        if self.conns.remove(&conn.id).is_none() {
            return;
        }
        if let Some(n) = self.per_client.get_mut(&conn.key) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&conn.key);
            }
        }
    }
}

/// An admitted connection; it holds its place until dropped.
pub(crate) struct Admitted {
    conns: Arc<Connections>,
    conn: Arc<Conn>,
}

impl Admitted {
    /// The connection is closed to make room for a newer one.
    pub(crate) async fn evicted(&self) {
        self.conn.evicted.cancelled().await;
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self
            .conns
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.remove(&self.conn);
        self.conns
            .metrics
            .api_connections
            .store(open.conns.len() as u64, Ordering::Relaxed);
    }
}

/// A request of a connection, in flight from its head being read until its answer is written
/// (or the connection is dropped); meanwhile the connection is not idle.
pub(crate) struct InFlight(Arc<Conn>);

impl InFlight {
    fn new(conn: &Arc<Conn>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(conn.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request [`InFlight`] until it is written.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The address a client is counted under: its IPv4 address, or the /64 of its IPv6 address
/// (one host usually holds a whole /64).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match canonical_ip(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

/// What [`serve`] needs besides the listener.
pub(crate) struct Listener {
    pub(crate) app: Router,
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) conns: Arc<Connections>,
    pub(crate) refusals: Arc<Refusals>,
}

/// Accepts and serves connections until `cancel`; then lets open ones finish for up to
/// [`DRAIN`].
pub(crate) async fn serve(
    listener: TcpListener,
    l: Listener,
    cancel: CancellationToken,
) -> io::Result<()> {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                l.refusals.accept_failed(&e);
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
                continue;
            }
        };
        let admitted = match l.conns.admit(peer.ip()) {
            Ok(a) => a,
            Err(full) => {
                l.refusals.connection(peer, full);
                // Closed at once, and reset rather than left in TIME_WAIT.
                let _ = stream.set_zero_linger();
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = l.app.clone();
        let tls = l.tls.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            tokio::select! {
                () = connection(stream, peer, app, tls, admitted.conn.clone(), cancel) => {}
                // Idle, and its place given to a newer connection: closed.
                () = admitted.evicted() => {}
            }
            drop(admitted);
        });
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// One connection: the TLS handshake if any, then HTTP/1.1 until either side closes it.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    tls: Option<TlsAcceptor>,
    conn: Arc<Conn>,
    cancel: CancellationToken,
) {
    // Nothing is allocated for a connection (TLS state, hyper's buffers) before its first
    // byte: one that sends nothing costs a socket and a task, and is closed at the timeout;
    // one closed without sending anything is dropped as it is.
    let mut first = [0u8; 1];
    let sent = tokio::time::timeout(HEADER_TIMEOUT, stream.peek(&mut first));
    match tokio::select! {
        _ = cancel.cancelled() => return,
        r = sent => r,
    } {
        Ok(Ok(n)) if n > 0 => {}
        Ok(_) => return,
        Err(_) => {
            tracing::debug!(client = %peer, "Connection closed: nothing sent.");
            return;
        }
    }
    let local = stream.local_addr().ok();
    let at = Peer { peer, local, conn };
    // Boxed: the waiting above is all an idle connection's task holds in memory.
    Box::pin(serve_connection(stream, at, app, tls, cancel)).await;
}

/// The TLS handshake if any, then HTTP/1.1.
async fn serve_connection(
    stream: TcpStream,
    at: Peer,
    app: Router,
    tls: Option<TlsAcceptor>,
    cancel: CancellationToken,
) {
    let peer = at.peer;
    match tls {
        None => http(Stalls::new(stream), at, app, cancel).await,
        Some(acceptor) => {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            let stream = tokio::select! {
                _ = cancel.cancelled() => return,
                s = handshake => s,
            };
            match stream {
                Ok(Ok(s)) => http(Stalls::new(s), at, app, cancel).await,
                Ok(Err(e)) => tracing::debug!(client = %peer, error = %e, "TLS handshake failed."),
                Err(_) => tracing::debug!(client = %peer, "TLS handshake timed out."),
            }
        }
    }
}

/// Who a connection is with, and its place in [`Connections`].
struct Peer {
    peer: SocketAddr,
    local: Option<SocketAddr>,
    conn: Arc<Conn>,
}

async fn http<IO>(io: Stalls<IO>, at: Peer, app: Router, cancel: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Peer { peer, local, conn } = at;
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let in_flight = InFlight::new(&conn);
        req.extensions_mut().insert(ConnectInfo(peer));
        if let Some(local) = local {
            req.extensions_mut().insert(LocalAddr(local));
        }
        let mut app = app.clone();
        async move {
            let resp = tower::Service::call(&mut app, req.map(Body::new)).await;
            resp.map(|r| {
                r.map(|body| Tracked {
                    body,
                    _in_flight: in_flight,
                })
            })
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let served = tokio::select! {
        r = conn.as_mut() => r,
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(DRAIN, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = served {
        tracing::debug!(client = %peer, error = %e, "API connection ended with an error.");
    }
}

/// A connection whose writes may not stall for more than [`WRITE_STALL`]: a client that stops
/// reading its answers (or its event stream) is cut off rather than holding the connection.
pub(crate) struct Stalls<IO> {
    io: IO,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> Stalls<IO> {
    fn new(io: IO) -> Self {
        Self { io, stalled: None }
    }

    /// After a write that could not go on: arms the stall timer, and fails once it fired.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Stalls<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Stalls<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Pending => self.pending(cx),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.pending(cx),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Pending => self.pending(cx),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The API's TLS configuration (`[api] tls`): its certificate chain and key, and with
/// `client_ca` a client certificate signed by that CA required of every client. HTTP/1.1 only.
pub fn tls_config(tls: &crate::config::ApiTls) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let pem = read(&tls.cert)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", tls.cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", tls.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&tls.key)?)
        .map_err(|e| format!("{}: no PEM private key in it: {e}", tls.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&read(ca)?) {
                let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("{} and {}: {e}", tls.cert.display(), tls.key.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_node_and_per_client() {
        let metrics = Arc::new(Metrics::default());
        let conns = Connections::new(3, 2, metrics.clone());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        let a1 = conns.admit(a).unwrap();
        let a2 = conns.admit(a).unwrap();
        assert_eq!(conns.admit(a).err(), Some(Full::Client));
        let b1 = conns.admit(b).unwrap();
        // Full: a request in flight on every connection but a1, which gives way.
        let _busy = [InFlight::new(&a2.conn), InFlight::new(&b1.conn)];
        let c1 = conns.admit("10.0.0.9".parse().unwrap()).unwrap();
        assert!(a1.conn.evicted.is_cancelled());
        assert!(!a2.conn.evicted.is_cancelled());
        assert_eq!(metrics.api_refused.get("evicted"), 1);
        assert_eq!(conns.open(), 3);
        // Now none is idle but c1; then none at all: refused.
        let _busy_too = InFlight::new(&c1.conn);
        assert_eq!(
            conns.admit("10.0.0.8".parse().unwrap()).err(),
            Some(Full::Node)
        );
        // The evicted connection's end forgets nothing twice.
        drop(a1);
        assert_eq!(conns.open(), 3);
        drop(a2);
        assert_eq!(conns.open(), 2);
        let _a3 = conns.admit(a).unwrap();
        assert_eq!(metrics.api_connections.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn ipv6_clients_count_by_64() {
        let x: IpAddr = "fd00:1:2:3:aaaa::1".parse().unwrap();
        let y: IpAddr = "fd00:1:2:3:bbbb::2".parse().unwrap();
        assert_eq!(client_key(x), client_key(y));
        assert_eq!(
            client_key("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }
}

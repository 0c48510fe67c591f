//! The node's HTTP API (DESIGN section 1, "REST API"): JSON under `/api/v1`, the event log as
//! JSON pages and server-sent events, Prometheus metrics, health, and the dashboard at `/`.
//!
//! - [`views`]: `GET /site` and `GET /resources`, rendered from the runtime's latest
//!   [`Snapshot`].
//! - [`history`]: `GET /resources/{id}/history`, who served a resource when (from the store).
//! - [`events`]: `GET /events?after=&limit=` from the store, `GET /events/stream` (SSE): replay
//!   from the store, then live from the broadcast channel, catching up from the store when a
//!   subscriber lags.
//! - [`mutations`]: manual failover, failback and connector replay; connector status.
//! - [`metrics`]: the Prometheus text exposition.
//! - [`listener`]: accepting connections under the caps, TLS, hyper with header timeouts.
//! - [`guard`]: the `Host` check, bearer tokens for reads and mutations, refusals counted and
//!   logged at a bounded rate.
//! - [`onvif`]: ONVIF device and event services over SOAP 1.2 (`/onvif/...`); their errors are
//!   SOAP faults, not JSON.
//! - `dashboard.html`: the page at `/`, one self-contained file.
//!
//! Handlers only read the snapshot, the store and the counters, and send [`Command`]s: the
//! failover core stays in its own task. Every error, including the router's own (unknown
//! route, wrong method, a body or query that does not parse), is `{"error": "..."}`.
//!
//! # Limits
//! Every limit is a layer on the router or a setting of the listener, never a check inside a
//! handler (ONVIF's SOAP bodies aside: their errors must be SOAP faults):
//! - a request's `Host` names this node (421 otherwise), then
//! - reads need the API or read token and mutations the API token, decided from the headers
//!   before any body is read (401/403);
//! - bodies: none on reads, [`MAX_MUTATION_BODY`] on mutations, [`onvif::MAX_BODY`] on
//!   ONVIF (413 beyond); each chunk of a body must come within [`BODY_TIMEOUT`], and a whole
//!   request within [`REQUEST_TIMEOUT`] ([`ONVIF_REQUEST_TIMEOUT`] for ONVIF's long polls)
//!   (408);
//! - at most [`events::MAX_STREAMS`] event streams at once (503 beyond);
//! - connections, headers and idle time: [`listener`].
pub mod events;
pub mod guard;
pub mod history;
pub mod listener;
pub mod metrics;
pub mod mutations;
pub mod onvif;
pub mod views;

pub use guard::Access;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::connectors::ConnectorHandle;
use crate::store::StoredEvent;
use crate::view::{Command, Metrics, Snapshot};

/// The handles the API gets from the runtime: the node's view, its events, the command
/// channel back to the core, its counters and connectors.
#[derive(Clone)]
pub struct Shared {
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    /// Every event as it is stored (the SSE stream subscribes here).
    pub events: broadcast::Sender<Arc<StoredEvent>>,
    pub commands: mpsc::Sender<Command>,
    /// The node's data dir: open a `store::Reader` on it for `GET /events`.
    pub data_dir: PathBuf,
    /// Bearer token for mutations; `None` refuses every mutation.
    pub token: Option<String>,
    /// ONVIF WS-UsernameToken accounts, `(user, password)`, resolved from the site's
    /// `api.onvif_users`; empty refuses every ONVIF operation but `GetSystemDateAndTime`.
    pub onvif_users: Vec<(String, String)>,
    pub metrics: Arc<Metrics>,
    /// The node's connectors (webhook, ...), for status, metrics and replay.
    pub connectors: Arc<Vec<ConnectorHandle>>,
    /// Read access, host names, ONVIF push consumers and TLS (`[api]`).
    pub access: Access,
}

/// What every handler gets: the runtime's handles, and the token that ends open event streams
/// on shutdown.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) shared: Shared,
    pub(crate) cancel: CancellationToken,
    pub(crate) onvif: Arc<onvif::Onvif>,
    pub(crate) refusals: Arc<guard::Refusals>,
    pub(crate) hosts: Arc<guard::Hosts>,
    /// One permit per event stream that may be open.
    pub(crate) streams: Arc<tokio::sync::Semaphore>,
}

/// The largest body of a mutation (an optional JSON object, reserved for options).
pub const MAX_MUTATION_BODY: usize = 1024;
/// Each chunk of a request body must arrive within this of the one before.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// A REST request must be read and answered within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// An ONVIF request must be read and answered within this (`PullMessages` waits up to 60 s).
pub const ONVIF_REQUEST_TIMEOUT: Duration = Duration::from_secs(90);

/// The API's routes over `shared`. Event streams run until the client leaves or the event
/// channel closes; use [`serve`] to also end them on shutdown.
pub fn router(shared: Shared) -> Router {
    let refusals = Arc::new(guard::Refusals::new(shared.metrics.clone()));
    app(shared, CancellationToken::new(), refusals)
}

/// Serves the API on `listener` until `cancel`, then shuts down gracefully: open event streams
/// end, requests in flight finish. HTTPS when `shared.access.tls` is set.
pub async fn serve(
    listener: TcpListener,
    shared: Shared,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let limit = crate::fds::soft_limit();
    let max = crate::fds::connection_budget(limit, listener::MAX_CONNECTIONS);
    if let Ok(addr) = listener.local_addr() {
        let scheme = if shared.access.tls.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!(%addr, scheme, max_connections = max, "API listening.");
    }
    let refusals = Arc::new(guard::Refusals::new(shared.metrics.clone()));
    let tls = shared
        .access
        .tls
        .clone()
        .map(tokio_rustls::TlsAcceptor::from);
    let conns = listener::Connections::new(
        max,
        listener::MAX_CONNECTIONS_PER_CLIENT,
        shared.metrics.clone(),
    );
    let app = app(shared, cancel.clone(), refusals.clone());
    listener::serve(
        listener,
        listener::Listener {
            app,
            tls,
            conns,
            refusals,
        },
        cancel,
    )
    .await
}

fn app(shared: Shared, cancel: CancellationToken, refusals: Arc<guard::Refusals>) -> Router {
    use axum::middleware::{from_fn_with_state, map_response_with_state};
    use tower_http::limit::RequestBodyLimitLayer;
    use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

    let onvif = Arc::new(onvif::Onvif::new(shared.clone(), cancel.clone()));
    let hosts = {
        let snap = shared.snapshot.borrow();
        Arc::new(guard::Hosts::of(
            &snap.site,
            snap.node,
            &shared.access.hosts,
        ))
    };
    let state = AppState {
        shared,
        cancel,
        onvif,
        refusals,
        hosts,
        streams: Arc::new(tokio::sync::Semaphore::new(events::MAX_STREAMS)),
    };
    let timeout = |t| TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, t);
    let open = Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/api/v1/healthz", get(healthz))
        .layer(RequestBodyLimitLayer::new(0));
    let reads = Router::new()
        .route("/metrics", get(metrics::handler))
        .route("/api/v1/metrics", get(metrics::handler))
        .route("/api/v1/site", get(views::site))
        .route("/api/v1/resources", get(views::resources))
        .route("/api/v1/resources/{id}/history", get(history::handler))
        .route("/api/v1/events", get(events::page))
        .route("/api/v1/events/stream", get(events::stream))
        .route("/api/v1/connectors", get(mutations::connectors))
        .layer(RequestBodyLimitLayer::new(0))
        .route_layer(from_fn_with_state(state.clone(), guard::require_read));
    let mutations = Router::new()
        .route("/api/v1/servers/{id}/failover", post(mutations::failover))
        .route("/api/v1/servers/{id}/failback", post(mutations::failback))
        .route("/api/v1/connectors/{name}/replay", post(mutations::replay))
        .layer(RequestBodyLimitLayer::new(MAX_MUTATION_BODY))
        .route_layer(from_fn_with_state(state.clone(), guard::require_mutation));
    Router::new()
        .merge(open)
        .merge(reads)
        .merge(mutations)
        .layer(timeout(REQUEST_TIMEOUT))
        .merge(onvif::routes().layer(timeout(ONVIF_REQUEST_TIMEOUT)))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(RequestBodyTimeoutLayer::new(BODY_TIMEOUT))
        .layer(from_fn_with_state(state.clone(), guard::check_host))
        .layer(map_response_with_state(state.clone(), json_errors))
        .with_state(state)
}

/// An error answered as `{"error": message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// `WWW-Authenticate` challenge, for 401.
    challenge: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            challenge: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub(crate) fn unauthorized(message: impl Into<String>, challenge: &'static str) -> Self {
        Self::with_challenge(StatusCode::UNAUTHORIZED, message, challenge)
    }

    pub(crate) fn with_challenge(
        status: StatusCode,
        message: impl Into<String>,
        challenge: &'static str,
    ) -> Self {
        Self {
            challenge: Some(challenge),
            ..Self::new(status, message)
        }
    }

    /// The error of a request body that could not be read: too large (413), too slow (408),
    /// or otherwise broken (400).
    pub(crate) fn body(rejection: &axum::extract::rejection::BytesRejection) -> Self {
        if is_timeout(rejection) {
            return Self::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive in time ({} s between chunks at most)",
                    BODY_TIMEOUT.as_secs()
                ),
            );
        }
        Self::new(rejection.status(), rejection.body_text())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(json!({ "error": self.message }))).into_response();
        if let Some(challenge) = self.challenge {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        resp
    }
}

/// A JSON body built by hand (the event log embeds stored JSON as is).
pub(crate) fn raw_json(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body),
    )
        .into_response()
}

const DASHBOARD: &str = include_str!("dashboard.html");

/// The page only talks to this origin; the policy makes sure it stays that way.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, DASHBOARD_CSP),
        ],
        DASHBOARD,
    )
        .into_response()
}

/// `GET /healthz`: `200 {"status":"ok",...}`, or `503 {"status":"storage_failed",...}` while
/// the node's store takes no writes (a full disk: the node says it is leaving, its buddies
/// serve its resources, it comes back by itself), with the reason.
async fn healthz(State(state): State<AppState>) -> Response {
    let snap = state.shared.snapshot.borrow().clone();
    let node = snap
        .site
        .servers
        .get(usize::from(snap.node.0))
        .map(|s| s.id.as_str())
        .unwrap_or("");
    let store = &state.shared.metrics.store;
    match store.failure() {
        None => axum::Json(json!({
            "status": "ok", "node": node, "booting": snap.booting, "storage": {"ok": true},
        }))
        .into_response(),
        Some(f) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "status": "storage_failed",
                "node": node,
                "booting": snap.booting,
                "storage": {
                    "ok": false,
                    "error": f.reason,
                    "since": crate::cloudevents::rfc3339(f.since),
                    "events_waiting": store.events_waiting.load(std::sync::atomic::Ordering::Relaxed),
                },
            })),
        )
            .into_response(),
    }
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} not allowed for {}", uri.path()),
    )
}

/// Whether a refusal with `status` also ends the connection (`Connection: close`): a client
/// refused for its credentials, its `Host`, a body too large or too slow keeps no connection
/// (and no buffers) open on this node; a legitimate one simply connects again.
pub(crate) fn closes(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::UNAUTHORIZED
            | StatusCode::FORBIDDEN
            | StatusCode::REQUEST_TIMEOUT
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::MISDIRECTED_REQUEST
    )
}

/// Whether a body error (or one of its sources) is the body timeout.
pub(crate) fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        next = err.source();
    }
    false
}

/// Turns every error response that is not JSON yet (extractor rejections, body limits) into
/// `{"error": ...}`, keeping its status and headers; counts refusals for a body too large or a
/// request too slow. SOAP faults stay as they are.
async fn json_errors(State(state): State<AppState>, mut resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    if closes(status) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            state
                .refusals
                .refuse("body_too_large", None, "request body too large");
        }
        StatusCode::REQUEST_TIMEOUT => {
            state.refusals.refuse("timeout", None, "request too slow");
        }
        _ => {}
    }
    let keep = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.starts_with("application/json") || v.starts_with("application/soap+xml")
        });
    if keep {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if !text.is_empty() {
        text
    } else {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    };
    let body = json!({ "error": message }).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

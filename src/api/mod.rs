//! The node's HTTP API (DESIGN section 1, "REST API"): JSON under `/api/v1`, the event log as
//! JSON pages and server-sent events, Prometheus metrics, health, and the dashboard at `/`.
//!
//! - [`views`]: `GET /site` and `GET /resources`, rendered from the runtime's latest
//!   [`Snapshot`].
//! - [`history`]: `GET /resources/{id}/history`, who served a resource when (from the store).
//! - [`events`]: `GET /events?after=&limit=` from the store, `GET /events/stream` (SSE): replay
//!   from the store, then live from the broadcast channel, catching up from the store when a
//!   subscriber lags.
//! - [`mutations`]: bearer-authenticated manual failover, failback and connector replay.
//! - [`metrics`]: the Prometheus text exposition.
//! - [`onvif`]: ONVIF device and event services over SOAP 1.2 (`/onvif/...`); their errors are
//!   SOAP faults, not JSON.
//! - `dashboard.html`: the page at `/`, one self-contained file.
//!
//! Handlers only read the snapshot, the store and the counters, and send [`Command`]s: the
//! failover core stays in its own task. Every error, including the router's own (unknown
//! route, wrong method, a body or query that does not parse), is `{"error": "..."}`.
//!
pub mod events;
pub mod history;
pub mod metrics;
pub mod mutations;
pub mod onvif;
pub mod views;

use std::path::PathBuf;
use std::sync::Arc;

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
}

/// What every handler gets: the runtime's handles, and the token that ends open event streams
/// on shutdown.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) shared: Shared,
    pub(crate) cancel: CancellationToken,
    pub(crate) onvif: std::sync::Arc<onvif::Onvif>,
}

/// The API's routes over `shared`. Event streams run until the client leaves or the event
/// channel closes; use [`serve`] to also end them on shutdown.
pub fn router(shared: Shared) -> Router {
    app(shared, CancellationToken::new())
}

/// Serves the API on `listener` until `cancel`, then shuts down gracefully: open event streams
/// end, requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    shared: Shared,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "API listening.");
    }
    let app = app(shared, cancel.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
}

fn app(shared: Shared, cancel: CancellationToken) -> Router {
    let onvif = std::sync::Arc::new(onvif::Onvif::new(shared.clone(), cancel.clone()));
    let state = AppState {
        shared,
        cancel,
        onvif,
    };
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/api/v1/healthz", get(healthz))
        .route("/metrics", get(metrics::handler))
        .route("/api/v1/metrics", get(metrics::handler))
        .route("/api/v1/site", get(views::site))
        .route("/api/v1/resources", get(views::resources))
        .route("/api/v1/resources/{id}/history", get(history::handler))
        .route("/api/v1/events", get(events::page))
        .route("/api/v1/events/stream", get(events::stream))
        .route("/api/v1/servers/{id}/failover", post(mutations::failover))
        .route("/api/v1/servers/{id}/failback", post(mutations::failback))
        .route("/api/v1/connectors", get(mutations::connectors))
        .route("/api/v1/connectors/{name}/replay", post(mutations::replay))
        .merge(onvif::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(json_errors))
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
        Self {
            challenge: Some(challenge),
            ..Self::new(StatusCode::UNAUTHORIZED, message)
        }
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

async fn healthz(State(state): State<AppState>) -> Response {
    let snap = state.shared.snapshot.borrow().clone();
    let node = snap
        .site
        .servers
        .get(usize::from(snap.node.0))
        .map(|s| s.id.as_str())
        .unwrap_or("");
    axum::Json(json!({ "status": "ok", "node": node, "booting": snap.booting })).into_response()
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

/// Turns every error response that is not JSON yet (extractor rejections, body limits) into `{"error": ...}`, keeping its status and headers. SOAP faults stay as they are.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
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

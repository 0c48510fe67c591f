//! ONVIF over the API port (DESIGN section 4): SOAP 1.2, WS-UsernameToken `PasswordDigest`,
//! a device service for discovery and an event service whose topics are the node's servers,
//! resource owners, failovers, failbacks and conflicts.
//!
//! - `POST /onvif/device_service`: `GetSystemDateAndTime` (no authentication),
//!   `GetServices`, `GetCapabilities`, `GetDeviceInformation`.
//! - `POST /onvif/event_service`: `GetServiceCapabilities`, `GetEventProperties`,
//!   `CreatePullPointSubscription`, `Subscribe` (push).
//! - `POST /onvif/subscription/{id}`: `PullMessages`, `SetSynchronizationPoint`, `Renew`,
//!   `Unsubscribe`. (Sent to the event service with a `wsa:To` naming a subscription address,
//!   they reach that subscription too.)
//!
//! Modules: [`auth`] (checking WS-UsernameToken), [`device`], [`events`], [`subscriptions`]
//! (the hub and the queues), [`push`] (push subscriptions). The vocabulary they speak (XML,
//! SOAP, topics, messages, `wsnt:Notify`) is [`crate::onvif`], shared with the connectors.
//!
//! Subscriptions live in memory: they end with the node, and clients re-subscribe (ONVIF
//! clients do when a renew fails).
//!
//! Limits (the authentication is inside the SOAP body, so bodies are read before it): at most
//! [`MAX_BODY`] per request, read within [`BODY_TIMEOUT`], [`BODY_READS`] at once; one fault
//! for every authentication failure, addresses that keep failing slowed down ([`auth`]);
//! [`MAX_SUBSCRIPTIONS`] in all, [`MAX_SUBSCRIPTIONS_PER_ACCOUNT`] per account, each usable
//! only by its account; push `Subscribe` only to consumers `[api] onvif_push_allow` lists.

pub mod auth;
pub mod device;
pub mod events;
pub mod push;
pub mod subscriptions;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio_util::sync::CancellationToken;

use self::auth::Authenticator;
use self::subscriptions::{Hub, Subscriptions};
use super::{AppState, Shared};
use crate::onvif::soap::{self, Fault, Request as SoapRequest, envelope, ns, parse_request};
use crate::onvif::xml::XmlOut;

/// Requests larger than this are refused with a fault (413). ONVIF requests are a few kB.
pub const MAX_BODY: usize = 64 * 1024;
/// A request's body must have arrived within this (408 otherwise).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests whose bodies are read at once at most: the authentication is inside the body, so
/// this bounds what unauthenticated clients can make the node hold (16 x [`MAX_BODY`]).
pub const BODY_READS: usize = 16;
/// How long a request waits for one of the [`BODY_READS`] before it is answered 503.
const BODY_READ_WAIT: Duration = Duration::from_secs(5);
/// Subscriptions (pull and push) open at once at most.
pub const MAX_SUBSCRIPTIONS: usize = 200;
/// Subscriptions one account may hold at once: one client cannot lock the others out.
pub const MAX_SUBSCRIPTIONS_PER_ACCOUNT: usize = MAX_SUBSCRIPTIONS / 4;

/// The ONVIF services' state: accounts and nonces, the hub, the subscriptions.
pub struct Onvif {
    shared: Shared,
    cancel: CancellationToken,
    auth: Authenticator,
    hub: Arc<Hub>,
    subs: Arc<Subscriptions>,
    client: reqwest::Client,
    /// One permit per body being read.
    reads: Arc<tokio::sync::Semaphore>,
}

impl Onvif {
    pub fn new(shared: Shared, cancel: CancellationToken) -> Self {
        // A consumer's redirect is not followed: it could point anywhere the allow-list does
        // not allow.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap_or_default();
        Self {
            auth: Authenticator::new(shared.onvif_users.clone(), shared.metrics.clone()),
            shared,
            cancel,
            hub: Arc::new(Hub::new()),
            subs: Arc::new(Subscriptions::new(
                MAX_SUBSCRIPTIONS,
                MAX_SUBSCRIPTIONS_PER_ACCOUNT,
            )),
            client,
            reads: Arc::new(tokio::sync::Semaphore::new(BODY_READS)),
        }
    }

    fn start_hub(&self) {
        self.hub.start(&self.shared, &self.cancel);
    }

    /// Subscriptions open now.
    pub fn subscriptions(&self) -> usize {
        self.subs.len()
    }
}

/// The ONVIF routes, to merge into the API router.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/onvif/device_service", post(device_service))
        .route("/onvif/event_service", post(event_service))
        .route("/onvif/subscription/{id}", post(subscription))
}

/// A response body and its WS-Addressing action.
pub(crate) struct Reply {
    action: String,
    write: Box<dyn FnOnce(&mut XmlOut) + Send>,
}

impl Reply {
    fn new(action: String, write: impl FnOnce(&mut XmlOut) + Send + 'static) -> Self {
        Self {
            action,
            write: Box::new(write),
        }
    }
}

/// What an operation needs to know about the request.
pub(crate) struct Ctx<'a> {
    onvif: &'a Onvif,
    /// `http://host:port` (or `https://`), as the client reached this node.
    base: String,
    now: SystemTime,
    /// The client's address, when known.
    client: Option<std::net::IpAddr>,
}

impl Ctx<'_> {
    fn device_url(&self) -> String {
        format!("{}/onvif/device_service", self.base)
    }

    fn events_url(&self) -> String {
        format!("{}/onvif/event_service", self.base)
    }

    fn subscription_url(&self, id: &str) -> String {
        format!("{}/onvif/subscription/{id}", self.base)
    }

    fn site_and_node(&self) -> (String, String) {
        let snap = self.onvif.shared.snapshot.borrow();
        let node = snap
            .site
            .servers
            .get(usize::from(snap.node.0))
            .map(|s| s.id.clone())
            .unwrap_or_default();
        (snap.site.name.clone(), node)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Device,
    Events,
    Subscription(String),
}

async fn device_service(State(state): State<AppState>, req: Request) -> Response {
    handle(state, Endpoint::Device, req).await
}

async fn event_service(State(state): State<AppState>, req: Request) -> Response {
    handle(state, Endpoint::Events, req).await
}

async fn subscription(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    handle(state, Endpoint::Subscription(id), req).await
}

fn too_large() -> Fault {
    Fault::sender(
        &["ter:InvalidArgs"],
        format!("the message is larger than {MAX_BODY} bytes"),
    )
    .with_status(StatusCode::PAYLOAD_TOO_LARGE)
}

fn too_slow() -> Fault {
    Fault::sender(
        &["ter:InvalidArgs"],
        format!(
            "the message did not arrive within {} s",
            BODY_TIMEOUT.as_secs()
        ),
    )
    .with_status(StatusCode::REQUEST_TIMEOUT)
}

fn busy() -> Fault {
    Fault::receiver(
        &["ter:Action"],
        "the node is reading as many requests as it may; try again",
    )
    .with_status(StatusCode::SERVICE_UNAVAILABLE)
}

/// The request's body: at most [`MAX_BODY`], within [`BODY_TIMEOUT`], while holding one of
/// the [`BODY_READS`] permits.
async fn read_body(onvif: &Onvif, headers: &HeaderMap, body: Body) -> Result<Bytes, Fault> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let _permit = tokio::time::timeout(BODY_READ_WAIT, onvif.reads.acquire())
        .await
        .map_err(|_| busy())?
        .map_err(|_| busy())?;
    let capacity = declared.map_or(8 * 1024, |n| n as usize);
    match tokio::time::timeout(BODY_TIMEOUT, collect(body, capacity)).await {
        Err(_) => Err(too_slow()),
        Ok(Err(f)) => Err(f),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

/// The body's bytes, into one buffer of `capacity` (the announced length) that grows only for
/// a body without one: no garbage of doubled buffers per request.
async fn collect(mut body: Body, capacity: usize) -> Result<Bytes, Fault> {
    use http_body::Body as _;
    let mut out = Vec::with_capacity(capacity.min(MAX_BODY));
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        let frame = frame.map_err(|e| {
            if super::is_timeout(&e) {
                too_slow()
            } else {
                Fault::sender(&["ter:InvalidArgs"], "the request body could not be read")
            }
        })?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > MAX_BODY {
                return Err(too_large());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(out))
}

/// The request's scheme + `Host` if it looks like one, else this node's API address.
fn base_url(headers: &HeaderMap, shared: &Shared) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
        })
        .map(str::to_string);
    let host = host.unwrap_or_else(|| {
        let snap = shared.snapshot.borrow();
        snap.site
            .servers
            .get(usize::from(snap.node.0))
            .and_then(|s| s.api)
            .map(|a| a.to_string())
            .unwrap_or_else(|| "127.0.0.1".to_string())
    });
    let scheme = if shared.access.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}")
}

async fn handle(state: AppState, endpoint: Endpoint, req: Request) -> Response {
    let client = super::guard::client_of(&req).map(|c| c.ip());
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let bytes = match read_body(&state.onvif, &headers, body).await {
        Ok(b) => b,
        Err(f) => return fault_response(f, None),
    };
    let req = match parse_request(&bytes) {
        Ok(r) => r,
        Err(f) => return fault_response(f, None),
    };
    let relates_to = req.message_id.clone();
    let addressed = req.action.is_some() || req.message_id.is_some();
    let ctx = Ctx {
        onvif: &state.onvif,
        base: base_url(&headers, &state.shared),
        now: SystemTime::now(),
        client,
    };
    match dispatch(&ctx, endpoint, &req).await {
        Ok(reply) => {
            let action = addressed.then_some(reply.action.as_str());
            let body = envelope(action, relates_to.as_deref(), reply.write);
            soap_response(StatusCode::OK, body)
        }
        Err(fault) => {
            tracing::debug!(operation = %req.op.name, fault = %fault, "ONVIF fault.");
            fault_response(fault, relates_to.as_deref())
        }
    }
}

/// A SOAP 1.2 message as an HTTP response.
fn soap_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, soap::CONTENT_TYPE)], body).into_response()
}

/// A fault as its envelope, with the fault's HTTP status.
/// A failed authentication, a body too large or too slow also ends the connection.
fn fault_response(fault: Fault, relates_to: Option<&str>) -> Response {
    let body = fault.to_xml(relates_to, SystemTime::now());
    let close = super::closes(fault.status) || fault.subcodes.contains(&"ter:NotAuthorized");
    let mut resp = soap_response(fault.status, body);
    if close {
        resp.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    resp
}

/// The subscription id in an address `.../onvif/subscription/{id}`.
fn subscription_id(address: &str) -> Option<String> {
    let (_, rest) = address.split_once("/onvif/subscription/")?;
    let id: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    (!id.is_empty()).then_some(id)
}

async fn dispatch(ctx: &Ctx<'_>, endpoint: Endpoint, req: &SoapRequest) -> Result<Reply, Fault> {
    let op = &req.op;
    let name = (op.ns.as_str(), op.name.as_str());
    if endpoint == Endpoint::Device && name == (ns::TDS, "GetSystemDateAndTime") {
        return Ok(device::system_date_and_time(ctx.now));
    }
    let user = ctx
        .onvif
        .auth
        .check(req.security.as_ref(), ctx.now, ctx.client)?;
    let user = user.as_str();
    let unknown = || {
        Fault::not_supported(format!(
            "{{{}}}{} is not an operation of this service",
            op.ns, op.name
        ))
    };
    match endpoint {
        Endpoint::Device => match name {
            (ns::TDS, "GetServices") => device::services(ctx, op),
            (ns::TDS, "GetCapabilities") => device::capabilities(ctx, op),
            (ns::TDS, "GetDeviceInformation") => Ok(device::device_information(ctx)),
            _ => Err(unknown()),
        },
        Endpoint::Events => match name {
            (ns::TEV, "GetServiceCapabilities") => Ok(events::service_capabilities(ctx)),
            (ns::TEV, "GetEventProperties") => Ok(events::event_properties()),
            (ns::TEV, "CreatePullPointSubscription") => events::create_pull_point(ctx, op, user),
            (ns::WSNT, "Subscribe") => events::subscribe(ctx, op, user),
            _ => match req.to.as_deref().and_then(subscription_id) {
                Some(id) => subscription_op(ctx, &id, req, user).await,
                None => Err(unknown()),
            },
        },
        Endpoint::Subscription(id) => subscription_op(ctx, &id, req, user).await,
    }
}

async fn subscription_op(
    ctx: &Ctx<'_>,
    id: &str,
    req: &SoapRequest,
    user: &str,
) -> Result<Reply, Fault> {
    let op = &req.op;
    match (op.ns.as_str(), op.name.as_str()) {
        (ns::TEV, "PullMessages") => events::pull_messages(ctx, id, op, user).await,
        (ns::TEV, "SetSynchronizationPoint") => events::synchronize(ctx, id, user).await,
        (ns::WSNT, "Renew") => events::renew(ctx, id, op, user),
        (ns::WSNT, "Unsubscribe") => events::unsubscribe(ctx, id, user),
        _ => Err(Fault::not_supported(format!(
            "{{{}}}{} is not an operation of a subscription manager",
            op.ns, op.name
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_ids_from_addresses() {
        assert_eq!(
            subscription_id("http://h:1/onvif/subscription/ab12?x").as_deref(),
            Some("ab12")
        );
        assert_eq!(subscription_id("http://h:1/onvif/event_service"), None);
        assert_eq!(subscription_id("http://h/onvif/subscription/"), None);
    }
}

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

pub mod auth;
pub mod device;
pub mod events;
pub mod push;
pub mod subscriptions;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio_util::sync::CancellationToken;

use self::auth::Authenticator;
use self::subscriptions::{Hub, Subscriptions};
use super::{AppState, Shared};
use crate::onvif::soap::{self, Fault, Request, envelope, ns, parse_request};
use crate::onvif::xml::XmlOut;

/// Requests larger than this are refused with a fault.
pub const MAX_BODY: usize = 256 * 1024;
/// Subscriptions (pull and push) open at once at most.
pub const MAX_SUBSCRIPTIONS: usize = 200;

/// The ONVIF services' state: accounts and nonces, the hub, the subscriptions.
pub struct Onvif {
    shared: Shared,
    cancel: CancellationToken,
    auth: Authenticator,
    hub: Arc<Hub>,
    subs: Arc<Subscriptions>,
    client: reqwest::Client,
}

impl Onvif {
    pub fn new(shared: Shared, cancel: CancellationToken) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Self {
            auth: Authenticator::new(shared.onvif_users.clone()),
            shared,
            cancel,
            hub: Arc::new(Hub::new()),
            subs: Arc::new(Subscriptions::new(MAX_SUBSCRIPTIONS)),
            client,
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
    /// `http://host:port`, as the client reached this node.
    base: String,
    now: SystemTime,
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

async fn device_service(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    handle(state, Endpoint::Device, headers, body).await
}

async fn event_service(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    handle(state, Endpoint::Events, headers, body).await
}

async fn subscription(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(state, Endpoint::Subscription(id), headers, body).await
}

fn too_large() -> Fault {
    Fault::sender(
        &["ter:InvalidArgs"],
        format!("the message is larger than {MAX_BODY} bytes"),
    )
    .with_status(StatusCode::PAYLOAD_TOO_LARGE)
}

/// `http://` + the request's `Host` if it looks like one, else this node's API address.
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
    format!("http://{host}")
}

async fn handle(state: AppState, endpoint: Endpoint, headers: HeaderMap, body: Body) -> Response {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return fault_response(too_large(), None);
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return fault_response(too_large(), None);
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
fn fault_response(fault: Fault, relates_to: Option<&str>) -> Response {
    let body = fault.to_xml(relates_to, SystemTime::now());
    soap_response(fault.status, body)
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

async fn dispatch(ctx: &Ctx<'_>, endpoint: Endpoint, req: &Request) -> Result<Reply, Fault> {
    let op = &req.op;
    let name = (op.ns.as_str(), op.name.as_str());
    if endpoint == Endpoint::Device && name == (ns::TDS, "GetSystemDateAndTime") {
        return Ok(device::system_date_and_time(ctx.now));
    }
    ctx.onvif.auth.check(req.security.as_ref(), ctx.now)?;
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
            (ns::TEV, "CreatePullPointSubscription") => events::create_pull_point(ctx, op),
            (ns::WSNT, "Subscribe") => events::subscribe(ctx, op),
            _ => match req.to.as_deref().and_then(subscription_id) {
                Some(id) => subscription_op(ctx, &id, req).await,
                None => Err(unknown()),
            },
        },
        Endpoint::Subscription(id) => subscription_op(ctx, &id, req).await,
    }
}

async fn subscription_op(ctx: &Ctx<'_>, id: &str, req: &Request) -> Result<Reply, Fault> {
    let op = &req.op;
    match (op.ns.as_str(), op.name.as_str()) {
        (ns::TEV, "PullMessages") => events::pull_messages(ctx, id, op).await,
        (ns::TEV, "SetSynchronizationPoint") => events::synchronize(ctx, id).await,
        (ns::WSNT, "Renew") => events::renew(ctx, id, op),
        (ns::WSNT, "Unsubscribe") => events::unsubscribe(ctx, id),
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

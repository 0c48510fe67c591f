//! Mutations: `POST /api/v1/servers/{id}/failover`, `.../failback` and
//! `POST /api/v1/connectors/{name}/replay`.
//!
//! Each needs `Authorization: Bearer <api.token>`, compared in constant time. Without a
//! configured token every mutation is refused (403); a missing or wrong token is a 401 and
//! counts in `buddygate_api_unauthorized_total`. The request body is optional; if present it
//! must be a JSON object. A failover or failback becomes a [`Command`] for the core, which
//! relays it to the nodes concerned through the heartbeats; the answer is 202: accepted, not
//! yet done (watch the events).

use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::mpsc::error::TrySendError;

use super::Shared;
use super::{ApiError, AppState};
use crate::failover::Action;
use crate::view::Command;

const CHALLENGE: &str = "Bearer realm=\"buddygate\"";
const CHALLENGE_INVALID: &str = "Bearer realm=\"buddygate\", error=\"invalid_token\"";

/// Whether two tokens are equal, in time that depends on neither: each keys an HMAC over the
/// same message, so the tags have one length whatever the tokens' lengths, and the MAC's
/// `verify_slice` compares them in constant time.
fn same_token(expected: &str, given: &str) -> bool {
    type HmacSha256 = Hmac<Sha256>;
    let tag = |key: &str| -> Option<HmacSha256> {
        let mut mac = HmacSha256::new_from_slice(key.as_bytes()).ok()?;
        mac.update(b"buddygate api token");
        Some(mac)
    };
    match (tag(expected), tag(given)) {
        (Some(expected), Some(given)) => expected
            .verify_slice(&given.finalize().into_bytes())
            .is_ok(),
        _ => false,
    }
}

/// What the request offers as credentials.
enum Credentials<'a> {
    Missing,
    /// An `Authorization` header that is not `Bearer <token>`.
    Unsupported,
    Bearer(&'a str),
}

fn credentials(headers: &HeaderMap) -> Credentials<'_> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Credentials::Missing;
    };
    let bearer = value.to_str().ok().and_then(|v| {
        let (scheme, token) = v.trim().split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    });
    bearer.map_or(Credentials::Unsupported, Credentials::Bearer)
}

/// Checks the bearer token; counts refusals for want of a good one.
pub(crate) fn authorize(shared: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = shared.token.as_deref().filter(|t| !t.is_empty()) else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "mutations are disabled: set api.token",
        ));
    };
    let refuse = |message: &str, challenge| {
        shared
            .metrics
            .api_unauthorized
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(reason = message, "API mutation refused.");
        ApiError::unauthorized(message, challenge)
    };
    match credentials(headers) {
        Credentials::Missing => Err(refuse(
            "missing bearer token: send Authorization: Bearer <api.token>",
            CHALLENGE,
        )),
        Credentials::Unsupported => Err(refuse(
            "unsupported Authorization header: send Authorization: Bearer <api.token>",
            CHALLENGE,
        )),
        Credentials::Bearer(given) if same_token(expected, given) => Ok(()),
        Credentials::Bearer(_) => Err(refuse("invalid bearer token", CHALLENGE_INVALID)),
    }
}

/// An optional body: empty, or a JSON object (reserved for options; none yet).
fn check_body(body: Result<Bytes, BytesRejection>) -> Result<(), ApiError> {
    let body = body.map_err(|r| ApiError::new(r.status(), r.body_text()))?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err(ApiError::bad_request(
            "the request body must be a JSON object, or empty",
        )),
        Err(e) => Err(ApiError::bad_request(format!("malformed JSON body: {e}"))),
    }
}

fn path_param(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(p)| p)
        .map_err(|r| ApiError::new(r.status(), r.body_text()))
}

async fn command(
    state: AppState,
    action: Action,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let shared = &state.shared;
    authorize(shared, &headers)?;
    let id = path_param(id)?;
    check_body(body)?;
    let server = shared
        .snapshot
        .borrow()
        .site
        .server_idx(&id)
        .ok_or_else(|| ApiError::not_found(format!("no server named {id:?}")))?;
    let name = match action {
        Action::Failover => "failover",
        Action::Failback => "failback",
    };
    match shared.commands.try_send(Command { action, server }) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the node is busy with earlier commands; try again",
            ));
        }
        Err(TrySendError::Closed(_)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the node is shutting down",
            ));
        }
    }
    tracing::info!(server = %id, action = name, "Manual command accepted.");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "accepted": true, "action": name, "server": id })),
    )
        .into_response())
}

pub(crate) async fn failover(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    command(state, Action::Failover, headers, id, body).await
}

pub(crate) async fn failback(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    command(state, Action::Failback, headers, id, body).await
}

/// Replays a connector's dead letters (and re-enables it after a 410).
pub(crate) async fn replay(
    State(state): State<AppState>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    authorize(&state.shared, &headers)?;
    let name = path_param(name)?;
    check_body(body)?;
    let Some(c) = state.shared.connectors.iter().find(|c| c.name == name) else {
        return Err(ApiError::not_found(format!("no connector named {name:?}")));
    };
    c.replay.notify_one();
    let dead = c.status.dead.load(std::sync::atomic::Ordering::Relaxed);
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"accepted": true, "connector": name, "dead_letters": dead})),
    )
        .into_response())
}

/// `GET /api/v1/connectors`: each connector's health, dead letters and latest attempts.
pub(crate) async fn connectors(State(state): State<AppState>) -> Result<Response, ApiError> {
    use std::sync::atomic::Ordering::Relaxed;
    let shared = state.shared.clone();
    let list = tokio::task::spawn_blocking(move || {
        let reader = crate::store::Store::open_reader(&shared.data_dir).ok();
        shared
            .connectors
            .iter()
            .map(|c| {
                let s = &c.status;
                let disabled = s.disabled.lock().ok().and_then(|d| d.clone());
                let dead_letters = reader
                    .as_ref()
                    .and_then(|r| r.dead_letters(&c.name).ok())
                    .unwrap_or_default();
                let attempts = reader
                    .as_ref()
                    .and_then(|r| r.attempts(&c.name, 20).ok())
                    .unwrap_or_default();
                let start_error = s.start_error();
                let state = if start_error.is_some() {
                    "failed"
                } else if disabled.is_some() {
                    "disabled"
                } else if s.queue_depth() > 0
                    && s.last_error.lock().map(|e| e.is_some()).unwrap_or(false)
                {
                    "retrying"
                } else {
                    "ok"
                };
                serde_json::json!({
                    "name": c.name,
                    "type": c.kind,
                    "target": c.target,
                    "state": state,
                    "disabled_reason": disabled,
                    "start_error": start_error,
                    "cursor": s.cursor.load(Relaxed),
                    "queue_depth": s.queue_depth(),
                    "delivered": s.delivered.load(Relaxed),
                    "retried": s.retried.load(Relaxed),
                    "failed": s.failed.load(Relaxed),
                    "last_error": s.last_error.lock().ok().and_then(|e| e.clone()),
                    "dead_letters": dead_letters.iter().map(|d| serde_json::json!({
                        "seq": d.seq, "attempts": d.attempts, "reason": d.reason,
                        "time": d.time, "replay_queued": d.replay,
                    })).collect::<Vec<_>>(),
                    "attempts": attempts.iter().map(|a| serde_json::json!({
                        "seq": a.seq, "attempt": a.attempt, "outcome": a.outcome,
                        "latency_ms": a.latency_ms, "time": a.time,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(serde_json::json!({"connectors": list})).into_response())
}

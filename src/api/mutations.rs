//! Mutations: `POST /api/v1/servers/{id}/failover`, `.../failback` and
//! `POST /api/v1/connectors/{name}/replay`.
//!
//! Each needs `Authorization: Bearer <api.token>`, checked by the route layer
//! [`super::guard::require_mutation`] before the body is read. The request body is optional
//! (at most [`super::MAX_MUTATION_BODY`] bytes); if present it must be a JSON object. A
//! failover or failback becomes a [`Command`] for the core, which relays it to the nodes
//! concerned through the heartbeats; the answer is 202: accepted, not yet done (watch the
//! events).
//!
//! `GET /api/v1/connectors` (a read) is here too: each connector's health, URLs and errors
//! with their credentials redacted.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::mpsc::error::TrySendError;

use super::{ApiError, AppState};
use crate::failover::Action;
use crate::view::Command;

/// An optional body: empty, or a JSON object (reserved for options; none yet).
fn check_body(body: Result<Bytes, BytesRejection>) -> Result<(), ApiError> {
    let body = body.map_err(|r| ApiError::body(&r))?;
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
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let shared = &state.shared;
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
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    command(state, Action::Failover, id, body).await
}

pub(crate) async fn failback(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    command(state, Action::Failback, id, body).await
}

/// Replays a connector's dead letters (and re-enables it after a 410).
pub(crate) async fn replay(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
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
                let redact = |t: Option<String>| t.map(|t| crate::redact::text(&t));
                let disabled = redact(s.disabled.lock().ok().and_then(|d| d.clone()));
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
                    "target": crate::redact::url(&c.target),
                    "state": state,
                    "disabled_reason": disabled,
                    "start_error": start_error,
                    "cursor": s.cursor.load(Relaxed),
                    "queue_depth": s.queue_depth(),
                    "delivered": s.delivered.load(Relaxed),
                    "retried": s.retried.load(Relaxed),
                    "failed": s.failed.load(Relaxed),
                    "last_error": redact(s.last_error.lock().ok().and_then(|e| e.clone())),
                    "dead_letters": dead_letters.iter().map(|d| serde_json::json!({
                        "seq": d.seq, "attempts": d.attempts, "reason": crate::redact::text(&d.reason),
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

//! `GET /api/v1/resources/{id}/history?from=&to=`: who served a resource when, as the
//! answering node saw it (where the footage is; [`crate::store::history`]):
//! `[{"owner","address","epoch","from","to","exact"}]`, oldest first, `to` `null` while it
//! lasts. `from` and `to` (RFC 3339, or Unix milliseconds) keep the intervals that overlap
//! them; either may be left out. An unknown id is 404.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState};
use crate::cloudevents::rfc3339;
use crate::store::history::{HistoryReader, Interval};

/// One interval of `GET /resources/{id}/history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The server that served (recorded) it.
    pub owner: String,
    /// The owner's announced address.
    pub address: String,
    pub epoch: u64,
    /// RFC 3339, UTC, ms.
    pub from: String,
    /// RFC 3339; `null` while it lasts.
    pub to: Option<String>,
    /// The answering node saw both ends as they happened; `false` when it was down (or just
    /// started) at one of them: then `from` and `to` enclose the truth.
    pub exact: bool,
}

impl From<Interval> for HistoryEntry {
    fn from(i: Interval) -> Self {
        let at = |ms: u64| rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms));
        Self {
            owner: i.owner,
            address: i.address,
            epoch: i.epoch,
            from: at(i.from_ms),
            to: i.to_ms.map(at),
            exact: i.exact,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Range {
    from: Option<String>,
    to: Option<String>,
}

/// An instant of the query: RFC 3339, or Unix milliseconds.
fn instant(key: &str, text: &str) -> Result<u64, ApiError> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(text)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{key}: {text:?} is neither an RFC 3339 time (2026-11-24T22:00:00Z) nor Unix milliseconds"
            ))
        })
}

pub(crate) async fn handler(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(range): Query<Range>,
) -> Result<Json<Vec<HistoryEntry>>, ApiError> {
    let known = {
        let snap = state.shared.snapshot.borrow();
        snap.site.resources.iter().any(|r| r.id == id)
    };
    if !known {
        return Err(ApiError::not_found(format!("no resource {id:?}")));
    }
    let from = range
        .from
        .as_deref()
        .map(|t| instant("from", t))
        .transpose()?;
    let to = range.to.as_deref().map(|t| instant("to", t)).transpose()?;
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(ApiError::bad_request("from is after to"));
    }
    let dir = state.shared.data_dir.clone();
    let read =
        tokio::task::spawn_blocking(move || HistoryReader::open(&dir)?.intervals(&id, from, to))
            .await;
    match read {
        Ok(Ok(intervals)) => Ok(Json(
            intervals.into_iter().map(HistoryEntry::from).collect(),
        )),
        Ok(Err(e)) => Err(ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the history: {e}"),
        )),
        Err(e) => Err(ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the history: {e}"),
        )),
    }
}

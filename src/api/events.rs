//! The event log over HTTP: `GET /api/v1/events?after=SEQ&limit=N` pages through the store,
//! `GET /api/v1/events/stream` is a server-sent event stream.
//!
//! The store is the truth and the broadcast channel only a fast path: a stream subscribes
//! first, then replays from the store (from `Last-Event-ID` or `?after=`), then follows the
//! channel, skipping what it already sent. Whenever it sees a hole in the sequence numbers (it
//! lagged behind the channel, or an event never came through it), it reads the hole from the
//! store. A client therefore gets every event once, in order, however slow it is; if the
//! store cannot be read the stream ends and the client reconnects with `Last-Event-ID`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;
use thiserror::Error;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use super::{ApiError, AppState, raw_json};
use crate::store::{Store, StoreError, StoredEvent};
use crate::view::Metrics;

/// Events per page when no `limit` is given.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` honoured; larger ones are cut to it.
pub const MAX_LIMIT: usize = 1000;
/// Events read from the store at once while a stream replays or catches up (what one stream
/// holds in memory at most, besides its place in the broadcast channel).
const CATCH_UP_PAGE: usize = 64;
/// Event streams open at once at most; one more is answered 503.
pub const MAX_STREAMS: usize = 64;
/// Comment sent on an idle stream, so proxies and clients know it is alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize)]
pub(crate) struct EventsQuery {
    after: Option<String>,
    limit: Option<String>,
}

fn parse_after(value: &str, what: &str) -> Result<u64, ApiError> {
    value.trim().parse::<u64>().map_err(|_| {
        ApiError::bad_request(format!(
            "{what} must be an event sequence number (an integer, 0 or more), got {value:?}"
        ))
    })
}

/// A limit above [`MAX_LIMIT`] (however large) is cut to it; 0 or a non-number is an error.
fn parse_limit(value: &str) -> Result<usize, ApiError> {
    let digits = value.trim();
    let is_number = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    if !is_number || digits.bytes().all(|b| b == b'0') {
        return Err(ApiError::bad_request(format!(
            "limit must be an integer from 1 to {MAX_LIMIT}, got {value:?}"
        )));
    }
    Ok(digits
        .parse::<usize>()
        .map_or(MAX_LIMIT, |n| n.min(MAX_LIMIT)))
}

fn query_error(rejection: QueryRejection) -> ApiError {
    ApiError::bad_request(format!("bad query: {}", rejection.body_text()))
}

/// Why the event log could not be read.
#[derive(Debug, Error)]
enum ReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the reading task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Reads events with `seq > after` from the store, off the async threads.
async fn read_events(
    data_dir: PathBuf,
    after: u64,
    limit: usize,
) -> Result<Vec<StoredEvent>, ReadError> {
    let read = move || Store::open_reader(&data_dir)?.events_after(after, limit);
    Ok(tokio::task::spawn_blocking(read).await??)
}

fn store_unavailable(e: &ReadError) -> ApiError {
    tracing::warn!(error = %e, "Cannot read the event log.");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "cannot read the event log; see the node's log",
    )
}

/// The stored JSON if it is valid, else a stand-in that keeps its place in the sequence (a
/// client paging by `seq` must never see a page end early).
fn valid_json(e: &StoredEvent) -> String {
    if serde_json::from_str::<serde::de::IgnoredAny>(&e.json).is_ok() {
        e.json.clone()
    } else {
        tracing::warn!(seq = e.seq, "Stored event is not valid JSON.");
        serde_json::json!({
            "seq": e.seq,
            "type": e.kind,
            "error": "stored event is not valid JSON",
        })
        .to_string()
    }
}

/// `GET /api/v1/events?after=SEQ&limit=N` → `{"events":[<CloudEvent>...]}`, oldest first.
pub(crate) async fn page(
    State(state): State<AppState>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(query_error)?;
    let after = q
        .after
        .as_deref()
        .map(|v| parse_after(v, "after"))
        .transpose()?
        .unwrap_or(0);
    let limit = q
        .limit
        .as_deref()
        .map(parse_limit)
        .transpose()?
        .unwrap_or(DEFAULT_LIMIT);
    let events = read_events(state.shared.data_dir.clone(), after, limit)
        .await
        .map_err(|e| store_unavailable(&e))?;
    let mut body =
        String::with_capacity(16 + events.iter().map(|e| e.json.len() + 1).sum::<usize>());
    body.push_str("{\"events\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&valid_json(e));
    }
    body.push_str("]}");
    Ok(raw_json(StatusCode::OK, body))
}

/// `GET /api/v1/events/stream`: `id: <seq>`, `event: <type>`, `data: <CloudEvent>`.
pub(crate) async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(query_error)?;
    let Ok(permit) = state.streams.clone().try_acquire_owned() else {
        state
            .refusals
            .refuse("streams", None, "as many event streams are open as may be");
        let mut resp = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{MAX_STREAMS} event streams are open, as many as this node serves; try again later"
            ),
        )
        .into_response();
        resp.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("5"),
        );
        return Ok(resp);
    };
    // A reconnecting EventSource repeats the URL (with its `?after=`) and adds the id it saw
    // last: the header is the newer of the two.
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| parse_after(&String::from_utf8_lossy(v.as_bytes()), "Last-Event-ID"))
        .transpose()?;
    let after = match last_event_id {
        Some(seq) => Some(seq),
        None => q
            .after
            .as_deref()
            .map(|v| parse_after(v, "after"))
            .transpose()?,
    };
    let feed = Feed {
        _open: Open::new(permit, state.shared.metrics.clone()),
        data_dir: state.shared.data_dir.clone(),
        live: state.shared.events.subscribe(),
        cancel: state.cancel.clone(),
        sent: after,
        lost: 0,
        catch_up: after.is_some(),
        held: None,
        pending: VecDeque::new(),
    };
    let sse = Sse::new(feed.into_stream())
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"));
    let mut resp = sse.into_response();
    // Tell reverse proxies (nginx) not to buffer the stream.
    resp.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    Ok(resp)
}

/// An open stream: its permit, and its place in `buddygate_api_streams`, both given back when
/// the stream ends.
struct Open {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Open {
    fn new(permit: OwnedSemaphorePermit, metrics: Arc<Metrics>) -> Self {
        metrics.api_streams.fetch_add(1, Ordering::Relaxed);
        Self {
            _permit: permit,
            metrics,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.metrics.api_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One stream's position in the event log.
struct Feed {
    _open: Open,
    data_dir: PathBuf,
    live: broadcast::Receiver<Arc<StoredEvent>>,
    cancel: CancellationToken,
    /// The last sequence number sent (or asked to start after); `None` until the first event
    /// of a live-only stream.
    sent: Option<u64>,
    /// Events missed while `sent` was still unknown.
    lost: u64,
    /// Read from the store after `sent` before listening again.
    catch_up: bool,
    /// A live event that revealed a hole, sent after the hole is filled if the store does not
    /// have it.
    held: Option<Arc<StoredEvent>>,
    /// Read and not sent yet, oldest first.
    pending: VecDeque<Arc<StoredEvent>>,
}

impl Feed {
    fn into_stream(self) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
        futures_util::stream::unfold(self, |mut feed| async move {
            let event = feed.next().await?;
            Some((Ok(event), feed))
        })
    }

    /// The next event to send; `None` ends the stream.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                if self.sent.is_some_and(|s| e.seq <= s) {
                    continue;
                }
                self.sent = Some(e.seq);
                return Some(sse_event(&e));
            }
            if self.catch_up {
                self.fill().await?;
                continue;
            }
            let received = tokio::select! {
                _ = self.cancel.cancelled() => return None,
                r = self.live.recv() => r,
            };
            match received {
                Ok(e) => self.accept(e),
                Err(RecvError::Lagged(n)) => {
                    tracing::debug!(
                        missed = n,
                        "Event stream lagged; catching up from the store."
                    );
                    if self.sent.is_some() {
                        self.catch_up = true;
                    } else {
                        self.lost = self.lost.saturating_add(n);
                    }
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// A live event: send it, skip it, or read the hole before it from the store.
    fn accept(&mut self, e: Arc<StoredEvent>) {
        if self.sent.is_none() && self.lost > 0 {
            // The channel dropped the `lost` events just before this one.
            self.sent = Some(e.seq.saturating_sub(self.lost.saturating_add(1)));
            self.lost = 0;
        }
        match self.sent {
            Some(s) if e.seq <= s => {}
            Some(s) if e.seq > s.saturating_add(1) => {
                self.catch_up = true;
                self.held = Some(e);
            }
            _ => self.pending.push_back(e),
        }
    }

    /// Reads one page after `sent` from the store; `None` (end the stream) if it cannot.
    async fn fill(&mut self) -> Option<()> {
        let after = self.sent.unwrap_or(0);
        let read = read_events(self.data_dir.clone(), after, CATCH_UP_PAGE);
        let page = tokio::select! {
            _ = self.cancel.cancelled() => return None,
            page = read => page,
        };
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, after, "Cannot replay events from the store; ending the stream.");
                return None;
            }
        };
        if page.len() < CATCH_UP_PAGE {
            self.catch_up = false;
            self.pending.extend(page.into_iter().map(Arc::new));
            self.pending.extend(self.held.take());
        } else {
            self.pending.extend(page.into_iter().map(Arc::new));
        }
        Some(())
    }
}

fn sse_event(e: &StoredEvent) -> SseEvent {
    // Field values must not hold line breaks; the type comes from our own store, but a stream
    // must never panic.
    let kind: String = e.kind.chars().filter(|c| !c.is_control()).collect();
    SseEvent::default()
        .id(e.seq.to_string())
        .event(kind)
        .data(valid_json(e))
}

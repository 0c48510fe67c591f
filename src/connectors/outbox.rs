//! Delivery from the outbox, shared by the connectors that push over HTTP (`webhook`,
//! `onvif`): the cursor, the retry schedule with jitter, dead letters and replays, `410 Gone`,
//! and the figures in [`ConnectorStatus`].
//!
//! A connector is a [`Sink`]: it says which events it wants and makes one attempt for a batch
//! of them. [`run`] does the rest: take the next events after the cursor; skip the unwanted
//! ones (the cursor passes a run of them in one write); deliver the wanted ones in batches of
//! at most `batch`, retrying a batch on the `retry` schedule (honouring `Retry-After`, at most
//! [`MAX_RETRY_AFTER`]); move the cursor only after a 2xx (attempt and cursor in one
//! transaction). A batch that uses up the schedule, or that fails for good at once
//! ([`Try::Refused`]: retrying cannot help), becomes dead letters (one per event, kept,
//! replayable) and the next events go; a `410 Gone` disables the connector until a replay.
//!
//! Replays never hold up the live tail: a dead letter queued for a replay gets one attempt at
//! a time, only when every new event has been handled, and waits its turn on the `retry`
//! schedule between attempts, so a `failover.completed` stored meanwhile goes first.
//!
//! (Over ~500 lines with its tests and the HTTP helpers webhook and onvif share.)

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{ConnectorStatus, StoredAt};
use crate::backoff::{Backoff, Jitter};
use crate::cloudevents::rfc3339;
use crate::config::connectors::TlsFile;
use crate::store::{Attempt, DeadLetter, Reader, Store, StoredEvent};

/// Longest `Retry-After` honoured: a consumer asking for more is tried again after this long,
/// so that it cannot hold the queue (a failover notice behind it) for an hour.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Events read from the log at a time.
const READ_AHEAD: usize = 100;

/// How one attempt ended.
pub enum Try {
    Ok(u16),
    Gone,
    /// Failed; another attempt may succeed.
    Failed {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Failed for good: another attempt would fail the same way (a template that cannot
    /// render for this event, a URL that cannot be built, a 4xx other than 408 and 429). A
    /// dead letter at once.
    Refused {
        reason: String,
    },
}

impl Try {
    /// The attempt for an HTTP answer `status` that is not a success: `410` disables the
    /// connector, `408`, `429` and `5xx` are retried, any other `4xx` is refused for good.
    pub fn for_status(status: u16, reason: String, retry_after: Option<Duration>) -> Self {
        match status {
            410 => Try::Gone,
            408 | 429 => Try::Failed {
                reason,
                retry_after,
            },
            400..=499 => Try::Refused { reason },
            _ => Try::Failed {
                reason,
                retry_after,
            },
        }
    }
}

/// How one delivery (every attempt of the schedule) ended.
enum Outcome {
    Delivered,
    Dead(String, u32),
    Disabled(String),
    Cancelled,
}

/// A connector that delivers events from the outbox.
pub trait Sink: Sync {
    /// Whether `ev` is delivered at all; the cursor moves past the others.
    fn wants(&self, ev: &StoredEvent) -> bool;

    /// One attempt for `events` (in log order, at most the outbox's `batch`).
    fn attempt(&self, events: &[StoredEvent]) -> impl Future<Output = Try> + Send;

    /// How often [`Sink::tick`] runs while the connector is idle; `None`: never.
    fn tick_every(&self) -> Option<Duration> {
        None
    }

    /// Periodic work when nothing is queued (the webhook's re-assertion).
    fn tick(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// One connector's view of the outbox: its cursor, dead letters and attempts.
pub struct Outbox {
    name: String,
    /// Behind a lock only so the connector can be sent between threads; one task uses it.
    store: Mutex<Store>,
    reader: Mutex<Reader>,
    status: Arc<ConnectorStatus>,
    retry: Backoff,
    batch: usize,
    /// Replays under way: dead letter seq -> (attempts made, when the next may go).
    replays: Mutex<HashMap<u64, (u32, Instant)>>,
    stored_at: Arc<StoredAt>,
}

impl Outbox {
    /// Opens the store for connector `name`, and loads its dead letters and whether it is
    /// disabled into `status`.
    pub fn open(
        name: &str,
        data_dir: &Path,
        status: Arc<ConnectorStatus>,
        retry: Backoff,
        batch: usize,
    ) -> anyhow::Result<Self> {
        let store = Store::open_for_connector(data_dir)?;
        let reader = Store::open_reader(data_dir)?;
        if let Some(reason) = reader.disabled(name)? {
            *status.disabled.lock().expect("status lock") = Some(reason);
        }
        status
            .dead
            .store(reader.dead_letters(name)?.len() as u64, Ordering::Relaxed);
        Ok(Self {
            name: name.to_string(),
            store: Mutex::new(store),
            reader: Mutex::new(reader),
            status,
            retry,
            batch: batch.max(1),
            replays: Mutex::new(HashMap::new()),
            stored_at: Arc::new(StoredAt::default()),
        })
    }

    /// Where the node records when each event was stored (the delivery latency).
    pub fn set_stored_at(&mut self, stored_at: Arc<StoredAt>) {
        self.stored_at = stored_at;
    }

    pub fn status(&self) -> &ConnectorStatus {
        &self.status
    }

    pub fn is_disabled(&self) -> bool {
        self.status.disabled.lock().expect("status lock").is_some()
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reader(&self) -> MutexGuard<'_, Reader> {
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn queue_replay(&self) {
        match self.store().queue_replay(&self.name) {
            Ok(n) => {
                info!(connector = %self.name, dead_letters = n, "Replay requested.");
                *self.status.disabled.lock().expect("status lock") = None;
            }
            Err(e) => warn!(connector = %self.name, error = %e, "Cannot queue a replay."),
        }
    }

    /// Disables the connector until a replay (after a `410 Gone`).
    pub fn disable(&self, reason: String) -> anyhow::Result<bool> {
        warn!(connector = %self.name, %reason, "Endpoint gone (410): disabled until a replay.");
        self.store().set_disabled(&self.name, Some(&reason))?;
        *self.status.disabled.lock().expect("status lock") = Some(reason);
        Ok(true)
    }

    fn advance(&self, seq: u64) -> anyhow::Result<()> {
        self.store().set_cursor(&self.name, seq)?;
        self.status.cursor.store(seq, Ordering::Relaxed);
        Ok(())
    }

    fn bury(&self, events: &[StoredEvent], reason: &str, attempts: u32) -> anyhow::Result<()> {
        for ev in events {
            self.store().add_dead_letter(
                &self.name,
                &DeadLetter {
                    seq: ev.seq,
                    attempts,
                    reason: reason.to_string(),
                    time: rfc3339(SystemTime::now()),
                    replay: false,
                },
            )?;
        }
        Ok(())
    }

    /// Handles what is due: the next events after the cursor first; once there are none, one
    /// attempt of one replay. `Ok(true)` when it did something and should look again at once.
    async fn serve_once(
        &self,
        sink: &impl Sink,
        replay: &Notify,
        cancel: &CancellationToken,
    ) -> anyhow::Result<bool> {
        self.status
            .head
            .store(self.reader().last_seq()?, Ordering::Relaxed);
        if self.is_disabled() {
            // Disabled by a 410: only a replay re-enables it.
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = replay.notified() => self.queue_replay(),
            }
            return Ok(true);
        }
        let cursor = self.reader().cursor(&self.name)?;
        self.status.cursor.store(cursor, Ordering::Relaxed);
        let events = self.reader().events_after(cursor, READ_AHEAD)?;
        if events.is_empty() {
            return self.replay_once(sink).await;
        }
        // Unwanted events before the first wanted one: the cursor passes them in one write.
        let first = events.iter().position(|ev| sink.wants(ev));
        let skipped = first.map_or(&events[..], |i| &events[..i]);
        if let Some(last) = skipped.last() {
            self.advance(last.seq)?;
        }
        // Unwanted events between wanted ones: the cursor passes them when the batch after
        // them is delivered, or on the next round.
        let wanted: Vec<StoredEvent> = events.into_iter().filter(|ev| sink.wants(ev)).collect();
        for batch in wanted.chunks(self.batch) {
            match self.deliver(sink, batch, cancel).await {
                Outcome::Delivered => {}
                Outcome::Dead(reason, attempts) => {
                    warn!(connector = %self.name, first = batch[0].seq, events = batch.len(), %reason, "Delivery failed for good; kept as dead letters.");
                    self.bury(batch, &reason, attempts)?;
                    self.status
                        .dead
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    self.advance(batch[batch.len() - 1].seq)?;
                }
                Outcome::Disabled(reason) => return self.disable(reason),
                Outcome::Cancelled => return Ok(false),
            }
        }
        Ok(true)
    }

    /// One attempt of the first dead letter queued for a replay whose turn it is. A success
    /// removes it; a failure waits for the next delay of the `retry` schedule (other replays
    /// and new events go meanwhile); when the schedule is used up, or the attempt is refused
    /// for good, it is a dead letter again (no longer queued).
    async fn replay_once(&self, sink: &impl Sink) -> anyhow::Result<bool> {
        let queued = self.reader().queued_replays(&self.name, 64)?;
        let now = Instant::now();
        let due = {
            let mut replays = self.replays.lock().unwrap_or_else(|e| e.into_inner());
            replays.retain(|seq, _| queued.iter().any(|d| d.seq == *seq));
            queued
                .into_iter()
                .find(|d| replays.get(&d.seq).is_none_or(|&(_, at)| at <= now))
        };
        let Some(dead) = due else {
            return Ok(false);
        };
        let Some(ev) = self.reader().event(dead.seq)? else {
            // Gone from the log (retention): nothing left to replay.
            self.store().remove_dead_letter(&self.name, dead.seq)?;
            self.status.dead.fetch_sub(1, Ordering::Relaxed);
            return Ok(true);
        };
        let tries = self
            .replays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&dead.seq)
            .map_or(0, |&(n, _)| n)
            + 1;
        let (result, record) = self
            .attempt_once(sink, std::slice::from_ref(&ev), tries)
            .await;
        let failed = |reason: String| -> anyhow::Result<bool> {
            let next = self.retry.delay(tries);
            match next {
                Some(wait) => {
                    debug!(connector = %self.name, seq = ev.seq, tries, %reason, ?wait, "Replay failed; trying again later.");
                    self.replays
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(ev.seq, (tries, Instant::now() + wait));
                }
                None => {
                    warn!(connector = %self.name, seq = ev.seq, %reason, "Replay failed for good; a dead letter again.");
                    self.bury(std::slice::from_ref(&ev), &reason, tries)?;
                }
            }
            Ok(true)
        };
        match result {
            Try::Ok(_) => {
                self.store().remove_dead_letter(&self.name, dead.seq)?;
                self.status.dead.fetch_sub(1, Ordering::Relaxed);
                self.delivered_figures(std::slice::from_ref(&ev));
                self.replays
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&ev.seq);
                Ok(true)
            }
            Try::Gone => self.disable(format!("410 Gone for event {}", ev.seq)),
            Try::Refused { reason } => {
                warn!(connector = %self.name, seq = ev.seq, %reason, "Replay refused; a dead letter again.");
                self.bury(std::slice::from_ref(&ev), &reason, tries)?;
                Ok(true)
            }
            Try::Failed { .. } => failed(record.outcome),
        }
    }

    /// One attempt for `events`, recorded (with the cursor moved past them on a success).
    async fn attempt_once(
        &self,
        sink: &impl Sink,
        events: &[StoredEvent],
        attempt: u32,
    ) -> (Try, Attempt) {
        let seq = events.last().map_or(0, |e| e.seq);
        let started = Instant::now();
        let result = sink.attempt(events).await;
        let latency_ms = started.elapsed().as_millis() as u64;
        let outcome = match &result {
            Try::Ok(code) => format!("delivered {code}"),
            Try::Gone => "http 410 gone".to_string(),
            Try::Failed { reason, .. } => reason.clone(),
            Try::Refused { reason } => format!("refused: {reason}"),
        };
        let record = Attempt {
            seq,
            attempt,
            outcome,
            latency_ms,
            time: rfc3339(SystemTime::now()),
        };
        // A success moves the cursor in the same transaction.
        let stored = if matches!(result, Try::Ok(_)) {
            self.store().delivered(&self.name, &record)
        } else {
            self.store().record_attempt(&self.name, &record)
        };
        if let Err(e) = stored {
            warn!(connector = %self.name, error = %e, "Cannot record a delivery attempt.");
        }
        if !matches!(result, Try::Ok(_)) {
            self.status.failed.fetch_add(1, Ordering::Relaxed);
            *self.status.last_error.lock().expect("status lock") = Some(record.outcome.clone());
        }
        (result, record)
    }

    fn delivered_figures(&self, events: &[StoredEvent]) {
        self.status
            .delivered
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        for ev in events {
            if let Some(age) = self.stored_at.age(ev) {
                self.status.latency_seconds.observe(age);
            }
        }
    }

    /// One batch, with every retry of the schedule.
    async fn deliver(
        &self,
        sink: &impl Sink,
        events: &[StoredEvent],
        cancel: &CancellationToken,
    ) -> Outcome {
        let Some(seq) = events.last().map(|e| e.seq) else {
            return Outcome::Delivered;
        };
        let attempts = self
            .retry
            .retries()
            .map_or(u32::MAX, |n| n.saturating_add(1));
        let mut last = String::new();
        for attempt in 1..=attempts {
            let (result, record) = self.attempt_once(sink, events, attempt).await;
            match result {
                Try::Ok(_) => {
                    self.status.cursor.fetch_max(seq, Ordering::Relaxed);
                    self.delivered_figures(events);
                    return Outcome::Delivered;
                }
                Try::Gone => return Outcome::Disabled(format!("410 Gone for event {seq}")),
                Try::Refused { .. } => return Outcome::Dead(record.outcome, attempt),
                Try::Failed { retry_after, .. } => {
                    last = record.outcome;
                    let Some(planned) = self.retry.delay(attempt) else {
                        break;
                    };
                    self.status.retried.fetch_add(1, Ordering::Relaxed);
                    let wait = retry_after.map_or(planned, |d| d.min(MAX_RETRY_AFTER));
                    debug!(connector = %self.name, seq, attempt, reason = %last, ?wait, "Delivery failed; retrying.");
                    tokio::select! {
                        _ = cancel.cancelled() => return Outcome::Cancelled,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        Outcome::Dead(last, attempts)
    }
}

/// Delivers from `outbox` to `sink` until `cancel`: whenever an event is stored, a replay is
/// asked for, or at least every second (a missed wake-up).
pub async fn run(
    outbox: &Outbox,
    sink: &impl Sink,
    mut events: broadcast::Receiver<Arc<StoredEvent>>,
    replay: Arc<Notify>,
    cancel: CancellationToken,
) {
    let every = sink.tick_every();
    let mut tick_at = every.map(|d| tokio::time::Instant::now() + d);
    loop {
        if cancel.is_cancelled() {
            return;
        }
        match outbox.serve_once(sink, &replay, &cancel).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                warn!(connector = %outbox.name, error = %e, "Connector store error; retrying in 1 s.");
                *outbox.status.last_error.lock().expect("status lock") = Some(e.to_string());
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = events.recv() => {}
            _ = replay.notified() => outbox.queue_replay(),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::time::sleep_until(tick_at.unwrap_or_else(far_future)), if tick_at.is_some() => {
                tick_at = every.map(|d| tokio::time::Instant::now() + d);
                sink.tick().await;
            }
        }
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}

/// The HTTP client of connector `name`: `timeout` per request, no proxy, and `tls` (only
/// its CA when one is given, a client certificate for mutual TLS).
pub fn http_client(
    name: &str,
    timeout: Duration,
    tls: &TlsFile,
) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(timeout).no_proxy();
    if let Some(ca) = &tls.ca {
        let pem = std::fs::read(ca)
            .map_err(|e| anyhow::anyhow!("connector {name}: cannot read {}: {e}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| anyhow::anyhow!("connector {name}: {}: {e}", ca.display()))?;
        // Only this CA: an endpoint with a private CA is not also trusted by public ones.
        builder = builder.tls_certs_only(certs);
    }
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        let mut pem = std::fs::read(cert).map_err(|e| {
            anyhow::anyhow!("connector {name}: cannot read {}: {e}", cert.display())
        })?;
        pem.extend(std::fs::read(key).map_err(|e| {
            anyhow::anyhow!("connector {name}: cannot read {}: {e}", key.display())
        })?);
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("connector {name}: client certificate: {e}"))?;
        builder = builder.identity(identity);
    }
    Ok(builder.build()?)
}

/// An error with its sources, `: `-separated, credentials in URLs redacted.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    crate::redact::text(&s)
}

/// `Retry-After`: seconds, or an HTTP date; at most [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    let wait = match v.parse::<u64>() {
        Ok(s) => Duration::from_secs(s),
        Err(_) => httpdate::parse_http_date(v)
            .ok()?
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// A connector's `retry` schedule, each delay +-10 % so that many nodes do not retry in step.
pub fn retry_schedule(delays: Vec<Duration>) -> Backoff {
    Backoff::listed(delays).with_jitter(Jitter::spread(0.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_capped() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        // An hour (or more) cannot hold the queue: at most a minute.
        assert_eq!(MAX_RETRY_AFTER, Duration::from_secs(60));
        assert_eq!(parse_retry_after("3600"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("999999"), Some(MAX_RETRY_AFTER));
        // A date in the past: retry at once.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        let in_half_a_minute = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let d = parse_retry_after(&in_half_a_minute).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        let in_an_hour = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
        assert_eq!(parse_retry_after(&in_an_hour), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon"), None);
    }

    /// Takes only `buddygate.failover.*`; every attempt succeeds.
    struct OnlyFailovers;

    impl Sink for OnlyFailovers {
        fn wants(&self, ev: &StoredEvent) -> bool {
            ev.kind.starts_with("buddygate.failover.")
        }

        async fn attempt(&self, _: &[StoredEvent]) -> Try {
            Try::Ok(200)
        }
    }

    #[tokio::test]
    async fn skipped_events_move_the_cursor_in_one_write() {
        let dir = std::env::temp_dir().join(format!("buddygate-skip-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = Store::open(&dir).unwrap();
        let mut kinds = vec!["buddygate.path.down"; 90];
        kinds.push("buddygate.failover.completed");
        kinds.extend(["buddygate.path.up"; 5]);
        store
            .commit(&[], &kinds, |seq, _| format!("{{\"seq\":{seq}}}"))
            .unwrap();
        let status = Arc::new(ConnectorStatus::default());
        let retry = retry_schedule(vec![Duration::from_millis(10)]);
        let outbox = Outbox::open("psim", &dir, status, retry, 1).unwrap();
        let (replay, cancel) = (Notify::new(), CancellationToken::new());
        let before = outbox.store().writes();
        assert!(
            outbox
                .serve_once(&OnlyFailovers, &replay, &cancel)
                .await
                .unwrap()
        );
        // The 90 skipped: one write; the delivery and its cursor: one.
        assert_eq!(outbox.store().writes() - before, 2);
        assert_eq!(outbox.reader().cursor("psim").unwrap(), 91);
        // The 5 after it: one more.
        assert!(
            outbox
                .serve_once(&OnlyFailovers, &replay, &cancel)
                .await
                .unwrap()
        );
        assert_eq!(outbox.store().writes() - before, 3);
        assert_eq!(outbox.reader().cursor("psim").unwrap(), 96);
        assert!(
            !outbox
                .serve_once(&OnlyFailovers, &replay, &cancel)
                .await
                .unwrap()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

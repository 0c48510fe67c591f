//! WS-BaseNotification push: `wsnt:Notify` to a consumer's address.
//!
//! [`notify`] makes one delivery attempt and is what the `type = "onvif"` connector calls for
//! each batch it takes from the durable outbox (it retries from there), with a
//! WS-UsernameToken when the consumer wants one. [`notify_envelope`] builds the message. The push subscriptions of the event service (`Subscribe`) run
//! [`push`]: in memory, retried with backoff a few times, then dropped.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::header;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use super::soap;
use super::subscriptions::{Hub, Subscription, Subscriptions};
use super::topics::{Message, write_notification};

/// WS-Addressing action of `Notify`.
pub const NOTIFY_ACTION: &str = "http://docs.oasis-open.org/wsn/bw-2/NotificationConsumer/Notify";
/// Messages per `Notify` from a push subscription.
pub const PUSH_BATCH: usize = 100;
/// Attempts per batch of a push subscription before it is dropped.
pub const PUSH_ATTEMPTS: u32 = 5;
/// First retry delay of a push subscription; doubled each time, with jitter.
pub const PUSH_BACKOFF: Duration = Duration::from_millis(200);

#[derive(Debug, Error)]
pub enum NotifyError {
    #[error("{url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: the consumer answered HTTP {status}{}", fault.as_ref().map(|f| format!(" (SOAP fault: {f})")).unwrap_or_default())]
    Status {
        url: String,
        status: u16,
        /// The `Retry-After` header, as sent.
        retry_after: Option<String>,
        /// The reason of a SOAP fault in the body, if there is one.
        fault: Option<String>,
    },
}

impl NotifyError {
    /// Whether trying again later may succeed (transport errors, 408, 429 and 5xx).
    pub fn is_retryable(&self) -> bool {
        match self {
            NotifyError::Transport { .. } => true,
            NotifyError::Status { status, .. } => matches!(status, 408 | 429) || *status >= 500,
        }
    }
}

/// A WS-UsernameToken account the consumer knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// The `wsnt:Notify` envelope for `messages`, addressed (`wsa:To`) to `consumer_url`.
/// `subscription` and `producer` fill each message's `SubscriptionReference` and
/// `ProducerReference` when given.
pub fn notify_envelope(
    consumer_url: &str,
    messages: &[impl AsRef<Message>],
    subscription: Option<&str>,
    producer: Option<&str>,
) -> String {
    secured_envelope(consumer_url, messages, subscription, producer, None)
}

/// [`notify_envelope`] with a `wsse:Security` header (`PasswordDigest`) for `credentials`.
pub fn secured_envelope(
    consumer_url: &str,
    messages: &[impl AsRef<Message>],
    subscription: Option<&str>,
    producer: Option<&str>,
    credentials: Option<&Credentials>,
) -> String {
    let mut o = super::xml::XmlOut::new();
    o.open("env:Envelope", soap::ENVELOPE_NS);
    o.open("env:Header", &[]);
    if let Some(c) = credentials {
        super::auth::write_username_token(&mut o, &c.user, &c.password, SystemTime::now());
    }
    o.leaf("wsa:Action", NOTIFY_ACTION);
    o.leaf("wsa:To", consumer_url);
    o.close("env:Header");
    o.open("env:Body", &[]);
    o.open("wsnt:Notify", &[]);
    for m in messages {
        write_notification(&mut o, m.as_ref(), subscription, producer);
    }
    o.close("wsnt:Notify");
    o.close("env:Body");
    o.close("env:Envelope");
    o.finish()
}

/// POSTs one `Notify` with `messages` to `consumer_url`, with a WS-UsernameToken for
/// `credentials` when given: one attempt; 2xx is success.
pub async fn notify(
    client: &reqwest::Client,
    consumer_url: &str,
    messages: &[Message],
    credentials: Option<&Credentials>,
) -> Result<(), NotifyError> {
    let body = secured_envelope(consumer_url, messages, None, None, credentials);
    send(client, consumer_url, body).await
}

async fn send(client: &reqwest::Client, url: &str, body: String) -> Result<(), NotifyError> {
    let resp = client
        .post(url)
        .header(header::CONTENT_TYPE, soap::CONTENT_TYPE)
        .body(body)
        .send()
        .await
        .map_err(|source| NotifyError::Transport {
            url: url.to_string(),
            source,
        })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.bytes().await.unwrap_or_default();
    Err(NotifyError::Status {
        url: url.to_string(),
        status: status.as_u16(),
        retry_after,
        fault: fault_reason(&body),
    })
}

/// The `env:Reason/env:Text` of a SOAP 1.2 fault (or the `faultstring` of a SOAP 1.1 one).
fn fault_reason(body: &[u8]) -> Option<String> {
    let envelope = super::xml::parse(body).ok()?;
    let fault = envelope.child_local("Body")?.child_local("Fault")?;
    let text = match fault.child_local("Reason") {
        Some(reason) => reason.child_local("Text")?.text(),
        None => fault.child_local("faultstring")?.text(),
    };
    Some(text.trim().chars().take(200).collect())
}

/// Where a push subscription's messages say they come from.
pub struct PushAddresses {
    pub subscription: String,
    pub producer: String,
}

/// Runs a push subscription until it ends (`Unsubscribe`, expiry, shutdown): waits for
/// messages, sends them in batches, retries a failed batch with backoff and drops it after
/// [`PUSH_ATTEMPTS`].
pub async fn push(
    sub: Arc<Subscription>,
    hub: Arc<Hub>,
    subs: Arc<Subscriptions>,
    client: reqwest::Client,
    addresses: PushAddresses,
    shutdown: CancellationToken,
) {
    let Some(consumer) = sub.consumer.clone() else {
        return;
    };
    while !shutdown.is_cancelled() && !sub.expired(SystemTime::now()) {
        let Ok(batch) = sub
            .pull(&hub, Duration::from_secs(60), PUSH_BATCH, &shutdown)
            .await
        else {
            break;
        };
        if batch.is_empty() {
            continue;
        }
        let body = notify_envelope(
            &consumer,
            &batch,
            Some(&addresses.subscription),
            Some(&addresses.producer),
        );
        deliver(&sub, &client, &consumer, body, &shutdown).await;
    }
    subs.sweep(SystemTime::now());
    tracing::debug!(subscription = %sub.id, "ONVIF push subscription ended.");
}

/// One batch, with retries.
async fn deliver(
    sub: &Subscription,
    client: &reqwest::Client,
    consumer: &str,
    body: String,
    shutdown: &CancellationToken,
) {
    let mut delay = PUSH_BACKOFF;
    for attempt in 1..=PUSH_ATTEMPTS {
        match send(client, consumer, body.clone()).await {
            Ok(()) => return,
            Err(e) if attempt == PUSH_ATTEMPTS || !e.is_retryable() => {
                tracing::warn!(subscription = %sub.id, error = %e, attempt, "ONVIF Notify dropped.");
                return;
            }
            Err(e) => {
                tracing::debug!(subscription = %sub.id, error = %e, attempt, "ONVIF Notify failed; retrying.");
            }
        }
        let jitter = delay.mul_f64(fastrand::f64() * 0.5);
        tokio::select! {
            _ = tokio::time::sleep(delay + jitter) => {}
            _ = sub.ended.cancelled() => return,
            _ = shutdown.cancelled() => return,
        }
        delay *= 2;
    }
}

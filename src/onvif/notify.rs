//! WS-BaseNotification push: `wsnt:Notify` to a consumer's address.
//!
//! [`notify`] makes one delivery attempt and is what the `type = "onvif"` connector calls for
//! each batch it takes from the durable outbox (it retries from there), with a
//! WS-UsernameToken when the consumer wants one. [`notify_envelope`] builds the message;
//! [`send`] posts one. The push subscriptions of the event service (`Subscribe`) use both
//! (`api::onvif::push`).

use std::time::SystemTime;

use reqwest::header;
use thiserror::Error;

use super::messages::{Message, write_notification};
use super::soap;

/// WS-Addressing action of `Notify`.
pub const NOTIFY_ACTION: &str = "http://docs.oasis-open.org/wsn/bw-2/NotificationConsumer/Notify";

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
        super::security::write_username_token(&mut o, &c.user, &c.password, SystemTime::now());
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

/// POSTs one SOAP `body` to `url`: one attempt; 2xx is success.
pub async fn send(client: &reqwest::Client, url: &str, body: String) -> Result<(), NotifyError> {
    let resp = client
        .post(url)
        .header(header::CONTENT_TYPE, soap::CONTENT_TYPE)
        .body(body)
        .send()
        .await
        .map_err(|source| NotifyError::Transport {
            url: crate::redact::url(url),
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
        url: crate::redact::url(url),
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

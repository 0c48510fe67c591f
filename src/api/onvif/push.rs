//! Push subscriptions of the event service (`Subscribe`): each runs [`push`], in memory,
//! sending `wsnt:Notify` to its consumer, retrying a failed batch with backoff a few times,
//! then dropping it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::subscriptions::{Hub, Subscription, Subscriptions};
use crate::backoff::{Backoff, Jitter};
use crate::onvif::notify::{notify_envelope, send};

/// Messages per `Notify` from a push subscription.
pub const PUSH_BATCH: usize = 100;
/// Attempts per batch of a push subscription before it is dropped.
pub const PUSH_ATTEMPTS: u32 = 5;
/// First retry delay of a push subscription; doubled each time, plus up to half of it.
pub const PUSH_BACKOFF: Duration = Duration::from_millis(200);
/// The retry delays of a push subscription: [`PUSH_ATTEMPTS`] bounds them.
const PUSH_RETRY: Backoff =
    Backoff::doubling(PUSH_BACKOFF, Duration::MAX).with_jitter(Jitter::up_to(1.5));

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
        let delay = PUSH_RETRY.delay(attempt).unwrap_or(PUSH_BACKOFF);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = sub.ended.cancelled() => return,
            _ = shutdown.cancelled() => return,
        }
    }
}

//! `type = "onvif"`: WS-BaseNotification push to a consumer address (an I/O device, a PSIM that
//! takes `wsnt:Notify`), from the durable outbox, in order, at least once.
//!
//! Each stored event becomes ONVIF messages ([`outbox_messages`]: the ownership and server
//! state properties it changed, then its event), sent in `Notify` requests of at most `batch`
//! messages, with a WS-UsernameToken `PasswordDigest` header when `username` is set. The
//! cursor moves only after the consumer answered 2xx; everything else (an HTTP error, a SOAP
//! fault, a timeout, a consumer that is down) is retried on the `retry` schedule like a
//! webhook, by the shared [`outbox`] loop: dead letters, replay and `410 Gone` included.

mod config;

use std::path::Path;
use std::sync::Arc;

use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

pub use self::config::{MAX_BATCH, OnvifConfig, OnvifFile};
use super::outbox::{self, Outbox, Sink, Try, error_chain, http_client, parse_retry_after};
use super::{ConnectorStatus, secret_text};
use crate::config::Site;
use crate::onvif::messages::{Message, outbox_messages};
use crate::onvif::notify::{Credentials, NotifyError, notify};
use crate::store::StoredEvent;

/// A built onvif connector, ready to [`Onvif::run`].
pub struct Onvif {
    name: String,
    cfg: OnvifConfig,
    site: Arc<Site>,
    client: reqwest::Client,
    credentials: Option<Credentials>,
    outbox: Outbox,
}

impl Onvif {
    /// Reads the password, builds the HTTP client, opens the store.
    pub fn build(
        name: String,
        cfg: OnvifConfig,
        site: Arc<Site>,
        data_dir: &Path,
        status: Arc<ConnectorStatus>,
    ) -> anyhow::Result<Self> {
        let credentials = match &cfg.username {
            Some((user, password)) => Some(Credentials {
                user: user.clone(),
                password: secret_text(password, cfg.base.as_deref(), "the password")?,
            }),
            None => None,
        };
        let client = http_client(&name, cfg.timeout, &cfg.tls)?;
        let outbox = Outbox::open(
            &name,
            data_dir,
            status,
            outbox::retry_schedule(cfg.retry.clone()),
            cfg.batch,
        )?;
        Ok(Self {
            name,
            cfg,
            site,
            client,
            credentials,
            outbox,
        })
    }

    /// Measures the delivery latency from when the node stored each event.
    pub fn with_stored_at(mut self, stored_at: Arc<super::StoredAt>) -> Self {
        self.outbox.set_stored_at(stored_at);
        self
    }

    /// Delivers until `cancel`.
    pub async fn run(
        self,
        events: broadcast::Receiver<Arc<StoredEvent>>,
        replay: Arc<Notify>,
        cancel: CancellationToken,
    ) {
        info!(connector = %self.name, url = %crate::redact::url(&self.cfg.url), "ONVIF push connector running.");
        outbox::run(&self.outbox, &self, events, replay, cancel).await;
    }

    /// The messages of `events`, in order.
    fn messages(&self, events: &[StoredEvent]) -> Vec<Message> {
        events
            .iter()
            .flat_map(|e| outbox_messages(&self.site, e))
            .collect()
    }
}

impl Sink for Onvif {
    fn wants(&self, ev: &StoredEvent) -> bool {
        self.cfg.events.wants(&ev.kind) && !outbox_messages(&self.site, ev).is_empty()
    }

    /// Every message of `events`, `batch` per `Notify`; the first failure fails the attempt
    /// (a retry sends them all again: at least once, and every message carries its epoch).
    async fn attempt(&self, events: &[StoredEvent]) -> Try {
        let messages = self.messages(events);
        for chunk in messages.chunks(self.cfg.batch) {
            let send = || {
                notify(
                    &self.client,
                    &self.cfg.url,
                    chunk,
                    self.credentials.as_ref(),
                )
            };
            let mut result = send().await;
            if let Err(NotifyError::Transport { source, .. }) = &result
                && super::closed_connection(source)
            {
                debug!(connector = %self.name, error = %error_chain(source), "Notify on a closed connection; sending again.");
                result = send().await;
            }
            match result {
                Ok(()) => {}
                Err(NotifyError::Status {
                    status,
                    retry_after,
                    fault,
                    ..
                }) => {
                    let reason = match fault {
                        Some(f) => format!("http {status}: soap fault: {f}"),
                        None => format!("http {status}"),
                    };
                    let retry_after = retry_after.as_deref().and_then(parse_retry_after);
                    return Try::for_status(status, reason, retry_after);
                }
                Err(NotifyError::Transport { source, .. }) if source.is_builder() => {
                    return Try::Refused {
                        reason: format!("request: {}", error_chain(&source)),
                    };
                }
                Err(NotifyError::Transport { source, .. }) => {
                    return Try::Failed {
                        reason: if source.is_timeout() {
                            format!("timeout after {:?}", self.cfg.timeout)
                        } else {
                            format!("error: {}", error_chain(&source))
                        },
                        retry_after: None,
                    };
                }
            }
        }
        Try::Ok(200)
    }
}

//! One connection to the broker, the same to the connector whether it speaks MQTT 3.1.1
//! (`rumqttc`) or MQTT 5 (`rumqttc::v5`): a [`Link`] to queue publishes and disconnect, and a
//! channel of [`Note`]s (the CONNACK, each publish written, each PUBACK) fed by a task that polls
//! the version's event loop. The MQTT 5 properties ([`Props`]) are dropped on a 3.1.1 link.
//!
//! TLS (`mqtts://`) is a rustls client built here from the connector's `tls` files, on the
//! aws-lc-rs provider the rest of the binary (reqwest) already uses.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5 as m5;
use rumqttc::{TlsConfiguration, Transport};
use tokio::sync::mpsc;

use super::{MqttConfig, MqttProtocol};

/// The largest packet either way.
const MAX_PACKET: usize = 1 << 20;

/// The MQTT 5 properties of one publish (ignored by a 3.1.1 link).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Props {
    pub content_type: Option<&'static str>,
    pub message_expiry: Option<Duration>,
    pub user: Vec<(String, String)>,
}

/// What the event loop reported, in the connector's terms.
#[derive(Debug)]
pub enum Note {
    /// The broker accepted the connection.
    Connected,
    /// A publish went out on the wire: its packet id, 0 at QoS 0.
    Written(u16),
    /// The broker acknowledged the publish with this packet id; `Some(reason)` when it
    /// refused it (MQTT 5 reason codes).
    Acked(u16, Option<String>),
    /// The DISCONNECT went out.
    Disconnected,
    /// The broker answered the CONNECT with a refusal: why, in words an operator acts on.
    Refused(String),
    /// The connection is over: why.
    Failed(String),
}

impl Note {
    /// Whether the connection is over after this.
    pub fn is_end(&self) -> bool {
        matches!(self, Note::Refused(_) | Note::Failed(_))
    }
}

/// Everything the event loop needs to connect, besides the will and the transport.
pub struct Options {
    pub client_id: String,
    pub password: Option<String>,
    pub inflight: u16,
    pub capacity: usize,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// The Last Will: retained, QoS 1.
pub struct Will {
    pub topic: String,
    pub payload: String,
    pub props: Props,
}

/// A connected (or connecting) client of either protocol version.
pub enum Link {
    V311(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

impl Link {
    /// Starts connecting; the first [`Note`] says how it went. The poller stops at the first
    /// error or when the receiver is dropped.
    pub fn connect(
        cfg: &MqttConfig,
        o: &Options,
        will: Will,
    ) -> (Self, mpsc::Receiver<Note>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(o.capacity);
        let transport = o
            .tls
            .clone()
            .map(|c| Transport::Tls(TlsConfiguration::Rustls(c)));
        match cfg.protocol {
            MqttProtocol::V311 => {
                let mut m = rumqttc::MqttOptions::new(&o.client_id, &cfg.host, cfg.port);
                m.set_keep_alive(cfg.keep_alive);
                m.set_clean_session(true);
                m.set_inflight(o.inflight);
                m.set_request_channel_capacity(o.capacity);
                m.set_max_packet_size(MAX_PACKET, MAX_PACKET);
                if let Some(user) = &cfg.username {
                    m.set_credentials(user, o.password.clone().unwrap_or_default());
                }
                m.set_last_will(rumqttc::LastWill::new(
                    will.topic,
                    will.payload,
                    rumqttc::QoS::AtLeastOnce,
                    true,
                ));
                if let Some(t) = transport {
                    m.set_transport(t);
                }
                let (client, eventloop) = rumqttc::AsyncClient::new(m, o.capacity);
                (
                    Link::V311(client),
                    rx,
                    tokio::spawn(poll_v311(eventloop, tx)),
                )
            }
            MqttProtocol::V5 => {
                let mut m = rumqttc::v5::MqttOptions::new(&o.client_id, &cfg.host, cfg.port);
                m.set_keep_alive(cfg.keep_alive);
                m.set_clean_start(true);
                m.set_outgoing_inflight_upper_limit(o.inflight);
                m.set_request_channel_capacity(o.capacity);
                m.set_max_packet_size(Some(MAX_PACKET as u32));
                if let Some(user) = &cfg.username {
                    m.set_credentials(user, o.password.clone().unwrap_or_default());
                }
                let p = publish_properties(will.props);
                m.set_last_will(m5::LastWill::new(
                    will.topic,
                    will.payload,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    true,
                    Some(m5::LastWillProperties {
                        delay_interval: None,
                        payload_format_indicator: p.payload_format_indicator,
                        message_expiry_interval: None,
                        content_type: p.content_type,
                        response_topic: None,
                        correlation_data: None,
                        user_properties: p.user_properties,
                    }),
                ));
                if let Some(t) = transport {
                    m.set_transport(t);
                }
                let (client, eventloop) = rumqttc::v5::AsyncClient::new(m, o.capacity);
                (Link::V5(client), rx, tokio::spawn(poll_v5(eventloop, tx)))
            }
        }
    }

    /// Queues a publish; `at_least_once` is QoS 1, else QoS 0.
    pub fn try_publish(
        &self,
        topic: String,
        at_least_once: bool,
        retain: bool,
        payload: String,
        props: Props,
    ) -> Result<(), String> {
        match self {
            Link::V311(c) => {
                let qos = if at_least_once {
                    rumqttc::QoS::AtLeastOnce
                } else {
                    rumqttc::QoS::AtMostOnce
                };
                c.try_publish(topic, qos, retain, payload)
                    .map_err(|e| e.to_string())
            }
            Link::V5(c) => {
                let qos = if at_least_once {
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce
                } else {
                    rumqttc::v5::mqttbytes::QoS::AtMostOnce
                };
                c.try_publish_with_properties(
                    topic,
                    qos,
                    retain,
                    payload,
                    publish_properties(props),
                )
                .map_err(|e| e.to_string())
            }
        }
    }

    pub fn try_disconnect(&self) -> Result<(), String> {
        match self {
            Link::V311(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Link::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        }
    }
}

fn publish_properties(p: Props) -> m5::PublishProperties {
    m5::PublishProperties {
        // Every payload is UTF-8 JSON.
        payload_format_indicator: Some(1),
        message_expiry_interval: p
            .message_expiry
            .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
        user_properties: p.user,
        content_type: p.content_type.map(str::to_string),
        ..Default::default()
    }
}

/// Why a CONNACK refused us, in words an operator acts on.
fn refused(code: impl std::fmt::Debug, credentials: bool) -> String {
    if credentials {
        format!("the broker refused the credentials ({code:?})")
    } else {
        format!("the broker refused the connection ({code:?})")
    }
}

async fn poll_v311(mut eventloop: rumqttc::EventLoop, tx: mpsc::Sender<Note>) {
    use rumqttc::{ConnectReturnCode as C, ConnectionError, Event, Outgoing, Packet};
    loop {
        let note = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(a))) if a.code == C::Success => Note::Connected,
            Ok(Event::Incoming(Packet::PubAck(a))) => Note::Acked(a.pkid, None),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Note::Written(pkid),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => Note::Disconnected,
            Ok(_) => continue,
            Err(ConnectionError::ConnectionRefused(code)) => Note::Refused(refused(
                code,
                matches!(code, C::BadUserNamePassword | C::NotAuthorized),
            )),
            Err(e) => Note::Failed(e.to_string()),
        };
        let stop = note.is_end();
        if tx.send(note).await.is_err() || stop {
            return;
        }
    }
}

async fn poll_v5(mut eventloop: rumqttc::v5::EventLoop, tx: mpsc::Sender<Note>) {
    use m5::{ConnectReturnCode as C, Packet, PubAckReason as R};
    use rumqttc::Outgoing;
    use rumqttc::v5::{ConnectionError, Event};
    loop {
        let note = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(a))) if a.code == C::Success => Note::Connected,
            Ok(Event::Incoming(Packet::PubAck(a))) => Note::Acked(
                a.pkid,
                (!matches!(a.reason, R::Success | R::NoMatchingSubscribers))
                    .then(|| format!("{:?}", a.reason)),
            ),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Note::Written(pkid),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => Note::Disconnected,
            Ok(_) => continue,
            Err(ConnectionError::ConnectionRefused(code)) => Note::Refused(refused(
                code,
                matches!(
                    code,
                    C::BadUserNamePassword | C::NotAuthorized | C::BadAuthenticationMethod
                ),
            )),
            Err(e) => Note::Failed(e.to_string()),
        };
        let stop = note.is_end();
        if tx.send(note).await.is_err() || stop {
            return;
        }
    }
}

/// The rustls client for `mqtts://`: the `tls.ca` file's CAs (else the system's roots) and the
/// `tls.cert`/`tls.key` client certificate if given.
pub fn tls_client(cfg: &MqttConfig) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let mut roots = rustls::RootCertStore::empty();
    match &cfg.tls.ca {
        Some(ca) => {
            for cert in
                CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?
            {
                let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match (&cfg.tls.cert, &cfg.tls.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

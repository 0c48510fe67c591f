//! The ONVIF vocabulary buddygate speaks, shared by the API's SOAP services
//! ([`crate::api::onvif`]) and the connectors (`onvif` push, MQTT's ONVIF topics).
//!
//! - [`xml`]: reading (namespace-aware, bounded) and writing XML, with quick-xml.
//! - [`soap`]: SOAP 1.2 envelopes, the namespaces, faults.
//! - [`time`]: `xs:dateTime` and `xs:duration`.
//! - [`security`]: WS-UsernameToken `PasswordDigest`.
//! - [`topics`]: buddygate's topic set and topic expressions.
//! - [`messages`]: the notification messages made from events and snapshots.
//! - [`notify`]: `wsnt:Notify` to a consumer.

pub mod messages;
pub mod notify;
pub mod security;
pub mod soap;
pub mod time;
pub mod topics;
pub mod xml;

//! buddygate: peer-to-peer buddy-server failover for CCTV video management systems, and the
//! gateway that tells PSIMs, MQTT subscribers and ONVIF consumers where each camera went.
//!
//! # Layout
//! - [`api`]: the HTTP API: REST under `/api/v1`, server-sent events, Prometheus metrics,
//!   the dashboard, and the ONVIF device and event services (SOAP 1.2).
//! - [`config`]: the site file: serde types, id-range expansion, pure validation with
//!   `file:line:col` diagnostics, the resolved [`config::Site`].
//! - [`failover`]: the core. A clock-free, I/O-free state machine per node
//!   (`Node::handle(input, now) -> outputs`): detection, placement, epochs and claims, failback.
//! - [`agent`]: resource agents (`simulated`, `exec`, `http`) and the pool that runs their
//!   starts, stops and monitors for the runtime.
//! - [`runtime`]: the node daemon: tokio, UDP heartbeats on every path, agents, store, events.
//! - [`sim`]: many nodes in virtual time over a simulated, faulty network; used by tests and
//!   benchmarks.
//! - [`store`]: SQLite (WAL) in the node's data dir: claims, epochs, event log, outbox cursors.
//! - [`demo`]: `buddygate demo`, a whole site on this machine ([`demo_live`]: real processes;
//!   [`demo_consumers`]: the PSIM, ONVIF and MQTT consumers and the embedded broker).
//! - [`cli`]: the command line, kept thin: `main` parses and calls in here.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod backoff;
pub mod cli;
pub mod cloudevents;
pub mod config;
pub mod connectors;
pub mod demo;
pub mod failover;
pub mod onvif;
pub mod runtime;
pub mod sim;
pub mod store;
pub mod view;

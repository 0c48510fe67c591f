//! buddygate: peer-to-peer buddy-server failover for CCTV video management systems, and the
//! gateway that tells PSIMs, MQTT subscribers and ONVIF consumers where each camera went.
//!
//! # Layout
//! From the bottom up: a module imports only from those above it in this list (but for the
//! core's placement tests, which build sites with the simulator's builder).
//! - [`config`]: the site file: serde types, id-range expansion, pure validation with
//!   `file:line:col` diagnostics, loading from disk, the resolved [`config::Site`].
//! - [`failover`]: the core. A clock-free, I/O-free state machine per node
//!   (`Node::handle(input, now) -> outputs`): detection, placement, epochs and claims, failback.
//! - [`sim`]: many nodes in virtual time over a simulated, faulty network; used by tests and
//!   benchmarks.
//! - [`store`]: SQLite (WAL) in the node's data dir: claims, epochs, event log, outbox cursors.
//! - [`backoff`]: the one retry [`backoff::Backoff`] (doubling or listed, with jitter).
//! - [`redact`]: credentials out of URLs and error texts before anyone sees them.
//! - [`ratelimit`]: a warning that repeats is logged once per period, with a count.
//! - [`fds`]: the process's file-descriptor limit: raised to the hard limit at start, and the
//!   reserve the API's connections leave for agents, sockets and the store.
//! - [`cloudevents`]: the core's events as CloudEvents 1.0, the payloads DESIGN fixes.
//! - [`agent`]: resource agents (`simulated`, `exec`, `http`) and the pool that runs their
//!   starts, stops and monitors for the runtime.
//! - [`view`]: what a running node shows its readers: the core's snapshot, operator commands,
//!   the runtime's counters.
//! - [`onvif`]: the ONVIF vocabulary: XML, SOAP, WS-UsernameToken, topics, messages, `Notify`.
//! - [`connectors`]: webhook, MQTT and ONVIF push, one folder per kind (config, build, run),
//!   delivering from the durable outbox; the connector files' loader.
//! - [`api`]: the HTTP API: REST under `/api/v1`, server-sent events, Prometheus metrics,
//!   the dashboard, and the ONVIF device and event services (SOAP 1.2).
//! - [`runtime`]: the node daemon: tokio, UDP heartbeats on every path, agents, store, events.
//! - [`demo`]: `buddygate demo`, a whole site on this machine (real processes or simulated).
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
pub mod fds;
pub mod onvif;
pub mod ratelimit;
pub mod redact;
pub mod runtime;
pub mod sim;
pub mod store;
pub mod view;

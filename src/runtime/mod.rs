//! The node daemon's runtime: drives the failover core with tokio.

pub mod state;

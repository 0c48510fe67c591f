//! The failover core.

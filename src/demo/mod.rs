//! `buddygate demo`: a whole site on this machine, nothing to install.
//!
//! - [`live`]: real `buddygate run` processes on loopback (`site`) and the consumers beside
//!   them ([`consumers`]): kill a live node, show the takeover, the failback, a summary.
//! - [`simulated`]: the same story in the simulator (`--simulated`).
//!
//! Only the CLI calls in here; nothing else in the library imports the demo.

pub mod consumers;
pub mod live;
pub mod simulated;
mod site;

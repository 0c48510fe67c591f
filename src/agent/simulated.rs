//! The `simulated` agent: resources that live in memory, for the demo and tests. A start takes
//! `activation`; `fail` makes every start, or every monitor, fail. `standby` and `merge`
//! succeed and do nothing.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::{AgentError, Op, ResourceEnv};
use crate::config::FailMode;

/// The simulated resources running on this node, by (node, resource) id.
#[derive(Debug, Default)]
pub(super) struct Simulated {
    running: Mutex<HashSet<(String, String)>>,
}

impl Simulated {
    pub(super) async fn run(
        &self,
        activation: Duration,
        fail: Option<FailMode>,
        env: &ResourceEnv,
        op: Op,
    ) -> Result<(), AgentError> {
        let key = (env.node.clone(), env.resource.clone());
        match op {
            Op::Start => {
                tokio::time::sleep(activation).await;
                if fail == Some(FailMode::Start) {
                    return Err(AgentError::Simulated(op));
                }
                self.running().insert(key);
                Ok(())
            }
            Op::Stop => {
                self.running().remove(&key);
                Ok(())
            }
            // Nothing to prepare or pull back in memory.
            Op::Standby | Op::Merge => Ok(()),
            Op::Monitor if fail == Some(FailMode::Monitor) => Err(AgentError::Simulated(op)),
            Op::Monitor if self.running().contains(&key) => Ok(()),
            Op::Monitor => Err(AgentError::NotRunning),
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

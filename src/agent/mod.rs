//! Resource agents (placeholder: simulated only; the full module lands from the agents work).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{ResourceIdx, ServerIdx, Site};
use crate::failover::AgentOp;
use crate::runtime::state::Metrics;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentReport {
    Done {
        resource: ResourceIdx,
        epoch: u64,
        op: AgentOp,
        result: Result<(), String>,
    },
    MonitorFailed {
        resource: ResourceIdx,
        reason: String,
    },
}

pub struct AgentPool {
    reports: mpsc::Sender<AgentReport>,
    metrics: Arc<Metrics>,
}

impl AgentPool {
    pub fn new(
        _site: Arc<Site>,
        _node: ServerIdx,
        reports: mpsc::Sender<AgentReport>,
        metrics: Arc<Metrics>,
        _cancel: CancellationToken,
        _concurrency: usize,
    ) -> Self {
        Self { reports, metrics }
    }

    pub fn start(&self, resource: ResourceIdx, epoch: u64) {
        self.run(resource, epoch, AgentOp::Start, Duration::from_millis(20));
    }

    pub fn stop(&self, resource: ResourceIdx, epoch: u64) {
        self.run(resource, epoch, AgentOp::Stop, Duration::from_millis(5));
    }

    fn run(&self, resource: ResourceIdx, epoch: u64, op: AgentOp, took: Duration) {
        let tx = self.reports.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            tokio::time::sleep(took).await;
            metrics.agent_op(
                if op == AgentOp::Start {
                    "start"
                } else {
                    "stop"
                },
                "ok",
            );
            let _ = tx
                .send(AgentReport::Done {
                    resource,
                    epoch,
                    op,
                    result: Ok(()),
                })
                .await;
        });
    }
}

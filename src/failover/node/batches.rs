//! Batches: the claims of one takeover, failback or boot, made at one epoch, tracked until
//! each has started or failed; then `failover.completed` or `failback.completed` says what
//! came up, what failed and how long it took.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{Node, Output};
use crate::config::{ResourceIdx, ServerIdx};
use crate::failover::event::{Event, FailedResource};
use crate::failover::io::Epoch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BatchKind {
    Boot,
    Failover,
    Failback,
}

#[derive(Debug, Clone)]
struct Batch {
    kind: BatchKind,
    home: ServerIdx,
    epoch: Epoch,
    pending: BTreeSet<ResourceIdx>,
    ok: Vec<ResourceIdx>,
    failed: Vec<FailedResource>,
    since: Duration,
    started: Duration,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Batches {
    open: Vec<Batch>,
}

impl Batches {
    pub fn open(
        &mut self,
        kind: BatchKind,
        home: ServerIdx,
        epoch: Epoch,
        rs: Vec<ResourceIdx>,
        since: Duration,
        now: Duration,
    ) {
        self.open.push(Batch {
            kind,
            home,
            epoch,
            pending: rs.into_iter().collect(),
            ok: Vec::new(),
            failed: Vec::new(),
            since,
            started: now,
        });
    }
}

impl Node {
    /// `r` started (`failure` is `None`) or did not; completes its batch when it was the last.
    pub(super) fn batch_progress(
        &mut self,
        r: ResourceIdx,
        failure: Option<String>,
        now: Duration,
        out: &mut Vec<Output>,
    ) {
        let Some(i) = self
            .batches
            .open
            .iter()
            .position(|b| b.pending.contains(&r))
        else {
            return;
        };
        let b = &mut self.batches.open[i];
        b.pending.remove(&r);
        match failure {
            None => b.ok.push(r),
            Some(reason) => b.failed.push(FailedResource {
                resource: r,
                reason,
            }),
        }
        if !b.pending.is_empty() {
            return;
        }
        let b = self.batches.open.remove(i);
        match b.kind {
            BatchKind::Boot => {}
            BatchKind::Failover => {
                self.stats.takeovers += 1;
                out.push(Output::Event(Event::FailoverCompleted {
                    server: b.home,
                    new_server: self.ctx.me,
                    epoch: b.epoch,
                    resources: b.ok,
                    failed: b.failed,
                    down_since: b.since,
                    takeover: now.saturating_sub(b.since),
                }));
            }
            BatchKind::Failback => {
                self.stats.failbacks += 1;
                out.push(Output::Event(Event::FailbackCompleted {
                    server: self.ctx.me,
                    epoch: b.epoch,
                    resources: b.ok,
                    failed: b.failed,
                    duration: now.saturating_sub(b.started),
                }));
            }
        }
    }
}

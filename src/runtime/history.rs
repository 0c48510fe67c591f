//! The node's history of owners (where the footage is, [`crate::store::history`]), written
//! from its snapshots by a thread of its own: nothing on the core's task waits for it. A task
//! forwards each settled snapshot (not while the node boots) and a mark every
//! [`MARK_EVERY`]; the thread answers the intervals a failback's `merge` needs.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::agent::MergeInterval;
use crate::failover::{Epoch, ResourceState};
use crate::store::history::{History, MARK_EVERY, Owner, Seen};
use crate::view::Snapshot;

/// Old intervals are pruned this often.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

enum Msg {
    View(Arc<Snapshot>),
    Mark(SystemTime),
    Merge {
        resource: String,
        epoch: Epoch,
        at: SystemTime,
        reply: oneshot::Sender<Vec<MergeInterval>>,
    },
}

/// Asks the history thread for what a failback's `merge` needs.
#[derive(Clone)]
pub(super) struct Handle {
    tx: std::sync::mpsc::Sender<Msg>,
}

impl Handle {
    /// The intervals other owners served `resource` since this node's previous claim of it,
    /// up to `at` (when this node took it back at `epoch`). Empty when the history cannot say.
    pub(super) async fn merge_intervals(
        &self,
        resource: String,
        epoch: Epoch,
        at: SystemTime,
    ) -> Vec<MergeInterval> {
        let (reply, answer) = oneshot::channel();
        let msg = Msg::Merge {
            resource,
            epoch,
            at,
            reply,
        };
        if self.tx.send(msg).is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }
}

/// The history's thread, to wait for at the end.
pub(super) struct Thread(std::thread::JoinHandle<()>);

impl Thread {
    /// Waits (at most `limit`) until the thread has written everything: call once every
    /// [`Handle`] is dropped and the feeding task has ended.
    pub(super) async fn finish(self, limit: Duration) {
        let join = tokio::task::spawn_blocking(move || self.0.join());
        if tokio::time::timeout(limit, join).await.is_err() {
            warn!("The history of owners did not finish writing in time.");
        }
    }
}

/// Starts the history of the node in `data_dir`: its thread, and the task that feeds it from
/// `snapshots` until `cancel` (then a last view and mark; the thread ends when every
/// [`Handle`] is gone too).
pub(super) fn spawn(
    data_dir: PathBuf,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    cancel: CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> std::io::Result<(Handle, Thread)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let node = {
        let snap = snapshots.borrow();
        snap.site.server(snap.node).id.clone()
    };
    let thread = std::thread::Builder::new()
        .name("history".into())
        .spawn(move || write(data_dir, node, rx))?;
    tasks.spawn(feed(snapshots, tx.clone(), cancel));
    Ok((Handle { tx }, Thread(thread)))
}

/// Forwards settled snapshots and marks.
async fn feed(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    tx: std::sync::mpsc::Sender<Msg>,
    cancel: CancellationToken,
) {
    let mut mark = tokio::time::interval(MARK_EVERY);
    mark.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let msg = tokio::select! {
            () = cancel.cancelled() => break,
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break;
                }
                let snap = snapshots.borrow_and_update().clone();
                if snap.booting {
                    continue;
                }
                Msg::View(snap)
            }
            _ = mark.tick() => Msg::Mark(SystemTime::now()),
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
    // The last view and a last mark: a clean stop leaves the history current.
    let snap = snapshots.borrow().clone();
    if !snap.booting {
        let _ = tx.send(Msg::View(snap));
    }
    let _ = tx.send(Msg::Mark(SystemTime::now()));
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The thread: opens the history, then applies what it is sent until every sender is gone.
fn write(data_dir: PathBuf, node: String, rx: std::sync::mpsc::Receiver<Msg>) {
    let mut history = match History::open(&data_dir, &node, unix_ms(SystemTime::now())) {
        Ok(h) => h,
        Err(e) => {
            warn!(error = %e, "Cannot open the history of owners; GET /resources/{{id}}/history and merges go without it.");
            // Answer merges with nothing.
            for msg in rx {
                if let Msg::Merge { reply, .. } = msg {
                    let _ = reply.send(Vec::new());
                }
            }
            return;
        }
    };
    let mut last_prune = SystemTime::now();
    for msg in rx {
        let result = match msg {
            Msg::View(snap) => observe(&mut history, &snap),
            Msg::Mark(at) => {
                let mut r = history.mark(unix_ms(at));
                if at.duration_since(last_prune).unwrap_or_default() >= PRUNE_EVERY {
                    last_prune = at;
                    r = r.and_then(|()| history.prune_old(unix_ms(at)));
                }
                r
            }
            Msg::Merge {
                resource,
                epoch,
                at,
                reply,
            } => {
                let _ = reply.send(merge_intervals(&history, resource, epoch, at));
                Ok(())
            }
        };
        if let Err(e) = result {
            warn!(error = %e, "Cannot write the history of owners.");
        }
    }
    debug!("History closed.");
}

/// One snapshot into the history: each resource's active owner and epoch.
fn observe(history: &mut History, snap: &Snapshot) -> Result<(), crate::store::StoreError> {
    let site = &snap.site;
    let addresses: Vec<String> = site.servers.iter().map(|s| s.address.to_string()).collect();
    let seen = snap.resources.iter().filter_map(|v| {
        let resource = site.resources.get(usize::try_from(v.resource.0).ok()?)?;
        let owner = match (v.state, v.owner) {
            (ResourceState::Active, Some(o)) => {
                let i = usize::from(o.0);
                let server = site.servers.get(i)?;
                // Its own start from a standby covers from an earlier instant: the one it was
                // told, or when the standby was ready if that is later (a warm standby).
                let covered_from = (o == snap.node)
                    .then(|| snap.agents.last.get(&v.resource).and_then(|l| l.0))
                    .flatten()
                    .filter(|t| t.ok && t.epoch == v.epoch && t.from_standby)
                    .and_then(|t| Some(t.cover_from?.max(t.standby_ready?)))
                    .map(unix_ms);
                Some(Owner {
                    id: server.id.as_str(),
                    address: addresses[i].as_str(),
                    epoch: v.epoch,
                    covered_from,
                })
            }
            _ => None,
        };
        Some(Seen {
            resource: resource.id.as_str(),
            owner,
        })
    });
    history.observe(unix_ms(snap.taken_at), seen)
}

fn merge_intervals(
    history: &History,
    id: String,
    epoch: Epoch,
    at: SystemTime,
) -> Vec<MergeInterval> {
    match history.merge_intervals(&id, epoch, unix_ms(at)) {
        Ok(intervals) => intervals
            .into_iter()
            .filter_map(|i| {
                let address: IpAddr = i.address.parse().ok()?;
                Some(MergeInterval {
                    from: SystemTime::UNIX_EPOCH + Duration::from_millis(i.from_ms),
                    to: SystemTime::UNIX_EPOCH + Duration::from_millis(i.to_ms?),
                    server: i.owner,
                    address,
                })
            })
            .collect(),
        Err(e) => {
            warn!(resource = %id, error = %e, "Cannot read the history for a merge.");
            Vec::new()
        }
    }
}

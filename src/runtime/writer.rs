//! The store writer: a thread of its own that owns the node's [`Store`]. The core hands it the
//! durable records and events of each step and goes on, so heartbeats never wait for a disk;
//! what must wait for them (agent starts and stops, rule 4) waits for its ticket. Jobs are
//! committed in order, one transaction (one fsync) each.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

use crate::failover::Event;
use crate::store::{Record, Store, StoreError, StoredEvent};

/// What one step of the core needs stored.
pub(super) struct Job {
    pub ticket: u64,
    pub records: Vec<Record>,
    pub events: Vec<PendingEvent>,
}

/// Builds an event's CloudEvent once its sequence number is known.
pub(super) type BuildJson = Box<dyn FnOnce(u64) -> String + Send>;

/// An event to store.
pub(super) struct PendingEvent {
    pub event: Event,
    pub json: BuildJson,
}

/// A job committed (or not).
pub(super) struct Done {
    pub ticket: u64,
    pub result: Result<Vec<(Event, StoredEvent)>, StoreError>,
}

/// Starts the writer. It ends when every sender of jobs is dropped. With `stall`, it waits
/// before each commit while that file exists (fault injection for tests of a slow disk).
pub(super) fn spawn(
    mut store: Store,
    stall: Option<PathBuf>,
) -> std::io::Result<(mpsc::UnboundedSender<Job>, mpsc::UnboundedReceiver<Done>)> {
    let (jobs_tx, mut jobs) = mpsc::unbounded_channel::<Job>();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || {
            while let Some(job) = jobs.blocking_recv() {
                if let Some(file) = &stall {
                    while file.exists() {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                let result = commit(&mut store, job.records, job.events);
                if done_tx
                    .send(Done {
                        ticket: job.ticket,
                        result,
                    })
                    .is_err()
                {
                    warn!("The node stopped listening to its store writer.");
                    return;
                }
            }
        })?;
    Ok((jobs_tx, done_rx))
}

fn commit(
    store: &mut Store,
    records: Vec<Record>,
    events: Vec<PendingEvent>,
) -> Result<Vec<(Event, StoredEvent)>, StoreError> {
    let kinds: Vec<&str> = events.iter().map(|e| e.event.type_name()).collect();
    let mut builders: Vec<Option<BuildJson>> = Vec::new();
    let mut evs = Vec::with_capacity(events.len());
    for e in events {
        builders.push(Some(e.json));
        evs.push(e.event);
    }
    let stored = store.commit(&records, &kinds, |seq, i| {
        (builders[i].take().expect("each event built once"))(seq)
    })?;
    Ok(evs.into_iter().zip(stored).collect())
}

//! Durable node state in SQLite (bundled, WAL, `synchronous = FULL`): the boot counter, claims
//! and epochs, the event log, and each connector's cursor into it (the outbox).
//!
//! [`history`]: each resource's owners over time (where the footage is), written by its own
//! connection; its tables are created here with the others (the hook in [`Store::open`]).
//!
//! One [`Store`] is written by the task that owns the failover core, so a claim is on disk
//! before its agent starts (DESIGN rule 4). Readers (the API, connectors) open their own
//! connections with [`Store::open_reader`]; WAL lets them read while the core writes.

pub mod history;
mod outbox;
mod state;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot create data dir {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

/// One event as stored: its sequence number, type and CloudEvent JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: u64,
    pub kind: String,
    pub json: String,
}

/// A claim as stored, by resource id (ids survive a change of the site file; indices don't).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredClaim {
    pub resource: String,
    pub epoch: u64,
    pub held: bool,
}

pub use outbox::{Attempt, DeadLetter, Reader};
pub use state::{NodeState, Record, StoredHold};

pub struct Store {
    conn: Connection,
    path: PathBuf,
    last_seq: u64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS claims (
    resource TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL,
    held INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (connector TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    connector TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    reason TEXT NOT NULL,
    time TEXT NOT NULL,
    replay INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (connector, seq)
);
CREATE TABLE IF NOT EXISTS connector_state (
    connector TEXT PRIMARY KEY,
    disabled_reason TEXT
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    connector TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    latency_ms INTEGER NOT NULL,
    time TEXT NOT NULL
);
";

impl Store {
    /// Opens (or creates) `dir/node.db`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("node.db");
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        conn.execute_batch(state::SCHEMA).map_err(err)?;
        // Hook: the history's tables (src/store/history.rs).
        conn.execute_batch(history::SCHEMA).map_err(err)?;
        let last_seq: u64 = conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
            .map_err(err)?;
        Ok(Self {
            conn,
            path,
            last_seq,
        })
    }

    /// Opens the store for a connector: its cursor, dead letters and attempts. Commits are
    /// `synchronous = NORMAL`: durable across a crash of the process (WAL), not of the machine,
    /// where the worst case is a delivery repeated with the same id.
    pub fn open_for_connector(dir: &Path) -> Result<Self, StoreError> {
        let s = Self::open(dir)?;
        s.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| s.err(e))?;
        Ok(s)
    }

    /// A read-only connection to the same store, for the API and connectors.
    pub fn open_reader(dir: &Path) -> Result<Reader, StoreError> {
        let path = dir.join("node.db");
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Sqlite {
            path: path.clone(),
            source,
        })?;
        let _ = conn.busy_timeout(std::time::Duration::from_secs(5));
        Ok(Reader { conn, path })
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The incarnation of this boot: above every earlier one, and at least `wall_ms` so that
    /// a node whose data dir was wiped still moves forward as long as its clock does.
    pub fn next_incarnation(&mut self, wall_ms: u64) -> Result<u64, StoreError> {
        let prev: u64 = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'incarnation'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?
            .unwrap_or(0);
        let next = (prev + 1).max(wall_ms);
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES ('incarnation', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![next],
            )
            .map_err(|e| self.err(e))?;
        Ok(next)
    }

    pub fn claims(&self) -> Result<Vec<StoredClaim>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT resource, epoch, held FROM claims ORDER BY resource")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(StoredClaim {
                    resource: r.get(0)?,
                    epoch: r.get(1)?,
                    held: r.get::<_, i64>(2)? != 0,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Writes claims in one transaction; durable when this returns.
    pub fn persist_claims(&mut self, claims: &[StoredClaim]) -> Result<(), StoreError> {
        let records: Vec<Record> = claims
            .iter()
            .map(|c| Record::Claim {
                resource: c.resource.clone(),
                epoch: c.epoch,
                held: c.held,
            })
            .collect();
        self.commit(&records, &[], |_, _| unreachable!("no events"))
            .map(|_| ())
    }

    /// The sequence number the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.last_seq + 1
    }

    /// Appends an event; `json` is built knowing its sequence number (its id carries it).
    pub fn append_event(
        &mut self,
        kind: &str,
        json: impl FnOnce(u64) -> String,
    ) -> Result<StoredEvent, StoreError> {
        let mut json = Some(json);
        let mut stored = self.commit(&[], &[kind], |seq, _| {
            (json.take().expect("one event"))(seq)
        })?;
        Ok(stored.pop().expect("one event stored"))
    }

    /// Stores durable records (claims, epochs, holds, ...) and events in one transaction, so
    /// one fsync makes all of them durable: all or nothing. Events are numbered on from the
    /// last one; `json(seq, i)` builds the i-th.
    pub fn commit(
        &mut self,
        records: &[Record],
        kinds: &[&str],
        mut json: impl FnMut(u64, usize) -> String,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let mut stored = Vec::with_capacity(kinds.len());
        {
            for rec in records {
                state::write(&tx, rec).map_err(err)?;
            }
            let mut event = tx
                .prepare_cached("INSERT INTO events (seq, type, json) VALUES (?1, ?2, ?3)")
                .map_err(err)?;
            for (i, kind) in kinds.iter().enumerate() {
                let seq = self.last_seq + 1 + i as u64;
                let json = json(seq, i);
                event.execute(params![seq, kind, json]).map_err(err)?;
                stored.push(StoredEvent {
                    seq,
                    kind: kind.to_string(),
                    json,
                });
            }
        }
        tx.commit().map_err(err)?;
        self.last_seq += kinds.len() as u64;
        Ok(stored)
    }

    pub fn reader(&self) -> Result<Reader, StoreError> {
        Self::open_reader(self.path.parent().unwrap_or(Path::new(".")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("buddygate-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn claims_events_and_incarnations_survive_reopening() {
        let dir = tmp("reopen");
        {
            let mut s = Store::open(&dir).unwrap();
            assert_eq!(s.next_incarnation(5).unwrap(), 5);
            assert_eq!(s.next_incarnation(1).unwrap(), 6);
            s.persist_claims(&[
                StoredClaim {
                    resource: "cam-1".into(),
                    epoch: 298,
                    held: true,
                },
                StoredClaim {
                    resource: "cam-2".into(),
                    epoch: 199,
                    held: false,
                },
            ])
            .unwrap();
            s.persist_claims(&[StoredClaim {
                resource: "cam-1".into(),
                epoch: 397,
                held: true,
            }])
            .unwrap();
            let e = s
                .append_event("buddygate.server.down", |seq| format!("{{\"seq\":{seq}}}"))
                .unwrap();
            assert_eq!(e.seq, 1);
            s.append_event("buddygate.server.up", |seq| format!("{{\"seq\":{seq}}}"))
                .unwrap();
            s.set_cursor("psim", 1).unwrap();
        }
        let mut s = Store::open(&dir).unwrap();
        assert_eq!(s.next_incarnation(0).unwrap(), 7);
        assert_eq!(
            s.claims().unwrap(),
            vec![
                StoredClaim {
                    resource: "cam-1".into(),
                    epoch: 397,
                    held: true
                },
                StoredClaim {
                    resource: "cam-2".into(),
                    epoch: 199,
                    held: false
                },
            ]
        );
        assert_eq!(s.next_seq(), 3);
        let r = s.reader().unwrap();
        let events = r.events_after(1, 10).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].seq, 2);
        assert_eq!(events[0].json, "{\"seq\":2}");
        assert_eq!(r.cursor("psim").unwrap(), 1);
        assert_eq!(r.cursor("other").unwrap(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_commit_stores_claims_and_events_together_or_not_at_all() {
        let dir = tmp("commit");
        let claim = |epoch| Record::Claim {
            resource: "cam-1".into(),
            epoch,
            held: true,
        };
        let mut s = Store::open(&dir).unwrap();
        let stored = s
            .commit(&[claim(199)], &["a", "b"], |seq, i| format!("{seq}/{i}"))
            .unwrap();
        assert_eq!(
            stored
                .iter()
                .map(|e| (e.seq, e.json.as_str()))
                .collect::<Vec<_>>(),
            [(1, "1/0"), (2, "2/1")]
        );
        // Make the second event's insert fail (seq 2 is taken): the claim must not land either.
        s.last_seq = 0;
        assert!(
            s.commit(&[claim(298)], &["c", "d"], |seq, _| seq.to_string())
                .is_err()
        );
        assert_eq!(
            s.claims().unwrap(),
            vec![StoredClaim {
                resource: "cam-1".into(),
                epoch: 199,
                held: true
            }]
        );
        s.last_seq = 2;
        drop(s);
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.next_seq(), 3);
        assert_eq!(s.reader().unwrap().events_after(0, 10).unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

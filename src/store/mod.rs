//! Durable node state in SQLite (bundled, WAL, `synchronous = FULL`): the boot counter, claims
//! and epochs, the event log, and each connector's cursor into it (the outbox).
//!
//! [`history`]: each resource's owners over time (where the footage is), written by its own
//! connection; its tables are created here with the others (the hook in [`Store::open`]).
//!
//! One [`Store`] is written by the task that owns the failover core, so a claim is on disk
//! before its agent starts (DESIGN rule 4). Readers (the API, connectors) open their own
//! connections with [`Store::open_reader`]; WAL lets them read while the core writes.
//!
//! - [`schema`]: the layout, versioned, and the migrations from every earlier one (how to add a
//!   table is written there);
//! - [`state`]: the failover core's durable records;
//! - [`outbox`]: cursors, dead letters, delivery attempts, and the read-only [`Reader`];
//! - [`maintenance`]: what keeps a store that runs for years bounded: retention of the event
//!   log in small batches, WAL checkpoints.
//!
//! What stays here (~420 lines, the rest its tests) is opening a store, its connections and the
//! writes every part shares.

pub mod history;
mod maintenance;
mod outbox;
pub mod schema;
mod state;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

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
    #[error("store {path}: {source}")]
    Migrate {
        path: PathBuf,
        source: schema::MigrateError,
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

pub use maintenance::{BATCH_BUDGET, Checkpointer, Pruned, Pruner, Retention};
pub use outbox::{Attempt, DeadLetter, Reader};
pub use state::{NodeState, Record, RecordSet, StoredHold};

pub struct Store {
    conn: Connection,
    path: PathBuf,
    last_seq: u64,
    /// Where the next pruning batch looks from (see [`maintenance`]).
    prune_from: u64,
    /// Delivery attempts recorded per connector since its attempts were last trimmed.
    since_trim: std::collections::HashMap<String, u32>,
    /// Write transactions committed on this connection (for tests of how often it writes).
    writes: u64,
}

/// After a checkpoint that emptied it, the WAL file is truncated back to this size: to
/// nothing, so that the WAL never holds disk space it does not use, and a disk that filled up
/// meanwhile shows on the next write (a write into space the WAL already held would succeed,
/// and the disk would be found full only later, at a checkpoint).
pub const JOURNAL_SIZE_LIMIT: i64 = 0;

/// A read-only connection to `dir`'s store (the API, connectors, the history's readers).
fn connect_read_only(dir: &Path) -> Result<(Connection, PathBuf), StoreError> {
    let path = dir.join("node.db");
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| StoreError::Sqlite {
        path: path.clone(),
        source,
    })?;
    let _ = conn.busy_timeout(Duration::from_secs(5));
    Ok((conn, path))
}

/// A connection to `path` in WAL mode, `synchronous = FULL`, with the journal size limit.
fn connect(path: &Path) -> Result<Connection, StoreError> {
    let err = |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err)?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)
        .map_err(err)?;
    Ok(conn)
}

/// Bytes free for this process on the filesystem of `dir` (`None` where unknown).
pub fn free_bytes(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        let st = rustix::fs::statvfs(dir).ok()?;
        Some(st.f_bavail.saturating_mul(st.f_frsize))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// Wall-clock ms since the Unix epoch (0 before it).
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (or creates) `dir/node.db`, migrating it to this build's layout
    /// ([`schema::VERSION`]). Writes nothing to a store that is already up to date.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("node.db");
        let mut conn = connect(&path)?;
        schema::migrate(&mut conn).map_err(|source| StoreError::Migrate {
            path: path.clone(),
            source,
        })?;
        let last_seq: u64 = conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
            .map_err(|source| StoreError::Sqlite {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            conn,
            path,
            last_seq,
            prune_from: 0,
            since_trim: Default::default(),
            writes: 0,
        })
    }

    /// Opens the store for the node's own writer: as [`Store::open`], without automatic WAL
    /// checkpoints (a [`Checkpointer`] on a connection of its own does them, so that no
    /// commit of the core's waits for one).
    pub fn open_for_writer(dir: &Path) -> Result<Self, StoreError> {
        let s = Self::open(dir)?;
        s.conn
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| s.err(e))?;
        Ok(s)
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
        let (conn, path) = connect_read_only(dir)?;
        Ok(Reader { conn, path })
    }

    /// A read-only view of a store that was closed cleanly (no WAL to read), that neither
    /// writes nor creates a file: what a node starting on a full disk can still read (a
    /// normal reader must create the WAL index).
    pub fn open_closed(dir: &Path) -> Result<Reader, StoreError> {
        let path = dir.join("node.db");
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let wal = dir.join("node.db-wal");
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
            // Committed transactions may wait in the WAL: the file alone is not the store.
            return Err(err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some("the store has a write-ahead log to read".into()),
            )));
        }
        let mut uri = String::from("file:");
        for b in path.to_string_lossy().bytes() {
            match b {
                b'?' | b'#' | b'%' | 0x80.. => uri.push_str(&format!("%{b:02X}")),
                _ => uri.push(b as char),
            }
        }
        uri.push_str("?immutable=1");
        let conn = Connection::open_with_flags(
            &uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(err)?;
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
        json: impl FnMut(u64, usize) -> String,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.commit_at(records, kinds, json, SystemTime::now())
    }

    /// [`Store::commit`], the events stored at wall-clock `at` (retention counts from it): for
    /// a benchmark that runs a year in minutes.
    pub fn commit_at(
        &mut self,
        records: &[Record],
        kinds: &[&str],
        mut json: impl FnMut(u64, usize) -> String,
        at: SystemTime,
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
                .prepare_cached(
                    "INSERT INTO events (seq, type, json, stored_ms) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(err)?;
            let stored_ms = unix_ms(at);
            for (i, kind) in kinds.iter().enumerate() {
                let seq = self.last_seq + 1 + i as u64;
                let json = json(seq, i);
                event
                    .execute(params![seq, kind, json, stored_ms])
                    .map_err(err)?;
                stored.push(StoredEvent {
                    seq,
                    kind: kind.to_string(),
                    json,
                });
            }
        }
        tx.commit().map_err(err)?;
        self.writes += 1;
        self.last_seq += kinds.len() as u64;
        Ok(stored)
    }

    pub fn reader(&self) -> Result<Reader, StoreError> {
        Self::open_reader(self.path.parent().unwrap_or(Path::new(".")))
    }

    /// The stored incarnation, without moving it (for a node that cannot write).
    pub fn incarnation(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'incarnation'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map(Option::unwrap_or_default)
            .map_err(|e| self.err(e))
    }

    /// A small real write (the time of the last probe in `meta`): whether the store takes
    /// writes, when there is nothing else to write.
    pub fn probe_write(&mut self) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES ('last_probe', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![unix_ms(SystemTime::now())],
            )
            .map_err(|e| self.err(e))?;
        self.writes += 1;
        Ok(())
    }

    /// Write transactions committed on this connection so far.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// The file of the store.
    pub fn path(&self) -> &Path {
        &self.path
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

    #[test]
    fn a_store_of_the_last_release_opens_with_its_claims_and_epochs() {
        let dir = tmp("release1");
        std::fs::create_dir_all(&dir).unwrap();
        {
            // The last release's layout, exactly as its SCHEMA created it (no version).
            let c = Connection::open(dir.join("node.db")).unwrap();
            c.pragma_update(None, "journal_mode", "WAL").unwrap();
            c.execute_batch(schema::STEPS[0].sql).unwrap();
            c.execute_batch(
                "INSERT INTO meta (key, value) VALUES ('incarnation', 1795565600000);
                 INSERT INTO claims (resource, epoch, held) VALUES ('cam-1', 298, 1);
                 INSERT INTO events (seq, type, json) VALUES (1, 'buddygate.server.down', '{}');
                 INSERT INTO cursors (connector, seq) VALUES ('psim', 1);",
            )
            .unwrap();
        }
        let mut s = Store::open(&dir).unwrap();
        let state = s.node_state().unwrap();
        assert_eq!(
            state.claims,
            [StoredClaim {
                resource: "cam-1".into(),
                epoch: 298,
                held: true
            }]
        );
        assert_eq!(s.next_seq(), 2);
        assert_eq!(s.next_incarnation(0).unwrap(), 1_795_565_600_001);
        assert_eq!(s.reader().unwrap().cursor("psim").unwrap(), 1);
        s.persist_claims(&[StoredClaim {
            resource: "cam-1".into(),
            epoch: 397,
            held: true,
        }])
        .unwrap();
        drop(s);
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.node_state().unwrap().known, [("cam-1".to_string(), 397)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn delivery_attempts_are_bounded_per_connector() {
        let dir = tmp("attempts");
        let mut s = Store::open_for_connector(&dir).unwrap();
        let a = |seq| Attempt {
            seq,
            attempt: 1,
            outcome: "http 503".into(),
            latency_ms: 1,
            time: "2026-11-25T00:00:00.000Z".into(),
        };
        for seq in 0..2_500 {
            s.record_attempt("psim", &a(seq)).unwrap();
            if seq % 10 == 0 {
                s.delivered("bus", &a(seq)).unwrap();
            }
        }
        let count = |c: &str| -> u64 {
            s.conn
                .query_row(
                    "SELECT COUNT(*) FROM deliveries WHERE connector = ?1",
                    params![c],
                    |r| r.get(0),
                )
                .unwrap()
        };
        let psim = count("psim");
        assert!((1000..1100).contains(&psim), "{psim}");
        assert_eq!(count("bus"), 250);
        let newest = s.reader().unwrap().attempts("psim", 1).unwrap();
        assert_eq!(newest[0].seq, 2_499);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

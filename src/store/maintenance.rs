//! What keeps a store that runs for years bounded.
//!
//! - **Retention** ([`Store::prune`]): an event goes once every connector's cursor has passed
//!   it *and* it is older than the retention (`[store] retention`); an event that is a dead
//!   letter stays while the dead letter does, and a dead letter goes once it is older than the
//!   retention. Past the size limit (`[store] max_size`) the oldest events go whatever their
//!   state, and the caller is told how many were not delivered yet. Each call is one small
//!   transaction (at most `limit` events): the store writer runs them between the core's jobs,
//!   so a job never waits for more than one batch.
//! - **Delivery attempts** are trimmed to the newest [`super::outbox::KEEP_ATTEMPTS`] per
//!   connector as they are written (see `outbox.rs`).
//! - **WAL checkpoints** ([`Checkpointer`]): passive, on a connection of their own, so that the
//!   writer never waits for one; the WAL file is truncated back to
//!   [`super::JOURNAL_SIZE_LIMIT`] (nothing) once a checkpoint emptied it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, params};

use super::{Store, StoreError, connect, unix_ms};

/// How long events and dead letters are kept, and how big the store may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Events and dead letters are kept at least this long.
    pub keep: Duration,
    /// The store's pages in use (the file, less its free pages) stay below this: past it, the
    /// oldest events go whatever their state.
    pub max_size: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            keep: Duration::from_secs(30 * 86_400),
            max_size: 1 << 30,
        }
    }
}

/// What one call of [`Store::prune`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Events deleted.
    pub events: u64,
    /// Of those, events some connector had not handled yet (deleted for the size limit).
    pub undelivered: u64,
    /// Dead letters deleted (older than the retention, or their event gone for the size limit).
    pub dead_letters: u64,
    /// Whether there is more to do at once.
    pub more: bool,
}

impl Store {
    /// Bytes of the store in use: its pages less the free ones.
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        let q = |sql: &str| -> Result<u64, StoreError> {
            self.conn
                .query_row(sql, [], |r| r.get::<_, u64>(0))
                .map_err(|e| self.err(e))
        };
        let pages = q("PRAGMA page_count")?;
        let free = q("PRAGMA freelist_count")?;
        Ok(pages.saturating_sub(free) * q("PRAGMA page_size")?)
    }

    /// How far every connector in `connectors` has handled the log: the lowest cursor (0 for
    /// one that has none yet). With no connector, everything has been handled.
    fn handled(&self, connectors: &[String]) -> Result<u64, StoreError> {
        let mut low = u64::MAX;
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq FROM cursors WHERE connector = ?1")
            .map_err(|e| self.err(e))?;
        for c in connectors {
            let seq: u64 = stmt.query_row(params![c], |r| r.get(0)).unwrap_or_default();
            low = low.min(seq);
        }
        Ok(low)
    }

    /// Starts a new pass over the log (dead letters may have gone since the last one).
    pub fn restart_pruning(&mut self) {
        self.prune_from = 0;
    }

    /// One batch of retention at wall-clock `now`, at most `limit` events, in one transaction.
    /// `connectors` are the connectors the node runs: a cursor of one it no longer runs does
    /// not hold events back.
    pub fn prune(
        &mut self,
        policy: &Retention,
        connectors: &[String],
        now: SystemTime,
        limit: usize,
    ) -> Result<Pruned, StoreError> {
        // Pruning need not survive a power cut (it runs again): no fsync of its own. The
        // connection's own setting (FULL for the writer, NORMAL for a connector) comes back.
        let own: i64 = self
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| self.err(e))?;
        let done = self.prune_batch(policy, connectors, now, limit);
        self.conn
            .pragma_update(None, "synchronous", own)
            .map_err(|e| self.err(e))?;
        done
    }

    fn prune_batch(
        &mut self,
        policy: &Retention,
        connectors: &[String],
        now: SystemTime,
        limit: usize,
    ) -> Result<Pruned, StoreError> {
        let handled = self.handled(connectors)?;
        let over = self.used_bytes()? > policy.max_size;
        let cutoff = now
            .checked_sub(policy.keep)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let limit = limit.max(1) as i64;
        let tx = self.conn.transaction().map_err(err)?;
        let mut done = Pruned::default();
        if over {
            // The oldest events, whatever their state.
            let upto: Option<u64> = tx
                .query_row(
                    "SELECT MAX(seq) FROM (SELECT seq FROM events ORDER BY seq LIMIT ?1)",
                    params![limit],
                    |r| r.get(0),
                )
                .map_err(err)?;
            if let Some(upto) = upto {
                done.undelivered = tx
                    .query_row(
                        "SELECT COUNT(*) FROM events WHERE seq > ?1 AND seq <= ?2",
                        params![handled.min(i64::MAX as u64), upto],
                        |r| r.get(0),
                    )
                    .map_err(err)?;
                done.events = tx
                    .execute("DELETE FROM events WHERE seq <= ?1", params![upto])
                    .map_err(err)? as u64;
                done.dead_letters = tx
                    .execute("DELETE FROM dead_letters WHERE seq <= ?1", params![upto])
                    .map_err(err)? as u64;
                done.more = true;
            }
        } else {
            // Dead letters older than the retention: their events may go too.
            let cutoff_text = crate::cloudevents::rfc3339(cutoff);
            done.dead_letters = tx
                .execute(
                    "DELETE FROM dead_letters WHERE rowid IN
                         (SELECT rowid FROM dead_letters WHERE time < ?1 LIMIT ?2)",
                    params![cutoff_text, limit],
                )
                .map_err(err)? as u64;
            if done.dead_letters > 0 {
                self.prune_from = 0;
            }
            // The oldest events after the last pass's position, up to the first one still
            // needed for its age; dead letters' events stay.
            let cutoff_ms = unix_ms(cutoff);
            let rows: Vec<(u64, u64)> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT seq, stored_ms FROM events WHERE seq > ?1 AND seq <= ?2
                         ORDER BY seq LIMIT ?3",
                    )
                    .map_err(err)?;
                stmt.query_map(
                    params![self.prune_from, handled.min(i64::MAX as u64), limit],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(err)?
                .collect::<Result<_, _>>()
                .map_err(err)?
            };
            let young = rows.iter().position(|&(_, ms)| ms >= cutoff_ms);
            let old = &rows[..young.unwrap_or(rows.len())];
            if let Some(&(upto, _)) = old.last() {
                done.events = tx
                    .execute(
                        "DELETE FROM events WHERE seq > ?1 AND seq <= ?2
                         AND seq NOT IN (SELECT seq FROM dead_letters)",
                        params![self.prune_from, upto],
                    )
                    .map_err(err)? as u64;
                self.prune_from = upto;
            }
            done.more =
                young.is_none() && rows.len() as i64 == limit || done.dead_letters as i64 == limit;
        }
        if done.events == 0 && done.dead_letters == 0 {
            // Nothing changed: no commit to pay for.
            drop(tx);
            return Ok(done);
        }
        tx.commit().map_err(err)?;
        self.writes += 1;
        Ok(done)
    }
}

/// What one pruning batch should take at most: the batch size adapts to it.
pub const BATCH_BUDGET: Duration = Duration::from_millis(2);

/// Retention in passes of small batches, each sized to take about [`BATCH_BUDGET`] (it halves
/// when a batch took longer, doubles when one took under a quarter of it). The store writer
/// runs one step between two of the core's jobs; the benchmark runs the same steps.
#[derive(Debug, Clone)]
pub struct Pruner {
    pub policy: Retention,
    /// The connectors the node runs.
    pub connectors: Vec<String>,
    limit: usize,
    in_pass: bool,
}

impl Pruner {
    pub fn new(policy: Retention, connectors: Vec<String>) -> Self {
        Self {
            policy,
            connectors,
            limit: 256,
            in_pass: false,
        }
    }

    /// Whether a pass is under way (more steps to take at once).
    pub fn in_pass(&self) -> bool {
        self.in_pass
    }

    /// The events the next batch may delete at most.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// One batch at wall-clock `now` (starting a pass if none is under way): what it did and
    /// how long it took. The pass ends when a batch finds nothing more to do.
    pub fn step(
        &mut self,
        store: &mut Store,
        now: SystemTime,
    ) -> Result<(Pruned, Duration), StoreError> {
        if !self.in_pass {
            self.in_pass = true;
            store.restart_pruning();
        }
        let t0 = std::time::Instant::now();
        let result = store.prune(&self.policy, &self.connectors, now, self.limit);
        let took = t0.elapsed();
        let done = match result {
            Ok(done) => done,
            Err(e) => {
                self.in_pass = false;
                return Err(e);
            }
        };
        if took > BATCH_BUDGET {
            self.limit = (self.limit / 2).max(16);
        } else if took < BATCH_BUDGET / 4 && done.more {
            self.limit = (self.limit * 2).min(8192);
        }
        self.in_pass = done.more;
        Ok((done, took))
    }
}

/// WAL checkpoints on a connection of their own.
pub struct Checkpointer {
    conn: Connection,
    path: PathBuf,
}

/// What one checkpoint found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Frames in the WAL.
    pub log: i64,
    /// Of those, frames copied into the database.
    pub checkpointed: i64,
}

impl Checkpointer {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("node.db");
        Ok(Self {
            conn: connect(&path)?,
            path,
        })
    }

    /// A passive checkpoint: copies what it can without waiting for readers or writers.
    pub fn checkpoint(&self) -> Result<Checkpoint, StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok(Checkpoint {
                    log: r.get(1)?,
                    checkpointed: r.get(2)?,
                })
            })
            .map_err(|source| StoreError::Sqlite {
                path: self.path.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("buddygate-prune-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    const DAY: Duration = Duration::from_secs(86_400);

    fn fill(s: &mut Store, n: usize) {
        let kinds = vec!["buddygate.path.down"; n];
        s.commit(&[], &kinds, |seq, _| format!("{{\"seq\":{seq}}}"))
            .unwrap();
    }

    fn seqs(s: &Store) -> Vec<u64> {
        s.reader()
            .unwrap()
            .events_after(0, 10_000)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect()
    }

    fn prune_all(s: &mut Store, p: &Retention, c: &[String], now: SystemTime) -> Pruned {
        s.restart_pruning();
        let mut all = Pruned::default();
        loop {
            let d = s.prune(p, c, now, 7).unwrap();
            all.events += d.events;
            all.undelivered += d.undelivered;
            all.dead_letters += d.dead_letters;
            if !d.more {
                return all;
            }
        }
    }

    #[test]
    fn events_go_once_every_connector_passed_them_and_the_retention_did() {
        let dir = tmp("cursors");
        let mut s = Store::open(&dir).unwrap();
        fill(&mut s, 20);
        let connectors = vec!["psim".to_string(), "bus".to_string()];
        let p = Retention::default();
        let now = SystemTime::now();
        s.set_cursor("psim", 15).unwrap();
        s.set_cursor("bus", 12).unwrap();
        // Young: nothing goes, whatever the cursors.
        assert_eq!(prune_all(&mut s, &p, &connectors, now).events, 0);
        // Old: up to the lowest cursor, in batches of 7.
        let later = now + 31 * DAY;
        assert_eq!(prune_all(&mut s, &p, &connectors, later).events, 12);
        assert_eq!(seqs(&s), (13..=20).collect::<Vec<_>>());
        // A connector the node no longer runs holds nothing back; one without a cursor does.
        s.set_cursor("bus", 20).unwrap();
        s.set_cursor("psim", 20).unwrap();
        let with_new = vec!["psim".to_string(), "new".to_string()];
        assert_eq!(prune_all(&mut s, &p, &with_new, later).events, 0);
        assert_eq!(prune_all(&mut s, &p, &connectors, later).events, 8);
        assert!(seqs(&s).is_empty());
        // The next event still gets the next seq.
        fill(&mut s, 1);
        assert_eq!(seqs(&s), [21]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn dead_letters_keep_their_events_until_they_expire() {
        let dir = tmp("dead");
        let mut s = Store::open(&dir).unwrap();
        fill(&mut s, 10);
        s.set_cursor("psim", 10).unwrap();
        let dead = |seq, time: SystemTime| super::super::DeadLetter {
            seq,
            attempts: 8,
            reason: "http 503".into(),
            time: crate::cloudevents::rfc3339(time),
            replay: false,
        };
        let now = SystemTime::now();
        s.add_dead_letter("psim", &dead(3, now)).unwrap();
        s.add_dead_letter("psim", &dead(8, now + 20 * DAY)).unwrap();
        let p = Retention::default();
        let c = vec!["psim".to_string()];
        let later = now + 31 * DAY;
        let d = prune_all(&mut s, &p, &c, later);
        // The dead letter of seq 3 expired (with its event); seq 8's is kept, and its event.
        assert_eq!((d.events, d.dead_letters), (9, 1));
        assert_eq!(seqs(&s), [8]);
        let d = prune_all(&mut s, &p, &c, later + 20 * DAY);
        assert_eq!((d.events, d.dead_letters), (1, 1));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn synchronous(s: &Store) -> i64 {
        s.conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn pruning_leaves_the_connection_as_durable_as_it_was() {
        let dir = tmp("sync");
        let c = vec!["psim".to_string()];
        let later = SystemTime::now() + 31 * DAY;
        // The writer's connection: FULL (2) before and after.
        let mut w = Store::open_for_writer(&dir).unwrap();
        fill(&mut w, 3);
        w.set_cursor("psim", 3).unwrap();
        assert_eq!(synchronous(&w), 2);
        assert_eq!(
            prune_all(&mut w, &Retention::default(), &c, later).events,
            3
        );
        assert_eq!(synchronous(&w), 2);
        drop(w);
        // A connector's: NORMAL (1) stays NORMAL.
        let mut s = Store::open_for_connector(&dir).unwrap();
        fill(&mut s, 3);
        s.set_cursor("psim", 6).unwrap();
        assert_eq!(synchronous(&s), 1);
        assert_eq!(
            prune_all(&mut s, &Retention::default(), &c, later).events,
            3
        );
        assert_eq!(synchronous(&s), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_checkpoint_empties_the_wal_and_the_next_write_truncates_it() {
        let dir = tmp("wal");
        let mut s = Store::open_for_writer(&dir).unwrap();
        let big = "x".repeat(1000);
        let kinds = vec!["buddygate.path.down"; 2000];
        s.commit(&[], &kinds, |seq, _| {
            format!("{{\"seq\":{seq},\"pad\":\"{big}\"}}")
        })
        .unwrap();
        let wal = dir.join("node.db-wal");
        let grown = std::fs::metadata(&wal).unwrap().len();
        assert!(grown > 2_000_000, "{grown}");
        // No automatic checkpoint on the writer's connection: the checkpointer's does it.
        let cp = Checkpointer::open(&dir).unwrap().checkpoint().unwrap();
        assert!(cp.log > 0 && cp.checkpointed == cp.log, "{cp:?}");
        // The next write starts the WAL over and truncates it to the journal size limit.
        fill(&mut s, 1);
        let after = std::fs::metadata(&wal).unwrap().len();
        assert!(after < 64 * 1024, "the WAL kept {after} bytes");
        assert_eq!(*seqs(&s).last().unwrap(), 2001);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn past_the_size_limit_the_oldest_events_go_whatever_their_state() {
        let dir = tmp("size");
        let mut s = Store::open(&dir).unwrap();
        let big = "x".repeat(2000);
        let kinds = vec!["buddygate.path.down"; 600];
        s.commit(&[], &kinds, |seq, _| {
            format!("{{\"seq\":{seq},\"pad\":\"{big}\"}}")
        })
        .unwrap();
        s.set_cursor("psim", 100).unwrap();
        let used = s.used_bytes().unwrap();
        assert!(used > 1_200_000, "{used}");
        let p = Retention {
            keep: Duration::from_secs(30 * 86_400),
            max_size: 600_000,
        };
        let d = prune_all(&mut s, &p, &["psim".to_string()], SystemTime::now());
        assert!(s.used_bytes().unwrap() <= 600_000);
        let left = seqs(&s);
        assert_eq!(*left.last().unwrap(), 600);
        assert_eq!(d.events as usize, 600 - left.len());
        // All but the 100 psim had handled were undelivered.
        assert_eq!(d.undelivered, d.events - 100);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! The outbox side of the store: each connector's cursor into the event log, its dead
//! letters and delivery attempts, and the read-only [`Reader`] the API and connectors use.

use std::path::PathBuf;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Store, StoreError, StoredEvent};

/// A delivery that used up its retry schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub seq: u64,
    pub attempts: u32,
    pub reason: String,
    pub time: String,
    /// Queued for a replay.
    pub replay: bool,
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub seq: u64,
    pub attempt: u32,
    /// `delivered`, `http 503`, `timeout`, `error: ...`.
    pub outcome: String,
    pub latency_ms: u64,
    pub time: String,
}

/// Delivery attempts kept per connector: the newest, trimmed every [`TRIM_EVERY`] writes.
pub const KEEP_ATTEMPTS: u64 = 1000;
const TRIM_EVERY: u32 = 100;

impl Store {
    /// Records a successful delivery and moves the cursor, in one transaction.
    pub fn delivered(&mut self, connector: &str, a: &Attempt) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        tx.execute(
            "INSERT INTO deliveries (connector, seq, attempt, outcome, latency_ms, time)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![connector, a.seq, a.attempt, a.outcome, a.latency_ms, a.time],
        )
        .map_err(err)?;
        tx.execute(
            "INSERT INTO cursors (connector, seq) VALUES (?1, ?2)
             ON CONFLICT(connector) DO UPDATE SET seq = MAX(cursors.seq, excluded.seq)",
            params![connector, a.seq],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        self.writes += 1;
        self.attempt_written(connector)
    }

    pub fn set_cursor(&mut self, connector: &str, seq: u64) -> Result<(), StoreError> {
        self.write(
            "INSERT INTO cursors (connector, seq) VALUES (?1, ?2)
             ON CONFLICT(connector) DO UPDATE SET seq = excluded.seq",
            params![connector, seq],
        )
        .map(|_| ())
    }

    /// One statement in its own transaction; returns the rows it changed.
    fn write(&mut self, sql: &str, p: impl rusqlite::Params) -> Result<usize, StoreError> {
        let n = self.conn.execute(sql, p).map_err(|e| self.err(e))?;
        self.writes += 1;
        Ok(n)
    }

    /// Trims `connector`'s attempts to the newest [`KEEP_ATTEMPTS`] every [`TRIM_EVERY`]
    /// writes.
    fn attempt_written(&mut self, connector: &str) -> Result<(), StoreError> {
        let n = self.since_trim.entry(connector.to_string()).or_default();
        *n += 1;
        if *n < TRIM_EVERY {
            return Ok(());
        }
        *n = 0;
        self.write(
            "DELETE FROM deliveries WHERE connector = ?1 AND id <
                 (SELECT id FROM deliveries WHERE connector = ?1 ORDER BY id DESC
                  LIMIT 1 OFFSET ?2)",
            params![connector, KEEP_ATTEMPTS - 1],
        )
        .map(|_| ())
    }

    pub fn add_dead_letter(&mut self, connector: &str, d: &DeadLetter) -> Result<(), StoreError> {
        self.write(
            "INSERT INTO dead_letters (connector, seq, attempts, reason, time, replay)
             VALUES (?1, ?2, ?3, ?4, ?5, 0)
             ON CONFLICT(connector, seq) DO UPDATE SET attempts = dead_letters.attempts + excluded.attempts,
                 reason = excluded.reason, time = excluded.time, replay = 0",
            params![connector, d.seq, d.attempts, d.reason, d.time],
        )
        .map(|_| ())
    }

    pub fn remove_dead_letter(&mut self, connector: &str, seq: u64) -> Result<(), StoreError> {
        self.write(
            "DELETE FROM dead_letters WHERE connector = ?1 AND seq = ?2",
            params![connector, seq],
        )
        .map(|_| ())
    }

    /// Queues every dead letter of `connector` for a replay and re-enables it; returns how
    /// many were queued.
    pub fn queue_replay(&mut self, connector: &str) -> Result<usize, StoreError> {
        let n = self.write(
            "UPDATE dead_letters SET replay = 1 WHERE connector = ?1",
            params![connector],
        )?;
        self.set_disabled(connector, None)?;
        Ok(n)
    }

    pub fn set_disabled(
        &mut self,
        connector: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        self.write(
            "INSERT INTO connector_state (connector, disabled_reason) VALUES (?1, ?2)
             ON CONFLICT(connector) DO UPDATE SET disabled_reason = excluded.disabled_reason",
            params![connector, reason],
        )
        .map(|_| ())
    }

    pub fn record_attempt(&mut self, connector: &str, a: &Attempt) -> Result<(), StoreError> {
        self.write(
            "INSERT INTO deliveries (connector, seq, attempt, outcome, latency_ms, time)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![connector, a.seq, a.attempt, a.outcome, a.latency_ms, a.time],
        )?;
        self.attempt_written(connector)
    }
}

/// A read-only view of a node's store.
pub struct Reader {
    pub(super) conn: Connection,
    pub(super) path: PathBuf,
}

impl Reader {
    pub(super) fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Events with `seq > after`, oldest first, at most `limit`.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, type, json FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![after, limit as i64], |r| {
                Ok(StoredEvent {
                    seq: r.get(0)?,
                    kind: r.get(1)?,
                    json: r.get(2)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    pub fn dead_letters(&self, connector: &str) -> Result<Vec<DeadLetter>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, attempts, reason, time, replay FROM dead_letters
                 WHERE connector = ?1 ORDER BY seq",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![connector], |r| {
                Ok(DeadLetter {
                    seq: r.get(0)?,
                    attempts: r.get(1)?,
                    reason: r.get(2)?,
                    time: r.get(3)?,
                    replay: r.get::<_, i64>(4)? != 0,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// `connector`'s dead letters queued for a replay, oldest first, at most `limit`.
    pub fn queued_replays(
        &self,
        connector: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, attempts, reason, time, replay FROM dead_letters
                 WHERE connector = ?1 AND replay = 1 ORDER BY seq LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![connector, limit as i64], |r| {
                Ok(DeadLetter {
                    seq: r.get(0)?,
                    attempts: r.get(1)?,
                    reason: r.get(2)?,
                    time: r.get(3)?,
                    replay: r.get::<_, i64>(4)? != 0,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    pub fn disabled(&self, connector: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row(
                "SELECT disabled_reason FROM connector_state WHERE connector = ?1",
                params![connector],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(|e| self.err(e))
    }

    /// The last `limit` delivery attempts of `connector`, newest first.
    pub fn attempts(&self, connector: &str, limit: usize) -> Result<Vec<Attempt>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, attempt, outcome, latency_ms, time FROM deliveries
                 WHERE connector = ?1 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![connector, limit as i64], |r| {
                Ok(Attempt {
                    seq: r.get(0)?,
                    attempt: r.get(1)?,
                    outcome: r.get(2)?,
                    latency_ms: r.get(3)?,
                    time: r.get(4)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The newest event's sequence number (0 when there is none).
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    pub fn event(&self, seq: u64) -> Result<Option<StoredEvent>, StoreError> {
        self.conn
            .query_row(
                "SELECT seq, type, json FROM events WHERE seq = ?1",
                params![seq],
                |r| {
                    Ok(StoredEvent {
                        seq: r.get(0)?,
                        kind: r.get(1)?,
                        json: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn cursor(&self, connector: &str) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT seq FROM cursors WHERE connector = ?1",
                params![connector],
                |r| r.get(0),
            )
            .optional()
            .map(|v| v.unwrap_or(0))
            .map_err(|e| self.err(e))
    }
}

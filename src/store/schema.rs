//! The store's layout, versioned, and the migrations that bring an older store to it.
//!
//! The version is SQLite's `PRAGMA user_version`. Version 0 is an empty file, or a store
//! written before versions existed: the first release's tables only (`meta`, `claims`,
//! `events`, `cursors`, `dead_letters`, `connector_state`, `deliveries`), or those and the
//! failover-state tables that came after it. The first steps create their tables only if they
//! do not exist, so either unversioned layout is brought up to date by the same steps, and its
//! claims, epochs and events are kept.
//!
//! Opening a store runs the steps it has not had, in order, in one transaction with the new
//! version: a store is at one version or the one before, never in between. A store written by
//! a newer build (a higher version) is refused rather than guessed at.
//!
//! # Adding a table, a column or an index
//!
//! Append a [`Step`] to [`STEPS`] (its SQL in a `const` of the module that owns the table,
//! e.g. `history::SCHEMA` for `src/store/history.rs`), and add the new version's layout to the
//! migration test below (`every_layout_migrates_to_the_current_one`). Never change a step
//! that has been released: a store that already ran it would not run it again.

use rusqlite::Connection;

/// One migration: what it adds, and the SQL that adds it.
pub(super) struct Step {
    pub what: &'static str,
    pub sql: &'static str,
}

/// Every step, oldest first: a store at version `n` runs `STEPS[n..]`.
pub(super) const STEPS: &[Step] = &[
    Step {
        what: "claims, the event log, cursors, dead letters and delivery attempts",
        sql: V1_OUTBOX,
    },
    Step {
        what: "failover state: known epochs, round floors, holds, peers, failbacks",
        sql: super::state::SCHEMA,
    },
    Step {
        what: "when each event was stored (retention), indexes for pruning",
        sql: V3_RETENTION,
    },
    Step {
        what: "the history of each resource's owners (where the footage is)",
        sql: super::history::SCHEMA,
    },
];

/// The version this build writes.
pub const VERSION: u32 = STEPS.len() as u32;

const V1_OUTBOX: &str = "
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

/// `stored_ms`: wall-clock ms when the event was stored. Events stored before this step get
/// their CloudEvent `time`, or the time of the migration when it has none.
const V3_RETENTION: &str = "
ALTER TABLE events ADD COLUMN stored_ms INTEGER NOT NULL DEFAULT 0;
UPDATE events SET stored_ms = COALESCE(
    CASE WHEN json_valid(json)
        THEN CAST((julianday(json_extract(json, '$.time')) - 2440587.5) * 86400000.0 AS INTEGER)
    END,
    CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER));
CREATE INDEX IF NOT EXISTS deliveries_by_connector ON deliveries (connector, id);
CREATE INDEX IF NOT EXISTS dead_letters_by_seq ON dead_letters (seq);
";

/// Why a store cannot be brought to [`VERSION`].
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "written by a newer buddygate (store version {found}, this build knows up to {VERSION})"
    )]
    Newer { found: u32 },
    #[error("migration to version {to} ({what}): {source}")]
    Step {
        to: u32,
        what: &'static str,
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// The store's version.
pub(super) fn version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Brings the store on `conn` to [`VERSION`]; returns the version it was at. Writes nothing
/// when it is already there (a store on a full disk still opens).
pub(super) fn migrate(conn: &mut Connection) -> Result<u32, MigrateError> {
    let found = version(conn)?;
    if found > VERSION {
        return Err(MigrateError::Newer { found });
    }
    if found == VERSION {
        return Ok(found);
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // Another process may have migrated it meanwhile.
    let now = version(&tx)?;
    for (i, step) in STEPS.iter().enumerate().skip(now as usize) {
        tx.execute_batch(step.sql)
            .map_err(|source| MigrateError::Step {
                to: i as u32 + 1,
                what: step.what,
                source,
            })?;
    }
    tx.pragma_update(None, "user_version", VERSION)?;
    tx.commit()?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first release's layout, as its `SCHEMA` created it.
    const RELEASE_1: &str = V1_OUTBOX;

    /// The layout before versions, after the failover-state tables were added: what a store
    /// written by that build holds.
    fn unversioned_current(conn: &Connection) {
        conn.execute_batch(V1_OUTBOX).unwrap();
        conn.execute_batch(super::super::state::SCHEMA).unwrap();
    }

    fn tables(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn fill(conn: &Connection) {
        conn.execute_batch(
            "INSERT INTO meta (key, value) VALUES ('incarnation', 1795565600000);
             INSERT INTO claims (resource, epoch, held) VALUES ('cam-1', 298, 1), ('cam-2', 199, 0);
             INSERT INTO events (seq, type, json) VALUES
                 (1, 'buddygate.server.down', '{\"time\":\"2026-11-25T00:13:23.715Z\"}'),
                 (2, 'buddygate.server.up', 'not json');
             INSERT INTO cursors (connector, seq) VALUES ('psim', 1);
             INSERT INTO dead_letters (connector, seq, attempts, reason, time) VALUES
                 ('psim', 1, 8, 'http 503', '2026-11-25T00:13:24.000Z');
             INSERT INTO deliveries (connector, seq, attempt, outcome, latency_ms, time) VALUES
                 ('psim', 1, 1, 'http 503', 3, '2026-11-25T00:13:24.000Z');",
        )
        .unwrap();
    }

    #[test]
    fn every_layout_migrates_to_the_current_one() {
        let mut reference = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut reference).unwrap(), 0);
        let want = tables(&reference);
        assert_eq!(want.len(), 14, "{want:?}");

        // The first release: 7 tables, no version.
        let mut c = Connection::open_in_memory().unwrap();
        c.execute_batch(RELEASE_1).unwrap();
        fill(&c);
        assert_eq!(migrate(&mut c).unwrap(), 0);
        assert_eq!(tables(&c), want);
        assert_eq!(version(&c).unwrap(), VERSION);

        // The layout just before versions: 12 tables, no version.
        let mut d = Connection::open_in_memory().unwrap();
        unversioned_current(&d);
        fill(&d);
        d.execute(
            "INSERT INTO known_epochs (resource, epoch) VALUES ('cam-1', 397)",
            [],
        )
        .unwrap();
        assert_eq!(migrate(&mut d).unwrap(), 0);
        assert_eq!(tables(&d), want);
        let known: u64 = d
            .query_row("SELECT epoch FROM known_epochs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(known, 397);

        for conn in [&c, &d] {
            // Claims, epochs and events kept; stored times from the CloudEvent, else now.
            let claims: Vec<(String, u64, bool)> = conn
                .prepare("SELECT resource, epoch, held FROM claims ORDER BY resource")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(
                claims,
                [("cam-1".into(), 298, true), ("cam-2".into(), 199, false)]
            );
            let stored: Vec<i64> = conn
                .prepare("SELECT stored_ms FROM events ORDER BY seq")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(stored[0], 1_795_565_603_715);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            assert!((stored[1] - now).abs() < 60_000, "{stored:?}");
        }

        // Version 3, the layout before the history of owners: its data kept.
        let mut e = Connection::open_in_memory().unwrap();
        for step in &STEPS[..3] {
            e.execute_batch(step.sql).unwrap();
        }
        e.pragma_update(None, "user_version", 3).unwrap();
        e.execute(
            "INSERT INTO known_epochs (resource, epoch) VALUES ('cam-1', 397)",
            [],
        )
        .unwrap();
        assert_eq!(migrate(&mut e).unwrap(), 3);
        assert_eq!(tables(&e), want);
        let known: u64 = e
            .query_row("SELECT epoch FROM known_epochs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(known, 397);

        // Again: nothing to do, nothing written.
        assert_eq!(migrate(&mut d).unwrap(), VERSION);
    }

    #[test]
    fn a_store_from_a_newer_build_is_refused() {
        let mut c = Connection::open_in_memory().unwrap();
        c.pragma_update(None, "user_version", VERSION + 1).unwrap();
        let e = migrate(&mut c).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "written by a newer buddygate (store version {}, this build knows up to {VERSION})",
                VERSION + 1
            )
        );
    }
}

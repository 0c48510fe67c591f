//! Where the footage is: each resource's history of owners, as this node saw them. An
//! interval is one owner at one epoch: `owner`, its announced `address`, `epoch`, `from`, `to`
//! (`None` while it lasts). A VMS client or PSIM reads it (`GET /resources/{id}/history`) to
//! find every minute of a camera's footage, and the home server's `merge` after a failback
//! reads the intervals its buddies recorded.
//!
//! - Every node records its own view: a new interval when a resource's active owner or epoch
//!   changes in its snapshots ([`History::observe`]); an interval starts when the node first
//!   saw the claim active (working), or, for its own start from a hot standby, at the instant
//!   that start was told to cover from.
//! - What a node that was down knows: it notes that it is alive every [`MARK_EVERY`]. On
//!   [`History::open`] after a stop or a crash, its own intervals still open end at that
//!   moment (the boot: its recorders may have outlived a crash of the daemon), and the others
//!   stay open until its first settled view: the same owner and epoch continue them (an epoch
//!   names one claim), anything else ends them then. An owner first seen active then began
//!   while the node was away: its interval starts at the last moment the node is known to
//!   have been up (its last mark, or anything it wrote after it; now, for a node without
//!   history). Such bounds are marked `exact = false`: they
//!   enclose the truth (an overlap is harmless, a gap is not).
//! - Bounded: at most [`KEEP_PER_RESOURCE`] intervals per resource (the newest) and none that
//!   ended more than [`KEEP_FOR`] ago.
//! - Durable: its own connection to the node's store, `synchronous = NORMAL` (WAL): what was
//!   written survives a crash of the process; a power cut may lose the last second, which the
//!   next run bounds with its mark.
//!
//! The table is created with the store's (`SCHEMA`, from [`super::Store::open`]) and by
//! [`History::open`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;

/// The history's tables. Times are Unix milliseconds.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    resource TEXT NOT NULL,
    owner TEXT NOT NULL,
    address TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    from_ms INTEGER NOT NULL,
    to_ms INTEGER,
    exact INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_resource ON history (resource, from_ms);
CREATE TABLE IF NOT EXISTS history_mark (id INTEGER PRIMARY KEY CHECK (id = 1), at_ms INTEGER NOT NULL);
";

/// How often a node notes that it is alive (the bound on what it missed while down).
pub const MARK_EVERY: Duration = Duration::from_secs(5);

/// Intervals kept per resource (the newest).
pub const KEEP_PER_RESOURCE: u32 = 1000;

/// Intervals that ended longer ago than this are dropped (about 13 months).
pub const KEEP_FOR: Duration = Duration::from_secs(400 * 24 * 3600);

/// One owner of a resource at one epoch, as this node saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    pub owner: String,
    /// The owner's announced address.
    pub address: String,
    pub epoch: u64,
    /// Unix milliseconds.
    pub from_ms: u64,
    /// Unix milliseconds; `None` while it lasts.
    pub to_ms: Option<u64>,
    /// This node saw both ends as they happened; `false`: it was away for one of them, and
    /// the bounds enclose the truth.
    pub exact: bool,
}

/// One resource's active owner in one view of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen<'a> {
    pub resource: &'a str,
    /// `None`: nobody serves it (unassigned, starting, failed).
    pub owner: Option<Owner<'a>>,
}

/// Who serves a resource, at which epoch, with what footage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner<'a> {
    pub id: &'a str,
    pub address: &'a str,
    pub epoch: u64,
    /// This node's own start from a hot standby: the instant (Unix ms) it was told to cover
    /// from, where its recording begins.
    pub covered_from: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Open {
    row: i64,
    owner: String,
    epoch: u64,
}

/// The node's history, written from its snapshots.
pub struct History {
    conn: Connection,
    path: PathBuf,
    node: String,
    /// The interval open now, per resource.
    open: HashMap<String, Open>,
    /// Intervals of other owners left open by the last run, until the first settled view.
    stale: Option<HashMap<String, Open>>,
    /// The last mark of the last run: when this node last knew what it knew.
    away_since: Option<u64>,
}

impl History {
    /// Opens the history in `dir`'s store for `node`, at `now_ms`: closes this node's own
    /// intervals the last run left open (at `now_ms`, not exact), keeps the others until the
    /// first settled view.
    pub fn open(dir: &Path, node: &str, now_ms: u64) -> Result<Self, StoreError> {
        let path = dir.join("node.db");
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let conn = super::connect(&path)?;
        // Losing the last interval in a power cut costs less than an fsync per view.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        // The last moment the last run is known to have been up: its last mark, or anything
        // it wrote after that.
        let away_since: Option<u64> = conn
            .query_row(
                "SELECT MAX(COALESCE((SELECT at_ms FROM history_mark WHERE id = 1), 0),
                            COALESCE((SELECT MAX(from_ms) FROM history), 0),
                            COALESCE((SELECT MAX(to_ms) FROM history), 0))",
                [],
                |r| r.get::<_, u64>(0),
            )
            .optional()
            .map_err(err)?
            .filter(|&ms| ms > 0);
        let mut stale = HashMap::new();
        {
            let mut stmt = conn
                .prepare("SELECT id, resource, owner, epoch FROM history WHERE to_ms IS NULL")
                .map_err(err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(1)?,
                        Open {
                            row: r.get(0)?,
                            owner: r.get(2)?,
                            epoch: r.get(3)?,
                        },
                    ))
                })
                .map_err(err)?;
            for row in rows {
                let (resource, open) = row.map_err(err)?;
                stale.insert(resource, open);
            }
        }
        let mut history = Self {
            conn,
            path: path.clone(),
            node: node.to_string(),
            open: HashMap::new(),
            stale: None,
            away_since,
        };
        let own: Vec<i64> = stale
            .iter()
            .filter(|(_, o)| o.owner == node)
            .map(|(_, o)| o.row)
            .collect();
        stale.retain(|_, o| o.owner != node);
        history.stale = Some(stale);
        let tx = history.conn.transaction().map_err(err)?;
        for row in own {
            close(&tx, row, now_ms, false).map_err(err)?;
        }
        tx.commit().map_err(err)?;
        history.prune_old(now_ms)?;
        Ok(history)
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Records one view of the node at `at_ms`: every resource of the site, with its active
    /// owner. The first call after [`History::open`] settles what the last run left open.
    pub fn observe<'a>(
        &mut self,
        at_ms: u64,
        view: impl IntoIterator<Item = Seen<'a>>,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let mut stale = self.stale.take();
        let first = stale.is_some();
        let since = self.away_since.unwrap_or(at_ms);
        let tx = self.conn.transaction().map_err(err)?;
        let mut touched = Vec::new();
        for seen in view {
            let now = seen.owner.map(|o| (o.id, o.epoch));
            if let Some(old) = stale.as_mut().and_then(|s| s.remove(seen.resource)) {
                if now == Some((old.owner.as_str(), old.epoch)) {
                    // The same claim went on while this node was away.
                    self.open.insert(seen.resource.to_string(), old);
                    continue;
                }
                close(&tx, old.row, at_ms, false).map_err(err)?;
            }
            let current = self.open.get(seen.resource);
            if current.map(|o| (o.owner.as_str(), o.epoch)) == now {
                continue;
            }
            if let Some(o) = self.open.remove(seen.resource) {
                close(&tx, o.row, at_ms, true).map_err(err)?;
            }
            let Some(owner) = seen.owner else {
                continue;
            };
            let mine = owner.id == self.node;
            // An owner already active in the first view began while this node was away.
            let (from, exact) = match (first && !mine, owner.covered_from) {
                (true, _) => (since.min(at_ms), false),
                (false, Some(covered)) if mine => (covered.min(at_ms), true),
                _ => (at_ms, true),
            };
            tx.execute(
                "INSERT INTO history (resource, owner, address, epoch, from_ms, to_ms, exact)
                 VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6)",
                params![
                    seen.resource,
                    owner.id,
                    owner.address,
                    owner.epoch,
                    from,
                    exact
                ],
            )
            .map_err(err)?;
            let row = tx.last_insert_rowid();
            self.open.insert(
                seen.resource.to_string(),
                Open {
                    row,
                    owner: owner.id.to_string(),
                    epoch: owner.epoch,
                },
            );
            touched.push(seen.resource.to_string());
        }
        // Resources the site no longer has.
        for old in stale.into_iter().flat_map(|s| s.into_values()) {
            close(&tx, old.row, at_ms, false).map_err(err)?;
        }
        for resource in &touched {
            tx.execute(
                "DELETE FROM history WHERE resource = ?1 AND id NOT IN
                 (SELECT id FROM history WHERE resource = ?1 ORDER BY from_ms DESC, id DESC LIMIT ?2)",
                params![resource, KEEP_PER_RESOURCE],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Notes that this node is alive and its view current at `at_ms`.
    pub fn mark(&mut self, at_ms: u64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO history_mark (id, at_ms) VALUES (1, ?1)
                 ON CONFLICT(id) DO UPDATE SET at_ms = excluded.at_ms",
                params![at_ms],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Drops the intervals that ended more than [`KEEP_FOR`] before `now_ms`.
    pub fn prune_old(&mut self, now_ms: u64) -> Result<(), StoreError> {
        let before = now_ms.saturating_sub(KEEP_FOR.as_millis() as u64);
        self.conn
            .execute(
                "DELETE FROM history WHERE to_ms IS NOT NULL AND to_ms < ?1",
                params![before],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// After this node took `resource` back at `epoch` (a failback done at `at_ms`): the
    /// intervals other owners served it since this node's previous claim of it began, up to
    /// `at_ms`, oldest first; what `merge` pulls back. Open ones end at `at_ms`.
    pub fn merge_intervals(
        &self,
        resource: &str,
        epoch: u64,
        at_ms: u64,
    ) -> Result<Vec<Interval>, StoreError> {
        let since: Option<u64> = self
            .conn
            .query_row(
                "SELECT MAX(from_ms) FROM history WHERE resource = ?1 AND owner = ?2 AND epoch < ?3",
                params![resource, self.node, epoch],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        let since = since.unwrap_or(0);
        let all =
            intervals(&self.conn, resource, Some(since), Some(at_ms)).map_err(|e| self.err(e))?;
        Ok(all
            .into_iter()
            .filter(|i| i.owner != self.node)
            .filter_map(|mut i| {
                i.from_ms = i.from_ms.max(since);
                let to = i.to_ms.unwrap_or(at_ms).min(at_ms);
                i.to_ms = Some(to);
                (i.from_ms < to).then_some(i)
            })
            .collect())
    }
}

fn close(
    tx: &rusqlite::Transaction<'_>,
    row: i64,
    at_ms: u64,
    exact: bool,
) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE history SET to_ms = MAX(from_ms, ?2), exact = exact AND ?3 WHERE id = ?1",
        params![row, at_ms, exact],
    )
    .map(|_| ())
}

/// The intervals of `resource` that overlap `[from_ms, to_ms]` (either end open), oldest
/// first.
fn intervals(
    conn: &Connection,
    resource: &str,
    from_ms: Option<u64>,
    to_ms: Option<u64>,
) -> rusqlite::Result<Vec<Interval>> {
    let mut stmt = conn.prepare_cached(
        "SELECT owner, address, epoch, from_ms, to_ms, exact FROM history
         WHERE resource = ?1 AND (?2 IS NULL OR to_ms IS NULL OR to_ms >= ?2)
           AND (?3 IS NULL OR from_ms <= ?3)
         ORDER BY from_ms, id",
    )?;
    let rows = stmt.query_map(params![resource, from_ms, to_ms], |r| {
        Ok(Interval {
            owner: r.get(0)?,
            address: r.get(1)?,
            epoch: r.get(2)?,
            from_ms: r.get(3)?,
            to_ms: r.get(4)?,
            exact: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// A read-only view of the history, for the API.
pub struct HistoryReader {
    conn: Connection,
    path: PathBuf,
}

impl HistoryReader {
    /// Opens `dir`'s store read-only. A store that has no history yet reads as empty.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let (conn, path) = super::connect_read_only(dir)?;
        Ok(Self { conn, path })
    }

    /// The intervals of `resource` that overlap `[from_ms, to_ms]` (either end open), oldest
    /// first.
    pub fn intervals(
        &self,
        resource: &str,
        from_ms: Option<u64>,
        to_ms: Option<u64>,
    ) -> Result<Vec<Interval>, StoreError> {
        match intervals(&self.conn, resource, from_ms, to_ms) {
            Ok(v) => Ok(v),
            Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.starts_with("no such table") => {
                Ok(Vec::new())
            }
            Err(source) => Err(StoreError::Sqlite {
                path: self.path.clone(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("buddygate-history-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn seen<'a>(resource: &'a str, owner: Option<(&'a str, u64)>) -> Seen<'a> {
        Seen {
            resource,
            owner: owner.map(|(id, epoch)| Owner {
                id,
                address: if id == "live-1" {
                    "10.0.1.11"
                } else {
                    "10.0.1.21"
                },
                epoch,
                covered_from: None,
            }),
        }
    }

    fn interval(owner: &str, epoch: u64, from: u64, to: Option<u64>, exact: bool) -> Interval {
        Interval {
            owner: owner.into(),
            address: if owner == "live-1" {
                "10.0.1.11"
            } else {
                "10.0.1.21"
            }
            .into(),
            epoch,
            from_ms: from,
            to_ms: to,
            exact,
        }
    }

    #[test]
    fn owners_and_epochs_become_intervals_as_the_node_sees_them() {
        let dir = tmp("seen");
        let mut h = History::open(&dir, "fo-1", 1_000).unwrap();
        h.observe(
            1_000,
            [seen("cam-1", Some(("live-1", 199))), seen("cam-2", None)],
        )
        .unwrap();
        h.observe(
            1_500,
            [seen("cam-1", Some(("live-1", 199))), seen("cam-2", None)],
        )
        .unwrap();
        // live-1 dies: nobody serves cam-1 until fo-1's start works.
        h.observe(2_000, [seen("cam-1", None)]).unwrap();
        let mut own = seen("cam-1", Some(("fo-1", 298)));
        own.owner.as_mut().unwrap().covered_from = Some(1_700);
        h.observe(2_600, [own]).unwrap();
        h.observe(9_000, [seen("cam-1", Some(("live-1", 399)))])
            .unwrap();
        let r = HistoryReader::open(&dir).unwrap();
        assert_eq!(
            r.intervals("cam-1", None, None).unwrap(),
            [
                // The first view of a node without history: it does not know since when.
                interval("live-1", 199, 1_000, Some(2_000), false),
                // Its own start from a hot standby covers from the instant it was told.
                interval("fo-1", 298, 1_700, Some(9_000), true),
                interval("live-1", 399, 9_000, None, true),
            ]
        );
        assert_eq!(r.intervals("cam-2", None, None).unwrap(), []);
        assert_eq!(
            r.intervals("cam-1", Some(2_500), Some(8_000)).unwrap(),
            [interval("fo-1", 298, 1_700, Some(9_000), true)]
        );
        assert_eq!(r.intervals("cam-1", Some(9_500), None).unwrap().len(), 1);
        // A buddy merges nothing of its own: only what others served.
        assert_eq!(
            h.merge_intervals("cam-1", 499, 9_100).unwrap(),
            [
                interval("live-1", 199, 1_700, Some(2_000), false),
                interval("live-1", 399, 9_000, Some(9_100), true),
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_node_back_from_a_crash_bounds_what_it_missed() {
        let dir = tmp("crash");
        {
            let mut h = History::open(&dir, "live-1", 1_000).unwrap();
            h.observe(
                1_000,
                [
                    seen("cam-1", Some(("live-1", 199))),
                    seen("cam-2", Some(("fo-1", 298))),
                    seen("cam-3", Some(("fo-1", 298))),
                ],
            )
            .unwrap();
            h.mark(5_000).unwrap();
            // Killed here (at ~6 s): nothing more is written.
        }
        let mut h = History::open(&dir, "live-1", 60_000).unwrap();
        {
            let r = HistoryReader::open(&dir).unwrap();
            // Its own interval ends at the boot at the latest (not exact).
            assert_eq!(
                r.intervals("cam-1", None, None).unwrap(),
                [interval("live-1", 199, 1_000, Some(60_000), false)]
            );
        }
        // The first settled view: fo-1 took cam-1 while live-1 was away; cam-2 is still
        // fo-1's at the same epoch; cam-3 moved on.
        h.observe(
            61_000,
            [
                seen("cam-1", Some(("fo-1", 298))),
                seen("cam-2", Some(("fo-1", 298))),
                seen("cam-3", Some(("fo-1", 397))),
            ],
        )
        .unwrap();
        h.observe(70_000, [seen("cam-1", Some(("live-1", 499)))])
            .unwrap();
        let r = HistoryReader::open(&dir).unwrap();
        assert_eq!(
            r.intervals("cam-1", None, None).unwrap(),
            [
                interval("live-1", 199, 1_000, Some(60_000), false),
                // Began while live-1 was away: from its last mark.
                interval("fo-1", 298, 5_000, Some(70_000), false),
                interval("live-1", 499, 70_000, None, true),
            ]
        );
        assert_eq!(
            r.intervals("cam-2", None, None).unwrap(),
            [interval("fo-1", 298, 1_000, None, false)]
        );
        assert_eq!(
            r.intervals("cam-3", None, None).unwrap(),
            [
                interval("fo-1", 298, 1_000, Some(61_000), false),
                interval("fo-1", 397, 5_000, None, false),
            ]
        );
        // The merge after the failback: fo-1's interval since live-1's previous claim began.
        assert_eq!(
            h.merge_intervals("cam-1", 499, 70_050).unwrap(),
            [interval("fo-1", 298, 5_000, Some(70_000), false)]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn history_is_bounded_per_resource_and_in_age() {
        let dir = tmp("bounded");
        let mut h = History::open(&dir, "fo-1", 0).unwrap();
        for i in 0..(KEEP_PER_RESOURCE as u64 + 10) {
            let owner = if i % 2 == 0 { "live-1" } else { "fo-1" };
            h.observe(i * 10, [seen("cam-1", Some((owner, i)))])
                .unwrap();
        }
        let r = HistoryReader::open(&dir).unwrap();
        let all = r.intervals("cam-1", None, None).unwrap();
        assert_eq!(all.len(), KEEP_PER_RESOURCE as usize);
        assert_eq!(all[0].epoch, 10, "the oldest went first");
        let later = KEEP_FOR.as_millis() as u64 + 10_000 + 100;
        h.prune_old(later).unwrap();
        let all = r.intervals("cam-1", None, None).unwrap();
        assert!(all.iter().all(|i| i.to_ms.is_none_or(|t| t >= 10_100)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

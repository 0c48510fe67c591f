//! The node's durable failover state: its claims, the highest epoch it has seen per resource,
//! round floors, operator holds, its peers' replay floors and the failbacks it carried out.
//! Everything is keyed by id, not index, so it survives a change of the site file.

use std::collections::BTreeMap;

use rusqlite::{Connection, Transaction, params};

use super::{Reader, Store, StoreError, StoredClaim};

/// One durable record, as the failover core hands it out (`failover::Durable`) with ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Claim {
        resource: String,
        epoch: u64,
        held: bool,
    },
    Known {
        resource: String,
        epoch: u64,
    },
    Floor {
        server: String,
        round: u64,
    },
    Hold(StoredHold),
    Peer {
        server: String,
        incarnation: u64,
        seq: u64,
    },
    Incarnation(u64),
    FailbackDone {
        counter: u64,
        origin: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredHold {
    pub server: String,
    pub held: bool,
    pub counter: u64,
    pub origin: String,
}

/// Everything a restarted node is given back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeState {
    pub claims: Vec<StoredClaim>,
    /// Highest epoch seen per resource (own claims included).
    pub known: Vec<(String, u64)>,
    pub floors: Vec<(String, u64)>,
    pub holds: Vec<StoredHold>,
    /// (server, incarnation, seq)
    pub peers: Vec<(String, u64, u64)>,
    pub failback_done: Option<(u64, String)>,
}

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS known_epochs (resource TEXT PRIMARY KEY, epoch INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS floors (server TEXT PRIMARY KEY, round INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS holds (
    server TEXT PRIMARY KEY,
    held INTEGER NOT NULL,
    counter INTEGER NOT NULL,
    origin TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS peers (
    server TEXT PRIMARY KEY,
    incarnation INTEGER NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS failback_done (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    counter INTEGER NOT NULL,
    origin TEXT NOT NULL
);
";

pub(super) fn write(tx: &Transaction<'_>, rec: &Record) -> rusqlite::Result<()> {
    match rec {
        Record::Claim {
            resource,
            epoch,
            held,
        } => {
            tx.prepare_cached(
                "INSERT INTO claims (resource, epoch, held) VALUES (?1, ?2, ?3)
                 ON CONFLICT(resource) DO UPDATE SET epoch = excluded.epoch, held = excluded.held",
            )?
            .execute(params![resource, epoch, *held as i64])?;
            raise(tx, resource, *epoch)?;
        }
        Record::Known { resource, epoch } => raise(tx, resource, *epoch)?,
        Record::Floor { server, round } => {
            tx.prepare_cached(
                "INSERT INTO floors (server, round) VALUES (?1, ?2)
                 ON CONFLICT(server) DO UPDATE SET round = MAX(floors.round, excluded.round)",
            )?
            .execute(params![server, round])?;
        }
        Record::Hold(h) => {
            tx.prepare_cached(
                "INSERT INTO holds (server, held, counter, origin) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(server) DO UPDATE SET held = excluded.held,
                     counter = excluded.counter, origin = excluded.origin",
            )?
            .execute(params![h.server, h.held as i64, h.counter, h.origin])?;
        }
        Record::Peer {
            server,
            incarnation,
            seq,
        } => {
            tx.prepare_cached(
                "INSERT INTO peers (server, incarnation, seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT(server) DO UPDATE SET incarnation = excluded.incarnation,
                     seq = excluded.seq
                 WHERE (excluded.incarnation, excluded.seq) > (peers.incarnation, peers.seq)",
            )?
            .execute(params![server, incarnation, seq])?;
        }
        Record::Incarnation(n) => {
            tx.prepare_cached(
                "INSERT INTO meta (key, value) VALUES ('incarnation', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = MAX(meta.value, excluded.value)",
            )?
            .execute(params![n])?;
        }
        Record::FailbackDone { counter, origin } => {
            tx.prepare_cached(
                "INSERT INTO failback_done (id, counter, origin) VALUES (1, ?1, ?2)
                 ON CONFLICT(id) DO UPDATE SET counter = excluded.counter, origin = excluded.origin",
            )?
            .execute(params![counter, origin])?;
        }
    }
    Ok(())
}

fn raise(tx: &Transaction<'_>, resource: &str, epoch: u64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO known_epochs (resource, epoch) VALUES (?1, ?2)
         ON CONFLICT(resource) DO UPDATE SET epoch = MAX(known_epochs.epoch, excluded.epoch)",
    )?
    .execute(params![resource, epoch])?;
    Ok(())
}

/// What this node persisted in earlier runs, read on `conn`.
fn read(conn: &Connection) -> rusqlite::Result<NodeState> {
    let pairs = |sql: &str| -> rusqlite::Result<Vec<(String, u64)>> {
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    };
    let mut stmt = conn.prepare("SELECT resource, epoch, held FROM claims ORDER BY resource")?;
    let claims = stmt
        .query_map([], |r| {
            Ok(StoredClaim {
                resource: r.get(0)?,
                epoch: r.get(1)?,
                held: r.get::<_, i64>(2)? != 0,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut stmt =
        conn.prepare("SELECT server, held, counter, origin FROM holds ORDER BY server")?;
    let holds = stmt
        .query_map([], |r| {
            Ok(StoredHold {
                server: r.get(0)?,
                held: r.get::<_, i64>(1)? != 0,
                counter: r.get(2)?,
                origin: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut stmt = conn.prepare("SELECT server, incarnation, seq FROM peers ORDER BY server")?;
    let peers = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let failback_done = conn
        .query_row(
            "SELECT counter, origin FROM failback_done WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok();
    Ok(NodeState {
        claims,
        known: pairs("SELECT resource, epoch FROM known_epochs ORDER BY resource")?,
        floors: pairs("SELECT server, round FROM floors ORDER BY server")?,
        holds,
        peers,
        failback_done,
    })
}

impl Store {
    /// What this node persisted in earlier runs.
    pub fn node_state(&self) -> Result<NodeState, StoreError> {
        read(&self.conn).map_err(|e| self.err(e))
    }
}

impl Reader {
    /// What the node persisted, read without writing (a node that cannot open its store for
    /// writing, on a full disk, still starts from it).
    pub fn node_state(&self) -> Result<NodeState, StoreError> {
        read(&self.conn).map_err(|e| self.err(e))
    }

    /// The stored incarnation (0 when there is none).
    pub fn incarnation(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'incarnation'",
                [],
                |r| r.get(0),
            )
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(0),
                e => Err(e),
            })
            .map_err(|e| self.err(e))
    }
}

/// Records waiting to be written, each kept as the store would end up with it: the last
/// claim, hold and failback; the highest epoch, round, peer sequence and incarnation. Bounded
/// by the site's size however long the store takes no writes, and written in one transaction
/// with the same result as writing every record in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordSet {
    claims: BTreeMap<String, (u64, bool)>,
    known: BTreeMap<String, u64>,
    floors: BTreeMap<String, u64>,
    holds: BTreeMap<String, StoredHold>,
    peers: BTreeMap<String, (u64, u64)>,
    incarnation: Option<u64>,
    failback_done: Option<(u64, String)>,
}

impl RecordSet {
    pub fn add(&mut self, rec: Record) {
        let max = |m: &mut BTreeMap<String, u64>, k: String, v: u64| {
            let e = m.entry(k).or_insert(v);
            *e = (*e).max(v);
        };
        match rec {
            Record::Claim {
                resource,
                epoch,
                held,
            } => {
                max(&mut self.known, resource.clone(), epoch);
                self.claims.insert(resource, (epoch, held));
            }
            Record::Known { resource, epoch } => max(&mut self.known, resource, epoch),
            Record::Floor { server, round } => max(&mut self.floors, server, round),
            Record::Hold(h) => {
                self.holds.insert(h.server.clone(), h);
            }
            Record::Peer {
                server,
                incarnation,
                seq,
            } => {
                let e = self.peers.entry(server).or_insert((incarnation, seq));
                *e = (*e).max((incarnation, seq));
            }
            Record::Incarnation(n) => {
                self.incarnation = Some(self.incarnation.unwrap_or(0).max(n));
            }
            Record::FailbackDone { counter, origin } => {
                self.failback_done = Some((counter, origin));
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The records to write.
    pub fn records(&self) -> Vec<Record> {
        let mut out: Vec<Record> = self
            .known
            .iter()
            .map(|(r, &epoch)| Record::Known {
                resource: r.clone(),
                epoch,
            })
            .collect();
        out.extend(self.claims.iter().map(|(r, &(epoch, held))| Record::Claim {
            resource: r.clone(),
            epoch,
            held,
        }));
        out.extend(self.floors.iter().map(|(s, &round)| Record::Floor {
            server: s.clone(),
            round,
        }));
        out.extend(self.holds.values().cloned().map(Record::Hold));
        out.extend(
            self.peers
                .iter()
                .map(|(s, &(incarnation, seq))| Record::Peer {
                    server: s.clone(),
                    incarnation,
                    seq,
                }),
        );
        out.extend(self.incarnation.map(Record::Incarnation));
        out.extend(
            self.failback_done
                .clone()
                .map(|(counter, origin)| Record::FailbackDone { counter, origin }),
        );
        out
    }
}

//! What a heartbeat carries (rule 1), made for each peer: this node's state; its claims and
//! failures on the resources of the home servers the peer may claim for (a live server hears
//! about its own resources, a co-buddy about the live servers it shares); the round floors of
//! those home servers; the peer's own claims this node knows a newer epoch for (and who runs
//! them at it); the live servers this node hears; every operator hold it knows; a failover
//! server's whole load; and the echo of the peer's incarnation.
//!
//! Servers and resources are named by index when the peer runs the same site file (equal
//! digests), by id otherwise, and claims of one epoch, state and kind share one group, so a
//! takeover of 250 resources fits one datagram. What does not fit [`DATAGRAM_BUDGET`] is split
//! into pages by a hash of each resource's id: each round sends one page (in turn), a change
//! sends them all.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Node, Output};
use crate::config::{Kind, ResourceIdx, Role, ServerIdx};
use crate::failover::wire::{
    self, ClaimGroup, ClaimKind, ClaimState, Heartbeat, Name, Names, WireEpoch, WireLoad,
    WireNewer, WireRound,
};

/// Largest heartbeat sent: one unfragmented UDP datagram at a 1500-byte MTU (1472 bytes of
/// IPv4 payload, 1452 of IPv6), with room to spare.
pub const DATAGRAM_BUDGET: usize = 1400;

/// Who holds a resource at an epoch, and whether it is active.
type Holding = Option<(ServerIdx, bool)>;

/// The pages of one peer's heartbeat, without `seq` and `path`.
struct Pages {
    to: ServerIdx,
    pages: Vec<Heartbeat>,
}

impl Node {
    /// Sends one round: one page per peer and path, or every page when `all` (a change).
    pub(super) fn send_heartbeats(&mut self, all: bool, now: Duration, out: &mut Vec<Output>) {
        let me = self.ctx.me;
        let topo = self.ctx.topo.clone();
        let per_peer: Vec<Pages> = topo
            .peers(me)
            .iter()
            .map(|&to| Pages {
                to,
                pages: self.pages_for(to, now),
            })
            .collect();
        let cursor = self.page_cursor;
        for Pages { to, pages } in per_peer {
            let n = pages.len();
            let chosen: Vec<&Heartbeat> = if all || n == 1 {
                pages.iter().collect()
            } else {
                vec![&pages[cursor % n]]
            };
            for path in 0..topo.shared_paths(me, to) {
                for hb in &chosen {
                    self.seq += 1;
                    let hb = Heartbeat {
                        seq: self.seq,
                        path: path as u8,
                        ..(*hb).clone()
                    };
                    out.push(Output::Send {
                        path,
                        to,
                        bytes: wire::encode(&self.ctx.key, &hb),
                    });
                    self.stats.heartbeats_sent += 1;
                }
            }
            if n > 1 {
                self.stats.paged_rounds += 1;
            }
        }
        self.page_cursor = cursor.wrapping_add(1);
    }

    /// Everything `to` is told this round, in as many pages as it takes.
    fn pages_for(&self, to: ServerIdx, now: Duration) -> Vec<Heartbeat> {
        let site = &self.ctx.site;
        let topo = &self.ctx.topo;
        let peer = self.peers.get(to);
        let by_index = peer.is_some_and(|p| p.digest == self.ctx.digest);
        let interests = topo.interests(to);
        let cares = |r: ResourceIdx| interests.binary_search(&site.resource(r).server).is_ok();
        // Per resource, split into pages: claims, failures, and the peer's stale claims.
        let claims: Vec<(ResourceIdx, u64, ClaimState, ClaimKind)> = self
            .own
            .claims
            .iter()
            .filter(|(r, _)| cares(**r))
            .map(|(&r, c)| (r, c.epoch, c.state.wire(), c.kind))
            .collect();
        let failed: Vec<(ResourceIdx, u64)> = self
            .own
            .failed
            .iter()
            .filter(|(r, _)| cares(**r))
            .map(|(&r, f)| (r, f.epoch))
            .collect();
        let newer: Vec<(ResourceIdx, u64, Holding)> =
            peer.filter(|p| !p.silent).map_or_else(Vec::new, |p| {
                p.claims
                    .iter()
                    .filter(|(r, h)| h.holds() && self.known.get(**r) > h.epoch)
                    .map(|(&r, _)| {
                        let epoch = self.known.get(r);
                        (r, epoch, self.holder_at(r, epoch, now))
                    })
                    .collect()
            });
        let hears: Vec<Name> = interests
            .iter()
            .filter(|&&h| h != to && self.recently_heard(h, now))
            .map(|&h| self.server_name(h, by_index))
            .collect();
        let base = Heartbeat {
            from: site.server(self.ctx.me).id.clone(),
            incarnation: self.incarnation,
            state: self.my_state(),
            digest: self.ctx.digest,
            echo: peer.map_or(0, |p| p.incarnation),
            echo_seq: peer.map_or(0, |p| p.paths.iter().map(|x| x.last_seq).max().unwrap_or(0)),
            rounds: interests
                .iter()
                .map(|&h| (h, self.known.floor(h)))
                .filter(|&(_, round)| round > 0)
                .map(|(h, round)| WireRound {
                    server: self.server_name(h, by_index),
                    round,
                })
                .collect(),
            holds: self.holds.wire(|s| self.server_name(s, by_index)),
            hears,
            load: (site.server(self.ctx.me).role == Role::Failover)
                .then(|| self.wire_load(by_index)),
            ..Heartbeat::default()
        };
        let epochs = |list: &[(ResourceIdx, u64)], page: u8, pages: u8| -> Vec<WireEpoch> {
            list.iter()
                .filter(|(r, _)| topo.page(*r, pages) == page)
                .map(|&(r, epoch)| WireEpoch {
                    resource: self.resource_name(r, by_index),
                    epoch,
                })
                .collect()
        };
        let page = |page: u8, pages: u8| {
            let mine: Vec<_> = claims
                .iter()
                .filter(|c| topo.page(c.0, pages) == page)
                .copied()
                .collect();
            Heartbeat {
                page,
                pages,
                claims: self.groups(&mine, by_index),
                failed: epochs(&failed, page, pages),
                newer: newer
                    .iter()
                    .filter(|(r, _, _)| topo.page(*r, pages) == page)
                    .map(|&(r, epoch, holder)| WireNewer {
                        resource: self.resource_name(r, by_index),
                        epoch,
                        holder: holder.map(|(s, _)| self.server_name(s, by_index)),
                        active: holder.is_some_and(|(_, active)| active),
                    })
                    .collect(),
                ..base.clone()
            }
        };
        let whole = page(0, 1);
        let size = wire::encoded_len(&whole);
        if size <= DATAGRAM_BUDGET {
            return vec![whole];
        }
        // Enough pages for the per-resource part, in powers of two, checked.
        let fixed = wire::encoded_len(&base);
        let room = DATAGRAM_BUDGET.saturating_sub(fixed).max(64);
        let mut pages = (size - fixed).div_ceil(room).next_power_of_two().min(128) as u8;
        loop {
            let built: Vec<Heartbeat> = (0..pages).map(|p| page(p, pages)).collect();
            let fits = built
                .iter()
                .all(|hb| wire::encoded_len(hb) <= DATAGRAM_BUDGET);
            if fits || pages >= 128 {
                return built;
            }
            pages *= 2;
        }
    }

    /// Claims grouped by epoch, state and kind.
    fn groups(
        &self,
        claims: &[(ResourceIdx, u64, ClaimState, ClaimKind)],
        by_index: bool,
    ) -> Vec<ClaimGroup> {
        let mut groups: BTreeMap<(u64, ClaimState, ClaimKind), Vec<ResourceIdx>> = BTreeMap::new();
        for &(r, epoch, state, kind) in claims {
            groups.entry((epoch, state, kind)).or_default().push(r);
        }
        groups
            .into_iter()
            .map(|((epoch, state, kind), rs)| ClaimGroup {
                epoch,
                state,
                kind,
                resources: if by_index {
                    Names::Index(rs.iter().map(|r| r.0).collect())
                } else {
                    Names::Id(
                        rs.iter()
                            .map(|&r| self.ctx.site.resource(r).id.clone())
                            .collect(),
                    )
                },
            })
            .collect()
    }

    /// What this failover server holds in all.
    fn wire_load(&self, by_index: bool) -> WireLoad {
        let site = &self.ctx.site;
        let mut homes: Vec<ServerIdx> = Vec::new();
        let mut cameras = 0;
        for (&r, c) in &self.own.claims {
            if !c.state.holds() {
                continue;
            }
            let res = site.resource(r);
            if !homes.contains(&res.server) {
                homes.push(res.server);
            }
            if res.kind == Kind::Camera {
                cameras += 1;
            }
        }
        homes.sort_unstable();
        WireLoad {
            homes: homes
                .into_iter()
                .map(|h| self.server_name(h, by_index))
                .collect(),
            cameras,
        }
    }

    fn resource_name(&self, r: ResourceIdx, by_index: bool) -> Name {
        if by_index {
            Name::Index(r.0)
        } else {
            Name::Id(self.ctx.site.resource(r).id.clone())
        }
    }

    fn server_name(&self, s: ServerIdx, by_index: bool) -> Name {
        if by_index {
            Name::Index(u32::from(s.0))
        } else {
            Name::Id(self.ctx.site.server(s).id.clone())
        }
    }
}

/// The heartbeats of `site` that may not fit one datagram: for each sender and receiver whose
/// claims, in the worst case the site allows (a live server: all its resources; a failover
/// server: all it may take for the receiver's live servers, within its capacity), take more
/// than one page, a line `sender -> receiver: N datagrams (M claims)`. Empty when every
/// heartbeat fits one datagram. `buddygate check` prints it as a warning.
pub fn paging_report(site: &crate::config::Site) -> Vec<String> {
    use crate::failover::topology::Topology;
    let topo = Topology::new(site);
    let mut lines = Vec::new();
    for s in site.server_indices() {
        let srv = site.server(s);
        for &to in topo.peers(s) {
            let interests = topo.interests(to);
            let mut held: Vec<ResourceIdx> = site
                .resource_indices()
                .filter(|&r| {
                    let home = site.resource(r).server;
                    interests.binary_search(&home).is_ok()
                        && (home == s || topo.candidates(r).contains(&s))
                })
                .collect();
            if srv.role == Role::Failover {
                // Within its capacity: the largest homes first, up to max_servers (one when
                // mirrored), then cameras up to max_cameras.
                let homes = match srv.mode {
                    Some(crate::config::Mode::Mirrored) => Some(1),
                    _ => srv.max_servers.map(|m| m as usize),
                };
                if let Some(max) = homes {
                    let mut by_home: BTreeMap<ServerIdx, usize> = BTreeMap::new();
                    for &r in &held {
                        *by_home.entry(site.resource(r).server).or_default() += 1;
                    }
                    let mut largest: Vec<(usize, ServerIdx)> =
                        by_home.into_iter().map(|(h, n)| (n, h)).collect();
                    largest.sort_unstable_by(|a, b| b.cmp(a));
                    let kept: Vec<ServerIdx> =
                        largest.into_iter().take(max).map(|(_, h)| h).collect();
                    held.retain(|&r| kept.contains(&site.resource(r).server));
                }
                if let Some(max) = srv.max_cameras {
                    let mut cameras = 0;
                    held.retain(|&r| {
                        let camera = site.resource(r).kind == Kind::Camera;
                        cameras += u32::from(camera);
                        !camera || cameras <= max
                    });
                }
            }
            let hb = Heartbeat {
                from: srv.id.clone(),
                claims: vec![ClaimGroup {
                    epoch: u64::from(u32::MAX),
                    state: ClaimState::Active,
                    kind: ClaimKind::Takeover,
                    resources: Names::Index(held.iter().map(|r| r.0).collect()),
                }],
                rounds: interests
                    .iter()
                    .map(|&h| WireRound {
                        server: Name::Index(u32::from(h.0)),
                        round: u64::from(u32::MAX),
                    })
                    .collect(),
                ..Heartbeat::default()
            };
            let size = wire::encoded_len(&hb);
            if size > DATAGRAM_BUDGET {
                lines.push(format!(
                    "{} -> {}: about {} datagrams per change ({} claims); each round sends one of them",
                    srv.id,
                    site.server(to).id,
                    size.div_ceil(DATAGRAM_BUDGET - 200),
                    held.len()
                ));
            }
        }
    }
    lines
}

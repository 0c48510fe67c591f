//! What a heartbeat carries (rule 1): this node's state and claims, what it failed to run,
//! the round floors of the home servers the receiver may claim for, the receiver's claims it
//! knows a newer epoch for, every operator hold it knows, and the echo of the receiver's own
//! incarnation.

use super::{Node, Output};
use crate::failover::wire::{self, Heartbeat, WireClaim, WireEpoch, WireRound};

impl Node {
    pub(super) fn send_heartbeats(&mut self, out: &mut Vec<Output>) {
        let site = self.ctx.site.clone();
        let topo = self.ctx.topo.clone();
        let me = self.ctx.me;
        let claims: Vec<WireClaim> = self
            .own
            .claims
            .iter()
            .map(|(&r, c)| WireClaim {
                resource: site.resource(r).id.clone(),
                epoch: c.epoch,
                state: c.state.wire(),
                kind: c.kind,
            })
            .collect();
        let failed = self
            .own
            .failed
            .iter()
            .map(|(&r, f)| WireEpoch {
                resource: site.resource(r).id.clone(),
                epoch: f.epoch,
            })
            .collect();
        let mut hb = Heartbeat {
            from: site.server(me).id.clone(),
            incarnation: self.incarnation,
            seq: 0,
            path: 0,
            state: self.my_state(),
            digest: self.ctx.digest,
            echo: 0,
            echo_seq: 0,
            claims,
            failed,
            newer: Vec::new(),
            rounds: Vec::new(),
            holds: self.holds.wire(|s| site.server(s).id.clone()),
        };
        for &to in topo.peers(me) {
            (hb.echo, hb.echo_seq) = self.peers.get(to).map_or((0, 0), |p| {
                let seq = p.paths.iter().map(|x| x.last_seq).max().unwrap_or(0);
                (p.incarnation, seq)
            });
            hb.newer = self.peers.get(to).map_or_else(Vec::new, |p| {
                p.claims
                    .iter()
                    .filter(|(r, h)| self.known.get(*r) > h.epoch)
                    .map(|&(r, _)| WireEpoch {
                        resource: site.resource(r).id.clone(),
                        epoch: self.known.get(r),
                    })
                    .collect()
            });
            hb.rounds = topo
                .interests(to)
                .iter()
                .map(|&h| (h, self.known.floor(h)))
                .filter(|&(_, round)| round > 0)
                .map(|(h, round)| WireRound {
                    server: site.server(h).id.clone(),
                    round,
                })
                .collect();
            for path in 0..topo.shared_paths(me, to) {
                self.seq += 1;
                hb.seq = self.seq;
                hb.path = path as u8;
                out.push(Output::Send {
                    path,
                    to,
                    bytes: wire::encode(&self.ctx.key, &hb),
                });
                self.stats.heartbeats_sent += 1;
            }
        }
    }
}

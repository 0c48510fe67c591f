//! What a node's outputs do in the simulated world: agents that take `activation` to start and
//! `deactivation` to stop (and fail when a fault says so), and datagrams over the links.

use std::time::Duration;

use super::{Ev, NodeStatus, Sim};
use crate::config::{ResourceIdx, ServerIdx};
use crate::failover::{AgentOp, Durable, Epoch, Input, Output};

impl Sim {
    pub(super) fn agent_done(
        &mut self,
        node: ServerIdx,
        generation: u64,
        resource: ResourceIdx,
        epoch: Epoch,
        op: AgentOp,
    ) {
        let n = &mut self.nodes[node.0 as usize];
        if n.generation != generation {
            return;
        }
        let result = match op {
            AgentOp::Start if n.fail_start.contains(&resource) => {
                Err("simulated start failure".to_string())
            }
            AgentOp::Start => {
                n.running.insert(resource, epoch);
                let twins = self
                    .nodes
                    .iter()
                    .filter(|o| o.running.get(&resource) == Some(&epoch))
                    .count();
                if twins > 1 {
                    self.epoch_collisions += 1;
                    self.collisions.push((self.now, resource, epoch));
                }
                Ok(())
            }
            AgentOp::Stop if n.fail_stop.contains(&resource) => {
                Err("simulated stop failure".to_string())
            }
            AgentOp::Stop => {
                n.running.remove(&resource);
                Ok(())
            }
        };
        self.update_truth(resource);
        let done = Input::AgentDone {
            resource,
            epoch,
            op,
            result,
        };
        let n = &mut self.nodes[node.0 as usize];
        match n.status {
            NodeStatus::Crashed => {}
            // The resource changed already; the paused daemon hears of it on resume.
            NodeStatus::Paused => n.inbox.push(done),
            NodeStatus::Running => self.input(node, done),
        }
    }

    pub(super) fn carry_out(&mut self, s: ServerIdx, o: Output) {
        match o {
            Output::Send { path, to, bytes } => self.send(s, to, path, bytes),
            Output::Persist(records) => {
                let n = &mut self.nodes[s.0 as usize];
                for d in &records {
                    if let Durable::Incarnation(i) = d {
                        n.incarnation = n.incarnation.max(*i);
                    }
                    n.store.apply(d);
                }
                self.persisted(s, &records);
            }
            Output::Standby { resource, prepare } => {
                let n = &mut self.nodes[s.0 as usize];
                if prepare {
                    n.standby.insert(resource);
                } else {
                    n.standby.remove(&resource);
                }
            }
            Output::Start {
                resource,
                epoch,
                cover_from,
            } => {
                let n = &mut self.nodes[s.0 as usize];
                n.standby.remove(&resource);
                n.cover_from.insert(resource, cover_from);
                let n = &self.nodes[s.0 as usize];
                let durable = n
                    .store
                    .claims
                    .iter()
                    .any(|c| c.resource == resource && c.held && c.epoch == epoch);
                if !durable {
                    self.ordering_violations += 1;
                }
                self.agent(s, resource, epoch, AgentOp::Start);
            }
            Output::Stop { resource, epoch } => self.agent(s, resource, epoch, AgentOp::Stop),
            Output::Event(e) => {
                self.truth.on_event(self.now, s, &e);
                self.events.push((self.now, s, e));
            }
        }
    }

    fn agent(&mut self, s: ServerIdx, resource: ResourceIdx, epoch: Epoch, op: AgentOp) {
        let took = match op {
            AgentOp::Start => self.opts.activation,
            AgentOp::Stop => self.opts.deactivation,
        };
        let n = &mut self.nodes[s.0 as usize];
        let begin = n
            .busy_until
            .get(&resource)
            .copied()
            .unwrap_or(self.now)
            .max(self.now);
        let done = begin + took;
        n.busy_until.insert(resource, done);
        let generation = n.generation;
        self.schedule(
            done,
            Ev::Agent {
                node: s,
                generation,
                resource,
                epoch,
                op,
            },
        );
    }

    fn send(&mut self, from: ServerIdx, to: ServerIdx, path: usize, bytes: Vec<u8>) {
        self.max_datagram = self.max_datagram.max(bytes.len());
        self.datagrams += 1;
        let link = self
            .links
            .get(&(from, to, path))
            .cloned()
            .unwrap_or_default();
        if link.cut || (link.loss > 0.0 && self.rng.f64() < link.loss) {
            return;
        }
        let copies = if link.duplicate > 0.0 && self.rng.f64() < link.duplicate {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let jitter = link.jitter.as_micros() as u64;
            let extra = if jitter == 0 {
                0
            } else {
                self.rng.u64(0..jitter)
            };
            let at = self.now + link.delay + Duration::from_micros(extra);
            self.schedule(
                at,
                Ev::Deliver {
                    to,
                    path,
                    bytes: bytes.clone(),
                },
            );
        }
    }
}

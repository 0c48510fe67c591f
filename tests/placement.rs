//! Placement (DESIGN section 1, "Failover modes"): which failover server takes which orphaned
//! resource. Property tests over random sites check the rules on every answer; table tests
//! check one hand-worked answer per mode.

use std::collections::{BTreeSet, HashMap, HashSet};

use buddygate::config::{Kind, Mode, ResourceIdx, ServerIdx, Site};
use buddygate::failover::Topology;
use buddygate::failover::placement::{Availability, Load, Placement, check_rules, place};
use buddygate::sim::SiteBuilder;
use proptest::prelude::*;
use proptest::sample::{Index, select, subsequence};
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

// ---- a placement problem and the rules every answer must keep --------------------------------

/// One placement problem: a site, the orphans, and who may take what.
struct Scenario {
    site: Site,
    topo: Topology,
    /// The resources of the down live servers, in site order.
    orphans: Vec<ResourceIdx>,
    /// Per server: may it take work.
    available: Vec<bool>,
    /// (resource, server) pairs that already failed.
    failed: HashSet<(ResourceIdx, ServerIdx)>,
    /// Who holds a resource now (placement keeps it there when it can).
    holders: HashMap<ResourceIdx, ServerIdx>,
}

impl Scenario {
    fn new(
        site: Site,
        down: &[ServerIdx],
        unavailable: &[ServerIdx],
        failed: HashSet<(ResourceIdx, ServerIdx)>,
    ) -> Self {
        let topo = Topology::new(&site);
        let orphans = site
            .resource_indices()
            .filter(|&r| down.contains(&site.resource(r).server))
            .collect();
        let available = site
            .server_indices()
            .map(|s| !unavailable.contains(&s))
            .collect();
        Self {
            site,
            topo,
            orphans,
            available,
            failed,
            holders: HashMap::new(),
        }
    }

    fn is_available(&self, s: ServerIdx) -> bool {
        self.available[s.0 as usize]
    }

    fn has_failed(&self, r: ResourceIdx, s: ServerIdx) -> bool {
        self.failed.contains(&(r, s))
    }

    fn place(&self, orphans: &[ResourceIdx]) -> Placement {
        place(
            &self.site,
            &self.topo,
            orphans,
            |s| {
                if self.is_available(s) {
                    Availability::Yes
                } else {
                    Availability::No
                }
            },
            |r, s| self.has_failed(r, s),
            |r| self.holders.get(&r).copied(),
            |_| Load::default(),
        )
    }

    /// The holder of `r` if placement should have kept it there: a candidate that is
    /// available and has not failed it.
    fn keeper(&self, r: ResourceIdx) -> Option<ServerIdx> {
        self.holders.get(&r).copied().filter(|&h| {
            self.topo.candidates(r).contains(&h) && self.is_available(h) && !self.has_failed(r, h)
        })
    }

    fn rid(&self, r: ResourceIdx) -> &str {
        &self.site.resource(r).id
    }

    fn sid(&self, s: ServerIdx) -> &str {
        &self.site.server(s).id
    }

    /// Every rule, (a) to (d); the first one broken.
    fn check(&self, p: &Placement) -> Result<(), String> {
        // (a) the crate's own rule check.
        check_rules(&self.site, &self.topo, &self.orphans, p).map_err(|e| format!("(a) {e}"))?;
        // (b) every orphan exactly once, assigned or unplaced; nothing else.
        let mut seen = HashSet::new();
        for &r in p.assigned.iter().map(|(r, _)| r).chain(&p.unplaced) {
            if !seen.insert(r) {
                return Err(format!("(b) {} appears twice", self.rid(r)));
            }
            if !self.orphans.contains(&r) {
                return Err(format!("(b) {} appears but is no orphan", self.rid(r)));
            }
        }
        if let Some(&r) = self.orphans.iter().find(|r| !seen.contains(r)) {
            return Err(format!(
                "(b) orphan {} neither assigned nor unplaced",
                self.rid(r)
            ));
        }
        let end = End::of(&self.site, p);
        // (c) an unplaced orphan had no room on any candidate that could have taken it, and
        // what filled that room came first.
        for &r in &p.unplaced {
            for &c in self.topo.candidates(r) {
                if self.is_available(c) && !self.has_failed(r, c) {
                    self.blocked(&end, c, r)
                        .map_err(|e| format!("(c) unplaced {}: {e}", self.rid(r)))?;
                }
            }
        }
        // (d) an assigned orphan went to a candidate that may take it, and every earlier
        // candidate was unavailable, had failed it, or was full (of resources placed first).
        for &(r, s) in &p.assigned {
            if !self.is_available(s) {
                return Err(format!(
                    "(d) {} on unavailable {}",
                    self.rid(r),
                    self.sid(s)
                ));
            }
            if self.has_failed(r, s) {
                return Err(format!(
                    "(d) {} on {}, which failed it",
                    self.rid(r),
                    self.sid(s)
                ));
            }
            let cands = self.topo.candidates(r);
            let pos = cands.iter().position(|&c| c == s).ok_or_else(|| {
                format!("(d) {} on {}, not a candidate", self.rid(r), self.sid(s))
            })?;
            // (e) sticky: a resource stays with its holder unless the holder is full (of
            // resources placed first); it moves to the buddy order only then.
            match self.keeper(r) {
                Some(h) if h == s => continue,
                Some(h) => self.blocked(&end, h, r).map_err(|e| {
                    format!(
                        "(e) {} moved from its holder {} to {}: {e}",
                        self.rid(r),
                        self.sid(h),
                        self.sid(s)
                    )
                })?,
                None => {}
            }
            for &c in &cands[..pos] {
                if self.is_available(c) && !self.has_failed(r, c) {
                    self.blocked(&end, c, r).map_err(|e| {
                        format!(
                            "(d) {} on {} skipped earlier {}: {e}",
                            self.rid(r),
                            self.sid(s),
                            self.sid(c)
                        )
                    })?;
                }
            }
        }
        Ok(())
    }

    /// `Ok` when adding `r` to `c` breaks a limit of `c` (given what `c` ends up with), and
    /// every resource holding that limit has at least `r`'s priority: capacity only ever
    /// fills, and it fills highest priority first, so a limit that stopped `r` was full
    /// before `r`'s turn and stays full of the resources placed before `r`.
    fn blocked(&self, end: &End, c: ServerIdx, r: ResourceIdx) -> Result<(), String> {
        let srv = self.site.server(c);
        let res = self.site.resource(r);
        let home = res.server;
        let homes = &end.homes[c.0 as usize];
        // Limits `r` would break, each with the resources competing for it.
        let mut limits: Vec<(&str, Vec<ResourceIdx>)> = Vec::new();
        // The resource that took `h`'s server slot on `c`: the first of `h`'s resources placed
        // there, which is its highest priority one.
        let slot_holder = |h: ServerIdx| -> ResourceIdx {
            end.on[c.0 as usize]
                .iter()
                .copied()
                .filter(|&x| self.site.resource(x).server == h)
                .max_by_key(|&x| (self.site.resource(x).priority, std::cmp::Reverse(x)))
                .expect("a hosted home has a resource")
        };
        if srv.mode == Some(Mode::Mirrored) && homes.iter().any(|&h| h != home) {
            let holders = homes
                .iter()
                .filter(|&&h| h != home)
                .map(|&h| slot_holder(h));
            limits.push(("mirrored", holders.collect()));
        }
        if let Some(max) = srv.max_servers
            && !homes.contains(&home)
            && homes.len() as u32 >= max
        {
            limits.push((
                "max_servers",
                homes.iter().map(|&h| slot_holder(h)).collect(),
            ));
        }
        if let Some(max) = srv.max_cameras
            && res.kind == Kind::Camera
            && end.cameras[c.0 as usize] >= max
        {
            let cams = end.on[c.0 as usize]
                .iter()
                .copied()
                .filter(|&x| self.site.resource(x).kind == Kind::Camera);
            limits.push(("max_cameras", cams.collect()));
        }
        if limits.is_empty() {
            return Err(format!("{} had room for it", srv.id));
        }
        let first_lower = |holders: &[ResourceIdx]| {
            holders
                .iter()
                .copied()
                .find(|&x| self.site.resource(x).priority < res.priority)
        };
        if limits
            .iter()
            .any(|(_, holders)| first_lower(holders).is_none())
        {
            return Ok(());
        }
        let (limit, holders) = &limits[0];
        let x = first_lower(holders).expect("some holder has a lower priority");
        Err(format!(
            "{} is at {limit} with {} (priority {}) ahead of it (priority {})",
            srv.id,
            self.rid(x),
            self.site.resource(x).priority,
            res.priority
        ))
    }
}

/// What each server hosts in an answer.
struct End {
    homes: Vec<BTreeSet<ServerIdx>>,
    cameras: Vec<u32>,
    on: Vec<Vec<ResourceIdx>>,
}

impl End {
    fn of(site: &Site, p: &Placement) -> Self {
        let n = site.servers.len();
        let mut end = End {
            homes: vec![BTreeSet::new(); n],
            cameras: vec![0; n],
            on: vec![Vec::new(); n],
        };
        for &(r, s) in &p.assigned {
            let res = site.resource(r);
            end.homes[s.0 as usize].insert(res.server);
            end.on[s.0 as usize].push(r);
            if res.kind == Kind::Camera {
                end.cameras[s.0 as usize] += 1;
            }
        }
        end
    }
}

// ---- random sites ----------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct LiveSpec {
    /// Ordered subset of the failover servers, by number.
    buddies: Vec<usize>,
    /// (kind, priority) per resource.
    resources: Vec<(Kind, i32)>,
    down: bool,
}

#[derive(Debug, Clone)]
struct FoSpec {
    /// 0 mirrored (the buddy of the first live server listing it, dropped from the other
    /// lists; spread-servers if none lists it),
    /// 1 spread-servers, 2 spread-cameras.
    mode: u8,
    max_servers: Option<u32>,
    max_cameras: Option<u32>,
    /// Spread-cameras: indices into all resources.
    picks: Vec<Index>,
    available: bool,
}

#[derive(Debug, Clone)]
struct Spec {
    live: Vec<LiveSpec>,
    fo: Vec<FoSpec>,
    /// (orphan, candidate of it) pairs that failed.
    failed: Vec<(Index, Index)>,
    /// (orphan, candidate of it) pairs: who holds the orphan now.
    held: Vec<(Index, Index)>,
    /// Seed of the orphan shuffle.
    seed: u64,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![3 => Just(Kind::Camera), 2 => select(Kind::ALL.to_vec())]
}

fn live_spec(n_fo: usize) -> impl Strategy<Value = LiveSpec> {
    (
        subsequence((0..n_fo).collect::<Vec<_>>(), 0..=n_fo).prop_shuffle(),
        prop::collection::vec((kind(), -1i32..4), 0..8),
        prop::bool::weighted(0.5),
    )
        .prop_map(|(buddies, resources, down)| LiveSpec {
            buddies,
            resources,
            down,
        })
}

fn fo_spec() -> impl Strategy<Value = FoSpec> {
    (
        prop_oneof![1 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8)],
        prop::option::weighted(0.7, 1u32..=3),
        prop::option::weighted(0.7, 1u32..=6),
        prop::collection::vec(any::<Index>(), 0..8),
        prop::bool::weighted(0.8),
    )
        .prop_map(
            |(mode, max_servers, max_cameras, picks, available)| FoSpec {
                mode,
                max_servers,
                max_cameras,
                picks,
                available,
            },
        )
}

fn spec() -> impl Strategy<Value = Spec> {
    (1..=12usize, 1..=5usize).prop_flat_map(|(n_live, n_fo)| {
        (
            prop::collection::vec(live_spec(n_fo), n_live),
            prop::collection::vec(fo_spec(), n_fo),
            prop::collection::vec((any::<Index>(), any::<Index>()), 0..8),
            prop::collection::vec((any::<Index>(), any::<Index>()), 0..8),
            any::<u64>(),
        )
            .prop_map(|(live, fo, failed, held, seed)| Spec {
                live,
                fo,
                failed,
                held,
                seed,
            })
    })
}

fn build(spec: &Spec) -> Scenario {
    let live_id = |i: usize| format!("live-{i:02}");
    let fo_id = |j: usize| format!("fo-{j}");
    let mut rids = Vec::new();
    let mut b = SiteBuilder::new("prop");
    // A mirrored server keeps only the first live server that lists it.
    let mirrored_for: Vec<Option<usize>> = (0..spec.fo.len())
        .map(|j| {
            let first = spec.live.iter().position(|l| l.buddies.contains(&j));
            first.filter(|_| spec.fo[j].mode == 0)
        })
        .collect();
    for (i, l) in spec.live.iter().enumerate() {
        let buddies: Vec<String> = l
            .buddies
            .iter()
            .filter(|&&j| mirrored_for[j].is_none_or(|owner| owner == i))
            .map(|&j| fo_id(j))
            .collect();
        let buddies: Vec<&str> = buddies.iter().map(String::as_str).collect();
        b = b.live(&live_id(i), &buddies);
    }
    for (i, l) in spec.live.iter().enumerate() {
        for &(k, prio) in &l.resources {
            let id = format!("r{:03}-{}", rids.len(), k.as_str());
            b = b.resource(&id, k, &live_id(i), prio);
            rids.push(id);
        }
    }
    for (j, f) in spec.fo.iter().enumerate() {
        let mode = match f.mode {
            0 if mirrored_for[j].is_some() => Mode::Mirrored,
            2 => Mode::SpreadCameras,
            _ => Mode::SpreadServers,
        };
        let id = fo_id(j);
        b = match mode {
            Mode::Mirrored => b.failover(&id, mode, None, None),
            _ => b.failover(&id, mode, f.max_servers, f.max_cameras),
        };
        if mode == Mode::SpreadCameras && !rids.is_empty() {
            let picks: BTreeSet<&str> = f
                .picks
                .iter()
                .map(|i| rids[i.index(rids.len())].as_str())
                .collect();
            b = b.pick(&id, &picks.into_iter().collect::<Vec<_>>());
        }
    }
    let site = b.build();
    let idx = |id: &str| site.server_idx(id).expect("built");
    let down: Vec<ServerIdx> = (0..spec.live.len())
        .filter(|&i| spec.live[i].down)
        .map(|i| idx(&live_id(i)))
        .collect();
    let unavailable: Vec<ServerIdx> = (0..spec.fo.len())
        .filter(|&j| !spec.fo[j].available)
        .map(|j| idx(&fo_id(j)))
        .collect();
    let mut sc = Scenario::new(site, &down, &unavailable, HashSet::new());
    if !sc.orphans.is_empty() {
        for (ri, ci) in &spec.failed {
            let r = sc.orphans[ri.index(sc.orphans.len())];
            let cands = sc.topo.candidates(r);
            if !cands.is_empty() {
                sc.failed.insert((r, cands[ci.index(cands.len())]));
            }
        }
        for (ri, ci) in &spec.held {
            let r = sc.orphans[ri.index(sc.orphans.len())];
            let cands = sc.topo.candidates(r);
            if !cands.is_empty() {
                sc.holders.insert(r, cands[ci.index(cands.len())]);
            }
        }
    }
    sc
}

/// The orphans shuffled, some of them twice.
fn shuffled(orphans: &[ResourceIdx], seed: u64) -> Vec<ResourceIdx> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = orphans.to_vec();
    let extra: Vec<ResourceIdx> = orphans
        .iter()
        .copied()
        .filter(|_| rng.u8(0..4) == 0)
        .collect();
    out.extend(extra);
    rng.shuffle(&mut out);
    out
}

proptest! {
    // No regression file: this suite may only add tests/placement.rs; a failure prints its
    // minimal case instead.
    #![proptest_config(Config { cases: 256, failure_persistence: None, ..Config::default() })]

    /// (a)-(e): the rule check, every orphan accounted for, priority, buddy order, sticky.
    #[test]
    fn every_answer_keeps_the_rules(spec in spec()) {
        let sc = build(&spec);
        let p = sc.place(&sc.orphans);
        if let Err(e) = sc.check(&p) {
            return Err(TestCaseError::fail(format!("{e}\nplacement: {p:?}\nfailed: {:?}", sc.failed)));
        }
    }

    /// Capacity counts what each failover server already carries for other live servers
    /// (resources not being placed): committed load plus what is placed never exceeds it.
    #[test]
    fn committed_load_counts_against_capacity(spec in spec()) {
        let sc = build(&spec);
        let mut rng = fastrand::Rng::with_seed(spec.seed);
        let mut committed: HashMap<ServerIdx, Load> = HashMap::new();
        for r in sc.site.resource_indices().filter(|r| !sc.orphans.contains(r)) {
            if let Some(&c) = rng.choice(sc.topo.candidates(r))
                && rng.bool()
            {
                let load = committed.entry(c).or_default();
                let mut next = load.clone();
                next.add(&sc.site, r);
                if !next.exceeds(&sc.site, c) {
                    *load = next;
                }
            }
        }
        let p = place(
            &sc.site,
            &sc.topo,
            &sc.orphans,
            |s| if sc.is_available(s) { Availability::Yes } else { Availability::No },
            |r, s| sc.has_failed(r, s),
            |r| sc.holders.get(&r).copied(),
            |s| committed.get(&s).cloned().unwrap_or_default(),
        );
        let mut total = committed.clone();
        for &(r, s) in &p.assigned {
            total.entry(s).or_default().add(&sc.site, r);
        }
        for (s, load) in &total {
            prop_assert!(
                !load.exceeds(&sc.site, *s),
                "{} carries {load:?} (committed {:?})",
                sc.sid(*s),
                committed.get(s)
            );
        }
        // Nothing placed is lost: every orphan is assigned or unplaced, once.
        prop_assert_eq!(p.assigned.len() + p.unplaced.len(), sc.orphans.len());
    }

    /// (e): the order (and repetition) of the orphans does not matter.
    #[test]
    fn answer_does_not_depend_on_orphan_order(spec in spec()) {
        let sc = build(&spec);
        let p = sc.place(&sc.orphans);
        let mut rev = sc.orphans.clone();
        rev.reverse();
        prop_assert_eq!(&sc.place(&rev), &p);
        prop_assert_eq!(&sc.place(&shuffled(&sc.orphans, spec.seed)), &p);
    }
}

/// The generator reaches the interesting cases: without this the properties could pass on
/// sites where nothing is ever short of room.
#[test]
fn generator_covers_every_rule() {
    let mut runner = TestRunner::deterministic();
    let strategy = spec();
    let mut counts = [0usize; 9];
    const NAMES: [&str; 9] = [
        "mirrored takes",
        "spread-cameras takes",
        "unplaced",
        "skip: unavailable",
        "skip: failed",
        "skip: max_servers",
        "skip: max_cameras",
        "not on first candidate",
        "kept by its holder, not the first candidate",
    ];
    for _ in 0..512 {
        let spec = strategy.new_tree(&mut runner).expect("value").current();
        let sc = build(&spec);
        let p = sc.place(&sc.orphans);
        let end = End::of(&sc.site, &p);
        let mut hit = [false; 9];
        for &(r, s) in &p.assigned {
            match sc.site.server(s).mode {
                Some(Mode::Mirrored) => hit[0] = true,
                Some(Mode::SpreadCameras) => hit[1] = true,
                _ => {}
            }
            let cands = sc.topo.candidates(r);
            let pos = cands.iter().position(|&c| c == s).unwrap();
            hit[7] |= pos > 0;
            hit[8] |= pos > 0 && sc.holders.get(&r) == Some(&s);
            for &c in &cands[..pos] {
                let srv = sc.site.server(c);
                let home = sc.site.resource(r).server;
                let homes = &end.homes[c.0 as usize];
                hit[3] |= !sc.is_available(c);
                hit[4] |= sc.has_failed(r, c);
                hit[5] |= srv
                    .max_servers
                    .is_some_and(|m| !homes.contains(&home) && homes.len() as u32 >= m);
                hit[6] |= srv.max_cameras.is_some_and(|m| {
                    sc.site.resource(r).kind == Kind::Camera && end.cameras[c.0 as usize] >= m
                });
            }
        }
        hit[2] = !p.unplaced.is_empty();
        for (n, h) in counts.iter_mut().zip(hit) {
            *n += h as usize;
        }
    }
    for (name, n) in NAMES.iter().zip(counts) {
        assert!(
            n >= 10,
            "only {n} of 512 random sites had {name:?}: {counts:?}"
        );
    }
}

/// The rule checker of this file rejects wrong answers, so a pass means something.
#[test]
fn checker_rejects_wrong_answers() {
    // live-1 (cameras a: 9, b: 1) and live-2 (camera c: 5) down; fo-1 takes 1 camera, then
    // fo-2; fo-3 mirrors live-3.
    let site = SiteBuilder::new("hq")
        .live("live-1", &["fo-1", "fo-2"])
        .live("live-2", &["fo-1", "fo-2"])
        .live("live-3", &["fo-3"])
        .failover("fo-1", Mode::SpreadServers, None, Some(1))
        .failover("fo-2", Mode::SpreadServers, None, None)
        .failover("fo-3", Mode::Mirrored, None, None)
        .resource("a", Kind::Camera, "live-1", 9)
        .resource("b", Kind::Camera, "live-1", 1)
        .resource("c", Kind::Camera, "live-2", 5)
        .resource("d", Kind::Camera, "live-3", 0)
        .build();
    let [l1, l2, fo1, fo2, fo3] =
        ["live-1", "live-2", "fo-1", "fo-2", "fo-3"].map(|s| site.server_idx(s).unwrap());
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|r| site.resource_idx(r).unwrap());
    let sc = Scenario::new(site, &[l1, l2], &[], HashSet::new());
    let ok = Placement {
        assigned: vec![(a, fo1), (c, fo2), (b, fo2)],
        unplaced: vec![],
    };
    assert_eq!(sc.place(&sc.orphans), ok);
    assert_eq!(sc.check(&ok), Ok(()));
    let wrong = |assigned: Vec<(ResourceIdx, ServerIdx)>, unplaced: Vec<ResourceIdx>| {
        sc.check(&Placement { assigned, unplaced }).unwrap_err()
    };
    // Lower priority camera took the first buddy.
    assert!(wrong(vec![(b, fo1), (a, fo2), (c, fo2)], vec![]).starts_with("(d)"));
    // Skipped a buddy with room.
    assert!(wrong(vec![(a, fo2), (c, fo2), (b, fo2)], vec![]).starts_with("(d)"));
    // Left one unplaced though fo-2 has room.
    assert!(wrong(vec![(a, fo1), (c, fo2)], vec![b]).starts_with("(c)"));
    // Over capacity, twice, not a candidate, not an orphan, forgotten.
    assert!(wrong(vec![(a, fo1), (c, fo1), (b, fo2)], vec![]).starts_with("(a)"));
    assert!(wrong(vec![(a, fo1), (c, fo2), (b, fo2)], vec![b]).starts_with("(a)"));
    assert!(wrong(vec![(a, fo1), (c, fo2), (b, fo3)], vec![]).starts_with("(a)"));
    assert!(wrong(vec![(a, fo1), (c, fo2), (b, fo2), (d, fo3)], vec![]).starts_with("(a)"));
    assert!(wrong(vec![(a, fo1), (c, fo2)], vec![]).starts_with("(b)"));
    assert!(wrong(vec![(a, fo1), (c, fo2), (b, fo2)], vec![d]).starts_with("(b)"));

    // Sticky: c held by fo-2 stays there, b held by fo-1 yields fo-1's one camera slot to a
    // (higher priority, placed first) and goes on to fo-2.
    let mut sc = sc;
    sc.holders = HashMap::from([(c, fo2), (b, fo1)]);
    let sticky = Placement {
        assigned: vec![(a, fo1), (c, fo2), (b, fo2)],
        unplaced: vec![],
    };
    assert_eq!(sc.place(&sc.orphans), sticky);
    assert_eq!(sc.check(&sticky), Ok(()));
    // a held by fo-2 stays there; c (next in priority) then gets fo-1's slot; b moves on.
    sc.holders = HashMap::from([(a, fo2)]);
    let kept = Placement {
        assigned: vec![(a, fo2), (c, fo1), (b, fo2)],
        unplaced: vec![],
    };
    assert_eq!(sc.place(&sc.orphans), kept);
    assert_eq!(sc.check(&kept), Ok(()));
    // Moved off a holder with room: the buddy-order answer is wrong now.
    let err = sc.check(&ok).unwrap_err();
    assert!(err.starts_with("(e)"), "{err}");
}

// ---- one hand-worked answer per mode ----------------------------------------------------------

/// Places the resources of `down` and returns (assigned as sorted (resource, server) ids,
/// unplaced as sorted ids), after checking the answer against every rule above.
fn run(
    site: Site,
    down: &[&str],
    unavailable: &[&str],
    failed: &[(&str, &str)],
) -> (Vec<(String, String)>, Vec<String>) {
    let s = |id: &str| {
        site.server_idx(id)
            .unwrap_or_else(|| panic!("no server {id}"))
    };
    let down: Vec<ServerIdx> = down.iter().map(|id| s(id)).collect();
    let unavailable: Vec<ServerIdx> = unavailable.iter().map(|id| s(id)).collect();
    let failed = failed
        .iter()
        .map(|(r, srv)| (site.resource_idx(r).unwrap(), s(srv)))
        .collect();
    let sc = Scenario::new(site, &down, &unavailable, failed);
    let p = sc.place(&sc.orphans);
    sc.check(&p).unwrap();
    let mut assigned: Vec<(String, String)> = p
        .assigned
        .iter()
        .map(|&(r, s)| (sc.rid(r).to_string(), sc.sid(s).to_string()))
        .collect();
    assigned.sort();
    let mut unplaced: Vec<String> = p.unplaced.iter().map(|&r| sc.rid(r).to_string()).collect();
    unplaced.sort();
    (assigned, unplaced)
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = v
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    v.sort();
    v
}

fn ids(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn mirrored_moves_everything_one_to_one() {
    // live-1 → fo-1, live-2 → fo-2, each mirrored; only live-1 is down.
    let site = SiteBuilder::new("hq")
        .live("live-1", &["fo-1"])
        .live("live-2", &["fo-2"])
        .failover("fo-1", Mode::Mirrored, None, None)
        .failover("fo-2", Mode::Mirrored, None, None)
        .many("live-1", Kind::Camera, 3, 0)
        .resource("io-1", Kind::Io, "live-1", 5)
        .resource("map-1", Kind::Map, "live-1", -1)
        .resource("mw-1", Kind::Middleware, "live-1", 0)
        .many("live-2", Kind::Camera, 2, 0)
        .build();
    let (assigned, unplaced) = run(site, &["live-1"], &[], &[]);
    assert_eq!(
        assigned,
        pairs(&[
            ("live-1-camera-001", "fo-1"),
            ("live-1-camera-002", "fo-1"),
            ("live-1-camera-003", "fo-1"),
            ("io-1", "fo-1"),
            ("map-1", "fo-1"),
            ("mw-1", "fo-1"),
        ])
    );
    assert_eq!(unplaced, ids(&[]));
}

#[test]
fn mirrored_hosts_one_live_server_even_when_listed_by_two() {
    // A misconfigured site: fo-1 (mirrored) is the first buddy of two live servers that both
    // go down. The one with the highest priority resource (live-2, cam-2: 5) gets fo-1; all
    // of live-1 falls to fo-2.
    let site = SiteBuilder::new("hq")
        .live("live-1", &["fo-1", "fo-2"])
        .live("live-2", &["fo-1", "fo-2"])
        .failover("fo-1", Mode::Mirrored, None, None)
        .failover("fo-2", Mode::SpreadServers, None, None)
        .resource("cam-1", Kind::Camera, "live-1", 1)
        .resource("io-1", Kind::Io, "live-1", 0)
        .resource("cam-2", Kind::Camera, "live-2", 5)
        .resource("io-2", Kind::Io, "live-2", 0)
        .build();
    let (assigned, unplaced) = run(site, &["live-1", "live-2"], &[], &[]);
    assert_eq!(
        assigned,
        pairs(&[
            ("cam-2", "fo-1"),
            ("io-2", "fo-1"),
            ("cam-1", "fo-2"),
            ("io-1", "fo-2")
        ])
    );
    assert_eq!(unplaced, ids(&[]));
}

#[test]
fn spread_servers_max_servers_one_two_down() {
    // fo-1 hosts one live server at a time; live-1 and live-2 are both down and list
    // [fo-1, fo-2]. Placement is per resource, highest priority first:
    //   cam-2a (10) → fo-1, which now hosts live-2 (its one slot);
    //   cam-1c (9)  → fo-1 full (live-1 would be a second server) → fo-2;
    //   cam-1a (5)  → fo-1 full → fo-2;
    //   cam-1b (1)  → fo-2 (ties with cam-2b: site order, cam-1b first);
    //   cam-2b (1)  → fo-1 (live-2 is hosted there already, no new slot needed);
    //   io-1 (0)    → fo-2;  lpr-2 (0) → fo-1.
    // So the live server owning the single highest priority resource gets the first buddy
    // for all its resources, even though live-1 has more and, in sum, higher priorities;
    // the rest "fall to the next buddy" (DESIGN section 1). fo-3 (max_servers = 1, listed
    // third) is never needed.
    let site = SiteBuilder::new("hq")
        .live("live-1", &["fo-1", "fo-2", "fo-3"])
        .live("live-2", &["fo-1", "fo-2", "fo-3"])
        .failover("fo-1", Mode::SpreadServers, Some(1), None)
        .failover("fo-2", Mode::SpreadServers, None, None)
        .failover("fo-3", Mode::SpreadServers, Some(1), None)
        .resource("cam-1a", Kind::Camera, "live-1", 5)
        .resource("cam-1b", Kind::Camera, "live-1", 1)
        .resource("io-1", Kind::Io, "live-1", 0)
        .resource("cam-1c", Kind::Camera, "live-1", 9)
        .resource("cam-2a", Kind::Camera, "live-2", 10)
        .resource("cam-2b", Kind::Camera, "live-2", 1)
        .resource("lpr-2", Kind::Lpr, "live-2", 0)
        .build();
    let (assigned, unplaced) = run(site.clone(), &["live-1", "live-2"], &[], &[]);
    assert_eq!(
        assigned,
        pairs(&[
            ("cam-2a", "fo-1"),
            ("cam-2b", "fo-1"),
            ("lpr-2", "fo-1"),
            ("cam-1a", "fo-2"),
            ("cam-1b", "fo-2"),
            ("cam-1c", "fo-2"),
            ("io-1", "fo-2"),
        ])
    );
    assert_eq!(unplaced, ids(&[]));

    // With fo-2 unavailable, live-1 falls to fo-3 (its one slot); nothing is lost.
    let (assigned, unplaced) = run(site.clone(), &["live-1", "live-2"], &["fo-2"], &[]);
    assert_eq!(
        assigned,
        pairs(&[
            ("cam-2a", "fo-1"),
            ("cam-2b", "fo-1"),
            ("lpr-2", "fo-1"),
            ("cam-1a", "fo-3"),
            ("cam-1b", "fo-3"),
            ("cam-1c", "fo-3"),
            ("io-1", "fo-3"),
        ])
    );
    assert_eq!(unplaced, ids(&[]));

    // With fo-2 and fo-3 unavailable, live-1 has nowhere to go.
    let (assigned, unplaced) = run(site, &["live-1", "live-2"], &["fo-2", "fo-3"], &[]);
    assert_eq!(
        assigned,
        pairs(&[("cam-2a", "fo-1"), ("cam-2b", "fo-1"), ("lpr-2", "fo-1")])
    );
    assert_eq!(unplaced, ids(&["cam-1a", "cam-1b", "cam-1c", "io-1"]));
}

#[test]
fn spread_servers_max_cameras_highest_priority_first() {
    // fo-1 takes 3 cameras; live-1 and live-2 (5 cameras between them) are down.
    // Cameras by priority: c1b 9, c2a 7, c1c 5 → fo-1 (now full); c2b 3, c1a 1 → fo-2.
    // max_cameras counts cameras only: lpr-1 (20, placed first) takes no camera slot, and
    // io-1 and map-2 (0, placed after fo-1 is full of cameras) still go to fo-1.
    // live-3 is up: its camera stays where it is.
    let site = SiteBuilder::new("hq")
        .live("live-1", &["fo-1", "fo-2"])
        .live("live-2", &["fo-1", "fo-2"])
        .live("live-3", &["fo-1", "fo-2"])
        .failover("fo-1", Mode::SpreadServers, Some(2), Some(3))
        .failover("fo-2", Mode::SpreadServers, None, None)
        .resource("c1a", Kind::Camera, "live-1", 1)
        .resource("c1b", Kind::Camera, "live-1", 9)
        .resource("c1c", Kind::Camera, "live-1", 5)
        .resource("io-1", Kind::Io, "live-1", 0)
        .resource("lpr-1", Kind::Lpr, "live-1", 20)
        .resource("c2a", Kind::Camera, "live-2", 7)
        .resource("c2b", Kind::Camera, "live-2", 3)
        .resource("map-2", Kind::Map, "live-2", 0)
        .resource("c3a", Kind::Camera, "live-3", 100)
        .build();
    let (assigned, unplaced) = run(site, &["live-1", "live-2"], &[], &[]);
    assert_eq!(
        assigned,
        pairs(&[
            ("c1b", "fo-1"),
            ("c2a", "fo-1"),
            ("c1c", "fo-1"),
            ("lpr-1", "fo-1"),
            ("io-1", "fo-1"),
            ("map-2", "fo-1"),
            ("c2b", "fo-2"),
            ("c1a", "fo-2"),
        ])
    );
    assert_eq!(unplaced, ids(&[]));
}

#[test]
fn spread_servers_equal_priorities_go_in_site_order() {
    // Four cameras of one priority, fo-1 takes 2: the first two in site order stay together.
    let site = SiteBuilder::new("hq")
        .live("live-1", &["fo-1", "fo-2"])
        .failover("fo-1", Mode::SpreadServers, None, Some(2))
        .failover("fo-2", Mode::SpreadServers, None, None)
        .many("live-1", Kind::Camera, 4, 3)
        .build();
    let (assigned, unplaced) = run(site, &["live-1"], &[], &[]);
    assert_eq!(
        assigned,
        pairs(&[
            ("live-1-camera-001", "fo-1"),
            ("live-1-camera-002", "fo-1"),
            ("live-1-camera-003", "fo-2"),
            ("live-1-camera-004", "fo-2"),
        ])
    );
    assert_eq!(unplaced, ids(&[]));
}

#[test]
fn spread_cameras_takes_only_its_picks_from_two_live_servers() {
    // fo-sc picks cam-1b (live-1, which lists it first) and io-2 (live-2, which does not
    // list it). fo-1 hosts one live server.
    //   cam-1a (9): candidates [fo-1] (fo-sc does not pick it) → fo-1, hosting live-1;
    //   cam-1b (5): [fo-sc, fo-1] → fo-sc;
    //   cam-2a (3): [fo-1] → fo-1 full → unplaced (fo-sc has room but does not pick it);
    //   io-2 (1):   [fo-1, fo-sc] → fo-1 full → fo-sc;
    //   io-1 (0):   [fo-1] → fo-1 (live-1 hosted already).
    let site = SiteBuilder::new("hq")
        .live("live-1", &["fo-sc", "fo-1"])
        .live("live-2", &["fo-1"])
        .failover("fo-1", Mode::SpreadServers, Some(1), None)
        .failover("fo-sc", Mode::SpreadCameras, None, None)
        .resource("cam-1a", Kind::Camera, "live-1", 9)
        .resource("cam-1b", Kind::Camera, "live-1", 5)
        .resource("io-1", Kind::Io, "live-1", 0)
        .resource("cam-2a", Kind::Camera, "live-2", 3)
        .resource("io-2", Kind::Io, "live-2", 1)
        .pick("fo-sc", &["cam-1b", "io-2"])
        .build();
    let topo = Topology::new(&site);
    let r = |id: &str| site.resource_idx(id).unwrap();
    let s = |id: &str| site.server_idx(id).unwrap();
    assert_eq!(topo.candidates(r("cam-1a")), [s("fo-1")]);
    assert_eq!(topo.candidates(r("cam-1b")), [s("fo-sc"), s("fo-1")]);
    assert_eq!(topo.candidates(r("io-2")), [s("fo-1"), s("fo-sc")]);
    let (assigned, unplaced) = run(site, &["live-1", "live-2"], &[], &[]);
    assert_eq!(
        assigned,
        pairs(&[
            ("cam-1a", "fo-1"),
            ("io-1", "fo-1"),
            ("cam-1b", "fo-sc"),
            ("io-2", "fo-sc"),
        ])
    );
    assert_eq!(unplaced, ids(&["cam-2a"]));
}

#[test]
fn failed_pair_skips_that_server_for_that_resource_only() {
    // fo-1 already failed to run cam-1; cam-3 failed on both buddies.
    let site = SiteBuilder::new("hq")
        .live("live-1", &["fo-1", "fo-2"])
        .failover("fo-1", Mode::SpreadServers, None, None)
        .failover("fo-2", Mode::SpreadServers, None, None)
        .resource("cam-1", Kind::Camera, "live-1", 5)
        .resource("cam-2", Kind::Camera, "live-1", 0)
        .resource("cam-3", Kind::Camera, "live-1", 9)
        .build();
    let failed = [("cam-1", "fo-1"), ("cam-3", "fo-1"), ("cam-3", "fo-2")];
    let (assigned, unplaced) = run(site, &["live-1"], &[], &failed);
    assert_eq!(assigned, pairs(&[("cam-1", "fo-2"), ("cam-2", "fo-1")]));
    assert_eq!(unplaced, ids(&["cam-3"]));
}

#[test]
fn unavailable_first_buddy_is_skipped_and_uses_no_capacity() {
    // fo-1 is unavailable (e.g. down itself); everything goes to fo-2 until its 2 cameras
    // are used, then to fo-3. The io unit is not a camera and stays on fo-2.
    let site = SiteBuilder::new("hq")
        .live("live-1", &["fo-1", "fo-2", "fo-3"])
        .failover("fo-1", Mode::SpreadServers, Some(1), Some(1))
        .failover("fo-2", Mode::SpreadServers, None, Some(2))
        .failover("fo-3", Mode::SpreadServers, None, None)
        .resource("cam-1", Kind::Camera, "live-1", 3)
        .resource("cam-2", Kind::Camera, "live-1", 2)
        .resource("cam-3", Kind::Camera, "live-1", 1)
        .resource("io-1", Kind::Io, "live-1", 0)
        .build();
    let (assigned, unplaced) = run(site.clone(), &["live-1"], &["fo-1"], &[]);
    assert_eq!(
        assigned,
        pairs(&[
            ("cam-1", "fo-2"),
            ("cam-2", "fo-2"),
            ("cam-3", "fo-3"),
            ("io-1", "fo-2"),
        ])
    );
    assert_eq!(unplaced, ids(&[]));

    // Available again, fo-1 takes its one camera first.
    let (assigned, unplaced) = run(site, &["live-1"], &[], &[]);
    assert_eq!(
        assigned,
        pairs(&[
            ("cam-1", "fo-1"),
            ("cam-2", "fo-2"),
            ("cam-3", "fo-2"),
            ("io-1", "fo-1"),
        ])
    );
    assert_eq!(unplaced, ids(&[]));
}

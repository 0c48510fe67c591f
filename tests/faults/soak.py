#!/usr/bin/env python3
"""Soak: one fault lab (tests/faults/lab.py) for N minutes, random faults from the menu, the
checker after every heal.

    soak.py --bin target/release/buddygate --minutes 10 [--seed N] [--json FILE] [--keep]

Every episode: pick a fault, inject it, hold it, heal it, wait until every resource is back
home and every API concerned agrees (failback_delay included), then check the episode's window
from the ground truth (agent logs) and the APIs. Figures printed at the end:

  takeover latency p50 / p99    fault -> every resource of the failed live server served by
                                another node (faults that make a live server unreachable)
  false failovers               episodes whose fault leaves every live server reachable but in
                                which a resource was started away from home, or a failover began
                                (and, in failover episodes, starts of a server that did not fail)
  moves after heals             takeover starts after a heal; placement is sticky (a resource
                                stays with the buddy holding it), so any is a problem; those by
                                a buddy earlier in the home's order are shown apart
                                (re-placements)
  worst orphan time             the longest a resource was served by nobody
  worst dual-owner after heal   how long two owners remained after a heal (one owner within two
                                heartbeat intervals is the target); also the longest overlap of
                                a planned hand-over (make-before-break failback)
  APIs converged                episodes that ended with every API concerned agreeing on the
                                owner and epoch the ground truth shows (target 100%)
  consumers converged           per consumer kind (webhook receiver and live MQTT subscriber by
                                the epoch rule, a fresh MQTT subscriber from the retained
                                messages): episodes in which, within 10 s after the APIs
                                converged, it had every resource on the ground truth's final
                                owner, epoch and address (target 100%); stale (lower-epoch)
                                messages received after a newer one are counted

Exit status 1 on a false failover, a needless move, an orphan where the home kept serving, an
unconverged episode (APIs or consumers), an unverified webhook signature, a daemon that died on
its own, or a takeover / settle / hand-over time over its bound. A bound missed while a probe
saw this disk stall an fsync for 100 ms or more is reported, not failed (the daemons fsync
claims and events before a takeover's agents start; on a machine shared with builds that is the
machine).
"""

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import checker  # noqa: E402
from lab import Lab, now_ns  # noqa: E402

HB_MS, FT_MS, FBD_S = 200, 1000, 3
CONSUMER_WAIT_S = 10  # connectors retry: how long consumers get to converge after a heal
CONSUMER_MID_WAIT_S = 2  # ... and to show the buddy before the heal (the fault is held)

MENU = [
    # (kind, weight)
    ("path-cut", 2),
    ("both-paths", 2),
    ("fo-isolated", 1),
    ("pause-short", 1),
    ("pause-long", 2),
    ("partition", 2),
    ("lossy", 1),
    ("flap", 1),
    ("kill-live", 2),
    ("kill-buddy", 1),
    ("kill-fo", 1),
    ("kill-daemon", 1),
    ("restart-fo", 1),
    ("power-cut", 1),
]

# Faults in which a server dies with its VMS: a resource may be served by nobody until a buddy
# takes over. Elsewhere the home (or the buddy holding it) kept serving: any orphan time fails.
ORPHAN_OK = ("kill-live", "kill-buddy", "restart-fo", "power-cut")


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, int(round(p / 100 * len(xs) + 0.4999)) - 1))
    return xs[k]


class Soak:
    def __init__(self, lab, rng, args):
        self.lab, self.rng, self.args = lab, rng, args
        self.episodes = []

    def log(self, msg):
        print(f"  {msg}", file=sys.stderr, flush=True)

    def served_away(self, home, nodes=None):
        run, t = checker.Run(self.lab.dir), now_ns()
        mine = [r for r in self.lab.resource_ids() if checker.home_of(r) == home]
        return all(any((n != home) if nodes is None else (n in nodes)
                       for n in run.owners_at(r, t)) for r in mine)

    def wait_away(self, home, timeout=6, nodes=None):
        return self.lab.wait_until(f"{home}'s resources served away from home",
                                   lambda: self.served_away(home, nodes), timeout, every=0.02)

    def hold(self, lo, hi):
        time.sleep(self.rng.uniform(lo, hi))

    # -- the menu: each returns (failed live servers, fault t, heal t, detail) ----------------
    def f_path_cut(self):
        s = self.rng.choice(self.lab.servers).id
        dev = self.rng.choice(["hb0", "hb1"])
        fault = self.lab.link(s, dev, False)
        self.hold(1.5, 4)
        heal = self.lab.link(s, dev, True)
        return [], fault, heal, f"{s} {dev}"

    def f_both_paths(self):
        s = self.rng.choice(["live-1", "live-2"])
        self.lab.link(s, "hb0", False)
        fault = self.lab.link(s, "hb1", False)
        self.wait_away(s)
        self.hold(0.5, 3)
        self.consumers_before_heal()
        self.lab.link(s, "hb0", True)
        heal = self.lab.link(s, "hb1", True)
        return [s], fault, heal, s

    def f_fo_isolated(self):
        s = self.rng.choice(["fo-1", "fo-2"])
        fault = None
        for dev in ("hb0", "hb1", "wt0"):
            t = self.lab.link(s, dev, False)
            fault = fault or t
        self.hold(1.5, 4)
        devs = ["hb0", "hb1", "wt0"]
        self.rng.shuffle(devs)  # the witness may come back first: the heal race
        for dev in devs:
            heal = self.lab.link(s, dev, True)
        return [], fault, heal, f"{s} (heal order {','.join(devs)})"

    def f_pause_short(self):
        s = self.rng.choice(["live-1", "live-2"])
        fault = self.lab.pause(s)
        self.hold(0.2, 0.5)
        heal = self.lab.resume(s)
        return [], fault, heal, s

    def f_pause_long(self):
        s = self.rng.choice(["live-1", "live-2"])
        fault = self.lab.pause(s)
        self.wait_away(s)
        self.hold(0.3, 2.5)
        self.consumers_before_heal()
        heal = self.lab.resume(s)
        return [s], fault, heal, s

    def f_partition(self):
        groups = self.rng.choice([
            [["live-1", "fo-2"], ["live-2", "fo-1"]],
            [["live-1", "fo-1"], ["live-2", "fo-2"]],
            [["live-1"], ["live-2", "fo-1", "fo-2"]],
            [["live-2"], ["live-1", "fo-1", "fo-2"]],
        ])
        fault = self.lab.partition(groups)
        # A live server with a buddy on the other side is taken over by it (availability
        # first: that buddy sees it silent while reaching the witness); here every partition
        # does that to both live servers.
        side = {h: i for i, g in enumerate(groups) for h in g}
        failed = [live for live in ("live-1", "live-2")
                  if any(side[b] != side[live] for b in self.lab.by_id[live].buddies)]
        for live in failed:
            self.wait_away(live)
        self.hold(0.5, 2.5)
        self.consumers_before_heal()
        heal = self.lab.clear_net()
        return failed, fault, heal, " | ".join(",".join(g) for g in groups)

    def f_lossy(self):
        s = self.rng.choice(["live-1", "live-2"])
        net = self.rng.choice([1, 2])
        self.lab.impair(None, None, loss=0.05)
        fault = self.lab.impair(net, s, loss=1 - 0.7 * 0.95, delay_ms=100, jitter_ms=100,
                                reorder=0.10, duplicate=0.05)
        self.hold(8, 16)
        heal = self.lab.clear_net()
        return [], fault, heal, f"{s} path {net - 1}"

    def f_flap(self):
        s = self.rng.choice(self.lab.servers).id
        end = time.monotonic() + self.rng.uniform(6, 12)
        fault = self.lab.link(s, "hb0", False)
        while time.monotonic() < end:
            time.sleep(1.5)
            self.lab.link(s, "hb0", True)
            self.lab.link(s, "hb1", False)
            time.sleep(1.5)
            self.lab.link(s, "hb1", True)
            self.lab.link(s, "hb0", False)
        heal = self.lab.link(s, "hb0", True)
        return [], fault, heal, s

    def f_kill_live(self):
        s = self.rng.choice(["live-1", "live-2"])
        fault = self.lab.kill9(s)
        self.wait_away(s)
        self.hold(0.5, 2.5)
        self.consumers_before_heal()
        empty = self.rng.random() < 0.5
        heal = self.lab.mark("restart", node=s, empty=empty)
        self.lab.start(s, empty=empty)
        return [s], fault, heal, f"{s}{' (empty data dir)' if empty else ''}"

    def f_kill_buddy(self):
        s = self.rng.choice(["live-1", "live-2"])
        first, second = self.lab.by_id[s].buddies
        # The first buddy's starts take 1.5 s: it dies with them in progress.
        self.lab.set_start_delay(first, 1500)
        killed = self.lab.kill9(s)
        self.lab.wait_until(f"{first} beginning the takeover", lambda: any(
            int(ln[0]) > killed and ln[1] == "begin" and ln[3].startswith(s)
            for ln in self.lab.agent_lines(first)), 5, every=0.005)
        self.hold(0.1, 1.0)
        fault = self.lab.kill9(first)
        self.lab.set_start_delay(first, 0)
        self.wait_away(s, nodes={second})
        self.hold(0.5, 2)
        self.consumers_before_heal()
        heal = self.lab.mark("restart", node=s)
        self.lab.start(s)
        self.lab.start(first)
        return [s], fault, heal, f"{s} then {first}; {second} takes over"

    def f_kill_fo(self):
        s = self.rng.choice(["fo-1", "fo-2"])
        fault = self.lab.kill9(s)
        self.hold(1, 3)
        heal = self.lab.mark("restart", node=s)
        self.lab.start(s, empty=self.rng.random() < 0.5)
        return [], fault, heal, s

    def f_kill_daemon(self):
        """kill -9 of a live server's daemon only (its VMS keeps recording), restarted."""
        s = self.rng.choice(["live-1", "live-2"])
        fault = self.lab.kill_daemon(s)
        self.wait_away(s)
        self.hold(0.5, 2.5)
        self.consumers_before_heal()
        heal = self.lab.mark("restart", node=s)
        self.lab.start(s)
        # Both record until the restarted daemon has heard its buddies (at most its start-up
        # wait, 2 x failure_timeout); no resource is ever without an owner.
        self.extra.update(settle_bound=2 * FT_MS + self.args.slack_ms, orphan_ok=False)
        return [s], fault, heal, s

    def f_restart_fo(self):
        """kill -9 of a live server; its first buddy takes over, then that buddy's daemon is
        killed with -9 (its VMS keeps recording) and started again at once: nothing moves."""
        s = self.rng.choice(["live-1", "live-2"])
        first, second = self.lab.by_id[s].buddies
        fault = self.lab.kill9(s)
        self.wait_away(s, nodes={first})
        self.hold(0.3, 1.5)
        restart = self.lab.kill_daemon(first)
        self.lab.start(first)
        self.hold(2.5, 4)  # past failure_timeout and the restarted buddy's start-up wait
        self.consumers_before_heal()
        heal = self.lab.mark("restart", node=s)
        self.lab.start(s)

        def check(rep, run, b):
            p = []
            by = [(n, r, e) for _, n, r, e in rep["foreign_starts"]
                  if n == second and checker.home_of(r) == s]
            if by:
                p.append(f"{second} took {s}'s resources while {first} restarted: {by[:4]}")
            gap = max(run.orphan_ns(r, restart, b) for r in self.lab.resource_ids()) / 1e6
            if gap:
                p.append(f"a resource had no owner for {gap:.0f} ms after {first}'s restart")
            return p
        self.extra["check"] = check
        return [s], fault, heal, f"{s} dead, {first} restarted"

    def f_power_cut(self):
        """Every server and its VMS dies (after a takeover, half the time), then every node
        restarts in random order within 3 s."""
        failed, fault, detail = [], None, ""
        if self.rng.random() < 0.5:
            s = self.rng.choice(["live-1", "live-2"])
            fault = self.lab.kill9(s)
            self.wait_away(s)
            self.hold(0.3, 1.5)
            failed, detail = [s], f"after {s}'s takeover; "
        announced = {}
        for sid in self.lab.up_nodes():
            for rid, r in (self.lab.resources(sid) or {}).items():
                announced[rid] = max(announced.get(rid, 0), r.get("epoch") or 0)
        run, t = checker.Run(self.lab.dir), now_ns()
        held = {r: run.owners_at(r, t) for r in self.lab.resource_ids()}
        cut = self.lab.mark("power-cut")
        for sid in self.lab.up_nodes():
            self.lab.kill9(sid)
        self.hold(0.3, 1)
        order = [x.id for x in self.lab.servers]
        self.rng.shuffle(order)
        offsets = sorted(self.rng.uniform(0, 3) for _ in order)
        boots, t0 = {}, time.monotonic()
        for sid, off in zip(order, offsets):
            time.sleep(max(0.0, t0 + off - time.monotonic()))
            self.lab.start(sid)
            boots[sid] = now_ns()
        heal = self.lab.mark("restarted")

        def check(rep, run, b):
            p = []
            for r, f in rep["final"].items():
                ann = announced.get(r, 0)
                if not (f["epoch"] > ann or (f["epoch"] == ann
                                             and held.get(r) == {f["owner"]: ann})):
                    p.append(f"{r} ended at {f['owner']}@{f['epoch']}, not above {ann} "
                             f"announced before the cut")
            for live in ("live-1", "live-2"):
                buddy = self.lab.by_id[live].buddies[0]
                if abs(boots[live] - boots[buddy]) > 2 * FT_MS * 1e6:
                    continue
                c = [(n, (d.get("resource") or {}).get("id")) for t, n, k, d in rep["events"]
                     if k == "ownership.conflict" and t >= min(boots.values())
                     and checker.home_of((d.get("resource") or {}).get("id") or "") == live]
                if c:
                    p.append(f"{live} came back within its start-up wait of {buddy}, yet "
                             f"{len(c)} ownership.conflict events: {c[:4]}")
            return p
        # Every live server lost power: a buddy may take (or resume) any of them until every
        # node is back and past its start-up wait (a buddy whose wait ends just as a live
        # server boots counts it down, by rule 6: seed 98140208 saw fo-2 take live-1's
        # cameras 2 ms after live-1's boot, 2 s after its own); after that, only resumes of
        # what a node held before the cut.
        self.extra.update(
            failed=["live-1", "live-2"], check=check,
            moves_from=heal + (2 * FT_MS + self.args.slack_ms) * 10**6,
            allowed={(n, r, e) for r, o in held.items() for n, e in o.items()})
        return failed, fault or cut, heal, detail + " ".join(
            f"{sid}+{off:.1f}s" for sid, off in zip(order, offsets))

    def consumers_before_heal(self):
        """Before the heal of a fault that made a buddy take over: every consumer on the
        owner the epoch rule picks from the ground truth (the buddy; a cut-off or frozen home
        still serving holds a lower epoch), within CONSUMER_MID_WAIT_S."""
        self.mid = checker.wait_consumers(self.lab, timeout=CONSUMER_MID_WAIT_S,
                                          tag=f"ep{self.n:03d}-before-heal", highest=True)

    # -- one episode -----------------------------------------------------------------------
    def episode(self, n, kind):
        # Start from a settled network: a heal can leave a path in its up-hysteresis and, after
        # `ip link set ... down/up`, its ARP entries flushed (a lost ARP request costs the
        # kernel's 1 s retransmission). A lossy episode started 78 ms after a flap's heal
        # (seed 1842351988, episode 10) thus met path 0 re-resolving ARP and path 1 at 37% loss
        # and down in its hysteresis: 1 s of silence on both, a takeover by the protocol's
        # rules, reported as a false failover of the lossy episode.
        self.lab.wait_until("every path between running nodes up", self.lab.paths_settled, 10)
        a = now_ns()
        self.n, self.mid, self.extra = n, None, {}
        fn = getattr(self, "f_" + kind.replace("-", "_"))
        failed, fault, heal, detail = fn()
        # Settled: home, every API agreeing, the ground truth the same, no hand-over in
        # flight (checker.settle); the snapshot it leaves is what the episode is checked on.
        ok_home, _ = checker.settle(self.lab, f"ep{n:03d}", FBD_S + 15)
        dead = self.lab.check_alive()
        if any(d.startswith("harness:") for d in dead):
            raise RuntimeError(f"the lab broke, not the daemon: {dead}")
        b = now_ns()
        # The connector consumers, by the epoch rule, within 10 s (connectors retry).
        cons = checker.wait_consumers(self.lab, timeout=CONSUMER_WAIT_S, tag=f"ep{n:03d}")
        rep = checker.analyze(self.lab.dir, a, b, f"ep{n:03d}", self.lab.concerned,
                              heal=heal)
        run = rep["run"]
        ep = {"n": n, "kind": kind, "detail": detail, "failed": failed,
              "seconds": (b - a) / 1e9, "problems": [], "excused": [],
              "fsync_ms": self.lab.fsync_stalls(a, b)}
        # A bound missed while this disk stalled an fsync for 100 ms or more (the daemons
        # fsync claims and events before a takeover's agents start) is reported as such,
        # not failed: on a machine shared with builds, that is the machine.
        slow_disk = ep["fsync_ms"] >= 100

        def over_bound(msg):
            (ep["excused"] if slow_disk else ep["problems"]).append(
                msg + (f" [fsync stall of {ep['fsync_ms']:.0f} ms on this disk during the "
                       f"episode]" if slow_disk else ""))
        # Takeover latency per failed live server.
        ep["takeover_ms"] = {}
        allowed = self.extra.get("allowed", set())  # starts away from home that are resumes
        lost = self.extra.get("failed", failed)  # live servers a buddy may serve
        for s in failed:
            mine = [r for r in self.lab.resource_ids() if checker.home_of(r) == s]
            t = run.first_time(mine, lambda r, o: any(x != checker.home_of(r) for x in o),
                               fault, b)
            ep["takeover_ms"][s] = None if t is None else (t - fault) / 1e6
            if t is None:
                ep["problems"].append(f"{s} was never taken over")
            elif (t - fault) / 1e6 > self.args.takeover_bound:
                over_bound(f"takeover of {s}: {ep['takeover_ms'][s]:.0f} ms "
                           f"(bound {self.args.takeover_bound})")
        # False failovers: resources started away from home whose home did not fail, and
        # failovers begun of servers that did not fail.
        false_starts = [(x[1], x[2]) for x in rep["foreign_starts"]
                        if checker.home_of(x[2]) not in lost and x[1:] not in allowed]
        began = [(node, (d.get("server") or {}).get("id")) for _, node, k, d in rep["events"]
                 if k == "failover.started" and (d.get("server") or {}).get("id") not in lost]
        ep["false_failover"] = bool(false_starts or began)
        if ep["false_failover"]:
            ep["problems"].append(f"false failover: starts {false_starts[:6]}, "
                                  f"failover.started {began[:6]}")
        # After the heal only failbacks move anything: placement is sticky (docs/protocol.md),
        # so a buddy earlier in the home's order does not take over from a later one that
        # holds the resource (a re-placement, counted apart) and nothing else moves either.
        ep["moves_after_heal"], ep["replacements"], needless = 0, 0, []
        for t, node, r, e in rep["foreign_starts"]:
            if t < self.extra.get("moves_from", heal) or (node, r, e) in allowed:
                continue
            ep["moves_after_heal"] += 1
            order = self.lab.by_id[checker.home_of(r)].buddies
            # (the home's own copy, still there at the heal, is being resolved anyway)
            before = [o for o in run.owners_at(r, t - 1) if o not in (node, checker.home_of(r))]
            if node in order and before and all(
                    o in order and order.index(o) > order.index(node) for o in before):
                ep["replacements"] += 1
            needless.append((node, r, e, before))
        if needless:
            ep["problems"].append(f"{len(needless)} needless takeover starts after the heal "
                                  f"(node, resource, epoch, previous owners): {needless[:6]}")
        pr = rep["per_resource"].values()
        ep["orphan_ms"] = max(p["orphan_ms"] for p in pr)
        ep["settle_ms"] = max(p["settle_ms"] for p in pr)
        ep["overlap_ms"] = max(p["max_overlap_after_settle_ms"] for p in pr)
        ep["dual_ms"] = max(p["dual_ms"] for p in pr)
        settle_bound = self.extra.get("settle_bound", self.args.settle_bound)
        if ep["settle_ms"] > settle_bound:
            over_bound(f"two owners {ep['settle_ms']:.0f} ms after the heal "
                       f"(bound {settle_bound})")
        if ep["overlap_ms"] > self.args.settle_bound:
            over_bound(f"hand-over overlap {ep['overlap_ms']:.0f} ms "
                       f"(bound {self.args.settle_bound})")
        # Orphans are expected only where a server died (kill -9) or a takeover was needed
        # while its home was unreachable and not serving (kill): elsewhere the home kept
        # serving, so any orphan time is a problem.
        if not self.extra.get("orphan_ok", kind in ORPHAN_OK):
            if ep["orphan_ms"] > 0:
                ep["problems"].append(f"a resource had no owner for {ep['orphan_ms']:.0f} ms")
        ep["converged"] = bool(ok_home and rep["agree"])
        if not ep["converged"]:
            bad = {r: (f["owner"], f["epoch"], f["views"]) for r, f in rep["final"].items()
                   if not (f["agree"] and f["truth_ok"])}
            ep["problems"].append(f"not converged (home: {ok_home}): {bad}")
        if dead:
            ep["problems"].append(f"daemon(s) exited on their own: {dead}")
        if "check" in self.extra:
            ep["problems"] += self.extra["check"](rep, run, b)
        ep["consumers"] = {k: not cons["result"][k]["bad"] for k in checker.CONSUMER_KINDS}
        ep["consumers_line"] = checker.consumers_line(cons)
        ep["consumers_ms"] = cons["ms"]
        views = checker.consumer_views(self.lab.dir)
        ep["stale"] = {k: len(checker.stale_after(views[k], a)) for k in ("webhook", "mqtt")}
        for k in checker.CONSUMER_KINDS:
            bad = cons["result"][k]["bad"]
            if bad:
                ep["problems"].append(
                    f"{k} consumer not on the final owner {CONSUMER_WAIT_S} s after convergence "
                    f"({len(bad)} resources; got, want): {dict(list(bad.items())[:4])}")
        ep["consumers_mid"] = None
        if self.mid is not None:
            ep["consumers_mid"] = {k: not self.mid["result"][k]["bad"]
                                   for k in checker.CONSUMER_KINDS}
            for k in checker.CONSUMER_KINDS:
                bad = self.mid["result"][k]["bad"]
                if bad:
                    ep["problems"].append(
                        f"before the heal the {k} consumer was not on the buddy within "
                        f"{CONSUMER_MID_WAIT_S} s ({len(bad)}; got, want): "
                        f"{dict(list(bad.items())[:4])}")
        if cons["unverified"]:
            ep["problems"].append(f"webhook deliveries failing the signature check: "
                                  f"{cons['unverified'][:4]}")
        for k, ties in cons["ties"].items():
            if ties:
                ep["problems"].append(f"{k}: two owners announced at one epoch: {ties[:4]}")
        ep["events"] = {}
        for _, _, k, _ in rep["events"]:
            ep["events"][k] = ep["events"].get(k, 0) + 1
        self.episodes.append(ep)
        tk = ", ".join(f"{s} {v:.0f} ms" if v is not None else f"{s} -"
                       for s, v in ep["takeover_ms"].items())
        self.log(f"ep {n:3d} {kind:<12} {detail:<40} "
                 f"{'ok' if not ep['problems'] else 'PROBLEM'} "
                 f"takeover [{tk}] orphan {ep['orphan_ms']:.0f} settle {ep['settle_ms']:.0f} "
                 f"overlap {ep['overlap_ms']:.0f} ms, consumers "
                 f"{'ok' if all(ep['consumers'].values()) else 'WRONG'}"
                 + (f" (stale msgs {ep['stale']})" if any(ep["stale"].values()) else "")
                 + f", {ep['seconds']:.1f} s"
                 + (f", fsync stall {ep['fsync_ms']:.0f} ms" if ep["fsync_ms"] else ""))
        for p in ep["problems"]:
            self.log(f"    PROBLEM: {p}")
        for p in ep["excused"]:
            self.log(f"    slow disk: {p}")
        return ep

    def run(self, seconds, only=None):
        menu = [(k, w) for k, w in MENU if not only or k in only]
        kinds = [k for k, w in menu for _ in range(w)]
        # Every kind once first (shuffled), then at random: a short soak still covers the menu.
        order = [k for k, _ in menu]
        self.rng.shuffle(order)
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            kind = order[n] if n < len(order) else self.rng.choice(kinds)
            n += 1
            self.episode(n, kind)


def figures(episodes):
    lat = [v for e in episodes for v in e["takeover_ms"].values() if v is not None]
    return {
        "episodes": len(episodes),
        "by_kind": {k: sum(1 for e in episodes if e["kind"] == k) for k, _ in MENU},
        "takeovers": len(lat),
        "takeover_p50_ms": pct(lat, 50),
        "takeover_p99_ms": pct(lat, 99),
        "takeover_max_ms": max(lat) if lat else None,
        "false_failovers": sum(1 for e in episodes if e["false_failover"]),
        "no_failover_episodes": sum(1 for e in episodes if not e["failed"]),
        "worst_orphan_ms": max((e["orphan_ms"] for e in episodes), default=0.0),
        "worst_orphan_kind": max(episodes, key=lambda e: e["orphan_ms"])["kind"]
        if episodes else None,
        "worst_orphan_by_kind": {k: max(e["orphan_ms"] for e in episodes if e["kind"] == k)
                                 for k, _ in MENU if any(e["kind"] == k for e in episodes)},
        "worst_settle_ms": max((e["settle_ms"] for e in episodes), default=0.0),
        "worst_overlap_ms": max((e["overlap_ms"] for e in episodes), default=0.0),
        "converged": sum(1 for e in episodes if e["converged"]),
        "consumers_converged": {k: sum(1 for e in episodes if e["consumers"][k])
                                for k in checker.CONSUMER_KINDS},
        "consumers_worst_ms": {k: max((e["consumers_ms"][k] or 0 for e in episodes),
                                      default=0.0) for k in checker.CONSUMER_KINDS},
        "takeover_episodes": sum(1 for e in episodes if e["consumers_mid"] is not None),
        "consumers_on_buddy": {k: sum(1 for e in episodes if e["consumers_mid"]
                                      and e["consumers_mid"][k])
                               for k in checker.CONSUMER_KINDS},
        "stale_msgs": {k: sum(e["stale"][k] for e in episodes) for k in ("webhook", "mqtt")},
        "stale_episodes": sum(1 for e in episodes if any(e["stale"].values())),
        "moves_after_heal": sum(e["moves_after_heal"] for e in episodes),
        "replacements": sum(e["replacements"] for e in episodes),
        "needless_moves": sum(e["moves_after_heal"] for e in episodes),
        "worst_fsync_ms": max((e["fsync_ms"] for e in episodes), default=0.0),
        "excused": sum(1 for e in episodes if e["excused"]),
        "problems": sum(1 for e in episodes if e["problems"]),
    }


def main():
    ap = argparse.ArgumentParser(description="Random faults on a real network, checked.")
    ap.add_argument("--bin", default=os.environ.get("BUDDYGATE_BIN"))
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--slack-ms", type=int, default=400)
    ap.add_argument("--settle-slack-ms", type=int, default=100)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--prefix", default=f"bgs{os.getpid() % 100000}")
    ap.add_argument("--kinds", default=None,
                    help="only these faults (comma-separated): " + ",".join(k for k, _ in MENU))
    args = ap.parse_args()
    only = set(args.kinds.split(",")) if args.kinds else None
    if only and only - {k for k, _ in MENU}:
        ap.error(f"unknown fault kind(s): {sorted(only - {k for k, _ in MENU})}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not args.bin or not os.access(args.bin, os.X_OK):
        ap.error("give the buddygate binary with --bin or $BUDDYGATE_BIN")
    args.takeover_bound = FT_MS + 100 + args.slack_ms
    args.settle_bound = 2 * HB_MS + args.settle_slack_ms
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    print(f"soak: {args.minutes} min, seed {seed} (replay the same fault sequence with "
          f"--seed {seed})", file=sys.stderr, flush=True)
    root = args.workdir or tempfile.mkdtemp(prefix="buddygate-soak-")
    t0 = time.monotonic()
    lab = Lab(args.bin, root, prefix=args.prefix, heartbeat_ms=HB_MS, failure_timeout_ms=FT_MS,
              failback_delay_s=FBD_S, seed=seed)
    soak = Soak(lab, random.Random(seed), args)
    error = None
    try:
        with lab:
            lab.start_all()
            if not lab.wait_home(20):
                raise RuntimeError("the site never converged at start")
            soak.run(args.minutes * 60, only)
    except Exception as e:
        error = repr(e)
        traceback.print_exc()
    f = figures(soak.episodes)
    f["seed"] = seed
    f["seconds"] = time.monotonic() - t0
    n = f["episodes"]

    def ms(v):
        return "-" if v is None else f"{v:.0f} ms"

    print()
    print(f"soak: {n} episodes in {f['seconds']:.0f} s (seed {seed}): " +
          ", ".join(f"{k} {c}" for k, c in f["by_kind"].items() if c))
    print(f"  takeover latency        p50 {ms(f['takeover_p50_ms'])}, p99 "
          f"{ms(f['takeover_p99_ms'])}, max {ms(f['takeover_max_ms'])} "
          f"({f['takeovers']} takeovers; bound {args.takeover_bound} ms)")
    print(f"  false failovers         {f['false_failovers']} "
          f"(in {f['no_failover_episodes']} episodes whose fault left every live server "
          f"reachable, and in the others for servers that did not fail)")
    by = f["worst_orphan_by_kind"]
    others = max([v for k, v in by.items() if k not in ORPHAN_OK] + [0.0])
    print(f"  worst orphan time       {ms(f['worst_orphan_ms'])} ({f['worst_orphan_kind']}); "
          f"kill -9 of a live server {ms(by.get('kill-live'))}, then of its buddy too "
          f"{ms(by.get('kill-buddy'))}, power cut {ms(by.get('power-cut'))}, every other "
          f"fault {ms(others)}")
    print(f"  worst dual-owner after heal {ms(f['worst_settle_ms'])} (target <= "
          f"{2 * HB_MS} ms); longest planned hand-over overlap {ms(f['worst_overlap_ms'])}")
    print(f"  moves after heals       {f['needless_moves']} (target 0), of which "
          f"{f['replacements']} re-placements to a preferred buddy")
    print(f"  APIs converged          {f['converged']}/{n} episodes "
          f"({100 * f['converged'] / n if n else 0:.0f}%)")
    cc, cw = f["consumers_converged"], f["consumers_worst_ms"]
    print("  consumers converged     " + ", ".join(
        f"{k} {cc[k]}/{n}" for k in checker.CONSUMER_KINDS)
        + " episodes (every resource on the final owner, epoch and address within "
        f"{CONSUMER_WAIT_S} s of the APIs; slowest " + ", ".join(
            f"{k} {cw[k]:.0f} ms" for k in checker.CONSUMER_KINDS) + ")")
    cb, nt = f["consumers_on_buddy"], f["takeover_episodes"]
    print("  consumers on the buddy  " + ", ".join(
        f"{k} {cb[k]}/{nt}" for k in checker.CONSUMER_KINDS)
        + f" takeover episodes, checked before the heal (within {CONSUMER_MID_WAIT_S} s)")
    print(f"  stale messages          webhook {f['stale_msgs']['webhook']}, mqtt "
          f"{f['stale_msgs']['mqtt']} (lower epoch after a newer one, dropped by the epoch "
          f"rule; in {f['stale_episodes']} episodes)")
    print(f"  slowest fsync on this disk {ms(f['worst_fsync_ms'])}; bounds missed during "
          f"fsync stalls >= 100 ms (reported, not failed): {f['excused']} episode(s)")
    if error:
        print(f"  ERROR: {error}")
    bad = [e for e in soak.episodes if e["problems"]]
    for e in bad:
        print(f"  episode {e['n']} ({e['kind']}: {e['detail']}): " + "; ".join(e["problems"]))
    for e in soak.episodes:
        if e["excused"]:
            print(f"  episode {e['n']} ({e['kind']}: {e['detail']}), slow disk: "
                  + "; ".join(e["excused"]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"figures": f, "episodes": soak.episodes}, fh, indent=1, default=str)
    failed = bool(bad or error or n == 0)
    if failed or args.keep:
        print(f"  run directory kept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Fault scenarios on a real network: each builds a fresh lab (tests/faults/lab.py), runs real
`buddygate run` daemons in network namespaces, injects one fault, heals it, and asserts the
expected outcome from the ground truth (agent logs) and the APIs (tests/faults/checker.py).

    scenarios.py --bin target/release/buddygate [--only NAME[,NAME]] [--long] [--keep]

Exit status 0 when every scenario met its expectations; 1 otherwise (each failure names the
scenario and the numbers). `--long` runs the lossy scenario for 10 minutes and the flapping one
for a minute (the CI run is shorter). Needs root (ip netns, TAP devices).
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

HB_MS = 200
FT_MS = 1000
FBD_S = 3
CONSUMER_WAIT_S = 10  # connectors retry: how long consumers get to converge after the heal


class Ctx:
    def __init__(self, name, lab, args):
        self.name, self.lab, self.args = name, lab, args
        self.failures = []
        self.figures = {}
        self.rng = random.Random(f"{args.seed}:{name}")  # a scenario's own random choices
        self.notes = []
        # Bounds (ms).
        self.takeover_bound = FT_MS + 100 + args.slack_ms
        self.settle_bound = 2 * HB_MS + args.settle_slack_ms
        self.overlap_bound = 2 * HB_MS + args.settle_slack_ms

    def expect(self, cond, msg):
        if not cond:
            f = self.figures.get("fsync_ms")
            self.failures.append(msg + (f" [slowest fsync on this disk during the scenario: "
                                        f"{f:.0f} ms]" if f else ""))
        return cond

    def log(self, msg):
        print(f"  [{self.name}] {msg}", file=sys.stderr, flush=True)

    # -- ground truth while running -----------------------------------------------------------
    def truth(self):
        return checker.Run(self.lab.dir)

    def served_by(self, home, nodes):
        """Every resource of `home` is served by one of `nodes` right now (agent logs)."""
        run, t = self.truth(), now_ns()
        mine = [r for r in self.lab.resource_ids() if checker.home_of(r) == home]
        return all(any(n in nodes for n in run.owners_at(r, t)) for r in mine)

    def wait_served_by(self, home, nodes, timeout):
        return self.lab.wait_until(f"{home}'s resources served by {nodes}",
                                   lambda: self.served_by(home, nodes), timeout, every=0.02)

    def settle_down(self, timeout=None):
        """Waits until every resource is at home, every API agrees and the agents' ground
        truth says the same with no hand-over in flight (checker.settle), then leaves the API
        snapshot the final checks use."""
        timeout = timeout or FBD_S + 12
        ok, waited = checker.settle(self.lab, "end", timeout)
        self.figures["settled_after_s"] = round(waited, 1)
        self.expect(ok, f"not settled back home within {timeout} s after the heal (every API "
                        f"agreeing, the ground truth the same, no hand-over in flight)")
        dead = self.lab.check_alive()
        self.expect(not dead, f"daemon(s) exited on their own: {dead}")
        b = now_ns()
        self.check_consumers()
        return b

    def check_consumers(self):
        """Every connector consumer ends on the final owner and epoch (ground truth), within
        10 s of convergence (connectors retry): the webhook receiver and the live MQTT
        subscriber by the epoch rule, a fresh MQTT subscriber from the retained messages."""
        c = checker.wait_consumers(self.lab, timeout=CONSUMER_WAIT_S, tag="end")
        self.consumers = c
        self.figures["consumers"] = checker.consumers_line(c)
        self.figures["consumers_ms"] = {k: None if v is None else round(v)
                                        for k, v in c["ms"].items()}
        self.figures["stale_msgs"] = c["stale"]
        for k in checker.CONSUMER_KINDS:
            bad = c["result"][k]["bad"]
            self.expect(not bad, f"{k} consumer not on the final owner {CONSUMER_WAIT_S} s after "
                                 f"convergence ({len(bad)} resources; got, want): "
                                 f"{dict(list(bad.items())[:4])}")
        self.expect(not c["unverified"], f"webhook deliveries failing the signature check: "
                                         f"{c['unverified'][:4]}")
        for k, ties in c["ties"].items():
            self.expect(not ties, f"{k}: two owners announced at one epoch: {ties[:4]}")

    def analyze(self, a, b, fault=None, heal=None, failed=None):
        self.heal = heal
        rep = checker.analyze(self.lab.dir, a, b, "end", self.lab.concerned, fault=fault,
                              heal=heal, failed=failed)
        s = checker.summary(rep)
        self.rep = rep
        self.figures.update({
            "takeover_ms": s["takeover_ms"],
            "orphan_ms": s["orphan_ms"],
            "dual_ms": s["dual_ms"],
            "settle_ms": s["settle_ms"] if heal else None,
            "overlap_ms": s["overlap_ms"],
            "agree": s["agree"],
            "finals": s["finals"],
            "moves_after_heal": len([x for x in rep["foreign_starts"] if x[0] >= heal])
            if heal else None,
            "fsync_ms": self.lab.fsync_stalls(a, b),
        })
        return rep

    def events(self, kind, node=None, about=None):
        out = []
        for t, n, k, data in self.rep["events"]:
            if k != kind or (node and n != node):
                continue
            if about and (data.get("server") or {}).get("id") != about:
                continue
            out.append((t, n, data))
        return out

    # -- common expectations ------------------------------------------------------------------
    def expect_final_home(self):
        fin = self.rep["final"]
        bad = {r: (f["owner"], f["epoch"], f["views"]) for r, f in fin.items()
               if f["owner"] != checker.home_of(r) or not f["agree"] or not f["truth_ok"]}
        self.expect(not bad, f"final state not every resource at home, agreed by every API "
                             f"and served there: {bad}")

    def expect_no_failover(self):
        fs = self.rep["foreign_starts"]
        self.expect(not fs, f"false failover: {len(fs)} starts away from home: "
                            f"{[(n, r, e) for _, n, r, e in fs][:6]}")
        for kind in ("failover.started", "failover.completed"):
            ev = self.events(kind)
            self.expect(not ev, f"false failover: {len(ev)} {kind} events "
                                f"({sorted({n for _, n, _ in ev})})")
        self.expect(self.figures["orphan_ms"] == 0,
                    f"a resource had no owner for {self.figures['orphan_ms']:.0f} ms")
        self.expect(self.figures["dual_ms"] == 0,
                    f"a resource had two owners for {self.figures['dual_ms']:.0f} ms")

    def expect_takeover(self, what="takeover"):
        t = self.figures.get("takeover_ms")
        self.expect(t is not None and t <= self.takeover_bound,
                    f"{what} took {t} ms (bound {self.takeover_bound} ms = failure_timeout + "
                    f"100 ms + {self.args.slack_ms} ms slack)")

    def expect_no_moves_after_heal(self):
        """After the heal only the failback moves anything: no takeover starts."""
        m = [(n, r, e) for t, n, r, e in self.rep["foreign_starts"] if t >= self.heal]
        self.expect(not m, f"{len(m)} takeover starts after the heal (needless moves): {m[:6]}")

    def expect_settle(self):
        s = self.figures.get("settle_ms") or 0
        self.expect(s <= self.settle_bound,
                    f"two owners for {s:.0f} ms after the heal (bound {self.settle_bound} ms = "
                    f"2 heartbeat intervals + {self.args.settle_slack_ms} ms)")
        o = self.figures.get("overlap_ms") or 0
        self.expect(o <= self.overlap_bound,
                    f"a planned hand-over overlapped {o:.0f} ms (bound {self.overlap_bound} ms)")

    def api_epochs(self, nodes=None):
        """Per resource: the highest epoch any running node's API reports now."""
        out = {}
        for sid in nodes or self.lab.up_nodes():
            for rid, r in (self.lab.resources(sid) or {}).items():
                if r.get("epoch") is not None and rid in self.lab.resource_ids():
                    out[rid] = max(out.get(rid, 0), r["epoch"])
        return out

    def mine(self, home):
        return [r for r in self.lab.resource_ids() if checker.home_of(r) == home]

    def expect_failback_per_policy(self, home, heal):
        """The home server took its resources back, not before failback_delay after `heal`,
        at an epoch above the buddy's."""
        run = self.rep["run"]
        starts = [s for s in run.starts(heal, now_ns(), nodes={home})]
        self.expect(bool(starts), f"{home} never took its resources back")
        if not starts:
            return
        first = (starts[0][0] - heal) / 1e6
        self.figures["failback_after_heal_ms"] = first
        self.expect(first >= FBD_S * 1000 - 100,
                    f"failback {first:.0f} ms after the heal, before failback_delay ({FBD_S} s)")
        self.expect(first <= FBD_S * 1000 + 3000,
                    f"failback only {first:.0f} ms after the heal (failback_delay {FBD_S} s)")
        foreign = [e for _, n, r, e in self.rep["foreign_starts"] if checker.home_of(r) == home]
        low = [(r, e) for _, _, r, e in starts if foreign and e <= max(foreign)]
        self.expect(not low, f"failback at an epoch not above the buddy's: {low}")


# ---------------------------------------------------------------------------------------------
# The scenarios. Each returns nothing; it records failures and figures on the context.

def steady(c):
    c.lab.start_all()
    ok = c.lab.wait_home(20)
    if not ok:
        raise RuntimeError("the site never converged at start")
    time.sleep(0.5)
    return now_ns()


def s_path_cut(c):
    """One path cut, then restored: path.down / path.up, no failover."""
    a = steady(c)
    fault = c.lab.link("live-1", "hb0", False)
    time.sleep(FT_MS / 1000 + 2)
    heal = c.lab.link("live-1", "hb0", True)
    time.sleep(2)
    b = c.settle_down()
    c.analyze(a, b, heal=heal)
    c.expect_no_failover()
    down = [e for e in c.events("path.down", node="fo-1", about="live-1") if e[2].get("path") == 0]
    up = [e for e in c.events("path.up", node="fo-1", about="live-1")
          if e[2].get("path") == 0 and e[0] > heal]
    c.figures["path_down_ms"] = (down[0][0] - fault) / 1e6 if down else None
    c.figures["path_up_ms"] = (up[0][0] - heal) / 1e6 if up else None
    c.expect(len(down) == 1, f"fo-1 raised {len(down)} path.down for live-1 path 0 (want 1)")
    c.expect(len(up) == 1, f"fo-1 raised {len(up)} path.up for live-1 path 0 after the heal")
    sd = c.events("server.down")
    c.expect(not sd, f"server.down raised on a single path cut: {[(n, d['server']['id']) for _, n, d in sd]}")
    c.expect_final_home()


def s_both_paths(c):
    """Both paths cut to the live server: failover within the target; restored: failback."""
    a = steady(c)
    c.lab.link("live-1", "hb0", False)
    fault = c.lab.link("live-1", "hb1", False)
    c.wait_served_by("live-1", {"fo-1"}, 5)
    time.sleep(2)
    c.lab.link("live-1", "hb0", True)
    heal = c.lab.link("live-1", "hb1", True)
    b = c.settle_down()
    c.analyze(a, b, fault=fault, heal=heal, failed="live-1")
    c.expect_takeover()
    fs = c.rep["foreign_starts"]
    c.expect(fs and all(n == "fo-1" for _, n, _, _ in fs),
             f"takeover not by the first buddy fo-1: {sorted({n for _, n, _, _ in fs})}")
    c.expect_settle()
    c.expect_failback_per_policy("live-1", heal)
    c.expect(c.figures["orphan_ms"] == 0, f"orphan time {c.figures['orphan_ms']:.0f} ms")
    c.expect_no_moves_after_heal()
    c.expect_final_home()


def s_fo_isolated(c):
    """The failover server isolated from the live servers and the witness: no takeover."""
    a = steady(c)
    for dev in ("hb0", "hb1", "wt0"):
        c.lab.link("fo-1", dev, False)
    time.sleep(FT_MS / 1000 + 3)
    for dev in ("hb0", "hb1", "wt0"):
        heal = c.lab.link("fo-1", dev, True)
    time.sleep(2)
    b = c.settle_down()
    c.analyze(a, b, heal=heal)
    c.expect_no_failover()
    seen = {d["server"]["id"] for _, _, d in c.events("server.down", node="fo-1")}
    c.figures["fo1_saw_down"] = sorted(seen)
    c.expect({"live-1", "live-2"} <= seen,
             f"fo-1 did not see the live servers down (isolation not effective?): {seen}")
    c.expect_final_home()


def s_pause(c):
    """Live server SIGSTOPped past failure_timeout, then SIGCONT: the buddy took over; the
    resumed node stands down without reclaiming; consumers on the buddy until failback."""
    a = steady(c)
    fault = c.lab.pause("live-1")
    c.wait_served_by("live-1", {"fo-1"}, 5)
    time.sleep(max(0.0, (FT_MS / 1000 + 2) - (now_ns() - fault) / 1e9))
    heal = c.lab.resume("live-1")
    # One second after the resume the resumed node must have stood down and every concerned
    # API must say fo-1 (failback comes only after failback_delay).
    time.sleep(1.0)
    on_buddy = c.lab.converged({r: ("fo-1" if r.startswith("live-1") else c.lab.home_of(r))
                                for r in c.lab.resource_ids()})
    c.figures["on_buddy_1s_after_resume"] = on_buddy
    c.expect(on_buddy, "1 s after SIGCONT not every API says fo-1 serves live-1's cameras")
    # Every consumer (webhook, live MQTT subscriber, a fresh subscriber) says fo-1 at the
    # takeover's epoch, 1 s after the resume and again shortly before failback_delay runs out:
    # the resumed node's stale state must not win anywhere.
    v = c.lab.resources("fo-1") or {}
    mine = [r for r in c.lab.resource_ids() if r.startswith("live-1")]
    buddy = {r: ("fo-1", (v.get(r) or {}).get("epoch")) for r in mine}
    for when, at_s in (("1 s", 1.0), ("2.5 s", 2.5)):
        time.sleep(max(0.0, at_s - (now_ns() - heal) / 1e9))
        cons = checker.wait_consumers(c.lab, timeout=0.0, tag=f"on-buddy-{at_s}s",
                                      expect=buddy)
        line = checker.consumers_line(cons)
        c.figures[f"consumers_on_buddy_{when.replace(' ', '')}"] = line
        for k in checker.CONSUMER_KINDS:
            bad = {r: x for r, x in cons["result"][k]["bad"].items() if r in buddy}
            c.expect(not bad, f"{when} after SIGCONT the {k} consumer does not say fo-1 serves "
                              f"live-1's cameras at the takeover epoch (got, want): {bad}")
    b = c.settle_down()
    c.analyze(a, b, fault=fault, heal=heal, failed="live-1")
    c.expect_takeover()
    c.expect_settle()
    c.expect_failback_per_policy("live-1", heal)
    c.expect_no_moves_after_heal()
    c.expect_final_home()
    # Until the failback: the webhook receiver's and the live subscriber's views (epoch rule),
    # replayed up to the moment before live-1's first start after the resume.
    fb = [t for t, n, r, e in c.rep["run"].starts(heal, b, nodes={"live-1"})]
    if fb:
        views = checker.consumer_views(c.lab.dir, until=min(fb) - 1)
        for k in ("webhook", "mqtt"):
            wrong = {r: (views[k].best.get(r) or {}).get("owner") for r in mine
                     if ((views[k].best.get(r) or {}).get("owner"),
                         (views[k].best.get(r) or {}).get("epoch")) != buddy[r]}
            c.expect(not wrong, f"just before the failback the {k} consumer's owner of "
                                f"live-1's cameras is not fo-1 at the takeover epoch: {wrong}")


def s_partition(c):
    """Symmetric partition {live-1, fo-2} | {live-2, fo-1}, both sides reaching the witness
    (the cameras): both sides keep their resources and take the other's; after the heal one
    owner per resource within two heartbeat intervals."""
    a = steady(c)
    fault = c.lab.partition([["live-1", "fo-2"], ["live-2", "fo-1"]])
    ok1 = c.wait_served_by("live-1", {"fo-1"}, 5)
    ok2 = c.wait_served_by("live-2", {"fo-2"}, 5)
    c.expect(ok1 and ok2, "the partition did not make both sides take over")
    time.sleep(2)
    heal = c.lab.clear_net()
    b = c.settle_down()
    rep = c.analyze(a, b, fault=fault, heal=heal, failed="live-1")
    c.expect_takeover("fo-1 taking live-1's cameras")
    run = rep["run"]
    mine2 = [r for r in c.lab.resource_ids() if r.startswith("live-2")]
    t2 = run.first_time(mine2, lambda r, o: "fo-2" in o, fault, b)
    c.figures["takeover2_ms"] = None if t2 is None else (t2 - fault) / 1e6
    c.expect(t2 is not None and (t2 - fault) / 1e6 <= c.takeover_bound,
             f"fo-2 taking live-2's cameras took {c.figures['takeover2_ms']} ms")
    c.expect(c.figures["orphan_ms"] == 0, f"orphan time {c.figures['orphan_ms']:.0f} ms")
    c.expect_settle()
    c.expect_failback_per_policy("live-1", heal)
    c.expect_failback_per_policy("live-2", heal)
    c.expect_no_moves_after_heal()
    c.expect_final_home()


def s_lossy(c):
    """30% loss + 100 ms jitter on one path, 10% on both, reordering and duplication."""
    a = steady(c)
    secs = 600 if c.args.long else c.args.lossy_seconds
    # Each port gets 5% both ways, so a frame between two hosts meets ~10%. live-1's port on
    # path 0 adds 30% loss, 100 ms +- 100 ms delay, 10% reordering, 5% duplication: ~37% loss
    # between live-1 and its buddies on path 0, ~10% on path 1.
    c.lab.switch_stats(reset=True)
    c.lab.impair(None, None, loss=0.05)
    fault = c.lab.impair(1, "live-1", loss=1 - 0.7 * 0.95, delay_ms=100, jitter_ms=100,
                         reorder=0.10, duplicate=0.05)
    c.log(f"lossy network for {secs} s")
    time.sleep(secs)
    stats = c.lab.switch_stats()
    heal = c.lab.clear_net()
    time.sleep(1)
    b = c.settle_down()
    c.analyze(a, b, heal=heal)
    c.figures["lossy_s"] = secs
    c.figures["measured_loss_live1_fo1"] = {
        f"path {n - 1}": round(v, 3) for n, v in c.lab.measured_loss(stats, "live-1", "fo-1").items()}
    c.figures["measured_loss_live2_fo2"] = {
        f"path {n - 1}": round(v, 3) for n, v in c.lab.measured_loss(stats, "live-2", "fo-2").items()}
    c.figures["duplicated"] = sum(s["stats"]["duplicated"] for s in stats.values())
    c.figures["path_down_events"] = len(c.events("path.down"))
    c.expect_no_failover()
    sd = c.events("server.down")
    c.expect(not sd, f"{len(sd)} false server.down under loss: "
                     f"{[(n, d['server']['id']) for _, n, d in sd][:6]}")
    c.expect_final_home()
    _ = fault


def s_flapping(c):
    """Both paths of live-1 flapping out of phase (one always up) every 1.5 s: no failover."""
    a = steady(c)
    secs = 60 if c.args.long else c.args.flap_seconds
    end = time.monotonic() + secs
    cycles = 0
    c.lab.link("live-1", "hb0", False)
    while time.monotonic() < end:
        time.sleep(1.5)
        c.lab.link("live-1", "hb0", True)   # up first, then the other down: one always up
        c.lab.link("live-1", "hb1", False)
        time.sleep(1.5)
        c.lab.link("live-1", "hb1", True)
        c.lab.link("live-1", "hb0", False)
        cycles += 1
    heal = c.lab.link("live-1", "hb0", True)
    time.sleep(2)
    b = c.settle_down()
    c.analyze(a, b, heal=heal)
    c.figures["flap_cycles"] = cycles
    c.figures["path_down_events"] = len(c.events("path.down"))
    c.expect_no_failover()
    sd = c.events("server.down")
    c.expect(not sd, f"{len(sd)} server.down while one path was always up")
    c.expect_final_home()


def s_kill_buddy_mid_takeover(c):
    """kill -9 of the live server, then of its first buddy while its starts are in progress:
    the next buddy in order (fo-2) takes over. Then both come back: failback, no dual reclaim."""
    a = steady(c)
    c.lab.set_start_delay("fo-1", 1500)  # fo-1's starts take 1.5 s: it dies in the middle
    fault = c.lab.kill9("live-1")
    began = c.lab.wait_until("fo-1 beginning live-1's starts", lambda: any(
        int(ln[0]) > fault and ln[1] == "begin" and ln[3].startswith("live-1")
        for ln in c.lab.agent_lines("fo-1")), 5, every=0.01)
    c.expect(began, "fo-1 never began the takeover")
    time.sleep(0.3)
    done_before = [ln for ln in c.lab.agent_lines("fo-1") if ln[1] == "start"]
    c.expect(not done_before, f"fo-1 finished starts before it was killed: {len(done_before)}")
    fault2 = c.lab.kill9("fo-1")
    c.lab.set_start_delay("fo-1", 0)
    ok = c.wait_served_by("live-1", {"fo-2"}, 6)
    c.expect(ok, "fo-2 never took over live-1's cameras")
    time.sleep(1)
    heal = c.lab.mark("restart")
    c.lab.start("live-1")
    c.lab.start("fo-1")
    b = c.settle_down()
    rep = c.analyze(a, b, fault=fault2, heal=heal, failed="live-1")
    c.figures["kill_to_kill_ms"] = (fault2 - fault) / 1e6
    run = rep["run"]
    mine = [r for r in c.lab.resource_ids() if r.startswith("live-1")]
    t = run.first_time(mine, lambda r, o: "fo-2" in o, fault2, b)
    c.figures["takeover_ms"] = None if t is None else (t - fault2) / 1e6
    c.figures["from_first_kill_ms"] = None if t is None else (t - fault) / 1e6
    c.expect_takeover("fo-2 taking over after fo-1's death")
    by = sorted({n for t, n, r, _ in rep["foreign_starts"] if r.startswith("live-1") and t < heal})
    c.expect(by == ["fo-2"], f"live-1's cameras were started away from home by {by} (want fo-2)")
    # When fo-1 comes back it is again live-1's first buddy: placement may move the cameras
    # from fo-2 to it (make-before-break, docs/protocol.md) before live-1 fails back.
    c.figures["replaced_to_fo1"] = len([1 for t, n, r, _ in rep["foreign_starts"]
                                        if t >= heal and n == "fo-1"])
    c.expect_settle()
    c.expect_failback_per_policy("live-1", heal)
    c.expect_final_home()


def s_empty_restart(c):
    """A live server restarted with an empty data dir while its buddy holds its resources:
    no dual reclaim (it waits for failback, which comes at a higher epoch)."""
    a = steady(c)
    fault = c.lab.kill9("live-1")
    ok = c.wait_served_by("live-1", {"fo-1"}, 5)
    c.expect(ok, "fo-1 never took over")
    time.sleep(2)
    heal = c.lab.mark("restart-empty")
    c.lab.start("live-1", empty=True)
    b = c.settle_down()
    rep = c.analyze(a, b, fault=fault, heal=heal, failed="live-1")
    c.expect_takeover()
    run = rep["run"]
    early = [(r, e, (t - heal) / 1e6) for t, n, r, e in run.starts(heal, b, nodes={"live-1"})
             if (t - heal) / 1e6 < FBD_S * 1000 - 100]
    c.expect(not early, f"live-1 reclaimed before failback_delay with an empty store: {early}")
    c.expect_settle()
    c.expect_failback_per_policy("live-1", heal)
    c.expect_no_moves_after_heal()
    c.expect_final_home()


def s_kill_daemon(c):
    """kill -9 of live-1's daemon only: its VMS keeps recording. fo-1 takes over after
    failure_timeout (both record meanwhile: allowed). The restarted daemon stops its own
    copies within its start-up wait (fo-1 is active at a higher epoch, so no make-before-break
    is owed) and fails back after failback_delay; after the start-up wait nothing is recorded
    twice but during the failback's hand-over."""
    a = steady(c)
    fault = c.lab.kill_daemon("live-1")
    ok = c.wait_served_by("live-1", {"fo-1"}, 5)
    c.expect(ok, "fo-1 never took over live-1's cameras")
    time.sleep(2)
    run, t = c.truth(), now_ns()
    kept = [r for r in c.mine("live-1") if "live-1" in run.owners_at(r, t)]
    c.expect(len(kept) == len(c.mine("live-1")),
             f"live-1's VMS did not keep recording after its daemon died: {kept}")
    buddy = c.api_epochs(["fo-1"])
    heal = c.lab.mark("restart", node="live-1")
    pid = c.lab.start("live-1")
    b = c.settle_down()
    c.analyze(a, b, fault=fault, heal=heal, failed="live-1")
    c.expect_takeover()
    c.expect(c.figures["orphan_ms"] == 0,
             f"a resource had no owner for {c.figures['orphan_ms']:.0f} ms (the VMS never died)")
    # Both recorded from the takeover until the restarted daemon stood down: within its
    # start-up wait (2 x failure_timeout) of the restart.
    boot_bound = 2 * FT_MS + c.args.slack_ms
    c.figures["stood_down_ms"] = c.figures["settle_ms"]
    c.expect(c.figures["settle_ms"] <= boot_bound,
             f"the restarted live-1 still recorded next to fo-1 {c.figures['settle_ms']:.0f} ms "
             f"after its restart (bound {boot_bound} ms = its start-up wait 2 x "
             f"failure_timeout + {c.args.slack_ms} ms)")
    o = c.figures["overlap_ms"] or 0
    c.expect(o <= c.overlap_bound, f"after live-1's start-up wait a resource was recorded twice "
                                   f"for {o:.0f} ms (bound {c.overlap_bound} ms: the failback's "
                                   f"make-before-break)")
    # The new boot never restarted a claim fo-1 had beaten: its first starts are the failback.
    stale = [(ln[3], ln[4]) for ln in c.lab.agent_lines("live-1")
             if ln[1] == "start" and int(ln[5]) == pid and int(ln[4]) <= buddy.get(ln[3], 0)]
    c.expect(not stale, f"the restarted live-1 started claims at or below fo-1's epochs: {stale}")
    stops = [int(ln[0]) for ln in c.lab.agent_lines("live-1")
             if ln[1] == "stop" and int(ln[5]) == pid]
    c.expect(len(stops) >= len(c.mine("live-1")),
             f"the restarted live-1 stopped {len(stops)} copies (want {len(c.mine('live-1'))})")
    c.figures["conflicts"] = len(c.events("ownership.conflict"))
    c.expect_failback_per_policy("live-1", heal)
    c.expect_no_moves_after_heal()
    c.expect_final_home()


def s_restart_buddy(c):
    """fo-1 holds live-1's cameras after a takeover; its daemon is killed with -9 (the VMS
    keeps recording) and started again at once: nothing moves. fo-2, the next buddy, never
    takes them; fo-1 stops nothing; the epochs stay or rise; no gap."""
    a = steady(c)
    fault = c.lab.kill9("live-1")
    ok = c.wait_served_by("live-1", {"fo-1"}, 5)
    c.expect(ok, "fo-1 never took over live-1's cameras")
    time.sleep(1)
    before = c.api_epochs()
    restart = c.lab.kill_daemon("fo-1")
    c.lab.start("fo-1")
    held = {r: ("fo-1" if checker.home_of(r) == "live-1" else checker.home_of(r))
            for r in c.lab.resource_ids()}
    ok = c.lab.wait_until("fo-1 serving live-1's cameras again by every API",
                          lambda: c.lab.converged(held), 10)
    c.expect(ok, "after its restart fo-1 was not the owner of live-1's cameras on every API")
    c.figures["resumed_after_ms"] = (now_ns() - restart) / 1e6
    # Past failure_timeout and the start-up wait: fo-2 would have taken them by now.
    time.sleep(max(0.0, (2 * FT_MS + 1000) / 1000 - (now_ns() - restart) / 1e9))
    after = c.api_epochs()
    heal = c.lab.mark("restart", node="live-1")
    c.lab.start("live-1")
    b = c.settle_down()
    rep = c.analyze(a, b, fault=fault, heal=heal, failed="live-1")
    run = rep["run"]
    c.expect_takeover()
    by = sorted({n for t, n, r, _ in rep["foreign_starts"] if r.startswith("live-1")})
    c.expect(by == ["fo-1"], f"live-1's cameras were started away from home by {by} (want fo-1)")
    ev = [(n, d.get("server", {}).get("id")) for t, n, d in c.events("failover.started")
          if t >= restart]
    c.expect(not ev, f"failovers began after fo-1's restart: {ev}")
    stops = [(ln[3], ln[4]) for ln in c.lab.agent_lines("fo-1")
             if ln[1] == "stop" and restart <= int(ln[0]) < heal]
    c.expect(not stops, f"fo-1 stopped cameras across its restart: {stops}")
    gap = max(run.orphan_ns(r, restart, b) for r in c.lab.resource_ids()) / 1e6
    c.figures["gap_after_restart_ms"] = gap
    c.expect(gap == 0, f"a resource had no owner for {gap:.0f} ms after fo-1's restart")
    c.expect(c.figures["orphan_ms"] <= c.takeover_bound,
             f"a gap of {c.figures['orphan_ms']:.0f} ms (bound {c.takeover_bound} ms: the "
             f"takeover after live-1's death)")
    low = {r: (before[r], after.get(r)) for r in before if (after.get(r) or 0) < before[r]}
    c.expect(not low, f"epochs went down across fo-1's restart (before, after): {low}")
    c.figures["epochs_kept"] = sum(1 for r in before if after.get(r) == before[r])
    c.expect_settle()
    c.expect_failback_per_policy("live-1", heal)
    c.expect_no_moves_after_heal()
    c.expect_final_home()


def s_power_cut(c):
    """A site-wide power cut after a takeover (every server and its VMS dies), every node
    restarted in a seeded random order within a few seconds: every resource ends with one
    owner at an epoch above what was announced before the cut (equal only where the same
    owner resumed it), no ownership.conflict where a home server came back within its
    start-up wait of its first buddy, consumers converged."""
    a = steady(c)
    fault = c.lab.kill9("live-1")
    ok = c.wait_served_by("live-1", {"fo-1"}, 5)
    c.expect(ok, "fo-1 never took over live-1's cameras")
    time.sleep(1)
    announced = c.api_epochs()
    views = checker.consumer_views(c.lab.dir)
    for k in ("webhook", "mqtt"):
        for rid, v in views[k].best.items():
            if rid in announced:
                announced[rid] = max(announced[rid], v["epoch"])
    run, t = c.truth(), now_ns()
    held = {r: run.owners_at(r, t) for r in c.lab.resource_ids()}
    cut = c.lab.mark("power-cut")
    for sid in c.lab.up_nodes():
        c.lab.kill9(sid)
    time.sleep(0.5)
    order = [s.id for s in c.lab.servers]
    c.rng.shuffle(order)
    offsets = sorted(c.rng.uniform(0, 3.0) for _ in order)
    boots, t0 = {}, time.monotonic()
    for sid, off in zip(order, offsets):
        time.sleep(max(0.0, t0 + off - time.monotonic()))
        c.lab.start(sid)
        boots[sid] = now_ns()
    c.figures["restart_order"] = ", ".join(f"{sid} +{off:.1f}s" for sid, off in
                                           zip(order, offsets))
    first_boot = min(boots.values())
    heal = c.lab.mark("restarted")
    b = c.settle_down(FBD_S + 15)
    rep = c.analyze(a, b, fault=fault, heal=heal, failed="live-1")
    c.expect_takeover()
    fin = rep["final"]

    def above(r, f):
        ann = announced.get(r, 0)
        return f["epoch"] > ann or (f["epoch"] == ann and held.get(r) == {f["owner"]: ann})
    low = {r: (announced.get(r), f["owner"], f["epoch"]) for r, f in fin.items()
           if not above(r, f)}
    c.expect(not low, f"final epochs not above every epoch announced before the cut "
                      f"(announced, final owner, final epoch): {low}")
    ft2 = 2 * FT_MS * 1e6
    conflicts = [(n, (d.get("resource") or {}).get("id")) for t, n, d
                 in c.events("ownership.conflict") if t >= first_boot]
    c.figures["conflicts"] = len(conflicts)
    for live in ("live-1", "live-2"):
        buddy = c.lab.by_id[live].buddies[0]
        close = abs(boots[live] - boots[buddy]) <= ft2
        mine = [x for x in conflicts if x[1] and checker.home_of(x[1]) == live]
        c.figures[f"{live}_within_wait_of_{buddy}"] = close
        if close:
            c.expect(not mine, f"{live} came back within its start-up wait of {buddy}, yet "
                               f"{len(mine)} ownership.conflict events: {mine[:4]}")
    # Once the last node is back and past its start-up wait, a node other than the home
    # starts only what it held before the cut (a resume: its VMS died with the power). Before
    # that a buddy whose wait ends as a live server boots counts it down (rule 6) and takes it.
    settled_from = heal + (2 * FT_MS + c.args.slack_ms) * 10**6
    moves = [(n, r, e) for t, n, r, e in rep["foreign_starts"]
             if t >= settled_from and held.get(r, {}).get(n) != e]
    c.expect(not moves, f"takeover starts after every node was back (not resumes): {moves[:6]}")
    c.figures["resumed_by_buddy"] = len([1 for t, n, r, e in rep["foreign_starts"]
                                         if t >= first_boot and held.get(r, {}).get(n) == e])
    c.expect_final_home()


SCENARIOS = [
    ("path-cut", "one path cut, then restored", s_path_cut),
    ("both-paths", "both paths to live-1 cut, restored", s_both_paths),
    ("fo-isolated", "fo-1 cut from everyone and the witness", s_fo_isolated),
    ("pause", "SIGSTOP live-1 3 s, SIGCONT", s_pause),
    ("partition", "{live-1,fo-2} | {live-2,fo-1}, heal", s_partition),
    ("lossy", "37%/10% loss, jitter, reorder, dup", s_lossy),
    ("flapping", "both paths flap, one always up", s_flapping),
    ("kill-buddy", "kill -9 live-1, then fo-1 mid-takeover", s_kill_buddy_mid_takeover),
    ("empty-restart", "live-1 back with an empty data dir", s_empty_restart),
    ("kill-daemon", "kill -9 live-1's daemon only, VMS recording", s_kill_daemon),
    ("restart-buddy", "fo-1's daemon restarted while holding", s_restart_buddy),
    ("power-cut", "takeover, power cut, restarts in random order", s_power_cut),
]


def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.0f}{unit}"
    return str(v)


def print_table(results, out=sys.stdout):
    cols = ["scenario", "result", "takeover ms", "orphan ms", "dual ms", "settle ms",
            "handover ms", "moves after heal", "final owner@epoch", "APIs agree",
            "consumers converged", "time s"]
    rows = []
    for r in results:
        f = r["figures"]
        finals = ", ".join(f"{o}@{e}" for o, e in f.get("finals", [])) or "-"
        rows.append([r["name"], "ok" if r["ok"] else "FAIL", fmt(f.get("takeover_ms")),
                     fmt(f.get("orphan_ms")), fmt(f.get("dual_ms")), fmt(f.get("settle_ms")),
                     fmt(f.get("overlap_ms")), fmt(f.get("moves_after_heal")), finals,
                     fmt(f.get("agree")), f.get("consumers", "-"),
                     f"{r['seconds']:.0f}"])
    widths = [max(len(str(x)) for x in [c] + [row[i] for row in rows]) for i, c in
              enumerate(cols)]
    line = " | ".join(c.ljust(w) for c, w in zip(cols, widths))
    print(line, file=out)
    print("-|-".join("-" * w for w in widths), file=out)
    for row in rows:
        print(" | ".join(str(x).ljust(w) for x, w in zip(row, widths)), file=out)


def main():
    ap = argparse.ArgumentParser(description="Fault scenarios on a real network.")
    ap.add_argument("--bin", default=os.environ.get("BUDDYGATE_BIN"),
                    help="the release binary (or $BUDDYGATE_BIN)")
    ap.add_argument("--only", default=None, help="comma-separated scenario names")
    ap.add_argument("--long", action="store_true", help="10-minute lossy run, 1-minute flapping")
    ap.add_argument("--lossy-seconds", type=int, default=40)
    ap.add_argument("--flap-seconds", type=int, default=21)
    ap.add_argument("--slack-ms", type=int, default=400,
                    help="takeover bound = failure_timeout + 100 ms + this")
    ap.add_argument("--settle-slack-ms", type=int, default=100,
                    help="settle / hand-over bound = 2 heartbeat intervals + this")
    ap.add_argument("--seed", type=int, default=None,
                    help="the scenarios' random choices (power-cut's restart order); printed")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--prefix", default=f"bgf{os.getpid() % 100000}",
                    help="namespace name prefix")
    args = ap.parse_args()
    # SIGTERM (a CI timeout) unwinds like Ctrl-C: every lab is torn down on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not args.bin or not os.access(args.bin, os.X_OK):
        ap.error("give the buddygate binary with --bin or $BUDDYGATE_BIN")
    names = args.only.split(",") if args.only else [n for n, _, _ in SCENARIOS]
    unknown = set(names) - {n for n, _, _ in SCENARIOS}
    if unknown:
        ap.error(f"unknown scenario(s): {sorted(unknown)}")
    if args.seed is None:
        args.seed = random.randrange(1 << 31)
    print(f"scenarios: seed {args.seed} (replay with --seed {args.seed})", file=sys.stderr,
          flush=True)
    root = args.workdir or tempfile.mkdtemp(prefix="buddygate-faults-")
    os.makedirs(root, exist_ok=True)
    results = []
    t_all = time.monotonic()
    for i, (name, desc, fn) in enumerate(SCENARIOS):
        if name not in names:
            continue
        print(f"== {name}: {desc}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        wd = os.path.join(root, name)
        shutil.rmtree(wd, ignore_errors=True)
        lab = Lab(args.bin, wd, prefix=f"{args.prefix}s{i}", heartbeat_ms=HB_MS,
                  failure_timeout_ms=FT_MS, failback_delay_s=FBD_S, seed=i)
        c = Ctx(name, lab, args)
        try:
            with lab:
                fn(c)
        except Exception as e:
            c.failures.append(f"error: {e!r}")
            traceback.print_exc()
        r = {"name": name, "desc": desc, "ok": not c.failures, "failures": c.failures,
             "figures": c.figures, "seconds": time.monotonic() - t0, "dir": wd}
        results.append(r)
        for f in c.failures:
            print(f"  FAIL {name}: {f}", file=sys.stderr, flush=True)
        print(f"  {name}: {'ok' if r['ok'] else 'FAIL'} in {r['seconds']:.0f} s "
              f"{json.dumps({k: v for k, v in c.figures.items() if k != 'finals'})}",
              file=sys.stderr, flush=True)
        if r["ok"] and not args.keep:
            shutil.rmtree(wd, ignore_errors=True)
    print()
    print_table(results)
    failed = [r for r in results if not r["ok"]]
    print(f"\n{len(results) - len(failed)}/{len(results)} scenarios ok in "
          f"{time.monotonic() - t_all:.0f} s (seed {args.seed})")
    for r in failed:
        print(f"FAILED {r['name']} (logs in {r['dir']}):")
        for f in r["failures"]:
            print(f"  - {f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    if not failed and not args.keep and not args.workdir:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The fault harness's checker: what really happened, from the files a lab run leaves.

Ground truth is the agent logs (`agent/<node>.agent.log`: who served which resource when,
written by tests/faults/agent.sh), corrected by the harness's markers (`markers.jsonl`): a node
killed with -9 (`crash`) stops serving everything at the kill (its VMS died with it), and lines
written later by an agent of a boot before that crash are ignored. A daemon-only kill
(`kill-daemon`: the VMS keeps recording) changes nothing: the node still serves what it served,
and its dead daemon's agents' lines still count. The APIs' view is in the
snapshots (`api/<tag>.json`: every running node's `/api/v1/resources` and event log).

Per window it computes:
  - takeover latency: fault -> every resource of the failed server served by another node;
  - orphan time per resource (served by nobody) and dual-owner time (served by two or more);
  - the dual-owner time left at a heal (how long after the heal until one owner remains) and the
    longest overlap of a planned hand-over (make-before-break failback);
  - the final owner and epoch of every resource, from the APIs, whether every node concerned
    (the home server and its buddies) reports the same, and whether that is the ground truth.

    checker.py RUN_DIR [--tag TAG]      the table for a whole run (from the first boot)
"""

import argparse
import datetime
import json
import os
import sys
import time


def parse_time(s):
    """RFC 3339 (as the daemon writes it) -> ns since the epoch."""
    s = s.replace("Z", "+00:00")
    if "." in s:
        head, rest = s.split(".", 1)
        n = 0
        while n < len(rest) and rest[n].isdigit():
            n += 1
        frac = rest[:n]
        tz = rest[len(frac):]
        dt = datetime.datetime.fromisoformat(head + tz)
        return int(dt.timestamp()) * 10**9 + int((frac + "000000000")[:9])
    return int(datetime.datetime.fromisoformat(s).timestamp()) * 10**9


class Run:
    def __init__(self, run_dir):
        self.dir = run_dir
        self.markers = []
        path = os.path.join(run_dir, "markers.jsonl")
        if os.path.exists(path):
            with open(path) as f:
                self.markers = [json.loads(ln) for ln in f if ln.strip()]
        self.lines = []  # (t, op, node, resource, epoch, pid)
        adir = os.path.join(run_dir, "agent")
        for name in sorted(os.listdir(adir)) if os.path.isdir(adir) else []:
            if not name.endswith(".agent.log"):
                continue
            with open(os.path.join(adir, name)) as f:
                for ln in f:
                    parts = ln.rstrip("\n").split("|")
                    if len(parts) != 6 or not parts[0].isdigit():
                        continue
                    t, op, node, res, epoch, pid = parts
                    self.lines.append((int(t), op, node, res, int(epoch or 0), int(pid or 0)))
        self.lines.sort()
        self._build()

    def _build(self):
        """Ownership changes per resource: a list of (t, {node: epoch}) after each change."""
        boots = {}  # node -> [(t_boot, pid, t_crash or None)]
        crashes = {}  # node -> [t]: the server died with its VMS (kill9)
        for m in self.markers:
            if m["kind"] == "boot":
                boots.setdefault(m["node"], []).append([m["t"], m["pid"], None])
            elif m["kind"] == "crash":
                crashes.setdefault(m["node"], []).append(m["t"])
                for b in boots.get(m["node"], []):
                    if b[1] == m["pid"]:
                        b[2] = m["t"]
        self.boots = boots
        changes = [(ln[0], "agent", ln) for ln in self.lines]
        for node, bs in boots.items():
            for t_boot, pid, t_crash in bs:
                if t_crash is not None:
                    changes.append((t_crash, "crash", (node, pid)))
        changes.sort(key=lambda c: c[0])
        self.ignored = 0
        state = {}  # resource -> {node: epoch}
        self.steps = {}  # resource -> [(t, dict)]
        self.resources = set()

        def counts(node, pid, t):
            """Whether a line written at t by an agent of the node's boot `pid` changed what
            the node serves: that boot had begun and the server has not died since (a crash
            kills the VMS and every agent). A daemon-only kill (`kill-daemon`) ends the boot
            but not its VMS: its agents' lines still count, after the next boot too."""
            for t_boot, p, _ in boots.get(node, []):
                if p == pid and t_boot <= t:
                    return not any(t_boot <= tc <= t for tc in crashes.get(node, []))
            return False

        self.counts = counts
        for t, kind, data in changes:
            if kind == "crash":
                node, _ = data
                for res, owners in state.items():
                    if node in owners:
                        owners = dict(owners)
                        del owners[node]
                        state[res] = owners
                        self.steps.setdefault(res, []).append((t, owners))
                continue
            _, op, node, res, epoch, pid = data
            self.resources.add(res)
            if op == "begin":
                continue
            if boots and not counts(node, pid, t):
                self.ignored += 1
                continue
            owners = dict(state.get(res, {}))
            if op == "start":
                owners[node] = epoch
            elif op == "stop":
                owners.pop(node, None)
            else:
                continue
            state[res] = owners
            self.steps.setdefault(res, []).append((t, owners))

    # -- queries ---------------------------------------------------------------------------
    def owners_at(self, res, t):
        cur = {}
        for ts, owners in self.steps.get(res, []):
            if ts > t:
                break
            cur = owners
        return cur

    def intervals(self, res, a, b):
        """[(start, end, owners)] covering [a, b]."""
        out, cur, start = [], self.owners_at(res, a), a
        for ts, owners in self.steps.get(res, []):
            if ts <= a:
                continue
            if ts >= b:
                break
            out.append((start, ts, cur))
            start, cur = ts, owners
        out.append((start, b, cur))
        return out

    def orphan_ns(self, res, a, b):
        return sum(e - s for s, e, o in self.intervals(res, a, b) if not o)

    def dual_ns(self, res, a, b):
        return sum(e - s for s, e, o in self.intervals(res, a, b) if len(o) >= 2)

    def dual_spans(self, res, a, b):
        """Maximal stretches with two or more owners: [(start, end)]."""
        spans = []
        for s, e, o in self.intervals(res, a, b):
            if len(o) >= 2:
                if spans and spans[-1][1] == s:
                    spans[-1] = (spans[-1][0], e)
                else:
                    spans.append((s, e))
        return spans

    def settle_ns(self, res, heal, b):
        """How long after `heal` the resource still had two owners (0 if it had one)."""
        for s, e in self.dual_spans(res, heal, b):
            if s <= heal:
                return e - heal
        return 0

    def in_flight(self, t):
        """(node, resource) whose agent began a start not completed at t (counted boots)."""
        last = {}
        for ts, op, node, res, _, pid in self.lines:
            if ts > t:
                break
            if (not self.boots or self.counts(node, pid, ts)) and op in ("begin", "start",
                                                                          "stop"):
                last[(node, res)] = op
        return sorted(k for k, op in last.items() if op == "begin")

    def first_time(self, resources, pred, a, b):
        """The first t in [a, b] at which pred(owners) holds for every resource at once."""
        points = sorted({a} | {ts for r in resources for ts, _ in self.steps.get(r, [])
                               if a <= ts <= b})
        for t in points:
            if all(pred(r, self.owners_at(r, t)) for r in resources):
                return t
        return None

    def starts(self, a, b, nodes=None):
        """Completed starts in [a, b] (counted ones), optionally only by `nodes`."""
        out = []
        for res, steps in self.steps.items():
            prev = self.owners_at(res, a - 1)
            for ts, owners in steps:
                if ts < a:
                    continue
                if ts > b:
                    break
                for n in owners:
                    if n not in prev and (nodes is None or n in nodes):
                        out.append((ts, n, res, owners[n]))
                prev = owners
        return sorted(out)


def home_of(res):
    return res.rsplit("-cam-", 1)[0]


def load_snapshot(run_dir, tag):
    with open(os.path.join(run_dir, "api", f"{tag}.json")) as f:
        return json.load(f)


def final_state(run, snap, concerned):
    """Per resource: the owner and epoch the APIs report, whether every concerned node agrees,
    and whether that matches the ground truth at the snapshot."""
    out = {}
    for res in sorted(run.resources):
        views = {}
        for node, v in snap["nodes"].items():
            if node not in concerned(res) or not v.get("resources"):
                continue
            r = v["resources"].get(res)
            if r is not None:
                views[node] = (r["owner"], r["epoch"], r["state"])
        distinct = set(views.values())
        owner, epoch, state = (sorted(distinct, key=str)[0] if distinct else (None, 0, "?"))
        truth = run.owners_at(res, snap["t"])
        out[res] = {
            "owner": owner,
            "epoch": epoch,
            "state": state,
            "agree": len(distinct) == 1 and state == "active",
            "views": views,
            "truth": truth,
            "truth_ok": truth == ({owner: epoch} if owner else {}),
        }
    return out


def settle(lab, tag, timeout, expect=None, every=0.1):
    """Waits until the site has settled, then leaves the API snapshot `tag` for the final
    checks. Settled: every API concerned agrees (`lab.converged(expect)`), and the ground
    truth at the snapshot is exactly that owner and epoch for every resource with no agent
    start in flight: no hand-over is still going on (a buddy's stop behind the home's start,
    a start not completed). Sampling at one moment once made `partition` fail on a clean
    run: its final check ran while the buddy's stop was 26 ms behind the home server's start.
    Returns (ok, seconds waited); at the deadline the snapshot is taken anyway, for the
    checks to say what is wrong."""
    t0 = time.monotonic()
    while True:
        if lab.converged(expect):
            path = lab.snapshot_apis(tag)
            time.sleep(0.05)  # lines stamped just before the snapshot are in the logs now
            with open(path) as f:
                snap = json.load(f)
            run = Run(lab.dir)
            fin = final_state(run, snap, lab.concerned)
            if (all(f["agree"] and f["truth_ok"] for f in fin.values())
                    and not run.in_flight(snap["t"])):
                return True, time.monotonic() - t0
        if time.monotonic() - t0 >= timeout:
            lab.snapshot_apis(tag)
            return False, time.monotonic() - t0
        time.sleep(every)


def events_in(snap, a, b):
    """Events (type, node, data) from every node's log whose time is in [a, b]."""
    out = []
    for node, v in snap["nodes"].items():
        for e in v.get("events") or []:
            t = parse_time(e["time"])
            if a <= t <= b:
                out.append((t, node, e["type"].removeprefix("buddygate."), e.get("data", {})))
    return sorted(out, key=lambda x: x[0])


def analyze(run_dir, a, b, tag, concerned, fault=None, heal=None, failed=None):
    """Everything the scenarios assert on, for the window [a, b]."""
    run = Run(run_dir)
    snap = load_snapshot(run_dir, tag)
    res = sorted(run.resources)
    rep = {"per_resource": {}, "ignored_lines": run.ignored}
    for r in res:
        rep["per_resource"][r] = {
            "orphan_ms": run.orphan_ns(r, a, b) / 1e6,
            "dual_ms": run.dual_ns(r, a, b) / 1e6,
            "settle_ms": (run.settle_ns(r, heal, b) / 1e6) if heal else 0.0,
            "max_overlap_after_settle_ms": max(
                [(e - s) / 1e6 for s, e in run.dual_spans(r, heal or a, b) if s > (heal or a)],
                default=0.0),
        }
    rep["takeover_ms"] = None
    if failed and fault:
        mine = [r for r in res if home_of(r) == failed]
        t = run.first_time(mine, lambda r, o: any(n != home_of(r) for n in o), fault, b)
        rep["takeover_ms"] = None if t is None else (t - fault) / 1e6
    rep["final"] = final_state(run, snap, concerned)
    rep["agree"] = all(f["agree"] and f["truth_ok"] for f in rep["final"].values())
    rep["events"] = events_in(snap, a, b)
    rep["foreign_starts"] = [s for s in run.starts(a, b) if s[1] != home_of(s[2])]
    rep["run"] = run
    return rep


def summary(rep):
    pr = rep["per_resource"].values()
    return {
        "takeover_ms": rep["takeover_ms"],
        "orphan_ms": max((p["orphan_ms"] for p in pr), default=0.0),
        "dual_ms": max((p["dual_ms"] for p in pr), default=0.0),
        "settle_ms": max((p["settle_ms"] for p in pr), default=0.0),
        "overlap_ms": max((p["max_overlap_after_settle_ms"] for p in pr), default=0.0),
        "agree": rep["agree"],
        "finals": sorted({(f["owner"], f["epoch"]) for f in rep["final"].values()}, key=str),
    }


def print_resource_table(rep, out=sys.stdout):
    print(f"{'resource':<16} {'orphan ms':>10} {'dual ms':>9} {'settle ms':>10} "
          f"{'owner':<8} {'epoch':>6} {'APIs agree':>10} {'truth':>6}", file=out)
    for r, p in rep["per_resource"].items():
        f = rep["final"][r]
        print(f"{r:<16} {p['orphan_ms']:>10.1f} {p['dual_ms']:>9.1f} {p['settle_ms']:>10.1f} "
              f"{str(f['owner']):<8} {f['epoch']:>6} {str(f['agree']):>10} "
              f"{str(f['truth_ok']):>6}", file=out)


# -- connector consumers (tests/faults/consumers.py) ------------------------------------------
#
# What a PSIM and an MQTT subscriber believe, from what they received, with the rule every
# integrator must apply (docs/integration.md, "The epoch rule"): per resource keep the owner
# with the highest epoch seen, ignore anything lower. A partitioned or frozen node may send
# stale state; the rule makes that harmless, and the checker counts it (informational).

# webhook: the receiver's view (epoch rule); mqtt: the live subscriber's `resources/{id}`
# (epoch rule); mqtt-fresh: what a subscriber connecting now is handed (retained, as is);
# mqtt-servers(-fresh): the same for each live server's `servers/{id}` (served_by, epoch).
CONSUMER_KINDS = ("webhook", "mqtt", "mqtt-fresh", "mqtt-servers", "mqtt-servers-fresh")
# Webhook event types that say who serves a resource (failover.started lists claims that are
# not serving yet: an integrator acts on .completed).
OWNERSHIP_EVENTS = ("buddygate.failover.completed", "buddygate.failback.completed",
                    "buddygate.ownership.resolved", "buddygate.ownership.reasserted")


def read_jsonl(path):
    """Complete lines only (a writer may be in the middle of one)."""
    out = []
    try:
        with open(path) as f:
            for ln in f:
                if not ln.endswith("\n"):
                    break
                try:
                    out.append(json.loads(ln))
                except ValueError:
                    pass
    except FileNotFoundError:
        pass
    return out


def webhook_claims(event):
    """(resource, owner, address, epoch) for every resource an ownership event places."""
    if not event or event.get("type") not in OWNERSHIP_EVENTS:
        return []
    d = event.get("data") or {}
    if event["type"] == "buddygate.ownership.resolved":
        return [((d.get("resource") or {}).get("id"), d.get("owner"), d.get("address"),
                 d.get("epoch"))]
    return [(r.get("id"), r.get("owner"), r.get("address"), r.get("epoch"))
            for r in d.get("resources") or []]


class EpochView:
    """One consumer's view: per resource the newest (highest epoch) owner received."""

    def __init__(self):
        # A lower or equal epoch is ignored (docs/integration.md, the epoch rule). For a
        # server's topic the view is its `served_by` and `served_address` (its `state` may
        # change at one epoch; that is not compared).
        self.best = {}      # resource -> {"owner", "address", "epoch", "t", "src"}
        self.stale = []     # (t, resource, epoch, newest epoch seen, src, owner)
        self.ties = []      # same epoch, different owner: never expected (epochs are unique)
        self.messages = 0

    def apply(self, t, rid, owner, address, epoch, src):
        if rid is None or epoch is None:
            return
        self.messages += 1
        b = self.best.get(rid)
        if b is None or epoch > b["epoch"]:
            self.best[rid] = {"owner": owner, "address": address, "epoch": epoch, "t": t,
                              "src": src}
        elif epoch < b["epoch"]:
            self.stale.append((t, rid, epoch, b["epoch"], src, owner))
        elif owner != b["owner"] or address != b["address"]:
            self.ties.append((t, rid, epoch, src, owner, b["owner"]))


def consumer_views(run_dir, until=None):
    """The webhook receiver's and the live MQTT subscriber's views (records up to `until`)."""
    d = os.path.join(run_dir, "consumers")
    wh, unverified, deliveries = EpochView(), [], 0
    for rec in read_jsonl(os.path.join(d, "webhooks.jsonl")):
        if until is not None and rec["t"] > until:
            break
        deliveries += 1
        if not rec.get("verified"):
            unverified.append((rec.get("id"), rec.get("error")))
            continue
        ev = rec.get("event") or {}
        for rid, owner, address, epoch in webhook_claims(ev):
            wh.apply(rec["t"], rid, owner, address, epoch, ev.get("id"))
    mq, ms = EpochView(), EpochView()
    for rec in read_jsonl(os.path.join(d, "mqtt.jsonl")):
        if until is not None and rec["t"] > until:
            break
        topic = rec.get("topic", "")
        p = rec.get("payload") or {}
        src = f"{'retained' if rec.get('retain') else 'live'} {p.get('timestamp')}"
        if "/resources/" in topic:
            mq.apply(rec["t"], topic.rsplit("/", 1)[1], p.get("owner"), p.get("address"),
                     p.get("epoch"), src)
        elif "/servers/" in topic:
            ms.apply(rec["t"], topic.rsplit("/", 1)[1], p.get("served_by"),
                     p.get("served_address"), p.get("epoch"), src)
    return {"webhook": wh, "mqtt": mq, "mqtt-servers": ms, "unverified": unverified,
            "deliveries": deliveries}


def fresh_view(fresh, kind="resources"):
    """A late subscriber's view: exactly the retained messages it was handed (one per topic:
    no epoch rule can repair a stale retained message)."""
    v = EpochView()
    for rid, m in ((fresh or {}).get(kind) or {}).items():
        p = m.get("payload") or {}
        if kind == "resources":
            v.apply(fresh.get("t"), rid, p.get("owner"), p.get("address"), p.get("epoch"),
                    f"retained {p.get('timestamp')}")
        else:
            v.apply(fresh.get("t"), rid, p.get("served_by"), p.get("served_address"),
                    p.get("epoch"), f"retained {p.get('timestamp')}")
    return v


def server_expectations(expect):
    """`servers/{id}` of each live server, from its resources' expected owners (the MQTT
    connector's rule): served_by the owner of most of them (ties to the earlier server in the
    site file), epoch the highest among them."""
    order = ["live-1", "live-2", "fo-1", "fo-2"]
    per = {}
    for rid, (owner, epoch) in expect.items():
        per.setdefault(home_of(rid), []).append((owner, epoch))
    out = {}
    for srv, xs in per.items():
        if any(o is None for o, _ in xs):
            out[srv] = (None, None)
            continue
        counts = {}
        for o, _ in xs:
            counts[o] = counts.get(o, 0) + 1
        top = max(counts.values())
        served = min((o for o, n in counts.items() if n == top),
                     key=lambda o: order.index(o) if o in order else len(order))
        out[srv] = (served, max(e for _, e in xs))
    return out


def check_consumers(views, fresh, expect, addresses, unannounced_ok):
    """Per consumer kind: which resources it has on the expected owner, address and epoch.

    expect: resource -> (owner, epoch), the ground truth; addresses: node -> announced address;
    unannounced_ok: resources whose owner and epoch never changed since the first claim (no
    webhook event ever announced them: a PSIM knows them from its configuration)."""
    kinds = {"webhook": views["webhook"], "mqtt": views["mqtt"], "mqtt-fresh": fresh_view(fresh),
             "mqtt-servers": views["mqtt-servers"],
             "mqtt-servers-fresh": fresh_view(fresh, "servers")}
    sexpect = server_expectations(expect)
    out = {}
    for kind, v in kinds.items():
        bad = {}
        exp = sexpect if "servers" in kind else expect
        for rid, (owner, epoch) in sorted(exp.items()):
            got = v.best.get(rid)
            if got is None:
                if kind == "webhook" and rid in unannounced_ok:
                    continue
                bad[rid] = ("nothing", f"{owner}@{epoch}")
            elif (got["owner"], got["epoch"], got["address"]) != (owner, epoch,
                                                                   addresses.get(owner)):
                bad[rid] = (f"{got['owner']}@{got['epoch']} ({got['address']}; {got['src']})",
                            f"{owner}@{epoch}")
        out[kind] = {"converged": len(exp) - len(bad), "total": len(exp), "bad": bad}
    return out


def consumer_expectations(run, t, highest=False):
    """From the ground truth at t: resource -> (owner, epoch), and the resources still on their
    first claim (never moved, never re-claimed: nothing to announce). Two owners (a fault not
    healed yet: a cut-off or frozen server still serving) expect nothing, unless `highest`:
    then the owner with the highest epoch, which the epoch rule picks."""
    expect, first = {}, set()
    for res in sorted(run.resources):
        owners = run.owners_at(res, t)
        if len(owners) != 1 and not (highest and owners):
            expect[res] = (None, None)  # no single owner: nothing can match
            continue
        owner, epoch = max(owners.items(), key=lambda x: x[1])
        expect[res] = (owner, epoch)
        steps = run.steps.get(res, [])
        firsts = [o for _, o in steps if o]
        if firsts and firsts[0] == {owner: epoch} and all(o == {owner: epoch}
                                                         for o in firsts):
            first.add(res)
    return expect, first


def stale_after(view, a, b=None):
    """Stale (lower-epoch) messages received in [a, b] after a newer one."""
    return [s for s in view.stale if s[0] >= a and (b is None or s[0] <= b)]


def wait_consumers(lab, timeout=10.0, every=0.25, tag=None, expect=None, highest=False):
    """After a heal: polls the consumers until each kind has every resource on the ground
    truth's owner and epoch (or `expect`: resource -> (owner, epoch)), or `timeout`. Returns
    {"ok", "ms" (time to converge, per kind), "result" (check_consumers), "fresh", "stale",
    "unverified"}; with `tag`, saves it as consumers/check-<tag>.json."""
    t0 = time.monotonic()
    addresses = {s.id: s.hb[0] for s in lab.servers}
    ms = {k: None for k in CONSUMER_KINDS}
    while True:
        now = time.time_ns()
        run = Run(lab.dir)
        exp, first = consumer_expectations(run, now, highest)
        if expect is not None:
            exp = {r: expect.get(r, e) for r, e in exp.items()}
        views = consumer_views(lab.dir)
        fresh = lab.fresh_subscriber()
        res = check_consumers(views, fresh, exp, addresses, first)
        for k in CONSUMER_KINDS:
            if ms[k] is None and not res[k]["bad"]:
                ms[k] = (time.monotonic() - t0) * 1000
        ok = all(not r["bad"] for r in res.values()) and not views["unverified"]
        if ok or time.monotonic() - t0 >= timeout:
            break
        time.sleep(every)
    out = {"ok": ok, "ms": ms, "result": res, "fresh": fresh,
           "unverified": views["unverified"], "deliveries": views["deliveries"],
           "stale": {"webhook": len(views["webhook"].stale), "mqtt": len(views["mqtt"].stale)},
           # Two owners announced at one epoch (for servers/{id}: two `served_by`, as the buddy
           # and the returning server did mid-failback before the connector's fix).
           "ties": {k: views[k].ties for k in ("webhook", "mqtt", "mqtt-servers")}}
    if tag:
        with open(os.path.join(lab.dir, "consumers", f"check-{tag}.json"), "w") as f:
            json.dump(out, f, indent=1, default=str)
    return out


def consumers_line(c):
    """"webhook 8/8, mqtt 8/8, mqtt-fresh 8/8"."""
    return ", ".join(f"{k} {c['result'][k]['converged']}/{c['result'][k]['total']}"
                     for k in CONSUMER_KINDS)


def main():
    ap = argparse.ArgumentParser(description="Check a fault-lab run directory.")
    ap.add_argument("run_dir")
    ap.add_argument("--tag", default=None, help="API snapshot to use (default: the newest)")
    a = ap.parse_args()
    snaps = sorted(os.listdir(os.path.join(a.run_dir, "api")),
                   key=lambda n: os.path.getmtime(os.path.join(a.run_dir, "api", n)))
    tag = a.tag or snaps[-1].removesuffix(".json")
    run = Run(a.run_dir)
    first = min((m["t"] for m in run.markers if m["kind"] == "boot"), default=0)
    site_buddies = {"live-1": ["fo-1", "fo-2"], "live-2": ["fo-2", "fo-1"]}

    def concerned(r):
        return [home_of(r)] + site_buddies.get(home_of(r), [])

    snap = load_snapshot(a.run_dir, tag)
    # From the first moment everything was served to the snapshot.
    start = run.first_time(sorted(run.resources), lambda r, o: bool(o), first, snap["t"]) or first
    rep = analyze(a.run_dir, start, snap["t"], tag, concerned)
    print(f"window: {(snap['t'] - start) / 1e9:.1f} s from the first moment everything was "
          f"served; {rep['ignored_lines']} agent lines of dead boots ignored")
    print_resource_table(rep)
    kinds = {}
    for _, _, k, _ in rep["events"]:
        kinds[k] = kinds.get(k, 0) + 1
    print("events:", ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    ok = rep["agree"]
    # The connector consumers' view at the snapshot, by the epoch rule.
    if os.path.isdir(os.path.join(a.run_dir, "consumers")):
        views = consumer_views(a.run_dir, until=snap["t"])
        exp, first = consumer_expectations(run, snap["t"])
        addresses = {}  # announced addresses, as the APIs report them
        for v in snap["nodes"].values():
            for r in (v.get("resources") or {}).values():
                if r.get("owner") and r.get("address"):
                    addresses[r["owner"]] = r["address"]
        fresh = None
        path = os.path.join(a.run_dir, "consumers", f"check-{tag}.json")
        if os.path.exists(path):
            with open(path) as f:
                fresh = json.load(f).get("fresh")
        res = check_consumers(views, fresh, exp, addresses, first)
        for k in CONSUMER_KINDS:
            if k.endswith("-fresh") and fresh is None:
                print(f"consumers: {k}: no fresh subscriber saved for this snapshot")
                continue
            r = res[k]
            print(f"consumers: {k} converged {r['converged']}/{r['total']}"
                  + (f"; wrong: {r['bad']}" if r["bad"] else ""))
            ok = ok and not r["bad"]
        print(f"consumers: {views['deliveries']} webhook deliveries, "
              f"{len(views['unverified'])} unverified; stale messages after a newer one: "
              f"webhook {len(views['webhook'].stale)}, mqtt {len(views['mqtt'].stale)}")
        ok = ok and not views["unverified"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

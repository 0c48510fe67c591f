#!/usr/bin/env python3
"""Webhook interop: real `buddygate run` nodes deliver to a real HTTP receiver that checks every
delivery with the Python `standardwebhooks` package and validates it against
schemas/events/cloudevent.schema.json.

    pip install -r tests/interop/requirements.txt
    BUDDYGATE_BIN=target/debug/buddygate python3 tests/interop/webhook_interop.py [--save-examples]

The site: live-1 (5 cameras), live-2 (3 cameras and an I/O unit whose exec agent cannot start on
fo-1) and fo-1 (spread-servers), on loopback with free ports, `failback_delay = "3s"`. Every node
runs `connectors/psim.toml`: every event type, two `whsec_` secrets (rotation), a bearer token
from a file, a custom header, a short retry schedule. The story:

1. kill -9 live-1: fo-1 delivers `failover.completed` with its own address and a takeover epoch;
   live-1 restarts and delivers `failback.completed`.
2. SIGSTOP live-2 until fo-1 has taken it over (the I/O unit fails there: `resource.failed`),
   SIGCONT: both report `ownership.conflict`, live-2 stands down (`ownership.resolved`) and
   fails back. live-2 runs a site file that differs by one priority: `config.mismatch`.

Before that, a second webhook connector (`spare`) cannot start on any node: its signing secret
file is not there. Each node reports `connector.failed` once; the file appears, and each reports
`connector.recovered` once, which `spare` delivers too.

The receiver answers the first `server.down` with 500 (a retry on the schedule) and the first
`failover.started` with 429 + `Retry-After: 1` (honoured). At the end every event in every
node's log must have been delivered; every delivery verified (with each secret) and validated;
per sender, new ids arrive in increasing `seq`; an id comes twice only as a retry of a failed
attempt (or once more after its sender was killed with -9). Exit 0 only when all checks pass.
`--save-examples` writes one real delivery of each type to docs/examples/events/.
"""

import argparse
import base64
import http.server
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET

import jsonschema
import standardwebhooks

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.dont_write_bytecode = True
import event_schemas  # noqa: E402
from nodes import Failure, free_port  # noqa: E402
from nodes import Site as Nodes  # noqa: E402

SITE = "interop"
SECRETS = [
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",  # the Standard Webhooks test vector's key
    "whsec_dGhpcyBpcyBhIHNlY29uZCBrZXkgISE=",  # the next key, during a rotation
]
BEARER = "psim-interop-token-4d2e"
NX_PASSWORD = "nx-interop-pass"
CAMERAS = {"live-1": 5, "live-2": 3}
# The receiver's fault plan: the first delivery of these types gets this answer.
FAULTS = {
    "buddygate.server.down": (500, {}),
    "buddygate.failover.started": (429, {"Retry-After": "1"}),
}
# The events that move resources, which the shipped templates render.
MOVES = ("buddygate.failover.completed", "buddygate.failback.completed")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- the receiver ------------------------------------------------------------------------


class Delivery:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class Receiver:
    """A PSIM stand-in: verifies, validates, records, and answers by the fault plan."""

    def __init__(self):
        schemas = {f.name: json.loads(f.read_text()) for f in event_schemas.OUT.glob("*.schema.json")}
        self.union = jsonschema.Draft202012Validator(
            schemas["cloudevent.schema.json"], format_checker=jsonschema.FormatChecker()
        )
        self.per_type = {
            name[: -len(".schema.json")]: jsonschema.Draft202012Validator(
                s, format_checker=jsonschema.FormatChecker()
            )
            for name, s in schemas.items()
            if name != "cloudevent.schema.json"
        }
        self.hooks = [standardwebhooks.Webhook(s) for s in SECRETS]
        self.lock = threading.Lock()
        self.deliveries = []
        self.faults = dict(FAULTS)
        self.templated = []  # (method, path, headers, body) of the template connectors
        self.spare = []  # the events the `spare` connector delivered
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/buddygate":
                    status, extra = receiver.receive(self.path, dict(self.headers.items()), body)
                elif self.path == "/spare":
                    with receiver.lock:
                        receiver.spare.append(json.loads(body))
                    status, extra = 200, {}
                else:
                    status, extra = receiver.rendered(self.command, self.path, dict(self.headers.items()), body)
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST  # noqa: N815

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def rendered(self, method, path, headers, body):
        """A delivery of one of the shipped template connectors: recorded, checked at the end."""
        with self.lock:
            self.templated.append((method, path, {k.lower(): v for k, v in headers.items()}, body))
        return 200, {}

    def receive(self, path, headers, body):
        at = time.monotonic()
        problems = []
        h = {k.lower(): v for k, v in headers.items()}
        # Standard Webhooks: each secret alone must verify (both are signed during a rotation).
        verified = 0
        for i, hook in enumerate(self.hooks):
            try:
                hook.verify(body, headers)
                verified += 1
            except Exception as e:  # noqa: BLE001
                problems.append(f"secret {i + 1}: {e}")
        sigs = h.get("webhook-signature", "").split(" ")
        if len(sigs) != len(SECRETS) or not all(s.startswith("v1,") for s in sigs):
            problems.append(f"webhook-signature {h.get('webhook-signature')!r}: want one v1 per secret")
        try:
            event = json.loads(body)
        except ValueError as e:
            event = {}
            problems.append(f"body is not JSON: {e}")
        errs = list(self.union.iter_errors(event))
        if errs:
            # The per-type schema says what is wrong more plainly than the union.
            v = self.per_type.get(event.get("type"))
            plain = list(v.iter_errors(event)) if v else []
            detail = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in plain or [jsonschema.exceptions.best_match(errs)]]
            problems.append("schema: " + "; ".join(detail[:5]))
        if h.get("content-type") != "application/cloudevents+json":
            problems.append(f"content-type {h.get('content-type')!r}")
        if h.get("webhook-id") != event.get("id"):
            problems.append(f"webhook-id {h.get('webhook-id')!r} is not the event id {event.get('id')!r}")
        if h.get("authorization") != f"Bearer {BEARER}":
            problems.append(f"authorization {h.get('authorization')!r}")
        if h.get("x-psim-site") != SITE:
            problems.append(f"x-psim-site {h.get('x-psim-site')!r}")
        if path != "/buddygate":
            problems.append(f"path {path!r}")
        ty = event.get("type")
        with self.lock:
            status, extra = self.faults.pop(ty, (200, {}))
            self.deliveries.append(
                Delivery(
                    at=at,
                    sender=str(event.get("source", "?")).rsplit("/", 1)[-1],
                    id=h.get("webhook-id"),
                    type=ty,
                    seq=event.get("seq"),
                    event=event,
                    body=body,
                    headers=headers,
                    verified=verified,
                    valid=not errs,
                    problems=problems,
                    status=status,
                )
            )
        return status, extra

    def snapshot(self):
        with self.lock:
            return list(self.deliveries)

    def wait_for(self, what, pred, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for d in self.snapshot():
                if d.status < 300 and pred(d):
                    return d
            time.sleep(0.05)
        raise Failure(f"timed out after {timeout}s waiting for {what}")


IO_AGENT = """#!/bin/sh
# An I/O unit wired to live-2 only: it cannot start on fo-1.
case "$BUDDYGATE_OP" in
  start) [ "$BUDDYGATE_NODE" = fo-1 ] && { echo "no I/O board wired to $BUDDYGATE_NODE" >&2; exit 1; }; exit 0 ;;
  monitor) [ "$BUDDYGATE_NODE" = fo-1 ] && exit 7; exit 0 ;;
  *) exit 0 ;;
esac
"""


class Relay:
    """A UDP relay on one heartbeat path: forwards datagrams to `target` until cut."""

    def __init__(self, ip, target):
        self.target = target
        self.cut = threading.Event()
        self.done = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, free_port(ip)))
        self.sock.settimeout(0.1)
        self.address = "%s:%d" % self.sock.getsockname()
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        host, port = self.target.rsplit(":", 1)
        while not self.done.is_set():
            try:
                data, _ = self.sock.recvfrom(65536)
            except OSError:
                continue
            if not self.cut.is_set():
                self.sock.sendto(data, (host, int(port)))

    def close(self):
        self.done.set()
        self.sock.close()


class Site(Nodes):
    def __init__(self, binary, dir, receiver_port):
        super().__init__(binary, dir, ["live-1", "live-2", "fo-1"])
        (dir / "site.key").write_text("interop-test-site-key-0123456789\n")
        (dir / "api.token").write_text("interop-api-token\n")
        (dir / "io-agent.sh").write_text(IO_AGENT)
        (dir / "io-agent.sh").chmod(0o755)
        (dir / "site.toml").write_text(self.site_toml())
        # live-2 reaches fo-1's second path through a relay the test can cut (path.down, path.up):
        # its site file names the relay there, so the files differ (config.mismatch).
        self.relay = Relay("127.0.2.3", self.servers["fo-1"]["heartbeat"][1])
        (dir / "site-live-2.toml").write_text(self.site_toml(relay=self.relay.address))
        conn = dir / "connectors"
        conn.mkdir()
        (conn / "psim.token").write_text(BEARER + "\n")
        (conn / "psim.toml").write_text(
            f"""# Every event, to the interop receiver, signed with two keys (a rotation).
type = "webhook"
url = "http://127.0.0.1:{receiver_port}/buddygate"
secret = [{", ".join(f'"{s}"' for s in SECRETS)}]
bearer = "file:psim.token"
headers = {{ "X-PSIM-Site" = "{SITE}" }}
timeout = "2s"
retry = ["200ms", "500ms", "1s", "2s", "5s"]
"""
        )
        # The shipped template connectors, as shipped, pointed at the receiver.
        shutil.copytree(ROOT / "connectors" / "templates", conn / "templates")
        for name in ("milestone", "nx", "legacy-get"):
            text = (ROOT / "connectors" / f"{name}.toml").read_text()
            text = re.sub(r'^url = "http://[^/"]+', f'url = "http://127.0.0.1:{receiver_port}', text, count=1, flags=re.M)
            (conn / f"{name}.toml").write_text(text)
        (conn / "spare.toml").write_text(
            f"""# Its signing secret is not there when the nodes start: connector.failed, then
# connector.recovered once the file appears.
type = "webhook"
url = "http://127.0.0.1:{receiver_port}/spare"
secret = "file:spare.secret"
events = ["buddygate.connector.*"]
retry = ["200ms"]
"""
        )
        (conn / "moved.toml").write_text(
            f"""type = "webhook"
url = "http://127.0.0.1:{receiver_port}/moved"
events = ["buddygate.failover.completed", "buddygate.failback.completed"]
template = "templates/server-moved.json.j2"
"""
        )

    def site_toml(self, relay=None):
        def paths(sid, heartbeat):
            return heartbeat[:1] + [relay] if sid == "fo-1" and relay else heartbeat

        return self.site_file(SITE, ["fo-1"], CAMERAS, heartbeat=paths) + (
            '\n[[resources]]\nserver = "live-2"\nid = "live-2-io-1"\nkind = "io"\n'
            'agent = "exec"\ncommand = "io-agent.sh"\nretries = 0\n'
        )

    def config(self, sid):
        return self.dir / ("site-live-2.toml" if sid == "live-2" else "site.toml")

    def check(self):
        for sid in ("live-1", "live-2"):
            r = subprocess.run([self.binary, "check", "--config", str(self.config(sid))], capture_output=True, text=True)
            if r.returncode != 0:
                raise Failure(f"buddygate check failed ({r.returncode}):\n{r.stdout}{r.stderr}")

    def start(self, sid):
        super().start(sid, self.config(sid), {"NX_PASSWORD": NX_PASSWORD})

    def stop_all(self):
        super().stop_all()
        self.relay.close()

    def owners(self, view, home):
        """{resource: (owner, epoch, state)} of `home`'s resources, as `view` sees them."""
        try:
            rs = self.api(view, "/api/v1/resources")["resources"]
        except OSError:
            return {}
        return {r["id"]: (r["owner"], r["epoch"], r["state"]) for r in rs if r["server"] == home}

    def wait_owned(self, view, home, owner, timeout):
        """Waits until `view` sees every camera of `home` active on `owner`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cams = {k: v for k, v in self.owners(view, home).items() if "-cam-" in k}
            if cams and all(v[0] == owner and v[2] == "active" for v in cams.values()):
                return cams
            time.sleep(0.05)
        raise Failure(f"timed out: {home}'s cameras active on {owner} as {view} sees it: {self.owners(view, home)}")

    def log(self, sid):
        """Every event in `sid`'s log (through its API)."""
        events, after = [], 0
        while True:
            page = self.api(sid, f"/api/v1/events?after={after}&limit=1000")["events"]
            if not page:
                return events
            events += page
            after = page[-1]["seq"]


# --- the checks --------------------------------------------------------------------------


class Checks:
    def __init__(self):
        self.passed, self.failed = [], []

    def __call__(self, name, ok, detail=""):
        (self.passed if ok else self.failed).append(name)
        print(f"  {'ok  ' if ok else 'FAIL'} {name}{'' if ok or not detail else ': ' + detail}", flush=True)


def check_order(deliveries, killed):
    """Per sender: each delivery is a new id with a higher seq than any before, or a retry of
    the previous attempt that was not acknowledged, or (at least once) the last acknowledged
    id of a node killed with -9, once more after its restart. Returns (problems, retries,
    crash redeliveries)."""
    problems, retries, crash = [], 0, 0
    last_before_kill = {}
    for d in deliveries:
        if d.sender in killed and d.at < killed[d.sender] and d.status < 300:
            last_before_kill[d.sender] = d.id
    by_sender = {}
    for d in deliveries:
        by_sender.setdefault(d.sender, []).append(d)
    for sender, ds in by_sender.items():
        top, prev, acked = 0, None, set()
        for d in ds:
            if prev is not None and d.id == prev.id and prev.status >= 300:
                retries += 1
            elif d.seq > top:
                pass
            elif d.id in acked and sender in killed and killed[sender] < d.at and d.id == last_before_kill.get(sender):
                crash += 1
            else:
                problems.append(f"{sender}: {d.id} (seq {d.seq}) after seq {top}" + (" (already acknowledged)" if d.id in acked else ""))
            top = max(top, d.seq or 0)
            if d.status < 300:
                acked.add(d.id)
            prev = d
    return problems, retries, crash


def _milestone(method, path, h, body, events):
    ns = {"m": "urn:milestone-systems"}
    x = ET.fromstring(body)
    e = events.get(x.findtext("m:EventHeader/m:ID", namespaces=ns))
    ok = bool(e) and h.get("content-type") == "application/xml"
    ok = ok and x.findtext("m:EventHeader/m:Source/m:Name", namespaces=ns) == e["data"]["new_server"]["address"]
    return e, ok


def _nx(method, path, h, body, events):
    j = json.loads(body)
    e = next((e for e in events.values() if e["time"] == j["timestamp"] and j["caption"] == "buddygate: " + e["type"]), None)
    basic = "Basic " + base64.b64encode(f"buddygate:{NX_PASSWORD}".encode()).decode()
    return e, bool(e) and e["data"]["new_server"]["address"] in j["description"] and h.get("authorization") == basic


def _moved(method, path, h, body, events):
    j = json.loads(body)
    e = events.get(j["id"])
    return e, bool(e) and j["moved_to"] == e["data"]["new_server"] and j["epoch"] == e["data"]["epoch"]


def _get(method, path, h, body, events):
    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(path).query))
    e = events.get(q.get("id"))
    ok = method == "GET" and bool(e) and q.get("address") == e["data"]["new_server"]["address"]
    return e, ok and q.get("epoch") == str(e["data"]["epoch"]) and q.get("type") == e["type"]


# The shipped template connectors: path, checker, which events, what the check says.
TEMPLATES = {
    "milestone": ("/", _milestone, MOVES, "Analytics Event XML with the new address as Source/Name"),
    "nx": ("/api/createEvent", _nx, MOVES, "generic event JSON naming the new address, with basic auth"),
    "moved": ("/moved", _moved, MOVES, "server-moved JSON with moved_to and epoch"),
    "legacy-get": ("/alarm", _get, MOVES[:1], "GET with type, id, address and epoch as query parameters"),
}


def check_templates(checks, deliveries, templated):
    """Each shipped template connector rendered each event it takes, in its format. Returns
    {connector: (method, path, headers, body)} of its rendering of live-1's failover."""
    events = {d.id: d.event for d in deliveries if d.status < 300 and d.type in MOVES}
    first = {}
    for name, (prefix, parse, types, what) in TEMPLATES.items():
        want = {i for i, e in events.items() if e["type"] in types}
        seen, problems = set(), []
        for req in templated:
            if req[1].split("?")[0] != prefix:
                continue
            try:
                e, ok = parse(*req, events)
            except (ValueError, KeyError, ET.ParseError) as err:
                e, ok = None, False
                problems.append(f"{err!r}")
            if not ok:
                problems.append(req[1] + " " + req[3][:200].decode(errors="replace"))
            if e:
                seen.add(e["id"])
                if e["type"] == MOVES[0] and e["data"]["server"]["id"] == "live-1":
                    first.setdefault(name, req)
        detail = "; ".join(problems[:3]) or f"not rendered: {sorted(want - seen)}"
        checks(f"template {name}: {what}, for each of {len(want)} events", not problems and seen == want, detail)
    return first


def save_examples(deliveries, out):
    out.mkdir(parents=True, exist_ok=True)
    seen = {}
    for d in deliveries:
        if d.status < 300 and d.type not in seen:
            seen[d.type] = d
    for ty, d in seen.items():
        (out / f"{ty}.json").write_text(json.dumps(d.event, indent=2) + "\n")
    fo = seen.get("buddygate.failover.completed")
    if fo:
        lines = ["POST /buddygate HTTP/1.1"]
        for k, v in fo.headers.items():
            if k.lower() in ("content-type", "content-length", "authorization", "x-psim-site") or k.lower().startswith("webhook-"):
                lines.append(f"{k}: {v}")
        (out / "failover.completed.http").write_text("\n".join(lines) + "\n\n" + fo.body.decode() + "\n")
    log(f"saved {len(seen)} examples to {out}")


def run(binary, save):
    checks = Checks()
    stale = event_schemas.stale()
    checks("schemas/events matches tests/interop/event_schemas.py", not stale, ", ".join(stale))
    receiver = Receiver()
    work = pathlib.Path(tempfile.mkdtemp(prefix="buddygate-interop-"))
    site = Site(binary, work, receiver.port)
    killed = {}
    ok = False
    try:
        site.check()
        checks("buddygate check accepts the site and connector files", True)
        for sid in ("live-1", "live-2", "fo-1"):
            site.start(sid)
        for home in CAMERAS:
            site.wait_owned("fo-1", home, home, 15)
        log(f"site up in {work}; receiver on 127.0.0.1:{receiver.port}")

        # 0. The spare connector cannot start on any node; its secret appears, it runs.
        def connector_events(ty):
            return [d for d in receiver.snapshot() if d.type == ty and d.event["data"]["connector"] == "spare"]

        for sid in site.servers:
            receiver.wait_for(
                f"connector.failed of spare from {sid}",
                lambda d, sid=sid: d.type == "buddygate.connector.failed" and d.sender == sid,
                10,
            )
        (work / "connectors" / "spare.secret").write_text(SECRETS[0] + "\n")
        log("spare.secret written")
        for sid in site.servers:
            receiver.wait_for(
                f"connector.recovered of spare from {sid}",
                lambda d, sid=sid: d.type == "buddygate.connector.recovered" and d.sender == sid,
                20,
            )
        failed = connector_events("buddygate.connector.failed")
        checks(
            "connector.failed: once per node for spare, naming its secret file",
            sorted(d.sender for d in failed) == sorted(site.servers)
            and all("spare.secret" in d.event["data"]["reason"] for d in failed),
            json.dumps([d.event["data"] for d in failed]),
        )
        recovered = connector_events("buddygate.connector.recovered")
        checks(
            "connector.recovered: once per node for spare, after its first failed start",
            sorted(d.sender for d in recovered) == sorted(site.servers)
            and all(d.event["data"]["attempts"] >= 2 for d in recovered),
            json.dumps([d.event["data"] for d in recovered]),
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with receiver.lock:
                own = {e["source"].rsplit("/", 1)[-1] for e in receiver.spare if e["type"] == "buddygate.connector.recovered"}
            if own == set(site.servers):
                break
            time.sleep(0.05)
        checks("spare, once running, delivers its own connector.recovered from each node", own == set(site.servers), str(own))

        # 1. kill -9 live-1: fo-1 takes over and says so; live-1 comes back and fails back.
        site.kill9("live-1")
        t_kill = killed["live-1"] = time.monotonic()
        log("kill -9 live-1")
        fo_addr = site.servers["fo-1"]["address"]
        fo = receiver.wait_for(
            "failover.completed of live-1 from fo-1",
            lambda d: d.type == "buddygate.failover.completed"
            and d.sender == "fo-1"
            and d.event["data"]["server"]["id"] == "live-1",
            20,
        )
        data = fo.event["data"]
        log(f"failover.completed from fo-1 {fo.at - t_kill:.2f}s after the kill: epoch {data['epoch']}, takeover {data['takeover_ms']} ms")
        checks("failover.completed: new_server is fo-1 with fo-1's address", data["new_server"] == {"id": "fo-1", "address": fo_addr}, json.dumps(data["new_server"]))
        checks("failover.completed: epoch > 199 and a first-buddy epoch (…98)", data["epoch"] > 199 and data["epoch"] % 100 == 98, str(data["epoch"]))
        checks(
            "failover.completed: every camera of live-1, owned by fo-1 at fo-1's address and the epoch",
            sorted(r["id"] for r in data["resources"]) == [f"live-1-cam-{i:02}" for i in range(1, CAMERAS["live-1"] + 1)]
            and all(r["owner"] == "fo-1" and r["address"] == fo_addr and r["epoch"] == data["epoch"] for r in data["resources"]),
            json.dumps(data["resources"]),
        )
        site.start("live-1")
        log("live-1 restarted")
        fb = receiver.wait_for(
            "failback.completed of live-1",
            lambda d: d.type == "buddygate.failback.completed" and d.event["data"]["server"]["id"] == "live-1",
            30,
        )
        fbd = fb.event["data"]
        log(f"failback.completed from {fb.sender}: epoch {fbd['epoch']}, failback {fbd['failback_ms']} ms")
        checks(
            "failback.completed: live-1 serves its cameras again at a higher home epoch (…99)",
            fbd["new_server"]["id"] == "live-1" and fbd["epoch"] > data["epoch"] and fbd["epoch"] % 100 == 99,
            json.dumps({k: fbd[k] for k in ("new_server", "epoch")}),
        )

        # 2. Cut one path between live-2 and fo-1 for a while: no failover, only the path.
        site.relay.cut.set()
        log("path 1 from live-2 to fo-1 cut")
        try:
            pd = receiver.wait_for("path.down", lambda d: d.type == "buddygate.path.down", 10)
        finally:
            site.relay.cut.clear()
        checks(
            "path.down: fo-1 reports live-2's path 1",
            pd.sender == "fo-1" and pd.event["data"]["server"]["id"] == "live-2" and pd.event["data"]["path"] == 1,
            json.dumps(pd.event["data"]),
        )
        receiver.wait_for("path.up", lambda d: d.type == "buddygate.path.up", 10)
        log("path 1 restored")
        checks("a path down is no failover", not any(d.type.startswith("buddygate.failover") and d.event["data"]["server"]["id"] == "live-2" for d in receiver.snapshot()))

        # 3. Freeze live-2 until fo-1 has taken it over, then let it run: a conflict, resolved.
        site.wait_owned("fo-1", "live-1", "live-1", 10)
        site.signal("live-2", signal.SIGSTOP)
        log("SIGSTOP live-2")
        try:
            site.wait_owned("fo-1", "live-2", "fo-1", 15)
        finally:
            site.signal("live-2", signal.SIGCONT)
        log("SIGCONT live-2")
        for ty in ("buddygate.ownership.conflict", "buddygate.ownership.resolved"):
            receiver.wait_for(ty, lambda d, ty=ty: d.type == ty, 15)
        receiver.wait_for(
            "failback.completed of live-2",
            lambda d: d.type == "buddygate.failback.completed" and d.event["data"]["server"]["id"] == "live-2",
            30,
        )
        fo2 = receiver.wait_for(
            "failover.completed of live-2",
            lambda d: d.type == "buddygate.failover.completed" and d.event["data"]["server"]["id"] == "live-2",
            1,
        )
        checks(
            "failover.completed of live-2 lists the I/O unit fo-1 could not start in `failed`",
            [f["id"] for f in fo2.event["data"]["failed"]] == ["live-2-io-1"],
            json.dumps(fo2.event["data"]["failed"]),
        )

        # Everything in every node's log is delivered, to the psim connector and to the
        # template connectors (each failover and failback to three, each failover to the GET).
        deadline = time.monotonic() + 15
        while True:
            logged = [e for sid in site.servers for e in site.log(sid)]
            got = {d.id for d in receiver.snapshot() if d.status < 300}
            missing = [e["id"] for e in logged if e["id"] not in got]
            rendered = 3 * sum(e["type"] in MOVES for e in logged) + sum(e["type"] == MOVES[0] for e in logged)
            if (not missing and len(receiver.templated) >= rendered) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        n_logged = len(logged)
        checks(f"all {n_logged} events in the three nodes' logs delivered (none lost)", not missing, ", ".join(missing[:10]))
        ok = True
    except Failure as e:
        checks("scenario", False, str(e))
    finally:
        site.stop_all()
        receiver.stop()

    ds = receiver.snapshot()
    types = {}
    for d in ds:
        if d.status < 300:
            types[d.type] = types.get(d.type, 0) + 1
    bad_sig = [f"{d.id}: {d.problems}" for d in ds if d.verified != len(SECRETS)]
    invalid = [f"{d.id}: {d.problems}" for d in ds if not d.valid]
    other = [f"{d.id}: {p}" for d in ds for p in d.problems if not p.startswith(("secret", "schema"))]
    checks(f"all {len(ds)} deliveries verified by standardwebhooks with each of {len(SECRETS)} secrets", ds and not bad_sig, "; ".join(bad_sig[:5]))
    checks(f"all {len(ds)} deliveries valid against schemas/events/cloudevent.schema.json", ds and not invalid, "; ".join(invalid[:5]))
    checks("headers: content-type, webhook-id = event id, bearer, custom header", ds and not other, "; ".join(other[:5]))
    order, retries, crash = check_order(ds, killed)
    checks("per sender: new ids in increasing seq; a repeated id is always explained", not order, "; ".join(order[:5]))
    # The receiver's faults: a retry on the schedule, and Retry-After honoured.
    for ty, (status, extra) in FAULTS.items():
        tries = [d for d in ds if d.type == ty]
        first = next((d for d in tries if d.status == status), None)
        again = next((d for d in tries if first and d.id == first.id and d.at > first.at), None)
        gap = (again.at - first.at) if again else None
        want = float(extra.get("Retry-After", 0.15))
        checks(
            f"{status} to the first {ty}: retried with the same id and body"
            + (f", after Retry-After ({extra['Retry-After']} s)" if extra else ", on the schedule"),
            bool(again) and again.body == first.body and gap >= want * 0.9 and (extra or gap < 1.5),
            f"gap {gap}",
        )
    # Every type of the event log; the periodic re-assertion is not in the log (tests/webhook.rs
    # covers it).
    for ty in event_schemas.ORDER:
        if ty == "buddygate.ownership.reasserted":
            continue
        checks(f"saw {ty}", ty in types)
    renders = check_templates(checks, ds, receiver.templated) if ok else {}
    if save and ok:
        save_examples(ds, ROOT / "docs" / "examples" / "events")
        out = ROOT / "docs" / "examples" / "templates"
        out.mkdir(parents=True, exist_ok=True)
        names = {"milestone": "milestone.xml", "nx": "nx.json", "moved": "server-moved.json", "legacy-get": "legacy-get.txt"}
        for name, (method, path, h, body) in renders.items():
            text = f"{method} {path}\n" if name == "legacy-get" else body.decode()
            (out / names[name]).write_text(text if text.endswith("\n") else text + "\n")

    senders = {}
    for d in ds:
        senders[d.sender] = senders.get(d.sender, 0) + 1
    print("\nwebhook interop summary")
    print(f"  deliveries: {len(ds)} ({sum(d.status < 300 for d in ds)} acknowledged, {retries} retries, {crash} redelivered after kill -9)")
    print(f"  verified:   {sum(d.verified == len(SECRETS) for d in ds)}/{len(ds)} (standardwebhooks, {len(SECRETS)} secrets)")
    print(f"  valid:      {sum(d.valid for d in ds)}/{len(ds)} (cloudevent.schema.json)")
    print("  per sender: " + ", ".join(f"{s} {n}" for s, n in sorted(senders.items())))
    print("  by type:    " + ", ".join(f"{t.removeprefix('buddygate.')} {n}" for t, n in sorted(types.items())))
    if checks.failed:
        print(f"  node logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(f"interop: {len(checks.passed)} passed, {len(checks.failed)} failed")
    return 0 if not checks.failed else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    p.add_argument("--save-examples", action="store_true", help="write one delivery of each type to docs/examples/events/")
    a = p.parse_args()
    binary = os.environ.get("BUDDYGATE_BIN")
    if not binary:
        binary = str(pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "buddygate")
    if not os.access(binary, os.X_OK):
        print(f"no buddygate binary at {binary}: build it (cargo build) and set BUDDYGATE_BIN", file=sys.stderr)
        return 2
    return run(binary, a.save_examples)


if __name__ == "__main__":
    sys.exit(main())

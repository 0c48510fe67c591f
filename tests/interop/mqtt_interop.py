#!/usr/bin/env python3
"""MQTT interop: real `buddygate run` nodes publish to a real Mosquitto broker; the Python
`paho-mqtt` client (MQTT 3.1.1) is the subscriber.

    pip install -r tests/interop/requirements.txt
    BUDDYGATE_BIN=target/debug/buddygate python3 tests/interop/mqtt_interop.py [--mosquitto PATH]

The script starts Mosquitto on a free loopback port (no persistence, anonymous), and a site of
live-1 (3 cameras), live-2 (2 cameras) and fo-1 (spread-servers) whose nodes all run
`connectors/bus.toml` (`type = "mqtt"`, default topics `buddygate/mqttinterop/...`). The story:

1. An early subscriber sees every node's retained birth (`nodes/{id}/online`, `online: true`).
2. kill -9 live-1: its Last Will (`online: false`) appears; fo-1 publishes
   `events/buddygate.failover.completed` at QoS 1, after `server.down` and `failover.started`.
3. A subscriber that connects after the failover receives, retained, every live-1 camera owned by
   fo-1 with fo-1's address and the epoch the REST API shows, and `servers/live-1` down and
   served by fo-1; no event is retained.
4. live-1 restarts: its birth replaces the will; after the failback every camera is retained as
   live-1's again, with a higher epoch.
5. SIGTERM fo-1: its death message (`online: false`) is published before it exits.

Alongside, every node also runs `connectors/secure.toml`: MQTT 5 over TLS to a second Mosquitto
listener that requires a client certificate (`require_certificate true`; CA, server and client
certificates made here with `cryptography`), with `message_expiry` and `onvif_topics`, under
`secure/...`; and `connectors/nocert.toml`, the same listener without a client certificate. A
paho-mqtt MQTT 5 subscriber checks:

6. births over TLS; nothing ever published by the connector without a client certificate;
7. `failover.completed` with content type `application/cloudevents+json`, the `ce-*` and `epoch`
   user properties and a message expiry; retained state `application/json`;
8. the ONVIF event-broker form `secure/onvif-ej/Failover/Completed/&live-1`;
9. every topic received (both prefixes) is a channel of `docs/asyncapi.yaml` (parsed with PyYAML),
   whose payload schemas exist.

Exit 0 only when all checks pass.
"""

import argparse
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import datetime
import ipaddress
import re

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.dont_write_bytecode = True
from nodes import Failure, free_port, wait  # noqa: E402
from nodes import Site as Nodes  # noqa: E402

SITE = "mqttinterop"
PREFIX = f"buddygate/{SITE}"
SECURE = f"secure/{SITE}"
CAMERAS = {"live-1": 3, "live-2": 2}


def log(msg):
    print(f"[mqtt-interop {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pki(dir):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(cn, key, issuer, issuer_key, ca=False, san=None):
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(issuer)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def write(fname, obj):
        if isinstance(obj, ec.EllipticCurvePrivateKey):
            data = obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
        else:
            data = obj.public_bytes(serialization.Encoding.PEM)
        (dir / fname).write_bytes(data)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("buddygate interop CA", ca_key, name("buddygate interop CA"), ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = cert("127.0.0.1", server_key, ca.subject, ca_key,
                  san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = cert("buddygate-node", client_key, ca.subject, ca_key, san=[x509.DNSName("node.buddygate")])
    for fname, obj in [("ca.pem", ca), ("server.pem", server), ("server.key", server_key),
                       ("client.pem", client), ("client.key", client_key)]:
        write(fname, obj)


class Subscriber:
    """A paho-mqtt client (3.1.1, or 5 with `v5`) subscribed to `{prefix}/#` at QoS 1,
    recording every message (and, in MQTT 5, its properties)."""

    def __init__(self, port, name, prefix=PREFIX, v5=False):
        self.msgs, self.props = [], []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=protocol)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{prefix}/#", qos=1)
        self.c.on_subscribe = lambda c, u, mid, rc, p: self.subscribed.set()
        self.c.on_message = self.on_message
        self.c.connect("127.0.0.1", port, keepalive=10)
        self.c.loop_start()
        if not self.subscribed.wait(5):
            raise Failure(f"{name}: no SUBACK")

    def on_message(self, c, u, m):
        try:
            payload = json.loads(m.payload)
        except ValueError:
            payload = None
        p = m.properties
        props = {
            "content_type": getattr(p, "ContentType", None),
            "expiry": getattr(p, "MessageExpiryInterval", None),
            "user": dict(getattr(p, "UserProperty", None) or []),
            "format": getattr(p, "PayloadFormatIndicator", None),
        } if p is not None else {}
        with self.lock:
            self.msgs.append((m.topic, payload, m.qos, m.retain))
            self.props.append(props)

    def find(self, topic):
        """(payload, properties) of the first message on `topic`."""
        with self.lock:
            for (t, p, _, _), props in zip(self.msgs, self.props):
                if t == topic:
                    return p, props
        return None

    def all(self):
        with self.lock:
            return list(self.msgs)

    def last(self, topic):
        for t, p, _, _ in reversed(self.all()):
            if t == topic:
                return p
        return None

    def events(self, source):
        seen, out = set(), []
        for t, p, q, r in self.all():
            if "/events/" in t and p and p.get("source") == source and p["id"] not in seen:
                seen.add(p["id"])
                out.append((t, p, q, r))
        return out

    def stop(self):
        self.c.loop_stop()
        self.c.disconnect()


class Site(Nodes):
    def __init__(self, binary, dir, broker_port, tls_port):
        super().__init__(binary, dir, ["live-1", "live-2", "fo-1"])
        (dir / "site.key").write_text("mqtt-interop-site-key-0123456789\n")
        (dir / "api.token").write_text("mqtt-interop-token\n")
        (dir / "connectors").mkdir()
        (dir / "connectors" / "bus.toml").write_text(
            f'type = "mqtt"\nurl = "mqtt://127.0.0.1:{broker_port}"\nkeep_alive = "2s"\n'
        )
        pki(dir / "connectors")
        (dir / "connectors" / "secure.toml").write_text(
            f'type = "mqtt"\nurl = "mqtts://127.0.0.1:{tls_port}"\nprotocol = "v5"\n'
            f'topic_prefix = "{SECURE}"\nmessage_expiry = "1h"\nonvif_topics = true\n'
            'tls = { ca = "ca.pem", cert = "client.pem", key = "client.key" }\n'
        )
        (dir / "connectors" / "nocert.toml").write_text(
            f'type = "mqtt"\nurl = "mqtts://127.0.0.1:{tls_port}"\nprotocol = "v5"\n'
            f'topic_prefix = "nocert/{SITE}"\ntls = {{ ca = "ca.pem" }}\n'
        )
        (dir / "site.toml").write_text(self.site_file(SITE, ["fo-1"], CAMERAS))

    def owned(self, view, home, owner):
        rs = self.resources(view, home)
        if rs and all(r["owner"] == owner and r["state"] == "active" for r in rs):
            return rs
        return None


def asyncapi_covers(topics):
    """(ok, detail): docs/asyncapi.yaml parses, is AsyncAPI 3, every message payload `$ref`
    to a file exists, and every topic matches a channel address (`{param}` = one level)."""
    import yaml

    doc = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    if not str(doc.get("asyncapi", "")).startswith("3."):
        return False, f"asyncapi: {doc.get('asyncapi')!r}"
    missing = []

    def refs(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref" and isinstance(v, str) and not v.startswith("#"):
                    path = (ROOT / "docs" / v.split("#")[0]).resolve()
                    if not path.is_file():
                        missing.append(v)
                else:
                    refs(v)
        elif isinstance(node, list):
            for v in node:
                refs(v)

    refs(doc)
    if missing:
        return False, f"missing files: {missing}"
    patterns = []
    for name, ch in doc["channels"].items():
        addr = ch["address"]
        rx = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(addr)) + "$"
        patterns.append(re.compile(rx))
    unknown = sorted({t for t in topics if not any(p.match(t) for p in patterns)})
    return not unknown, f"topics not in the document: {unknown}"


def run(binary, mosquitto):
    checks = []

    def check(name, ok, detail=""):
        checks.append((name, ok))
        log(f"{'ok  ' if ok else 'FAIL'} {name}{'' if ok else f': {detail}'}")

    dir = pathlib.Path(tempfile.mkdtemp(prefix="buddygate-mqtt-interop-"))
    port = free_port("127.0.0.1")
    tls_port = free_port("127.0.0.1")
    site = Site(binary, dir, port, tls_port)
    c = dir / "connectors"
    # Mosquitto started as root drops to its own user: let it read its certificates.
    for path in [dir, c, c / "ca.pem", c / "server.pem", c / "server.key"]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    (dir / "mosquitto.conf").write_text(
        f"per_listener_settings false\nallow_anonymous true\npersistence false\n"
        f"listener {port} 127.0.0.1\n"
        f"listener {tls_port} 127.0.0.1\ncafile {c / 'ca.pem'}\ncertfile {c / 'server.pem'}\n"
        f"keyfile {c / 'server.key'}\nrequire_certificate true\n"
    )
    broker = subprocess.Popen(
        [mosquitto, "-c", str(dir / "mosquitto.conf")],
        stdout=open(dir / "mosquitto.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    subs = []
    try:
        def listening():
            if broker.poll() is not None:
                raise Failure(f"mosquitto exited: {(dir / 'mosquitto.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                return True
            except OSError:
                return False

        wait("mosquitto listening", listening, 5)
        secure = Subscriber(port, "secure", prefix="secure", v5=True)
        subs.append(secure)
        nocert = Subscriber(port, "nocert", prefix="nocert")
        subs.append(nocert)
        for sid in site.servers:
            site.start(sid)
        wait("site up", lambda: site.owned("fo-1", "live-1", "live-1") and site.owned("fo-1", "live-2", "live-2"))
        early = Subscriber(port, "early")
        subs.append(early)
        for sid in site.servers:
            wait(f"{sid} birth", lambda sid=sid: (early.last(f"{PREFIX}/nodes/{sid}/online") or {}).get("online") is True)
        check("retained birth of every node", True)

        site.kill9("live-1")
        owners = wait("fo-1 serves live-1", lambda: site.owned("fo-1", "live-1", "fo-1"))
        will = wait("live-1 will", lambda: (p := early.last(f"{PREFIX}/nodes/live-1/online")) and p["online"] is False and p)
        check("Last Will of the killed node", isinstance(will.get("timestamp"), str), will)
        src = f"buddygate://{SITE}/fo-1"
        wait("failover.completed", lambda: any(p["type"] == "buddygate.failover.completed" for _, p, _, _ in early.events(src)))
        evs = early.events(src)
        types = [p["type"] for _, p, _, _ in evs]
        pos = {t: types.index(t) for t in reversed(types)}
        check("events in order", pos.get("buddygate.server.down", 99) < pos.get("buddygate.failover.started", 99)
              < pos["buddygate.failover.completed"], types)
        check("events at QoS 1, not retained, on events/{type}",
              all(q == 1 and not r and t == f"{PREFIX}/events/{p['type']}" for t, p, q, r in evs), evs)
        done = next(p for _, p, _, _ in evs if p["type"] == "buddygate.failover.completed")
        check("failover.completed names fo-1 and its address",
              done["data"]["new_server"] == {"id": "fo-1", "address": "127.0.1.3"}, done["data"])

        # MQTT 5 over TLS with a client certificate.
        for sid in site.servers:
            wait(f"{sid} birth over TLS", lambda sid=sid: secure.find(f"{SECURE}/nodes/{sid}/online"))
        check("MQTT 5 over TLS (require_certificate): every node's birth", True)
        ev, props = wait("failover.completed over MQTT 5",
                         lambda: secure.find(f"{SECURE}/events/buddygate.failover.completed"))
        user = props.get("user", {})
        check("MQTT 5 event: content type application/cloudevents+json, UTF-8",
              props.get("content_type") == "application/cloudevents+json" and props.get("format") == 1, props)
        check("MQTT 5 event: ce-specversion, ce-id, ce-type, ce-source, epoch user properties",
              user.get("ce-specversion") == "1.0" and user.get("ce-id") == ev["id"]
              and user.get("ce-type") == ev["type"] and user.get("ce-source") == ev["source"]
              and user.get("epoch") == str(ev["data"]["epoch"]), user)
        check("MQTT 5 event: message expiry (1h)", 0 < (props.get("expiry") or 0) <= 3600, props)
        rid = owners[0]["id"]
        state = wait("retained state over MQTT 5",
                     lambda: (m := secure.find(f"{SECURE}/resources/{rid}")) and m)
        check("MQTT 5 state: application/json, no expiry",
              state[1].get("content_type") == "application/json" and state[1].get("expiry") is None, state)
        onvif, _ = wait("onvif-ej", lambda: secure.find(f"{SECURE}/onvif-ej/Failover/Completed/&live-1"))
        check("ONVIF event-broker form: Topic, UtcTime, Source, Data",
              onvif.get("Topic") == "bg:Failover/Completed" and onvif["Source"] == {"Server": "live-1"}
              and onvif["Data"]["NewServer"] == "fo-1" and onvif["Data"]["Address"] == "127.0.1.3"
              and onvif["Data"]["Epoch"] == str(ev["data"]["epoch"]) and isinstance(onvif.get("UtcTime"), str),
              onvif)
        check("no client certificate: refused by the broker, nothing published", not nocert.all(), nocert.all())
        refused = (dir / "fo-1.1.log").read_text()
        check("no client certificate: the node says so",
              any("MQTT connection failed" in l and "nocert" in l for l in refused.splitlines()))
        check("every topic is a channel of docs/asyncapi.yaml",
              # The document writes the default prefix, buddygate/{site}.
              *asyncapi_covers([t.replace(SECURE, PREFIX, 1) for t, _, _, _ in early.all() + secure.all()]))

        late = Subscriber(port, "late")
        subs.append(late)
        want = {r["id"]: r for r in owners}

        def retained_owners():
            got = {t.rsplit("/", 1)[1]: (p, r) for t, p, _, r in late.all() if t.startswith(f"{PREFIX}/resources/")}
            return all(i in got and got[i][0]["owner"] == "fo-1" and got[i][0]["address"] == "127.0.1.3"
                       and got[i][0]["epoch"] == want[i]["epoch"] and got[i][1] for i in want) and got

        wait("retained owners for a late subscriber", retained_owners, 5)
        check("late subscriber: every live-1 camera retained with fo-1, its address and epoch", True)
        # The broker hands retained messages over in no fixed order: wait for this one too.
        server = wait("retained servers/live-1 for a late subscriber",
                      lambda: (late.last(f"{PREFIX}/servers/live-1") or {}).get("served_by") == "fo-1"
                      and late.last(f"{PREFIX}/servers/live-1"), 5)
        check("late subscriber: servers/live-1 down, served by fo-1",
              server.get("state") == "down" and server.get("served_by") == "fo-1"
              and server.get("served_address") == "127.0.1.3", server)
        check("no event is retained", not any("/events/" in t for t, _, _, _ in late.all()))

        site.start("live-1")
        wait("live-1 birth again", lambda: (early.last(f"{PREFIX}/nodes/live-1/online") or {}).get("online") is True)
        check("birth replaces the will", True)
        back = wait("failback", lambda: site.owned("fo-1", "live-1", "live-1"), 20)

        def failed_back():
            return all((p := late.last(f"{PREFIX}/resources/{r['id']}")) and p["owner"] == "live-1"
                       and p["epoch"] == r["epoch"] and p["epoch"] > want[r["id"]]["epoch"] for r in back)

        wait("retained owners after the failback", failed_back, 10)
        check("after the failback every camera is live-1's again, with a higher epoch", True)

        code = site.term("fo-1")
        death = wait("fo-1 death", lambda: (p := late.last(f"{PREFIX}/nodes/fo-1/online")) and p["online"] is False and p, 5)
        clean = "MQTT disconnected cleanly." in (dir / f"fo-1.{site.starts['fo-1']}.log").read_text()
        check("death message on a clean exit (no will)", code == 0 and clean, (code, death))
    except Failure as e:
        check(str(e), False)
    finally:
        for s in subs:
            s.stop()
        site.stop_all()
        broker.terminate()
        broker.wait()
    failed = [n for n, ok in checks if not ok]
    if failed:
        log(f"{len(failed)} check(s) failed; logs kept in {dir}")
        return 1
    shutil.rmtree(dir, ignore_errors=True)
    log(f"all {len(checks)} checks passed")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.environ.get("BUDDYGATE_BIN", "target/debug/buddygate"))
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    a = ap.parse_args()
    sys.exit(run(a.bin, a.mosquitto))


if __name__ == "__main__":
    main()

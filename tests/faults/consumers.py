#!/usr/bin/env python3
"""The lab's connector consumers: what a PSIM and an MQTT subscriber receive from the site.

Runs inside the witness namespace (lab.py starts it with `ip netns exec`), next to the Mosquitto
broker, so every node reaches both over its `wt0` (the management network; heartbeat faults do
not touch it, an isolated failover server's `wt0` going down does):

  - a webhook receiver on WEBHOOK (POST /hook): verifies every delivery's Standard Webhooks
    signature (HMAC-SHA256 over `id.timestamp.body` with the lab's `whsec_` secret; with the
    `standardwebhooks` package when it is installed, by hand otherwise), answers 204, and
    appends every delivery to `consumers/webhooks.jsonl`: receive time, webhook-id, whether the
    signature verified, the CloudEvent;
  - an MQTT subscriber (paho-mqtt, MQTT 3.1.1, QoS 1) on `{prefix}/#`, connected for the whole
    run, appending every message to `consumers/mqtt.jsonl`: receive time, topic, retain flag,
    payload;
  - a control endpoint on the namespace's own loopback (CONTROL, never touched by a fault):
    `GET /fresh?want=N&timeout=S` connects a new subscriber to `{prefix}/resources/+` and
    `{prefix}/servers/+`, collects the retained messages the broker hands a late subscriber
    (until N topics or S seconds) and returns them as JSON: what a PSIM that connects after the
    fault learns.

The checker (checker.py, `consumer_views`) applies the epoch rule to these records.

    consumers.py --dir RUN_DIR --secret-file FILE --prefix TOPIC_PREFIX [--mqtt HOST:PORT]
"""

import argparse
import base64
import hashlib
import hmac
import http.server
import json
import os
import socketserver
import sys
import threading
import time
import urllib.parse

sys.dont_write_bytecode = True

import paho.mqtt.client as mqtt  # noqa: E402

try:
    import standardwebhooks  # noqa: E402
except ImportError:  # verified by hand below
    standardwebhooks = None

WEBHOOK = ("10.201.3.1", 7600)
CONTROL = ("127.0.0.1", 7601)


class Recorder:
    def __init__(self, path):
        self.lock = threading.Lock()
        self.f = open(path, "a")

    def write(self, rec):
        line = json.dumps(rec, separators=(",", ":")) + "\n"
        with self.lock:
            self.f.write(line)
            self.f.flush()


def verify_by_hand(secret, headers, body, tolerance=300):
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, ts = headers.get("webhook-id"), headers.get("webhook-timestamp")
    if not msg_id or not ts:
        raise ValueError("missing webhook-id or webhook-timestamp")
    if abs(time.time() - int(ts)) > tolerance:
        raise ValueError("webhook-timestamp too far from now")
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(mac).decode()
    for sig in headers.get("webhook-signature", "").split(" "):
        version, _, value = sig.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return
    raise ValueError("no matching signature")


def make_verifier(secret):
    if standardwebhooks is not None:
        wh = standardwebhooks.Webhook(secret)

        def verify(headers, body):
            wh.verify(body, headers)
        return verify, "standardwebhooks"
    return (lambda headers, body: verify_by_hand(secret, headers, body)), "hmac (stdlib)"


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def webhook_handler(recorder, verify):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            t = time.time_ns()
            n = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(n)
            headers = {k.lower(): v for k, v in self.headers.items()}
            ok, err = True, None
            try:
                verify(headers, body)
            except Exception as e:  # any failure to verify is recorded and refused
                ok, err = False, f"{type(e).__name__}: {e}"
            try:
                event = json.loads(body)
            except ValueError:
                event = None
            recorder.write({"t": t, "id": headers.get("webhook-id"), "verified": ok,
                            "error": err, "event": event})
            # A refused signature is answered 401: the node retries, nothing is lost, and the
            # checker fails the run on any unverified delivery.
            self.send_response(204 if ok else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()
    return H


class Live:
    """The subscriber connected for the whole run."""

    def __init__(self, host, port, prefix, recorder):
        self.connected = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="faults-live",
                             protocol=mqtt.MQTTv311)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{prefix}/#", qos=1)
        self.c.on_subscribe = lambda c, u, mid, rc, p: self.connected.set()
        self.c.on_message = lambda c, u, m: recorder.write(
            {"t": time.time_ns(), "topic": m.topic, "retain": bool(m.retain),
             "payload": _json(m.payload)})
        self.c.reconnect_delay_set(0.1, 1)
        self.c.connect(host, port, keepalive=10)
        self.c.loop_start()


def _json(b):
    try:
        return json.loads(b)
    except ValueError:
        return None


def fresh(host, port, prefix, want, timeout):
    """A new subscriber's view: the retained `resources/{id}` messages it is handed."""
    got, lock, done = {}, threading.Lock(), threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                    client_id=f"faults-fresh-{time.time_ns()}", protocol=mqtt.MQTTv311)
    c.on_connect = lambda c, u, f, rc, p: c.subscribe(
        [(f"{prefix}/resources/+", 1), (f"{prefix}/servers/+", 1)])

    def on_message(c, u, m):
        kind, _, rid = m.topic.removeprefix(prefix + "/").partition("/")
        with lock:
            got.setdefault(kind, {})[rid] = {"retain": bool(m.retain),
                                             "payload": _json(m.payload)}
            if want and sum(len(v) for v in got.values()) >= want:
                done.set()
    c.on_message = on_message
    t = time.time_ns()
    try:
        c.connect(host, port, keepalive=10)
    except OSError as e:
        return {"t": t, "error": str(e), "resources": {}}
    c.loop_start()
    done.wait(timeout)
    c.disconnect()
    c.loop_stop()
    with lock:
        return {"t": t, "resources": dict(got.get("resources", {})),
                "servers": dict(got.get("servers", {}))}


def control_handler(args):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):
            u = urllib.parse.urlparse(self.path)
            q = dict(urllib.parse.parse_qsl(u.query))
            if u.path == "/fresh":
                body = json.dumps(fresh(args.mqtt_host, args.mqtt_port, args.prefix,
                                        int(q.get("want", 0)),
                                        float(q.get("timeout", 1.0)))).encode()
                self.send_response(200)
            elif u.path == "/healthz":
                body = b"{}"
                self.send_response(200)
            else:
                body = b"{}"
                self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    return H


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--secret-file", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--mqtt", default="10.201.3.1:1883")
    args = ap.parse_args()
    args.mqtt_host, port = args.mqtt.rsplit(":", 1)
    args.mqtt_port = int(port)
    out = os.path.join(args.dir, "consumers")
    os.makedirs(out, exist_ok=True)
    with open(args.secret_file) as f:
        secret = f.read().strip()
    verify, how = make_verifier(secret)
    hooks = Server(WEBHOOK, webhook_handler(Recorder(os.path.join(out, "webhooks.jsonl")),
                                            verify))
    ctl = Server(CONTROL, control_handler(args))
    for s in (hooks, ctl):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    live = None
    deadline = time.monotonic() + 10
    while live is None:
        try:
            live = Live(args.mqtt_host, args.mqtt_port, args.prefix,
                        Recorder(os.path.join(out, "mqtt.jsonl")))
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    if not live.connected.wait(10):
        sys.exit("the live subscriber never got its SUBACK")
    print(f"ready (webhook signatures checked with {how})", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()

"""What the interop scripts share: a site of real `buddygate run` nodes on loopback.

Each server gets an address 127.0.1.N, two heartbeat paths (127.0.1.N and 127.0.2.N) and an
API address, all on free ports; `site_file` is the text of the site file, `start` runs a node with its
output in `{id}.{n}.log` of the site's folder (n counts its starts).

Used by webhook_interop.py, mqtt_interop.py and onvif_client.py, which import it from this
folder (`sys.path` holds the script's folder).
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import time
import urllib.request


class Failure(Exception):
    pass


def free_port(ip):
    """A port free for both UDP and TCP on `ip` (like tests/common/mod.rs)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((ip, 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((ip, port))
                    return port
                except OSError:
                    continue


def wait(what, pred, timeout=15.0):
    """Polls `pred` until it returns something true, which it returns; `Failure` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise Failure(f"timed out waiting for: {what}")
        time.sleep(0.05)


class Site:
    """The servers `ids` (ids starting with `live` are live servers, the others spread-servers
    failover servers) on loopback, run from `binary`, with their files in `dir`."""

    def __init__(self, binary, dir, ids):
        self.binary, self.dir = binary, pathlib.Path(dir)
        self.procs, self.starts = {}, {}
        self.servers = {}
        for i, sid in enumerate(ids, start=1):
            a, b = f"127.0.1.{i}", f"127.0.2.{i}"
            self.servers[sid] = {
                "address": a,
                "heartbeat": [f"{a}:{free_port(a)}", f"{b}:{free_port(b)}"],
                "api": f"{a}:{free_port(a)}",
            }

    def site_file(self, name, buddies, cameras, failback="failback = \"auto\"\nfailback_delay = \"3s\"\n",
                  connectors=True, api="", heartbeat=None):
        """The site file: `[site]` named `name` with `failback`, `[api]` (token from api.token,
        then `api`), every server (live ones with `buddies`; `heartbeat(sid, paths)` may change a
        server's paths), and `cameras` ({home: n}) cameras named `{home}-cam-NN`."""
        s = [
            f'[site]\nname = "{name}"\nsecret = "file:site.key"\nheartbeat_interval = "200ms"\n'
            f'failure_timeout = "1s"\n{failback}' + ('connectors = "connectors"\n' if connectors else "")
            + f'\n[api]\ntoken = "file:api.token"\n{api}'
        ]
        for sid, srv in self.servers.items():
            paths = heartbeat(sid, srv["heartbeat"]) if heartbeat else srv["heartbeat"]
            hb = ", ".join(f'"{h}"' for h in paths)
            s.append(f'\n[[servers]]\nid = "{sid}"\naddress = "{srv["address"]}"\nheartbeat = [{hb}]\napi = "{srv["api"]}"\n')
            if sid.startswith("live"):
                s.append("buddies = [%s]\n" % ", ".join(f'"{b}"' for b in buddies))
            else:
                s.append('role = "failover"\nmode = "spread-servers"\n')
        for sid, n in cameras.items():
            s.append(f'\n[[resources]]\nserver = "{sid}"\nid = "{{server}}-cam-{{01..{n:02}}}"\nkind = "camera"\n')
        return "".join(s)

    def start(self, sid, config=None, env=None):
        """Runs node `sid` with the site file `config` (default `site.toml`)."""
        n = self.starts[sid] = self.starts.get(sid, 0) + 1
        out = open(self.dir / f"{sid}.{n}.log", "wb")
        self.procs[sid] = subprocess.Popen(
            [self.binary, "run", "--config", str(config or self.dir / "site.toml"), "--node", sid],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "BUDDYGATE_LOG": "info,buddygate=debug", **(env or {})},
        )
        out.close()

    def signal(self, sid, sig):
        self.procs[sid].send_signal(sig)

    def kill9(self, sid):
        p = self.procs.pop(sid)
        p.kill()
        p.wait()

    def term(self, sid):
        """SIGTERM, then the exit code."""
        p = self.procs.pop(sid)
        p.send_signal(signal.SIGTERM)
        return p.wait(timeout=10)

    def stop_all(self):
        for p in self.procs.values():
            try:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.procs.clear()

    def api(self, sid, path):
        """GET `path` from `sid`'s API with the site's token (`api.token` in the site's folder):
        reads need one."""
        token = (self.dir / "api.token").read_text().strip()
        req = urllib.request.Request(
            f"http://{self.servers[sid]['api']}{path}", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(req, timeout=3) as r:
            return json.load(r)

    def resources(self, view, home=None):
        """The resources `view` knows (of `home` only, when given); None when it does not answer."""
        try:
            rs = self.api(view, "/api/v1/resources")["resources"]
        except OSError:
            return None
        return [r for r in rs if home is None or r["server"] == home]

    def logs(self, sid):
        """Everything node `sid` wrote, over all its starts."""
        return "".join(
            (self.dir / f"{sid}.{n}.log").read_text(errors="replace") for n in range(1, self.starts.get(sid, 0) + 1)
        )

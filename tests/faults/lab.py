"""The fault lab: real `buddygate run` processes in Linux network namespaces.

Topology (every address lives inside namespaces this module creates; nothing is routed to or
from the host's own network):

    net 1 (heartbeat path 0)  10.201.1.0/24   userspace switch #1, TAP `hb0` in every host
    net 2 (heartbeat path 1)  10.201.2.0/24   userspace switch #2, TAP `hb1` in every host
    net 3 (witness)           10.201.3.0/24   a bridge in the witness namespace, veth `wt0`
    API                       127.0.0.1:84xx  each host's own loopback; the harness reaches it
                                              with a socket opened inside the namespace (setns)

Hosts: live-1, live-2 (live servers, 4 exec-agent cameras each; live-1's buddies are fo-1 then
fo-2, live-2's fo-2 then fo-1) and fo-1, fo-2 (spread-servers failover servers). The witness
namespace runs a tiny TCP listener that the site lists in `witnesses`.

Faults: `link()` (ip link down/up in a host), `impair()` / `partition()` / `clear_net()` (the
switches: loss, delay, jitter, reordering, duplication, blocks), `pause()` / `resume()`
(SIGSTOP/SIGCONT), `kill9()` (the server dies), `kill_daemon()` (only the daemon dies: its VMS
keeps recording), `start(..., empty=True)` (a restart with an empty data dir).

Everything a run leaves is in its directory: site.toml, per-node daemon logs (`<id>.<n>.log`),
agent logs (`agent/<id>.agent.log`, the ground truth), `markers.jsonl` (what the harness did
and when), and API snapshots written by `snapshot_apis()` for the checker.
"""

import base64
import ctypes
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_OWN_NS = os.open("/proc/self/ns/net", os.O_RDONLY)

HB_PORT = 7400
WITNESS = "10.201.3.1:7500"
# The connector consumers (tests/faults/consumers.py) and the broker, in the witness namespace.
BROKER = "10.201.3.1:1883"
WEBHOOK_URL = "http://10.201.3.1:7600/hook"
CONSUMERS_CTL = ("127.0.0.1", 7601)
TOPIC_PREFIX = "buddygate/faults"
MOSQUITTO = os.environ.get("MOSQUITTO") or shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def now_ns():
    return time.time_ns()


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def ns_socket(ns):
    """A TCP socket that belongs to the network namespace `ns`."""
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns(fd)
        try:
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            _setns(_OWN_NS)
    finally:
        os.close(fd)


class _NsHTTP(http.client.HTTPConnection):
    def __init__(self, ns, host, port, timeout):
        super().__init__(host, port, timeout=timeout)
        self._ns = ns

    def connect(self):
        s = ns_socket(self._ns)
        s.settimeout(self.timeout)
        try:
            s.connect((self.host, self.port))
        except BaseException:
            s.close()
            raise
        self.sock = s


def sh(*args, check=True, quiet=False):
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


class Server:
    def __init__(self, idx, sid, live, buddies):
        self.idx = idx  # 1-based, used in addresses
        self.id = sid
        self.live = live
        self.buddies = buddies
        self.ns = None
        self.proc = None
        self.boots = 0
        self.paused = False
        self.api_port = 8400 + idx
        self.hb = [f"10.201.1.{10 + idx}", f"10.201.2.{10 + idx}"]
        self.witness_ip = f"10.201.3.{10 + idx}"


class Lab:
    """One site in namespaces. Use as a context manager: everything is torn down on exit."""

    def __init__(self, binary, workdir, prefix=None, cameras=4, heartbeat_ms=200,
                 failure_timeout_ms=1000, failback_delay_s=3, seed=None, log=None,
                 consumers=True):
        self.binary = os.path.abspath(binary)
        self.dir = os.path.abspath(workdir)
        self.prefix = prefix or f"bgf{os.getpid() % 100000}"
        self.cameras = cameras
        self.heartbeat_ms = heartbeat_ms
        self.failure_timeout_ms = failure_timeout_ms
        self.failback_delay_s = failback_delay_s
        self.rng = random.Random(seed)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.consumers = consumers
        self.servers = [
            Server(1, "live-1", True, ["fo-1", "fo-2"]),
            Server(2, "live-2", True, ["fo-2", "fo-1"]),
            Server(3, "fo-1", False, []),
            Server(4, "fo-2", False, []),
        ]
        self.by_id = {s.id: s for s in self.servers}
        self.namespaces = []
        self.aux = []  # switch and witness processes
        self.switch_ctl = {}
        os.makedirs(os.path.join(self.dir, "agent", "state"), exist_ok=True)
        os.makedirs(os.path.join(self.dir, "api"), exist_ok=True)
        self.markers = open(os.path.join(self.dir, "markers.jsonl"), "a", buffering=1)

    # -- set-up and tear-down --------------------------------------------------------------
    def __enter__(self):
        try:
            self.setup()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc):
        self.teardown()
        return False

    def _ns(self, name):
        ns = f"{self.prefix}-{name}"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def setup(self):
        wns = self._ns("witness")
        self.witness_ns = wns
        sh("ip", "-n", wns, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", wns, "addr", "add", "10.201.3.1/24", "dev", "br0")
        sh("ip", "-n", wns, "link", "set", "br0", "up")
        for s in self.servers:
            s.ns = self._ns(s.id)
            peer = f"wp{s.idx}"
            sh("ip", "link", "add", "wt0", "netns", s.ns, "type", "veth",
               "peer", "name", peer, "netns", wns)
            sh("ip", "-n", wns, "link", "set", peer, "master", "br0")
            sh("ip", "-n", wns, "link", "set", peer, "up")
            sh("ip", "-n", s.ns, "addr", "add", f"{s.witness_ip}/24", "dev", "wt0")
            sh("ip", "-n", s.ns, "link", "set", "wt0", "up")
        # The two heartbeat networks: one switch process each, independent of the other.
        for net in (1, 2):
            ctl = os.path.join(self.dir, f"switch{net}.sock")
            ports = []
            for s in self.servers:
                ports += ["--port", f"{net}:{s.id}:{s.ns}:hb{net - 1}"]
            log = open(os.path.join(self.dir, f"switch{net}.log"), "w")
            p = subprocess.Popen(
                [sys.executable, os.path.join(HERE, "tapswitch.py"), "--control", ctl,
                 "--seed", str(self.rng.randrange(1 << 30))] + ports,
                stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
            p.what = f"switch {net} (heartbeat path {net - 1}; log switch{net}.log)"
            self.aux.append(p)
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"switch {net} did not start; see switch{net}.log")
            self.switch_ctl[net] = ctl
            for s in self.servers:
                dev = f"hb{net - 1}"
                sh("ip", "-n", s.ns, "addr", "add", f"{s.hb[net - 1]}/24", "dev", dev)
                sh("ip", "-n", s.ns, "link", "set", dev, "up")
        wlog = open(os.path.join(self.dir, "witness.log"), "w")
        host, port = WITNESS.split(":")
        witness = subprocess.Popen(
            ["ip", "netns", "exec", wns, sys.executable, "-c",
             "import socket\n"
             "s = socket.create_server((%r, %s), backlog=64)\n"
             "while True:\n"
             "    c, _ = s.accept()\n"
             "    c.close()\n" % (host, port)],
            stdout=wlog, stderr=wlog, start_new_session=True)
        witness.what = "the witness listener (log witness.log)"
        self.aux.append(witness)
        # How long an fsync takes on this disk (the daemons fsync claims and events): stalls
        # over 20 ms are logged, so a slow takeover can be told from a slow disk.
        self.aux.append(subprocess.Popen(
            [sys.executable, "-c",
             "import os, sys, time\n"
             "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)\n"
             "log = open(sys.argv[2], 'a', buffering=1)\n"
             "while True:\n"
             "    os.pwrite(fd, b'x' * 4096, 0)\n"
             "    t = time.perf_counter()\n"
             "    os.fsync(fd)\n"
             "    d = time.perf_counter() - t\n"
             "    if d > 0.02:\n"
             "        log.write(f'{time.time_ns() - int(d * 1e9)} {d * 1000:.0f}\\n')\n"
             "    time.sleep(0.05)\n",
             os.path.join(self.dir, "fsync-probe.dat"), os.path.join(self.dir, "fsync.log")],
            start_new_session=True))
        self.aux[-1].what = "the fsync probe"
        self.write_site()
        if self.consumers:
            self.start_consumers()

    def start_consumers(self):
        """Mosquitto and consumers.py (webhook receiver, MQTT subscribers) in the witness
        namespace: every node reaches them over its `wt0`."""
        host, port = BROKER.split(":")
        conf = os.path.join(self.dir, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} {host}\nallow_anonymous true\npersistence false\n"
                    "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
                    "max_queued_messages 100000\n")
        mlog = open(os.path.join(self.dir, "mosquitto.log"), "w")
        broker = subprocess.Popen(["ip", "netns", "exec", self.witness_ns, MOSQUITTO, "-c", conf],
                                  stdout=mlog, stderr=mlog, start_new_session=True)
        broker.what = "the MQTT broker (log mosquitto.log)"
        self.aux.append(broker)
        clog = open(os.path.join(self.dir, "consumers.log"), "w")
        cons = subprocess.Popen(
            ["ip", "netns", "exec", self.witness_ns, sys.executable,
             os.path.join(HERE, "consumers.py"), "--dir", self.dir,
             "--secret-file", os.path.join(self.dir, "connectors", "psim.secret"),
             "--prefix", TOPIC_PREFIX, "--mqtt", BROKER],
            stdout=subprocess.PIPE, stderr=clog, text=True, start_new_session=True,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        cons.what = "the connector consumers (log consumers.log)"
        self.aux.append(cons)
        line = cons.stdout.readline().strip()
        if not line.startswith("ready"):
            raise RuntimeError(f"the consumers did not start ({line!r}); see consumers.log "
                               f"and mosquitto.log")
        self.log(f"  consumers: {line}")

    def write_site(self):
        with open(os.path.join(self.dir, "site.key"), "w") as f:
            f.write("fault-lab-site-key-0123456789abcdef\n")
        with open(os.path.join(self.dir, "api.token"), "w") as f:
            f.write("fault-lab-token\n")
        out = [
            "[site]",
            'name = "faults"',
            'secret = "file:site.key"',
            f'heartbeat_interval = "{self.heartbeat_ms}ms"',
            f'failure_timeout = "{self.failure_timeout_ms}ms"',
            'failback = "auto"',
            f'failback_delay = "{self.failback_delay_s}s"',
            f'witnesses = ["{WITNESS}"]',
        ]
        if self.consumers:
            out.append('connectors = "connectors"')
            self.write_connectors()
        out += [
            "",
            "[api]",
            'token = "file:api.token"',
            "",
        ]
        for s in self.servers:
            out += [
                "[[servers]]",
                f'id = "{s.id}"',
                f'address = "{s.hb[0]}"',
                f'heartbeat = ["{s.hb[0]}:{HB_PORT}", "{s.hb[1]}:{HB_PORT}"]',
                f'api = "127.0.0.1:{s.api_port}"',
            ]
            if s.live:
                out.append("buddies = [%s]" % ", ".join(f'"{b}"' for b in s.buddies))
            else:
                out += ['role = "failover"', 'mode = "spread-servers"', "max_servers = 2"]
            out.append("")
        for s in self.servers:
            if not s.live:
                continue
            out += [
                "[[resources]]",
                f'server = "{s.id}"',
                f'id = "{{server}}-cam-{{01..{self.cameras:02d}}}"',
                'kind = "camera"',
                'agent = "exec"',
                f'command = "{os.path.join(HERE, "agent.sh")}"',
                'timeout = "10s"',
                'monitor_interval = "2s"',
                "retries = 1",
                "",
            ]
        with open(os.path.join(self.dir, "site.toml"), "w") as f:
            f.write("\n".join(out))

    def write_connectors(self):
        """One webhook and one MQTT connector file, read by every node (the site file and its
        `connectors` folder are the same on every server)."""
        d = os.path.join(self.dir, "connectors")
        os.makedirs(d, exist_ok=True)
        key = base64.b64encode(b"fault-lab-webhook-key-0123456789").decode()
        with open(os.path.join(d, "psim.secret"), "w") as f:
            f.write(f"whsec_{key}\n")
        # Retries fast and for about a minute (an isolated node's `wt0` is down for seconds):
        # a delivery that used the schedule up would be a dead letter, missing until a replay.
        retry = ", ".join(f'"{x}"' for x in ["100ms", "250ms", "500ms"] + ["1s"] * 60)
        with open(os.path.join(d, "psim.toml"), "w") as f:
            f.write("# The lab's PSIM: every event, signed (tests/faults/consumers.py).\n"
                    'type = "webhook"\n'
                    f'url = "{WEBHOOK_URL}"\n'
                    'secret = "file:psim.secret"\n'
                    'timeout = "2s"\n'
                    f"retry = [{retry}]\n")
        with open(os.path.join(d, "bus.toml"), "w") as f:
            f.write("# The lab's MQTT broker (Mosquitto in the witness namespace).\n"
                    'type = "mqtt"\n'
                    f'url = "mqtt://{BROKER}"\n'
                    f'topic_prefix = "{TOPIC_PREFIX}"\n')

    def fresh_subscriber(self, timeout=1.5):
        """What a subscriber that connects now is handed: the retained `resources/{id}` and
        `servers/{id}` messages."""
        conn = _NsHTTP(self.witness_ns, *CONSUMERS_CTL, timeout + 5)
        try:
            want = len(self.resource_ids()) + len(self.servers)
            conn.request("GET", f"/fresh?want={want}&timeout={timeout}",
                         headers={"Connection": "close"})
            r = conn.getresponse()
            return json.loads(r.read()) if r.status == 200 else None
        except (OSError, ValueError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def _pids_in_our_namespaces(self, namespaces=None):
        """Every process living in one of our namespaces (daemons, leftover agents), or in
        the given ones."""
        inodes = set()
        for ns in self.namespaces if namespaces is None else namespaces:
            try:
                inodes.add(os.stat(f"/var/run/netns/{ns}").st_ino)
            except OSError:
                pass
        pids = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                if os.stat(f"/proc/{d}/ns/net").st_ino in inodes and int(d) != os.getpid():
                    pids.append(int(d))
            except OSError:
                pass
        return pids

    def teardown(self):
        for s in self.servers:
            if s.proc is not None:
                try:
                    s.proc.send_signal(signal.SIGCONT)
                    s.proc.kill()
                    s.proc.wait(timeout=5)
                except Exception:
                    pass
                s.proc = None
        for p in self.aux:
            try:
                p.kill()
                p.wait(timeout=5)
            except Exception:
                pass
        self.aux = []
        for pid in self._pids_in_our_namespaces():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces = []

    # -- the timeline ----------------------------------------------------------------------
    def mark(self, kind, **data):
        t = now_ns()
        rec = {"t": t, "kind": kind, **data}
        self.markers.write(json.dumps(rec) + "\n")
        return t

    # -- nodes -----------------------------------------------------------------------------
    def data_dir(self, sid):
        return os.path.join(self.dir, "data", sid)

    def start(self, sid, empty=False, env=None):
        s = self.by_id[sid]
        assert s.proc is None, f"{sid} is running"
        if empty:
            shutil.rmtree(self.data_dir(sid), ignore_errors=True)
        s.boots += 1
        log = open(os.path.join(self.dir, f"{sid}.{s.boots}.log"), "w")
        e = dict(os.environ)
        e.update({"BUDDYGATE_LOG": "info,buddygate=debug",
                  "FAULTS_AGENT_DIR": os.path.join(self.dir, "agent")})
        e.update(env or {})
        s.proc = subprocess.Popen(
            ["ip", "netns", "exec", s.ns, self.binary, "run", "--config",
             os.path.join(self.dir, "site.toml"), "--node", sid,
             "--data-dir", self.data_dir(sid)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=e, start_new_session=True)
        s.paused = False
        # `ip netns exec` execs the daemon in place: the pid is the daemon's.
        self.mark("boot", node=sid, pid=s.proc.pid, empty=empty)
        return s.proc.pid

    def start_all(self, env=None):
        for s in self.servers:
            self.start(s.id, env=(env or {}).get(s.id))

    def set_start_delay(self, sid, ms, op="start"):
        """Every start (or stop, with op="stop") by `sid`'s agent takes `ms` from now on (0:
        as fast as it can)."""
        path = os.path.join(self.dir, "agent", f"{op}-delay-ms.{sid}")
        if ms:
            with open(path + ".tmp", "w") as f:
                f.write(f"{int(ms)}\n")
            os.replace(path + ".tmp", path)
        elif os.path.exists(path):
            os.unlink(path)

    def running(self, sid):
        s = self.by_id[sid]
        return s.proc is not None and s.proc.poll() is None

    def kill9(self, sid):
        """The server dies (kill -9, power lost): the daemon and every process in its
        namespace (agents in the middle of a start or stop), and its VMS with them: what it
        served is no longer served."""
        s = self.by_id[sid]
        s.proc.kill()
        for pid in self._pids_in_our_namespaces([s.ns]):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        t = self.mark("crash", node=sid, pid=s.proc.pid)
        s.proc.wait()
        s.proc = None
        s.paused = False
        shutil.rmtree(os.path.join(self.dir, "agent", "state", sid), ignore_errors=True)
        return t

    def kill_daemon(self, sid):
        """kill -9 of the buddygate daemon only: the VMS keeps recording (its state files stay,
        agents already running finish), as after a daemon crash or an OOM kill. The checker
        keeps counting what the node served, and the lines of that boot's agents."""
        s = self.by_id[sid]
        s.proc.kill()
        t = self.mark("kill-daemon", node=sid, pid=s.proc.pid)
        s.proc.wait()
        s.proc = None
        s.paused = False
        return t

    def pause(self, sid):
        s = self.by_id[sid]
        s.proc.send_signal(signal.SIGSTOP)
        s.paused = True
        return self.mark("pause", node=sid)

    def resume(self, sid):
        s = self.by_id[sid]
        s.proc.send_signal(signal.SIGCONT)
        s.paused = False
        return self.mark("resume", node=sid)

    def check_alive(self):
        """Daemons that exited on their own (a crash of the daemon under test), and harness
        processes (switches, witness) that died: either makes the run meaningless."""
        dead = []
        for s in self.servers:
            if s.proc is not None and s.proc.poll() is not None:
                dead.append(f"{s.id} exited with {s.proc.returncode}")
        for p in self.aux:
            if p.poll() is not None:
                dead.append(f"harness: {p.what} exited with {p.returncode}")
        return dead

    def fsync_stalls(self, a, b):
        """The longest fsync (ms) the probe saw on this disk in [a, b], or 0."""
        worst = 0.0
        try:
            with open(os.path.join(self.dir, "fsync.log")) as f:
                for ln in f:
                    t, d = ln.split()
                    if a <= int(t) <= b:
                        worst = max(worst, float(d))
        except (OSError, ValueError):
            pass
        return worst

    # -- network faults --------------------------------------------------------------------
    def link(self, sid, dev, up):
        s = self.by_id[sid]
        sh("ip", "-n", s.ns, "link", "set", dev, "up" if up else "down")
        return self.mark("link", node=sid, dev=dev, up=up)

    def _switch(self, net, cmd):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.settimeout(5)
        c.connect(self.switch_ctl[net])
        c.sendall((json.dumps(cmd) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = c.recv(65536)
            if not chunk:
                break
            buf += chunk
        c.close()
        reply = json.loads(buf)
        if not reply.get("ok"):
            raise RuntimeError(f"switch {net}: {cmd}: {reply}")
        return reply

    def impair(self, net, host, loss=0.0, delay_ms=0, jitter_ms=0, reorder=0.0, duplicate=0.0):
        """Impair `host`'s port on heartbeat network `net` (1 or 2; None = both; host None =
        every host), both directions."""
        for n in ([net] if net else [1, 2]):
            self._switch(n, {"cmd": "impair", "host": host, "loss": loss, "delay_ms": delay_ms,
                             "jitter_ms": jitter_ms, "reorder": reorder,
                             "duplicate": duplicate})
        return self.mark("impair", net=net, host=host, loss=loss, delay_ms=delay_ms,
                         jitter_ms=jitter_ms, reorder=reorder, duplicate=duplicate)

    def partition(self, groups, net=None):
        """Drop every frame between hosts of different groups on both heartbeat networks."""
        for n in (1, 2):
            self._switch(n, {"cmd": "block", "groups": groups, "net": net})
        return self.mark("partition", groups=groups)

    def clear_net(self):
        for n in (1, 2):
            self._switch(n, {"cmd": "clear"})
        return self.mark("clear")

    def switch_stats(self, reset=False):
        out = {n: self._switch(n, {"cmd": "stats"}) for n in (1, 2)}
        if reset:
            for n in (1, 2):
                self._switch(n, {"cmd": "reset-stats"})
        return out

    def measured_loss(self, stats, a, b):
        """Fraction of unicast IPv4 frames lost between hosts a and b (both directions), per
        heartbeat network, from switch_stats()."""
        out = {}
        for n, st in stats.items():
            offered = delivered = 0
            for k in (f"{a}>{b}", f"{b}>{a}"):
                o, d = st["pairs"].get(k, [0, 0])
                offered, delivered = offered + o, delivered + d
            out[n] = None if not offered else 1 - delivered / offered
        return out

    # -- the APIs --------------------------------------------------------------------------
    def api(self, sid, path, timeout=1.0):
        s = self.by_id[sid]
        if s.proc is None or s.paused:
            return None
        conn = _NsHTTP(s.ns, "127.0.0.1", s.api_port, timeout)
        try:
            # Reads need the site's token.
            headers = {"Connection": "close", "Authorization": "Bearer fault-lab-token"}
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
            body = r.read()
            if r.status != 200:
                return None
            return json.loads(body) if path.startswith("/api/") else body.decode()
        except (OSError, ValueError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def resources(self, sid):
        v = self.api(sid, "/api/v1/resources")
        return None if v is None else {r["id"]: r for r in v["resources"]}

    def events(self, sid):
        out, after = [], 0
        while True:
            v = self.api(sid, f"/api/v1/events?after={after}&limit=1000", timeout=3.0)
            if v is None:
                return None if not out else out
            page = v["events"]
            out += page
            if len(page) < 1000:
                return out
            after = page[-1]["seq"]

    def up_nodes(self):
        return [s.id for s in self.servers if s.proc is not None and not s.paused]

    def snapshot_apis(self, tag):
        """Stores every running node's /resources and event log for the checker."""
        snap = {"t": now_ns(), "tag": tag, "nodes": {}}
        for sid in self.up_nodes():
            snap["nodes"][sid] = {"resources": self.resources(sid), "events": self.events(sid)}
        path = os.path.join(self.dir, "api", f"{tag}.json")
        with open(path, "w") as f:
            json.dump(snap, f)
        return path

    def home_of(self, rid):
        return rid.rsplit("-cam-", 1)[0]

    def concerned(self, rid):
        """The nodes that heartbeat about `rid`: its home server and the home's buddies. (Two
        live servers do not heartbeat each other, so live-2's API does not know live-1's
        cameras.)"""
        home = self.by_id[self.home_of(rid)]
        return [home.id] + home.buddies

    def resource_ids(self):
        return [f"{s.id}-cam-{i:02d}" for s in self.servers if s.live
                for i in range(1, self.cameras + 1)]

    def converged(self, expect=None):
        """True when every running node concerned with a resource reports it active on the same
        owner at the same epoch (on `expect[rid]`, or on its home server, when given)."""
        views = {}
        for sid in self.up_nodes():
            v = self.resources(sid)
            if v is None:
                return False
            views[sid] = v
        if not views:
            return False
        for rid in self.resource_ids():
            seen = {(v[rid]["owner"], v[rid]["epoch"], v[rid]["state"])
                    for sid, v in views.items() if sid in self.concerned(rid)}
            if not seen:
                return False
            if len(seen) != 1:
                return False
            owner, _, state = seen.pop()
            if state != "active":
                return False
            want = (expect or {}).get(rid, self.home_of(rid)) if expect != "any" else owner
            if owner != want:
                return False
        return True

    def wait_until(self, what, cond, timeout, every=0.05):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            time.sleep(every)
        self.log(f"  timed out after {timeout}s waiting for: {what}")
        return False

    def paths_settled(self):
        """Every running node sees every path to every running peer it heartbeats with up (a
        path comes up only after two good heartbeats, so its ARP entries are resolved too)."""
        running = set(self.up_nodes())
        for sid in running:
            v = self.api(sid, "/api/v1/site")
            if v is None:
                return False
            for srv in v["servers"]:
                if srv["id"] in running and srv.get("known") and srv["paths"]:
                    if any(p["state"] != "up" for p in srv["paths"]):
                        return False
        return True

    def wait_home(self, timeout=15):
        return self.wait_until("every resource active at home, every API agreeing",
                               lambda: self.converged(), timeout)

    def agent_lines(self, sid):
        path = os.path.join(self.dir, "agent", f"{sid}.agent.log")
        try:
            with open(path) as f:
                return [ln.rstrip("\n").split("|") for ln in f if ln.count("|") == 5]
        except FileNotFoundError:
            return []

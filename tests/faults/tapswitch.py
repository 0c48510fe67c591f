#!/usr/bin/env python3
"""A userspace Ethernet switch with netem-style impairments, for the fault harness.

Why: the kernels this harness runs on (the CI VMs included) may lack `sch_netem` (no loss,
delay, jitter, reordering or duplication from `tc`). This switch does the same job in userspace
with only the standard library: every heartbeat network is one switch process, every host joins
it through a TAP device created directly inside the host's network namespace. Frames are real
Ethernet frames from the host kernels (ARP, IPv4, UDP heartbeats), forwarded by MAC learning;
each one can be lost, delayed, jittered, reordered or duplicated per host port, and traffic
between chosen hosts can be blocked (a partition). Link faults stay real: `ip link set hb0 down`
inside a namespace takes the TAP down in that host's kernel.

    tapswitch.py --control SOCK --port NET:HOST:NETNS:IFNAME [--port ...]

The control socket (UNIX stream, one JSON object per line, one JSON reply per line):
    {"cmd":"impair","net":1,"host":"live-1","loss":0.3,"delay_ms":0,"jitter_ms":100,
     "reorder":0.1,"duplicate":0.02}        net or host null = every net / every host
    {"cmd":"block","groups":[["live-1","fo-2"],["live-2","fo-1"]],"net":null}
                                            drop IP frames between hosts of different groups
                                            (ARP passes, as with iptables partitions)
    {"cmd":"clear"}                         no impairment, no block
    {"cmd":"stats"}                         counters
An impairment belongs to a host's port and applies to frames in both directions through it, so
a frame between two impaired ports meets both (losses compound, delays add).
"""

import argparse
import ctypes
import fcntl
import heapq
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def open_tap_in(netns, ifname):
    """A TAP device named `ifname`, created inside the network namespace `netns`."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
    try:
        setns(target)
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
            ifr = struct.pack("16sH22x", ifname.encode(), IFF_TAP | IFF_NO_PI)
            fcntl.ioctl(fd, TUNSETIFF, ifr)
        finally:
            setns(own)
    finally:
        os.close(own)
        os.close(target)
    return fd


class Impairment:
    __slots__ = ("loss", "delay", "jitter", "reorder", "duplicate")

    def __init__(self, loss=0.0, delay_ms=0.0, jitter_ms=0.0, reorder=0.0, duplicate=0.0):
        self.loss = float(loss)
        self.delay = float(delay_ms) / 1000.0
        self.jitter = float(jitter_ms) / 1000.0
        self.reorder = float(reorder)
        self.duplicate = float(duplicate)

    def none(self):
        return not (self.loss or self.delay or self.jitter or self.reorder or self.duplicate)


class Port:
    def __init__(self, net, host, netns, ifname):
        self.net, self.host, self.netns, self.ifname = net, host, netns, ifname
        self.fd = open_tap_in(netns, ifname)
        self.imp = Impairment()


class Switch:
    def __init__(self, ports, control_path, seed=None):
        self.ports = ports
        self.by_fd = {p.fd: p for p in ports}
        self.macs = {}  # (net, mac) -> port
        self.groups = None  # host -> group index
        self.block_net = None
        self.queue = []  # (due, n, port, frame)
        self.n = 0
        self.rng = random.Random(seed)
        self.stats = {"in": 0, "out": 0, "lost": 0, "blocked": 0, "duplicated": 0,
                      "write_errors": 0}
        # Unicast IPv4 frames per "src>dst" host pair: [offered, delivered at least once].
        self.pairs = {}
        if os.path.exists(control_path):
            os.unlink(control_path)
        self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ctl.bind(control_path)
        self.ctl.listen(8)
        self.clients = {}  # fd -> (socket, buffer)

    # -- forwarding ------------------------------------------------------------------------
    def blocked(self, net, a, b):
        if self.groups is None or (self.block_net is not None and self.block_net != net):
            return False
        ga, gb = self.groups.get(a), self.groups.get(b)
        return ga is not None and gb is not None and ga != gb

    def schedule(self, src, dst, frame, now):
        pair = None
        if not frame[0] & 1 and frame[12:14] == b"\x08\x00":
            pair = self.pairs.setdefault(f"{src.host}>{dst.host}", [0, 0])
            pair[0] += 1
        # A partition drops IP, not ARP (as Jepsen's iptables partitions do): a heal is a heal
        # at once, not after the hosts' ARP retransmission timers.
        if frame[12:14] != b"\x08\x06" and self.blocked(src.net, src.host, dst.host):
            self.stats["blocked"] += 1
            return
        a, b = src.imp, dst.imp
        if a.none() and b.none():
            self.send(dst, frame, pair)
            return
        copies = 1
        for imp in (a, b):
            if imp.duplicate and self.rng.random() < imp.duplicate:
                copies += 1
        if copies > 1:
            self.stats["duplicated"] += copies - 1
        for _ in range(copies):
            if any(imp.loss and self.rng.random() < imp.loss for imp in (a, b)):
                self.stats["lost"] += 1
                continue
            # A frame counts as delivered once, however many copies arrive.
            counted, pair = pair, None
            delay = 0.0
            for imp in (a, b):
                if imp.reorder and self.rng.random() < imp.reorder:
                    continue  # netem's reorder: this one goes at once, overtaking the others
                d = imp.delay + (self.rng.uniform(-imp.jitter, imp.jitter) if imp.jitter else 0)
                delay += max(0.0, d)
            if delay <= 0:
                self.send(dst, frame, counted)
            else:
                self.n += 1
                heapq.heappush(self.queue, (now + delay, self.n, dst, frame, counted))

    def send(self, dst, frame, pair=None):
        try:
            os.write(dst.fd, frame)
            self.stats["out"] += 1
            if pair is not None:
                pair[1] += 1
        except OSError:
            # The host's interface is down (EIO) or its queue is full: the frame is lost, as
            # on a cable.
            self.stats["write_errors"] += 1

    def on_frame(self, src, frame, now):
        self.stats["in"] += 1
        if len(frame) < 14:
            return
        dst_mac, src_mac = frame[0:6], frame[6:12]
        self.macs[(src.net, src_mac)] = src
        if dst_mac[0] & 1:  # broadcast / multicast
            targets = [p for p in self.ports if p.net == src.net and p is not src]
        else:
            p = self.macs.get((src.net, dst_mac))
            targets = [p] if p is not None else [
                q for q in self.ports if q.net == src.net and q is not src]
        for dst in targets:
            if dst is not src:
                self.schedule(src, dst, frame, now)

    # -- control ---------------------------------------------------------------------------
    def command(self, c):
        cmd = c.get("cmd")
        if cmd == "impair":
            imp_args = {k: c.get(k, 0) for k in ("loss", "delay_ms", "jitter_ms", "reorder",
                                                  "duplicate")}
            hit = 0
            for p in self.ports:
                if c.get("net") not in (None, p.net) or c.get("host") not in (None, p.host):
                    continue
                p.imp = Impairment(**imp_args)
                hit += 1
            if not hit:
                return {"ok": False, "error": "no such port"}
            return {"ok": True, "ports": hit}
        if cmd == "block":
            self.groups = {h: i for i, g in enumerate(c["groups"]) for h in g}
            self.block_net = c.get("net")
            return {"ok": True}
        if cmd == "clear":
            for p in self.ports:
                p.imp = Impairment()
            self.groups = None
            self.block_net = None
            return {"ok": True}
        if cmd == "reset-stats":
            self.pairs = {}
            for k in self.stats:
                self.stats[k] = 0
            return {"ok": True}
        if cmd == "stats":
            return {"ok": True, "stats": self.stats, "pairs": self.pairs,
                    "queued": len(self.queue)}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def on_client(self, fd):
        sock, buf = self.clients[fd]
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            del self.clients[fd]
            sock.close()
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                reply = self.command(json.loads(line))
            except Exception as e:  # a bad command must not take the network down
                reply = {"ok": False, "error": str(e)}
            sock.sendall((json.dumps(reply) + "\n").encode())
        self.clients[fd] = (sock, buf)

    def run(self):
        print("ready", flush=True)
        while True:
            now = time.monotonic()
            while self.queue and self.queue[0][0] <= now:
                _, _, dst, frame, pair = heapq.heappop(self.queue)
                self.send(dst, frame, pair)
            timeout = max(0.0, self.queue[0][0] - now) if self.queue else 1.0
            fds = list(self.by_fd) + [self.ctl.fileno()] + list(self.clients)
            try:
                ready, _, _ = select.select(fds, [], [], timeout)
            except InterruptedError:
                continue
            now = time.monotonic()
            for fd in ready:
                if fd == self.ctl.fileno():
                    s, _ = self.ctl.accept()
                    self.clients[s.fileno()] = (s, b"")
                elif fd in self.clients:
                    self.on_client(fd)
                else:
                    port = self.by_fd[fd]
                    for _ in range(64):  # drain, bounded
                        try:
                            frame = os.read(fd, 65536)
                        except (BlockingIOError, OSError):
                            break
                        self.on_frame(port, frame, now)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--control", required=True, help="UNIX socket path for commands")
    ap.add_argument("--port", action="append", default=[], help="NET:HOST:NETNS:IFNAME")
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    ports = []
    for spec in a.port:
        net, host, netns, ifname = spec.split(":")
        ports.append(Port(int(net), host, netns, ifname))
    Switch(ports, a.control, a.seed).run()


def _on_signal(signum, _frame):
    # Say why the network went away: the harness reports this log when a switch dies.
    print(f"tapswitch: stopped by signal {signal.Signals(signum).name}", file=sys.stderr,
          flush=True)
    sys.exit(128 + signum)


if __name__ == "__main__":
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    main()

#!/usr/bin/env python3
"""The video a failover lost, computed from the recordings themselves (stdlib and ffmpeg).

Recordings are laid out as the reference recorder writes them: ROOT/CAMERA/NODE/*.ts, MPEG-TS
segments named <session>-<number>.ts. Each node's sessions are decoded with ffmpeg to gray
pictures (`concat:` of the session's segments, every frame passed through), and each picture's
code (framecode.py) gives the frame's capture tick k (capture time k x 100 ms) and camera
number. Per camera, the union over all nodes of the ticks recorded is compared with every tick
of a window [FROM, TO]: the ticks missing from every recording are the video lost. A frame
whose code fails its CRC (concealed, half-decoded) is counted as bad, never as recorded.

    tests/cameras/analyze.py ROOT [--from UNIX_S] [--to UNIX_S] [--json]

Without --from/--to, a camera's window runs from the first to the last frame recorded on any
node. As a library: `analyze(root, start, end)` returns one `CameraResult` per camera.

Segments a node merged from a buddy after a failback (`m-SERVER-*.ts`, agents/rtsp-recorder
`merge`) count as the node `NODE+merged`: copies, so what was lost does not change, and
`NODE` with `NODE+merged` is what the node holds after its merges.
"""

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import framecode  # noqa: E402

TICK = 1.0 / framecode.FPS


class NodeFrames:
    """What one node recorded of one camera."""

    def __init__(self, node):
        self.node = node
        self.ticks = set()
        self.bad = 0
        self.wrong_camera = 0
        self.segments = 0


class CameraResult:
    """One camera: who recorded which frames, and what nobody recorded within the window."""

    def __init__(self, camera, nodes, start_tick, end_tick):
        self.camera = camera
        self.nodes = nodes
        recorded = set()
        for n in nodes.values():
            recorded |= n.ticks
        self.recorded = recorded
        if start_tick is None and recorded:
            start_tick = min(recorded)
        if end_tick is None and recorded:
            end_tick = max(recorded)
        self.start_tick, self.end_tick = start_tick, end_tick
        self.gaps = []
        if start_tick is not None and end_tick is not None:
            run = None
            for k in range(start_tick, end_tick + 1):
                if k in recorded:
                    if run is not None:
                        self.gaps.append((run, k - 1))
                        run = None
                elif run is None:
                    run = k
            if run is not None:
                self.gaps.append((run, end_tick))

    @property
    def lost_frames(self):
        return sum(b - a + 1 for a, b in self.gaps)

    @property
    def lost_seconds(self):
        return self.lost_frames * TICK

    def missing(self, nodes, start_tick=None, end_tick=None):
        """Ticks of [start_tick, end_tick] (default: the window) that none of `nodes` holds."""
        held = set()
        for n in nodes:
            if n in self.nodes:
                held |= self.nodes[n].ticks
        a = self.start_tick if start_tick is None else start_tick
        b = self.end_tick if end_tick is None else end_tick
        return [k for k in range(a, b + 1) if k not in held]

    def duplicated(self, nodes, start_tick=None, end_tick=None):
        """Ticks of [start_tick, end_tick] (default: the window) that two or more of `nodes`
        recorded: an overlap of recordings (harmless, but disk and bandwidth)."""
        seen = {}
        for n in nodes:
            for k in self.nodes[n].ticks if n in self.nodes else ():
                seen[k] = seen.get(k, 0) + 1
        a = self.start_tick if start_tick is None else start_tick
        b = self.end_tick if end_tick is None else end_tick
        return [k for k in range(a, b + 1) if seen.get(k, 0) > 1]

    @property
    def longest_gap(self):
        return max((b - a + 1 for a, b in self.gaps), default=0)

    def last_before(self, tick, node=None):
        """The last recorded tick before `tick` (on `node`, or any)."""
        ticks = self.nodes[node].ticks if node else self.recorded
        return max((k for k in ticks if k < tick), default=None)

    def first_after(self, tick, node=None):
        """The first recorded tick at or after `tick` (on `node`, or any)."""
        ticks = self.nodes[node].ticks if node else self.recorded
        return min((k for k in ticks if k >= tick), default=None)

    def as_dict(self):
        return {
            "camera": self.camera,
            "window": [self.start_tick, self.end_tick],
            "lost_frames": self.lost_frames,
            "lost_seconds": round(self.lost_seconds, 3),
            "gaps": [
                {"from": a / framecode.FPS, "to": (b + 1) / framecode.FPS, "frames": b - a + 1} for a, b in self.gaps
            ],
            "nodes": {
                n.node: {
                    "frames": len(n.ticks),
                    "bad": n.bad,
                    "wrong_camera": n.wrong_camera,
                    "segments": n.segments,
                    "first": round(min(n.ticks) / framecode.FPS, 1) if n.ticks else None,
                    "last": round(max(n.ticks) / framecode.FPS, 1) if n.ticks else None,
                }
                for n in self.nodes.values()
            },
        }


def camera_number(name):
    try:
        return int(name.rsplit("-", 1)[-1])
    except ValueError:
        return None


MERGED = "m-"


def sessions(folder, merged=False):
    """Segment paths of `folder` grouped by session, each in order: the node's own recording,
    or (`merged`) the copies it merged from buddies."""
    groups = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".ts") and "-" in name and name.startswith(MERGED) == merged:
            groups.setdefault(name.rsplit("-", 1)[0], []).append(os.path.join(folder, name))
    return [groups[k] for k in sorted(groups)]


def decode(paths, ffmpeg="ffmpeg"):
    """(tick, camera) or None for every picture of the concatenated segments `paths`."""
    cmd = [
        ffmpeg, "-nostdin", "-v", "quiet", "-i", "concat:" + "|".join(paths),
        "-map", "0:v:0", "-fps_mode", "passthrough",
        "-f", "rawvideo", "-pix_fmt", "gray", "-s", f"{framecode.WIDTH}x{framecode.HEIGHT}", "-",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = []
    while True:
        frame = proc.stdout.read(framecode.FRAME_BYTES)
        if len(frame) < framecode.FRAME_BYTES:
            break
        out.append(framecode.read(frame))
    proc.wait()
    return out


def read_node(camera, folder, node, merged=False):
    frames = NodeFrames(node)
    number = camera_number(camera)
    for paths in sessions(folder, merged):
        frames.segments += len(paths)
        for code in decode(paths):
            if code is None:
                frames.bad += 1
            elif number is not None and code[1] != number:
                frames.wrong_camera += 1
            else:
                frames.ticks.add(code[0])
    return frames


def analyze(root, start=None, end=None, cameras=None, workers=2):
    """One CameraResult per camera folder of `root` (or per name in `cameras`), over the window
    [start, end] in Unix seconds (inclusive: every tick whose capture time is in it)."""
    names = cameras or sorted(
        n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)) and not n.startswith(".")
    )
    jobs = []
    for camera in names:
        folder = os.path.join(root, camera)
        nodes = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        for node in nodes:
            path = os.path.join(folder, node)
            if os.path.isdir(path) and not node.startswith("."):
                jobs.append((camera, path, node, False))
                if sessions(path, merged=True):
                    jobs.append((camera, path, node + "+merged", True))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        read = list(pool.map(lambda j: read_node(*j), jobs))
    by_camera = {c: {} for c in names}
    for (camera, _, node, _), frames in zip(jobs, read):
        by_camera[camera][node] = frames
    start_tick = None if start is None else int(-(-start * framecode.FPS // 1))
    end_tick = None if end is None else int(end * framecode.FPS // 1)
    return [CameraResult(c, by_camera[c], start_tick, end_tick) for c in names]


def summary(values):
    """min / median / max of a list of numbers."""
    if not values:
        return None
    v = sorted(values)
    mid = len(v) // 2
    median = v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2
    return v[0], median, v[-1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root")
    ap.add_argument("--from", dest="start", type=float)
    ap.add_argument("--to", dest="end", type=float)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = analyze(args.root, args.start, args.end)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
        return 0
    print(f"{'camera':<10} {'lost':>8} {'frames':>7} {'gaps':>5}  recorded by")
    for r in results:
        nodes = ", ".join(
            f"{n.node} {len(n.ticks)}" + (f" ({n.bad} bad)" if n.bad else "")
            for n in r.nodes.values()
        )
        print(f"{r.camera:<10} {r.lost_seconds:>7.1f}s {r.lost_frames:>7} {len(r.gaps):>5}  {nodes}")
    s = summary([r.lost_seconds for r in results])
    if s:
        print(f"lost per camera: min {s[0]:.1f} s, median {s[1]:.2f} s, max {s[2]:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

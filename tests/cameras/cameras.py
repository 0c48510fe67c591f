#!/usr/bin/python3
"""RTSP test cameras whose every frame carries its capture time, machine-readable.

One GStreamer RTSP server (Debian's gstreamer1.0-rtsp, gir1.2-gst-rtsp-server-1.0, python3-gi;
run with Debian's /usr/bin/python3, which has `gi`) serves N cameras at
rtsp://HOST:PORT/cam-01 ... /cam-NN: H.264 (x264, zerolatency), 320x240, 10 fps, a keyframe
every second (1 s GOP). Each camera's encoder runs all the time, whoever watches, and every
viewer shares it, as on a real camera: a recorder that connects waits for the next keyframe
like it would on site.

Capture time: the cameras tick on one wall-clock grid. Frame `k` is made at the instant
k x 100 ms since the Unix epoch (k = 17.6 billion in 2025) and its picture carries `k`: 64 black
or white 16x16 blocks, aligned on H.264 macroblocks, spell 40 bits of k, 8 bits of the camera
number and a CRC-16 over both (see `framecode.py`). The analyzer decodes the recorded files back
to pictures and reads the code, so every recorded frame gives its exact capture time whatever
the recorder did to timestamps (copy, remux, segments, restarts), and a frame that did not
decode cleanly fails its CRC and does not count as recorded.

    /usr/bin/python3 tests/cameras/cameras.py --port 8554 --cameras 8 [--host 127.0.0.1]

It prints `ready rtsp://HOST:PORT/cam-01 ... N` on stdout once listening, then runs until
SIGTERM/SIGINT.
"""

import argparse
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gi  # noqa: E402

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

import framecode  # noqa: E402

ENCODER = (
    "appsrc name=raw is-live=true do-timestamp=true format=time block=false "
    f"caps=video/x-raw,format=GRAY8,width={framecode.WIDTH},height={framecode.HEIGHT},"
    f"framerate={framecode.FPS}/1 "
    "! queue max-size-buffers=4 leaky=downstream "
    "! videoconvert ! video/x-raw,format=I420 "
    f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={framecode.FPS} "
    "bitrate=400 threads=1 sliced-threads=false option-string=scenecut=0 "
    "! video/x-h264,profile=constrained-baseline,stream-format=byte-stream,alignment=au "
    "! appsink name=out emit-signals=true sync=false max-buffers=8 drop=true"
)

MEDIA = (
    "( appsrc name=src is-live=true do-timestamp=true format=time block=false "
    "caps=video/x-h264,stream-format=byte-stream,alignment=au "
    "! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
)


class Camera:
    """One camera: an encoder that runs all the time (its GOP does not care who watches), and
    the appsrc of its shared RTSP media while someone watches. A viewer that connects gets the
    stream from where the encoder is, and waits for the next keyframe, as on a real camera."""

    def __init__(self, number):
        self.number = number
        self.sources = set()
        # The encoder's parameter sets (SPS, PPS), as a real camera knows them: a new media
        # gets them with its first access unit, so that DESCRIBE is answered after one frame
        # rather than at the next keyframe.
        self.parameter_sets = b""
        self.fresh = set()
        self.encoder = Gst.parse_launch(ENCODER)
        self.raw = self.encoder.get_by_name("raw")
        self.encoder.get_by_name("out").connect("new-sample", self.encoded)
        self.encoder.set_state(Gst.State.PLAYING)
        # Cameras are not in step: camera n's keyframes fall on the ticks k with
        # k % 10 == 7n % 10 (its encoder starts on such a tick; the GOP is 10 frames).
        self.phase = (7 * number) % framecode.FPS
        self.started = False

    def configure(self, _factory, media):
        src = media.get_element().get_child_by_name("src")
        self.fresh.add(src)
        self.sources.add(src)
        media.connect("unprepared", lambda _m: self.sources.discard(src))

    def capture(self, tick):
        if not self.started and tick % framecode.FPS != self.phase:
            return
        self.started = True
        self.raw.emit("push-buffer", Gst.Buffer.new_wrapped(framecode.picture(tick, self.number)))

    def encoded(self, sink):
        sample = sink.emit("pull-sample")
        data = sample.get_buffer().extract_dup(0, sample.get_buffer().get_size())
        sets = parameter_sets(data)
        if sets:
            self.parameter_sets = sets
        for src in list(self.sources):
            first = src in self.fresh and not sets
            self.fresh.discard(src)
            src.emit("push-buffer", Gst.Buffer.new_wrapped(self.parameter_sets + data if first else data))
        return Gst.FlowReturn.OK


def parameter_sets(au):
    """The SPS and PPS NAL units (types 7 and 8) of an Annex B access unit, start codes kept."""
    out = b""
    starts = []
    i = au.find(b"\x00\x00\x01")
    while i >= 0:
        starts.append(i + 3)
        i = au.find(b"\x00\x00\x01", i + 3)
    for n, begin in enumerate(starts):
        end = starts[n + 1] - 3 if n + 1 < len(starts) else len(au)
        nal = au[begin:end].rstrip(b"\x00")
        if nal and nal[0] & 0x1F in (7, 8):
            out += b"\x00\x00\x00\x01" + nal
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8554)
    ap.add_argument("--cameras", type=int, default=8)
    args = ap.parse_args()

    try:
        # Cameras are hardware of their own: the lab's load must not delay their clock.
        os.nice(-10)
    except OSError:
        pass
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    # A thread per client: preparing a media waits for the camera's next keyframe (up to a
    # second), and must not hold up every other client meanwhile.
    server.get_thread_pool().set_max_threads(max(16, 4 * args.cameras))
    mounts = server.get_mount_points()
    cameras = []
    for n in range(1, args.cameras + 1):
        cam = Camera(n)
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(MEDIA)
        factory.set_shared(True)
        # A viewer that dies without TEARDOWN (a recorder killed with its server) must not
        # take the camera's shared media down under the viewers that are joining meanwhile:
        # its session just times out, as on a real camera.
        factory.set_stop_on_disconnect(False)
        factory.connect("media-configure", cam.configure)
        mounts.add_factory(f"/{framecode.camera_name(n)}", factory)
        cameras.append(cam)
    if server.attach(None) == 0:
        print(f"cannot listen on {args.host}:{args.port}", file=sys.stderr)
        return 69

    # Every camera keeps one viewer of its own (as a camera's own recording or analytics
    # would), so that its shared media is prepared once and never torn down and rebuilt
    # while recorders come and go: a viewer joining a media that was being torn down got
    # nothing, and its recorder waited for its socket timeout.
    viewers = []
    for n in range(1, args.cameras + 1):
        viewer = Gst.parse_launch(
            f"rtspsrc location=rtsp://{args.host}:{args.port}/{framecode.camera_name(n)} "
            "protocols=tcp latency=0 ! fakesink sync=false"
        )
        viewer.set_state(Gst.State.PLAYING)
        viewers.append(viewer)
    loop = GLib.MainLoop()
    state = {"next": time.time_ns() // framecode.TICK_NS + 1}

    def tick():
        now = time.time_ns()
        k = now // framecode.TICK_NS
        # A camera captures on its own clock whatever the load: a late wake-up makes the frames
        # of every instant it missed (up to a second of them), each carrying its own time.
        if k >= state["next"]:
            first = max(state["next"], k - framecode.FPS + 1)
            if first > state["next"]:
                print(f"late by {(k - state['next']) / framecode.FPS:.1f} s: frames dropped",
                      file=sys.stderr, flush=True)
            for missed in range(first, k + 1):
                for cam in cameras:
                    cam.capture(missed)
            state["next"] = k + 1
        delay_ms = max(1, (state["next"] * framecode.TICK_NS - time.time_ns()) // 1_000_000 + 1)
        GLib.timeout_add(int(delay_ms), tick)
        return False

    GLib.timeout_add(1, tick)
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    base = f"rtsp://{args.host}:{args.port}"
    print(f"ready {base}/{framecode.camera_name(1)} ... {args.cameras}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# tests/cameras/run.sh BIN [lab.py options]: the camera lab (docs/benchmarks.md, "Video lost").
#
#   tests/cameras/run.sh target/release/buddygate                 what CI runs: agent, kill9,
#                                                                 kill9-hot, sigterm, sigterm-hot,
#                                                                 8 cameras, asserted
#   tests/cameras/run.sh target/release/buddygate --cameras 32 --runs 3 --json lab.json
#
# Real RTSP cameras (GStreamer's RTSP server), the reference recorder agent agents/rtsp-recorder
# (ffmpeg), real `buddygate run` nodes on loopback; the video lost per camera is read back from
# the recordings (tests/cameras/lab.py, analyze.py, framecode.py). Without options it runs
# `--scenarios agent,kill9,kill9-hot,kill9-warm,sigterm,sigterm-hot --cameras 8 --runs 1 --assert`
# (each failover run also fails back, merges and reads the history). Needs Debian's packages:
#   apt-get install gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gi \
#     gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
#     gstreamer1.0-plugins-ugly ffmpeg
# Builds nothing: BIN (or $BUDDYGATE_BIN) is a buddygate binary. Exits non-zero when a check
# fails; a failed run's folder is kept and named in the output.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-${BUDDYGATE_BIN:-}}"
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    echo "usage: $0 path/to/buddygate [lab.py options]   (or set BUDDYGATE_BIN)" >&2
    exit 2
fi
shift || true
command -v ffmpeg >/dev/null || { echo "$0: ffmpeg is missing (apt-get install ffmpeg)" >&2; exit 2; }
/usr/bin/python3 - <<'PY' || { echo "$0: GStreamer's RTSP server for Python is missing (see the header)" >&2; exit 2; }
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer
Gst.init(None)
for element in ("x264enc", "rtph264pay", "h264parse", "appsrc", "appsink", "videoconvert"):
    assert Gst.ElementFactory.find(element), f"GStreamer element {element} is missing"
PY
if [ "$#" -eq 0 ]; then
    set -- --scenarios agent,kill9,kill9-hot,kill9-warm,sigterm,sigterm-hot --cameras 8 --runs 1 --assert
fi
exec /usr/bin/python3 "$here/lab.py" --bin "$bin" "$@"

#!/bin/sh
# vms-camera.sh: a buddygate exec agent for one VMS resource (a camera, I/O unit, LPR or
# analytics configuration, map or middleware). Use it from the site file:
#
#   [[resources]]
#   id = "cam-{001..050}"
#   kind = "camera"
#   server = "live-1"
#   agent = "exec"
#   command = "agents/vms-camera.sh"   # relative to the site file's folder
#   timeout = "10s"                    # per operation; the agent is killed after it
#   monitor_interval = "5s"            # "0s": never monitor
#   retries = 2                        # a failed start is tried this many more times
#
# The contract (Pacemaker's resource agents; buddygate DESIGN section 3.8):
#   vms-camera.sh start    serve the resource on this server; exit 0 once it is served
#   vms-camera.sh stop     stop serving it; exit 0, also when it was not served (idempotent)
#   vms-camera.sh monitor  exit 0 when it is served here, 7 when it is not, anything else on
#                          an error; two failed monitors in a row hand the resource to a buddy
# Every operation must be idempotent: a start of a served resource and a stop of a stopped one
# succeed. Operations on one resource never overlap; different resources run in parallel.
#
# Environment (set by buddygate for every operation):
#   BUDDYGATE_SITE       site name
#   BUDDYGATE_NODE       this server's id: the one that serves the resource after a start
#   BUDDYGATE_RESOURCE   resource id, e.g. cam-001
#   BUDDYGATE_KIND       camera | io | lpr | analytics | map | middleware
#   BUDDYGATE_SERVER     the resource's home (live) server
#   BUDDYGATE_EPOCH      fencing token of this ownership: every new owner gets a higher one;
#                        give it to the VMS so that it can refuse an older owner
#   BUDDYGATE_ADDRESS    this server's announced IP address
#   BUDDYGATE_OP         start | stop | monitor (the same as $1)
#   BUDDYGATE_PARAM_<NAME>  each of the resource's params (`params = { vms_id = 17 }` in the site
#                        file gives BUDDYGATE_PARAM_VMS_ID=17; file:/env: secrets already read)
# and, for this example only:
#   BUDDYGATE_STATE_DIR  where it keeps its state files (default /tmp)
#
# Output: stdin is empty; the last lines of stderr (or of stdout when stderr is empty) are kept
# in the error buddygate reports. A program that a start leaves running in the background must
# not keep stdout or stderr open: redirect them (`vms-helper >/dev/null 2>&1 &`).
#
# This example records the resource in a state file instead of talking to a real VMS. To use it
# with yours, replace the bodies of vms_attach, vms_detach and vms_serving with calls to the
# VMS's CLI or REST API, for example:
#   curl -fsS -X POST "http://127.0.0.1:8080/api/devices/$BUDDYGATE_RESOURCE/attach?epoch=$BUDDYGATE_EPOCH"

set -eu

op="${1:-}"
: "${BUDDYGATE_RESOURCE:?is not set: buddygate runs this script}"
: "${BUDDYGATE_NODE:?is not set: buddygate runs this script}"
state_dir="${BUDDYGATE_STATE_DIR:-/tmp}/buddygate-vms/$BUDDYGATE_NODE"
state="$state_dir/$BUDDYGATE_RESOURCE"

# Serve the resource here: the VMS starts recording the camera (or loads the configuration).
vms_attach() {
    mkdir -p "$state_dir"
    tmp="$state.tmp.$$"
    printf 'kind=%s\nhome=%s\nepoch=%s\naddress=%s\n' \
        "${BUDDYGATE_KIND:-}" "${BUDDYGATE_SERVER:-}" "${BUDDYGATE_EPOCH:-0}" \
        "${BUDDYGATE_ADDRESS:-}" >"$tmp"
    mv -f "$tmp" "$state" # atomic: a monitor never sees half a file
}

# Stop serving it here.
vms_detach() {
    rm -f "$state"
}

# Whether it is served here.
vms_serving() {
    [ -f "$state" ]
}

case "$op" in
start)
    vms_attach
    echo "$BUDDYGATE_RESOURCE served by $BUDDYGATE_NODE at epoch ${BUDDYGATE_EPOCH:-0}"
    ;;
stop)
    vms_detach
    ;;
monitor)
    if vms_serving; then
        exit 0
    fi
    echo "$BUDDYGATE_RESOURCE is not served by $BUDDYGATE_NODE" >&2
    exit 7
    ;;
*)
    echo "usage: $0 start|stop|monitor" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# tests/faults/run.sh BIN: every fault scenario on a real network, then a short soak.
#
#   tests/faults/run.sh target/release/buddygate        (as root: ip netns, TAP devices)
#
# Builds nothing: BIN (or $BUDDYGATE_BIN) is a release build of buddygate. Exits non-zero if a
# scenario or the soak fails. FAULTS_SOAK_MINUTES (default 2) sets the soak's length;
# FAULTS_ARGS passes more options to scenarios.py (e.g. "--long"). Everything it creates
# (namespaces, processes, run directories) is removed on exit; a failed run's directories are
# kept and named in the output.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-${BUDDYGATE_BIN:-}}"
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    echo "usage: $0 path/to/buddygate   (a release build; or set BUDDYGATE_BIN)" >&2
    exit 2
fi
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
if [ "$(id -u)" != 0 ]; then
    echo "$0: needs root (network namespaces, TAP devices)" >&2
    exit 2
fi
for tool in ip python3; do
    command -v "$tool" >/dev/null || { echo "$0: $tool is missing" >&2; exit 2; }
done
# The connector consumers (tests/faults/consumers.py): Mosquitto and paho-mqtt
# (tests/interop/requirements.txt; standardwebhooks is used when installed).
mosquitto="${MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}"
[ -x "$mosquitto" ] || { echo "$0: mosquitto is missing (apt-get install mosquitto)" >&2; exit 2; }
python3 -c 'import paho.mqtt.client' 2>/dev/null || {
    echo "$0: paho-mqtt is missing (pip install -r tests/interop/requirements.txt)" >&2; exit 2; }
export MOSQUITTO="$mosquitto"
if [ ! -c /dev/net/tun ]; then
    mkdir -p /dev/net && mknod /dev/net/tun c 10 200 && chmod 0666 /dev/net/tun
fi

prefix="bgf$$"
cleanup() {
    # Only what this run created: namespaces named with its prefix, and what runs in them.
    local ns pid
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^${prefix}" || true); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -CONT "$pid" 2>/dev/null || true
            kill -KILL "$pid" 2>/dev/null || true
        done
        ip netns del "$ns" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start=$(date +%s)
rc=0
echo "== fault scenarios (tests/faults/scenarios.py)"
# shellcheck disable=SC2086
python3 "$here/scenarios.py" --bin "$bin" --prefix "${prefix}a" ${FAULTS_ARGS:-} || rc=1
echo
echo "== soak, ${FAULTS_SOAK_MINUTES:-2} min (tests/faults/soak.py)"
python3 "$here/soak.py" --bin "$bin" --minutes "${FAULTS_SOAK_MINUTES:-2}" --prefix "${prefix}b" || rc=1
echo
echo "== faults on a real network: $([ $rc = 0 ] && echo ok || echo FAILED) in $(($(date +%s) - start)) s"
exit $rc

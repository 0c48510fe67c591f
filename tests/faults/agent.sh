#!/bin/sh
# agent.sh: the fault harness's exec agent (the contract of examples/agents/vms-camera.sh).
#
# It stands in for the VMS and is the ground truth of who serves what, when: every completed
# start and every stop appends one line to $FAULTS_AGENT_DIR/$BUDDYGATE_NODE.agent.log
#
#   <wall clock ns>|<op>|<node>|<resource>|<epoch>|<daemon pid>
#
# op is `begin` (a start began), `start` (it completed: from now on the node serves the
# resource) or `stop` (it no longer does). The daemon pid ($PPID: buddygate runs the agent
# itself) tells the checker which boot of the node wrote the line, so an agent still running
# after its daemon was killed with -9 is not counted.
#
# Environment, besides buddygate's BUDDYGATE_*:
#   FAULTS_AGENT_DIR        where the logs and state files go (required)
#   FAULTS_START_DELAY_MS   a start takes this long (default 0): "the middle of a takeover";
#                           $FAULTS_AGENT_DIR/start-delay-ms.$BUDDYGATE_NODE, when it exists,
#                           overrides it (the harness changes it while the daemon runs)
#   FAULTS_STOP_DELAY_MS    a stop takes this long before the recording ends (default 0): a
#                           slow VMS, a hand-over whose buddy stops late; overridden by
#                           $FAULTS_AGENT_DIR/stop-delay-ms.$BUDDYGATE_NODE, as for starts
set -eu

op="${1:-}"
dir="${FAULTS_AGENT_DIR:?is not set}"
node="${BUDDYGATE_NODE:?is not set: buddygate runs this script}"
res="${BUDDYGATE_RESOURCE:?is not set}"
epoch="${BUDDYGATE_EPOCH:-0}"
log="$dir/$node.agent.log"
state_dir="$dir/state/$node"
state="$state_dir/$res"

line() {
    # One write(2) of a short line to an O_APPEND file: lines from parallel agents never mix.
    printf '%s|%s|%s|%s|%s|%s\n' "$(date +%s%N)" "$1" "$node" "$res" "$epoch" "$PPID" >>"$log"
}

case "$op" in
start)
    line begin
    delay="${FAULTS_START_DELAY_MS:-0}"
    if [ -f "$dir/start-delay-ms.$node" ]; then
        delay="$(cat "$dir/start-delay-ms.$node")"
    fi
    if [ "$delay" -gt 0 ]; then
        sleep "$(printf '%d.%03d' $((delay / 1000)) $((delay % 1000)))"
    fi
    mkdir -p "$state_dir"
    echo "$epoch" >"$state.tmp.$$"
    mv -f "$state.tmp.$$" "$state"
    line start
    ;;
stop)
    delay="${FAULTS_STOP_DELAY_MS:-0}"
    if [ -f "$dir/stop-delay-ms.$node" ]; then
        delay="$(cat "$dir/stop-delay-ms.$node")"
    fi
    if [ "$delay" -gt 0 ]; then
        sleep "$(printf '%d.%03d' $((delay / 1000)) $((delay % 1000)))"
    fi
    rm -f "$state"
    line stop
    ;;
monitor)
    [ -f "$state" ] && exit 0
    echo "$res is not served by $node" >&2
    exit 7
    ;;
*)
    echo "usage: $0 start|stop|monitor" >&2
    exit 2
    ;;
esac

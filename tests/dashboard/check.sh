#!/usr/bin/env bash
# Renders the dashboard in a real browser: starts the dashboard fixture (one simulated
# failover node serving the API on 127.0.0.1, see examples/dashboard_fixture.rs), loads `/` in
# headless Chromium, saves a screenshot to docs/dashboard.png and checks the rendered DOM for
# servers, resources and event rows (i.e. the page's script ran and fetched data), after it
# asked for the read token and was given it.
#
#   tests/dashboard/check.sh [SCREENSHOT]   # exit 0: passed (or skipped: no chromium)
#
# SCREENSHOT defaults to docs/dashboard.png.
#
# Needs Debian's `chromium` (apt-get install chromium) and python3 (browse.py drives the
# browser over the DevTools protocol); skips with a message without chromium.
# Honours CARGO_TARGET_DIR.
set -euo pipefail

cd "$(dirname "$0")/../.."

if ! command -v chromium >/dev/null 2>&1; then
    echo "SKIP: chromium is not installed (apt-get install chromium); dashboard not checked"
    exit 0
fi
command -v python3 >/dev/null 2>&1 || { echo "FAIL: python3 is needed to drive chromium" >&2; exit 1; }

target="${CARGO_TARGET_DIR:-target}"
screenshot="${1:-docs/dashboard.png}"
work="$(mktemp -d)"
fixture_pid=""

cleanup() {
    if [[ -n "$fixture_pid" ]]; then
        kill "$fixture_pid" 2>/dev/null || true
        wait "$fixture_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

cargo build --quiet --example dashboard_fixture

"$target/debug/examples/dashboard_fixture" 0 300 >"$work/fixture.out" 2>"$work/fixture.err" &
fixture_pid=$!

addr=""
for _ in $(seq 100); do
    addr="$(sed -n 's/^listening on //p' "$work/fixture.out")"
    [[ -n "$addr" ]] && break
    kill -0 "$fixture_pid" 2>/dev/null || fail "the fixture exited: $(cat "$work/fixture.err")"
    sleep 0.1
done
[[ -n "$addr" ]] || fail "the fixture did not start listening"
echo "fixture serving $addr"

# Reads need a token: the page first asks for one (the API answered 401); the token is typed
# into its form, and must then be kept in sessionStorage only (no cookie, not in the URL).
token="fixture-read-token"
asks="!document.querySelector('#login').hidden && document.querySelector('#conn').textContent === 'token needed'"
answer="document.querySelector('#login-token').value = '$token';
    document.querySelector('#login-form').requestSubmit(); true"
# The page is ready when its script fetched the site and resources, the event stream is
# connected, an event arrived live (the fixture cuts a path a few seconds in), and a click on
# a camera showed where its footage is (its history as a timeline).
ready="document.querySelector('#conn.live')
    && document.querySelector('#login').hidden
    && sessionStorage.getItem('buddygate.token') === '$token'
    && localStorage.length === 0 && document.cookie === '' && !location.href.includes('$token')
    && document.querySelectorAll('.tile[data-id]').length > 50
    && document.querySelector('#events li[data-seq]')
    && document.querySelector('#events li.fresh')
    && (document.querySelectorAll('#timeline .seg').length >= 2
        || (document.querySelector('.tile[data-id=\"live-1-camera-001\"]').click(), false))"
mkdir -p "$work/profile" "$(dirname "$screenshot")"
python3 tests/dashboard/browse.py "$addr/" "$ready" "$(realpath -m "$screenshot")" "$work/dom.html" "$work/profile" 30 "$asks" "$answer" \
    || fail "the page did not get ready (chromium: $(grep -v dbus "$work/profile/chromium.log" 2>/dev/null | tail -3))"
[[ -s "$screenshot" ]] || fail "no screenshot at $screenshot"

dom="$work/dom.html"
check() {
    local what="$1" pattern="$2"
    grep -qE -- "$pattern" "$dom" || fail "the rendered page has no $what (pattern: $pattern)"
}
check "site name" 'id="site-name">hq<'
check "node name" 'id="node-name">fo-1<'
for server in live-1 live-2 live-3 fo-1; do
    check "server card for $server" "data-server=\"$server\""
done
check "down server" 'class="pill p-down">down<'
check "path address" '>127\.1\.0\.2:7401<'
for resource in live-1-camera-001 live-1-io live-2-analytics live-3-camera-016; do
    check "resource $resource" "data-id=\"$resource\""
    check "table row for $resource" "<td>$resource</td>"
done
check "resource taken over by fo-1" '<td>live-1-camera-001</td><td>camera</td><td>fo-1</td><td>127\.1\.0\.4</td><td class="num">298</td>'
check "event row" '<li class="k-[a-z]+[^"]*" data-seq="[0-9]+"'
check "failover.completed event" '<span class="type">failover.completed</span>'
check "event summary" 'live-1 → fo-1 \(127\.1\.0\.4\): 34 resources, epoch 298'
check "footage timeline" '<td>live-1</td><td>127\.1\.0\.1</td><td class="num">199</td>'
check "live stream connected" 'id="conn" class="conn live"'
check "event delivered live" '<li class="k-[a-z]+ fresh" data-seq="[0-9]+"'
if grep -q 'class="conn fail"' "$dom"; then
    fail "the page says the API is unreachable"
fi

echo "PASS: dashboard rendered with data; screenshot at $screenshot"

"""Loads a page in headless Chromium, waits until a condition holds in it, then saves a
screenshot and the rendered DOM. Used by check.sh.

    python3 browse.py URL CONDITION_JS SCREENSHOT DOM PROFILE_DIR [TIMEOUT_S [FIRST_JS ACTION_JS]]

With FIRST_JS and ACTION_JS, it first waits until FIRST_JS holds, then runs ACTION_JS (e.g.
types the token the page asks for), then waits for CONDITION_JS.

Why not `chromium --screenshot --virtual-time-budget=...`: virtual time does not advance while
a network fetch is pending, and the dashboard keeps an event stream open, so such a run never
ends. This drives the same browser over the DevTools protocol (`--remote-debugging-pipe`: we
write to its fd 3 and read from its fd 4, NUL-separated JSON) in real time instead.
Standard library only.
"""

import base64
import json
import os
import subprocess
import sys
import time

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,800",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
]


class Browser:
    def __init__(self, profile):
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()

        def wire():
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        self.proc = subprocess.Popen(
            ["chromium", *FLAGS, "--user-data-dir=" + profile, "about:blank"],
            preexec_fn=wire,
            pass_fds=(3, 4),
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(profile, "chromium.log"), "wb"),
            start_new_session=True,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.next_id = 0
        self.buf = b""

    def _read(self):
        while b"\0" not in self.buf:
            chunk = os.read(self.from_child, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buf += chunk
        msg, _, self.buf = self.buf.partition(b"\0")
        return json.loads(msg)

    def call(self, method, params=None, session=None):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.to_child, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def close(self):
        try:
            self.call("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        # Its helpers share the session we started it in; none may outlive it.
        try:
            os.killpg(self.proc.pid, 9)
        except ProcessLookupError:
            pass


def main():
    url, condition, screenshot, dom, profile = sys.argv[1:6]
    timeout = float(sys.argv[6]) if len(sys.argv) > 6 else 30.0
    browser = Browser(profile)
    try:
        targets = browser.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        session = browser.call(
            "Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}
        )["sessionId"]
        browser.call("Page.enable", session=session)
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        browser.call("Page.navigate", {"url": url}, session=session)

        def evaluate(expression):
            result = browser.call(
                "Runtime.evaluate",
                {"expression": expression, "returnByValue": True},
                session=session,
            )["result"]
            return result.get("value")

        deadline = time.monotonic() + timeout
        if len(sys.argv) > 8:
            first, action = sys.argv[7:9]
            while not evaluate(f"Boolean({first})"):
                if time.monotonic() > deadline:
                    print(f"first condition not met within {timeout:.0f} s: {first}", file=sys.stderr)
                    return 2
                time.sleep(0.2)
            evaluate(action)
        held = False
        while time.monotonic() < deadline:
            if evaluate(f"Boolean({condition})"):
                held = True
                break
            time.sleep(0.2)
        # Let the last render settle (the new-event highlight fades in 2.5 s).
        time.sleep(0.3)
        shot = browser.call(
            "Page.captureScreenshot", {"format": "png"}, session=session
        )
        with open(screenshot, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        with open(dom, "w", encoding="utf-8") as f:
            f.write(evaluate("document.documentElement.outerHTML") or "")
        if not held:
            print(f"condition not met within {timeout:.0f} s: {condition}", file=sys.stderr)
            return 2
        return 0
    finally:
        browser.close()


if __name__ == "__main__":
    sys.exit(main())

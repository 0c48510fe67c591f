#!/usr/bin/env python3
"""Interop: a real ONVIF client (onvif-zeep-async, what Home Assistant uses) against three real
`buddygate run` nodes on loopback.

It connects to the failover node fo-1, authenticates (WS-UsernameToken digest), finds the event
service through GetServices, creates a pull-point subscription with the library's PullPointManager,
kills the live node with SIGKILL, and pulls until a bg:Failover/Completed message names fo-1's
address and a takeover epoch; then renews, calls SetSynchronizationPoint (every resource's owner
comes back as Initialized: fo-1 for live-1's cameras), unsubscribes, and checks that a pull on the
ended subscription is a fault.

    tests/interop/onvif_client.py [--bin PATH]   (default: $CARGO_TARGET_DIR or target, debug)

Exits 0 when everything held, 1 otherwise (with the nodes' logs).
"""

import argparse
import asyncio
import datetime as dt
import os
import sys
import tempfile
import time

from onvif import ONVIFCamera
from zeep.exceptions import Fault

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True
from nodes import Site as Nodes  # noqa: E402

USER, PASSWORD = "operator", "interop-Pa55word"
TEV = "http://www.onvif.org/ver10/events/wsdl"
CAMERAS = 3


class Site(Nodes):
    """live-1 (CAMERAS cameras) with buddies fo-1, fo-2 (spread-servers)."""

    def __init__(self, binary, folder):
        super().__init__(binary, folder, ["live-1", "fo-1", "fo-2"])
        for name, value in [("site.key", "interop-site-key-0123456789"), ("api.token", "t0ken"),
                            ("onvif.pass", PASSWORD)]:
            with open(os.path.join(folder, name), "w") as f:
                f.write(value + "\n")
        self.site = os.path.join(folder, "site.toml")
        with open(self.site, "w") as f:
            f.write(self.site_file(
                "interop", ["fo-1", "fo-2"], {"live-1": CAMERAS}, failback='failback = "manual"\n',
                connectors=False, api=f'onvif_users = [{{ user = "{USER}", password = "file:onvif.pass" }}]\n',
            ))

    def start_all(self):
        for sid in self.servers:
            self.start(sid)

    def dump_logs(self):
        for sid in self.servers:
            print(f"----- {sid} -----", file=sys.stderr)
            print(self.logs(sid)[-4000:], file=sys.stderr)


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}")


def items(msg):
    """(topic, property operation, {name: value}) of a zeep NotificationMessage."""
    topic = msg.Topic._value_1
    m = msg.Message._value_1
    out = {}
    if hasattr(m, "tag"):  # an lxml element (schema-less parse)
        op = m.get("PropertyOperation")
        for si in m.iter("{http://www.onvif.org/ver10/schema}SimpleItem"):
            out[si.get("Name")] = si.get("Value")
    else:
        op = m.PropertyOperation
        for part in (m.Source, m.Data):
            for si in (part.SimpleItem if part is not None else []) or []:
                out[si.Name] = si.Value
    return topic, op, out


async def pull(service, seconds=2, limit=100):
    r = await service.PullMessages({"Timeout": dt.timedelta(seconds=seconds), "MessageLimit": limit})
    return [items(m) for m in (r.NotificationMessage or [])]


async def wait_until(what, fn, limit=15.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out: {what}")


async def scenario(site):
    fo1 = site.servers["fo-1"]

    def home_active():
        rs = site.resources("fo-1")
        return rs and all(r["owner"] == "live-1" and r["state"] == "active" for r in rs)
    await wait_until("live-1's cameras active at home, as fo-1 sees it", home_active, 20)

    host, port = fo1["api"].split(":")
    cam = ONVIFCamera(host, int(port), USER, PASSWORD, adjust_time=True)
    await cam.update_xaddrs()
    try:
        info = await (await cam.create_devicemgmt_service()).GetDeviceInformation()
        check(info.Manufacturer == "buddygate" and info.SerialNumber == "interop/fo-1",
              f"GetDeviceInformation: {info.Manufacturer} {info.SerialNumber}")
        check(cam.xaddrs.get(TEV) == f"http://{fo1['api']}/onvif/event_service",
              f"GetServices names the event service: {cam.xaddrs.get(TEV)}")
        events = await cam.create_events_service()
        props = await events.GetEventProperties()
        check(props.TopicSet is not None, "GetEventProperties returns the topic set")

        manager = await cam.create_pullpoint_manager(dt.timedelta(seconds=60), lambda: None)
        pullpoint = manager.get_service()
        first = await pull(pullpoint, 1, 1000)
        homes = {i["Resource"]: i["Owner"] for t, op, i in first
                 if t == "bg:Ownership/Resource" and op == "Initialized"}
        check(len(homes) == CAMERAS and set(homes.values()) == {"live-1"},
              f"a new subscription starts with every owner Initialized: {homes}")

        site.kill9("live-1")
        killed = time.monotonic()
        completed, changed = None, {}
        while time.monotonic() - killed < 15 and (completed is None or len(changed) < CAMERAS):
            for t, op, i in await pull(pullpoint, 5, 100):
                if t == "bg:Failover/Completed":
                    completed = (i, time.monotonic() - killed)
                elif t == "bg:Ownership/Resource" and i.get("Owner") == "fo-1":
                    changed[i["Resource"]] = i
        check(completed is not None, "a bg:Failover/Completed message after kill -9 of live-1")
        data, after = completed
        print(f"   {data} ({after * 1000:.0f} ms after the kill)")
        check(data["Server"] == "live-1" and data["NewServer"] == "fo-1",
              "it names the failed and the new server")
        check(data["Address"] == fo1["address"], f"its data names the new address {fo1['address']}")
        epoch = int(data["Epoch"])
        check(epoch > 0, f"its data carries the takeover epoch {epoch}")
        check(len(changed) == CAMERAS and all(int(i["Epoch"]) == epoch and
                                              i["Address"] == fo1["address"]
                                              for i in changed.values()),
              "every camera's ownership Changed to fo-1 at that epoch")

        subscription = await cam.create_subscription_service("PullPointSubscription")
        renewed = await subscription.Renew({"TerminationTime": "PT300S"})
        span = (renewed.TerminationTime - renewed.CurrentTime).total_seconds()
        check(abs(span - 300) <= 2, f"Renew grants 300 s (got {span:.0f} s)")

        await pullpoint.SetSynchronizationPoint()
        synced = await pull(pullpoint, 2, 1000)
        owners = {i["Resource"]: (i["Owner"], i["Address"], int(i["Epoch"])) for t, op, i in synced
                  if t == "bg:Ownership/Resource" and op == "Initialized"}
        check(len(owners) == CAMERAS and
              all(v == ("fo-1", fo1["address"], epoch) for v in owners.values()),
              f"SetSynchronizationPoint re-sends the current owners: {owners}")
        states = {i["Server"]: i["State"] for t, op, i in synced if t == "bg:Server/State"}
        check(states.get("live-1") == "down", f"and server states: {states}")

        await subscription.Unsubscribe()
        try:
            await pull(pullpoint, 1, 10)
            check(False, "a pull after Unsubscribe is a fault")
        except Fault as e:
            check(True, f"a pull after Unsubscribe is a fault ({e.message})")
    finally:
        await cam.close()


def main():
    ap = argparse.ArgumentParser()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "target"))
    ap.add_argument("--bin", default=os.path.join(target, "debug", "buddygate"))
    args = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="buddygate-onvif-interop-")
    site = Site(os.path.abspath(args.bin), folder)
    site.start_all()
    try:
        asyncio.run(scenario(site))
    except Exception as e:  # noqa: BLE001 - any failure fails the check
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        site.stop_all()
        site.dump_logs()
        print("onvif interop: 0 passed, 1 failed")
        return 1
    site.stop_all()
    print("onvif interop: 1 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The JSON Schemas of buddygate's CloudEvents (schemas/events/), built from one description.

The payloads are the ones src/cloudevents.rs builds; that file is the source of truth,
and this one follows it field for field. Run

    python3 tests/interop/event_schemas.py --write

after changing a payload; the interop test (webhook_interop.py) fails while the committed files
differ from what this script builds.
"""

import copy
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "schemas" / "events"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
ID_BASE = "urn:buddygate:schemas:events:"

# --- pieces ------------------------------------------------------------------------------

# Site name and server/resource ids: letters, digits, '.', '_' and '-', at most 64 (the site
# file's validation).
NAME = {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}
# An announced address: a server's `address` (an IP, v4 or v6).
IP = {
    "type": "string",
    "description": "The IP address the server announces (its `address` in the site file).",
    "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}],
    "pattern": "^[0-9A-Fa-f.:]+$",
}
# humantime::format_rfc3339_millis: UTC, always milliseconds and `Z`.
TIME = {
    "type": "string",
    "format": "date-time",
    "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z$",
}
EPOCH = {
    "type": "integer",
    "minimum": 0,
    "description": "Fencing token: round*100 + (99 - rank). Higher wins; not consecutive.",
}
KIND = {"enum": ["camera", "io", "lpr", "analytics", "map", "middleware"]}
MILLIS = {"type": "integer", "minimum": 0}
# A connector: its file's stem, and its kind.
CONNECTOR = {"type": "string", "minLength": 1, "description": "The connector's name (its file's stem)."}
CONNECTOR_KIND = {"enum": ["webhook", "mqtt", "onvif"]}


def obj(props, required=None, description=None):
    """A closed object: every listed property required unless `required` says otherwise."""
    o = {
        "type": "object",
        "required": list(props) if required is None else required,
        "properties": props,
        "additionalProperties": False,
    }
    if description:
        o = {"description": description, **o}
    return o


def ref(name):
    return {"$ref": f"#/$defs/{name}"}


DEFS = {
    "name": NAME,
    "ip": IP,
    "time": TIME,
    "epoch": EPOCH,
    "kind": KIND,
    "server": obj({"id": ref("name"), "address": ref("ip")}, description="A server: its id and announced address."),
    "resource": obj({"id": ref("name"), "kind": ref("kind")}),
    "owned_resource": obj(
        {
            "id": ref("name"),
            "kind": ref("kind"),
            "owner": ref("name"),
            "address": ref("ip"),
            "epoch": ref("epoch"),
            "started_at": {
                **TIME,
                "description": "failover.completed and failback.completed: when the owner's start "
                "was complete (the resource worked: recording, not just launched).",
            },
            "start_ms": {
                **MILLIS,
                "description": "With started_at: from the moment the start was asked for (the claim "
                "durable) to then: waits for an agent permit, attempts, readiness.",
            },
        },
        required=["id", "kind", "owner", "address", "epoch"],
        description="A resource and who serves it now: owner id, the owner's address, the claim's "
        "epoch, and in completed failovers and failbacks when it started working.",
    ),
    "failed_resource": obj(
        {"id": ref("name"), "kind": ref("kind"), "reason": {"type": "string"}},
        description="A resource that did not come up, and why.",
    ),
}

# --- the data of each event type (cloudevents.rs, `to_cloudevent`) -------------------------

EVENTS = {
    "buddygate.server.down": (
        "A server stopped answering on every path (`timeout`) or said it is leaving.",
        obj(
            {
                "site": ref("name"),
                "server": ref("server"),
                "reason": {"enum": ["timeout", "leaving"]},
                "down_since": ref("time"),
            }
        ),
    ),
    "buddygate.server.up": (
        "A server is heard again.",
        obj({"site": ref("name"), "server": ref("server")}),
    ),
    "buddygate.path.down": (
        "One network path to a server went silent (not a failover while another path answers).",
        obj(
            {
                "site": ref("name"),
                "server": ref("server"),
                "path": {"type": "integer", "minimum": 0, "description": "Index in the server's `heartbeat` list."},
                "address": {
                    "type": ["string", "null"],
                    "description": "That path's heartbeat address, ip:port.",
                    "pattern": "^([0-9.]+|\\[[0-9A-Fa-f:.]+(%[0-9]+)?\\]):[0-9]{1,5}$",
                },
            }
        ),
    ),
    "buddygate.failover.started": (
        "A buddy began taking over a server's resources.",
        obj(
            {
                "site": ref("name"),
                "server": ref("server"),
                "new_server": ref("server"),
                "epoch": ref("epoch"),
                "resources": {"type": "array", "items": ref("owned_resource")},
            }
        ),
    ),
    "buddygate.failover.completed": (
        "A buddy serves a server's resources: tell everyone the new address.",
        obj(
            {
                "site": ref("name"),
                "server": ref("server"),
                "new_server": ref("server"),
                "epoch": ref("epoch"),
                "resources": {"type": "array", "items": ref("owned_resource")},
                "failed": {"type": "array", "items": ref("failed_resource")},
                "down_since": ref("time"),
                "takeover_ms": MILLIS,
            }
        ),
    ),
    "buddygate.failback.completed": (
        "A server serves its own resources again (`new_server` is the server itself).",
        obj(
            {
                "site": ref("name"),
                "server": ref("server"),
                "new_server": ref("server"),
                "epoch": ref("epoch"),
                "resources": {"type": "array", "items": ref("owned_resource")},
                "failed": {"type": "array", "items": ref("failed_resource")},
                "failback_ms": MILLIS,
            }
        ),
    ),
    "buddygate.resource.failed": (
        "A resource failed to start or its monitor failed on `server`.",
        obj(
            {
                "site": ref("name"),
                "resource": ref("resource"),
                "server": ref("server"),
                "epoch": ref("epoch"),
                "reason": {"type": "string"},
            }
        ),
    ),
    "buddygate.resource.unplaced": (
        "Resources of `server` that need a host and that no buddy can take: nobody records "
        "them. Reported by their first buddy that is up; cleared by the takeover that places "
        "them or by the home server running them again.",
        obj(
            {
                "site": ref("name"),
                "server": ref("server"),
                "resources": {
                    "type": "array",
                    "minItems": 1,
                    "items": obj(
                        {
                            "id": ref("name"),
                            "kind": KIND,
                            "reason": {"enum": ["capacity", "failed", "unavailable"]},
                        }
                    ),
                },
            }
        ),
    ),
    "buddygate.ownership.conflict": (
        "Two servers serve one resource (a partition healed); the winner is first.",
        obj(
            {
                "site": ref("name"),
                "resource": ref("resource"),
                "owners": {
                    "type": "array",
                    "minItems": 2,
                    "items": obj({"id": ref("name"), "address": ref("ip"), "epoch": ref("epoch")}),
                },
            }
        ),
    ),
    "buddygate.ownership.resolved": (
        "A conflict ended: `owner` serves the resource at `epoch`.",
        obj(
            {
                "site": ref("name"),
                "resource": ref("resource"),
                "owner": ref("name"),
                "address": ref("ip"),
                "epoch": ref("epoch"),
            }
        ),
    ),
    "buddygate.config.mismatch": (
        "A peer runs a different site file (first 8 bytes of each digest, hex).",
        obj(
            {
                "site": ref("name"),
                "server": ref("server"),
                "local_digest": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                "remote_digest": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
            }
        ),
    ),
    "buddygate.connector.failed": (
        "One of `server`'s connectors cannot start (a secret not set, a certificate that cannot "
        "be read): the node runs without it and tries again. Once per outage.",
        obj(
            {
                "site": ref("name"),
                "server": ref("server"),
                "connector": CONNECTOR,
                "kind": CONNECTOR_KIND,
                "reason": {
                    "type": "string",
                    "description": "What the start said; names a secret (`env:VAR`, `file:PATH`), never its value.",
                },
                "attempts": {"type": "integer", "minimum": 1, "description": "Starts tried so far."},
                "retry_in_ms": {**MILLIS, "description": "Until the next start."},
            }
        ),
    ),
    "buddygate.connector.recovered": (
        "A connector of `server` that could not start runs at last.",
        obj(
            {
                "site": ref("name"),
                "server": ref("server"),
                "connector": CONNECTOR,
                "kind": CONNECTOR_KIND,
                "attempts": {"type": "integer", "minimum": 2, "description": "Starts it took, the one that worked included."},
                "failed_for_ms": {**MILLIS, "description": "From its first failed start to the one that worked."},
            }
        ),
    ),
    "buddygate.ownership.reasserted": (
        "Periodic (connector `reassert`): what `server` serves now; not in the event log.",
        obj(
            {
                "site": ref("name"),
                "server": ref("server"),
                "epoch": ref("epoch"),
                "resources": {"type": "array", "minItems": 1, "items": ref("owned_resource")},
            }
        ),
    ),
}
# path.up has path.down's data.
EVENTS["buddygate.path.up"] = ("A silent path answers again.", copy.deepcopy(EVENTS["buddygate.path.down"][1]))
def rust_event_types():
    """`EVENT_TYPES` of src/config/connectors.rs: the types a connector delivers, in its order."""
    src = (ROOT / "src" / "config" / "connectors.rs").read_text()
    block = re.search(r"pub const EVENT_TYPES: \[&str; \d+\] = \[(.*?)\];", src, re.S)
    return re.findall(r'"([a-z.]+)"', block.group(1)) if block else []


# One schema per type src/ emits, in its order; EVENTS must describe exactly those.
ORDER = rust_event_types()


def envelope(ty, data):
    """The whole CloudEvent of type `ty` with `data` (its `$defs` live at the root)."""
    return obj(
        {
            "specversion": {"const": "1.0"},
            "id": {
                "type": "string",
                "pattern": "^[A-Za-z0-9._-]{1,64}:([0-9a-f]{12}:[0-9]+|[0-9]+\\.r[0-9]+)$",
                "description": "`{node}:{run}:{seq}` (`run`: 12 hex digits drawn each time the node starts): unique in the site for good, across wiped or restored data dirs, and the same on every retry; also the `webhook-id` header. A re-assertion is `{node}:{seq}.r{unix ms}`.",
            },
            "type": {"const": ty},
            "source": {
                "type": "string",
                "pattern": "^buddygate://[A-Za-z0-9._-]{1,64}/[A-Za-z0-9._-]{1,64}$",
                "description": "`buddygate://{site}/{node}`: the node that emitted the event.",
            },
            "time": ref("time"),
            "datacontenttype": {"const": "application/json"},
            "seq": {
                "type": "integer",
                "minimum": 1,
                "description": "The sending node's event sequence number (increasing, never reused).",
            },
            "data": data,
        }
    )


def per_type(ty):
    desc, data = EVENTS[ty]
    return {
        "$schema": DRAFT,
        "$id": f"{ID_BASE}{ty}",
        "title": ty,
        "description": desc + " A CloudEvent 1.0 (structured JSON) as buddygate delivers it.",
        **envelope(ty, data),
        "$defs": DEFS,
    }


def union():
    defs = dict(DEFS)
    for ty in ORDER:
        defs[ty] = envelope(ty, EVENTS[ty][1])
    return {
        "$schema": DRAFT,
        "$id": f"{ID_BASE}cloudevent",
        "title": "buddygate CloudEvent",
        "description": "Any event buddygate delivers: a CloudEvent 1.0 (structured JSON) whose `type` picks exactly one of the shapes.",
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"enum": ORDER}},
        "oneOf": [ref(ty) for ty in ORDER],
        "$defs": defs,
    }


def files():
    """{file name: schema} for schemas/events/."""
    out = {f"{ty}.schema.json": per_type(ty) for ty in ORDER}
    out["cloudevent.schema.json"] = union()
    return out


def render(schema):
    return json.dumps(schema, indent=2) + "\n"


def stale():
    """Names of committed files that differ from what this script builds (or are missing), and
    a note when the event types here are not the ones src/ emits."""
    if sorted(ORDER) != sorted(EVENTS):
        return [f"event types {ORDER} in src/config/connectors.rs (this script describes {sorted(EVENTS)})"]
    bad = []
    for name, schema in files().items():
        p = OUT / name
        if not p.exists() or p.read_text() != render(schema):
            bad.append(name)
    return bad


def main(argv):
    if argv[1:] == ["--write"]:
        if sorted(ORDER) != sorted(EVENTS):
            print(stale()[0])
            return 1
        OUT.mkdir(parents=True, exist_ok=True)
        for name, schema in files().items():
            (OUT / name).write_text(render(schema))
        print(f"wrote {len(files())} schemas to {OUT.relative_to(ROOT)}")
        return 0
    bad = stale()
    if bad:
        print("stale: " + ", ".join(bad) + " (run: python3 tests/interop/event_schemas.py --write)")
        return 1
    print("schemas/events is fresh")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

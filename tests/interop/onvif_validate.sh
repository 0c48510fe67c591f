#!/usr/bin/env bash
# Validates every XML message the ONVIF services emit against the ONVIF and WS-BaseNotification
# schemas, with xmllint --schema.
#
#   tests/interop/onvif_validate.sh [SAMPLES_DIR]
#
# SAMPLES_DIR holds the messages written by `BUDDYGATE_ONVIF_SAMPLES=DIR cargo test --test onvif`;
# without it, the script runs those tests itself into a temporary folder. The schemas are the
# XSDs shipped by the Python package onvif-zeep-async (its onvif/wsdl folder), the schemas
# embedded in its devicemgmt.wsdl and events.wsdl (extracted with lxml, which it depends on),
# tests/interop/soap12-wrapper.xsd, a SOAP 1.2 envelope that admits only declared elements, and
# tests/interop/wss-{secext,utility}.xsd, the WS-Security UsernameToken elements (the header
# of the onvif connector's Notify when it authenticates).
# Needs: xmllint (libxml2-utils), python3 with onvif-zeep-async. Exits non-zero on any failure.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

samples="${1:-}"
if [ -z "$samples" ]; then
    samples="$work/samples"
    mkdir -p "$samples"
    echo "== writing samples: cargo test --test onvif"
    (cd "$root" && BUDDYGATE_ONVIF_SAMPLES="$samples" cargo test --locked --quiet --test onvif >"$work/cargo.log" 2>&1) || {
        cat "$work/cargo.log"
        echo "onvif_validate: the tests that write the samples failed" >&2
        exit 1
    }
fi

wsdl="$(python3 -c 'import os, onvif; print(os.path.join(os.path.dirname(onvif.__file__), "wsdl"))')"
schemas="$work/schemas"
cp -r "$wsdl" "$schemas"
python3 - "$schemas" <<'PY'
import sys
from lxml import etree
d = sys.argv[1]
XS = "{http://www.w3.org/2001/XMLSchema}schema"
for wsdl, out in (("devicemgmt.wsdl", "tds.xsd"), ("events.wsdl", "tev.xsd")):
    tree = etree.parse(f"{d}/{wsdl}")
    found = [s for s in tree.iter(XS)]
    if len(found) != 1:
        sys.exit(f"{wsdl}: expected one embedded schema, found {len(found)}")
    with open(f"{d}/{out}", "wb") as f:
        f.write(etree.tostring(found[0], xml_declaration=True, encoding="UTF-8"))
PY
cp "$here/soap12-wrapper.xsd" "$here/wss-secext.xsd" "$here/wss-utility.xsd" "$schemas/"

shopt -s nullglob
files=("$samples"/*.xml)
if [ "${#files[@]}" -lt 30 ]; then
    echo "onvif_validate: only ${#files[@]} samples in $samples (expected 30 or more)" >&2
    exit 1
fi
failed=0
for f in "${files[@]}"; do
    if ! out="$(xmllint --noout --nonet --schema "$schemas/soap12-wrapper.xsd" "$f" 2>&1)"; then
        echo "$out" | grep -v 'Skipping import' >&2
        failed=$((failed + 1))
    fi
done
passed=$(( ${#files[@]} - failed ))
echo "onvif_validate: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

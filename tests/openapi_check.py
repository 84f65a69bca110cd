#!/usr/bin/env python3
"""openapi_check.py - openapi.yaml describes every route, status and error code the server has.

Reads the server's error table (server/base/apierr.h: every error answer is one
of its rows, and each row must be used in the sources) and routes and checks
that openapi.yaml documents each: the routes and methods match, every error
code is in ErrorCode and named in a response of its status, and ErrorCode
lists nothing the server never sends.

usage: openapi_check.py REPO_ROOT
"""
import glob
import json
import os
import re
import sys

import yaml


def main():
    root = sys.argv[1]
    spec = yaml.safe_load(open(os.path.join(root, "openapi.yaml")))
    src = {p: open(p).read() for p in glob.glob(os.path.join(root, "server", "*", "*.c"))}
    failures = []

    def check(cond, msg):
        if not cond:
            failures.append(msg)

    check(str(spec.get("openapi", "")).startswith("3.1"), "not OpenAPI 3.1")

    # What the server can answer: (status, code) pairs, the rows of the one
    # error table (server/base/apierr.h), each of which the sources must use.
    pairs = set()
    front_door = set()
    table = open(os.path.join(root, "server", "base", "apierr.h")).read()
    rows = re.findall(r"X\((\w+),\s*(\d{3}),\s*\w+,\s*\"([a-z_]+)\"", table)
    uses = "".join(src.values())
    for name, status, code in rows:
        pairs.add((status, code))
        check("APIERR_" + name in uses, "APIERR_%s (%s %s) is in the table but never answered"
              % (name, status, code))
    check(len(pairs) > 20, "found only %d (status, code) pairs: the scan is broken" % len(pairs))

    # And what the compose stack's front door answers itself (haproxy's
    # errorfiles): whole HTTP responses whose body is the error shape.
    errorfiles = sorted(glob.glob(os.path.join(root, "haproxy", "errors", "*.http")))
    check(len(errorfiles) >= 5, "found only %d haproxy errorfiles" % len(errorfiles))
    for path in errorfiles:
        raw = open(path, "rb").read()
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        m = re.match(r"HTTP/1\.1 (\d{3}) ", lines[0])
        fields = dict(l.split(": ", 1) for l in lines[1:] if ": " in l)
        name = os.path.basename(path)
        check(m is not None and name == m.group(1) + ".http", "%s: status line %r" % (name, lines[0]))
        check(b"\n" not in head.replace(b"\r\n", b""), "%s: a bare LF in its head" % name)
        check(fields.get("Content-Type") == "application/json", "%s: not JSON" % name)
        check(fields.get("Content-Length") == str(len(body)),
              "%s: Content-Length %s, body %d bytes" % (name, fields.get("Content-Length"), len(body)))
        try:
            err = json.loads(body)["error"]
            check(set(err) == {"type", "code", "message"}, "%s: error fields %s" % (name, set(err)))
            if m:
                pairs.add((m.group(1), err["code"]))
                front_door.add(err["code"])
        except (ValueError, KeyError, TypeError) as e:
            check(False, "%s: body is not the error shape: %s" % (name, e))

    # Routes: handlers.c's route table, each row's path (with routes.h's
    # macros) and the methods it has a handler for.
    handlers = src[os.path.join(root, "server", "http", "handlers.c")]
    routes_h = open(os.path.join(root, "server", "http", "routes.h")).read()
    macros = dict(re.findall(r'#define (ROUTES_\w+) "([^"]+)"', routes_h))
    table = handlers[handlers.index("ROUTE_TABLE[] = {"):]
    table = table[:table.index("};")]
    rows = re.findall(r'\{((?:ROUTES_\w+\s*)?(?:"[^"]*")?),\s*METRICS_ROUTE_\w+,\s*[01],\s*'
                      r'"[^"]*",\s*(\w+),\s*(\w+),\s*(\w+)\}', table)
    check(len(rows) >= 6, "found only %d rows in handlers.c's route table: the scan is broken"
          % len(rows))
    want_paths = {}
    for pattern, get, post, delete in rows:
        m = re.match(r'(ROUTES_\w+)?\s*(?:"([^"]*)")?$', pattern.strip())
        path = macros.get(m.group(1), "") + (m.group(2) or "") if m.group(1) else m.group(2)
        check(not m.group(1) or m.group(1) in macros, "%s is not in routes.h" % m.group(1))
        methods = want_paths.setdefault(path, set())
        if get != "NULL":
            methods.add("get")
        if post != "NULL":
            methods.add("post")
        if delete != "NULL":
            methods.add("delete")
    # Every route of routes.h is in the table, through its adapter or itself.
    declared = re.findall(r"void (routes_\w+)\(", routes_h)
    check(len(declared) >= 6, "found only %d routes in routes.h: the scan is broken" % len(declared))
    for fn in declared:
        check(fn in handlers, "%s is never routed to in handlers.c" % fn)
    paths = spec.get("paths", {})
    check(set(paths) == set(want_paths), "paths %s, server has %s" % (sorted(paths), sorted(want_paths)))
    for p, methods in want_paths.items():
        have = {m for m in paths.get(p, {}) if m in ("get", "post", "put", "delete", "patch")}
        check(have == methods, "%s: methods %s, server has %s" % (p, sorted(have), sorted(methods)))

    # Responses by status, with their descriptions.
    comps = spec.get("components", {}).get("responses", {})
    by_status = {}
    for p, ops in paths.items():
        for m, op in ops.items():
            for status, resp in op.get("responses", {}).items():
                if "$ref" in resp:
                    resp = comps[resp["$ref"].split("/")[-1]]
                by_status.setdefault(str(status), []).append(resp.get("description", ""))
    generic = " ".join(comps[n]["description"] for n in ("NotFound", "MethodNotAllowed", "Malformed")
                       if n in comps)
    front = comps.get("FrontDoor", {}).get("description", "")
    for code in sorted(front_door):
        check("`%s`" % code in front, "the front door's %s is not named by FrontDoor" % code)

    enum = set(spec["components"]["schemas"]["ErrorCode"]["enum"])
    for status, code in sorted(pairs):
        check(code in enum, "%s %s: not in ErrorCode" % (status, code))
        texts = " ".join(by_status.get(status, []))
        check(("`%s`" % code) in texts or ("`%s`" % code) in generic
              or (code in front_door and ("`%s`" % code) in front),
              "%s %s: no response of status %s names it" % (status, code, status))
    sent = {c for _, c in pairs}
    for code in sorted(enum - sent):
        failures.append("ErrorCode %s is never sent by the server" % code)

    for f in failures:
        print("FAIL:", f)
    print("%d passed, %d failed" % (0 if failures else 1, 1 if failures else 0))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

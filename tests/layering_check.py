#!/usr/bin/env python3
"""layering_check.py - the includes run one way (docs/design.md: Layout).

The layers, one folder and one CMake library each, and what each may
include (LAYERS below). The build already refuses most includes that run
back up - a header of a layer above is on no include path of a layer below -
and this check says the rest, and that the tree, the build and the docs
agree:

- every folder of server/ and store/ is a layer of the table, and every
  layer of the table a folder;
- an include names a file in its own folder or in a layer it may use, and
  names it bare ("store.h", never "../store/store.h": a path would step
  around the include directories);
- CMakeLists.txt builds each layer as its own library from its own folder,
  linked to exactly the layers the table lets it use (directly or through
  another), so the table is the build's;
- docs/design.md names every layer's folder in its Layout section;
- libpq's header only in store/pg; civetweb's only in server/http,
  acquirer/ (a program of its own) and client/webhook_receiver.c (the
  walkthrough's own webhook endpoint);
  libcurl's, in the server, only in CURL_USERS: its HTTP client of the
  acquirer, and the webhook URLs read with libcurl's own URL parser (so
  the URL checked is the URL libcurl will connect to), and the webhook
  deliveries sent; of
  store/pg, only store_pg.h outside it; no HTTP or JSON in store/;
- the routes (paging, post_route, *_routes) see the narrow service
  (service.h), not the edge's guards (edge.h) nor the app;
- the idempotency layer's sources and headers name no operation and no
  HTTP ("payment", "refund", "civetweb", mg_*): it is generic.
Given the build directory too, it asks the compiler: with the flags a
source of each layer is built with (compile_commands.json), the main
header of every layer it may use compiles, and that of every other layer
is not found - the build itself refuses an include that runs back up.
Prints each violation and exits 1 if there is any.

usage: layering_check.py REPO_ROOT [BUILD_DIR]
"""
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

# The server's files that use libcurl (the docstring says why each).
CURL_USERS = {"server/ops/acquirer.c", "server/ops/webhook_endpoint.c",
              "server/ops/webhook_delivery.c"}

# folder: (library, the layers it may include, directly or not)
LAYERS = {
    "server/base": ("mockery_base", set()),
    "store": ("mockery_store", {"server/base"}),
    "store/mem": ("mockery_store_mem", {"store", "server/base"}),
    "store/pg": ("mockery_store_pg", {"store", "server/base"}),
    "server/idem": ("mockery_idem", {"store", "server/base"}),
    "server/ops": ("mockery_ops", {"store", "server/base"}),
    "server/guard": ("mockery_guard", {"server/base"}),
    "server/obs": ("mockery_obs", {"server/idem", "server/ops", "store", "server/base"}),
    "server/http": ("mockery_http", {"server/obs", "server/guard", "server/idem", "server/ops",
                                     "store", "server/base"}),
    "server/app": ("mockery_app", {"server/http", "server/obs", "server/guard", "server/idem",
                                   "server/ops", "store", "store/mem", "store/pg",
                                   "server/base"}),
    "client": ("mockery_httpc", set()),
    # mockery-acquirer: a second service on the idempotency layer, with the
    # operations' JSON and money checks and the PostgreSQL store
    "acquirer": ("mockery_acquirer", {"server/idem", "server/ops", "store", "store/pg",
                                      "server/base"}),
}
# Each layer's main header: what the compile check includes.
MAIN_HEADER = {
    "server/base": "apierr.h", "store": "store.h", "store/mem": "store_mem.h",
    "store/pg": "store_pg.h", "server/idem": "idem.h", "server/ops": "payment.h",
    "server/guard": "conntable.h", "server/obs": "log.h", "server/http": "http.h",
    "server/app": "app.h", "acquirer": "ledger.h",
}
ROUTES = ("paging.c", "paging.h", "post_route.c", "post_route.h", "payment_routes.c",
          "refund_routes.c", "routes.h")


def includes(path):
    with open(path) as f:
        return re.findall(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', f.read(), re.M)


def cmake_libraries(root):
    """{library: (set of source folders, set of mockery_* libraries linked)}"""
    text = open(os.path.join(root, "CMakeLists.txt")).read()
    libs = {}
    for name, body in re.findall(r"add_library\((mockery_\w+)\s+STATIC\s+([^)]*)\)", text):
        folders = {os.path.dirname(s) for s in body.split() if s.endswith(".c")
                   and not s.startswith("$")}
        libs[name] = (folders, set())
    for name, body in re.findall(r"target_link_libraries\((mockery_\w+)\s+([^)]*)\)", text):
        if name in libs:
            libs[name][1].update(re.findall(r"\bmockery_\w+", body))
    return libs


def compile_check(root, build, fail):
    """The compiler refuses, with each layer's own flags, the main header of
    every layer above or beside it, and accepts those below. Returns how
    many includes it tried."""
    try:
        commands = json.load(open(os.path.join(build, "compile_commands.json")))
    except (OSError, ValueError) as e:
        fail("no compile_commands.json in %s: %s" % (build, e))
        return 0
    tried = 0
    with tempfile.TemporaryDirectory() as tmp:
        for folder, (lib, may) in LAYERS.items():
            if folder not in MAIN_HEADER:
                continue
            prefix = os.path.join(root, folder) + os.sep
            entry = next((e for e in commands if e["file"].startswith(prefix)
                          and os.path.dirname(e["file"]) == os.path.join(root, folder)), None)
            if entry is None:
                fail("compile_commands.json has no source of %s/" % folder)
                continue
            args = entry.get("arguments") or entry["command"].split()
            flags = [a for a in args if a.startswith(("-I", "-D", "-std"))]
            for other, header in MAIN_HEADER.items():
                if other == folder:
                    continue
                src = os.path.join(tmp, "probe.c")
                with open(src, "w") as f:
                    f.write('#include "%s"\n' % header)
                res = subprocess.run([args[0], "-fsyntax-only"] + flags + [src],
                                     capture_output=True, text=True, cwd=entry["directory"])
                tried += 1
                refused = res.returncode != 0 and ("%s: No such file" % header) in res.stderr
                if other in may and res.returncode != 0:
                    fail("%s/ (%s) may include %s, but it does not compile there: %s"
                         % (folder, lib, header, res.stderr.strip()[-300:]))
                elif other not in may and not refused:
                    fail("%s/ (%s) may not include %s (%s/), but the build lets it"
                         % (folder, lib, header, other))
    return tried


def main():
    root = os.path.abspath(sys.argv[1])
    failures = []
    fail = failures.append
    by_lib = {lib: folder for folder, (lib, _) in LAYERS.items()}

    # The tree: every folder with sources is a layer, every layer a folder.
    found = {os.path.relpath(os.path.dirname(p), root)
             for d in ("server", "store", "client", "acquirer")
             for p in glob.glob(os.path.join(root, d, "**", "*.[ch]"), recursive=True)}
    for folder in sorted(found - set(LAYERS)):
        fail("%s/ holds sources but is no layer of layering_check.py" % folder)
    for folder in sorted(set(LAYERS) - found):
        fail("layer %s/ has no sources" % folder)

    # The build: one library per layer, from its folder, linked downwards.
    libs = cmake_libraries(root)
    for folder, (lib, may) in LAYERS.items():
        if lib not in libs:
            fail("CMakeLists.txt builds no %s for %s/" % (lib, folder))
            continue
        srcs, links = libs[lib]
        if srcs != {folder}:
            fail("%s is built from %s, not from %s/ alone" % (lib, sorted(srcs), folder))
        reach, todo = set(), list(links)
        while todo:
            other = todo.pop()
            if other in by_lib and by_lib[other] not in reach:
                reach.add(by_lib[other])
                todo.extend(libs.get(other, (set(), set()))[1])
        if reach != may:
            fail("%s links %s; the table says %s" % (lib, sorted(reach), sorted(may)))

    # The docs.
    design = open(os.path.join(root, "docs", "design.md")).read()
    layout = design[design.find("## Layout"):]
    for folder in LAYERS:
        if "`%s/`" % folder not in layout:
            fail("docs/design.md's Layout does not name `%s/`" % folder)

    # The includes.
    sources = [p for folder in LAYERS for p in glob.glob(os.path.join(root, folder, "*.[ch]"))]
    if len(sources) < 60:
        fail("only %d sources found under %s" % (len(sources), root))
    where = {}
    for p in sources:
        where.setdefault(os.path.basename(p), os.path.relpath(os.path.dirname(p), root))
    for p in sources:
        rel = os.path.relpath(p, root)
        folder = os.path.dirname(rel)
        name = os.path.basename(rel)
        may = LAYERS[folder][1]
        for kind, inc in includes(p):
            if kind == "<":
                if inc == "libpq-fe.h" and folder != "store/pg":
                    fail("%s includes libpq-fe.h outside store/pg" % rel)
                if inc == "civetweb.h" and folder not in ("server/http", "acquirer") and \
                        rel != "client/webhook_receiver.c":
                    fail("%s includes civetweb.h outside server/http, acquirer and the "
                         "walkthrough's webhook receiver" % rel)
                if inc == "curl/curl.h" and folder != "client" and rel not in CURL_USERS:
                    fail("%s includes curl/curl.h: in the server only %s may"
                         % (rel, ", ".join(sorted(CURL_USERS))))
                if inc.startswith("cjson/") and folder.startswith("store"):
                    fail("%s includes %s: the store knows no JSON" % (rel, inc))
                continue
            if "/" in inc:
                fail("%s includes \"%s\": by its name alone, through the include "
                     "directories" % (rel, inc))
                continue
            home = where.get(inc)
            if home is None:
                if not os.path.exists(os.path.join(root, folder, inc)):
                    fail("%s includes %s, which no layer holds" % (rel, inc))
                continue
            if home != folder and home not in may:
                fail("%s includes %s (%s/): %s/ may not use it" % (rel, inc, home, folder))
            for store, public in (("store/pg", "store_pg.h"), ("store/mem", "store_mem.h")):
                if home == store and folder != store and inc != public:
                    fail("%s includes %s: outside %s only %s" % (rel, inc, store, public))
            if folder == "server/http" and name in ROUTES and inc in ("edge.h", "app.h"):
                fail("%s includes %s: a route sees the service (service.h) alone" % (rel, inc))
    for p in glob.glob(os.path.join(root, "server", "idem", "*.[ch]")):
        text = open(p).read()
        for word in sorted(set(re.findall(r"payment|refund|civetweb|mg_\w+", text, re.I))):
            fail("%s names '%s': the idempotency layer is generic" % (os.path.relpath(p, root), word))
    tried = compile_check(root, sys.argv[2], fail) if len(sys.argv) > 2 else 0
    for f in failures:
        print("FAIL:", f)
    print("layering: %d files, %d layers checked, %d includes tried on the compiler, "
          "%d violations" % (len(sources), len(LAYERS), tried, len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

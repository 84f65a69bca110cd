#!/usr/bin/env python3
"""layering_check.py - the includes run one way (README: Layout).

- libpq's header is included only inside store/ (and by tests that query
  PostgreSQL themselves);
- store/ includes nothing of server/ (no HTTP, no JSON);
- the idempotency layer (server/idem.c, server/idem.h) does not include
  civetweb: HTTP reading lives in the HTTP module.
Prints each violation and exits 1 if there is any.
"""
import glob
import os
import re
import sys


def includes(path):
    with open(path) as f:
        return re.findall(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', f.read(), re.M)


def main():
    root = sys.argv[1]
    failures = []
    sources = [p for d in ("server", "store", "client")
               for p in glob.glob(os.path.join(root, d, "*.[ch]"))]
    if len(sources) < 20:
        failures.append("only %d sources found under %s" % (len(sources), root))
    for p in sources:
        rel = os.path.relpath(p, root)
        inc = includes(p)
        if "libpq-fe.h" in inc and not rel.startswith("store/"):
            failures.append("%s includes libpq-fe.h outside store/" % rel)
        if rel.startswith("store/"):
            for i in inc:
                if "server/" in i or i in ("civetweb.h", "cjson/cJSON.h", "http.h"):
                    failures.append("%s includes %s: the store knows no HTTP or JSON" % (rel, i))
        if rel in ("server/idem.c", "server/idem.h") and "civetweb.h" in inc:
            failures.append("%s includes civetweb.h: the idempotency layer reads no HTTP" % rel)
    for f in failures:
        print("FAIL:", f)
    print("layering: %d files checked, %d violations" % (len(sources), len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

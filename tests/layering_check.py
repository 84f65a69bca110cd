#!/usr/bin/env python3
"""layering_check.py - the includes run one way (docs/design.md: Layout).

- libpq's header is included only inside store/ (and by tests that query
  PostgreSQL themselves);
- store/ includes nothing of server/ (no HTTP, no JSON);
- the idempotency layer (server/idem.c, server/idem.h) includes, directly
  or through other headers, neither civetweb nor HTTP nor anything of the
  handlers or of one operation (payments, refunds): it is generic, and
  its text does not even name them;
- store/ includes nothing above it, the layer nothing of the handlers.
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
    # The layer, with every header it reaches in server/ and store/.
    above = {"civetweb.h", "http.h", "app.h", "handlers.h", "routes.h", "post_route.h",
             "paging.h", "payment.h", "refund.h"}
    for start in ("server/idem.c", "server/idem.h"):
        seen, todo = set(), [start]
        while todo:
            rel = os.path.normpath(todo.pop())
            if rel in seen:
                continue
            seen.add(rel)
            path = os.path.join(root, rel)
            if not os.path.exists(path):
                continue
            for i in includes(path):
                if os.path.basename(i) in above:
                    failures.append("%s reaches %s (through %s): the idempotency layer is "
                                    "below HTTP and the operations" % (start, i, rel))
                todo.append(os.path.join(os.path.dirname(rel), i))
        text = open(os.path.join(root, start)).read()
        for word in re.findall(r"payment|refund|civetweb|mg_\w+", text, re.I):
            failures.append("%s names '%s': the idempotency layer is generic" % (start, word))
    for f in failures:
        print("FAIL:", f)
    print("layering: %d files checked, %d violations" % (len(sources), len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

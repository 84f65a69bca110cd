#!/usr/bin/env python3
"""bench/pgbouncer.py - what unnamed statements and pgbouncer cost, in one run.

Three servers as shipped (default flags, access log to a file), each on an
empty database of its own on one cluster, at once:
  named-direct       prepared statements, straight to PostgreSQL (the default)
  unnamed-direct     --unnamed-statements true, straight to PostgreSQL
  unnamed-pgbouncer  --unnamed-statements true, through pgbouncer 1.18 in
                     transaction pooling mode (default_pool_size = the
                     servers' --pool-size, 8: pgbouncer's hop, not a smaller
                     pool, is what is measured)
New payments (wrk, bench/new.lua) for --cold seconds each, then warm windows
that take turns (ABBA, --rounds) so that the disk's drift falls on each
alike. Prints 2xx answers a second, p50, p99 and each rate as a ratio of
named-direct's, measured in the same run; any non-2xx answer fails the run.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as B  # noqa: E402

DEV = os.path.join(B.ROOT, "scripts", "dev")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--build-dir", default=os.path.join(B.ROOT, "build"))
    ap.add_argument("--duration", type=int, default=20, help="warm seconds per server (20)")
    ap.add_argument("--cold", type=int, default=5, help="seconds of the first window (5)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", default=os.path.join(B.BENCH, "results"))
    args = ap.parse_args()
    name = "pgb-bench-%d" % os.getpid()
    url = subprocess.run(["bash", DEV, "cluster", name, "up"], check=True, capture_output=True,
                         text=True).stdout.strip()
    tmp = tempfile.mkdtemp(prefix="mockery-pgb-bench.")
    servers, dbs = {}, []
    try:
        pgb = subprocess.run(["bash", DEV, "pgbouncer", name, "up", "8"], check=True,
                             capture_output=True, text=True).stdout.strip()
        settings = B.pg_settings(url)
        for label, via, extra in (("named-direct", url, []),
                                  ("unnamed-direct", url, ["--unnamed-statements", "true"]),
                                  ("unnamed-pgbouncer", pgb, ["--unnamed-statements", "true"])):
            db = B.fresh_db(url, "bench_" + label.replace("-", "_"))
            dbs.append(db)
            target = db if via == url else db.replace(url.rsplit("/", 1)[0],
                                                      pgb.rsplit("/", 1)[0])
            servers[label] = B.Server(args, target, os.path.join(tmp, label + ".log"), extra)
        run = "%d" % time.time()
        rows = {}
        for label, srv in servers.items():
            B.say("%s: the first %d s on an empty database" % (label, args.cold))
            rows[label + " cold"] = B.wrk(srv.base, "/api/v1/payments", "new.lua", args.clients,
                                          args.cold, ["c%s%s" % (run, label)])

        def one(label, srv, r, seconds):
            B.say("%s: warm window %d (%d s)" % (label, r + 1, seconds))
            return B.wrk(srv.base, "/api/v1/payments", "new.lua", args.clients, seconds,
                         ["w%s%s%d" % (run, label, r)])
        warm = B.alternating(servers, args.duration * args.rounds // 2, args.rounds, one)
        for label in servers:
            rows[label] = warm[label]
    finally:
        for srv in servers.values():
            srv.stop()
        subprocess.run(["bash", DEV, "pgbouncer", name, "down"], capture_output=True)
        subprocess.run(["bash", DEV, "cluster", name, "down"], capture_output=True)
    base = rows["named-direct"]["rps"]
    print("PostgreSQL: " + ", ".join("%s=%s" % kv for kv in settings.items()))
    print("%-24s %9s %7s %8s %8s %7s" % ("scenario", "2xx/s", "other", "p50 ms", "p99 ms",
                                         "ratio"))
    bad = 0
    for label, r in rows.items():
        bad += r["non_2xx"] + r["socket_errors"]
        ratio = "%.2f" % (r["rps"] / base) if not label.endswith("cold") else ""
        print("%-24s %9.0f %7d %8.2f %8.2f %7s" % (label, r["rps"], r["non_2xx"], r["p50_ms"],
                                                   r["p99_ms"], ratio))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "pgbouncer-%s.json" % time.strftime("%Y%m%dT%H%M%SZ",
                                                                       time.gmtime()))
    with open(path, "w") as f:
        json.dump({"settings": settings, "clients": args.clients, "rows": rows}, f, indent=1)
    print("written to " + os.path.relpath(path, B.ROOT))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

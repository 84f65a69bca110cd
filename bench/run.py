#!/usr/bin/env python3
"""bench/run.py - the server as shipped against what PostgreSQL itself can do, in one run.

The server runs with its default flags and its access log written to a file,
as the Docker image and `scripts/dev up` run it, each time on an empty
database. Scenarios (each at every client count):
  ceiling-new     pgbench -M prepared: exactly the SQL one new payment costs the
                  server when it arrives alone (its single-row claim and
                  completion statements, read out of store/pg/pg_sql.c so they
                  cannot drift); under load the server batches them
  naive-new       pgbench: the textbook protocol (bench/naive.sql), a reference
  server-new-cold wrk: POSTs with a new key each, keep-alive: the first
                  --cold seconds on an empty database
  server-new      wrk: the same, the next --duration seconds (warm)
  server-replay   wrk: completed keys replayed over HTTP
  ceiling-replay  pgbench: the SQL one replay of a completed key costs
  http-floor      wrk: a route that does no store work (the 404 answer; its
                  rate counts every answer)
  mixed           wrk: 90% new, 10% retries of recent keys, 1% immediate repeats
  acquirer-new    wrk: new payments through mockery-acquirer (--acquirer-url; the
                  acquirer on a database of its own in the same cluster), from
                  empty databases, --duration seconds; the asks and the TCP
                  connections opened to the acquirer are counted (more than
                  two per client fails the run)
  acquirer-refund wrk: then refunds of 0.01 through the same server and acquirer,
                  each with a new key, spread over PAYMENTS_TO_REFUND payments
                  made first; no target (any non-2xx answer fails the run)
  webhook-plain-new  wrk: new payments, a server with its default flags on an
                  empty database, no webhook endpoint: the same-time reference
                  of webhook-new
  webhook-new     wrk: new payments through a server with one webhook endpoint
                  subscribed to every event (--webhook-allow-private, else its
                  default flags), delivered to mockery-webhook-sink on
                  127.0.0.1 (signatures checked); its windows alternate with
                  webhook-plain-new's (ABBA). After each window: the oldest
                  undelivered event's age (must be under 1 s: the deliveries
                  keep up) and the deliveries the sink verified
  delivery-floor  mockery-delivery-floor: one of webhook-new's events POSTed
                  to the same sink, signed, over libcurl's multi interface with
                  kept-alive connections as the dispatchers send, at
                  webhook-new's rate in bursts of 32, no server running: the
                  HTTP round trip of a delivery alone (its CPU is per
                  delivery). Below the targets, per client count: a
                  delivery's CPU through the server (webhook-new's CPU per
                  payment less webhook-plain-new's), this floor, and what 0.8 x
                  leaves a delivery at the cores the webhook windows kept busy
  quiet-*         server-new-cold, server-new and server-replay again with
                  --log-level warn (no access log), on an empty database; both
                  servers run at once, and their warm and replay windows take
                  turns (ABBA, --rounds), so that log on / off is compared
                  over the same minutes

pgbench's scenarios run on a database of their own, empty when they start.
Prints one table (answers with a 2xx status per second, the count of any
other, p50, p99, the whole machine's CPU milliseconds per 2xx answer - every
process and core, busy time from /proc/stat over the window - ratios; for
server-new and mixed the mean claims/completions per statement), then the targets of issue 10, and writes it all as JSON
under bench/results/. A new-payment run with any non-2xx answer fails the run
(exit status 1). --memory N adds the server's peak RSS after N and N/10 new
payments.
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
BODY = ('{"transaction_id":"txn_0000000000000000000000000","status":"completed",'
        '"amount":10.50,"currency":"USD","customer_id":"cust-bench","description":null,'
        '"processed_at":"2026-11-27T23:20:01.966350Z","idempotency_key":"k"}')
PAYMENT = '{"amount":10.50,"currency":"USD","customer_id":"cust-bench"}'


def say(msg):
    print("==> " + msg, file=sys.stderr, flush=True)


def sql_of(name):
    """A statement of store/pg/pg_sql.c, as text with $n placeholders."""
    src = open(os.path.join(ROOT, "store", "pg", "pg_sql.c")).read()
    lit = r'"((?:[^"\\]|\\.)*)"'
    strings = {}  # macros of string literals and such macros, like CLAIM_INTO
    for m in re.finditer(r"#define (\w+)[ \t]*((?:[^\n]*\\\n)*[^\n]*)", src):
        body = m.group(2).replace("\\\n", " ")
        if re.fullmatch(r"\s*(?:(?:%s|[A-Z_]+)\s*)+" % lit, body):
            parts = re.findall(lit + r"|\b([A-Z_]+)\b", body)
            if all(not ident or ident in strings for _, ident in parts):
                strings[m.group(1)] = "".join(text if not ident else strings[ident]
                                              for text, ident in parts)
    m = re.search(r"static const char %s\[\] =(.*?);\n" % name, src, re.S)
    out = ""
    for s, mac, arg, ident in re.findall(lit + r'|(US_OF|TS_OF)\(\s*"([^"]+)"\)|\b([A-Z_]+)\b',
                                         m.group(1)):
        if mac == "US_OF":
            out += "(extract(epoch from %s) * 1000000)::bigint" % arg
        elif mac == "TS_OF":
            out += "(timestamptz 'epoch' + %s::bigint * interval '1 microsecond')" % arg
        elif ident:
            out += strings[ident].encode().decode("unicode_escape")
        else:
            out += s.encode().decode("unicode_escape")
    return out


def bind(sql, values):
    return re.sub(r"\$(\d+)", lambda m: values[int(m.group(1))], sql)


def pgbench_scripts(tmp):
    key = "('pgb-' || :run || '-' || :client_id::text || '-' || :n::text)"
    # $6: a downstream key of the server's shape (dk_ and 24 characters);
    # $7: no request kept (the in-process protocol: an asynchronous claim)
    claim = bind(sql_of("SQL_CLAIM"), {1: "'bench'", 2: key, 3: "'fp'", 4: "30000", 5: "86400000",
                                       6: "'dk_000000000000000000000000'", 7: "NULL"})
    complete = bind(sql_of("SQL_COMPLETE_PAYMENT"), {
        1: "'bench'", 2: key, 3: ":lease_token", 4: "201", 5: ":body",
        6: "'/api/v1/payments/txn_0000000000000000000000000'",
        7: "('txn_pgb_' || :run || '_' || :client_id::text || '_' || :n::text)", 8: "'cust-bench'", 9: "1050",
        10: "'USD'", 11: "NULL", 12: "'completed'", 13: "1700000000000000", 14: "'ch_bench'",
        15: "('evt_pgb_' || :run || '_' || :client_id::text || '_' || :n::text)",
        16: "'payment.succeeded'", 17: "1700000000000000", 18: ":body",
        19: "0"})
    new = ("\\set n random(1, 1000000000000)\n"
           "WITH c AS (%s) SELECT lease_token FROM c\n\\gset\n%s;\n" % (claim, complete))
    rkey = "('bench-replay-' || :n::text)"
    rclaim = bind(sql_of("SQL_CLAIM"), {1: "'default'", 2: rkey, 3: ":fp", 4: "30000",
                                        5: "86400000", 6: "'dk_000000000000000000000000'",
                                        7: "NULL"})
    read = bind(sql_of("SQL_READ"), {1: "'default'", 2: rkey, 3: ":fp"})
    replay = "\\set n random(1, :keys)\n%s;\n%s;\n" % (rclaim, read)
    paths = {}
    for name, text in (("new", new), ("replay", replay)):
        paths[name] = os.path.join(tmp, name + ".sql")
        with open(paths[name], "w") as f:
            f.write(text)
    paths["naive"] = os.path.join(BENCH, "naive.sql")
    return paths


def percentile(values, p):
    values = sorted(values)
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(len(values) * p / 100.0))]


def checkpoint(url):
    """Starts a scenario from a fresh checkpoint, so that none falls inside its
    few seconds (nor runs on from the scenario before): each sees the same WAL
    (full-page writes) and flush stalls. Needs a superuser; skipped if not."""
    subprocess.run(["psql", "-qAt", url, "-c", "CHECKPOINT"], capture_output=True)


def busy_seconds():
    """CPU time the whole machine has spent busy (every core, every process;
    /proc/stat: all but idle and iowait), in seconds."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def cpu_ms(busy, answers):
    """Milliseconds of the machine's CPU per answer over a window: the
    client, the server, the acquirer and PostgreSQL together."""
    return busy * 1000.0 / answers if answers else 0.0


def pgbench(url, script, clients, seconds, tmp, extra=()):
    checkpoint(url)
    logdir = tempfile.mkdtemp(dir=tmp)
    cmd = ["pgbench", "-n", "-M", "prepared", "-c", str(clients), "-j", "2", "-T", str(seconds),
           "-f", script, "-l", "--log-prefix", os.path.join(logdir, "log")] + list(extra) + [url]
    busy = busy_seconds()
    out = subprocess.run(cmd, capture_output=True, text=True)
    busy = busy_seconds() - busy
    if out.returncode != 0:
        raise SystemExit("pgbench failed: " + out.stderr[-2000:])
    tps = float(re.search(r"tps = ([\d.]+)", out.stdout).group(1))
    done = int(re.search(r"actually processed: (\d+)", out.stdout).group(1))
    lat = []
    for name in os.listdir(logdir):
        with open(os.path.join(logdir, name)) as f:
            for line in f:
                lat.append(int(line.split()[2]) / 1000.0)
    return {"rps": tps, "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
            "cpu_ms": cpu_ms(busy, done)}


def wrk_ms(text):
    v, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk_seconds(text):
    v, unit = re.match(r"([\d.]+)(ms|us|s|m|h)", text).groups()
    return float(v) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


def wrk(base, path, script, clients, seconds, args=(), url=None, every_answer=False):
    """A wrk run: rps counts the 2xx answers only, non_2xx the others (with
    every_answer, for a route answered 404 on purpose: rps counts them all)."""
    if url:
        checkpoint(url)
    cmd = ["wrk", "-t", "2", "-c", str(clients), "-d", "%ds" % seconds, "--latency",
           "--timeout", "10s"]
    if script:
        cmd += ["-s", os.path.join(BENCH, script)]
    cmd += [base + path]
    if args:
        cmd += ["--"] + list(args)
    busy = busy_seconds()
    out = subprocess.run(cmd, capture_output=True, text=True)
    busy = busy_seconds() - busy
    if out.returncode != 0:
        raise SystemExit("wrk failed: " + out.stderr[-2000:])
    text = out.stdout
    m = re.search(r"(\d+) requests in (\S+?),", text)
    requests, elapsed = int(m.group(1)), wrk_seconds(m.group(2))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                              text)
    res = {"non_2xx": int(errors.group(1)) if errors else 0,
           "socket_errors": sum(int(g) for g in socket_errors.groups()) if socket_errors else 0,
           "p50_ms": wrk_ms(re.search(r"\s50%\s+(\S+)", text).group(1)),
           "p99_ms": wrk_ms(re.search(r"\s99%\s+(\S+)", text).group(1))}
    res["rps"] = (requests - (0 if every_answer else res["non_2xx"])) / elapsed
    res["cpu_ms"] = cpu_ms(busy, res["rps"] * elapsed)
    if every_answer:
        res["non_2xx"] = 0
    m = re.search(r"OUTCOMES (\{.*\})", text)
    if m:
        res["outcomes"] = json.loads(m.group(1))
    return res


def free_port():
    # On every interface, as the server binds: a port free on 127.0.0.1 can
    # still be held on another loopback address (the attack tests bind
    # 127.0.0.2).
    s = socket.socket()
    s.bind(("", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def post(base, key):
    """POST one payment with key: (status, body)."""
    req = urllib.request.Request(base + "/api/v1/payments", data=PAYMENT.encode(),
                                 headers={"Content-Type": "application/json",
                                          "Idempotency-Key": key}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def settled(base, key):
    """A payment made as a client makes it: retried with the same key after a
    409 or a 503, 0.2 s later, 100 times at most (on a slowed machine a claim
    may wait past the pool's bound and be answered 503). Its answer once 200
    or 201: the body; anything else ends the run."""
    for _ in range(100):
        st, body = post(base, key)
        if st in (200, 201):
            return body
        if st not in (409, 503):
            raise SystemExit("payment %s failed with %d" % (key, st))
        time.sleep(0.2)
    raise SystemExit("payment %s not answered after 100 tries" % key)


def batch_counts(base):
    """The server's batch counters: {(series, kind): value}."""
    with urllib.request.urlopen(base + "/metrics") as r:
        text = r.read().decode()
    return {(m.group(1), m.group(2)): int(m.group(3)) for m in
            re.finditer(r'mockery_store_(batches|batched)_total\{kind="(\w+)"\} (\d+)', text)}


def batch_means(before, after):
    """Mean operations per statement, by kind, between two batch_counts."""
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return {kind: round(d[("batched", kind)] / max(d[("batches", kind)], 1), 1)
            for kind in ("claim", "complete")}


def with_batches(base, run):
    """run() under the server's batch counters: adds the mean batch sizes."""
    before = batch_counts(base)
    res = run()
    res["mean_batch"] = batch_means(before, batch_counts(base))
    return res


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def fresh_db(url, name, schema=False):
    """An empty database of this name on the cluster of url (dropped first if
    a run before left it), with the server's tables if schema; its URL."""
    def on(db):
        return urllib.parse.urlsplit(url)._replace(path="/" + db).geturl()
    for sql in ("DROP DATABASE IF EXISTS %s" % name, "CREATE DATABASE %s" % name):
        subprocess.run(["psql", "-qAt", on("postgres"), "-c", sql], check=True, capture_output=True)
    if schema:
        for f in sorted(os.listdir(os.path.join(ROOT, "sql"))):
            if f.endswith(".sql"):
                subprocess.run(["psql", "-qAt", "-v", "ON_ERROR_STOP=1", on(name), "-f",
                                os.path.join(ROOT, "sql", f)], check=True, capture_output=True)
    return on(name)


def drop_db(db_url):
    """Drops a database a scenario is done with, so that its autovacuum does
    not run beside the scenarios after it."""
    parts = urllib.parse.urlsplit(db_url)
    subprocess.run(["psql", "-qAt", parts._replace(path="/postgres").geturl(), "-c",
                    "DROP DATABASE IF EXISTS %s" % parts.path.lstrip("/")], capture_output=True)


class Process:
    """A program of the build that serves HTTP on a free port, its stderr
    written to a file; started when GET /health answers 200."""

    def __init__(self, args, program, flags, log_path):
        self.log = open(log_path, "w")
        self.proc = None
        # A port found free can be taken before the program binds it: try
        # another, a few times.
        for attempt in range(5):
            port = free_port()
            self.proc = subprocess.Popen([os.path.join(args.build_dir, program), "--port",
                                          str(port)] + list(flags), stderr=self.log)
            self.base = "http://127.0.0.1:%d" % port
            # The 60 s bound only turns a program that never becomes healthy
            # into a failure, never a silent start.
            end = time.time() + 60
            while time.time() < end and self.proc.poll() is None:
                try:
                    urllib.request.urlopen(self.base + "/health", timeout=5)
                    return
                except Exception:
                    time.sleep(0.1)
            if self.proc.poll() is None:
                self.proc.terminate()
                self.proc.wait(timeout=60)
                raise SystemExit("%s did not answer /health within 60 s: see %s" %
                                 (program, log_path))
        raise SystemExit("%s did not start: see %s" % (program, log_path))

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                # never left running: it holds the output ctest waits on
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Server(Process):
    """mockery-server with its default flags (plus extra), its stderr - the
    access log - written to a file, on the given database."""

    def __init__(self, args, url, log_path, extra=()):
        super().__init__(args, "mockery-server", ["--database-url", url] + list(extra), log_path)


class Acquirer(Process):
    """mockery-acquirer on a database of its own."""

    def __init__(self, args, url, log_path):
        super().__init__(args, "mockery-acquirer", ["--database-url", url, "--quiet"], log_path)


def acquirer_counts(base):
    """The server's asks to its acquirer, and the connections they opened."""
    with urllib.request.urlopen(base + "/metrics") as r:
        text = r.read().decode()
    asks = sum(int(m.group(1)) for m in re.finditer(
        r'mockery_acquirer_calls_total\{[^}]*\} (\d+)', text))
    conns = re.search(r"mockery_acquirer_connections_opened_total (\d+)", text)
    return asks, int(conns.group(1)) if conns else 0


def acquirer_runs(args, url, tmp, c, run, row):
    """New payments through mockery-acquirer (its own database on the same
    cluster): a server with its default flags and --acquirer-url, on an
    empty database; asks and TCP connections to the acquirer counted."""
    acq = srv = None
    adb = fresh_db(url, "bench_acquirer_c%d" % c)
    sdb = fresh_db(url, "bench_acq_server_c%d" % c)
    try:
        acq = Acquirer(args, adb, os.path.join(tmp, "acquirer-c%d.log" % c))
        srv = Server(args, sdb, os.path.join(tmp, "acq-server-c%d.log" % c),
                     ["--acquirer-url", acq.base])
        say("server pid %d asking acquirer pid %d, %d clients, empty databases" %
            (srv.proc.pid, acq.proc.pid, c))
        before = acquirer_counts(srv.base)
        res = with_batches(srv.base, lambda: wrk(
            srv.base, "/api/v1/payments", "new.lua", c, args.duration,
            ["%sa%d" % (run, c)], url=sdb))
        after = acquirer_counts(srv.base)
        res["acquirer_asks"] = after[0] - before[0]
        res["acquirer_connections"] = after[1] - before[1]
        row["acquirer-new"] = res
        txns = os.path.join(tmp, "refund-txns-c%d" % c)
        with open(txns, "w") as f:
            for i in range(PAYMENTS_TO_REFUND):
                f.write(json.loads(settled(srv.base, "bench-refunded-%s-%d" % (run, i)))
                        ["transaction_id"] + "\n")
        before = acquirer_counts(srv.base)
        res = wrk(srv.base, "/", "refund.lua", c, args.duration, ["%sr%d" % (run, c), txns],
                  url=sdb)
        after = acquirer_counts(srv.base)
        res["acquirer_asks"] = after[0] - before[0]
        res["acquirer_connections"] = after[1] - before[1]
        row["acquirer-refund"] = res
    finally:
        for p in (srv, acq):
            if p:
                p.stop()
        drop_db(sdb)
        drop_db(adb)


def backlog(db):
    """Deliveries not made yet, and the oldest one's age in seconds."""
    out = subprocess.run(["psql", "-qAt", "-F", " ", db, "-c",
                          "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)"
                          " FROM webhook_deliveries WHERE state = 'pending'"],
                         check=True, capture_output=True, text=True).stdout.split()
    return int(out[0]), float(out[1])


def event_file(srv, tmp):
    """One of the server's events, as GET /api/v1/events/{id} sends it, in
    a file."""
    with urllib.request.urlopen(srv.base + "/api/v1/events?limit=1") as r:
        events = json.loads(r.read())["events"]
    if not events:
        raise SystemExit("webhook-new: the server has no event to send again")
    event_id = events[0]["id"]
    with urllib.request.urlopen(srv.base + "/api/v1/events/" + event_id) as r:
        body = r.read()
    path = os.path.join(tmp, "event.json")
    with open(path, "wb") as f:
        f.write(body)
    return path


def delivery_floor(args, path, port, secret, rate):
    """The HTTP round trip of a delivery alone: mockery-delivery-floor
    sends the event in path, signed, to the sink at the rate the payments
    were made (bursts of 32, a claim's most: WEBHOOK_CLAIM), while no
    server runs. CPU is the machine's per delivery answered 2xx."""
    busy = busy_seconds()
    out = subprocess.run([os.path.join(args.build_dir, "mockery-delivery-floor"),
                          "http://127.0.0.1:%d/hooks" % port, secret, path, str(args.duration),
                          "%.0f" % max(rate, 1), "32"], capture_output=True, text=True)
    busy = busy_seconds() - busy
    if not out.stdout.strip():
        raise SystemExit("mockery-delivery-floor failed: " + out.stderr[-2000:])
    res = json.loads(out.stdout)
    # Deliveries not begun (every slot busy: a slow machine) are no error,
    # only a lower rate; an answer other than 2xx is.
    return {"rps": res["delivered"] / res["seconds"], "non_2xx": res["other"],
            "not_begun": res["not_begun"], "cpu_ms": cpu_ms(busy, res["delivered"])}


def webhook_runs(args, url, tmp, c, run, row):
    """New payments with one webhook endpoint subscribed and a local
    receiver, against the same server with none, their windows alternating;
    after each window the deliveries must have kept up."""
    servers, sink = {}, None
    try:
        for name in ("plain", "webhook"):
            db = fresh_db(url, "bench_wh_%s_c%d" % (name, c))
            servers[name] = Server(args, db, os.path.join(tmp, "wh-%s-c%d.log" % (name, c)),
                                   ["--webhook-allow-private", "true"] if name == "webhook" else [])
            servers[name].db = db
        srv = servers["webhook"]
        port = free_port()
        req = urllib.request.Request(
            srv.base + "/api/v1/webhook_endpoints", method="POST",
            data=json.dumps({"url": "http://127.0.0.1:%d/hooks" % port}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as r:
            secret = json.loads(r.read())["secret"]
        sink = subprocess.Popen([os.path.join(args.build_dir, "mockery-webhook-sink"), "--listen",
                                 "127.0.0.1:%d" % port, "--secret", secret],
                                stdout=subprocess.PIPE, text=True)
        say("webhook: server pid %d delivering to sink pid %d; plain pid %d; %d clients" %
            (srv.proc.pid, sink.pid, servers["plain"].proc.pid, c))
        behind = []

        def window(name, s, r, t):
            res = wrk(s.base, "/api/v1/payments", "new.lua", c, t,
                      ["%sw%s%d%d" % (run, name[0], c, r)], url=s.db)
            if name == "webhook":
                behind.append(backlog(s.db))
            return res

        res = alternating(servers, args.duration, args.rounds, window)
        row["webhook-plain-new"] = res["plain"]
        row["webhook-new"] = res["webhook"]
        row["webhook-new"]["backlog_at_end"] = behind
        path = event_file(srv, tmp)
        # Nothing else on the machine while the floor runs: no server, no
        # database of theirs (nor its autovacuum), no checkpoint due.
        for s in servers.values():
            s.stop()
            drop_db(s.db)
        checkpoint(url)
        sink_base = "http://127.0.0.1:%d/" % port
        row["webhook-new"]["sink"] = sink_counts(sink_base)
        row["delivery-floor"] = delivery_floor(args, path, port, secret, row["webhook-new"]["rps"])
        after = sink_counts(sink_base)
        row["delivery-floor"]["sink"] = {k: after[k] - row["webhook-new"]["sink"][k]
                                         for k in ("deliveries", "verified")}
    finally:
        for s in servers.values():
            s.stop()
        if sink:
            sink.terminate()
            sink.communicate(timeout=60)
        for s in servers.values():
            drop_db(s.db)


def sink_counts(base):
    """mockery-webhook-sink's counts so far (GET)."""
    with urllib.request.urlopen(base) as r:
        return json.loads(r.read())


# Payments the refund row spreads its refunds over: at 0.01 each, a payment
# of 10.50 takes 1,050, so 200 hold far more than a window makes.
PAYMENTS_TO_REFUND = 200


def preload(base, n):
    """n completed keys to replay."""
    for i in range(1, n + 1):
        settled(base, "bench-replay-%d" % i)


def fingerprint(url):
    return subprocess.run(["psql", "-tA", url, "-c",
                           "SELECT fingerprint FROM idempotency_keys WHERE tenant_id = 'default'"
                           " AND idempotency_key = 'bench-replay-1'"],
                          check=True, capture_output=True, text=True).stdout.strip()


def merged(runs):
    """One result from several equally long wrk runs of one scenario: the
    mean rate, the answers not 2xx added up, p50 the mean, p99 the worst."""
    n = len(runs)
    return {"rps": sum(r["rps"] for r in runs) / n,
            "non_2xx": sum(r["non_2xx"] for r in runs),
            "socket_errors": sum(r["socket_errors"] for r in runs),
            "p50_ms": sum(r["p50_ms"] for r in runs) / n,
            "p99_ms": max(r["p99_ms"] for r in runs),
            "cpu_ms": sum(r["cpu_ms"] for r in runs) / n, "windows": n}


def alternating(servers, seconds, rounds, run_one):
    """run_one(name, server, round, seconds) for each server in turn, in
    ABBA order, so that whatever drifts (the disk, the tables' size) falls on
    each alike; each server's windows merged, with its mean batch sizes."""
    windows = max(1, seconds // rounds)
    before = {name: batch_counts(srv.base) for name, srv in servers.items()}
    runs = {name: [] for name in servers}
    for r in range(rounds):
        order = list(servers) if r % 2 == 0 else list(reversed(list(servers)))
        for name in order:
            runs[name].append(run_one(name, servers[name], r, windows))
    out = {}
    for name, srv in servers.items():
        out[name] = merged(runs[name])
        out[name]["mean_batch"] = batch_means(before[name], batch_counts(srv.base))
    return out


def server_runs(args, url, tmp, c, run, row):
    """The server's scenarios at c clients, and beside it (unless
    --no-quiet) the same server with --log-level warn (the quiet-* rows),
    each on an empty database of its own. The cold windows run one after
    the other; the warm and replay windows alternate between the two."""
    names = ["server"] + ([] if args.no_quiet else ["quiet"])
    servers = {}
    try:
        for name in names:
            db = fresh_db(url, "bench_%s_c%d" % (name, c))
            servers[name] = Server(args, db, os.path.join(tmp, "%s-c%d.log" % (name, c)),
                                   ["--log-level", "warn"] if name == "quiet" else [])
            servers[name].db = db
            say("%s pid %d on %s, %d clients, empty database" %
                (name, servers[name].proc.pid, servers[name].base, c))

        def tag(name, what):
            return "%s%s%d%s" % (run, name[0], c, what)

        # cold: the first seconds on each empty database
        for name, srv in servers.items():
            row[name + "-new-cold"] = with_batches(srv.base, lambda: wrk(
                srv.base, "/api/v1/payments", "new.lua", c, args.cold, [tag(name, "a")],
                url=srv.db))
        # warm: right after, the two servers taking turns
        res = alternating(servers, args.duration, args.rounds, lambda name, srv, r, t: wrk(
            srv.base, "/api/v1/payments", "new.lua", c, t, [tag(name, "b%d" % r)]))
        for name in names:
            row[name + "-new"] = res[name]
        for srv in servers.values():
            preload(srv.base, args.replay_keys)
        checkpoint(servers["server"].db)
        res = alternating(servers, args.duration, args.rounds, lambda name, srv, r, t: wrk(
            srv.base, "/api/v1/payments", "replay.lua", c, t, [str(args.replay_keys)]))
        for name in names:
            res[name].pop("mean_batch")  # replays make no batches
            row[name + "-replay"] = res[name]
        base, db, d = servers["server"].base, servers["server"].db, args.duration
        row["ceiling-replay"] = pgbench(db, args.scripts["replay"], c, d, tmp,
                                        ["-D", "keys=%d" % args.replay_keys,
                                         "-D", "fp=" + fingerprint(db)])
        row["http-floor"] = wrk(base, "/bench-floor", None, c, d, url=db, every_answer=True)
        row["mixed"] = with_batches(base, lambda: wrk(
            base, "/api/v1/payments", "mixed.lua", c, d, [tag("server", "m")], url=db))
        if args.memory and c == args.conns[-1]:
            args.memory_result = measure_memory(base, servers["server"].proc.pid, args.memory, c)
    finally:
        for srv in servers.values():
            srv.stop()
            drop_db(srv.db)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build"))
    ap.add_argument("--database-url",
                    help="use this cluster (its user must create databases) instead of one of its own")
    ap.add_argument("--duration", type=int, default=10, help="seconds per scenario (10)")
    ap.add_argument("--cold", type=int, default=10,
                    help="seconds of the cold window on an empty database (10)")
    ap.add_argument("--connections", default="16,32", help="client counts (16,32)")
    ap.add_argument("--no-quiet", action="store_true", help="leave out the --log-level warn rows")
    ap.add_argument("--rounds", type=int, default=2,
                    help="warm and replay windows alternate between the server and its quiet\n"
                         "twin in this many turns each (ABBA...), --duration in all (2)")
    ap.add_argument("--replay-keys", type=int, default=1000)
    ap.add_argument("--memory", type=int, default=0,
                    help="also measure peak RSS after N/10 and N new payments")
    ap.add_argument("--smoke", action="store_true", help="1-2 s per scenario, 4 clients: it runs")
    ap.add_argument("--out", default=os.path.join(BENCH, "results"))
    args = ap.parse_args()
    if args.smoke:
        args.duration, args.cold, args.connections, args.replay_keys = 2, 1, "4", 50
        args.rounds = 2
    args.conns = [int(c) for c in args.connections.split(",")]
    args.memory_result = None

    tmp = tempfile.mkdtemp(prefix="mockery-bench.")
    cluster = None
    url = args.database_url
    if not url:
        cluster = "bench-%d" % os.getpid()
        url = subprocess.run(["bash", os.path.join(ROOT, "scripts", "dev"), "cluster", cluster, "up"],
                             check=True, capture_output=True, text=True).stdout.strip()
    results = []
    try:
        args.scripts = pgbench_scripts(tmp)
        args.pg_settings = pg_settings(url)
        run = "%d" % time.time()
        d = args.duration
        for c in args.conns:
            row = {}
            say("%d clients: pgbench on an empty database" % c)
            pdb = fresh_db(url, "bench_pgbench_c%d" % c, schema=True)
            # (the body travels as a variable: pgbench would read its colons as ones)
            row["naive-new"] = pgbench(pdb, args.scripts["naive"], c, d, tmp,
                                       ["-D", "body=" + BODY, "-D", "run=%sn%d" % (run, c)])
            row["ceiling-new"] = pgbench(pdb, args.scripts["new"], c, d, tmp,
                                         ["-D", "body=" + BODY, "-D", "run=%sc%d" % (run, c)])
            drop_db(pdb)
            server_runs(args, url, tmp, c, run, row)
            acquirer_runs(args, url, tmp, c, run, row)
            webhook_runs(args, url, tmp, c, run, row)
            for name, r in row.items():
                r.update({"scenario": name, "clients": c})
                results.append(r)
    finally:
        if cluster:
            subprocess.run(["bash", os.path.join(ROOT, "scripts", "dev"), "cluster", cluster, "down"],
                           capture_output=True)
    sys.exit(report(results, args.memory_result, args))


def measure_memory(base, pid, n, clients):
    """Peak RSS after n/10 and after n new payments (wrk with a request cap)."""
    out = {}
    done = 0
    for target in (n // 10, n):
        script = os.path.join(tempfile.mkdtemp(), "cap.lua")
        with open(os.path.join(BENCH, "new.lua")) as f:
            text = f.read()
        with open(script, "w") as f:
            f.write(text)
        need = target - done
        say("memory: %d more new payments" % need)
        start = time.time()
        # wrk has no request cap: run until the server has counted enough.
        proc = subprocess.Popen(["wrk", "-t", "2", "-c", str(clients), "-d", "3600s", "-s", script,
                                 base + "/api/v1/payments", "--", "mem%d" % target],
                                stdout=subprocess.DEVNULL)
        while True:
            time.sleep(1)
            with urllib.request.urlopen(base + "/metrics") as r:
                m = re.search(r'mockery_payments_total\{status="completed"\} (\d+)', r.read().decode())
            if int(m.group(1)) >= target or time.time() - start > 3000:
                break
        proc.terminate()
        proc.wait()
        done = target
        out["rss_kb_after_%d" % target] = rss_kb(pid)
    return out


def pg_settings(url):
    """The cluster settings the figures depend on (docs/operations.md: PostgreSQL settings)."""
    names = ("wal_init_zero", "synchronous_commit", "fsync", "full_page_writes", "shared_buffers",
             "max_wal_size")
    out = subprocess.run(["psql", "-qAt", "-F", "=", url, "-c",
                          "SELECT name, setting || coalesce(unit, '') FROM pg_settings"
                          " WHERE name IN (%s) ORDER BY name" % ",".join("'%s'" % n for n in names)],
                         check=True, capture_output=True, text=True).stdout.split()
    return dict(line.split("=", 1) for line in out)


def report(results, memory, args):
    """Prints the table and the targets; returns the exit status."""
    print("PostgreSQL: " + " ".join("%s=%s" % kv for kv in sorted(args.pg_settings.items())))
    by = {(r["scenario"], r["clients"]): r for r in results}

    def ratio(a, b, c, key="rps"):
        if (a, c) in by and (b, c) in by and by[(b, c)][key]:
            return by[(a, c)][key] / by[(b, c)][key]
        return None

    refs = {"webhook-new": "webhook-plain-new", "webhook-plain-new": "naive-new",
            "server-new": "naive-new", "acquirer-new": "naive-new", "acquirer-refund": "naive-new", "server-new-cold": "naive-new", "quiet-new": "naive-new",
            "quiet-new-cold": "naive-new", "mixed": "naive-new", "ceiling-new": "naive-new",
            "server-replay": "ceiling-replay", "quiet-replay": "ceiling-replay"}
    print("%-16s %7s %9s %7s %8s %8s %7s  %s" % ("scenario", "clients", "2xx/s", "other",
                                                "p50 ms", "p99 ms", "cpu ms", "ratio"))
    failed = []
    for r in results:
        c, name = r["clients"], r["scenario"]
        text = ""
        if name in refs and ratio(name, refs[name], c):
            text = "%.2f x %s" % (ratio(name, refs[name], c), refs[name])
        if "mean_batch" in r:
            text += "  batch %.1f/%.1f" % (r["mean_batch"]["claim"], r["mean_batch"]["complete"])
        if "outcomes" in r:
            text += "  outcomes " + json.dumps(r["outcomes"], sort_keys=True)
        if "backlog_at_end" in r:
            text += "  undelivered after each window: %s" % ", ".join(
                "%d (oldest %.2f s)" % b for b in r["backlog_at_end"])
        if "sink" in r:
            text += "%ssink verified %d of %d" % ("; " if text else "", r["sink"].get("verified", 0),
                                                 r["sink"].get("deliveries", 0))
        if r.get("not_begun"):
            text += "; %d not begun (every slot busy)" % r["not_begun"]
        if "acquirer_asks" in r:
            text += "  asks %d, connections %d" % (r["acquirer_asks"], r["acquirer_connections"])
            if r["acquirer_connections"] > 2 * c:
                failed.append("%s at %d clients: %d connections to the acquirer for %d asks" %
                              (name, c, r["acquirer_connections"], r["acquirer_asks"]))
        other = r.get("non_2xx", 0) + r.get("socket_errors", 0)
        if name.endswith(("-new", "-new-cold")) or name in ("acquirer-refund", "delivery-floor"):
            if other and name.startswith(("server", "quiet", "acquirer", "webhook", "delivery")):
                failed.append("%s at %d clients: %d answers not 2xx (or socket errors)" %
                              (name, c, other))
        print("%-16s %7d %9.0f %7s %8s %8s %7s  %s" % (
            name, c, r["rps"], other if "non_2xx" in r else "-",
            "%.2f" % r["p50_ms"] if "p50_ms" in r else "-",
            "%.2f" % r["p99_ms"] if "p99_ms" in r else "-",
            "%.3f" % r["cpu_ms"] if "cpu_ms" in r else "-", text))
    print()
    print("targets (issue 10):")
    for c in args.conns:
        checks = [
            ("server-new warm / naive-new >= 1.3", ratio("server-new", "naive-new", c), 1.3, 1),
            ("server-new cold / warm >= 0.8", ratio("server-new-cold", "server-new", c), 0.8, 1),
            ("server-new, log on / off >= 0.95", ratio("server-new", "quiet-new", c), 0.95, 1),
            ("server-replay, log on / off >= 0.95", ratio("server-replay", "quiet-replay", c),
             0.95, 1),
            ("server-replay / ceiling-replay >= 1.0", ratio("server-replay", "ceiling-replay", c),
             1.0, 1),
            ("server-new p99 / naive-new p99 <= 2", ratio("server-new", "naive-new", c, "p99_ms"),
             2.0, -1),
            ("acquirer-new / naive-new >= 1.0 (issue 24)", ratio("acquirer-new", "naive-new", c),
             1.0, 1),
            ("webhook-new / webhook-plain-new >= 0.8 (25)",
             ratio("webhook-new", "webhook-plain-new", c), 0.8, 1),
            ("webhook oldest undelivered after a window < 1 s",
             max((b[1] for b in by[("webhook-new", c)]["backlog_at_end"]), default=None)
             if ("webhook-new", c) in by else None, 1.0, -1),
        ]
        for label, value, bound, sense in checks:
            if value is None:
                continue
            met = value >= bound if sense > 0 else value <= bound
            print("  %2d clients  %-40s %5.2f  %s" % (c, label, value, "met" if met else "MISSED"))
    for c in args.conns:
        plain, hook, floor = (by.get((n, c)) for n in ("webhook-plain-new", "webhook-new",
                                                       "delivery-floor"))
        if plain and hook and floor and plain["rps"] and plain["cpu_ms"]:
            # Cores busy = rate x CPU per answer. At 0.8 x with the webhook
            # windows' cores busy (k times the plain ones'), a payment and
            # its delivery may cost 1.25 k times a plain payment.
            busy_p = plain["rps"] * plain["cpu_ms"] / 1000
            busy_w = hook["rps"] * hook["cpu_ms"] / 1000
            allows = plain["cpu_ms"] * (1.25 * busy_w / busy_p - 1)
            print("  %2d clients  CPU ms per delivery: %.3f through the server, the HTTP round trip"
                  " alone %.3f; 0.8 x allows %.3f (cores busy %.2f plain, %.2f webhook)" % (
                      c, hook["cpu_ms"] - plain["cpu_ms"], floor["cpu_ms"], allows, busy_p,
                      busy_w))
    if memory:
        for k, v in memory.items():
            print("%s: %d KiB" % (k, v))
    for f in failed:
        print("FAILED: " + f)
    if not args.smoke:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + ".json")
        with open(path, "w") as f:
            json.dump({"machine": {"cores": os.cpu_count()}, "duration_s": args.duration,
                       "cold_s": args.cold, "server_flags": "defaults",
                       "postgresql": args.pg_settings,
                       "results": results, "memory": memory}, f, indent=1)
        say("written " + os.path.relpath(path, ROOT))
    return 1 if failed else 0


if __name__ == "__main__":
    main()

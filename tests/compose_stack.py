#!/usr/bin/env python3
"""compose_stack.py - the docker compose stack, started for real.

What a Debian 12 user types (README and docs/operations.md: Docker compose), run against a real
Docker engine, then checked through the published ports:

  scripts/dev docker up        an engine (started here if none answers) and
                               the base images, made when they are missing
  docker-compose up -d --build the project's image from the Dockerfile;
                               postgres, acquirer-db, acquirer, server-1,
                               server-2, haproxy (the front door,
                               127.0.0.1:8080), prometheus
  docker-compose --profile demo run --rm demo   at once, while the servers
                               start: through the front door, waits for the
                               servers, shows the window closed at the
                               acquirer, prints one charge there per payment,
                               its 10 events received at its own webhook
                               endpoint (signed, through the servers'
                               dispatchers) and "double charges: 0"
  - a payment through the front door, replayed through it byte for byte by
    the same replica, and by the other replica (on its debugging port);
  - GETs through the front door reach both replicas;
  - Prometheus scraping both servers, with the shipped rules loaded;
  docker-compose exec -T postgres psql -U mockery mockery   counts the rows,
  and psql inside acquirer-db the charges in the acquirer's ledger
  - server-1 recreated with a 20 s processor (tests/compose_slow_server1.yml)
    and stopped while it runs a payment sent through the front door: the
    payment is answered after its log says "stopping" (SIGTERM drains),
    server-1 exits 0, the retry through the front door is replayed by
    server-2, and new payments through it are all answered 201 (server-1
    runs the in-process simulator for this: the stack's servers give the
    acquirer 5 s);
  docker-compose down -v       leaves no container, volume or network

The project name is COMPOSE_PROJECT_NAME=mockery-stack-test, so that a stack
of the user's own (the folder's name) is not touched; the ports are the
compose file's, and the test fails at once, saying so, when one is taken.
Where no engine can be started the test fails with scripts/dev's message.

usage: compose_stack.py REPO_ROOT
"""
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

PROJECT = "mockery-stack-test"
FRONT = 8080  # haproxy
PORTS = {"front door": FRONT, "server-1": 8081, "server-2": 8082, "prometheus": 9090}


class Failure(Exception):
    pass


def log(msg):
    print("compose_stack: " + msg, flush=True)


def run(args, root, check=True, timeout=900, quiet=False):
    """Runs a command in the repository; its output, or a Failure."""
    if not quiet:
        log("$ " + " ".join(args))
    res = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise Failure("%s exited %d:\n%s%s" % (" ".join(args), res.returncode, res.stdout,
                                                res.stderr[-4000:]))
    return res


def lower(headers):
    """The headers with their names in lower case (haproxy sends them so)."""
    return {k.lower(): v for k, v in headers.items()}


def http(method, url, body=None, headers=None, timeout=30):
    """(status, headers, body bytes); status 0 and the reason when no answer came."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, lower(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, lower(e.headers), e.read()
    except (urllib.error.URLError, OSError) as e:
        return 0, {}, str(e).encode()


def post_payment(port, key, customer, amount="12.34", body=None):
    body = body or json.dumps({"amount": float(amount), "currency": "EUR", "customer_id": customer,
                               "description": "compose stack test"}).encode()
    return http("POST", "http://127.0.0.1:%d/api/v1/payments" % port, body,
                {"Content-Type": "application/json", "Idempotency-Key": key}, timeout=60)


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def port_taken(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_healthy(deadline_s=180):
    """Both servers' /health answer 200 through their own ports, and the
    front door has answered 200 from each of them (haproxy's checks have
    marked both up: a replica just recreated is not in its rotation yet)."""
    end = time.time() + deadline_s
    last, through = {}, set()
    while time.time() < end:
        for name in ("server-1", "server-2"):
            status, _, body = http("GET", "http://127.0.0.1:%d/health" % PORTS[name], timeout=5)
            last[name] = (status, body[:200])
        status, headers, body = http("GET", "http://127.0.0.1:%d/health" % FRONT, timeout=5)
        last["front door"] = (status, body[:200])
        if status == 200:
            through.add(headers.get("x-mockery-replica"))
        if all(s == 200 for s, _ in last.values()) and {"server-1", "server-2"} <= through:
            return
        time.sleep(0.2)
    raise Failure("the servers did not become healthy (through the front door: %s) in %d s: %r"
                  % (sorted(filter(None, through)), deadline_s, last))


def psql(root, sql, service="postgres", user="mockery"):
    res = run(["docker-compose", "exec", "-T", service, "psql", "-U", user, user, "-Atc", sql],
              root)
    return res.stdout.strip()


def ledger(root, sql):
    """psql on the acquirer's own database server."""
    return psql(root, sql, service="acquirer-db", user="acquirer")


def replay_across_servers(root, run_id):
    """A payment through the front door; its retry through the front door
    (the same replica: haproxy hashes the key) and on the other replica's
    own port: the same bytes each time."""
    key = "stack-%s-replay" % run_id
    cust = "cust-stack-%s" % run_id
    s1, h1, b1 = post_payment(FRONT, key, cust)
    check(s1 == 201, "front door: POST -> %d %r" % (s1, b1[:300]))
    first = h1.get("x-mockery-replica")
    check(first in ("server-1", "server-2"), "the front door named no replica: %r" % h1)
    other = "server-2" if first == "server-1" else "server-1"
    for where, port in (("the front door", FRONT), (other, PORTS[other])):
        s2, h2, b2 = post_payment(port, key, cust)
        check(s2 == 200, "%s: the retry -> %d %r" % (where, s2, b2[:300]))
        check(h2.get("x-idempotent-replay") == "true",
              "%s's answer is not marked as a replay: %r" % (where, h2))
        check(b1 == b2, "%s replayed other bytes:\n%r\n%r" % (where, b1, b2))
        check(h1.get("location") == h2.get("location"),
              "Location %r then %r" % (h1.get("location"), h2.get("location")))
        if port == FRONT:
            check(h2.get("x-mockery-replica") == first,
                  "the retry went to %r, the payment to %r" % (h2.get("x-mockery-replica"), first))
    txn = json.loads(b1)["transaction_id"]
    log("payment %s through the front door (on %s), replayed byte for byte through it "
        "and by %s" % (txn, first, other))
    # Requests without a key are spread over both replicas.
    seen = set()
    for _ in range(10):
        status, h, _ = http("GET", "http://127.0.0.1:%d/health" % FRONT, timeout=10)
        check(status == 200, "GET /health through the front door -> %d" % status)
        seen.add(h.get("x-mockery-replica"))
    check(seen == {"server-1", "server-2"}, "10 GETs through the front door reached %s" % seen)
    log("GETs through the front door reach both replicas")
    return txn


def key_on(replica, run_id):
    """An Idempotency-Key that the front door sends to replica: found by
    POSTs of an empty body, which every replica refuses (422) without
    claiming the key or writing anything."""
    for i in range(64):
        key = "stack-%s-on-%s-%d" % (run_id, replica, i)
        status, h, body = post_payment(FRONT, key, None, body=b"{}")
        check(status in (400, 422), "the probe POST {} -> %d %r" % (status, body[:200]))
        if h.get("x-mockery-replica") == replica:
            return key
    raise Failure("64 keys, none sent to %s by the front door" % replica)


def prometheus_sees_both_servers(deadline_s=60):
    url = "http://127.0.0.1:%d/api/v1/query?query=up%%7Bjob%%3D%%22mockery%%22%%7D" % \
        PORTS["prometheus"]
    end = time.time() + deadline_s
    ups = None
    while time.time() < end:
        status, _, body = http("GET", url, timeout=5)
        if status == 200:
            result = json.loads(body)["data"]["result"]
            ups = sorted((r["metric"]["instance"], r["value"][1]) for r in result)
            if ups == [("server-1:8080", "1"), ("server-2:8080", "1")]:
                break
        time.sleep(1)
    check(ups == [("server-1:8080", "1"), ("server-2:8080", "1")],
          "Prometheus's up{job=\"mockery\"}: %r" % ups)
    status, _, body = http("GET", "http://127.0.0.1:%d/api/v1/rules" % PORTS["prometheus"])
    check(status == 200, "Prometheus /api/v1/rules -> %d" % status)
    rules = [r["name"] for g in json.loads(body)["data"]["groups"] for r in g["rules"]]
    # every rule of the shipped file, whatever their number
    shipped = re.findall(r"^\s*- alert: (\w+)",
                         open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
                             __file__))), "prometheus", "alerts.yml")).read(), re.M)
    check(len(shipped) >= 6 and sorted(rules) == sorted(shipped),
          "the stack's Prometheus loaded these rules: %r, alerts.yml has %r" % (rules, shipped))
    log("Prometheus scrapes server-1 and server-2 (up = 1) with %d rules" % len(rules))


def demo(root):
    res = run(["docker-compose", "--profile", "demo", "run", "--rm", "demo"], root, check=False)
    out = res.stdout
    check(res.returncode == 0 and "\ndouble charges: 0\n" in out
          and "one charge at the acquirer, the payment's: yes" in out
          and "8 charges at the acquirer for 8 payments" in out
          and "  10 events of this run, 10 received (" in out,
          "the demo exited %d:\n%s%s" % (res.returncode, out[-3000:], res.stderr[-2000:]))
    log("the demo showed the window closed at the acquirer, one charge there per payment, "
        "its 10 events delivered to its own webhook endpoint through the stack's servers, "
        "signed, and printed 'double charges: 0'")


def stop_during_slow_payment(root, run_id):
    """server-1 is stopped while a payment runs: it answers it, then exits 0.

    server-1 is recreated first with a 20 s simulated processor
    (compose_slow_server1.yml), so that the stop lands while the payment is
    in flight however slowly this machine starts the docker CLI; the test
    waits for the key to be 'processing' in the database before it stops
    the server, and proves the order from server-1's own log: the
    "stopping" line comes before the payment's access-log line."""
    slow = ["docker-compose", "-f", "docker-compose.yml", "-f", "tests/compose_slow_server1.yml"]
    run(slow + ["up", "-d", "--no-deps", "server-1"], root)
    wait_healthy()
    key = key_on("server-1", run_id)
    cust = "cust-slow-stack-%s" % run_id
    answer = {}

    def pay():
        answer["r"] = post_payment(FRONT, key, cust)

    t = threading.Thread(target=pay)
    t.start()
    # In flight: its key is claimed ('processing') in the database. The
    # 60 s bound only turns a claim that never comes into a failure.
    state = ""
    end = time.time() + 60
    while time.time() < end:
        state = psql(root, "SELECT state FROM idempotency_keys WHERE idempotency_key = '%s'" % key)
        if state:
            break
        time.sleep(0.2)
    check(state == "processing", "the slow payment's key: %r, want 'processing'" % state)
    started = time.time()
    run(slow + ["stop", "server-1"], root)
    t.join(120)
    check(not t.is_alive(), "the payment in flight when server-1 stopped was never answered")
    status, headers, body = answer["r"]
    check(status == 201, "the payment in flight when server-1 stopped got %d %r" %
          (status, body[:300]))
    check(headers.get("x-mockery-replica") == "server-1",
          "the slow payment was answered by %r" % headers.get("x-mockery-replica"))
    lines = run(slow + ["logs", "--no-color", "server-1"], root, quiet=True).stdout.splitlines()
    # (the drain's start: the stop logs more "stopping: ..." lines later,
    # as connections it closes turn idle - the payment's own among them)
    stopping = [i for i, l in enumerate(lines)
                if '"msg":"stopping: finishing requests in flight"' in l]
    answered = [i for i, l in enumerate(lines)
                if '"msg":"request"' in l and '"key":"%s"' % key in l and '"status":201' in l]
    check(stopping and answered and stopping[-1] < answered[-1],
          "server-1's log does not show the payment answered after the stop began "
          "(stopping at %r, the payment's line at %r):\n%s" %
          (stopping, answered, "\n".join(lines[-20:])))
    cid = run(["docker-compose", "ps", "-q", "server-1"], root).stdout.strip()
    state = json.loads(run(["docker", "inspect", cid], root, quiet=True).stdout)[0]["State"]
    check(not state["Running"] and state["ExitCode"] == 0,
          "server-1 after docker-compose stop: running %s, exit code %s" %
          (state["Running"], state["ExitCode"]))
    # The retry through the front door reaches the other server and gets
    # the same payment; new payments through it are all answered.
    s2, h2, b2 = post_payment(FRONT, key, cust)
    check(s2 == 200 and b2 == body and h2.get("x-mockery-replica") == "server-2",
          "the retry through the front door after the stop: %d from %r %r"
          % (s2, h2.get("x-mockery-replica"), b2[:300]))
    for i in range(10):
        s3, h3, b3 = post_payment(FRONT, "stack-%s-after-stop-%d" % (run_id, i),
                                  "cust-stack-%s" % run_id)
        check(s3 == 201 and h3.get("x-mockery-replica") == "server-2",
              "payment %d through the front door with server-1 stopped: %d from %r %r"
              % (i, s3, h3.get("x-mockery-replica"), b3[:300]))
    log("server-1 stopped in %.1f s while a payment sent through the front door ran: "
        "answered 201 after its 'stopping' line and exited 0; the retry through the front "
        "door replayed by server-2; 10 new payments answered 201 by server-2"
        % (time.time() - started))
    return json.loads(body)["transaction_id"]


def nothing_left(root):
    """After down -v: no container, volume or network of the project."""
    label = "label=com.docker.compose.project=%s" % PROJECT
    left = {}
    for kind, cmd in (("containers", ["docker", "ps", "-aq", "--filter", label]),
                      ("volumes", ["docker", "volume", "ls", "-q", "--filter", label]),
                      ("networks", ["docker", "network", "ls", "-q", "--filter", label])):
        out = run(cmd, root, quiet=True).stdout.split()
        if out:
            left[kind] = out
    return left


def main():
    root = os.path.abspath(sys.argv[1])
    os.environ["COMPOSE_PROJECT_NAME"] = PROJECT
    taken = [p for p in PORTS.values() if port_taken(p)]
    if taken:
        print("FAIL: the stack publishes ports %s on 127.0.0.1 and %s are taken "
              "(another stack running? docker-compose down)" % (sorted(PORTS.values()), taken))
        return 1
    try:
        engine = run(["scripts/dev", "docker", "up"], root).stdout.strip().splitlines()[-1]
    except Failure as e:
        print("FAIL: no Docker engine could be started:\n%s" % e)
        return 1
    log("engine: %s" % engine)
    rc = 0
    run_id = "%d%d" % (os.getpid(), int(time.time()))
    try:
        run(["docker-compose", "up", "-d", "--build"], root)
        # At once, while the servers are still starting: the demo service
        # waits for them to be healthy, and then for /health itself.
        demo(root)
        wait_healthy()
        txn = replay_across_servers(root, run_id)
        prometheus_sees_both_servers()
        rows = psql(root, "SELECT count(*) FROM payments")
        check(rows == "9", "psql counts %s payments, want 9 (the demo's 8 and this test's 1)" % rows)
        one = psql(root, "SELECT count(*) FROM payments WHERE transaction_id = '%s'" % txn)
        check(one == "1", "payment %s: %s rows" % (txn, one))
        charges = ledger(root, "SELECT count(*) FROM acquirer_charges")
        one = ledger(root, "SELECT count(*) FROM acquirer_charges WHERE reference = '%s'" % txn)
        check(charges == "9" and one == "1", "the acquirer's ledger holds %s charges (want 9), "
              "%s for %s (want 1)" % (charges, one, txn))
        log("psql inside the postgres service counts 9 payments; inside acquirer-db, 9 charges")
        slow = stop_during_slow_payment(root, run_id)
        one = psql(root, "SELECT count(*) FROM payments WHERE transaction_id = '%s'" % slow)
        check(one == "1", "the payment answered while server-1 stopped: %s rows" % one)
        rows = psql(root, "SELECT count(*) FROM payments")
        check(rows == "20", "psql counts %s payments, want 20 (9, the stopped one, 10 after it; "
              "the probes none)" % rows)
        charges = ledger(root, "SELECT count(*) FROM acquirer_charges")
        check(charges == "19", "the acquirer's ledger holds %s charges, want 19 (all but the "
              "stopped one, which server-1's simulator made)" % charges)
    except (Failure, subprocess.TimeoutExpired) as e:
        print("FAIL: %s" % e)
        for name in ("server-1", "server-2", "haproxy", "postgres", "acquirer", "acquirer-db",
                     "prometheus"):
            res = run(["docker-compose", "logs", "--tail", "20", name], root, check=False,
                      quiet=True)
            print("--- %s (last lines)\n%s" % (name, res.stdout[-3000:]))
        rc = 1
    finally:
        try:
            run(["docker-compose", "down", "-v"], root, timeout=120)
            left = nothing_left(root)
            if left:
                print("FAIL: docker-compose down -v left %r" % left)
                rc = 1
            else:
                log("docker-compose down -v left no container, volume or network")
        except (Failure, subprocess.TimeoutExpired) as e:
            print("FAIL: %s" % e)
            rc = 1
        if engine == "started":
            run(["scripts/dev", "docker", "down"], root, check=False)
    print("%d passed, %d failed" % (1 - rc, rc))
    return rc


if __name__ == "__main__":
    sys.exit(main())

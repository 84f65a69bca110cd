#!/usr/bin/env python3
"""compose_stack.py - the docker compose stack, started for real.

What a Debian 12 user types (README and docs/operations.md: Docker compose), run against a real
Docker engine, then checked through the published ports:

  scripts/dev docker up        an engine (started here if none answers) and
                               the base images, made when they are missing
  docker-compose up -d --build the project's image from the Dockerfile;
                               postgres, server-1, server-2, prometheus
  docker-compose --profile demo run --rm demo   at once, while the servers
                               start: waits for them, prints "double charges: 0"
  - a payment on server-1, replayed by server-2 byte for byte;
  - Prometheus scraping both servers, with the shipped rules loaded;
  docker-compose exec -T postgres psql -U mockery mockery   counts the rows
  - server-1 recreated with a 20 s processor (tests/compose_slow_server1.yml)
    and stopped while it runs a payment: the payment is answered after its
    log says "stopping" (SIGTERM drains), and server-1 exits 0;
  docker-compose down -v       leaves no container, volume or network

The project name is COMPOSE_PROJECT_NAME=mockery-stack-test, so that a stack
of the user's own (the folder's name) is not touched; the ports are the
compose file's, and the test fails at once, saying so, when one is taken.
Where no engine can be started the test fails with scripts/dev's message.

usage: compose_stack.py REPO_ROOT
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

PROJECT = "mockery-stack-test"
PORTS = {"server-1": 8080, "server-2": 8081, "prometheus": 9090}


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


def http(method, url, body=None, headers=None, timeout=30):
    """(status, headers, body bytes); status 0 and the reason when no answer came."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()
    except (urllib.error.URLError, OSError) as e:
        return 0, {}, str(e).encode()


def post_payment(port, key, customer, amount="12.34"):
    body = json.dumps({"amount": float(amount), "currency": "EUR", "customer_id": customer,
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
    """Both servers' /health answer 200 through the published ports."""
    end = time.time() + deadline_s
    last = {}
    while time.time() < end:
        for name in ("server-1", "server-2"):
            status, _, body = http("GET", "http://127.0.0.1:%d/health" % PORTS[name], timeout=5)
            last[name] = (status, body[:200])
        if all(s == 200 for s, _ in last.values()):
            return
        time.sleep(1)
    raise Failure("the servers did not become healthy in %d s: %r" % (deadline_s, last))


def psql(root, sql):
    res = run(["docker-compose", "exec", "-T", "postgres", "psql", "-U", "mockery", "mockery",
               "-Atc", sql], root)
    return res.stdout.strip()


def replay_across_servers(root, run_id):
    key = "stack-%s-replay" % run_id
    cust = "cust-stack-%s" % run_id
    s1, h1, b1 = post_payment(PORTS["server-1"], key, cust)
    check(s1 == 201, "server-1: POST -> %d %r" % (s1, b1[:300]))
    s2, h2, b2 = post_payment(PORTS["server-2"], key, cust)
    check(s2 == 200, "server-2: the retry -> %d %r" % (s2, b2[:300]))
    check(h2.get("X-Idempotent-Replay") == "true",
          "server-2's answer is not marked as a replay: %r" % h2)
    check(b1 == b2, "server-2 replayed other bytes:\n%r\n%r" % (b1, b2))
    check(h1.get("Location") == h2.get("Location"),
          "Location %r then %r" % (h1.get("Location"), h2.get("Location")))
    txn = json.loads(b1)["transaction_id"]
    log("payment %s on server-1, replayed byte for byte by server-2" % txn)
    return txn


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
    check(len(rules) == 6 and "MockeryStoreUnavailable" in rules,
          "the stack's Prometheus loaded these rules: %r" % rules)
    log("Prometheus scrapes server-1 and server-2 (up = 1) with %d rules" % len(rules))


def demo(root):
    res = run(["docker-compose", "--profile", "demo", "run", "--rm", "demo"], root, check=False)
    out = res.stdout
    check(res.returncode == 0 and "\ndouble charges: 0\n" in out,
          "the demo exited %d:\n%s%s" % (res.returncode, out[-3000:], res.stderr[-2000:]))
    log("the demo printed 'double charges: 0'")


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
    key = "stack-%s-stopped" % run_id
    cust = "cust-slow-stack-%s" % run_id
    answer = {}

    def pay():
        answer["r"] = post_payment(PORTS["server-1"], key, cust)

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
    status, _, body = answer["r"]
    check(status == 201, "the payment in flight when server-1 stopped got %d %r" %
          (status, body[:300]))
    lines = run(slow + ["logs", "--no-color", "server-1"], root, quiet=True).stdout.splitlines()
    stopping = [i for i, l in enumerate(lines) if '"msg":"stopping' in l]
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
    # The retry reaches the other server and gets the same payment.
    s2, h2, b2 = post_payment(PORTS["server-2"], key, cust)
    check(s2 == 200 and b2 == body, "server-2 after the stop: %d %r" % (s2, b2[:300]))
    log("server-1 stopped in %.1f s while a payment ran: answered 201 after its "
        "'stopping' line and exited 0; server-2 replays it" % (time.time() - started))
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
        check(rows == "8", "psql counts %s payments, want 8 (the demo's 7 and this test's 1)" % rows)
        one = psql(root, "SELECT count(*) FROM payments WHERE transaction_id = '%s'" % txn)
        check(one == "1", "payment %s: %s rows" % (txn, one))
        log("psql inside the postgres service counts 8 payments")
        slow = stop_during_slow_payment(root, run_id)
        one = psql(root, "SELECT count(*) FROM payments WHERE transaction_id = '%s'" % slow)
        check(one == "1", "the payment answered while server-1 stopped: %s rows" % one)
    except (Failure, subprocess.TimeoutExpired) as e:
        print("FAIL: %s" % e)
        for name in ("server-1", "server-2", "postgres", "prometheus"):
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

#!/usr/bin/env python3
"""compose_check.py - docker-compose.yml and the Dockerfile agree with the real programs.

What can be checked in a second without an engine (the real stack is
started by compose_stack.py): `docker-compose config -q` accepts the file,
every image, port, environment variable and command flag it names is one the
server (or the demo) really has, as their --help says, and the defects found
when the stack was first started stay fixed (issue 13): ports published on
127.0.0.1 only, no server-wide processing delay, a demo that builds its image
and waits for healthy servers, a healthcheck on $PORT, no debconf prompts.
The front door: haproxy on 127.0.0.1:8080 with the repository's
haproxy/haproxy.cfg, which `haproxy -c` accepts, balancing both replicas
with health checks; the replicas only on debugging ports. The acquirer:
mockery-acquirer from the same image, on a PostgreSQL of its own, its
flags as its --help says, listening where the servers and the demo ask it,
healthy before the servers start.

usage: compose_check.py REPO_ROOT MOCKERY_SERVER MOCKERY_DEMO MOCKERY_ACQUIRER
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)


def flags_of(binary):
    out = subprocess.run([binary, "--help"], capture_output=True, text=True)
    text = out.stdout + out.stderr
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", text))


def parse_port(p):
    """(host_ip, published, target) of a ports entry, long or short form."""
    if isinstance(p, dict):
        return p.get("host_ip"), str(p.get("published")), str(p.get("target"))
    parts = str(p).split("/")[0].split(":")
    parts = [None] * (3 - len(parts)) + parts
    return parts[0], parts[1], parts[2]


def env_to_flag(name):
    if name == "PORT":
        return "--port"
    if name == "DATABASE_URL":
        return "--database-url"
    if name.startswith("MOCKERY_"):
        return "--" + name[len("MOCKERY_"):].lower().replace("_", "-")
    return None


def main():
    root, server, demo, acquirer = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    compose = os.path.join(root, "docker-compose.yml")
    res = subprocess.run(["docker-compose", "-f", compose, "config", "-q"],
                         capture_output=True, text=True)
    check(res.returncode == 0, "docker-compose config -q failed: " + res.stderr.strip())
    res = subprocess.run(["docker-compose", "-f", compose, "config"], capture_output=True, text=True)
    cfg = yaml.safe_load(res.stdout)
    services = cfg["services"]
    server_flags = flags_of(server)
    demo_flags = flags_of(demo)
    acquirer_flags = flags_of(acquirer)
    check("--port" in server_flags and "--database-url" in server_flags,
          "mockery-server --help lists no flags: %s" % sorted(server_flags))

    # PostgreSQL: a healthcheck and a volume, and what the servers point at.
    pg = services.get("postgres")
    check(pg is not None, "no postgres service")
    pg_env = pg.get("environment", {})
    check("healthcheck" in pg, "postgres has no healthcheck")
    check(any("/var/lib/postgresql/data" in str(v) for v in pg.get("volumes", [])),
          "postgres keeps no volume")
    check(str(pg.get("image", "")).startswith("postgres:"), "postgres image: %s" % pg.get("image"))

    replicas = [n for n, s in services.items() if n.startswith("server")]
    check(len(replicas) == 2, "want two server replicas, have %s" % replicas)
    host_ports = []
    urls = set()
    image = None
    for name in replicas:
        s = services[name]
        env = s.get("environment", {})
        for var in env:
            flag = env_to_flag(var)
            check(flag in server_flags, "%s: environment %s is no server flag" % (name, var))
        command = s.get("command", [])
        for tok in command:
            if tok.startswith("--"):
                check(tok.split("=")[0] in server_flags, "%s: command flag %s unknown" % (name, tok))
        # The container port is the one the server listens on, set by PORT:
        # the image's healthcheck reads PORT, so --port would leave it behind.
        port = env.get("PORT", "8080")
        check("--port" not in command and not any(t.startswith("--port=") for t in command),
              "%s: --port in the command; set PORT (the healthcheck reads it)" % name)
        check("MOCKERY_PROCESSING_DELAY_MS" not in env,
              "%s: a processing delay slows every payment of the stack" % name)
        for p in s.get("ports", []):
            _, published, target = parse_port(p)
            check(target == str(port), "%s: maps container port %s, server listens on %s"
                  % (name, target, port))
            host_ports.append(published)
        url = env.get("DATABASE_URL", "")
        urls.add(url)
        m = re.match(r"postgresql://([^:]+):([^@]+)@([^:/]+):(\d+)/(\w+)$", url)
        check(m is not None, "%s: DATABASE_URL %r" % (name, url))
        if m:
            user, password, host, _, db = m.groups()
            check(host == "postgres", "%s: database host %s" % (name, host))
            check(user == pg_env.get("POSTGRES_USER") and password == pg_env.get("POSTGRES_PASSWORD")
                  and db == pg_env.get("POSTGRES_DB"), "%s: credentials differ from postgres" % name)
        dep = s.get("depends_on", {})
        check(isinstance(dep, dict) and dep.get("postgres", {}).get("condition") == "service_healthy",
              "%s: does not wait for a healthy postgres" % name)
        check("build" in s, "%s: does not build the Dockerfile" % name)
        image = image or s.get("image")
        check(s.get("image") == image, "%s: another image" % name)
    check(sorted(host_ports) == ["8081", "8082"],
          "replicas' host ports %s, want 8081 and 8082 (for debugging; 8080 is the front door)"
          % host_ports)
    for name in replicas:
        limit = services[name].get("environment", {}).get("MOCKERY_MAX_CLIENT_CONNECTIONS")
        check(limit is not None and int(limit) > 96,
              "%s: --max-client-connections %s is not above haproxy's 96 per replica" % (name, limit))

    # The front door.
    hap = services.get("haproxy")
    check(hap is not None, "no haproxy service (the front door)")
    if hap:
        check(str(hap.get("image", "")).startswith("haproxy:2.6"), "haproxy image: %s" % hap.get("image"))
        ports = [parse_port(p) for p in hap.get("ports", [])]
        check(ports == [("127.0.0.1", "8080", "8080")], "haproxy publishes %s, want 127.0.0.1:8080" % ports)
        check(any(str(v).endswith(":/usr/local/etc/haproxy:ro") and "haproxy" in str(v)
                  for v in hap.get("volumes", [])), "haproxy does not mount haproxy/: %s"
              % hap.get("volumes"))
        # docker-compose stop stops haproxy first: it must outwait a request
        # it holds (its server timeout), not Docker's default 10 s.
        grace = re.match(r"(\d+)s$", str(hap.get("stop_grace_period", "")))
        server_timeout = re.search(r"^\s*timeout server (\d+)s", open(
            os.path.join(root, "haproxy", "haproxy.cfg")).read(), re.M)
        check(grace is not None and server_timeout is not None
              and int(grace.group(1)) > int(server_timeout.group(1)),
              "haproxy: stop_grace_period %r does not outwait its 'timeout server'"
              % hap.get("stop_grace_period"))
        dep = hap.get("depends_on", {})
        check(isinstance(dep, dict) and all(
            dep.get(r, {}).get("condition") == "service_healthy" for r in replicas),
            "haproxy does not wait for healthy replicas: %r" % dep)
    cfg_path = os.path.join(root, "haproxy", "haproxy.cfg")
    hcfg = open(cfg_path).read()
    servers = re.findall(r"^\s*server\s+(\S+)\s+(\S+)", hcfg, re.M)
    check(sorted(servers) == [(r, r + ":8080") for r in sorted(replicas)],
          "haproxy.cfg's servers %s, want both replicas on :8080" % servers)
    for needed in ("option httpchk GET /health", "check inter", "timeout http-request",
                   "timeout server", "option http-buffer-request", "sc0_conn_cur",
                   "balance hdr(Idempotency-Key)", "retry-on conn-failure"):
        check(needed in hcfg, "haproxy.cfg lacks %r" % needed)
    for status in re.findall(r"errorfile (\d+) /usr/local/etc/haproxy/(\S+)", hcfg):
        path = os.path.join(root, "haproxy", status[1])
        check(os.path.exists(path), "haproxy.cfg names %s, which is not in haproxy/" % status[1])
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    check(os.path.exists(haproxy), "haproxy is not installed (scripts/dev installs it)")
    if os.path.exists(haproxy):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "haproxy.cfg")
            with open(path, "w") as f:
                f.write(hcfg.replace("/usr/local/etc/haproxy/", os.path.join(root, "haproxy") + "/"))
            res = subprocess.run([haproxy, "-c", "-f", path], capture_output=True, text=True)
            check(res.returncode == 0, "haproxy -c refuses haproxy.cfg: %s" % res.stderr[-2000:])
    check(len(urls) == 1, "the replicas use different databases: %s" % urls)

    # The acquirer: the image's mockery-acquirer on a database server of its
    # own, where the replicas and the demo ask it.
    acq = services.get("acquirer")
    acq_url = None
    check(acq is not None, "no acquirer service")
    if acq:
        check(acq.get("entrypoint") == ["mockery-acquirer"], "acquirer does not run mockery-acquirer")
        check(acq.get("image") == image and "build" in acq, "acquirer: not the project's image")
        cmd = [str(t) for t in acq.get("command", [])]
        for tok in cmd:
            if tok.startswith("--"):
                check(tok.split("=")[0] in acquirer_flags,
                      "acquirer: flag %s unknown to mockery-acquirer" % tok)
        check("--listen-host" in cmd and cmd[cmd.index("--listen-host") + 1] == "0.0.0.0",
              "acquirer: listens on loopback only, out of the servers' reach")
        port = cmd[cmd.index("--port") + 1] if "--port" in cmd else "8090"
        env = acq.get("environment", {})
        check(str(env.get("PORT")) == port,
              "acquirer: PORT %r (the image's healthcheck) is not its --port %s"
              % (env.get("PORT"), port))
        acq_url = "http://acquirer:%s" % port
        adb = services.get("acquirer-db")
        check(adb is not None and str(adb.get("image", "")).startswith("postgres:")
              and "healthcheck" in adb
              and any("/var/lib/postgresql/data" in str(v) for v in adb.get("volumes", [])),
              "acquirer: no database server of its own (with a healthcheck and a volume)")
        m = re.match(r"postgresql://([^:]+):([^@]+)@([^:/]+):(\d+)/(\w+)$",
                     str(env.get("MOCKERY_ACQUIRER_DATABASE_URL", "")))
        check(m is not None and m.group(3) == "acquirer-db",
              "acquirer: MOCKERY_ACQUIRER_DATABASE_URL %r is not acquirer-db's"
              % env.get("MOCKERY_ACQUIRER_DATABASE_URL"))
        if m and adb:
            aenv = adb.get("environment", {})
            check((m.group(1), m.group(2), m.group(5)) == (aenv.get("POSTGRES_USER"),
                  aenv.get("POSTGRES_PASSWORD"), aenv.get("POSTGRES_DB")),
                  "acquirer: credentials differ from acquirer-db's")
        dep = acq.get("depends_on", {})
        check(isinstance(dep, dict) and dep.get("acquirer-db", {}).get("condition")
              == "service_healthy", "acquirer: does not wait for a healthy acquirer-db")
    for name in replicas:
        s = services[name]
        check(s.get("environment", {}).get("MOCKERY_ACQUIRER_URL") == acq_url,
              "%s: MOCKERY_ACQUIRER_URL %r, want the acquirer's %s"
              % (name, s.get("environment", {}).get("MOCKERY_ACQUIRER_URL"), acq_url))
        dep = s.get("depends_on", {})
        check(isinstance(dep, dict) and dep.get("acquirer", {}).get("condition")
              == "service_healthy", "%s: does not wait for a healthy acquirer" % name)

    demo_svc = services.get("demo")
    check(demo_svc is not None, "no demo service")
    if demo_svc:
        check(demo_svc.get("profiles") == ["demo"], "demo is not behind the demo profile")
        check(demo_svc.get("image") == image, "demo uses another image")
        check(demo_svc.get("entrypoint") == ["mockery-demo"], "demo does not run mockery-demo")
        check("build" in demo_svc, "demo does not build the image it runs")
        dep = demo_svc.get("depends_on", {})
        check(isinstance(dep, dict) and all(
            dep.get(r, {}).get("condition") == "service_healthy" for r in replicas),
            "demo does not wait for healthy servers: %r" % dep)
        cmd = demo_svc.get("command", [])
        for tok in cmd:
            if tok.startswith("--"):
                check(tok in demo_flags, "demo: flag %s unknown to mockery-demo" % tok)
        if "--url" in cmd:
            target = cmd[cmd.index("--url") + 1]
            check(target == "http://haproxy:8080", "demo url %s: not the front door" % target)
        check("--acquirer-url" in cmd and cmd[cmd.index("--acquirer-url") + 1] == acq_url,
              "demo: --acquirer-url is not the acquirer's %s: %s" % (acq_url, cmd))

    # Every published port is on the loopback interface only.
    for name, s in services.items():
        for p in s.get("ports", []):
            check(parse_port(p)[0] == "127.0.0.1",
                  "%s: port %r is published on every interface" % (name, p))
    prom = services.get("prometheus")
    check(prom is not None and str(prom.get("image", "")).startswith("prom/prometheus:"),
          "no prometheus service")

    # The Dockerfile: two stages on Debian 12, the runtime stage ships both programs.
    with open(os.path.join(root, "Dockerfile")) as f:
        docker = f.read()
    stages = re.findall(r"^FROM\s+(\S+)", docker, re.M)
    check(len(stages) == 2, "Dockerfile stages: %s" % stages)
    check(all(s.startswith("debian:bookworm") for s in stages), "not Debian 12: %s" % stages)
    runtime_copy = " ".join(re.findall(r"^COPY --from=build (?:.*\\\n)*.*$", docker, re.M))
    for program in ("mockery-server", "mockery-acquirer", "mockery-demo"):
        check(program in runtime_copy, "the runtime stage does not copy %s" % program)
    check('ENTRYPOINT ["mockery-server"]' in docker, "the image does not run mockery-server")
    check(docker.count("ARG DEBIAN_FRONTEND=noninteractive") == 2,
          "a stage runs apt-get without DEBIAN_FRONTEND=noninteractive")
    health = re.search(r"^HEALTHCHECK .*$", docker, re.M)
    check(health is not None and "${PORT}" in health.group(0) and ":8080" not in health.group(0),
          "the healthcheck does not follow PORT: %s" % (health.group(0) if health else None))
    # Every top folder CMakeLists.txt builds sources from (a new program's
    # folder once went uncopied and the image did not configure), the SQL it
    # embeds and the cmake helpers.
    cmake = open(os.path.join(root, "CMakeLists.txt")).read()
    folders = set(re.findall(r"^\s+(?:\$\{CMAKE_SOURCE_DIR\}/)?([a-z]+)/[\w/]+\.c\b", cmake, re.M))
    folders |= set(re.findall(r"\b(?:add_library|add_executable)\([\w-]+\s+(?:STATIC\s+)?([a-z]+)/",
                              cmake))
    check({"server", "store", "client", "acquirer"} <= folders,
          "CMakeLists.txt's source folders not found: %s" % sorted(folders))
    for needed in sorted(folders | {"sql", "cmake", "CMakeLists.txt"}):
        check(re.search(r"^COPY\s+%s\b" % re.escape(needed), docker, re.M) is not None,
              "the build stage does not copy %s" % needed)

    for f in failures:
        print("FAIL:", f)
    print("%d passed, %d failed" % (1 if not failures else 0, 1 if failures else 0))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

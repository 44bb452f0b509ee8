"""berth-scheduler, the process driver and berth-agent, end to end: a real redis-server, the
real scheduler binary with a temp config, real sandboxes (namespaces, cgroups, tmpfs root)
running berth-echo, real curl through the instances' unix sockets.

Run as root (namespaces, cgroups, mounts):
    BERTH_BUILD_DIR=build-sched /usr/bin/python3 -m pytest tests/integration/test_scheduler.py
"""

import concurrent.futures
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (SLOW, binary, cgroup_dir, curl, echo_template, events, raw_error,
                      raw_exchange, stored_file, wait_until)

HOST_NS = {n: os.readlink("/proc/self/ns/%s" % n) for n in ("mnt", "pid", "net", "uts", "ipc")}


def sched_config(**tpl):
    """Overrides for a scheduler-only stack: berth-echo with small limits and short waits."""
    t = {"pool": {"min": 2, "max": 4}, "memory": "64MiB", "pids": 64, "cpus": 0.5}
    t.update(tpl)
    return {
        "templates": [echo_template(**t)],
        "scheduler": {"bind_wait": "1s", "destroy_grace": "1s", "capacity": 64},
    }


@pytest.fixture
def sched(make_stack):
    return make_stack(sched_config(), start_gateway=False)


def session(n):
    return "%032x" % (0x5e55 << 64 | n)


def start(stack, h, template="echo", tenant="default", **extra):
    body = {"template": template, "session": h, "tenant": tenant, "source": "sid",
            "key": "key-%s" % h[-6:]}
    body.update(extra)
    return stack.sched_api("/v1/start", method="POST", body=body, timeout=30)


def start_ok(stack, h, **kw):
    r = start(stack, h, **kw)
    assert r.status == 200, (r.status, r.text, stack.scheduler.tail())
    return r.json()


def via(addr, path="/", method=None, data=None, timeout=10):
    """HTTP through an instance address "unix:/path" (what the gateway does)."""
    assert addr.startswith("unix:"), addr
    return curl("http://instance" + path, method=method, data=data, timeout=timeout,
                extra=["--unix-socket", addr[len("unix:"):]])


def status(stack):
    r = stack.sched_api("/v1/status")
    assert r.status == 200, r
    assert r.json()["authenticated"] is True, r
    return r.json()


def process_driver(st):
    """The process driver's entry of GET /v1/status: its status() under "status"."""
    d = [d for d in st["drivers"] if d["name"] == "process"]
    assert len(d) == 1 and d[0]["in_use"] is True, st["drivers"]
    return d[0]["status"]


def running(pid):
    """Alive and not a zombie."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except OSError:
        return False
    return False


def read(path):
    return Path(path).read_text().strip()


# ------------------------------------------------------------------ pools and registration

def test_pool_fills_to_min_and_host_registers(sched):
    s = sched
    wait_until(lambda: s.pool_len() == 2, 20 * SLOW, "pool at min")
    ids = s.redis.cmd("LRANGE", s.key("pool:%s:echo" % s.host_id), 0, -1)
    for i in ids:
        inst = s.redis.hgetall(s.key("i:", i))
        assert inst["host"] == s.host_id and inst["template"] == "echo"
        assert inst["state"] == "warm" and inst["driver"] == "process"
        assert inst["addr"] == "unix:%s/run/%s/sock/app.sock" % (s.base, i)
        assert running(int(inst["pid"]))
        assert i.startswith(s.host_id + "-")
    host = s.redis.hgetall(s.key("host:", s.host_id))
    assert host["driver"] == "process"
    assert host["capacity"] == "64"
    assert host["api"] == "127.0.0.1:%d" % s.ports["scheduler"]
    wait_until(lambda: s.redis.hgetall(s.key("host:", s.host_id))["free"] == "62", 5 * SLOW,
               "free = capacity - live")
    assert s.redis.cmd("ZSCORE", s.key("hosts"), s.host_id) is not None
    started = {e["instance"] for e in events(s, "started")}
    assert set(ids) <= started
    st = status(s)
    assert st["states"]["warm"] == 2 and st["live"] == 2
    # Every driver this scheduler knows, whether it works here and why not, and what the one
    # in use says about itself.
    assert [(d["name"], d["in_use"]) for d in st["drivers"]] == [
        ("process", True), ("microvm", False)], st["drivers"]
    assert st["drivers"][0]["available"] is True
    # microvm works where QEMU and the guest image are (the build's image may be missing).
    mvm = st["drivers"][1]
    assert mvm["available"] is True or (mvm["available"] is False and mvm["reason"]), mvm
    assert process_driver(st)["name"] == "process"
    assert {i["driver"] for i in st["instances"]} == {"process"}
    assert st["pools"] == [{"template": "echo", "min": 2, "max": 4, "warm": 2, "starting": 0}]
    # Stays at min: no extra instances appear over a few heartbeats.
    time.sleep(1)
    assert s.pool_len() == 2 and len(s.instances()) == 2


def test_pool_refills_after_claims(make_stack):
    s = make_stack(sched_config(pool={"min": 1, "max": 2}), start_gateway=False)
    # A claim pops from the pool in Redis; the scheduler must notice and refill.
    first = s.redis.cmd("LPOP", s.key("pool:%s:echo" % s.host_id))
    assert first
    wait_until(lambda: s.pool_len() == 1, 10 * SLOW, "pool refilled after a pop")
    assert s.redis.cmd("LINDEX", s.key("pool:%s:echo" % s.host_id), 0) != first


# ------------------------------------------------------------------ POST /v1/start

def test_start_returns_a_ready_bound_instance(sched):
    s = sched
    h = session(1)
    t0 = time.monotonic()
    r = start_ok(s, h)
    assert r["status"] == "new" and r["gen"] == 1
    assert r["addr"] == "unix:%s/run/%s/sock/app.sock" % (s.base, r["instance"])
    # The instance answers HTTP on its unix socket, as itself, without waiting for bind_wait.
    wait_until(lambda: status(s)["instances"] and any(
        i["id"] == r["instance"] and i["agent_bound"] for i in status(s)["instances"]),
        5 * SLOW, "agent told BIND")
    a = via(r["addr"], "/hello?x=1")
    assert a.status == 200, a
    assert a.json()["instance"] == r["instance"]
    assert time.monotonic() - t0 < 5 * SLOW
    sess = s.session(h)
    assert sess["state"] == "bound" and sess["instance"] == r["instance"]
    assert sess["tenant"] == "default" and sess["host"] == s.host_id
    inst = s.redis.hgetall(s.key("i:", r["instance"]))
    assert inst["state"] == "bound" and inst["session"] == h
    # The same session again: the existing binding, and the extra start goes to the pool.
    r2 = start_ok(s, h)
    assert r2["status"] == "bound" and r2["instance"] == r["instance"]
    wait_until(lambda: s.pool_len() >= 3, 5 * SLOW, "the extra start pooled")
    assert s.pool_len() <= 4


def test_start_honours_ttl_and_idle(sched):
    s = sched
    h = session(2)
    start_ok(s, h, ttl_ms=600000, idle_ms=300000)
    sess = s.session(h)
    assert sess["ttl"] == "600000" and sess["idle_timeout"] == "300000"
    deadline = float(s.redis.cmd("ZSCORE", s.key("expiry"), h))
    assert deadline == float(sess["last_active"]) + 300000


@pytest.mark.parametrize("body,status,code", [
    ('{"template":"nope","session":"%s","tenant":"default","source":"sid","key":"k"}'
     % ("a" * 32), 404, "unknown_template"),
    ("{not json", 400, "bad_request"),
    ("[]", 400, "bad_request"),
    ('{"template":"echo"}', 400, "bad_request"),
    ('{"template":"echo","session":"xyz","tenant":"default","source":"sid","key":"k"}',
     400, "bad_request"),
    ('{"template":"echo","session":"%s","tenant":"a/b","source":"sid","key":"k"}' % ("a" * 32),
     400, "bad_request"),
    ('{"template":"echo","session":"%s","tenant":"default","source":"web","key":"k"}'
     % ("a" * 32), 400, "bad_request"),
    ('{"template":"echo","session":"%s","tenant":"default","source":"sid","key":"a b"}'
     % ("a" * 32), 400, "bad_request"),
    ('{"template":"echo","session":"%s","tenant":"default","source":"sid","key":"k",'
     '"ttl_ms":999999999999}' % ("a" * 32), 400, "bad_request"),
    ('{"template":"echo","session":"%s","tenant":"default","source":"sid","key":"k",'
     '"idle_ms":1.5}' % ("a" * 32), 400, "bad_request"),
    ('{"template":"echo","session":"%s","tenant":"default","source":"sid","key":"k",'
     '"key_id":"ABCDEF012345"}' % ("a" * 32), 400, "bad_request"),
    ('{"template":"echo","session":"%s","tenant":"default","source":"sid","key":"k",'
     '"key_id":"abcdef0123456"}' % ("a" * 32), 400, "bad_request"),
    ('{"template":5}', 400, "bad_request"),
])
def test_start_rejects_bad_requests(sched, body, status, code):
    r = sched.sched_api("/v1/start", method="POST", body=body)
    assert r.status == status, r
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    assert r.header("content-type") == "application/json"


def test_api_errors_are_json(sched):
    s = sched
    r = curl(s.scheduler_url("/v1/start"))
    assert r.status == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert r.header("allow") == "POST"
    r = curl(s.scheduler_url("/v1/nothing"))
    assert r.status == 404 and r.json()["error"]["code"] == "not_found"
    r = s.sched_api("/v1/start", method="POST", body="x" * (65 * 1024))
    assert r.status == 413 and r.json()["error"]["code"] == "body_too_large"
    # What the HTTP layer refuses itself is JSON too (common/httpd.c), then it closes.
    port = s.ports["scheduler"]
    assert raw_error(raw_exchange(port, b"\x00\x01GARBAGE\r\n\r\n")) == (400, "bad_request")
    huge = b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * (20 * 1024) + b"\r\n\r\n"
    assert raw_error(raw_exchange(port, huge)) == (431, "headers_too_large")
    big = b"POST /v1/start HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (65 * 1024)
    assert raw_error(raw_exchange(port, big)) == (413, "body_too_large")
    r = curl(s.scheduler_url("/healthz"))
    assert r.status == 200 and r.json()["status"] == "ok"
    # Nothing above left anything behind.
    assert len(s.instances()) == 2


def test_stop_while_a_bind_waits_on_redis(make_stack):
    """SIGTERM while a start's bind script waits on a Redis that does not answer (stopped):
    the scheduler exits cleanly. (The shutdown fails the script's callback, which ran on the
    request the API had freed already: the sanitizer build reported a use after free.)"""
    over = sched_config(pool={"min": 0, "max": 2})
    over["redis"] = {"command_timeout": "60s"}
    s = make_stack(over, start_gateway=False)
    redis = s.redis_server.proc
    redis.signal(signal.SIGSTOP)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            fut = ex.submit(start, s, session(77))
            # "ready ... for=api" is logged just before the bind script is sent.
            wait_until(lambda: "for=api" in s.scheduler.log(), 20 * SLOW,
                       "the instance for the start to be ready")
            time.sleep(0.3)
            assert "start answered" not in s.scheduler.log()
            problems = s.scheduler.stop()
            assert not problems, "\n".join(problems) + "\n" + s.scheduler.tail()
            r = fut.result(timeout=30)
            assert r.status == 503 and r.json()["error"]["code"] == "shutting_down", r
    finally:
        redis.signal(signal.SIGCONT)


def test_capacity_is_a_hard_limit(make_stack):
    s = make_stack({"templates": [echo_template(pool={"min": 1, "max": 1})],
                    "scheduler": {"capacity": 2}}, start_gateway=False)
    start_ok(s, session(10))
    r = start(s, session(11))
    assert r.status == 503, r
    assert r.json()["error"]["code"] == "no_capacity"
    assert len(s.instances()) == 2
    assert s.redis.hgetall(s.key("host:", s.host_id))["capacity"] == "2"


@pytest.mark.berth_timeout(180)
def test_fifty_concurrent_starts(make_stack):
    s = make_stack({"templates": [echo_template(pool={"min": 0, "max": 0})],
                    "scheduler": {"capacity": 64}}, start_gateway=False)
    n = 50
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        results = list(ex.map(lambda i: start(s, session(1000 + i)), range(n)))
    took = time.monotonic() - t0
    bad = [r for r in results if r.status != 200]
    assert not bad, bad[:3]
    ids = {r.json()["instance"] for r in results}
    assert len(ids) == n
    assert all(r.json()["status"] == "new" for r in results)
    # Every one of them really serves its own session.
    for r in results[:: 7]:
        j = r.json()
        assert via(j["addr"], "/").json()["instance"] == j["instance"]
    print("50 concurrent starts in %.2fs (%.1f starts/s)" % (took, n / took))
    assert status(s)["states"]["bound"] == n


def slow_template(name, delay, **over):
    """berth-echo started after <delay> seconds (a slow app)."""
    t = echo_template(name=name, pool={"min": 0, "max": 0}, **over)
    echo = t["app"]["command"][0]
    t["app"]["command"] = ["/bin/sh", "-c", "sleep %s; exec %s --port 8000" % (delay, echo)]
    return t


def test_start_failures_are_reported_and_cleaned_up(make_stack):
    s = make_stack({"templates": [
        echo_template(pool={"min": 0, "max": 0}),
        slow_template("slow", 5, ready_timeout="1s"),
        echo_template(name="broken", pool={"min": 0, "max": 0},
                      app={"command": ["/nonexistent/app"], "port": 8000}),
    ]}, start_gateway=False)
    t0 = time.monotonic()
    r = start(s, session(200), template="slow")
    assert r.status == 504, r
    assert r.json()["error"]["code"] == "start_timeout"
    assert time.monotonic() - t0 < 4 * SLOW
    r = start(s, session(201), template="broken")
    assert r.status == 502, r
    assert r.json()["error"]["code"] == "start_failed"
    msg = r.json()["error"]["message"]
    assert "exited status=127" in msg and "cannot run /nonexistent/app" in msg, msg
    # Nothing is left: no records, no processes, no run dirs, no bound sessions.
    wait_until(lambda: not s.instances(), 10 * SLOW, "failed instances removed")
    wait_until(lambda: not list((s.base / "run").iterdir()), 5 * SLOW, "run dirs removed")
    assert not s.session(session(200)) and not s.session(session(201))
    assert status(s)["live"] == 0
    # And the host still works.
    assert start_ok(s, session(202))["status"] == "new"


def test_pool_starts_are_bounded(make_stack):
    """pool_max_starting bounds the instances starting for the pools at once, all templates
    together (issue 14: 40 node servers started at once on a busy host all missed their
    ready_timeout, were started again, and the pools never filled); the pools still fill.
    The scheduler's log has every start and every ready in the order they happened."""
    a, b = slow_template("slow-a", 0.5), slow_template("slow-b", 0.5)
    a["pool"] = b["pool"] = {"min": 3, "max": 3}
    s = make_stack({"templates": [a, b], "scheduler": {"pool_max_starting": 2}},
                   start_gateway=False)  # waits for both pools at min
    starting, most, seen = set(), 0, 0
    for line in (s.base / "scheduler.log").read_text().splitlines():
        f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv and '"' not in kv)
        if 'msg="starting"' in line and f.get("for") == "pool":
            starting.add(f["inst"])
            seen += 1
        elif 'msg="ready"' in line or 'msg="start failed"' in line:
            starting.discard(f.get("inst"))
        most = max(most, len(starting))
    assert seen >= 6 and most == 2, (seen, most)
    assert s.pool_len("slow-a") == 3 and s.pool_len("slow-b") == 3


def test_static_templates_are_not_started(make_stack):
    static = {"name": "ext", "driver": "static", "upstreams": ["127.0.0.1:9"],
              "sessions_per_instance": 4}
    s = make_stack({"templates": [echo_template(pool={"min": 1, "max": 1}), static]},
                   start_gateway=False, wait_pools=False)
    s.wait_pool("echo", 1)
    r = start(s, session(220), template="ext")
    assert r.status == 400, r
    assert "static" in r.json()["error"]["message"]
    time.sleep(0.5)
    assert s.redis.cmd("LLEN", s.key("pool:%s:ext" % s.host_id)) == 0
    assert [p["template"] for p in status(s)["pools"]] == ["echo"]
    assert all(i["template"] == "echo" for i in s.instances().values())


def test_client_gone_mid_start_still_binds(make_stack):
    s = make_stack({"templates": [slow_template("slow", 1)]}, start_gateway=False)
    h = session(210)
    body = json.dumps({"template": "slow", "session": h, "tenant": "default",
                       "source": "sid", "key": "gone"})
    r = s.sched_api("/v1/start", method="POST", body=body, timeout=0.3)
    assert r.status == 0  # curl gave up
    # The start went on and bound the session: a retry finds it.
    wait_until(lambda: s.session(h).get("state") == "bound", 10 * SLOW, "session bound")
    again = start_ok(s, h, template="slow")
    assert again["status"] == "bound" and again["instance"] == s.session(h)["instance"]
    assert s.scheduler.alive()


# ------------------------------------------------------------------ the sandbox

def test_instance_is_isolated(sched):
    s = sched
    r = start_ok(s, session(20))
    pid = int(s.redis.hgetall(s.key("i:", r["instance"]))["pid"])
    for n, host_ns in HOST_NS.items():
        assert os.readlink("/proc/%d/ns/%s" % (pid, n)) != host_ns, n
    # The agent is PID 1 of its own pid namespace, the app its child.
    nspid = [line for line in read("/proc/%d/status" % pid).splitlines()
             if line.startswith("NSpid:")][0].split()
    assert nspid[-1] == "1"
    assert read("/proc/%d/comm" % pid) == "berth-agent"
    # Only loopback in its network namespace.
    ifaces = [line.split(":")[0].strip() for line in
              read("/proc/%d/net/dev" % pid).splitlines()[2:]]
    assert ifaces == ["lo"]
    # Its root: a small read-only tmpfs with read-only system dirs, a generated /etc, a fresh
    # /proc; /workspace, /tmp and /dev/shm share one tmpfs of workspace_size. No /run/berth:
    # the agent's sockets are the host's, passed as descriptors.
    mi = [line.split() for line in read("/proc/%d/mountinfo" % pid).splitlines()]
    by_point = {}
    for m in mi:
        by_point.setdefault(m[4], m)
    root = by_point["/"]
    assert root[root.index("-") + 1] == "tmpfs" and root[5].split(",")[0] == "ro"
    ws = by_point["/workspace"]
    assert ws[ws.index("-") + 1] == "tmpfs" and "size=65536k" in ws[-1]
    assert by_point["/tmp"][2] == ws[2]  # the same file system
    assert by_point["/usr"][5].split(",")[0] == "ro", by_point["/usr"]
    assert by_point["/proc"][by_point["/proc"].index("-") + 1] == "proc"
    assert "/run/berth" not in by_point and "/data" in by_point and "/etc" not in by_point
    # Nothing else of the host is mounted: only these (and device nodes under /dev, runc's
    # read-only and masked parts of /proc).
    allowed = {"/", "/usr", "/etc/ssl/certs", "/proc", "/data", "/workspace", "/tmp",
               s.cfg["scheduler"]["ro_binds"][0]}
    extra = [p for p in by_point
             if p not in allowed and not p.startswith(("/dev/", "/proc/"))]
    assert not extra, extra
    # The host's files outside the offered dirs are not visible.
    assert not os.path.exists("/proc/%d/root%s" % (pid, s.base))
    with open("/proc/%d/environ" % pid, "rb") as f:
        env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    assert env[b"BERTH_INSTANCE_ID"] == r["instance"].encode()
    assert env[b"PORT"] == b"8000" and env[b"HOME"] == b"/workspace"


def test_cgroup_limits_are_applied_and_enforced(sched):
    s = sched
    r = start_ok(s, session(21))
    pid = int(s.redis.hgetall(s.key("i:", r["instance"]))["pid"])
    st = process_driver(status(s))["cgroups"]
    versions = {c: st[c]["version"] for c in ("memory", "cpu", "pids")}
    assert all(v in (1, 2) for v in versions.values()), st
    mem = cgroup_dir(pid, "memory")
    pids = cgroup_dir(pid, "pids")
    cpu = cgroup_dir(pid, "cpu")
    assert mem.endswith("/" + r["instance"]) and pids.endswith("/" + r["instance"])
    if versions["memory"] == 1:
        assert read(mem + "/memory.limit_in_bytes") == str(64 << 20)
    else:
        assert read(mem + "/memory.max") == str(64 << 20)
    assert read(pids + "/pids.max") == "64"
    if versions["cpu"] == 1:
        assert read(cpu + "/cpu.cfs_quota_us") == "50000"
        assert read(cpu + "/cpu.cfs_period_us") == "100000"
    else:
        assert read(cpu + "/cpu.max") == "50000 100000"
    # The app is in the same cgroups as the agent.
    app = int(read("/proc/%d/task/%d/children" % (pid, pid)).split()[0])
    assert cgroup_dir(app, "memory") == mem and cgroup_dir(app, "pids") == pids
    # Enforced: inside the instance's memory cgroup, allocating twice the limit gets killed;
    # inside its pids cgroup, the 65th task cannot be created.
    import subprocess
    alloc = subprocess.run(
        ["sh", "-c", 'echo $$ > "$1/cgroup.procs" && exec /usr/bin/python3 -c '
         '"b = bytearray(128 << 20); b[::4096] = b\'x\' * len(b[::4096]); print(len(b))"',
         "sh", mem], capture_output=True, timeout=60)
    assert alloc.returncode in (-9, 137), alloc
    forks = subprocess.run(
        ["sh", "-c", 'echo $$ > "$1/cgroup.procs" && exec /usr/bin/python3 -c "'
         "import os, sys, time\n"
         "kids = []\n"
         "try:\n"
         "    for i in range(200):\n"
         "        p = os.fork()\n"
         "        if p == 0:\n"
         "            time.sleep(5); os._exit(0)\n"
         "        kids.append(p)\n"
         "except OSError as e:\n"
         "    print('refused after', len(kids), e.errno)\n"
         "for k in kids: os.kill(k, 9)\n"
         '"', "sh", pids], capture_output=True, text=True, timeout=60)
    assert "refused after" in forks.stdout, forks
    made = int(forks.stdout.split()[2])
    assert made < 64, forks.stdout


def test_bind_mounts_durable_storage(sched):
    s = sched
    h = session(30)
    r = start_ok(s, h)
    w = via(r["addr"], "/files/notes.txt", method="PUT", data="kept across instances\n")
    assert w.status in (200, 201), w
    assert stored_file(s, h, "notes.txt") == "kept across instances\n"
    d = Path(s.cfg["scheduler"]["storage_root"]) / "default" / h
    assert oct(d.stat().st_mode & 0o777) == oct(0o700)
    assert oct((d / "data.img").stat().st_mode & 0o777) == oct(0o600)
    # A warm, unbound instance has an empty /data.
    warm = s.redis.cmd("LINDEX", s.key("pool:%s:echo" % s.host_id), 0)
    wpid = int(s.redis.hgetall(s.key("i:", warm))["pid"])
    assert os.listdir("/proc/%d/root/data" % wpid) == []


def test_unbound_connections_wait_for_bind(sched):
    """Before BIND the agent holds connections (up to bind_wait, 1s here) so the app never
    sees a session's first request before /data is mounted."""
    s = sched
    warm = s.redis.cmd("LPOP", s.key("pool:%s:echo" % s.host_id))
    addr = s.redis.hgetall(s.key("i:", warm))["addr"]
    t0 = time.monotonic()
    r = via(addr, "/")
    waited = time.monotonic() - t0
    assert r.status == 200 and 0.9 <= waited < 3 * SLOW, waited
    # Bind it the way the claim script does, while a request is being held.
    h = session(31)
    s.redis.cmd("HSET", s.key("s:", h), "tenant", "default", "state", "bound", "instance", warm)
    s.redis.cmd("HSET", s.key("i:", warm), "state", "bound", "session", h)
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        fut = ex.submit(via, addr, "/files/first.txt", "PUT", "first")
        time.sleep(0.3)
        assert not fut.done()
        s.redis.cmd("PUBLISH", s.key("cmd:", s.host_id), "bind %s %s" % (warm, h))
        w = fut.result(timeout=10)
    assert w.status in (200, 201), w
    # The held request ran after the mount: it wrote into the session's durable directory.
    assert stored_file(s, h, "first.txt") == "first"
    t0 = time.monotonic()
    assert via(addr, "/").status == 200
    assert time.monotonic() - t0 < 0.5 * SLOW


# ------------------------------------------------------------------ destroy, lost, expiry

def test_destroy_removes_instance_keeps_data(sched):
    s = sched
    h = session(40)
    r = start_ok(s, h)
    iid = r["instance"]
    pid = int(s.redis.hgetall(s.key("i:", iid))["pid"])
    assert via(r["addr"], "/files/a.txt", method="PUT", data="A").status in (200, 201)
    run = s.base / "run" / iid
    assert run.is_dir()
    s.redis.cmd("PUBLISH", s.key("cmd:", s.host_id), "destroy %s" % iid)
    wait_until(lambda: not running(pid), 10 * SLOW, "instance process gone")
    wait_until(lambda: not run.exists(), 5 * SLOW, "run dir removed")
    wait_until(lambda: not s.redis.cmd("EXISTS", s.key("i:", iid)), 5 * SLOW, "i:id deleted")
    assert stored_file(s, h, "a.txt") == "A"
    assert not any(str(run) in line for line in open("/proc/self/mountinfo"))
    assert any(e["instance"] == iid for e in events(s, "destroyed"))
    assert iid not in s.redis.cmd("SMEMBERS", s.key("host:%s:instances" % s.host_id))
    assert iid not in [i["id"] for i in status(s)["instances"]]


def test_a_bind_to_a_second_session_ends_the_instance_as_lost(sched):
    """Redis handed a bound sandbox to another session (a failover lost the first binding,
    which had not reached the replica): the scheduler must not let the second session into
    the first one's sandbox. It ends the instance as lost, so the second session's next
    request follows its on_lost policy."""
    s = sched
    h1, h2 = session(51), session(52)
    r = start_ok(s, h1)
    iid = r["instance"]
    pid = int(s.redis.hgetall(s.key("i:", iid))["pid"])
    assert via(r["addr"], "/files/mine.txt", method="PUT", data="h1's").status in (200, 201)
    # What a claim on a primary without h1's binding writes for h2 (common/store.c, bind()).
    s.redis.cmd("HSET", s.key("s:", h2), "tenant", "other", "state", "bound", "instance", iid,
                "addr", r["addr"], "gen", 1)
    s.redis.cmd("HSET", s.key("i:", iid), "state", "bound", "session", h2)
    s.redis.cmd("PUBLISH", s.key("cmd:", s.host_id), "bind %s %s" % (iid, h2))
    wait_until(lambda: not running(pid), 10 * SLOW, "the instance ended")
    wait_until(lambda: s.redis.hgetall(s.key("s:", h2)).get("state") == "lost", 10 * SLOW,
               "the second session marked lost")
    assert "bind to a second session: ending the instance" in s.scheduler.log()
    # h1's files stay in h1's storage, and only there.
    assert stored_file(s, h1, "mine.txt") == "h1's"
    assert stored_file(s, h2, "mine.txt", tenant="other") is None


def test_destroying_a_warm_instance_refills_the_pool(sched):
    s = sched
    warm = s.redis.cmd("LINDEX", s.key("pool:%s:echo" % s.host_id), 0)
    s.redis.cmd("PUBLISH", s.key("cmd:", s.host_id), "destroy %s" % warm)
    wait_until(lambda: warm not in s.redis.cmd("LRANGE", s.key("pool:%s:echo" % s.host_id), 0,
                                                 -1) and s.pool_len() == 2,
               10 * SLOW, "pool back at min without the destroyed instance")


def test_app_exit_marks_session_lost(sched):
    s = sched
    h = session(50)
    r = start_ok(s, h)
    iid = r["instance"]
    pid = int(s.redis.hgetall(s.key("i:", iid))["pid"])
    via(r["addr"], "/exit?code=3", method="POST", data="")
    wait_until(lambda: not running(pid), 10 * SLOW, "agent exits with its app")
    wait_until(lambda: s.session(h).get("state") == "lost", 5 * SLOW, "session lost")
    assert s.session(h)["addr"] == ""
    assert not s.redis.cmd("EXISTS", s.key("i:", iid))
    lost = [e for e in events(s, "lost") if e["instance"] == iid]
    assert lost and lost[0]["reason"] == "exited status=3" and lost[0]["session"] == h
    wait_until(lambda: not (s.base / "run" / iid).exists(), 5 * SLOW, "run dir removed")
    assert (Path(s.cfg["scheduler"]["storage_root"]) / "default" / h).is_dir()
    wait_until(lambda: s.pool_len() == 2, 10 * SLOW, "pool still at min")


def test_killed_agent_is_lost_too(sched):
    s = sched
    h = session(51)
    r = start_ok(s, h)
    pid = int(s.redis.hgetall(s.key("i:", r["instance"]))["pid"])
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: s.session(h).get("state") == "lost", 10 * SLOW, "session lost")
    lost = [e for e in events(s, "lost") if e["instance"] == r["instance"]]
    assert lost and lost[0]["reason"] == "killed signal=9"


def test_reaper_expires_sessions(sched):
    s = sched
    h = session(60)
    r = start_ok(s, h, ttl_ms=1000)
    pid = int(s.redis.hgetall(s.key("i:", r["instance"]))["pid"])
    wait_until(lambda: not s.session(h), 10 * SLOW, "session released by the reaper")
    wait_until(lambda: not running(pid), 10 * SLOW, "its instance destroyed")
    assert any(e.get("session") == h for e in events(s, "expired"))
    assert s.redis.cmd("ZSCORE", s.key("expiry"), h) is None
    # A session whose deadline moved is left alone.
    h2 = session(61)
    start_ok(s, h2, ttl_ms=3600000)
    s.redis.cmd("ZADD", s.key("expiry"), 1, h2)
    time.sleep(1)
    assert s.session(h2)["state"] == "bound"
    assert float(s.redis.cmd("ZSCORE", s.key("expiry"), h2)) > time.time() * 1000


# ------------------------------------------------------------------ restarts

def _snapshot(s):
    return {i: (v["pid"], v["state"], v.get("session", "")) for i, v in s.instances().items()}


@pytest.mark.parametrize("how", ["term", "kill"])
def test_restart_adopts_live_instances(sched, how):
    s = sched
    h = session(70)
    r = start_ok(s, h)
    assert via(r["addr"], "/files/before.txt", method="PUT", data="1").status in (200, 201)
    before = _snapshot(s)
    assert len(before) >= 3
    if how == "term":
        s.stop_scheduler()  # SIGTERM: the scheduler stops cleanly, instances stay
    else:
        s.scheduler.signal(signal.SIGKILL)
        s.scheduler.p.wait(10)
        s.scheduler = None
    for pid, _state, _sess in before.values():
        assert running(int(pid))
    s.start_scheduler()
    wait_until(lambda: status(s)["recovered"], 10 * SLOW, "recovery done")
    assert _snapshot(s) == before
    st = status(s)
    assert {i["id"] for i in st["instances"]} == set(before)
    bound = [i for i in st["instances"] if i["id"] == r["instance"]][0]
    assert bound["state"] == "bound" and bound["session"] == h
    wait_until(lambda: [i for i in status(s)["instances"] if i["id"] == r["instance"]][0][
        "agent_bound"], 5 * SLOW, "adopted instance re-bound")
    # Still serving the same session with the same durable directory, mounted once.
    assert via(r["addr"], "/").json()["instance"] == r["instance"]
    assert via(r["addr"], "/files/after.txt", method="PUT", data="2").status in (200, 201)
    assert stored_file(s, h, "before.txt") == "1" and stored_file(s, h, "after.txt") == "2"
    data_mp = "%s/run/%s/data" % (s.base, r["instance"])
    assert sum(1 for line in open("/proc/self/mountinfo") if line.split()[4] == data_mp) == 2
    assert s.session(h)["state"] == "bound"
    assert s.pool_len() == 2


def test_restart_adopts_by_the_traces_not_by_the_recorded_driver(sched):
    """Adoption asks the driver whose traces on this host hold the instance. The `driver` of
    P i:<id> cannot redirect it: a record from before drivers were recorded has none, and
    Redis is shared with everything that reaches it, so a forged one may name another
    driver. Both instances are adopted by the process driver and their records corrected."""
    s = sched
    h = session(75)
    r = start_ok(s, h)
    assert via(r["addr"], "/files/before.txt", method="PUT", data="1").status in (200, 201)
    warm = s.redis.cmd("LRANGE", s.key("pool:%s:echo" % s.host_id), 0, -1)
    before = _snapshot(s)
    assert all(s.redis.hgetall(s.key("i:", i))["driver"] == "process" for i in before)
    s.stop_scheduler()
    s.redis.cmd("HDEL", s.key("i:", warm[0]), "driver")
    s.redis.cmd("HSET", s.key("i:", r["instance"]), "driver", "microvm")
    s.start_scheduler()
    wait_until(lambda: status(s)["recovered"], 10 * SLOW, "recovery done")
    assert _snapshot(s) == before
    wait_until(lambda: all(s.redis.hgetall(s.key("i:", i)).get("driver") == "process"
                           for i in before), 5 * SLOW, "records name the owning driver")
    assert {i["id"]: i["driver"] for i in status(s)["instances"]} == {
        i: "process" for i in before}
    assert via(r["addr"], "/").json()["instance"] == r["instance"]
    assert ('msg="record names another driver than the instance\'s traces" inst=%s '
            'recorded=microvm traces=process' % r["instance"]) in s.scheduler.log()


def test_check_says_which_drivers_work_here(sched):
    p = subprocess.run([binary("berth-scheduler"), "--check", "-c", sched.config_path],
                       capture_output=True, text=True, timeout=60 * SLOW)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "\ndriver.process=works templates=echo\n" in p.stdout, p.stdout


def test_restart_reconciles_dead_and_orphans(sched):
    s = sched
    h = session(80)
    r = start_ok(s, h)
    warm = s.redis.cmd("LRANGE", s.key("pool:%s:echo" % s.host_id), 0, -1)
    assert len(warm) == 2
    s.stop_scheduler()
    # While it is away: the bound instance dies, one warm instance loses its Redis record.
    bpid = int(s.redis.hgetall(s.key("i:", r["instance"]))["pid"])
    os.kill(bpid, signal.SIGKILL)
    orphan = warm[0]
    opid = int(s.redis.hgetall(s.key("i:", orphan))["pid"])
    s.redis.cmd("DEL", s.key("i:", orphan))
    s.redis.cmd("SREM", s.key("host:%s:instances" % s.host_id), orphan)
    s.redis.cmd("LREM", s.key("pool:%s:echo" % s.host_id), 0, orphan)
    s.start_scheduler()
    wait_until(lambda: status(s)["recovered"], 10 * SLOW, "recovery done")
    # The dead one: lost (the session knows), its traces gone.
    wait_until(lambda: s.session(h).get("state") == "lost", 5 * SLOW, "session lost")
    assert not s.redis.cmd("EXISTS", s.key("i:", r["instance"]))
    assert not (s.base / "run" / r["instance"]).exists()
    # The orphan: killed and cleaned up.
    wait_until(lambda: not running(opid), 5 * SLOW, "orphan killed")
    assert not (s.base / "run" / orphan).exists()
    # The other warm one was adopted, and the pool is back at min.
    assert s.redis.hgetall(s.key("i:", warm[1]))["state"] == "warm"
    wait_until(lambda: s.pool_len() == 2, 10 * SLOW, "pool back at min")
    assert orphan not in s.redis.cmd("LRANGE", s.key("pool:%s:echo" % s.host_id), 0, -1)


def test_release_while_away_is_destroyed_on_restart(sched):
    s = sched
    h = session(90)
    r = start_ok(s, h)
    pid = int(s.redis.hgetall(s.key("i:", r["instance"]))["pid"])
    s.stop_scheduler()
    # The release script ran while no scheduler listened: its destroy command is lost, the
    # record says releasing.
    s.redis.cmd("HSET", s.key("i:", r["instance"]), "state", "releasing")
    s.redis.cmd("PUBLISH", s.key("cmd:", s.host_id), "destroy %s" % r["instance"])
    s.start_scheduler()
    wait_until(lambda: not running(pid), 10 * SLOW, "released instance destroyed")
    wait_until(lambda: not s.redis.cmd("EXISTS", s.key("i:", r["instance"])), 5 * SLOW,
               "record deleted")


def test_bind_missed_while_disconnected_is_resynced(sched):
    s = sched
    warm = s.redis.cmd("LPOP", s.key("pool:%s:echo" % s.host_id))
    h = session(100)
    s.redis.cmd("HSET", s.key("s:", h), "tenant", "default", "state", "bound", "instance", warm)
    s.redis.cmd("HSET", s.key("i:", warm), "state", "bound", "session", h)
    # Drop the scheduler's subscription, then publish before it can reconnect: nobody hears it.
    s.redis.cmd("CLIENT", "KILL", "TYPE", "pubsub")
    assert s.redis.cmd("PUBLISH", s.key("cmd:", s.host_id), "bind %s %s" % (warm, h)) == 0
    # After reconnecting, the scheduler re-reads its warm instances and binds this one.
    wait_until(lambda: [i for i in status(s)["instances"] if i["id"] == warm][0]["agent_bound"],
               10 * SLOW, "missed bind applied after the reconnect")
    addr = s.redis.hgetall(s.key("i:", warm))["addr"]
    assert via(addr, "/files/x.txt", method="PUT", data="x").status in (200, 201)
    assert stored_file(s, h, "x.txt") == "x"
    # The command connection survives a kill as well.
    s.redis.cmd("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    wait_until(lambda: start(s, session(101)).status == 200, 10 * SLOW, "starts work again")


# ------------------------------------------------------------------ with the gateway

def test_gateway_claim_binds_warm_instance_with_storage(make_stack):
    """The production path: the gateway's claim script pops a warm instance and publishes
    `bind`; the scheduler mounts the durable directory and tells the agent."""
    s = make_stack(sched_config())
    r = s.get("/files/via-gateway.txt", session="agent-42", method="PUT", data="through")
    assert r.status in (200, 201), (r, s.gateway.tail(), s.scheduler.tail())
    iid = r.json()["instance"]
    inst = s.redis.hgetall(s.key("i:", iid))
    h = inst["session"]
    assert inst["state"] == "bound"
    assert stored_file(s, h, "via-gateway.txt") == "through"
    wait_until(lambda: s.pool_len() == 2, 10 * SLOW, "pool refilled after the claim")


def test_activity_keeps_a_session_past_its_idle_timeout(make_stack):
    """Activity only sets last_active (the expiry score stays where the bind put it): the
    reaper finds the session due, recomputes its deadline from last_active and keeps it while
    requests come; once they stop, it ends after idle_timeout."""
    idle = 2.0 * SLOW
    s = make_stack({"templates": [echo_template(pool={"min": 1, "max": 2},
                                                idle_timeout="%dms" % (idle * 1000))],
                    "gateway": {"activity_flush": "200ms"},
                    "scheduler": {"reap_interval": "100ms"}})
    r = s.get("/", session="busy")
    assert r.status == 200, r
    inst = r.header("x-berth-instance")
    t0 = time.monotonic()
    while time.monotonic() - t0 < idle * 2.5:  # well past the first deadline
        time.sleep(idle / 8)
        r = s.get("/", session="busy")
        assert r.status == 200 and r.header("x-berth-instance") == inst, r
    # the reaper re-filed it with a later deadline than the bind's
    sess = [k for k in s.redis.scan(s.key("s:*")) if ":" not in k[len(s.key("s:")):] and
            s.redis.hgetall(k).get("key") == "busy"]
    assert len(sess) == 1
    hh = sess[0][len(s.key("s:")):]
    score = float(s.redis.cmd("ZSCORE", s.key("expiry"), hh))
    assert score > (time.time() - idle) * 1000, (score, time.time())
    assert s.redis.hgetall(sess[0])["state"] == "bound"
    # idle now: ended within idle_timeout plus a few reaper rounds
    wait_until(lambda: not s.redis.hgetall(sess[0]), idle * 3 + 5 * SLOW,
               "the idle session released by the reaper")

    # The release's invalidation message and this request race (seen under ASan on a busy
    # machine): a gateway that still has the binding cached finds the old instance gone and
    # answers instance_lost once; the session's next request gets a fresh instance.
    def fresh():
        r = s.get("/", session="busy")
        if r.status == 502 and b"instance_lost" in r.body:
            return None
        assert r.status == 200, r
        return r
    r = wait_until(fresh, 10 * SLOW, "a fresh instance for the released session")
    assert r.header("x-berth-instance") != inst, r


def test_a_pool_entry_of_an_instance_that_is_gone_does_not_hold_a_session(make_stack):
    """A failover can leave a pool entry whose instance the host already ended (its removal
    went to the old primary). The claim binds a session to it; its host, told to bind an
    instance it does not know, marks it lost, and the session's next request gets a new
    instance (on_lost: replace) instead of failing for ever."""
    s = make_stack({"templates": [echo_template(pool={"min": 1, "max": 2})]})
    ghost = "%s-deadbeef" % s.host_id
    s.redis.cmd("HSET", s.key("i:", ghost), "host", s.host_id, "template", "echo", "state",
                "warm", "addr", "unix:%s/nonexistent/app.sock" % s.base, "driver", "process")
    pool = s.key("pool:%s:echo" % s.host_id)
    # Whichever end the claim pops from, the ghost is what it gets.
    s.redis.cmd("DEL", pool)
    s.redis.cmd("RPUSH", pool, ghost)
    r = s.get("/", session="ghost-1", timeout=30)
    assert r.status in (200, 502), r
    if r.status == 502:
        wait_until(lambda: "bind for an unknown instance\" inst=%s" % ghost in s.scheduler.log(),
                   10 * SLOW, "the host told to bind the ghost")
        wait_until(lambda: s.get("/", session="ghost-1", timeout=30).status == 200, 20 * SLOW,
                   "the session on a new instance")
    r = s.get("/", session="ghost-1")
    assert r.status == 200 and r.header("x-berth-instance") != ghost, r

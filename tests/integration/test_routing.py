"""Session routing through the real stack (redis-server, berth-scheduler with the process driver,
berth-gateway, berth-echo in the sandboxes), seen from real clients: every request of a session
reaches the one instance bound to it, under concurrency, through two gateways sharing Redis and
across a gateway restart."""

import http.client
import http.server
import json
import os
import random
import signal
import subprocess
import threading
import time

import pytest

from conftest import (SLOW, Proc, Stack, _remove_tree, _short_tmp, _skip_unless_root, binary,
                      curl, deep_merge, echo_template, free_port, wait_until, write_config)

N_SESSIONS = 50
N_REQUESTS = 1000
N_THREADS = 8
CURL_THREADS = 2  # of N_THREADS: real curl, several URLs per process (keep-alive)

# Room for one instance per session of every test in this module plus the warm pool.
OVERRIDES = {
    "templates": [echo_template(pool={"min": 16, "max": 110})],
    "scheduler": {"capacity": 120},
}


@pytest.fixture(scope="module")
def rstack():
    _skip_unless_root()
    d = _short_tmp()
    s = Stack(d, OVERRIDES)
    yield s
    try:
        s.stop()
    finally:
        _remove_tree(d)


def check_echo(resp_status, headers, body, session, path):
    """One answer as the client sees it: 200 from berth-echo for <session>. Returns the
    instance id (the header and the echo body must agree)."""
    assert resp_status == 200, (resp_status, body[:300])
    j = json.loads(body)
    inst = headers.get("x-berth-instance")
    assert inst, headers
    assert j["instance"] == inst, (j["instance"], inst)
    assert headers.get("x-echo-instance") == inst
    assert headers.get("x-berth-session") == session
    assert j["headers"]["x-fc-session-id"] == session
    assert j["path"] == path
    return inst


class Client:
    """A keep-alive HTTP/1.1 connection (Python's http.client) to the gateway."""

    def __init__(self, port):
        self.port = port
        self.conn = None
        self.connects = 0

    def get(self, path, headers=None, method="GET", body=None):
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30 * SLOW)
                self.connects += 1
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                r = self.conn.getresponse()
                data = r.read()
                hdrs = {k.lower(): v for k, v in r.getheaders()}
                if r.will_close:
                    self.conn.close()
                    self.conn = None
                return r.status, hdrs, data
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn:
            self.conn.close()
            self.conn = None


def curl_batch(port, session, paths):
    """One curl process, several URLs for one session (curl reuses its connection). Returns
    [(status, headers, body, num_connects)]."""
    marker = "\n@@berth@@ %{http_code} %{num_connects} %header{x-berth-instance} " \
             "%header{x-berth-session} %header{x-echo-instance}\n"
    argv = ["curl", "-sS", "--http1.1", "--max-time", str(30 * SLOW), "-H",
            "x-fc-session-id: %s" % session, "-w", marker]
    argv += ["http://127.0.0.1:%d%s" % (port, p) for p in paths]
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=40 * SLOW)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    out = []
    body = b""
    for line in p.stdout.split(b"\n"):
        if line.startswith(b"@@berth@@ "):
            f = line.decode().split(" ")
            hdrs = {"x-berth-instance": f[3], "x-berth-session": f[4], "x-echo-instance": f[5]}
            out.append((int(f[1]), hdrs, body, int(f[2])))
            body = b""
        elif line:
            body += line
    assert len(out) == len(paths), p.stdout[-2000:]
    return out


def run_load(ports, sessions, n_requests, n_threads, curl_threads, seed):
    """n_requests spread over <sessions> by n_threads concurrent clients (curl_threads of them
    real curl, the others keep-alive http.client connections), round-robin over the gateway
    <ports>. Returns {session: set of instances seen} and the number of requests done."""
    seen = {s: set() for s in sessions}
    lock = threading.Lock()
    errors = []
    done = [0]
    per_thread = n_requests // n_threads

    def record(session, inst):
        with lock:
            seen[session].add(inst)
            done[0] += 1

    def worker(t):
        rnd = random.Random(seed * 1000 + t)
        port = ports[t % len(ports)]
        try:
            if t < curl_threads:
                left = per_thread
                while left:
                    s = rnd.choice(sessions)
                    k = min(left, rnd.randint(1, 6))
                    paths = ["/route/%d/%d" % (t, left - i) for i in range(k)]
                    for i, (st, h, b, nc) in enumerate(curl_batch(port, s, paths)):
                        record(s, check_echo(st, h, b, s, paths[i]))
                        if i > 0:
                            assert nc == 0, "curl opened a new connection for URL %d" % i
                    left -= k
            else:
                c = Client(port)
                for i in range(per_thread):
                    s = rnd.choice(sessions)
                    path = "/route/%d/%d" % (t, i)
                    st, h, b = c.get(path, {"x-fc-session-id": s})
                    record(s, check_echo(st, h, b, s, path))
                c.close()
                # keep-alive: one connection for all of this thread's requests
                assert c.connects == 1, "%d connections for %d requests" % (c.connects, per_thread)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            with lock:
                errors.append("thread %d: %r" % (t, e))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120 * SLOW)
    assert not any(th.is_alive() for th in threads), "client threads still running"
    assert not errors, "\n".join(errors[:10])
    return seen, done[0]


def sessions_in_redis(stack):
    """session key -> (h, the s:{h} hash)."""
    out = {}
    for k in stack.redis.scan(stack.key("s:*")):
        h = k[len(stack.key("s:")):]
        if ":" in h:
            continue  # s:{h}:aliases
        fields = stack.redis.hgetall(k)
        if "key" in fields:
            out[fields["key"]] = (h, fields)
    return out


def bindings_in_redis(stack):
    """session key -> instance, from the s:{h} hashes."""
    return {key: f.get("instance", "") for key, (_, f) in sessions_in_redis(stack).items()}


@pytest.mark.berth_timeout(240)
def test_sessions_stick_to_one_instance_under_concurrency(rstack):
    sessions = ["route-s%02d" % i for i in range(N_SESSIONS)]
    seen, done = run_load([rstack.ports["gateway"]], sessions, N_REQUESTS, N_THREADS,
                          CURL_THREADS, seed=1)
    assert done == N_REQUESTS
    multi = {s: v for s, v in seen.items() if len(v) != 1}
    assert not multi, "sessions answered by several instances: %r" % multi
    owner = {s: next(iter(v)) for s, v in seen.items()}
    # one sandbox per session: different sessions never share an instance
    by_inst = {}
    for s, i in owner.items():
        by_inst.setdefault(i, []).append(s)
    shared = {i: ss for i, ss in by_inst.items() if len(ss) > 1}
    assert not shared, "instances serving several sessions: %r" % shared
    assert len(by_inst) == N_SESSIONS
    # what the clients saw is what Redis holds, and the instances know their session
    redis_view = bindings_in_redis(rstack)
    for s in sessions:
        assert redis_view.get(s) == owner[s], (s, redis_view.get(s), owner[s])
    insts = rstack.instances()
    for s, i in owner.items():
        assert insts[i]["state"] == "bound", insts[i]
        assert rstack.session(insts[i]["session"])["key"] == s
    # a second round over the same sessions changes nothing
    seen2, _ = run_load([rstack.ports["gateway"]], sessions, 200, N_THREADS, CURL_THREADS,
                        seed=2)
    for s, v in seen2.items():
        assert v <= {owner[s]}, (s, v, owner[s])


def second_gateway(stack, tag):
    """Another berth-gateway on other ports sharing the stack's Redis. Returns (Proc, port,
    admin_port)."""
    port, admin = free_port(), free_port()
    cfg = json.loads(json.dumps(stack.cfg))
    cfg["gateway"]["listen"] = "127.0.0.1:%d" % port
    cfg["gateway"]["admin_listen"] = "127.0.0.1:%d" % admin
    path = write_config(stack.base / ("berth-%s.yaml" % tag), cfg)
    p = Proc("gateway-%s" % tag, [binary("berth-gateway"), "-c", path], stack.base,
             cwd=str(stack.base))

    def ready():
        assert p.alive(), "second gateway exited:\n%s" % p.tail()
        return curl("http://127.0.0.1:%d/readyz" % admin, timeout=2).status == 200
    wait_until(ready, 20 * SLOW, "second gateway /readyz")
    return p, port, admin


@pytest.mark.berth_timeout(180)
def test_two_gateways_sharing_redis_agree(rstack):
    g2, port2, _ = second_gateway(rstack, "two")
    try:
        ports = [rstack.ports["gateway"], port2]
        # new sessions, each first asked for through both gateways at the same moment
        fresh = ["twogw-%02d" % i for i in range(12)]
        answers = {s: [] for s in fresh}
        barrier = threading.Barrier(2 * len(fresh))
        errors = []

        def ask(s, port):
            try:
                barrier.wait(10 * SLOW)
                r = curl("http://127.0.0.1:%d/race" % port, headers={"x-fc-session-id": s},
                         timeout=30)
                answers[s].append(check_echo(r.status, {k: v[-1] for k, v in r.headers.items()},
                                             r.body, s, "/race"))
            except BaseException as e:  # noqa: BLE001
                errors.append(repr(e))
        threads = [threading.Thread(target=ask, args=(s, p)) for s in fresh for p in ports]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60 * SLOW)
        assert not errors, errors[:5]
        for s, v in answers.items():
            assert len(v) == 2 and v[0] == v[1], "gateways disagree on %s: %r" % (s, v)
        # then load through both gateways over old and new sessions
        sessions = fresh + ["route-s%02d" % i for i in range(0, N_SESSIONS, 5)]
        seen, done = run_load(ports, sessions, 400, N_THREADS, CURL_THREADS, seed=3)
        assert done == 400
        for s, v in seen.items():
            assert len(v) <= 1, "session %s answered by %r" % (s, v)
            if s in answers and v:
                assert v == {answers[s][0]}
    finally:
        problems = g2.stop()
    assert not problems, problems


@pytest.mark.berth_timeout(180)
def test_gateway_restart_keeps_every_binding(rstack):
    sessions = ["restart-%02d" % i for i in range(20)]
    c = Client(rstack.ports["gateway"])
    before = {}
    for s in sessions:
        st, h, b = c.get("/before", {"x-fc-session-id": s})
        before[s] = check_echo(st, h, b, s, "/before")
    c.close()
    assert len(set(before.values())) == len(sessions)

    # kill -9: nothing can be flushed or handed over
    g = rstack.gateway
    g.signal(signal.SIGKILL)
    g.p.wait(10)
    problems = [p for p in g.stop() if "exited with -9" not in p]
    assert not problems, problems
    rstack.gateway = None
    rstack.start_gateway()

    c = Client(rstack.ports["gateway"])
    for s in sessions:
        st, h, b = c.get("/after", {"x-fc-session-id": s})
        assert check_echo(st, h, b, s, "/after") == before[s], s
    c.close()
    # the sessions of the first test survived too
    for i in range(0, N_SESSIONS, 7):
        s = "route-s%02d" % i
        r = rstack.get("/after2", session=s)
        assert r.status == 200
        assert r.header("x-berth-instance") == bindings_in_redis(rstack)[s]

    # and a clean SIGTERM restart as well
    rstack.stop_gateway()
    rstack.start_gateway()
    for s in sessions[:5]:
        r = rstack.get("/after3", session=s)
        assert r.status == 200 and r.header("x-berth-instance") == before[s]


def test_cookie_and_header_reach_the_same_session(rstack):
    r1 = rstack.get("/h", session="cookie-and-header")
    assert r1.status == 200
    r2 = curl(rstack.url("/c"), headers={"Cookie": "a=1; berth_session=cookie-and-header"})
    assert r2.status == 200
    assert r2.header("x-berth-instance") == r1.header("x-berth-instance")
    assert r2.header("x-berth-session") == "cookie-and-header"
    # the header wins over the cookie
    r3 = curl(rstack.url("/hc"), headers={"Cookie": "berth_session=cookie-and-header",
                                          "x-fc-session-id": "other-than-cookie"})
    assert r3.status == 200
    assert r3.header("x-berth-session") == "other-than-cookie"
    assert r3.header("x-berth-instance") != r1.header("x-berth-instance")


def test_keyless_requests_get_a_session_per_connection(rstack):
    """Default route policy no_key: new: a keyless connection gets a fresh session, kept for the
    rest of that connection and told to the client in x-berth-session."""
    c = Client(rstack.ports["gateway"])
    st, h, b = c.get("/nokey/1")
    assert st == 200
    key, inst = h.get("x-berth-session"), h.get("x-berth-instance")
    assert key and inst and json.loads(b)["instance"] == inst
    st, h, b = c.get("/nokey/2")
    assert st == 200 and h.get("x-berth-session") == key and h.get("x-berth-instance") == inst
    c.close()
    # the key works as an explicit key from elsewhere
    r = rstack.get("/nokey/3", session=key)
    assert r.status == 200 and r.header("x-berth-instance") == inst
    # another connection: another session
    c2 = Client(rstack.ports["gateway"])
    st, h, b = c2.get("/nokey/4")
    c2.close()
    assert st == 200
    assert h.get("x-berth-session") != key and h.get("x-berth-instance") != inst


@pytest.mark.berth_timeout(120)
def test_tenants_and_issued_cookies(make_stack):
    """The same key on routes of two tenants reaches two instances; no_key: issue hands out a
    cookie that then routes like a key."""
    s = make_stack({
        "templates": [echo_template(pool={"min": 3, "max": 8})],
        "gateway": {"routes": [
            {"name": "a", "path_prefix": "/a/", "tenant": "default"},
            {"name": "b", "path_prefix": "/b/", "tenant": "other"},
            {"name": "issue", "path_prefix": "/i/", "no_key": "issue"},
        ]},
    })
    ra = s.get("/a/x", session="same-key")
    rb = s.get("/b/x", session="same-key")
    assert ra.status == 200 and rb.status == 200
    assert ra.header("x-berth-instance") != rb.header("x-berth-instance")
    assert s.get("/a/y", session="same-key").header("x-berth-instance") == \
        ra.header("x-berth-instance")
    r = curl(s.url("/i/first"))
    assert r.status == 200
    cookie = r.header("set-cookie")
    assert cookie, r.headers
    name_value = cookie.split(";")[0]
    assert name_value.startswith("berth_session=")
    attrs = [a.strip().lower() for a in cookie.split(";")[1:]]
    assert "httponly" in attrs and "path=/" in attrs and "samesite=lax" in attrs
    key = name_value.split("=", 1)[1]
    assert r.header("x-berth-session") == key
    r2 = curl(s.url("/i/again"), headers={"Cookie": name_value})
    assert r2.status == 200
    assert r2.header("x-berth-instance") == r.header("x-berth-instance")
    assert r2.header("set-cookie") is None  # the client has its cookie


# ------------------------------------------------------------------ cache revalidation

class NamedHandler(http.server.BaseHTTPRequestHandler):
    """An upstream that names itself (the server's name) in every answer, and echoes the
    request's x-request-id (whose first 8 characters name the gateway loop that sent it)."""
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 - http.server's naming
        body = self.server.name.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-seen-request-id", self.headers.get("x-request-id", ""))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def static_stack():
    """A gateway (no scheduler) whose only template is static over two upstreams named u0 and
    u1; make(gateway_overrides) starts it. Everything is stopped after the test."""
    _skip_unless_root()
    servers = []
    for name in ("u0", "u1"):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NamedHandler)
        srv.daemon_threads = True
        srv.name = name
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    made = []

    def make(gateway):
        d = _short_tmp()
        s = Stack(d, start_scheduler=False, start_gateway=False)
        made.append((s, d))
        cfg = deep_merge(s.cfg, {"gateway": dict(gateway, routes=[
            {"name": "fleet", "path_prefix": "/", "template": "fleet"}])})
        cfg["templates"] = [{"name": "fleet", "driver": "static", "sessions_per_instance": 1,
                             "upstreams": ["127.0.0.1:%d" % srv.server_address[1]
                                           for srv in servers]}]
        s.config_path = write_config(d / "berth-gateway.yaml", cfg)
        s.start_gateway()
        return s

    yield make
    try:
        for s, d in made:
            try:
                s.stop()
            finally:
                _remove_tree(d)
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()


def metric_by(s, family, label):
    """{value of <label>: sample} of a counter family with one label, from /metrics."""
    r = curl(s.admin_url("/metrics"))
    assert r.status == 200
    out, head = {}, '%s{%s="' % (family, label)
    for line in r.body.decode().splitlines():
        if line.startswith(head):
            out[line[len(head):].split('"')[0]] = float(line.split()[-1])
    return out


def revalidations(s):
    """berth_gateway_cache_revalidations_total by "touch", "lookup" and "loop"."""
    out = metric_by(s, "berth_gateway_cache_revalidations_total", "by")
    assert set(out) == {"touch", "lookup", "loop"}, out
    return out


def redis_hset_calls(s):
    """How many HSETs Redis ran (INFO commandstats counts the ones inside scripts too)."""
    info = s.redis.cmd("INFO", "commandstats")
    info = info.decode() if isinstance(info, bytes) else info
    for line in info.splitlines():
        if line.startswith("cmdstat_hset:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def rebind_without_inval(s, key, first):
    """Binds session <key> (now on instance <first>) to the other instance of the fleet as the
    claim script would, but without PUBLISH on P inval (a lost invalidation, or a writer that
    does not publish). Returns the other instance."""
    other = "fleet-1" if first == "fleet-0" else "fleet-0"
    h, sess = sessions_in_redis(s)[key]
    addr = s.redis.hgetall(s.key("i:", other))["addr"]
    s.redis.cmd("HSET", s.key("s:", h), "instance", other, "addr", addr,
                "gen", str(int(sess["gen"]) + 1))
    return other


def test_missed_invalidation_is_caught_by_the_next_touch(static_stack):
    """A binding changed in Redis without its invalidation message (one lost, or a writer
    that does not publish) is noticed by the session's next activity touch, whose reply
    carries the binding's gen: long before cache_ttl (60 s here) would have it checked."""
    s = static_stack({"cache_ttl": "60s", "activity_flush": "200ms"})
    r = s.get("/", session="mover")
    assert r.status == 200, r
    first = r.header("x-berth-instance")
    assert r.body.decode() == {"fleet-0": "u0", "fleet-1": "u1"}[first]
    other = rebind_without_inval(s, "mover", first)
    t0 = time.monotonic()
    seen = []
    while time.monotonic() - t0 < 10 * SLOW:
        r = s.get("/", session="mover")
        assert r.status == 200, r
        seen.append(r.header("x-berth-instance"))
        if seen[-1] == other:
            break
        time.sleep(0.05)
    assert seen[-1] == other, seen
    assert r.body.decode() == {"fleet-0": "u0", "fleet-1": "u1"}[other]
    assert time.monotonic() - t0 < 30, "took as long as cache_ttl"
    assert revalidations(s)["lookup"] == 0  # the touch did it; no lookup of its own


def test_a_session_in_use_is_revalidated_by_its_touches(static_stack):
    """With requests coming, a session's touches (every activity_flush) keep its cached
    binding fresh: no lookup of its own, however often cache_ttl passes. An idle session's
    binding does go stale, and its next request has it looked up (in the background)."""
    # cache_ttl: an entry confirmed now goes stale in 1-2 s, far beyond the gaps between the
    # touches (~200 ms) even on a loaded machine
    s = static_stack({"cache_ttl": "2s", "activity_flush": "200ms"})
    inst = {}
    for key in ("busy", "idle"):
        r = s.get("/", session=key)
        assert r.status == 200, r
        inst[key] = r.header("x-berth-instance")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 4.5:  # more than two cache_ttl
        r = s.get("/", session="busy")
        assert r.status == 200 and r.header("x-berth-instance") == inst["busy"], r
        time.sleep(0.05)
    rv = revalidations(s)
    assert rv["lookup"] == 0, rv
    assert rv["touch"] >= 5, rv  # one every ~200 ms for "busy" (fewer when the machine is slow)
    # "idle" went stale: its next request is served from the cache and looked up once
    r = s.get("/", session="idle")
    assert r.status == 200 and r.header("x-berth-instance") == inst["idle"], r
    wait_until(lambda: revalidations(s)["lookup"] == 1, 5 * SLOW, "the idle session's lookup")


def keepalive_on_each_loop(s, hdr, loops=2):
    """{loop: keep-alive connection} with one connection on each of the gateway's <loops>
    loops (the kernel hands new connections to either; the x-seen-request-id prefix names
    the loop), the session's first request sent on each; and the spare connections."""
    conns, spare = {}, []
    try:
        for _ in range(64):
            c = http.client.HTTPConnection("127.0.0.1", s.ports["gateway"], timeout=10 * SLOW)
            spare.append(c)
            c.request("GET", "/", headers=hdr)
            r = c.getresponse()
            r.read()
            assert r.status == 200
            loop = r.getheader("x-seen-request-id")[:8]
            if loop not in conns:
                conns[loop] = spare.pop()
            if len(conns) == loops:
                break
        assert len(conns) == loops, conns
    except BaseException:
        for c in list(conns.values()) + spare:
            c.close()
        raise
    return conns, spare


def keepalive_get(c, hdr):
    c.request("GET", "/", headers=hdr)
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
    return r.getheader("x-berth-instance")


def test_a_session_on_two_loops_is_touched_once_per_flush(static_stack):
    """With two loops, a session whose connections reach both is touched once per
    activity_flush by the gateway, not once by each loop (DESIGN.md: at most once per flush
    per session), and a loop that left the touching to the other takes that touch's
    confirmation of the binding instead of a lookup of its own.
    The requests alternate between a keep-alive connection on each loop. A lookup is right
    after a pause: the latest touch (one per flush while requests come) is then older than
    cache_ttl / 2, the most a confirmation from the table may be; a busy machine can pause
    the client (it did, with a curl process per request: issue 14). So each pause of the
    client's that could have let that happen allows one lookup; without pauses, none."""
    flush, ttl = 0.5, 2.0
    s = static_stack({"workers": 2, "cache_ttl": "2s", "activity_flush": "500ms"})
    hdr = {"x-fc-session-id": "spread"}
    conns, spare = keepalive_on_each_loop(s, hdr)
    try:
        n, pauses, prev_start = 0, 0, time.monotonic()
        inst = keepalive_get(next(iter(conns.values())), hdr)

        def requests_for(seconds):
            nonlocal n, pauses, prev_start
            t0 = time.monotonic()
            while time.monotonic() - t0 < seconds:
                for c in conns.values():
                    start = time.monotonic()
                    assert keepalive_get(c, hdr) == inst
                    end = time.monotonic()
                    # the longest the gateway may have gone without a request of the session,
                    # plus the touch reply's way (0.2 s), against how old a confirmation may be
                    if prev_start is not None and (end - prev_start) + flush + 0.2 > ttl / 2:
                        pauses += 1
                    prev_start = start
                    n += 1
                time.sleep(0.02)
            return time.monotonic() - t0

        requests_for(0.6)  # the loops' claims and first touches are done; count from here
        before = redis_hset_calls(s)
        elapsed = requests_for(4.0)
        time.sleep(0.1)  # the last touch's reply
        touches = redis_hset_calls(s) - before
        # one toucher: ~elapsed / 0.5 = 8; each loop for itself: ~16
        assert 1 <= touches <= elapsed / flush + 2, (touches, elapsed, n)
        rv = revalidations(s)
        assert rv["lookup"] <= pauses, (rv, pauses, n)
        assert rv["loop"] >= 1, rv  # the other loop's entries went stale (cache_ttl 2 s) and
        # were confirmed from the table
    finally:
        for c in list(conns.values()) + spare:
            c.close()


def test_a_missed_invalidation_is_caught_by_every_loop(static_stack):
    """With two loops, a binding changed in Redis without its invalidation message is noticed
    by both loops within a few activity_flush, not only by the loop whose touches carry the
    session: the other one leaves the touch to it only while that touch's reply confirms the
    binding it has cached. One keep-alive connection on each loop sends the session's
    requests, so the loop that touches first stays the toucher (cache_ttl is 60 s: without
    that check the other loop kept the old binding until then)."""
    s = static_stack({"workers": 2, "cache_ttl": "60s", "activity_flush": "1s"})
    hdr = {"x-fc-session-id": "mover2"}
    conns, spare = keepalive_on_each_loop(s, hdr)
    try:
        first = keepalive_get(next(iter(conns.values())), hdr)

        def ask(c):
            return keepalive_get(c, hdr)

        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.5:  # touches settle: one loop carries them
            for c in conns.values():
                assert ask(c) == first
            time.sleep(0.02)
        other = rebind_without_inval(s, "mover2", first)
        t0 = time.monotonic()
        switched = {}  # loop -> seconds until it answered with the new instance
        # waits up to 45 s (below cache_ttl, after which any loop would ask Redis itself)
        while time.monotonic() - t0 < 45 and len(switched) < 2:
            for loop, c in conns.items():
                if ask(c) == other:
                    switched.setdefault(loop, time.monotonic() - t0)
            time.sleep(0.02)
        assert set(switched) == set(conns), switched
        assert max(switched.values()) < 5 * SLOW, switched  # a few activity_flush
        for _ in range(10):  # and neither goes back to the old binding
            for c in conns.values():
                assert ask(c) == other
    finally:
        for c in list(conns.values()) + spare:
            c.close()


def test_a_lost_subscription_flushes_the_cache(static_stack):
    """Invalidations arrive on a connection of their own. When that connection alone is lost
    and comes back, whatever was published meanwhile was missed: the loop's cached bindings
    are dropped (the next request asks Redis) as after a reconnect of the command
    connection."""
    s = static_stack({"cache_ttl": "60s", "activity_flush": "60s"})
    r = s.get("/", session="subscribed")
    assert r.status == 200, r
    inst = r.header("x-berth-instance")

    def claims():
        return metric_by(s, "berth_gateway_claims_total", "result")

    before = claims()
    assert s.get("/", session="subscribed").header("x-berth-instance") == inst
    assert claims()["cached"] == before["cached"] + 1  # served from the cache
    channel = s.key("inval")

    def subscribers():
        reply = s.redis.cmd("PUBSUB", "NUMSUB", channel)
        return int(reply[1])

    assert subscribers() == 1
    assert int(s.redis.cmd("CLIENT", "KILL", "TYPE", "pubsub")) == 1
    wait_until(lambda: subscribers() == 1, 10 * SLOW, "the gateway subscribed again")
    before = claims()
    r = s.get("/", session="subscribed")
    assert r.status == 200 and r.header("x-berth-instance") == inst, r
    after = claims()
    assert after["bound"] == before["bound"] + 1, (before, after)  # asked Redis
    assert after["cached"] == before["cached"], (before, after)

"""The gateway's admin listener end to end: the control API (/v1/sessions, /v1/pools),
/healthz, /readyz and /metrics, with real redis-server, berth-scheduler (process sandboxes
running berth-echo) and berth-gateway, driven with real curl (fixtures: conftest.py).

Two tests need a state no running scheduler would leave (every pool empty and no live host;
exactly N warm instances while many clients race for them): they run a gateway without a
scheduler and write the host and instance records into Redis themselves, as common/README.md
specifies them (P hosts, P host:{id}, P i:{id}, P pool:{host}:{tpl}).

    BERTH_BUILD_DIR=build /usr/bin/python3 -m pytest tests/integration/test_control_api.py
"""

import json
import re
import socket
import threading
import time

import pytest

from conftest import (DEV_KEY, OTHER_KEY, SLOW, Proc, Stack, _remove_tree, _short_tmp,
                      _skip_unless_root, binary, curl, echo_template, raw_error, raw_exchange,
                      wait_until)

ADMIN = {"max_body": "64KiB", "max_metadata": "1KiB", "list_max": 50,
         "scrape_timeout": "%dms" % (300 * SLOW)}
OVERRIDES = {
    "templates": [echo_template(max_ttl="2h", max_idle_timeout="1h"),
                  echo_template("cold", pool={"min": 0, "max": 2})],
    "gateway": {"retry_after": 3, "admin": ADMIN},
}
SESSION_FIELDS = {"id", "tenant", "template", "instance", "state", "created_ms", "ttl_s",
                  "idle_timeout_s", "last_active_ms", "expires_at_ms", "paused",
                  "paused_since_ms", "paused_ms", "metadata", "egress"}


@pytest.fixture(scope="module")
def ctl():
    """A stack (Redis, scheduler, gateway) with admin limits and two templates: echo (pool 2..8)
    and cold (no warm pool: starts on demand)."""
    _skip_unless_root()
    d = _short_tmp()
    s = Stack(d, OVERRIDES)
    yield s
    try:
        s.stop()
    finally:
        _remove_tree(d)


def gateway_only(make_stack, templates=None, host_stale="1h"):
    """A gateway and Redis, no scheduler: for states the test writes into Redis itself."""
    over = {"templates": templates or [echo_template()],
            "gateway": {"retry_after": 3, "host_stale": host_stale, "admin": ADMIN}}
    return make_stack(over, start_scheduler=False, wait_pools=False)


def assert_error(r, status, code):
    assert r.status == status, (r.status, r.body[:300])
    assert (r.header("content-type") or "").startswith("application/json"), r.headers
    j = r.json()
    assert set(j) == {"error"}, j
    assert j["error"]["code"] == code, j
    assert isinstance(j["error"]["message"], str) and j["error"]["message"], j
    return j


def created(r):
    assert r.status == 201, (r.status, r.body[:300])
    s = r.json()
    assert set(s) == SESSION_FIELDS, s
    return s


def session_hash(stack, instance):
    return stack.redis.hgetall(stack.key("i:", instance))["session"]


def zcard(stack, tenant="default"):
    return stack.redis.cmd("ZCARD", stack.key("sessions:", tenant))


# --- health and routing -------------------------------------------------------------------


def test_healthz_and_readyz(ctl):
    r = curl(ctl.admin_url("/healthz"))
    assert r.status == 200 and r.json() == {"status": "ok"}
    assert r.header("content-type") == "application/json"
    r = curl(ctl.admin_url("/readyz"))
    assert r.status == 200 and r.json() == {"status": "ready"}
    r = curl(ctl.admin_url("/healthz"), method="POST", data="")
    assert_error(r, 405, "method_not_allowed")
    assert "GET" in r.header("allow")
    assert curl(ctl.admin_url("/readyz"), method="HEAD", extra=["-I"]).status == 200


def test_unknown_paths_are_json_404(ctl):
    for path in ["/", "/nope", "/v1", "/v1/", "/v1/nope", "/v1/sessions/a/b", "/v2/sessions",
                 "/v1/sessions/x/files", "/v1/sessions/x/exec/y", "/metrics/x"]:
        assert_error(ctl.api("GET", path), 404, "not_found")
    # The session actions exist, for POST only.
    for action in ("exec", "pause", "resume"):
        r = ctl.api("GET", "/v1/sessions/x/" + action)
        assert_error(r, 405, "method_not_allowed")
        assert r.header("allow") == "POST"
    assert_error(curl(ctl.admin_url("/nope")), 404, "not_found")


def test_auth_required(ctl):
    r = ctl.api("GET", "/v1/sessions", key=None)
    assert_error(r, 401, "unauthorized")
    assert r.header("www-authenticate", "").startswith("Bearer")
    assert_error(ctl.api("GET", "/v1/sessions", key="wrong"), 401, "unauthorized")
    assert_error(ctl.api("GET", "/v1/sessions", key=DEV_KEY + "x"), 401, "unauthorized")
    assert_error(ctl.api("GET", "/v1/sessions", key=DEV_KEY[:-1]), 401, "unauthorized")
    assert_error(ctl.api("GET", "/v1/pools", key=None), 401, "unauthorized")
    assert_error(ctl.api("POST", "/v1/sessions", {}, key=None), 401, "unauthorized")
    assert_error(ctl.api("DELETE", "/v1/sessions/x", key=None), 401, "unauthorized")
    assert_error(ctl.api("GET", "/v1/sessions", key=None,
                         headers={"Authorization": "Basic " + DEV_KEY}), 401, "unauthorized")
    r = ctl.api("GET", "/v1/sessions", key=None, headers={"Authorization": "bearer " + DEV_KEY})
    assert r.status == 200  # the scheme is case-insensitive
    # nothing was created by the refused requests
    assert ctl.api("GET", "/v1/sessions?limit=1").status == 200


# --- sessions -----------------------------------------------------------------------------


def test_session_lifecycle(ctl):
    t0 = int(time.time() * 1000)
    meta = {"user": "ada", "tags": ["a", "b"], "n": 3, "nested": {"x": None, "ok": True},
            "text": "caf\u00e9 \"q\""}
    s = created(ctl.api("POST", "/v1/sessions", {"id": "life-1", "metadata": meta,
                                                 "ttl": 5400, "idle_timeout": 120}))
    assert s["id"] == "life-1" and s["tenant"] == "default" and s["template"] == "echo"
    assert s["state"] == "bound" and s["instance"].startswith(ctl.host_id + "-")
    assert s["ttl_s"] == 5400 and s["idle_timeout_s"] == 120 and s["metadata"] == meta
    assert t0 - 1000 <= s["created_ms"] <= int(time.time() * 1000) + 1000
    assert s["expires_at_ms"] == min(s["created_ms"] + 5400_000, s["last_active_ms"] + 120_000)

    # Redis holds what the API says
    inst = ctl.redis.hgetall(ctl.key("i:", s["instance"]))
    assert inst["state"] == "bound"
    h = inst["session"]
    sess = ctl.session(h)
    assert sess["key"] == "life-1" and sess["tenant"] == "default" and sess["source"] == "sid"
    assert sess["ttl"] == "5400000" and sess["idle_timeout"] == "120000"
    assert json.loads(sess["meta"]) == meta
    assert ctl.redis.cmd("ZSCORE", ctl.key("sessions:default"), h) == str(s["created_ms"])

    # the data plane routes the same id to the same sandbox
    r = ctl.get("/whoami", session="life-1")
    assert r.status == 200, r
    assert r.json()["instance"] == s["instance"]

    g = ctl.api("GET", "/v1/sessions/life-1")
    assert g.status == 200
    gj = g.json()
    assert {k: v for k, v in gj.items() if k not in ("last_active_ms", "expires_at_ms")} == \
        {k: v for k, v in s.items() if k not in ("last_active_ms", "expires_at_ms")}

    # PATCH: one field, then both
    p = ctl.api("PATCH", "/v1/sessions/life-1", {"ttl": 60})
    assert p.status == 200, p
    pj = p.json()
    assert pj["ttl_s"] == 60 and pj["idle_timeout_s"] == 120
    assert pj["expires_at_ms"] == min(pj["created_ms"] + 60_000, pj["last_active_ms"] + 120_000)
    pj = ctl.api("PATCH", "/v1/sessions/life-1", {"idle_timeout": 30, "ttl": 7200}).json()
    assert pj["ttl_s"] == 7200 and pj["idle_timeout_s"] == 30
    assert ctl.session(h)["idle_timeout"] == "30000"
    assert int(float(ctl.redis.cmd("ZSCORE", ctl.key("expiry"), h))) == pj["expires_at_ms"]
    assert ctl.api("GET", "/v1/sessions/life-1").json()["ttl_s"] == 7200

    # DELETE: 204, the session is gone and the scheduler destroys the sandbox
    d = ctl.api("DELETE", "/v1/sessions/life-1")
    assert d.status == 204 and d.body == b""
    assert_error(ctl.api("GET", "/v1/sessions/life-1"), 404, "not_found")
    assert_error(ctl.api("DELETE", "/v1/sessions/life-1"), 404, "not_found")
    assert_error(ctl.api("PATCH", "/v1/sessions/life-1", {"ttl": 60}), 404, "not_found")
    assert ctl.redis.cmd("EXISTS", ctl.key("s:", h)) == 0
    assert ctl.redis.cmd("ZSCORE", ctl.key("sessions:default"), h) is None
    assert ctl.redis.cmd("ZSCORE", ctl.key("expiry"), h) is None
    wait_until(lambda: ctl.redis.cmd("EXISTS", ctl.key("i:", s["instance"])) == 0, 15 * SLOW,
               "the deleted session's instance record to disappear")
    events = ctl.redis.cmd("XRANGE", ctl.key("events"), "-", "+")
    assert any(f[1][:2] == ["type", "deleted"] and s["instance"] in f[1] for f in events)


def test_create_without_id_and_conflict(ctl):
    r = ctl.api("POST", "/v1/sessions", key=DEV_KEY)  # no body at all
    s = created(r)
    assert re.fullmatch(r"[0-9a-f]{32}", s["id"]), s
    assert s["metadata"] is None and s["ttl_s"] == 3600 and s["idle_timeout_s"] == 600
    s2 = created(ctl.api("POST", "/v1/sessions", {}))
    assert s2["id"] != s["id"] and s2["instance"] != s["instance"]
    # the same id again: 409, and the session keeps its instance
    assert_error(ctl.api("POST", "/v1/sessions", {"id": s["id"]}), 409, "conflict")
    assert ctl.api("GET", "/v1/sessions/" + s["id"]).json()["instance"] == s["instance"]
    # a session first seen on the data plane exists too: the API id space is the same
    r = ctl.get("/", session="dp-first")
    assert r.status == 200
    j = assert_error(ctl.api("POST", "/v1/sessions", {"id": "dp-first"}), 409, "conflict")
    assert ctl.api("GET", "/v1/sessions/dp-first").json()["instance"] == r.json()["instance"]
    for sid in (s["id"], s2["id"], "dp-first"):
        assert ctl.api("DELETE", "/v1/sessions/" + sid).status == 204


def test_create_from_an_empty_pool_starts_one(ctl):
    assert ctl.pool_len("cold") == 0
    s = created(ctl.api("POST", "/v1/sessions", {"template": "cold", "id": "cold-1"},
                        timeout=30))
    assert s["template"] == "cold" and s["state"] == "bound"
    assert ctl.get("/", session="cold-1").json()["instance"] == s["instance"]
    assert ctl.api("DELETE", "/v1/sessions/cold-1").status == 204


def test_ids_are_percent_decoded(ctl):
    sid = "a/b%c?d#e~"
    created(ctl.api("POST", "/v1/sessions", {"id": sid}))
    enc = "".join(c if c.isalnum() else "%%%02X" % ord(c) for c in sid)
    g = ctl.api("GET", "/v1/sessions/" + enc)
    assert g.status == 200 and g.json()["id"] == sid
    assert ctl.api("DELETE", "/v1/sessions/" + enc).status == 204


def test_list_pages(ctl):
    ids = {"page-%02d" % i for i in range(7)}
    for sid in sorted(ids):
        created(ctl.api("POST", "/v1/sessions", {"id": sid}))
    seen, cursor, pages = [], None, 0
    while True:
        r = ctl.api("GET", "/v1/sessions?limit=3" + ("&cursor=%s" % cursor if cursor else ""))
        assert r.status == 200, r
        j = r.json()
        assert set(j) == {"sessions", "next_cursor"}
        assert len(j["sessions"]) <= 3
        for s in j["sessions"]:
            assert set(s) == SESSION_FIELDS and s["tenant"] == "default"
        seen += [s["id"] for s in j["sessions"]]
        pages += 1
        assert pages < 50
        cursor = j["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str)
    assert ids <= set(seen)
    assert len(seen) == len(set(seen)) == zcard(ctl)
    j = ctl.api("GET", "/v1/sessions").json()  # default limit: one page here
    assert len(j["sessions"]) == zcard(ctl) and j["next_cursor"] is None
    created_ms = [s["created_ms"] for s in j["sessions"]]
    assert created_ms == sorted(created_ms)
    assert_error(ctl.api("GET", "/v1/sessions?limit=0"), 400, "invalid_argument")
    assert_error(ctl.api("GET", "/v1/sessions?limit=51"), 400, "invalid_argument")
    assert_error(ctl.api("GET", "/v1/sessions?cursor=x"), 400, "invalid_argument")
    for sid in ids:
        assert ctl.api("DELETE", "/v1/sessions/" + sid).status == 204


def test_tenants_are_isolated(ctl):
    s = created(ctl.api("POST", "/v1/sessions", {"id": "shared-name", "metadata": {"o": "a"}}))
    assert_error(ctl.api("GET", "/v1/sessions/shared-name", key=OTHER_KEY), 404, "not_found")
    assert_error(ctl.api("PATCH", "/v1/sessions/shared-name", {"ttl": 5}, key=OTHER_KEY), 404,
                 "not_found")
    assert_error(ctl.api("DELETE", "/v1/sessions/shared-name", key=OTHER_KEY), 404, "not_found")
    listed = ctl.api("GET", "/v1/sessions", key=OTHER_KEY).json()["sessions"]
    assert all(x["tenant"] == "other" for x in listed)
    assert "shared-name" not in [x["id"] for x in listed]
    # the same id is another session for the other tenant, on another sandbox
    o = created(ctl.api("POST", "/v1/sessions", {"id": "shared-name"}, key=OTHER_KEY))
    assert o["tenant"] == "other" and o["instance"] != s["instance"]
    assert o["template"] == "echo"  # no route of its own: the first template
    a = ctl.api("GET", "/v1/sessions/shared-name").json()
    assert a["instance"] == s["instance"] and a["metadata"] == {"o": "a"}
    assert ctl.api("DELETE", "/v1/sessions/shared-name", key=OTHER_KEY).status == 204
    assert ctl.api("GET", "/v1/sessions/shared-name").status == 200
    assert ctl.api("DELETE", "/v1/sessions/shared-name").status == 204


BAD_BODIES = [
    ("{", "bad_request"),
    ("[1,2]", "bad_request"),
    ("null", "bad_request"),
    ("{\"id\": \"x\"} trailing", "bad_request"),
    ("{\"id\": 12}", "invalid_argument"),
    ("{\"id\": \"\"}", "invalid_session_key"),
    ("{\"id\": \"has space\"}", "invalid_session_key"),
    ("{\"id\": \"tab\\there\"}", "invalid_session_key"),
    ("{\"id\": \"caf\\u00e9\"}", "invalid_session_key"),
    ("{\"id\": \"" + "x" * 129 + "\"}", "invalid_session_key"),
    ("{\"template\": \"nope\"}", "unknown_template"),
    ("{\"template\": 3}", "invalid_argument"),
    ("{\"ttl\": \"60\"}", "invalid_argument"),
    ("{\"ttl\": 0}", "invalid_argument"),
    ("{\"ttl\": 2.5}", "invalid_argument"),
    ("{\"ttl\": 7201}", "invalid_argument"),          # echo's max_ttl is 2h here
    ("{\"idle_timeout\": 3601}", "invalid_argument"),  # max_idle_timeout 1h
    ("{\"idle_timeout\": -1}", "invalid_argument"),
    ("{\"metadata\": [1]}", "invalid_argument"),
    ("{\"metadata\": \"x\"}", "invalid_argument"),
    ("{\"metadata\": {\"k\": \"" + "m" * 1100 + "\"}}", "invalid_argument"),  # > 1KiB
    ("{\"surprise\": true}", "invalid_argument"),
    ("{\"id\": \"a\", \"id\": \"b\"}", "invalid_argument"),
]


@pytest.mark.parametrize("body,code", BAD_BODIES)
def test_create_rejects_bad_input(ctl, body, code):
    before = zcard(ctl)
    assert_error(ctl.api("POST", "/v1/sessions", body), 400, code)
    assert zcard(ctl) == before  # nothing was bound


def test_bad_update_and_path_input(ctl):
    created(ctl.api("POST", "/v1/sessions", {"id": "upd"}))
    for body, code in [("{}", "invalid_argument"), ("{\"ttl\": true}", "invalid_argument"),
                       ("{\"ttl\": 99999}", "invalid_argument"), ("nope", "bad_request"),
                       ("{\"metadata\": {}}", "invalid_argument")]:
        assert_error(ctl.api("PATCH", "/v1/sessions/upd", body), 400, code)
    assert ctl.api("GET", "/v1/sessions/upd").json()["ttl_s"] == 3600  # unchanged
    for path in ["/v1/sessions/a%20b", "/v1/sessions/%zz", "/v1/sessions/a%2",
                 "/v1/sessions/" + "y" * 129, "/v1/sessions/%00", "/v1/sessions/%7F"]:
        for method in ("GET", "DELETE"):
            assert_error(ctl.api(method, path), 400, "invalid_session_key")
    r = ctl.api("PUT", "/v1/sessions/upd", {"ttl": 5})
    assert_error(r, 405, "method_not_allowed")
    assert {x.strip() for x in r.header("allow").split(",")} >= {"GET", "PATCH", "DELETE"}
    r = ctl.api("DELETE", "/v1/sessions")
    assert_error(r, 405, "method_not_allowed")
    assert "POST" in r.header("allow")
    assert ctl.api("DELETE", "/v1/sessions/upd").status == 204


def test_oversize_body_is_refused(ctl):
    # Over gateway.admin.max_body (64KiB): refused by its Content-Length before the handler
    # runs, with our JSON (common/httpd.c), and curl's Expect: 100-continue gets no 100.
    big = "{\"metadata\": {\"k\": \"" + "z" * (70 * 1024) + "\"}}"
    before = zcard(ctl)
    assert_error(ctl.api("POST", "/v1/sessions", big), 413, "body_too_large")
    assert zcard(ctl) == before
    assert curl(ctl.admin_url("/healthz")).status == 200


def test_pools(ctl):
    r = ctl.api("GET", "/v1/pools")
    assert r.status == 200, r
    j = r.json()
    hosts = {h["id"]: h for h in j["hosts"]}
    h = hosts[ctl.host_id]
    assert h["alive"] is True and h["capacity"] == 16 and h["driver"] == "process"
    assert 0 <= h["free"] <= 16 and 0 <= h["heartbeat_age_ms"] < 5000 * SLOW
    assert set(h["pools"]) == {"echo", "cold"}
    assert "api" not in h  # internal addresses are not shown to tenants
    assert abs(h["pools"]["echo"] - ctl.pool_len("echo")) <= 2  # refills run concurrently
    assert j["templates"]["echo"]["pool_min"] == 2 and j["templates"]["echo"]["pool_max"] == 8
    assert j["templates"]["cold"]["warm"] == 0
    assert_error(ctl.api("POST", "/v1/pools", {}), 405, "method_not_allowed")


# --- capacity (gateway without a scheduler; host and instances written into Redis) ---------


def seed_host(stack, template, n, host="h-seed", start=0):
    r, now = stack.redis, int(time.time() * 1000)
    r.cmd("ZADD", stack.key("hosts"), now, host)
    r.cmd("HSET", stack.key("host:", host), "api", "127.0.0.1:1", "free", 8, "capacity", 8,
          "driver", "process")
    for i in range(start, start + n):
        iid = "%s-%s-%d" % (host, template, i)
        r.cmd("HSET", stack.key("i:", iid), "host", host, "addr", "unix:/nonexistent/x.sock",
              "template", template, "state", "warm", "started", now)
        r.cmd("RPUSH", stack.key("pool:%s:%s" % (host, template)), iid)


def test_no_capacity(make_stack):
    s = gateway_only(make_stack)
    t = time.monotonic()
    r = s.api("POST", "/v1/sessions", {"id": "nocap"})
    assert_error(r, 503, "no_capacity")  # no live host at all
    assert r.header("retry-after") == "3"
    # a live host without warm instances whose API refuses the on-demand start
    seed_host(s, "echo", 0)
    assert_error(s.api("POST", "/v1/sessions", {"id": "nocap"}), 503, "no_capacity")
    assert time.monotonic() - t < 5 * SLOW
    assert_error(s.api("GET", "/v1/sessions/nocap"), 404, "not_found")


def test_slow_start_is_answered_after_start_timeout(make_stack):
    # The host's scheduler API accepts the connection and never answers: the create waits for
    # gateway.limits.start_timeout (2s), longer than the admin's connection timeout (1s),
    # and still gets its JSON 503.
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(16)
    try:
        s = make_stack({"templates": [echo_template()],
                        "gateway": {"retry_after": 3, "host_stale": "1h",
                                    "limits": {"start_timeout": "2s"},
                                    "admin": dict(ADMIN, timeout="1s")}},
                       start_scheduler=False, wait_pools=False)
        seed_host(s, "echo", 0)
        s.redis.cmd("HSET", s.key("host:h-seed"), "api", "127.0.0.1:%d" % mute.getsockname()[1])
        t = time.monotonic()
        r = s.api("POST", "/v1/sessions", {"id": "slow"}, timeout=20)
        took = time.monotonic() - t
        assert_error(r, 503, "no_capacity")
        assert 1.8 <= took < 2 + 3 * SLOW, took
        assert curl(s.admin_url("/healthz")).status == 200
    finally:
        mute.close()


def test_concurrent_creates_bind_each_instance_once(make_stack):
    s = gateway_only(make_stack)
    seed_host(s, "echo", 6)
    results = [None] * 14

    def one(i):
        results[i] = s.api("POST", "/v1/sessions", {"id": "race-%d" % i}, timeout=20)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40 * SLOW)
    ok = [created(r) for r in results if r.status == 201]
    assert len(ok) == 6, [r.status for r in results]
    assert len({x["instance"] for x in ok}) == 6
    for r in results:
        if r.status != 201:
            assert_error(r, 503, "no_capacity")
    assert s.redis.cmd("LLEN", s.key("pool:h-seed:echo")) == 0
    listed = s.api("GET", "/v1/sessions").json()["sessions"]
    assert sorted(x["id"] for x in listed) == sorted(x["id"] for x in ok)


# --- metrics ------------------------------------------------------------------------------

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (-?[0-9.eE+-]+|\+Inf|NaN)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def parse_prom(text):
    """Strict parse of the text format: each family's # HELP then # TYPE, once, before its
    samples; every sample line well formed and unique."""
    helps, types, samples = {}, {}, {}
    for line in text.split("\n"):
        if not line:
            continue
        if line.startswith("# HELP "):
            name, _, h = line[7:].partition(" ")
            assert name not in helps and h, line
            helps[name] = h
            continue
        if line.startswith("# TYPE "):
            name, _, t = line[7:].partition(" ")
            assert name not in types and t in ("counter", "gauge", "histogram"), line
            assert name in helps, "TYPE before HELP: " + line
            types[name] = t
            continue
        assert not line.startswith("#"), line
        m = SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        name, labels = m.group(1), {}
        if m.group(3):
            pos = 0
            for lm in LABEL.finditer(m.group(3)):
                assert lm.start() == pos, line
                labels[lm.group(1)] = lm.group(2)
                pos = lm.end()
            assert pos == len(m.group(3)), line
        base = name if name in types else re.sub(r"_(bucket|sum|count)$", "", name)
        assert base in types, "sample without # TYPE: " + line
        key = (name, tuple(sorted(labels.items())))
        assert key not in samples, "duplicate sample " + line
        samples[key] = float(m.group(4))
    return types, samples


def scrape(stack):
    r = curl(stack.admin_url("/metrics"))
    assert r.status == 200
    assert r.header("content-type").startswith("text/plain; version=0.0.4")
    text = r.body.decode()
    types, samples = parse_prom(text)
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        pass
    else:  # the reference parser agrees (when Debian's python3-prometheus-client is there)
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        assert fams["berth_gateway_request_duration_seconds"].type == "histogram"
    return types, samples


def val(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")


def test_metrics(ctl):
    types, s0 = scrape(ctl)
    expected = {
        "berth_gateway_requests_total": "counter",
        "berth_gateway_responses_total": "counter",
        "berth_gateway_errors_total": "counter",
        "berth_gateway_claims_total": "counter",
        "berth_gateway_cache_revalidations_total": "counter",
        "berth_gateway_request_duration_seconds": "histogram",
        "berth_gateway_connections_active": "gauge",
        "berth_gateway_connections_total": "counter",
        "berth_gateway_streams_active": "gauge",
        "berth_gateway_upstream_connects_total": "counter",
        "berth_gateway_upstream_reuses_total": "counter",
        "berth_gateway_body_bytes_total": "counter",
        "berth_sessions": "gauge",
        "berth_redis_up": "gauge",
    }
    for name, t in expected.items():
        assert types.get(name) == t, name
    assert val(s0, "berth_redis_up") == 1
    for c in CLASSES:
        assert val(s0, "berth_gateway_responses_total", **{"class": c}) is not None
    for code in ("not_found", "no_capacity", "invalid_session_key", "unknown_template"):
        assert val(s0, "berth_gateway_errors_total", code=code) is not None
    for res in ("cached", "bound", "new", "started", "failed"):
        assert val(s0, "berth_gateway_claims_total", result=res) is not None
    for by in ("touch", "lookup", "loop"):
        assert val(s0, "berth_gateway_cache_revalidations_total", by=by) is not None
    h = "berth_gateway_request_duration_seconds"
    buckets = sorted((float(dict(k[1])["le"]), v) for k, v in s0.items()
                     if k[0] == h + "_bucket")
    assert buckets[-1][0] == float("inf")
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
    assert buckets[-1][1] == val(s0, h + "_count")
    for tenant in ("default", "other"):
        assert val(s0, "berth_sessions", tenant=tenant) == zcard(ctl, tenant)

    # counters move: one API claim, then data-plane requests to that session
    s = created(ctl.api("POST", "/v1/sessions", {"id": "metered"}))
    for _ in range(3):
        r = ctl.get("/hello", session="metered", data="ping", method="POST")
        assert r.status == 200 and r.json()["instance"] == s["instance"]
    _, s1 = scrape(ctl)
    assert val(s1, "berth_gateway_claims_total", result="new") >= \
        val(s0, "berth_gateway_claims_total", result="new") + 1
    assert val(s1, "berth_gateway_requests_total") >= val(s0, "berth_gateway_requests_total") + 3
    assert val(s1, "berth_gateway_responses_total", **{"class": "2xx"}) >= \
        val(s0, "berth_gateway_responses_total", **{"class": "2xx"}) + 3
    assert val(s1, h + "_count") >= val(s0, h + "_count") + 3
    assert val(s1, h + "_sum") > val(s0, h + "_sum")
    assert val(s1, "berth_gateway_connections_total") >= \
        val(s0, "berth_gateway_connections_total") + 3
    assert val(s1, "berth_gateway_body_bytes_total", direction="in") >= \
        val(s0, "berth_gateway_body_bytes_total", direction="in") + 12
    assert val(s1, "berth_gateway_body_bytes_total", direction="out") > \
        val(s0, "berth_gateway_body_bytes_total", direction="out")
    assert val(s1, "berth_sessions", tenant="default") == zcard(ctl) == \
        val(s0, "berth_sessions", tenant="default") + 1
    # an API error is not a data-plane error: the data plane's counters stay put
    assert_error(ctl.api("GET", "/v1/sessions/%20"), 400, "invalid_session_key")
    _, s2 = scrape(ctl)
    assert val(s2, "berth_gateway_errors_total", code="invalid_session_key") == \
        val(s1, "berth_gateway_errors_total", code="invalid_session_key")
    assert ctl.api("DELETE", "/v1/sessions/metered").status == 204
    _, s3 = scrape(ctl)
    assert val(s3, "berth_sessions", tenant="default") == zcard(ctl) == \
        val(s1, "berth_sessions", tenant="default") - 1


# --- robustness ---------------------------------------------------------------------------


def test_garbage_and_slow_clients_do_not_hurt(ctl):
    port = ctl.ports["admin"]
    # Every refusal is our JSON error with its stable code, then the connection closes.
    assert raw_error(raw_exchange(port, b"\x00\x01GARBAGE\r\n\r\n")) == (400, "bad_request")
    assert raw_error(raw_exchange(port, b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n")) == \
        (400, "bad_request")
    assert raw_error(raw_exchange(port, b"GET healthz HTTP/1.1\r\n\r\n")) == (400, "bad_request")
    huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n"
    assert raw_error(raw_exchange(port, huge)) == (431, "headers_too_large")
    chunked = (b"POST /v1/sessions HTTP/1.1\r\nAuthorization: Bearer " + DEV_KEY.encode() +
               b"\r\nTransfer-Encoding: chunked\r\n\r\n" + b"10000\r\n" + b"z" * 65536 +
               b"\r\n" + b"10\r\n" + b"z" * 16 + b"\r\n0\r\n\r\n")
    assert raw_error(raw_exchange(port, chunked)) == (413, "body_too_large")
    # a client that never finishes its head does not block anyone else
    slow = socket.create_connection(("127.0.0.1", port))
    try:
        slow.sendall(b"GET /v1/sessions HTTP/1.1\r\nHost: x\r\n")
        assert curl(ctl.admin_url("/healthz"), timeout=3).status == 200
        assert ctl.api("GET", "/v1/sessions").status == 200
    finally:
        slow.close()
    # keep-alive: requests one after the other on one connection
    with socket.create_connection(("127.0.0.1", port), timeout=5 * SLOW) as c:
        for _ in range(3):
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += c.recv(4096)
            head, _, body = buf.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK")
            n = int(re.search(rb"Content-Length: (\d+)", head).group(1))
            while len(body) < n:
                body += c.recv(4096)
            assert json.loads(body) == {"status": "ok"}


# --- Redis outage -------------------------------------------------------------------------


def test_admin_connections_over_the_limit_get_json_503(make_stack):
    over = {"templates": [echo_template()],
            "gateway": {"admin": dict(ADMIN, max_connections=2, timeout="30s")}}
    s = make_stack(over, start_scheduler=False, wait_pools=False)
    port = s.ports["admin"]
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        # The two idle connections are accepted: wait until the gateway has them both.
        def third():
            out = raw_exchange(port, b"GET /healthz HTTP/1.1\r\n\r\n")
            return raw_error(out) if out.startswith(b"HTTP/1.1 503") else None
        assert wait_until(third, 10, "a 503 for a third admin connection") == (503, "overloaded")
    finally:
        for c in held:
            c.close()
    # Once they are gone, the listener serves again.
    wait_until(lambda: curl(s.admin_url("/healthz")).status == 200, 10, "the admin listener again")


def test_readyz_follows_redis(make_stack):
    s = gateway_only(make_stack)
    seed_host(s, "echo", 2)
    created(s.api("POST", "/v1/sessions", {"id": "before"}))
    s.redis.close()
    s.problems += s.redis_server.stop()

    def not_ready():
        r = curl(s.admin_url("/readyz"))
        return r if r.status == 503 else None
    r = wait_until(not_ready, 5 * SLOW, "/readyz 503")
    assert r.json() == {"status": "not_ready", "reason": "redis not connected"}
    assert curl(s.admin_url("/healthz")).status == 200  # alive, just not ready
    t = time.monotonic()
    assert_error(s.api("POST", "/v1/sessions", {"id": "during"}), 503, "store_unavailable")
    assert_error(s.api("GET", "/v1/sessions/before"), 503, "store_unavailable")
    assert_error(s.api("PATCH", "/v1/sessions/before", {"ttl": 60}), 503, "store_unavailable")
    assert_error(s.api("GET", "/v1/sessions"), 503, "store_unavailable")
    assert_error(s.api("DELETE", "/v1/sessions/before"), 503, "store_unavailable")
    assert_error(s.api("GET", "/v1/pools"), 503, "store_unavailable")
    assert time.monotonic() - t < 5 * SLOW  # fast, not a timeout each
    _, samples = scrape(s)
    assert val(samples, "berth_redis_up") == 0
    assert not any(k[0] == "berth_sessions" for k in samples)

    s.redis_server.start()  # same port, empty data set
    s.redis = s.redis_server.client()
    wait_until(lambda: curl(s.admin_url("/readyz")).status == 200, 15 * SLOW,
               "/readyz back to 200")
    _, samples = scrape(s)
    assert val(samples, "berth_redis_up") == 1
    assert val(samples, "berth_sessions", tenant="default") == 0
    seed_host(s, "echo", 1)
    created(s.api("POST", "/v1/sessions", {"id": "after"}))


def test_readyz_while_redis_is_down_at_start(make_stack):
    s = make_stack({"gateway": {"admin": ADMIN}}, start_scheduler=False, start_gateway=False,
                   wait_pools=False)
    s.redis.close()
    s.problems += s.redis_server.stop()
    s.gateway = Proc("gateway", [binary("berth-gateway"), "-c", s.config_path], s.base)
    wait_until(lambda: curl(s.admin_url("/healthz"), timeout=2).status == 200, 10 * SLOW,
               "/healthz")
    r = curl(s.admin_url("/readyz"))
    assert r.status == 503 and r.json()["reason"] == "redis not connected"
    assert_error(s.api("GET", "/v1/sessions"), 503, "store_unavailable")
    s.redis_server.start()
    s.redis = s.redis_server.client()
    wait_until(lambda: curl(s.admin_url("/readyz"), timeout=2).status == 200, 15 * SLOW,
               "/readyz 200")
    assert s.api("GET", "/v1/sessions").json() == {"sessions": [], "next_cursor": None}

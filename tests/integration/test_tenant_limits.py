"""Per-tenant limits (issue 19): tenants[].limits.max_sessions, enforced in Redis's claim and
bind scripts (so across every gateway replica), answered 429 tenant_limit with Retry-After on
the data plane and the control API, with an audit event and per-tenant metrics. Real
redis-server, berth-scheduler (process sandboxes running berth-echo), berth-gateway, curl.

    BERTH_BUILD_DIR=build /usr/bin/python3 -m pytest tests/integration/test_tenant_limits.py
"""
import concurrent.futures
import json
import math
import os
import signal
import subprocess
import time

import pytest

from conftest import (DEV_KEY, OTHER_KEY, SLOW, Proc, _sha256, binary, curl, echo_template, free_port,
                      wait_until, write_config)
from test_control_api import scrape, val

RETRY_AFTER = 3


def limited_config(max_sessions, templates=None):
    return {
        "tenants": [
            {"name": "default", "api_keys_sha256": [_sha256(DEV_KEY)],
             "limits": {"max_sessions": max_sessions}},
            {"name": "other", "api_keys_sha256": [_sha256(OTHER_KEY)]},
        ],
        "templates": templates or [echo_template(pool={"min": 2, "max": 8})],
        "gateway": {"retry_after": RETRY_AFTER, "admin": {"events_poll": "100ms"},
                    "routes": [{"name": "other", "path_prefix": "/other/", "tenant": "other"},
                               {"name": "default", "path_prefix": "/"}]},
    }


def assert_limited(r, limit="max_sessions"):
    assert r.status == 429, (r.status, r.body[:300])
    j = r.json()
    assert set(j) == {"error"} and j["error"]["code"] == "tenant_limit", j
    assert limit in j["error"]["message"], j
    assert r.header("retry-after") == str(RETRY_AFTER), r.headers


def sessions(s, tenant="default"):
    return s.redis.cmd("ZCARD", s.key("sessions:", tenant))


def test_control_api_creates_stop_at_the_limit_and_resume_after_a_delete(make_stack):
    s = make_stack(limited_config(3))
    for i in range(3):
        r = s.api("POST", "/v1/sessions", {"id": "lim-%d" % i})
        assert r.status == 201, r
    assert_limited(s.api("POST", "/v1/sessions", {"id": "lim-3"}))
    assert_limited(s.api("POST", "/v1/sessions", {}))   # a generated id is a new session too
    assert sessions(s) == 3
    # Another tenant is not limited, and is not slowed by the refusals.
    for i in range(4):
        assert s.api("POST", "/v1/sessions", {"id": "oth-%d" % i}, key=OTHER_KEY).status == 201
    # The tenant's existing sessions are served as before.
    r = s.get("/x", session="lim-1")
    assert r.status == 200, r
    # Creating an existing session is not a new one: the conflict, not the limit.
    assert s.api("POST", "/v1/sessions", {"id": "lim-1"}).status == 409
    # One ends: there is room for one more, and only one.
    assert s.api("DELETE", "/v1/sessions/lim-0").status == 204
    assert s.api("POST", "/v1/sessions", {"id": "lim-3"}).status == 201
    assert_limited(s.api("POST", "/v1/sessions", {"id": "lim-4"}))

    # The audit trail: a tenant_limit event (at most one a second per tenant and limit).
    def limit_events():
        r = s.api("GET", "/v1/events?type=tenant_limit")
        assert r.status == 200, r
        return r.json()["events"] or None
    ev = wait_until(limit_events, 10 * SLOW, "a tenant_limit event")
    assert ev[0]["tenant"] == "default" and ev[0]["limit"] == "max_sessions", ev
    assert ev[0]["max"] == "3", ev
    other = s.api("GET", "/v1/events?type=tenant_limit", key=OTHER_KEY).json()["events"]
    assert other == []
    # A client that retries in a loop does not flood the audit trail: one event a second.
    t0 = time.monotonic()
    for i in range(30):
        assert_limited(s.api("POST", "/v1/sessions", {"id": "flood-%d" % i}))
    elapsed = time.monotonic() - t0
    r = s.api("GET", "/v1/events?type=tenant_limit&limit=1000")
    n = len(r.json()["events"])
    assert 1 <= n <= len(ev) + math.ceil(elapsed) + 1, (n, elapsed)
    # Metrics: the configured limit and the refusals, by tenant and limit.
    types, samples = scrape(s)
    assert types["berth_tenant_limit"] == "gauge"
    assert types["berth_tenant_limited_total"] == "counter"
    assert val(samples, "berth_tenant_limit", tenant="default", limit="max_sessions") == 3
    assert val(samples, "berth_tenant_limited_total", tenant="default",
               limit="max_sessions") == 33
    assert val(samples, "berth_tenant_limited_total", tenant="other", limit="max_sessions") is None


def test_data_plane_new_session_keys_stop_at_the_limit(make_stack):
    s = make_stack(limited_config(2))
    assert s.get("/a", session="dp-1").status == 200
    assert s.get("/a", session="dp-2").status == 200
    assert_limited(s.get("/a", session="dp-3"))
    # Existing sessions keep working, at the limit.
    for k in ("dp-1", "dp-2", "dp-1"):
        assert s.get("/again", session=k).status == 200
    # The other tenant's route is not limited.
    for i in range(4):
        assert s.get("/other/x", session="o-%d" % i).status == 200
    assert sessions(s) == 2 and sessions(s, "other") == 4
    assert s.api("DELETE", "/v1/sessions/dp-1").status == 204
    assert s.get("/a", session="dp-3").status == 200
    types, samples = scrape(s)
    assert val(samples, "berth_gateway_errors_total", code="tenant_limit") == 1


@pytest.mark.berth_timeout(240)
def test_concurrent_cold_starts_bind_at_most_the_limit(make_stack):
    """No warm instance: every claim goes to the scheduler, and the bind script re-checks the
    limit there. Of 6 concurrent creates with max_sessions 2, exactly 2 get a session; the
    instances started for the others are put into the pool, not leaked."""
    s = make_stack(limited_config(2, [echo_template("cold", pool={"min": 0, "max": 6})]),
                   wait_pools=False)

    def create(i):
        return s.api("POST", "/v1/sessions", {"id": "c-%d" % i, "template": "cold"},
                     timeout=60 * SLOW)
    with concurrent.futures.ThreadPoolExecutor(6) as ex:
        rs = list(ex.map(create, range(6)))
    ok = [r for r in rs if r.status == 201]
    assert len(ok) == 2, [(r.status, r.body[:120]) for r in rs]
    for r in rs:
        if r.status != 201:
            assert_limited(r)
    assert sessions(s) == 2
    # Every started instance is either bound or warm in the pool (none left starting).
    def settled():
        states = [i.get("state") for i in s.instances().values()]
        return states if states and all(x in ("bound", "warm") for x in states) else None
    states = wait_until(settled, 30 * SLOW, "the refused starts' instances in the pool")
    assert states.count("bound") == 2, states


def test_the_limit_holds_across_two_gateways(make_stack):
    """Counted in Redis: a second gateway on the same Redis sees the first one's sessions."""
    s = make_stack(limited_config(4))
    cfg = json.loads(json.dumps(s.cfg))
    cfg["gateway"]["listen"] = "127.0.0.1:%d" % free_port()
    cfg["gateway"]["admin_listen"] = "127.0.0.1:%d" % free_port()
    path = write_config(s.base / "gw2.yaml", cfg)
    gw2 = Proc("gateway2", [binary("berth-gateway"), "-c", path], s.base, cwd=str(s.base))
    try:
        admin2 = "http://%s" % cfg["gateway"]["admin_listen"]
        wait_until(lambda: curl(admin2 + "/readyz", timeout=2).status == 200, 20 * SLOW,
                   "the second gateway's /readyz")
        url2 = "http://%s/x" % cfg["gateway"]["listen"]
        answers = []
        for i in range(8):
            key = "two-%d" % i
            if i % 2:
                r = curl(url2, headers={"x-fc-session-id": key})
            else:
                r = s.get("/x", session=key)
            answers.append(r.status)
            if r.status != 200:
                assert_limited(r)
        assert answers == [200] * 4 + [429] * 4, answers
        assert sessions(s) == 4
    finally:
        problems = gw2.stop()
    assert not problems, problems


def test_new_sessions_per_second_is_a_token_bucket(make_stack):
    """limits.sessions_per_second 1 with sessions_burst 3: a burst of 3 goes through at once,
    then new sessions are refused (429 tenant_limit naming sessions_per_second) until the
    bucket refills; existing sessions and the other tenant are not limited."""
    cfg = limited_config(0)
    cfg["tenants"][0]["limits"] = {"sessions_per_second": 1, "sessions_burst": 3}
    s = make_stack(cfg)
    t0 = time.monotonic()
    made, refused = [], None
    for i in range(50):   # bounded: the bucket refills at 1/s, so it empties long before
        r = s.api("POST", "/v1/sessions", {"id": "r-%d" % i})
        if r.status != 201:
            refused = r
            break
        made.append("r-%d" % i)
    elapsed = time.monotonic() - t0
    assert refused is not None, "never refused"
    assert refused.status == 429, refused
    j = refused.json()
    assert j["error"]["code"] == "tenant_limit", j
    assert "sessions_per_second" in j["error"]["message"], j
    assert refused.header("retry-after") == str(RETRY_AFTER)
    # The burst, plus at most what refilled meanwhile (one a second).
    assert 3 <= len(made) <= 3 + math.ceil(elapsed), (len(made), elapsed)
    # Existing sessions are served; the other tenant creates freely.
    assert s.get("/x", session=made[0]).status == 200
    for i in range(5):
        assert s.api("POST", "/v1/sessions", {"id": "o-%d" % i}, key=OTHER_KEY).status == 201
    # The bucket refills: a new session goes through again within a few seconds.
    def refilled():
        r = s.api("POST", "/v1/sessions", {"id": "later"})
        assert r.status in (201, 429), r
        return r.status == 201
    wait_until(refilled, 10 * SLOW, "a token in the tenant's bucket")
    types, samples = scrape(s)
    assert val(samples, "berth_tenant_limit", tenant="default", limit="sessions_per_second") == 1
    assert val(samples, "berth_tenant_limit", tenant="default", limit="sessions_burst") == 3
    assert val(samples, "berth_tenant_limited_total", tenant="default",
               limit="sessions_per_second") >= 1
    ev = s.api("GET", "/v1/events?type=tenant_limit").json()["events"]
    assert ev and ev[0]["limit"] == "sessions_per_second" and ev[0]["max"] == "1", ev


def test_data_plane_requests_per_second(make_stack):
    """limits.requests_per_second 5 with requests_burst 5, per gateway process: a burst of
    requests on the tenant's routes is cut at the rate with 429 tenant_limit naming
    requests_per_second; the other tenant's route is not limited; the limit is one for the
    whole gateway (two workers share it)."""
    cfg = limited_config(0)
    cfg["tenants"][0]["limits"] = {"requests_per_second": 5, "requests_burst": 5}
    cfg["gateway"]["workers"] = 2
    s = make_stack(cfg)
    assert s.get("/warm", session="rq-1").status == 200   # the session exists (1 token)
    t0 = time.monotonic()
    statuses = []
    with concurrent.futures.ThreadPoolExecutor(4) as ex:   # several connections: both workers
        for r in ex.map(lambda i: s.get("/r%d" % i, session="rq-1"), range(40)):
            statuses.append(r.status)
            if r.status != 200:
                assert r.status == 429, r
                j = r.json()
                assert j["error"]["code"] == "tenant_limit", j
                assert "requests_per_second" in j["error"]["message"], j
                assert r.header("retry-after") == str(RETRY_AFTER)
    elapsed = time.monotonic() - t0
    ok = statuses.count(200)
    # at most the burst left after the first request plus what the rate refilled meanwhile
    assert 1 <= ok <= 4 + math.ceil(elapsed * 5) + 1, (ok, elapsed)
    assert statuses.count(429) >= 40 - (4 + math.ceil(elapsed * 5) + 1)
    # The other tenant's route is not limited.
    for i in range(20):
        assert s.get("/other/x", session="o-1").status == 200
    # After a pause the tenant is served again.
    wait_until(lambda: s.get("/again", session="rq-1").status == 200, 10 * SLOW,
               "a request within the rate")
    types, samples = scrape(s)
    assert val(samples, "berth_tenant_limit", tenant="default", limit="requests_per_second") == 5
    assert val(samples, "berth_tenant_limited_total", tenant="default",
               limit="requests_per_second") >= statuses.count(429)


@pytest.mark.berth_timeout(240)
def test_max_execs_counts_the_tenants_commands_across_its_sessions(make_stack):
    """limits.max_execs 2: two long commands in two of the tenant's sessions hold both slots
    (leases in Redis); a third command, in either session, gets 429 tenant_limit naming
    max_execs; the other tenant's commands run; a client that goes away gives its slot back."""
    cfg = limited_config(0)
    cfg["tenants"][0]["limits"] = {"max_execs": 2}
    s = make_stack(cfg)
    for k in ("ex-a", "ex-b"):
        assert s.get("/", session=k).status == 200
    assert s.get("/other/", session="ex-o").status == 200
    body = json.dumps({"cmd": ["/bin/sleep", "25"]})
    ps = [subprocess.Popen(["curl", "-sS", "-N", "-H", "Authorization: Bearer " + DEV_KEY,
                            "--data-binary", body, s.admin_url("/v1/sessions/%s/exec" % k)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
          for k in ("ex-a", "ex-b")]
    try:
        def sleeps():
            out = subprocess.run(["pgrep", "-f", "^/bin/sleep 25$"], capture_output=True,
                                 text=True).stdout.split()
            return out if len(out) == 2 else None
        pids = wait_until(sleeps, 20 * SLOW, "two commands running")
        assert s.redis.cmd("ZCARD", s.key("execs:", "default")) == 2
        for k in ("ex-a", "ex-b"):
            r = s.api("POST", "/v1/sessions/%s/exec" % k, {"cmd": ["/bin/true"]})
            assert_limited(r, "max_execs")
        r = s.api("POST", "/v1/sessions/ex-o/exec", {"cmd": ["/bin/true"]}, key=OTHER_KEY)
        assert r.status == 200, r
        ps[0].kill()
        ps[0].wait()
        wait_until(lambda: s.redis.cmd("ZCARD", s.key("execs:", "default")) == 1, 10 * SLOW,
                   "the slot given back")
        r = s.api("POST", "/v1/sessions/ex-a/exec", {"cmd": ["/bin/true"]})
        assert r.status == 200, r
        assert json.loads(r.body.decode().splitlines()[-1])["exit_code"] == 0
        wait_until(lambda: s.redis.cmd("ZCARD", s.key("execs:", "default")) == 1, 10 * SLOW,
                   "the finished command's slot given back")
    finally:
        for p in ps:
            if p.poll() is None:
                p.kill()
                p.wait()
    wait_until(lambda: not any(os.path.exists("/proc/%s" % pid) for pid in pids), 10 * SLOW,
               "the commands killed")
    types, samples = scrape(s)
    assert val(samples, "berth_tenant_limit", tenant="default", limit="max_execs") == 2
    assert val(samples, "berth_tenant_limited_total", tenant="default", limit="max_execs") == 2
    ev = s.api("GET", "/v1/events?type=tenant_limit").json()["events"]
    assert ev and ev[0]["limit"] == "max_execs", ev


MIB = 1 << 20


@pytest.mark.parametrize("limit,value", [("max_memory", "600MiB"), ("max_cpus", 1.2)])
def test_memory_and_cpus_of_a_tenants_sandboxes(make_stack, limit, value):
    """The templates' memory (256MiB) and cpus (0.5) summed over the tenant's sessions that
    hold a sandbox: two fit under 600MiB (or 1.2 cores), a third is 429 tenant_limit naming
    the limit, warm or cold-started; a session that ends, or whose sandbox is lost, gives its
    room back."""
    cfg = limited_config(0, [echo_template(pool={"min": 2, "max": 4}),
                             echo_template("cold", pool={"min": 0, "max": 2})])
    cfg["tenants"][0]["limits"] = {limit: value}
    s = make_stack(cfg)
    use = lambda: s.redis.hgetall(s.key("use:", "default"))  # noqa: E731
    assert s.api("POST", "/v1/sessions", {"id": "m-1"}).status == 201
    assert s.api("POST", "/v1/sessions", {"id": "m-2", "template": "cold"},
                 timeout=60 * SLOW).status == 201
    assert use() == {"mem": str(512 * MIB), "mcpu": "1000"}, use()
    assert_limited(s.api("POST", "/v1/sessions", {"id": "m-3"}), limit)
    assert_limited(s.api("POST", "/v1/sessions", {"id": "m-3", "template": "cold"},
                         timeout=60 * SLOW), limit)
    assert_limited(s.get("/", session="m-3"), limit)
    # The other tenant is not counted against it.
    for i in range(3):
        assert s.get("/other/", session="o-%d" % i).status == 200
    # An ended session gives its room back.
    assert s.api("DELETE", "/v1/sessions/m-1").status == 204
    assert use() == {"mem": str(256 * MIB), "mcpu": "500"}, use()
    assert s.get("/", session="m-3").status == 200
    # So does one whose sandbox is lost (its record stays, without a sandbox).
    iid = s.api("GET", "/v1/sessions/m-2").json()["instance"]
    os.kill(int(s.redis.hgetall(s.key("i:", iid))["pid"]), signal.SIGKILL)
    wait_until(lambda: s.api("GET", "/v1/sessions/m-2").json()["state"] == "lost", 20 * SLOW,
               "the session lost")
    assert use() == {"mem": str(256 * MIB), "mcpu": "500"}, use()   # m-3's alone
    # Deleting the lost session does not count it off twice.
    assert s.api("DELETE", "/v1/sessions/m-2").status == 204
    assert use() == {"mem": str(256 * MIB), "mcpu": "500"}, use()
    assert s.api("DELETE", "/v1/sessions/m-3").status == 204
    assert use() == {"mem": "0", "mcpu": "0"}, use()
    types, samples = scrape(s)
    assert val(samples, "berth_tenant_limited_total", tenant="default", limit=limit) >= 2


def test_a_tenant_hammering_its_limit_does_not_hold_up_another(make_stack):
    """Same run: tenant default, at max_sessions, retries new sessions in a loop on the data
    plane and the control API (every one a 429 at once, none queued) while tenant other is
    served on both; every one of other's requests succeeds. Its latency is printed for a
    person (bench/ measures; a test does not time)."""
    s = make_stack(limited_config(1))
    assert s.get("/", session="full").status == 200
    stop = time.monotonic() + 4 * SLOW
    refused, other_ok, other_ms = [0], [0], []

    def hammer(i):
        n = 0
        while time.monotonic() < stop:
            r = (s.get("/", session="h-%d-%d" % (i, n)) if n % 2 else
                 s.api("POST", "/v1/sessions", {"id": "h-%d-%d" % (i, n)}))
            assert_limited(r)
            refused[0] += 1
            n += 1

    def other(i):
        while time.monotonic() < stop:
            t0 = time.monotonic()
            r = s.get("/other/", session="b-%d" % (i % 5))
            other_ms.append((time.monotonic() - t0) * 1000)
            assert r.status == 200, r
            other_ok[0] += 1

    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        futs = [ex.submit(hammer, 0), ex.submit(hammer, 1), ex.submit(other, 0),
                ex.submit(other, 1)]
        for f in futs:
            f.result(timeout=60 * SLOW)
    assert refused[0] > 10 and other_ok[0] > 10, (refused, other_ok)
    assert s.redis.cmd("ZCARD", s.key("sessions:", "default")) == 1
    other_ms.sort()
    print("other tenant: %d requests, p50 %.1f ms, p99 %.1f ms, while %d refusals" % (
        len(other_ms), other_ms[len(other_ms) // 2], other_ms[int(len(other_ms) * 0.99)],
        refused[0]))


CI_KEY = "berth-ci-key-with-limits"
ADMIN_KEY = "berth-admin-key-without"


def test_an_api_keys_own_limits_replace_the_tenants_for_its_calls(make_stack):
    """tenants[].api_keys: a key with max_sessions 2 and max_execs 1 of its own; the tenant
    has max_sessions 4 and no exec limit. The key's creates stop when the tenant holds 2
    sessions, the tenant's other keys go on to 4; the key runs one command at a time, the
    others as many as they like."""
    cfg = limited_config(4)
    cfg["tenants"][0]["api_keys"] = [
        {"sha256": _sha256(CI_KEY), "limits": {"max_sessions": 2, "max_execs": 1}},
        {"sha256": _sha256(ADMIN_KEY)}]
    s = make_stack(cfg)
    assert s.api("POST", "/v1/sessions", {"id": "k-1"}, key=CI_KEY).status == 201
    assert s.api("POST", "/v1/sessions", {"id": "k-2"}, key=ADMIN_KEY).status == 201
    assert_limited(s.api("POST", "/v1/sessions", {"id": "k-3"}, key=CI_KEY))
    # The same tenant's other keys: the tenant's limit (4).
    assert s.api("POST", "/v1/sessions", {"id": "k-3"}, key=DEV_KEY).status == 201
    assert s.api("POST", "/v1/sessions", {"id": "k-4"}, key=ADMIN_KEY).status == 201
    assert_limited(s.api("POST", "/v1/sessions", {"id": "k-5"}, key=DEV_KEY))
    # Both keys see the tenant's sessions.
    got = s.api("GET", "/v1/sessions", key=CI_KEY).json()["sessions"]
    assert {x["id"] for x in got} == {"k-1", "k-2", "k-3", "k-4"}
    # max_execs 1 for the key's commands.
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        slow = ex.submit(s.api, "POST", "/v1/sessions/k-1/exec",
                         {"cmd": ["/bin/sh", "-c", "sleep 3"]}, key=CI_KEY, timeout=30 * SLOW)
        wait_until(lambda: s.redis.cmd("ZCARD", s.key("execs:default")) >= 1, 10 * SLOW,
                   "the first command's lease")
        r = s.api("POST", "/v1/sessions/k-2/exec", {"cmd": ["/bin/true"]}, key=CI_KEY)
        assert_limited(r, "max_execs")
        r = s.api("POST", "/v1/sessions/k-2/exec", {"cmd": ["/bin/true"]}, key=DEV_KEY)
        assert r.status == 200, r
        assert slow.result().status == 200

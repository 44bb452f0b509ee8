"""Usage metering (issue 17), checked against what a test session really did: a known number
of requests and bytes (the gateway's counters), a command burning CPU for a known time and a
pause of a known length (the scheduler's samples), read back with GET /v1/usage per session
and per template, and as Prometheus counters by tenant and template on the gateway's /metrics
(requests, bytes, active time: exactly what /v1/usage has, summed over two loops) and the
scheduler's (wall, paused, CPU, memory: what /v1/usage has, to within what was sampled between
the two reads; that endpoint wants the scheduler's secret). What a hostile tenant could do: read another tenant's usage (it cannot: the
records are per tenant), or make its own look smaller (the counts come from the gateway and
from the host's view of its processes, not from anything inside the sandbox)."""
import time

import pytest

from conftest import OTHER_KEY, SLOW, curl, echo_template, prom_metrics, wait_until

pytestmark = pytest.mark.berth_timeout(180)


def usage(s, query="", key=None):
    kw = {"key": key} if key else {}
    r = s.api("GET", "/v1/usage" + query, **kw)
    assert r.status == 200, r
    return r.json()


def row(s, sid, query="?group_by=session"):
    for u in usage(s, query)["usage"]:
        if u.get("id") == sid:
            return u
    return None


def series(name, tenant="default", template="echo"):
    return '%s{tenant="%s",template="%s"}' % (name, tenant, template)


GW_USAGE = {"requests": "berth_usage_requests_total", "bytes_in": "berth_usage_bytes_in_total",
            "bytes_out": "berth_usage_bytes_out_total",
            "active_ms": "berth_usage_active_seconds_total"}
SCHED_USAGE = {"wall_ms": "berth_usage_wall_seconds_total",
               "paused_ms": "berth_usage_paused_seconds_total",
               "cpu_ms": "berth_usage_cpu_seconds_total",
               "mem_kib_ms": "berth_usage_memory_kib_seconds_total"}


def gateway_usage(s):
    """The gateway's berth_usage_* counters of (default, echo), in /v1/usage's units."""
    m = prom_metrics(s.admin_url("/metrics"))
    return {k: round(m.get(series(v), 0) * (1000 if k == "active_ms" else 1))
            for k, v in GW_USAGE.items()}


def scheduler_usage(s):
    """The scheduler's berth_usage_* counters of (default, echo), in ms (KiB x ms)."""
    r = s.sched_api("/metrics")
    assert r.status == 200 and r.header("content-type").startswith("text/plain"), r
    m = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            m[k] = float(v)
    return {k: round(m.get(series(v), 0) * 1000) for k, v in SCHED_USAGE.items()}


def test_usage_counts_what_a_session_did(make_stack):
    s = make_stack({"templates": [echo_template(pool={"min": 2, "max": 4})],
                    "gateway": {"activity_flush": "200ms", "workers": 2}})
    t0 = int(time.time() * 1000)
    gw0, sch0 = gateway_usage(s), scheduler_usage(s)
    body = b"x" * 10000
    for _ in range(5):
        r = curl(s.url("/"), method="POST", data=body, headers={"x-fc-session-id": "u-1"})
        assert r.status == 200
    out = len(r.body)
    # A command that burns 1.5 s of CPU time (its own clock, so a busy machine only makes it
    # take longer; the template's quota, cpus 0.5, makes that at least 3 s of wall time).
    r = s.api("POST", "/v1/sessions/u-1/exec",
              {"cmd": ["/usr/bin/python3", "-c",
                       "import time\nwhile time.process_time() < 1.5: pass"], "timeout": 300},
              timeout=300 * SLOW)
    assert r.status == 200 and b'"exit_code":0' in r.body
    assert s.api("POST", "/v1/sessions/u-1/pause").status == 200
    time.sleep(1.2)
    assert s.api("POST", "/v1/sessions/u-1/resume").status == 200
    # Another session, of the same template.
    assert s.get("/", session="u-2").status == 200

    def settled():
        u = row(s, "u-1")
        return u if u and u["requests"] >= 5 and u["cpu_ms"] >= 1400 and \
            u["paused_ms"] >= 1000 else None
    u = wait_until(settled, 15 * SLOW, "the usage to be recorded")
    assert u["requests"] == 5                      # data-plane requests, not API calls
    assert u["bytes_in"] == 5 * len(body)
    assert u["bytes_out"] >= 5 * (out - 100) and u["bytes_out"] <= 5 * out * 2
    # What the command burned, and little else (less by up to a clock tick and what the
    # sample taken at the bind, which only sets the marks, leaves out).
    assert 1400 <= u["cpu_ms"] <= 1500 + 1000
    assert 1000 <= u["paused_ms"] <= 3000
    assert u["wall_ms"] >= u["paused_ms"] + u["active_ms"]
    assert u["idle_ms"] == u["wall_ms"] - u["active_ms"] - u["paused_ms"]
    assert u["active_ms"] < u["wall_ms"] and u["template"] == "echo"
    assert u["mem_peak_bytes"] > 0 and 0 < u["mem_avg_bytes"] <= u["mem_peak_bytes"]
    # Per template: both sessions together.
    wait_until(lambda: row(s, "u-2") and row(s, "u-2")["requests"] >= 1, 10 * SLOW,
               "the second session's usage")
    tpl = usage(s, "?group_by=template")["usage"]
    assert [t["template"] for t in tpl] == ["echo"]
    assert tpl[0]["requests"] >= 6 and tpl[0]["cpu_ms"] >= u["cpu_ms"]
    # The same as Prometheus counters by tenant and template. The gateway's: exactly the
    # requests and bytes sent (nothing else reached the data plane), and what /v1/usage has
    # (both count the deltas of the same USAGE calls; the counters once their reply is in).
    assert gw0 == {k: 0 for k in GW_USAGE}

    def gateway_caught_up():
        t = usage(s, "?group_by=template")["usage"][0]
        g = gateway_usage(s)
        return (t, g) if g["requests"] == 6 and all(g[k] == t[k] for k in GW_USAGE) else None
    t, g = wait_until(gateway_caught_up, 10 * SLOW, "the gateway's usage counters")
    assert g["requests"] == t["requests"] == 6
    assert g["bytes_in"] == t["bytes_in"] == 5 * len(body)
    assert g["bytes_out"] == t["bytes_out"] >= u["bytes_out"]
    assert g["active_ms"] == t["active_ms"] < t["wall_ms"]
    # The scheduler's: it samples every heartbeat while u-2 is bound, so a read of it is
    # bracketed by /v1/usage before and after (a reply is counted after Redis ran the call).
    assert all(v == 0 for v in sch0.values()), sch0
    before = scheduler_usage(s)
    t = usage(s, "?group_by=template")["usage"][0]
    assert before["wall_ms"] <= t["wall_ms"] and before["cpu_ms"] <= t["cpu_ms"]
    assert before["paused_ms"] <= t["paused_ms"]
    after = wait_until(lambda: (lambda a: a if a["wall_ms"] >= t["wall_ms"] else None)(
        scheduler_usage(s)), 10 * SLOW, "the scheduler's usage counters")
    assert after["cpu_ms"] >= t["cpu_ms"] >= u["cpu_ms"] >= 1000
    assert after["cpu_ms"] <= t["cpu_ms"] + 1000  # echo idles: little CPU meanwhile
    assert after["paused_ms"] >= t["paused_ms"] >= u["paused_ms"] >= 1000
    assert after["paused_ms"] <= t["paused_ms"] + 1000  # nothing is paused meanwhile
    assert 0 < after["mem_kib_ms"]
    # KiB x s / s: the mean memory, of the order of what /v1/usage says it was.
    avg = after["mem_kib_ms"] * 1024 / after["wall_ms"]
    assert 0 < avg <= 2 * t["mem_peak_bytes"], (avg, t)
    # A record survives its session.
    assert s.api("DELETE", "/v1/sessions/u-1").status == 204
    assert row(s, "u-1")["requests"] == 5
    # Time windows, tenants apart, bad input.
    now = int(time.time() * 1000)
    assert usage(s, "?from=%d&to=%d" % (t0 - 7200000, t0 - 3600001))["usage"] == []
    assert usage(s, "?from=%d&to=%d" % (t0 - 1000, now + 1000))["usage"]
    assert usage(s, key=OTHER_KEY)["usage"] == []
    for q in ("?from=x", "?to=5&from=9", "?group_by=instance", "?other=1",
              "?from=0&to=%d" % (40 * 86400000)):
        r = s.api("GET", "/v1/usage" + q)
        assert r.status == 400 and r.json()["error"]["code"] == "invalid_argument", (q, r)


def test_usage_of_more_sessions_than_one_script_call_takes(make_stack):
    """30 sessions active in one flush of the gateway, and bound on one scheduler: more than
    one USAGE call takes (its ARGV is bounded), so each side splits them into calls that fit.
    A call over the bound was refused whole, and every session in it lost its usage."""
    s = make_stack({"templates": [echo_template(pool={"min": 4, "max": 34})],
                    "gateway": {"activity_flush": "2s"}, "scheduler": {"capacity": 40}})
    keys = ["many-%02d" % i for i in range(30)]
    for k in keys:
        assert s.get("/", session=k, timeout=30 * SLOW).status == 200

    def all_recorded():
        rows = {u.get("id"): u for u in usage(s, "?group_by=session")["usage"]}
        return rows if all(k in rows and rows[k]["requests"] == 1 and rows[k]["wall_ms"] > 0
                           for k in keys) else None
    rows = wait_until(all_recorded, 20 * SLOW, "every session's usage from both sides")
    assert all(rows[k]["mem_peak_bytes"] > 0 for k in keys)
    assert "not recorded" not in s.gateway.log() and "not recorded" not in s.scheduler.log()

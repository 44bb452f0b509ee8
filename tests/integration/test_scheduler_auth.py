"""The scheduler API's shared secret (scheduler.api_secret / api_secret_file), end to end: a real
redis-server, the real berth-scheduler and berth-gateway, real curl.

- POST /v1/start and the full GET /v1/status need "Authorization: Bearer <secret>"; without it
  or with a wrong one: 401 unauthorized (WWW-Authenticate: Bearer), nothing started or bound;
  GET /v1/status without it answers host-level counts only; /healthz stays open. GET /metrics
  (usage by tenant and template) needs it too.
- A start for a tenant the config does not define: 400 unknown_tenant.
- The scheduler does not start without a secret, nor with a secret file others may read.
- The gateway sends the secret from the same keys (on-demand starts work); with another secret
  its starts are refused and it says why.

Run as root: BERTH_BUILD_DIR=build /usr/bin/python3 -m pytest
tests/integration/test_scheduler_auth.py
"""

import json
import os
import subprocess
import time

import pytest

from conftest import (SCHED_SECRET, SLOW, binary, echo_template, free_port,
                      logged_cgroup_parents, make_config, port_open, remove_cgroup_dirs,
                      wait_until, write_config)


def session(n):
    return "%032x" % (0xa17 << 64 | n)


def start_body(h, tenant="default", template="echo"):
    return {"template": template, "session": h, "tenant": tenant, "source": "sid",
            "key": "auth-%s" % h[-6:]}


@pytest.fixture
def sched(make_stack):
    """A scheduler (pool of 2 echo instances) and Redis, no gateway."""
    return make_stack({"templates": [echo_template(pool={"min": 2, "max": 4})]},
                      start_gateway=False)


def assert_unauthorized(r):
    assert r.status == 401, r
    assert r.header("www-authenticate") == "Bearer", r.headers
    assert r.header("content-type") == "application/json", r.headers
    err = r.json()["error"]
    assert err["code"] == "unauthorized" and err["message"], err


# Wrong ways to present the secret: each must be refused like no secret at all.
WRONG = {
    "other secret": "Bearer " + "x" * len(SCHED_SECRET),
    "prefix": "Bearer " + SCHED_SECRET[:-1],
    "longer": "Bearer " + SCHED_SECRET + "0",
    "basic scheme": "Basic " + SCHED_SECRET,
    "no scheme": SCHED_SECRET,
    "empty bearer": "Bearer ",
}


def test_start_without_or_with_a_wrong_secret_is_refused(sched):
    s = sched
    before = s.instances()
    h = session(1)
    t0 = time.monotonic()
    assert_unauthorized(s.sched_api("/v1/start", method="POST", body=start_body(h),
                                    secret=None))
    for what, value in WRONG.items():
        r = s.sched_api("/v1/start", method="POST", body=start_body(h), secret=None,
                        headers={"Authorization": value})
        assert r.status == 401, (what, r)
        assert_unauthorized(r)
    # Nothing was started or bound: no session, the same instances (all still warm).
    assert not s.session(h)
    after = s.instances()
    assert set(after) == set(before)
    assert all(i["state"] == "warm" for i in after.values()), after
    # The refusals were logged, without flooding (at most one line a second).
    took = time.monotonic() - t0
    log = s.scheduler.log()
    assert 'msg="request refused: no secret" method=POST path=/v1/start' in log
    assert log.count("request refused:") <= 2 + took, (took, log)
    # And with the secret the same request is served.
    r = s.sched_api("/v1/start", method="POST", body=start_body(h))
    assert r.status == 200, (r, s.scheduler.tail())
    assert r.json()["status"] == "new"
    assert s.session(h)["state"] == "bound"


def test_status_without_the_secret_shows_host_counts_only(sched):
    s = sched
    h = session(2)
    bound = s.sched_api("/v1/start", method="POST", body=start_body(h)).json()
    # With the secret: everything, the instances with their sessions and addresses.
    full = s.sched_api("/v1/status")
    assert full.status == 200, full
    fj = full.json()
    assert fj["authenticated"] is True
    assert any(i["session"] == h and i["id"] == bound["instance"] for i in fj["instances"])
    assert fj["api"] and [d["name"] for d in fj["drivers"]] == ["process", "microvm"]
    assert fj["drivers"][0]["available"] is True and fj["drivers"][0]["in_use"] is True
    assert all(i["driver"] == "process" for i in fj["instances"]), fj["instances"]
    # Without: counts only. No instance, session, address or driver detail anywhere.
    r = s.sched_api("/v1/status", secret=None)
    assert r.status == 200, r
    j = r.json()
    assert j["authenticated"] is False
    assert set(j) == {"host", "authenticated", "capacity", "live", "free", "redis",
                      "recovered", "pending_starts", "draining", "states", "pools"}, j
    assert j["draining"] is False
    assert j["live"] == fj["live"] and j["states"] == fj["states"]
    assert j["pools"] == fj["pools"]
    text = r.text
    for secret_bit in [h, bound["instance"], bound["addr"], str(s.base), fj["api"]]:
        assert secret_bit not in text, (secret_bit, text)
    # A wrong secret is refused, not answered with less.
    for what, value in WRONG.items():
        r = s.sched_api("/v1/status", secret=None, headers={"Authorization": value})
        assert r.status == 401, (what, r)


def test_healthz_is_open_and_holds_no_session_data(sched):
    s = sched
    s.sched_api("/v1/start", method="POST", body=start_body(session(3)))
    r = s.sched_api("/healthz", secret=None)
    assert r.status == 200, r
    assert set(r.json()) == {"status", "redis", "recovered"}, r.json()
    assert session(3) not in r.text


def test_metrics_scrape_without_or_with_a_wrong_secret_is_refused(sched):
    """Usage by tenant and template is the operator's: a scrape needs the secret."""
    s = sched
    r = s.sched_api("/metrics", secret=None)
    assert_unauthorized(r)
    assert "berth_" not in r.text
    for what, value in WRONG.items():
        r = s.sched_api("/metrics", secret=None, headers={"Authorization": value})
        assert r.status == 401 and "berth_" not in r.text, (what, r)
    r = s.sched_api("/metrics", method="POST", body=b"")
    assert r.status == 405 and r.header("allow") == "GET", r
    r = s.sched_api("/metrics")
    assert r.status == 200, r
    assert r.header("content-type") == "text/plain; version=0.0.4; charset=utf-8", r.headers
    for family in ("berth_scheduler_capacity", "berth_scheduler_instances",
                   "berth_usage_wall_seconds_total", "berth_usage_cpu_seconds_total",
                   "berth_usage_paused_seconds_total", "berth_usage_memory_kib_seconds_total"):
        assert "# TYPE %s " % family in r.text, (family, r.text)
    assert "berth_scheduler_capacity 16\n" in r.text
    assert 'berth_scheduler_instances{state="warm"} ' in r.text


def test_unknown_tenant_is_refused(sched):
    s = sched
    h = session(4)
    r = s.sched_api("/v1/start", method="POST", body=start_body(h, tenant="nobody"))
    assert r.status == 400, r
    err = r.json()["error"]
    assert err["code"] == "unknown_tenant" and "nobody" in err["message"], err
    assert not s.session(h)
    # A configured tenant other than the default is fine.
    r = s.sched_api("/v1/start", method="POST", body=start_body(session(5), tenant="other"))
    assert r.status == 200, r
    assert s.session(session(5))["tenant"] == "other"


# ------------------------------------------------------------------ start-up refusals

def run_scheduler_expecting_failure(base, cfg):
    """Runs berth-scheduler on <cfg>; it must exit 1 at once (bounded) without opening its
    API. Returns its output."""
    path = write_config(base / "refused.yaml", cfg)
    p = subprocess.run([binary("berth-scheduler"), "-c", path], capture_output=True, text=True,
                       timeout=30 * SLOW, cwd=str(base))
    # A scheduler refused after its cgroups were set up leaves their (empty) parents.
    remove_cgroup_dirs(logged_cgroup_parents(p.stderr + p.stdout,
                                             cfg["scheduler"].get("cgroup_parent", "")))
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    port = int(cfg["scheduler"]["api_listen"].rsplit(":", 1)[1])
    assert not port_open(port)
    return p.stderr


def test_scheduler_refuses_to_start_without_a_secret(redis_server, tmp_short):
    ports = {"gateway": free_port(), "admin": free_port(), "scheduler": free_port()}
    cfg = make_config(tmp_short, redis_server.address, ports)
    del cfg["scheduler"]["api_secret"]
    err = run_scheduler_expecting_failure(tmp_short, cfg)
    assert "scheduler: api_secret or api_secret_file is required" in err, err
    assert "refused.yaml:" in err, err  # file:line:col
    # No instance was started: nothing registered in Redis, no run dir.
    assert not redis_server.client().scan("berth:*")
    assert not (tmp_short / "run").exists() or not list((tmp_short / "run").iterdir())


def test_scheduler_refuses_a_secret_file_others_may_read(redis_server, tmp_short):
    ports = {"gateway": free_port(), "admin": free_port(), "scheduler": free_port()}
    secret = tmp_short / "api_secret"
    secret.write_text(SCHED_SECRET + "\n")
    os.chmod(secret, 0o640)
    cfg = make_config(tmp_short, redis_server.address, ports)
    del cfg["scheduler"]["api_secret"]
    cfg["scheduler"]["api_secret_file"] = str(secret)
    err = run_scheduler_expecting_failure(tmp_short, cfg)
    assert "scheduler.api_secret_file: '%s' is open to group or others (mode 0640)" % secret \
        in err, err
    assert "chmod 600" in err
    os.chmod(secret, 0o604)
    err = run_scheduler_expecting_failure(tmp_short, cfg)
    assert "(mode 0604)" in err, err
    # Too short a secret in the file: refused too.
    secret.write_text("short\n")
    os.chmod(secret, 0o600)
    err = run_scheduler_expecting_failure(tmp_short, cfg)
    assert "must be at least 32 bytes" in err, err
    assert not redis_server.client().scan("berth:*")


def test_scheduler_refuses_a_template_of_a_driver_it_does_not_know(redis_server, tmp_short):
    """The driver registry: a template naming a driver this scheduler does not have stops it
    at start-up (and --check) with the template's position; nothing is made on the host."""
    ports = {"gateway": free_port(), "admin": free_port(), "scheduler": free_port()}
    cfg = make_config(tmp_short, redis_server.address, ports)
    cfg["templates"].append(dict(cfg["templates"][0], name="vm", driver="firecracker"))
    err = run_scheduler_expecting_failure(tmp_short, cfg)
    want = "templates.vm.driver: unknown driver 'firecracker' (known: process, microvm)"
    assert want in err and "refused.yaml:" in err, err
    assert not redis_server.client().scan("berth:*")
    assert not (tmp_short / "run").exists()
    p = subprocess.run([binary("berth-scheduler"), "--check", "-c", str(tmp_short / "refused.yaml")],
                       capture_output=True, text=True, timeout=60 * SLOW, cwd=str(tmp_short))
    assert p.returncode == 1 and want in p.stderr, (p.returncode, p.stdout, p.stderr)
    assert "driver.process=works templates=echo\n" in p.stdout, p.stdout


# ------------------------------------------------------------------ the gateway as the client

def test_gateway_sends_the_secret_from_a_secret_file(make_stack, tmp_short):
    """Both daemons read the secret from the same 0600 file; with empty pools every new
    session is an on-demand POST /v1/start from the gateway, which succeeds."""
    secret = tmp_short / "api_secret"
    fd = os.open(str(secret), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, (SCHED_SECRET + "\n").encode())
    os.close(fd)
    s = make_stack({"templates": [echo_template(pool={"min": 0, "max": 4})],
                    "scheduler": {"api_secret": None, "api_secret_file": str(secret)}},
                   wait_pools=False)
    assert "api_secret_file" in json.loads(open(s.config_path).read())["scheduler"]
    for n in range(2):
        r = s.get("/", session="from-file-%d" % n)
        assert r.status == 200, (r, s.gateway.tail(), s.scheduler.tail())
    log = s.scheduler.log()
    assert log.count("start answered") == 2, log
    assert "request refused" not in log


def test_gateway_with_another_secret_gets_no_session(make_stack):
    """A gateway whose secret differs: the scheduler refuses its start (401), the client gets
    a 500 (not a retryable 503), both daemons say why, and nothing is bound."""
    s = make_stack({"templates": [echo_template(pool={"min": 0, "max": 4})]},
                   wait_pools=False, start_gateway=False)
    cfg = json.loads(open(s.config_path).read())
    cfg["scheduler"]["api_secret"] = "another-secret-" + "y" * 32
    s.config_path = write_config(s.base / "gateway-wrong.yaml", cfg)
    s.start_gateway()
    r = s.get("/", session="wrong-secret")
    assert r.status == 500, (r, s.gateway.tail())
    assert r.json()["error"]["code"] == "internal"
    wait_until(lambda: "scheduler refused the start" in s.gateway.log(), 5 * SLOW,
               "the gateway to log the refusal")
    assert "status=401" in s.gateway.log()
    assert 'msg="request refused: wrong secret" method=POST path=/v1/start' in s.scheduler.log()
    assert not s.redis.scan(s.key("s:*"))
    assert s.gateway.alive() and s.scheduler.alive()

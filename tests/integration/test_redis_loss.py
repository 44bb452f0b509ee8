"""Redis loses its data under a running stack (issue 14): FLUSHALL, or redis-server restarted
empty. The scheduler notices (its marker key is gone), writes back every instance it runs and
ends the bound ones whose session vanished (their session comes back as lost); capacity is
right again, nothing leaks, and each bound session follows its template's on_lost: `fail`
gets 502 instance_lost, `replace` a new instance, never a silent new instance under `fail`.

Real redis-server, scheduler, gateway, sandboxes and curl (conftest.py)."""

import os
import time

import pytest

from conftest import SLOW, curl, echo_template, wait_until

FAIL_HOST = "fail.test"  # routed to the on_lost: fail template
CAPACITY = 8


def loss_stack(make_stack, gateway=None, scheduler=None):
    """Two templates of pool min 2 (replace: echo, fail: echofail) on a host of capacity 8:
    with two sessions bound in each, the host is full (4 bound + 4 warm)."""
    over = {
        "templates": [echo_template(pool={"min": 2, "max": 2}),
                      echo_template("echofail", on_lost="fail", pool={"min": 2, "max": 2})],
        "gateway": dict({"routes": [{"name": "fail", "host": FAIL_HOST, "template": "echofail"},
                                    {"name": "replace", "template": "echo"}]}, **(gateway or {})),
        "scheduler": dict({"capacity": CAPACITY}, **(scheduler or {})),
    }
    s = make_stack(over)
    s.wait_pool("echofail", 2)
    return s


def get(s, key, fail=False, path="/"):
    return s.get(path, session=key, headers={"Host": FAIL_HOST} if fail else None, timeout=15)


def agents(s):
    """Instance ids of the berth-agent processes of this stack's host (live sandboxes)."""
    out = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"berth-agent") or b"--id" not in argv:
            continue
        i = argv.index(b"--id")
        if i + 1 < len(argv) and argv[i + 1].startswith((s.host_id + "-").encode()):
            out.add(argv[i + 1].decode())
    return out


def bind_sessions(s):
    """Two sessions per template; returns {(key, fail): instance}. Waits for full pools again
    (the host is then at capacity)."""
    bound = {}
    for fail in (False, True):
        for n in range(2):
            key = "%s-%d" % ("f" if fail else "r", n)
            r = get(s, key, fail)
            assert r.status == 200, r
            bound[(key, fail)] = r.header("x-berth-instance")
    s.wait_pool("echo", 2)
    s.wait_pool("echofail", 2)
    wait_until(lambda: len(agents(s)) == CAPACITY, 20 * SLOW, "a full host")
    return bound


def watch_sessions(s, bound, until_s):
    """Asks every bound session until each has its on_lost answer (fail: 502 instance_lost
    three times in a row; replace: a new instance that then stays) or <until_s> seconds pass.
    Every answer on the way must be the session's own instance, or its on_lost answer: a
    session under `fail` never reaches another instance. Returns {(key, fail): new instance
    or None}."""
    done, new = {}, {}
    deadline = time.monotonic() + until_s
    while len(done) < len(bound) and time.monotonic() < deadline:
        for (key, fail), first in bound.items():
            if (key, fail) in done:
                continue
            r = get(s, key, fail)
            got = r.header("x-berth-instance") if r.status == 200 else None
            if r.status == 503:
                # Redis is away (restarted: the gateway reconnects with backoff) and this
                # request needed it: the documented answer while the store is down, retried
                # (seen in a loaded full run). Or a replacement was asked for while the full
                # host had not yet ended the instances Redis forgot: no capacity for a moment
                # (seen under ASan). Either is retried; never another instance.
                assert r.json()["error"]["code"] in ("store_unavailable", "no_capacity"), r
                assert r.header("retry-after"), r
                continue
            if r.status == 502:
                assert r.json()["error"]["code"] == "instance_lost", r
                if fail:
                    new[(key, fail)] = new.get((key, fail), 0) + 1
                    if new[(key, fail)] >= 3:
                        done[(key, fail)] = None
                continue
            assert r.status == 200, (key, r)
            if fail:
                assert got == first, "on_lost fail, yet %s reached %s (was %s)" % (key, got,
                                                                                  first)
                new[(key, fail)] = 0
            elif got != first:
                if new.get((key, fail)) == got:
                    done[(key, fail)] = got
                new[(key, fail)] = got
            else:
                assert (key, fail) not in new, "%s went back to its old instance" % key
        time.sleep(0.05)
    assert len(done) == len(bound), "no on_lost answer within %ss: %s" % (until_s, {
        k: v for k, v in bound.items() if k not in done})
    return done


def check_recovered(s, bound, replaced):
    """Capacity is right: the pools are full, every live sandbox is one Redis knows (nothing
    leaked), the old bound instances are gone, and new sessions get instances."""
    s.wait_pool("echo", 2)
    s.wait_pool("echofail", 2)

    def consistent():
        live = agents(s)
        known = set(s.instances())
        return live == known and not (live & set(bound.values())) and live

    live = wait_until(consistent, 30 * SLOW, "live sandboxes == instances in Redis, old ones gone")
    assert len(live) <= CAPACITY
    # Written back with their driver too (the reconcile script writes every i:<id> field).
    assert all(v.get("driver") == "process" for v in s.instances().values()), s.instances()
    for n in range(2):
        for fail in (False, True):
            r = get(s, "after-%d-%d" % (n, fail), fail)
            assert r.status == 200, r  # not 503 no_capacity
    for (key, fail), inst in replaced.items():
        if not fail:
            r = get(s, key, fail)
            assert r.status == 200 and r.header("x-berth-instance") == inst, r
    for (key, fail) in bound:
        if fail:
            r = get(s, key, fail)
            assert r.status == 502 and r.json()["error"]["code"] == "instance_lost", r


@pytest.mark.berth_timeout(240)
def test_flushall_is_reconciled(make_stack):
    """FLUSHALL under a full host, no reconnect: the scheduler's heartbeat finds its marker
    gone, writes back the warm instances, ends the bound ones (their sessions come back as
    lost), and the host has room again."""
    s = loss_stack(make_stack)
    bound = bind_sessions(s)
    assert s.redis.cmd("FLUSHALL") == "OK"
    replaced = watch_sessions(s, bound, 30 * SLOW)
    check_recovered(s, bound, replaced)
    assert "redis had lost this host's records" in s.scheduler.log()


@pytest.mark.berth_timeout(240)
def test_redis_restarted_empty_is_reconciled(make_stack):
    """redis-server killed and started again without its data (no persistence): both daemons
    reconnect; the same outcome as after a FLUSHALL."""
    s = loss_stack(make_stack)
    bound = bind_sessions(s)
    s.redis.close()
    s.problems += s.redis_server.stop()
    s.redis_server.start()
    s.redis = s.redis_server.client()  # empty: the daemons may already be writing back
    replaced = watch_sessions(s, bound, 40 * SLOW)
    check_recovered(s, bound, replaced)


@pytest.mark.berth_timeout(180)
def test_cached_binding_of_a_vanished_session_follows_on_lost(make_stack):
    """The gateway's side: while the scheduler has not noticed the loss yet (heartbeat 2 s
    here), its touches (every 100 ms) and lookups (cache_ttl 300 ms) find the session unknown.
    It keeps the cached binding instead of taking that as "ended" and claiming a new instance;
    once the session is written back as lost, `fail` answers 502 instance_lost and `replace`
    gets a new instance."""
    s = loss_stack(make_stack, gateway={"activity_flush": "100ms", "cache_ttl": "300ms"},
                   scheduler={"heartbeat": "2s"})
    bound = {}
    for fail in (False, True):
        key = "cached-f" if fail else "cached-r"  # the key names the session, not the route
        r = get(s, key, fail)
        assert r.status == 200, r
        bound[(key, fail)] = r.header("x-berth-instance")
    assert s.redis.cmd("FLUSHALL") == "OK"
    replaced = watch_sessions(s, bound, 30 * SLOW)
    new = replaced[("cached-r", False)]
    assert new and new != bound[("cached-r", False)]
    r = get(s, "cached-f", True)
    assert r.status == 502 and r.json()["error"]["code"] == "instance_lost", r
    # the lost record stays (for the template's ttl) and the new binding does not expire
    assert s.redis.cmd("PTTL", s.key("s:", [k for k, v in scan_sessions(s).items()
                                            if v.get("state") == "lost"][0])) > 0
    bound_now = [k for k, v in scan_sessions(s).items() if v.get("instance") == new]
    assert bound_now and s.redis.cmd("PTTL", s.key("s:", bound_now[0])) == -1


def scan_sessions(s):
    out = {}
    for k in s.redis.scan(s.key("s:*")):
        h = k[len(s.key("s:")):]
        if ":" not in h:
            out[h] = s.redis.hgetall(k)
    return out

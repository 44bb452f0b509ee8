"""A scheduler host whose heartbeat stops (issue 18): after scheduler.host_down_after the other
schedulers mark it down (the HOSTDOWN script): its sessions are marked lost and their next
request follows on_lost (replace: a new instance on a live host), the other host's sessions see
nothing, and a host that comes back ends the instances whose sessions moved on and offers its
warm ones again. Two berth-scheduler hosts (process sandboxes) on one real redis-server, one
berth-gateway, curl.

    BERTH_BUILD_DIR=build /usr/bin/python3 -m pytest tests/integration/test_host_down.py
"""
import os
import signal

import pytest

from conftest import (SLOW, Proc, binary, echo_template, events, kill_sandboxes, wait_until,
                      write_config)
from test_drain import SecondHost

pytestmark = pytest.mark.berth_timeout(240)


def place(s, b, n=40):
    """Sessions on both hosts: {host: [(key, instance)]}, at least two on each."""
    on = {s.host_id: [], b.host_id: []}
    for i in range(n):
        key = "hd-%d" % i
        r = s.get("/", session=key)
        assert r.status == 200, r
        inst = r.header("x-berth-instance")
        on[s.redis.hgetall(s.key("i:", inst))["host"]].append((key, inst))
        if all(len(v) >= 2 for v in on.values()):
            return on
    pytest.fail("sessions did not land on both hosts: %r" % on)


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def host_gone(s, host):
    return s.redis.cmd("ZSCORE", s.key("hosts"), host) is None


def kill_scheduler(b):
    b.scheduler.signal(signal.SIGKILL)
    b.scheduler.p.wait(10)


def stack_with_two_hosts(make_stack):
    s = make_stack({"templates": [echo_template(pool={"min": 2, "max": 4})],
                    "scheduler": {"host_down_after": "3s", "capacity": 16}})
    b = SecondHost(s)
    wait_until(lambda: s.redis.cmd("LLEN", s.key("pool:%s:echo" % b.host_id)) >= 2,
               30 * SLOW, "the second host's warm pool")
    return s, b


def test_a_dead_host_is_marked_down_and_its_sessions_move(make_stack):
    s, b = stack_with_two_hosts(make_stack)
    try:
        on = place(s, b)
        # Everything on host b dies: its scheduler and its sandboxes.
        kill_scheduler(b)
        kill_sandboxes(b.host_id, b.cfg["scheduler"]["cgroup_parent"])
        wait_until(lambda: host_gone(s, b.host_id), 20 * SLOW, "host b marked down")
        assert "marking it down\" host=%s" % b.host_id in s.scheduler.log()
        # Its pools, instance set and marker are gone with it.
        assert s.redis.cmd("EXISTS", s.key("pool:%s:echo" % b.host_id)) == 0
        assert s.redis.cmd("EXISTS", s.key("host:%s:instances" % b.host_id)) == 0
        assert s.redis.cmd("EXISTS", s.key("host:%s:mark" % b.host_id)) == 0
        down = events(s, "host_down")
        assert len(down) == 1 and down[0]["host"] == b.host_id, down
        assert int(down[0]["sessions"]) == len(on[b.host_id]), (down, on)
        lost = [e for e in events(s, "lost") if e.get("reason") == "host_down" and e["session"]]
        assert sorted(e["instance"] for e in lost) == sorted(i for _, i in on[b.host_id]), lost
        # b's sessions get new instances on host a (on_lost: replace) ...
        for key, old in on[b.host_id]:
            r = s.get("/", session=key)
            assert r.status == 200, r
            new = r.header("x-berth-instance")
            assert new != old
            assert s.redis.hgetall(s.key("i:", new))["host"] == s.host_id
        # ... and a's sessions never noticed.
        for key, inst in on[s.host_id]:
            r = s.get("/", session=key)
            assert r.status == 200 and r.header("x-berth-instance") == inst, r
    finally:
        problems = [p for p in b.stop() if p != "scheduler exited with -9"]  # killed above
    assert not problems, problems


def test_a_host_that_comes_back_ends_what_moved_and_offers_its_warm_instances(make_stack):
    s, b = stack_with_two_hosts(make_stack)
    try:
        on = place(s, b)
        moved = {inst: int(s.redis.hgetall(s.key("i:", inst))["pid"])
                 for _, inst in on[b.host_id]}
        # Only b's scheduler stops (a partition, a hung daemon): its sandboxes keep running.
        kill_scheduler(b)
        wait_until(lambda: host_gone(s, b.host_id), 20 * SLOW, "host b marked down")
        for key, old in on[b.host_id]:
            r = s.get("/", session=key)
            assert r.status == 200 and r.header("x-berth-instance") != old, r
        assert all(alive(pid) for pid in moved.values())
        # b's scheduler comes back: it finds its marker gone, writes its live instances back,
        # and ends the ones whose sessions moved on; its pool fills again.
        path = write_config(b.base / "berth.yaml", b.cfg)
        b.scheduler = Proc("scheduler", [binary("berth-scheduler"), "-c", path], b.base,
                           cwd=str(b.base))
        wait_until(lambda: not any(alive(p) for p in moved.values()), 30 * SLOW,
                   "the moved sessions' old instances ended")
        wait_until(lambda: s.redis.cmd("LLEN", s.key("pool:%s:echo" % b.host_id)) >= 2,
                   30 * SLOW, "host b's pool back")
        assert not host_gone(s, b.host_id)
        for key, _ in on[b.host_id] + on[s.host_id]:
            r = s.get("/", session=key)
            assert r.status == 200, r
            h = s.redis.hgetall(s.key("i:", r.header("x-berth-instance")))
            assert h["host"] == s.host_id, (key, h)
    finally:
        problems = b.stop()
    assert not problems, problems


def test_a_host_that_was_only_cut_off_ends_what_moved_without_a_restart(make_stack):
    """A scheduler that stalls (SIGSTOP: as cut off from Redis) past host_down_after and then
    goes on: at its next heartbeat it finds its marker gone and writes its instances back
    (RECONCILE), ending those whose sessions moved on."""
    s, b = stack_with_two_hosts(make_stack)
    try:
        on = place(s, b)
        moved = {inst: int(s.redis.hgetall(s.key("i:", inst))["pid"])
                 for _, inst in on[b.host_id]}
        b.scheduler.signal(signal.SIGSTOP)
        try:
            wait_until(lambda: host_gone(s, b.host_id), 20 * SLOW, "host b marked down")
            for key, old in on[b.host_id]:
                r = s.get("/", session=key)
                assert r.status == 200 and r.header("x-berth-instance") != old, r
        finally:
            b.scheduler.signal(signal.SIGCONT)
        wait_until(lambda: not any(alive(p) for p in moved.values()), 30 * SLOW,
                   "the moved sessions' old instances ended")
        wait_until(lambda: not host_gone(s, b.host_id), 10 * SLOW, "host b back in P hosts")
        wait_until(lambda: s.redis.cmd("LLEN", s.key("pool:%s:echo" % b.host_id)) >= 2,
                   30 * SLOW, "host b's pool back")
        assert "redis had lost this host's records" in b.scheduler.log()
    finally:
        problems = b.stop()
    assert not problems, problems

"""Draining a host (issue 18): POST /v1/drain on a scheduler's API stops new placements there
(its warm instances end, its pools stay empty, the claim script skips it, /v1/start says
no_capacity) while its bound sessions go on; new sessions land on the other host; the drain
outlives a scheduler restart; DELETE /v1/drain ends it. Two berth-scheduler hosts (process
sandboxes) on one real redis-server, one berth-gateway, curl.

    BERTH_BUILD_DIR=build /usr/bin/python3 -m pytest tests/integration/test_drain.py
"""
import json
import os

import pytest

from conftest import (SCHED_SECRET, SLOW, Proc, Stack, _remove_tree, _short_tmp, binary, curl,
                      echo_template, free_port, wait_until, write_config)

pytestmark = pytest.mark.berth_timeout(240)


class SecondHost:
    """Another scheduler host on the stack's Redis, with its own run_dir, storage and cgroups;
    its sandboxes are killed and its mounts undone by stop(), as a Stack does its own."""
    kill_instances = Stack.kill_instances
    cgroup_parents = Stack.cgroup_parents
    thaw_cgroups = Stack.thaw_cgroups
    remove_cgroups = Stack.remove_cgroups
    instances = Stack.instances
    key = Stack.key

    def __init__(self, s):
        self.base = _short_tmp()
        self.redis, self.prefix = s.redis, s.prefix
        self.host_id = "t%s" % os.urandom(3).hex()
        self.cfg = json.loads(json.dumps(s.cfg))
        self.port = free_port()
        self.cfg["scheduler"].update({
            "host_id": self.host_id, "api_listen": "127.0.0.1:%d" % self.port,
            "run_dir": str(self.base / "run"), "storage_root": str(self.base / "data"),
            "cgroup_parent": "berth-test-%s" % self.host_id})
        path = write_config(self.base / "berth.yaml", self.cfg)
        self.scheduler = Proc("scheduler", [binary("berth-scheduler"), "-c", path], self.base,
                              cwd=str(self.base))

    def stop(self):
        problems = self.scheduler.stop()
        self.kill_instances()
        _remove_tree(self.base)
        return problems


def api(port, path, method="GET"):
    r = curl("http://127.0.0.1:%d%s" % (port, path), method=method,
             headers={"Authorization": "Bearer " + SCHED_SECRET}, timeout=10)
    assert r.status == 200, r
    return r.json()


def host_of(s, r):
    assert r.status == 200, r
    return s.redis.hgetall(s.key("i:", r.header("x-berth-instance"))).get("host")


def test_a_drained_host_takes_no_new_sessions_and_keeps_its_own(make_stack):
    s = make_stack({"templates": [echo_template(pool={"min": 1, "max": 3})]})
    a, a_port = s.host_id, s.ports["scheduler"]
    b = SecondHost(s)
    try:
        wait_until(lambda: s.redis.cmd("LLEN", s.key("pool:%s:echo" % b.host_id)) >= 1,
                   30 * SLOW, "the second host's warm pool")
        # A session on host a (claims take the host with the longest pool: try a few keys).
        on_a = None
        for i in range(12):
            r = s.get("/", session="pre-%d" % i)
            if host_of(s, r) == a:
                on_a = ("pre-%d" % i, r.header("x-berth-instance"))
                break
        assert on_a, "no session landed on host a"
        st = api(a_port, "/v1/drain", "POST")
        assert st["draining"] is True and st["host"] == a and st["bound"] >= 1
        wait_until(lambda: s.redis.cmd("LLEN", s.key("pool:%s:echo" % a)) == 0, 20 * SLOW,
                   "host a's pool emptied")
        # The answer comes before the scheduler's own write reaches Redis: wait for it.
        wait_until(lambda: s.redis.hgetall(s.key("host:", a)).get("draining") == "1",
                   10 * SLOW, "host a's record saying it drains")
        assert s.redis.hgetall(s.key("host:", a))["free"] == "0"
        assert api(a_port, "/v1/status")["draining"] is True
        # Its bound session goes on, on the same instance.
        r = s.get("/again", session=on_a[0])
        assert r.status == 200 and r.header("x-berth-instance") == on_a[1]
        # New sessions all land on b, warm or started there.
        for i in range(6):
            assert host_of(s, s.get("/", session="new-%d" % i)) == b.host_id
        # A start asked of a directly is refused.
        r = curl("http://127.0.0.1:%d/v1/start" % a_port, method="POST",
                 headers={"Authorization": "Bearer " + SCHED_SECRET},
                 data=json.dumps({"template": "echo", "session": "%032x" % 7,
                                  "tenant": "default", "source": "sid", "key": "k7"}))
        assert r.status == 503 and r.json()["error"]["code"] == "no_capacity", r
        assert "draining" in r.json()["error"]["message"]
        # A restart keeps draining (the bound session is adopted and still served).
        s.stop_scheduler()
        s.start_scheduler(wait_pools=False)
        assert api(a_port, "/v1/status")["draining"] is True
        assert "draining (since before the restart" in s.scheduler.log()
        r = s.get("/after-restart", session=on_a[0])
        assert r.status == 200 and r.header("x-berth-instance") == on_a[1]
        assert s.redis.cmd("LLEN", s.key("pool:%s:echo" % a)) == 0
        # The drain ends: a's pool fills again.
        assert api(a_port, "/v1/drain", "DELETE")["draining"] is False
        wait_until(lambda: s.redis.cmd("LLEN", s.key("pool:%s:echo" % a)) >= 1, 20 * SLOW,
                   "host a's pool refilled")
        wait_until(lambda: s.redis.hgetall(s.key("host:", a)).get("draining") == "0",
                   10 * SLOW, "host a's record no longer draining")
        # Without the secret: refused.
        r = curl("http://127.0.0.1:%d/v1/drain" % a_port, method="POST", timeout=10)
        assert r.status == 401, r
    finally:
        problems = b.stop()
    assert not problems, problems

"""The integration harness itself (conftest.py): its helpers must see what they claim to see,
and a stack must come up ready and leave nothing behind."""

import os
import socket
import subprocess
import time

import pytest

from conftest import (PREFIX, Proc, RedisError, _mounts_under, _pids_matching, curl,
                      deep_merge, echo_template, free_port, port_open)


def test_deep_merge():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 4, "e": {"f": 1}}
    out = deep_merge(base, {"a": {"c": [3], "x": 9}, "d": None, "e": 5})
    assert out == {"a": {"b": 1, "c": [3], "x": 9}, "e": 5}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 4, "e": {"f": 1}}  # not modified


def test_free_ports_are_distinct_and_free():
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == 20
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_redis_client(redis_server):
    r = redis_server.client()
    assert r.cmd("SET", "k", "v\r\nwith crlf") == "OK"
    assert r.cmd("GET", "k") == "v\r\nwith crlf"
    assert r.cmd("GET", "missing") is None
    assert r.cmd("RPUSH", "l", "a", "b") == 2
    assert r.cmd("LRANGE", "l", 0, -1) == ["a", "b"]
    assert r.cmd("HSET", "h", "f1", "1", "f2", "") == 2
    assert r.hgetall("h") == {"f1": "1", "f2": ""}
    for i in range(30):
        r.cmd("SET", "scan:%d" % i, i)
    assert len(r.scan("scan:*")) == 30
    with pytest.raises(RedisError):
        r.cmd("INCR", "k")
    assert r.cmd("PING") == "PONG"  # the connection survives an error reply
    r.close()


def test_curl_helper(echo_server):
    port, _ = echo_server()
    r = curl("http://127.0.0.1:%d/p?q=1" % port, method="POST", data=b"x" * 2_000_000,
             headers={"Expect": "100-continue", "X-A": "1"})
    assert r.status == 200  # the final status, not the 100
    assert r.header("content-type") == "application/json"
    j = r.json()
    assert j["headers"]["x-a"] == "1" and j["body_bytes"] == 2_000_000
    dead = free_port()
    r = curl("http://127.0.0.1:%d/" % dead, timeout=2)
    assert r.status == 0 and r.error


def test_proc_reports_sanitizer_output_and_hangs(tmp_short):
    p = Proc("fake", ["sh", "-c", "echo '==1==ERROR: AddressSanitizer: heap-use-after-free'"],
             tmp_short)
    p.p.wait(10)
    problems = p.stop()
    assert any("sanitizer report in fake" in x for x in problems), problems
    p = Proc("stubborn", ["sh", "-c", "trap '' TERM; sleep 60"], tmp_short)
    time.sleep(0.2)
    t0 = time.monotonic()
    problems = p.stop(timeout=1)
    assert any("did not exit" in x for x in problems), problems
    assert time.monotonic() - t0 < 15
    assert not p.alive()
    p = Proc("clean", ["sleep", "60"], tmp_short)
    assert p.stop() == []


def test_proc_finds_sanitizer_report_files(tmp_short, monkeypatch):
    """With log_path in ASAN_OPTIONS (as tests/run sets it) a report is a file named after the
    process id: the daemon's stop() finds it and marks it seen."""
    lp = tmp_short / "asan"
    monkeypatch.setenv("ASAN_OPTIONS", "detect_leaks=1:log_path=%s" % lp)
    p = Proc("reporter", ["sh", "-c", "echo '==7==ERROR: LeakSanitizer: detected memory leaks'"
                          " > %s.$$" % lp], tmp_short)
    p.p.wait(10)
    problems = p.stop()
    assert len(problems) == 1 and "LeakSanitizer" in problems[0], problems
    assert [f.name for f in tmp_short.glob("asan.*")] == ["asan.%d.seen" % p.pid]


def test_stack_comes_up_ready(stack):
    assert curl(stack.admin_url("/readyz")).status == 200
    assert curl(stack.scheduler_url("/healthz")).status == 200
    assert stack.pool_len("echo") >= 2
    hosts = stack.redis.cmd("ZRANGE", PREFIX + "hosts", 0, -1)
    assert stack.host_id in hosts
    warm = [i for i, h in stack.instances().items() if h.get("state") == "warm"]
    assert len(warm) >= 2


def test_stack_routes_a_session_to_one_instance(stack):
    a1 = stack.get("/x", session="harness-a")
    a2 = stack.get("/y", session="harness-a")
    b = stack.get("/z", session="harness-b")
    assert a1.status == a2.status == b.status == 200, (a1, a2, b)
    assert a1.json()["instance"] == a2.json()["instance"] == a1.header("x-berth-instance")
    assert b.json()["instance"] != a1.json()["instance"]
    assert a1.json()["instance"].startswith(stack.host_id + "-")
    # the app runs in the sandbox: its own hostname and pid namespace
    assert a1.json()["hostname"] == a1.json()["instance"]
    assert a1.json()["pid"] < 10


def test_stack_teardown_leaves_nothing(make_stack):
    s = make_stack({"templates": [echo_template(pool={"min": 1, "max": 4})]})
    assert s.get("/", session="t1").status == 200
    host, base = s.host_id, s.base
    pids = [int(h["pid"]) for h in s.instances().values() if h.get("pid", "").isdigit()]
    assert pids
    ports = dict(s.ports, redis=s.redis_server.port)
    daemons = [s.gateway.pid, s.scheduler.pid, s.redis_server.proc.pid]
    assert s.stop() == []
    for pid in pids + daemons:
        assert not os.path.exists("/proc/%d" % pid) or \
            open("/proc/%d/stat" % pid).read().split()[2] == "Z", pid
    assert not _pids_matching(host, s.cfg["scheduler"]["cgroup_parent"])
    for name, port in ports.items():
        assert not port_open(port), name
    assert not _mounts_under(base)
    name = s.cfg["scheduler"]["cgroup_parent"]
    left = subprocess.run(["find", "/sys/fs/cgroup", "-maxdepth", "6", "-type", "d", "-name",
                           name], capture_output=True, text=True).stdout.split()
    assert not left, left


def test_scheduler_restart_keeps_instances(make_stack):
    """The harness can restart a daemon; the sandboxes outlive the scheduler (KillMode=process
    semantics) and the restarted one adopts them."""
    s = make_stack()
    first = s.get("/", session="keep").json()["instance"]
    s.stop_scheduler()
    assert s.get("/", session="keep").json()["instance"] == first
    s.start_scheduler()
    assert s.get("/", session="keep").json()["instance"] == first


def test_timeout_marker_bounds_a_test(tmp_short):
    """A test that hangs is stopped by the per-test time limit (pytest_runtest_call)."""
    body = ("import time, pytest\n"
            "@pytest.mark.berth_timeout(1)\n"
            "def test_hangs():\n"
            "    time.sleep(30)\n")
    (tmp_short / "test_hang.py").write_text(body)
    conftest = os.path.join(os.path.dirname(__file__), "conftest.py")
    (tmp_short / "conftest.py").write_text(open(conftest).read())
    t0 = time.monotonic()
    p = subprocess.run(["/usr/bin/python3", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(tmp_short / "test_hang.py")], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, BERTH_SANITIZED="0"))
    assert p.returncode == 1, p.stdout
    assert "exceeded" in p.stdout
    assert time.monotonic() - t0 < 20


def test_a_daemon_that_dies_fails_the_wait_at_once(tmp_short):
    """A stack whose daemon cannot start fails fast with its output, not after the timeout."""
    from conftest import Stack
    t0 = time.monotonic()
    with pytest.raises(AssertionError) as e:
        Stack(tmp_short, {"scheduler": {"capacity": "many"}})  # an invalid config: exits 1
    assert time.monotonic() - t0 < 10
    assert "exited" in str(e.value) and "capacity" in str(e.value)

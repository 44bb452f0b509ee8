"""Many hosts, for real (issue 18): every host its own network namespace on a bridge the test
makes (netns.py): `redis` (the primary), `redis2` (its replica and three sentinels), `node1` and
`node2` (a berth-scheduler each, process sandboxes, the instance relay on the host's address),
`gw1` and `gw2` (a berth-gateway each, finding Redis through the sentinels) and `client`.

From `client`, 200 sessions through both gateways alternately: each sticks to one instance
whichever gateway serves it, and they land on both nodes. Then, under the same load:
  1. the Redis primary is killed: the replica is promoted, no bound session changes instance,
     and requests fail only while the failover runs (counted, printed);
  2. everything on node2 is killed: node2 is marked down (scheduler.host_down_after) and its
     sessions get new instances on node1 (on_lost: replace; until then 502 instance_lost),
     while node1's sessions see nothing;
  3. a process on `client` that connects to a node's relay without the gateways' secret gets
     nothing (a right line from the same process does get an answer).
Only addresses inside these namespaces are used; everything is removed at the end.

    BERTH_BUILD_DIR=build /usr/bin/python3 -m pytest tests/integration/test_multihost.py -s
"""
import hashlib
import hmac
import http.client
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import (SCHED_SECRET, SLOW, Proc, RedisClient, _mounts_under, _remove_tree,
                      _short_tmp, _skip_unless_root, binary, echo_template, kill_sandboxes,
                      logged_cgroup_parents, make_config, remove_cgroup_dirs, wait_until,
                      write_config)
from netns import Net
from test_instance_relay import talk

pytestmark = pytest.mark.berth_timeout(900)

MASTER = "berth-mh"
HOSTS = {"redis": 1, "redis2": 2, "node1": 11, "node2": 12, "gw1": 21, "gw2": 22, "client": 31}
SESSIONS = 200
RELAY_PORT, API_PORT, GW_PORT, ADMIN_PORT, REDIS_PORT = 7070, 9191, 8080, 8081, 6379
SENTINEL_PORTS = (26379, 26380, 26381)


def http_get(addr, port, path="/", headers=None, timeout=20, method="GET"):
    """(status, headers dict lower-case, body bytes); status 0 when the connection failed."""
    c = http.client.HTTPConnection(addr, port, timeout=timeout * SLOW)
    try:
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    except (OSError, http.client.HTTPException) as e:
        return 0, {}, str(e).encode()
    finally:
        c.close()


class World:
    def __init__(self, base):
        self.base = Path(base)
        self.net = Net(HOSTS)
        self.procs = {}
        self.client = self.net.executor("client", workers=8)
        self.tag = self.net.tag
        self.host_ids = {"node1": "n1%s" % self.tag[2:], "node2": "n2%s" % self.tag[2:]}
        self.cfgs = {}

    def a(self, host):
        return self.net.addr(host)

    def run(self, name, host, argv, **kw):
        self.procs[name] = Proc(name, self.net.argv(host) + [str(x) for x in argv], self.base,
                                **kw)
        return self.procs[name]

    def on_client(self, fn, *args):
        return self.client.submit(fn, *args).result()

    def redis_client(self, host):
        return self.on_client(lambda: RedisClient(REDIS_PORT, host=self.a(host), timeout=5))

    def ask(self, host, port, *args):
        def go():
            try:
                c = RedisClient(port, host=self.a(host), timeout=2)
            except OSError:
                return None
            try:
                return c.cmd(*args)
            except (OSError, ConnectionError):
                return None
            finally:
                c.close()
        return self.on_client(go)

    # -- Redis, replica, sentinels
    def start_redis(self):
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        for host in ("redis", "redis2"):
            d = self.base / host
            d.mkdir(parents=True, exist_ok=True)
            extra = [] if host == "redis" else ["--replicaof", self.a("redis"), REDIS_PORT]
            self.run(host, host, [exe, "--port", REDIS_PORT, "--bind", self.a(host), "--dir", d,
                                  "--save", "", "--appendonly", "no", "--daemonize", "no",
                                  "--protected-mode", "no", "--loglevel", "warning"] + extra)
        wait_until(lambda: "master_link_status:up" in (self.ask("redis2", REDIS_PORT, "INFO",
                                                                "replication") or ""),
                   20 * SLOW, "the replica in sync")
        for i, port in enumerate(SENTINEL_PORTS):
            d = self.base / ("sentinel%d" % i)
            d.mkdir(parents=True, exist_ok=True)
            conf = d / "sentinel.conf"
            conf.write_text("\n".join([
                "port %d" % port, "bind %s" % self.a("redis2"), "dir %s" % d,
                "daemonize no", "protected-mode no",
                "sentinel monitor %s %s %d 2" % (MASTER, self.a("redis"), REDIS_PORT),
                "sentinel down-after-milliseconds %s %d" % (MASTER, 1000 * SLOW),
                "sentinel failover-timeout %s %d" % (MASTER, 10000 * SLOW),
                "sentinel parallel-syncs %s 1" % MASTER, ""]))
            self.run("sentinel%d" % i, "redis2", [exe, conf, "--sentinel"])
        for port in SENTINEL_PORTS:
            wait_until(lambda: self.ask("redis2", port, "PING") == "PONG", 10 * SLOW,
                       "sentinel %d" % port)

    def master(self):
        seen = {tuple(self.ask("redis2", p, "SENTINEL", "get-master-addr-by-name", MASTER) or ())
                for p in SENTINEL_PORTS}
        return seen.pop() if len(seen) == 1 else None

    # -- the daemons
    def config(self, name, host=None):
        ports = {"gateway": GW_PORT, "admin": ADMIN_PORT, "scheduler": API_PORT}
        d = self.base / name
        d.mkdir(parents=True, exist_ok=True)
        hid = self.host_ids.get(name, "x%s" % self.tag)
        cfg = make_config(d, "unused:1", ports, {
            "templates": [echo_template(pool={"min": 4, "max": 16}, idle_timeout="1h")],
            "scheduler": {"capacity": 240, "host_down_after": "3s",
                          "cgroup_parent": "berth-test-%s" % hid},
            "gateway": {"workers": 1}}, host_id=hid)
        del cfg["redis"]["address"]
        cfg["redis"]["sentinels"] = ["%s:%d" % (self.a("redis2"), p) for p in SENTINEL_PORTS]
        cfg["redis"]["master_name"] = MASTER
        if name.startswith("node"):
            a = self.a(name)
            cfg["scheduler"]["api_listen"] = "%s:%d" % (a, API_PORT)
            cfg["scheduler"]["instance_relay"] = {"listen": "%s:%d" % (a, RELAY_PORT)}
            # Each node its own host uid range, as on separate machines (here: one kernel).
            cfg["scheduler"]["uid_base"] = 1000000000 + (0 if name == "node1" else 240 * 65536)
        else:
            a = self.a(name)
            cfg["gateway"]["listen"] = "%s:%d" % (a, GW_PORT)
            cfg["gateway"]["admin_listen"] = "%s:%d" % (a, ADMIN_PORT)
        self.cfgs[name] = cfg
        return write_config(d / "berth.yaml", cfg)

    def start_node(self, name):
        path = self.config(name)
        self.run(name, name, [binary("berth-scheduler"), "-c", path], cwd=str(self.base / name))

    def start_gateway(self, name):
        path = self.config(name)
        self.run(name, name, [binary("berth-gateway"), "-c", path], cwd=str(self.base / name))
        wait_until(lambda: self.on_client(http_get, self.a(name), ADMIN_PORT, "/readyz")[0] == 200,
                   30 * SLOW, "%s ready" % name)

    def kill_node_sandboxes(self, name):
        kill_sandboxes(self.host_ids[name], self.cfgs[name]["scheduler"]["cgroup_parent"])

    def stop(self):
        problems = []
        for name in ("gw1", "gw2", "node1", "node2"):
            p = self.procs.get(name)
            if p:
                problems += [x for x in p.stop() if not x.endswith("exited with -9")]
        for name in ("node1", "node2"):
            if name in self.cfgs:
                self.kill_node_sandboxes(name)
        for name, p in self.procs.items():
            if name not in ("gw1", "gw2", "node1", "node2"):
                p.stop()
        for mp in _mounts_under(self.base):
            os.system("umount -l '%s' 2>/dev/null" % mp)
        for name in ("node1", "node2"):
            if name in self.cfgs:
                log = self.base / ("%s.log" % name)
                text = log.read_text(errors="replace") if log.exists() else ""
                remove_cgroup_dirs(logged_cgroup_parents(
                    text, self.cfgs[name]["scheduler"]["cgroup_parent"]))
        self.net.close()
        return problems


@pytest.fixture
def world():
    _skip_unless_root()
    if not shutil.which("nsenter") or not shutil.which("ip"):
        pytest.skip("nsenter and ip (util-linux, iproute2) are needed")
    d = _short_tmp()
    w = World(d)
    try:
        yield w
    finally:
        try:
            problems = w.stop()
        finally:
            _remove_tree(d)
        assert not problems, problems


class Load:
    """Requests in a loop from `client`, round robin over sessions and both gateways, each
    recorded as (monotonic time, key, status, instance)."""

    def __init__(self, w, keys):
        self.w, self.keys = w, list(keys)
        self.log = []
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.loop, args=(i,), daemon=True)
                        for i in range(4)]
        for t in self.threads:
            t.start()

    def loop(self, i):
        n = i
        while not self.stopped.is_set():
            key = self.keys[n % len(self.keys)]
            gw = ("gw1", "gw2")[n % 2]
            n += 4
            st, h, _ = self.w.on_client(http_get, self.w.a(gw), GW_PORT, "/",
                                        {"x-fc-session-id": key}, 10)
            with self.lock:
                self.log.append((time.monotonic(), key, st, h.get("x-berth-instance")))

    def since(self, t0, keys=None):
        with self.lock:
            return [e for e in self.log if e[0] >= t0 and (keys is None or e[1] in keys)]

    def stop(self):
        self.stopped.set()
        for t in self.threads:
            t.join(30)


def hello(inst, ts=None):
    ts = int(time.time()) if ts is None else ts
    mac = hmac.new(SCHED_SECRET.encode(), ("berth-relay %s app %d" % (inst, ts)).encode(),
                   hashlib.sha256).hexdigest()
    return ("BERTH-RELAY %s app %d %s\r\n" % (inst, ts, mac)).encode()


def raw(w, host, port, data):
    """What a relay on <host> answers to <data> from the client's namespace."""
    return w.on_client(talk, port, data, 10, w.a(host))


def test_many_hosts_in_network_namespaces(world):
    w = world
    w.start_redis()
    w.start_node("node1")
    w.start_node("node2")
    r = w.redis_client("redis")
    prefix = w.cfgs["node1"]["redis"]["prefix"]
    wait_until(lambda: all(r.cmd("LLEN", "%spool:%s:echo" % (prefix, w.host_ids[n])) >= 4
                           for n in ("node1", "node2")), 60 * SLOW, "both nodes' warm pools")
    w.start_gateway("gw1")
    w.start_gateway("gw2")

    # 200 sessions, through both gateways alternately; each answered by the same instance
    # through the other gateway.
    keys = ["mh-%d" % i for i in range(SESSIONS)]
    first = {}
    futs = {k: w.client.submit(http_get, w.a(("gw1", "gw2")[i % 2]), GW_PORT, "/",
                               {"x-fc-session-id": k}, 60)
            for i, k in enumerate(keys)}
    for k, f in futs.items():
        st, h, body = f.result()
        assert st == 200, (k, st, body[:300])
        first[k] = h["x-berth-instance"]
    for i, k in enumerate(keys):
        st, h, _ = w.on_client(http_get, w.a(("gw2", "gw1")[i % 2]), GW_PORT, "/",
                               {"x-fc-session-id": k})
        assert st == 200 and h["x-berth-instance"] == first[k], (k, st, h)
    assert len(set(first.values())) == SESSIONS
    on = {n: [k for k in keys if first[k].startswith(w.host_ids[n] + "-")]
          for n in ("node1", "node2")}
    assert on["node1"] and on["node2"], on
    assert len(on["node1"]) + len(on["node2"]) == SESSIONS
    addr = r.cmd("HGET", "%si:%s" % (prefix, first[keys[0]]), "addr")
    assert addr.startswith("relay:10.211.0.1"), addr
    print("\n200 sessions: %d on node1, %d on node2" % (len(on["node1"]), len(on["node2"])))
    # The same through real curl from the client's namespace.
    p = subprocess.run(
        w.net.argv("client") + ["curl", "-sS", "-D", "-", "-o", "/dev/null", "-H",
                                "x-fc-session-id: %s" % keys[1],
                                "http://%s:%d/" % (w.a("gw1"), GW_PORT)],
        capture_output=True, timeout=30 * SLOW)
    assert ("x-berth-instance: %s" % first[keys[1]]).lower() in p.stdout.decode().lower(), p

    load = Load(w, keys)
    try:
        # 1. The Redis primary dies under load.
        assert r.cmd("WAIT", 1, 10000) >= 1   # what was written is on the replica
        t_kill = time.monotonic()
        w.procs["redis"].ok_codes = (0, -signal.SIGKILL)
        w.procs["redis"].signal(signal.SIGKILL)
        r.close()
        wait_until(lambda: w.master() == (w.a("redis2"), str(REDIS_PORT)), 60 * SLOW,
                   "the sentinels promoting the replica")

        def followed():
            return all(w.on_client(http_get, w.a(g), GW_PORT, "/",
                                   {"x-fc-session-id": "mh-new-%s" % g})[0] == 200
                       for g in ("gw1", "gw2"))
        wait_until(followed, 60 * SLOW, "both gateways on the new primary")
        t_done = time.monotonic()
        time.sleep(1)
        during = load.since(t_kill)
        failed = [e for e in during if e[2] != 200]
        print("failover: %.1f s; %d of %d requests meanwhile failed" % (
            t_done - t_kill, len(failed), len(during)))
        assert not [e for e in failed if e[0] > t_done + 1], failed[-5:]
        moved = [e for e in during if e[2] == 200 and e[3] != first[e[1]]]
        assert not moved, moved[:5]
        r = w.redis_client("redis2")

        # 2. Everything on node2 dies.
        t_node = time.monotonic()
        w.procs["node2"].signal(signal.SIGKILL)
        w.kill_node_sandboxes("node2")
        wait_until(lambda: r.cmd("ZSCORE", prefix + "hosts", w.host_ids["node2"]) is None,
                   30 * SLOW, "node2 marked down")
        # Each of node2's sessions now gets a new instance on node1.
        for k in on["node2"]:
            st, h, body = w.on_client(http_get, w.a("gw1"), GW_PORT, "/",
                                      {"x-fc-session-id": k}, 60)
            assert st == 200, (k, st, body[:300])
            assert h["x-berth-instance"].startswith(w.host_ids["node1"] + "-"), (k, h)
        t_moved = time.monotonic()
        time.sleep(1)
        n1 = load.since(t_node, set(on["node1"]))
        assert n1 and all(e[2] == 200 and e[3] == first[e[1]] for e in n1), \
            [e for e in n1 if e[2] != 200 or e[3] != first[e[1]]][:5]
        n2 = load.since(t_node, set(on["node2"]))
        bad = [e for e in n2 if e[2] not in (200, 502)]
        assert not bad, bad[:5]
        late = [e for e in n2 if e[2] != 200 and e[0] > t_moved]
        assert not late, late[:5]
        print("node2 down: %d of %d requests to its sessions failed (502) before they moved" % (
            len([e for e in n2 if e[2] != 200]), len(n2)))
    finally:
        load.stop()

    # 3. Without the gateways' secret, a node's relay gives nothing.
    inst = [v for k, v in first.items() if k in on["node1"]][0]
    req = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert raw(w, "node1", RELAY_PORT, req) == b""
    assert raw(w, "node1", RELAY_PORT, hello(inst, int(time.time()) - 300) + req) == b""
    ok = raw(w, "node1", RELAY_PORT, hello(inst) + req)
    assert ok.startswith(b"HTTP/1.1 200") and json.loads(ok.split(b"\r\n\r\n", 1)[1])[
        "instance"] == inst, ok[:300]
    # ... and its scheduler API, on the node's address, asks for the secret.
    st, _, _ = w.on_client(http_get, w.a("node1"), API_PORT, "/v1/drain", None, 20, "POST")
    assert st == 401, st

"""Redis Sentinel (issue 18): with redis.sentinels and redis.master_name both daemons find the
primary through the sentinels, and follow a failover: the primary is killed, the sentinels
promote the replica, the gateway and the scheduler reconnect to it (+switch-master, or a
failed connect that asks the sentinels again), and no bound session changes instance.

Real processes on loopback: the stack's redis-server as the primary, a second redis-server
as its replica, three sentinels (redis-server --sentinel), berth-scheduler (process
sandboxes) and berth-gateway, curl.

    BERTH_BUILD_DIR=build /usr/bin/python3 -m pytest tests/integration/test_redis_sentinel.py
"""
import shutil
import signal
import socket
import threading
import time

import pytest

from conftest import (SLOW, Proc, RedisClient, RedisServer, curl, free_port, wait_until,
                      write_config)

MASTER = "berth-test"


def role(port):
    try:
        c = RedisClient(port, timeout=2)
    except OSError:
        return None
    try:
        return c.cmd("ROLE")[0]
    except (OSError, ConnectionError):
        return None
    finally:
        c.close()


class Sentinels:
    def __init__(self, base, primary_port, n=3):
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.ports, self.procs = [], []
        for i in range(n):
            port = free_port()
            d = base / ("sentinel%d" % i)
            d.mkdir(parents=True, exist_ok=True)
            conf = d / "sentinel.conf"   # the sentinel rewrites it: its own, writable
            conf.write_text("\n".join([
                "port %d" % port, "bind 127.0.0.1", "dir %s" % d, "daemonize no",
                "sentinel monitor %s 127.0.0.1 %d 2" % (MASTER, primary_port),
                "sentinel down-after-milliseconds %s %d" % (MASTER, 1000 * SLOW),
                "sentinel failover-timeout %s %d" % (MASTER, 10000 * SLOW),
                "sentinel parallel-syncs %s 1" % MASTER, ""]))
            self.procs.append(Proc("sentinel%d" % i, [exe, str(conf), "--sentinel"], base))
            self.ports.append(port)
        for port in self.ports:
            wait_until(lambda: self.ask(port, "PING") == "PONG", 10 * SLOW,
                       "sentinel on port %d" % port)

    def ask(self, port, *args):
        try:
            c = RedisClient(port, timeout=2)
        except OSError:
            return None
        try:
            return c.cmd(*args)
        except (OSError, ConnectionError):
            return None
        finally:
            c.close()

    def master(self):
        """The primary as every sentinel names it, or None while they disagree."""
        seen = {tuple(self.ask(p, "SENTINEL", "get-master-addr-by-name", MASTER) or ())
                for p in self.ports}
        return seen.pop() if len(seen) == 1 else None

    def stop(self):
        problems = []
        for p in self.procs:
            problems += p.stop()
        return problems


def instance_of(r):
    assert r.status == 200, r
    return r.header("x-berth-instance")


@pytest.mark.berth_timeout(240)
def test_failover_keeps_every_binding(make_stack):
    s = make_stack(start_scheduler=False, start_gateway=False)
    primary = s.redis_server
    replica = RedisServer(s.base / "replica",
                          args=["--replicaof", "127.0.0.1", str(primary.port)])
    sentinels = None
    try:
        wait_until(lambda: replica.client().cmd("INFO", "replication").count(
            "master_link_status:up") == 1, 20 * SLOW, "the replica in sync")
        sentinels = Sentinels(s.base, primary.port)
        # The daemons know the sentinels only, never the primary's address.
        del s.cfg["redis"]["address"]
        s.cfg["redis"]["sentinels"] = ["127.0.0.1:%d" % p for p in sentinels.ports]
        s.cfg["redis"]["master_name"] = MASTER
        write_config(s.config_path, s.cfg)
        s.start_scheduler()
        s.start_gateway()
        assert "names 127.0.0.1:%d the primary" % primary.port in s.gateway.log()

        keys = ["fo-%d" % i for i in range(10)]   # the scheduler's capacity is 16
        before = {k: instance_of(s.get("/", session=k)) for k in keys}
        assert all(before.values()) and len(set(before.values())) == len(keys)
        # Everything written so far is on the replica (a failover loses what was not).
        assert primary.client().cmd("WAIT", 1, 10000) >= 1

        primary.proc.ok_codes = (0, -signal.SIGKILL)
        primary.proc.signal(signal.SIGKILL)
        t0 = time.monotonic()
        failed = 0

        def promoted():
            nonlocal failed
            for k in keys[:5]:   # traffic meanwhile: cached bindings keep serving
                r = s.get("/", session=k, timeout=10)
                if r.status != 200:
                    failed += 1
            return role(replica.port) == "master" and \
                sentinels.master() == ("127.0.0.1", str(replica.port))
        wait_until(promoted, 60 * SLOW, "the sentinels promoting the replica")
        s.redis.close()
        s.redis = replica.client()

        def followed():
            return ('msg="connected" addr=127.0.0.1:%d' % replica.port) in s.scheduler.log() and \
                s.get("/", session="after-failover").status == 200
        try:
            wait_until(followed, 60 * SLOW, "both daemons on the new primary")
        except AssertionError as e:
            raise AssertionError("%s\n--- scheduler:\n%s\n--- gateway:\n%s" % (
                e, s.scheduler.tail(30), s.gateway.tail(30))) from None
        elapsed = time.monotonic() - t0
        print("failover: %.1f s, %d of the requests meanwhile failed" % (elapsed, failed))
        # No bound session changed instance; new sessions are made on the new primary.
        after = {k: instance_of(s.get("/", session=k)) for k in keys}
        assert after == before
        assert s.redis.cmd("EXISTS", s.key("s:", "x")) == 0   # the client works
        assert s.redis.cmd("ZCARD", s.key("sessions:", "default")) == len(keys) + 1
        # The scheduler's heartbeat goes to the new primary.
        hb = s.redis.cmd("ZSCORE", s.key("hosts"), s.host_id)
        assert hb is not None
        wait_until(lambda: int(float(s.redis.cmd("ZSCORE", s.key("hosts"), s.host_id))) >
                   int(float(hb)), 10 * SLOW, "a heartbeat on the new primary")
    finally:
        problems = replica.stop()
        if sentinels:
            problems += sentinels.stop()
    assert not problems, problems


def test_no_sentinel_answers_means_redis_unavailable_not_a_hang(make_stack):
    """Sentinels that are all down: the gateway starts, says Redis is not ready, and new
    sessions get 503 store_unavailable at once; the scheduler keeps retrying."""
    s = make_stack(start_scheduler=False, start_gateway=False)
    del s.cfg["redis"]["address"]
    s.cfg["redis"]["sentinels"] = ["127.0.0.1:%d" % free_port(), "127.0.0.1:%d" % free_port()]
    s.cfg["redis"]["master_name"] = MASTER
    write_config(s.config_path, s.cfg)
    s.gateway = Proc("gateway", [str(__import__("conftest").binary("berth-gateway")), "-c",
                                 s.config_path], s.base, cwd=str(s.base))
    wait_until(lambda: curl(s.admin_url("/healthz"), timeout=2).status == 200, 20 * SLOW,
               "the gateway's /healthz")
    assert curl(s.admin_url("/readyz"), timeout=5).status == 503
    r = s.get("/", session="nobody", timeout=10)
    assert r.status == 503 and r.json()["error"]["code"] == "store_unavailable", r


class FakeSentinel:
    """Answers every command with the address it is told (a RESP array of host and port):
    enough of a sentinel for SENTINEL get-master-addr-by-name; SUBSCRIBE gets the same
    (not a subscribe reply: the client's watch just waits)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.answer = ("127.0.0.1", "1")
        self.asked = 0
        self.stopped = False
        self.t = threading.Thread(target=self.serve, daemon=True)
        self.t.start()

    def serve(self):
        self.sock.settimeout(0.2)
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            c.settimeout(2)
            try:
                if c.recv(4096):
                    self.asked += 1
                    h, p = self.answer
                    c.sendall(b"*2\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
                        len(h), h.encode(), len(p), p.encode()))
            except OSError:
                pass
            finally:
                c.close()

    def stop(self):
        self.stopped = True
        self.t.join(5)
        self.sock.close()


@pytest.mark.berth_timeout(180)
def test_a_primary_that_takes_no_connection_is_given_up_and_the_next_one_found(make_stack):
    """The sentinel names a primary whose SYNs go unanswered (a listener with a full accept
    queue: its host is gone, as far as a client can tell). Each connect is given up after
    redis.connect_timeout and retried, the daemon lives on; once the sentinel names the real
    primary it connects. (A connect still in progress used to be freed without hiredis's
    disconnect callback: a double free at the next watchdog tick.)"""
    s = make_stack(start_scheduler=False, start_gateway=False)
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    fillers = []
    for _ in range(3):   # fill the accept queue: more SYNs are dropped
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(hole.getsockname())
        fillers.append(f)
    fake = FakeSentinel()
    try:
        fake.answer = ("127.0.0.1", str(hole.getsockname()[1]))
        del s.cfg["redis"]["address"]
        s.cfg["redis"]["sentinels"] = ["127.0.0.1:%d" % fake.port]
        s.cfg["redis"]["master_name"] = MASTER
        s.cfg["redis"]["connect_timeout"] = "300ms"
        write_config(s.config_path, s.cfg)
        s.gateway = Proc("gateway", [str(__import__("conftest").binary("berth-gateway")), "-c",
                                     s.config_path], s.base, cwd=str(s.base))
        wait_until(lambda: curl(s.admin_url("/healthz"), timeout=2).status == 200, 20 * SLOW,
                   "the gateway's /healthz")
        asked = fake.asked
        wait_until(lambda: fake.asked >= asked + 6, 30 * SLOW, "several connects given up")
        assert s.gateway.alive(), s.gateway.tail()
        assert curl(s.admin_url("/readyz"), timeout=5).status == 503
        fake.answer = ("127.0.0.1", str(s.redis_server.port))
        wait_until(lambda: curl(s.admin_url("/readyz"), timeout=2).status == 200, 30 * SLOW,
                   "the gateway ready on the real primary")
    finally:
        fake.stop()
        for f in fillers:
            f.close()
        hole.close()

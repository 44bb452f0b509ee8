"""The gateway's hot path (a request of a bound session whose binding the loop has cached):
that it allocates nothing once warm (counted by an LD_PRELOAD shim, tests/harness/
alloc_count.c), and that a request head taken whole from one read (kept in one of the loop's
head slots, gateway/worker.h) behaves exactly like one kept in the input buffer: around the
slot's size, split over reads, pipelined, and retried on a fresh upstream connection when a
pooled one turns out closed. The upstreams are berth-bench-upstream and a small Python server
that drops every second request of a connection; the gateway routes with a static template."""

import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import (BUILD_DIR, SANITIZED, SLOW, Proc, RedisServer, _remove_tree, _short_tmp,
                      binary, curl, free_port, wait_until, write_config)

HEAD_SLOT = 4096  # GW_HEAD_SLOT in gateway/worker.h


# ------------------------------------------------------------------ the pieces

class Client:
    """One keep-alive connection; responses are framed by Content-Length (all ours have it)."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
        self.buf = b""

    def close(self):
        self.s.close()

    def send(self, data):
        self.s.sendall(data)

    def response(self):
        while b"\r\n\r\n" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                raise EOFError("connection closed; got %r" % self.buf)
            self.buf += d
        head, rest = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        while len(rest) < n:
            d = self.s.recv(65536)
            if not d:
                raise EOFError("connection closed in a body")
            rest += d
        self.buf = rest[n:]
        return status, headers, rest[:n]


def request(session, path="/", extra=b""):
    return (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: hot\r\nx-fc-session-id: " +
            session.encode() + b"\r\n" + extra + b"\r\n")


def padded(session, total):
    """A request head of exactly <total> bytes (an x-pad header takes up the rest)."""
    bare = request(session, extra=b"x-pad: \r\n")
    assert total >= len(bare)
    return request(session, extra=b"x-pad: " + b"p" * (total - len(bare)) + b"\r\n")


class Gateway:
    """redis-server + berth-gateway with one static template over <upstreams>."""

    def __init__(self, d, upstreams, env=None, gateway=None):
        self.d = d
        self.redis = RedisServer(d)
        self.port, self.admin = free_port(), free_port()
        cfg = {
            "log": {"level": "info"},
            "redis": {"address": self.redis.address, "prefix": "hot:"},
            "tenants": [{"name": "default"}],
            "templates": [{"name": "fleet", "driver": "static", "sessions_per_instance": 0,
                           "upstreams": upstreams}],
            "gateway": dict({
                "listen": "127.0.0.1:%d" % self.port,
                "admin_listen": "127.0.0.1:%d" % self.admin,
                "workers": 1,
                "routes": [{"name": "hot", "template": "fleet",
                            "key_headers": ["x-fc-session-id"], "no_key": "reject"}],
            }, **(gateway or {})),
        }
        path = write_config(Path(d) / "gateway.yaml", cfg)
        self.proc = None
        try:
            self.proc = Proc("gateway", [binary("berth-gateway"), "-c", path], d, env=env,
                             cwd=d)

            def ready():
                if not self.proc.alive():
                    raise AssertionError("berth-gateway exited:\n%s" % self.proc.tail())
                return curl("http://127.0.0.1:%d/readyz" % self.admin, timeout=2).status == 200
            wait_until(ready, 20 * SLOW, "berth-gateway /readyz")
        except BaseException:
            self.stop()
            raise

    def stop(self):
        problems = self.proc.stop() if self.proc else []
        problems += self.redis.stop()
        return problems


@pytest.fixture
def bench_upstream():
    d = _short_tmp()
    p = Proc("upstream", [binary("berth-bench-upstream"), "--listen", "127.0.0.1:0=u0",
                          "--listen", "127.0.0.1:0=u1"], d)
    wait_until(lambda: "ready" in p.log() or not p.alive(), 10 * SLOW, "berth-bench-upstream")
    assert p.alive(), p.tail()
    addrs = re.findall(r"u\d=(127\.0\.0\.1:\d+)", p.log())
    yield addrs
    problems = p.stop()
    _remove_tree(d)
    assert not problems, "\n".join(problems)


@pytest.fixture
def gateway():
    made = []

    def make(upstreams, **kw):
        d = _short_tmp()
        made.append((None, d))
        g = Gateway(str(d), upstreams, **kw)  # stops what it started if it fails
        made[-1] = (g, d)
        return g

    yield make
    problems = []
    for g, d in made:
        if g:
            problems += g.stop()
        _remove_tree(d)
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ no allocation

SHIM = BUILD_DIR / "tests" / "alloc_count.so"


@pytest.mark.skipif(SANITIZED, reason="the counting shim replaces malloc, as the sanitizers do")
def test_bound_session_requests_allocate_nothing(bench_upstream, gateway, tmp_short):
    assert SHIM.is_file(), "%s is not built" % SHIM
    count_file = tmp_short / "allocs"
    env = dict(os.environ, LD_PRELOAD=str(SHIM), BERTH_ALLOC_COUNT_FILE=str(count_file),
               BERTH_ALLOC_COUNT_THREAD="berth-loop")
    # No background work in the window: activity is flushed and bindings revalidated
    # long after the test ends.
    g = gateway(bench_upstream, env=env,
                gateway={"activity_flush": "10m", "cache_ttl": "10m"})

    def allocs():
        return int(count_file.read_text() or "0") if count_file.exists() else 0

    sessions = ["hot-%d" % i for i in range(20)]
    clients = [Client(g.port) for _ in range(4)]
    try:
        # Warm up: every session claimed and cached, every client and upstream connection
        # open, the first touch of each session sent and answered.
        for i, s in enumerate(sessions * 3):
            c = clients[i % len(clients)]
            c.send(request(s))
            st, h, _ = c.response()
            assert st == 200, (st, h)
        wait_until(lambda: allocs() > 0, 5 * SLOW, "the loop's start-up allocations counted")

        def settled():  # the same count 0.3 s apart: the warm-up's touches were answered
            n = allocs()
            time.sleep(0.3)
            return allocs() == n
        wait_until(settled, 5 * SLOW, "the loop's allocations to settle")
        before = allocs()
        n = 3000
        instances = {}
        for i in range(n):
            s = sessions[i % len(sessions)]
            c = clients[i % len(clients)]
            c.send(request(s))
            st, h, body = c.response()
            assert st == 200 and body == b"hello, agent\n", (st, h, body)
            assert instances.setdefault(s, h["x-berth-instance"]) == h["x-berth-instance"]
        after = allocs()
    finally:
        for c in clients:
            c.close()
    # Before the head slots every request cost a malloc (the input buffer's chain): 3,000.
    assert after - before <= n // 100, (
        "%d allocations on the loop for %d requests of bound sessions" % (after - before, n))


# ------------------------------------------------------------------ heads in slots and in the input

@pytest.mark.parametrize("size", [HEAD_SLOT - 1, HEAD_SLOT, HEAD_SLOT + 1, 12000])
def test_heads_around_the_slot_size(bench_upstream, gateway, size):
    g = gateway(bench_upstream)
    c = Client(g.port)
    try:
        for _ in range(3):  # the first claims, the others hit the cache
            c.send(padded("slot-%d" % size, size))
            st, h, body = c.response()
            assert st == 200 and body == b"hello, agent\n", (st, h)
    finally:
        c.close()


def test_split_pipelined_and_mixed_heads(bench_upstream, gateway):
    g = gateway(bench_upstream)
    c = Client(g.port)
    try:
        c.send(request("mix"))  # claims
        assert c.response()[0] == 200
        # a head in two reads
        r = request("mix")
        c.send(r[:20])
        time.sleep(0.05)
        c.send(r[20:])
        assert c.response()[0] == 200
        # three pipelined in one write, the last cut in the middle, then completed
        three = request("mix", "/bytes/5") + request("mix") + request("mix", "/bytes/7")
        c.send(three[:-10])
        time.sleep(0.05)
        c.send(three[-10:])
        bodies = [c.response()[2] for _ in range(3)]
        assert [len(b) for b in bodies] == [5, 13, 7], bodies
        # a whole head, then at once a head that fills more than a slot
        c.send(request("mix") + padded("mix", HEAD_SLOT + 500))
        assert [c.response()[0] for _ in range(2)] == [200, 200]
        # a garbage head after good ones gets its 400 and the connection closes
        c.send(b"GET / HTTP/1.1\r\nHost hot\r\n\r\n")
        st, h, body = c.response()
        assert st == 400 and b'"bad_request"' in body, (st, body)
    finally:
        c.close()


# ------------------------------------------------------------------ the retry on a stale connection

class DroppingUpstream:
    """Answers the first request of each connection (keep-alive) and closes the connection,
    unanswered, when the second arrives: what a server whose keep-alive timeout runs out
    just as a request comes does to a proxy that pooled its connection."""

    def __init__(self):
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(64)
        self.port = self.ls.getsockname()[1]
        self.answered = self.dropped = 0
        self.heads = []
        self.stopping = False
        self.t = threading.Thread(target=self._serve, daemon=True)
        self.t.start()

    def _read_head(self, s, buf):
        while b"\r\n\r\n" not in buf:
            d = s.recv(65536)
            if not d:
                return None, b""
            buf += d
        head, rest = buf.split(b"\r\n\r\n", 1)
        return head, rest

    def _conn(self, s):
        with s:
            head, rest = self._read_head(s, b"")
            if head is None:
                return
            self.heads.append(head)
            self.answered += 1
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nfirst\n")
            head, _ = self._read_head(s, rest)
            if head is not None:
                self.dropped += 1
            s.shutdown(socket.SHUT_RDWR)

    def _serve(self):
        while not self.stopping:
            try:
                s, _ = self.ls.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(s,), daemon=True).start()

    def stop(self):
        self.stopping = True
        self.ls.close()


@pytest.fixture
def dropping_upstream():
    u = DroppingUpstream()
    yield u
    u.stop()


@pytest.mark.parametrize("head_size", [0, HEAD_SLOT + 800])
def test_request_on_a_closed_pooled_connection_is_retried(dropping_upstream, gateway, head_size):
    g = gateway(["127.0.0.1:%d" % dropping_upstream.port])
    c = Client(g.port)
    try:
        for i in range(6):
            r = request("drop") if not head_size else padded("drop", head_size)
            c.send(r)
            st, h, body = c.response()
            assert (st, body) == (200, b"first\n"), (i, st, h, body)
    finally:
        c.close()
    # every request after the first went to a pooled connection, which dropped it; the
    # gateway sent the same head again on a fresh one
    assert dropping_upstream.answered == 6
    assert dropping_upstream.dropped >= 5
    for head in dropping_upstream.heads:
        assert b"x-fc-session-id: drop" in head.lower()


# ------------------------------------------------------------------ bodies relayed from the read

def test_body_then_pipelined_request_in_one_read(bench_upstream, gateway):
    """The body arrives in a read of its own (sent from where it was read) together with the
    next request, which must wait in the input for its turn."""
    g = gateway(bench_upstream)
    c = Client(g.port)
    try:
        c.send(request("body"))
        assert c.response()[0] == 200
        body = b"b" * 3000
        c.send(b"POST /upload HTTP/1.1\r\nHost: hot\r\nx-fc-session-id: body\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body))
        time.sleep(0.1)  # the head is routed and sent before the body comes
        c.send(body + request("body", "/bytes/9"))
        st, h, got = c.response()
        assert (st, got) == (200, b'{"received":3000}\n'), (st, h, got)
        st, h, got = c.response()
        assert (st, len(got)) == (200, 9), (st, h, got)
        # a chunked body the same way, its last chunk with a request behind it
        c.send(b"PUT /up HTTP/1.1\r\nHost: hot\r\nx-fc-session-id: body\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
        time.sleep(0.1)
        c.send(b"5\r\nhello\r\n")
        time.sleep(0.05)
        c.send(b"6\r\n world\r\n0\r\n\r\n" + request("body"))
        st, h, got = c.response()
        assert (st, got) == (200, b'{"received":11}\n'), (st, h, got)
        assert c.response()[0] == 200
    finally:
        c.close()


class TrailingJunkUpstream:
    """Sends each response's head, then (in a later write) its 5-byte body followed by bytes
    that belong to no response; a proxy must not reuse that connection."""

    def __init__(self):
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.port = self.ls.getsockname()[1]
        self.connections = 0
        self.t = threading.Thread(target=self._serve, daemon=True)
        self.t.start()

    def _conn(self, s):
        with s:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    d = s.recv(65536)
                    if not d:
                        return
                    buf += d
                buf = buf.split(b"\r\n\r\n", 1)[1]
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
                time.sleep(0.05)
                s.sendall(b"helloHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\njunk")

    def _serve(self):
        while True:
            try:
                s, _ = self.ls.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._conn, args=(s,), daemon=True).start()

    def stop(self):
        self.ls.close()


def test_bytes_after_a_response_body_are_not_taken_for_the_next(gateway):
    u = TrailingJunkUpstream()
    try:
        g = gateway(["127.0.0.1:%d" % u.port])
        c = Client(g.port)
        try:
            for i in range(3):
                c.send(request("junk"))
                st, h, body = c.response()
                assert (st, body) == (200, b"hello"), (i, st, h, body)
        finally:
            c.close()
        assert u.connections == 3  # none reused after its junk
    finally:
        u.stop()

"""Streaming through the gateway: 50 MiB bodies both ways relayed intact while the gateway's
memory stays flat (watermarks, not buffering), SSE events delivered one by one as the instance
writes them, and a client that goes away mid-stream cancelling the instance's request."""

import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
import zlib

import pytest

from conftest import (SANITIZED, SLOW, Stack, _remove_tree, _short_tmp, _skip_unless_root, curl,
                      curl_stream, echo_template, wait_until)

MiB = 1024 * 1024
BIG = 50 * MiB
RSS_GROWTH_LIMIT = 16 * MiB
ALPHABET = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/"


@pytest.fixture(scope="module")
def sstack():
    _skip_unless_root()
    d = _short_tmp()
    s = Stack(d, {"templates": [echo_template(pool={"min": 3, "max": 16})],
                  "scheduler": {"capacity": 20}}, start_gateway=False)
    # Under ASan, freed memory sits in the allocator's quarantine (256 MiB by default), so RSS
    # grows with the bytes relayed whatever the gateway buffers: the gateway of this module
    # runs without quarantine, so that the RSS checks measure the gateway, not ASan.
    saved = os.environ.get("ASAN_OPTIONS")
    if SANITIZED:
        os.environ["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=1:halt_on_error=1:" \
            "detect_stack_use_after_return=0:quarantine_size_mb=0:thread_local_quarantine_size_kb=0"
    try:
        s.start_gateway()
    except BaseException:
        s.stop(check=False)
        _remove_tree(d)
        raise
    finally:
        if SANITIZED:
            if saved is None:
                os.environ.pop("ASAN_OPTIONS", None)
            else:
                os.environ["ASAN_OPTIONS"] = saved
    yield s
    try:
        s.stop()
    finally:
        _remove_tree(d)


@pytest.fixture(scope="module")
def big_file():
    """50 MiB of pseudo-random bytes and their CRC-32."""
    d = _short_tmp()
    path = d / "big.bin"
    crc = 0
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        for i in range(BIG // MiB):
            b = bytes([i & 0xff]) + block[1:]  # every MiB differs
            f.write(b)
            crc = zlib.crc32(b, crc)
    yield path, crc
    _remove_tree(d)


def rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for %d" % pid)


class RssSampler:
    """Samples a process's VmRSS every few milliseconds while a transfer runs."""

    def __init__(self, pid):
        self.pid = pid
        self.base = rss(pid)
        self.peak = self.base
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.pid))
            self.samples += 1
            time.sleep(0.005)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(5)

    def check(self, what):
        assert self.samples >= 5, "%s ended before the RSS was sampled (%d samples)" % (
            what, self.samples)
        growth = self.peak - self.base
        assert growth < RSS_GROWTH_LIMIT, \
            "%s: gateway RSS grew by %.1f MiB (from %.1f to %.1f MiB)" % (
                what, growth / MiB, self.base / MiB, self.peak / MiB)


def warm_up(stack, session):
    """A first exchange for <session> so its claim and connections exist before measuring."""
    r = stack.get("/warm", session=session, data=b"x" * 100000)
    assert r.status == 200


def metrics(stack):
    out = {}
    for line in curl(stack.admin_url("/metrics")).text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out


# ------------------------------------------------------------------ bodies

@pytest.mark.berth_timeout(120)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_50mib_upload_relayed_intact_with_flat_memory(sstack, big_file, framing):
    path, crc = big_file
    session = "upload-%s" % framing
    warm_up(sstack, session)
    headers = {"x-fc-session-id": session}
    if framing == "chunked":
        headers["Transfer-Encoding"] = "chunked"
    with RssSampler(sstack.gateway.pid) as m:
        r = curl(sstack.url("/upload"), method="POST", headers=headers, data_file=path,
                 timeout=90)
    assert r.status == 200, (r, r.error)
    j = r.json()
    assert j["body_bytes"] == BIG
    assert j["body_crc32"] == crc
    assert j["headers"].get("transfer-encoding", "") == ("chunked" if framing == "chunked" else "")
    if framing == "content-length":
        assert j["headers"]["content-length"] == str(BIG)
    m.check("%s upload" % framing)


@pytest.mark.berth_timeout(120)
def test_50mib_download_relayed_intact_with_flat_memory_slow_reader(sstack):
    """A reader slower than the instance: the gateway must pause the instance, not buffer."""
    session = "download-slow"
    warm_up(sstack, session)
    expect_crc = zlib.crc32(ALPHABET * (BIG // len(ALPHABET)))
    conn = http.client.HTTPConnection("127.0.0.1", sstack.ports["gateway"], timeout=30 * SLOW)
    with RssSampler(sstack.gateway.pid) as m:
        conn.request("GET", "/bytes?n=%d" % BIG, headers={"x-fc-session-id": session})
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("content-length") == str(BIG)
        n, crc = 0, 0
        while True:
            chunk = resp.read(256 * 1024)
            if not chunk:
                break
            n += len(chunk)
            crc = zlib.crc32(chunk, crc)
            time.sleep(0.004)  # ~200 pauses: slower than the instance
    conn.close()
    assert n == BIG
    assert crc == expect_crc
    m.check("slow download")


@pytest.mark.berth_timeout(120)
def test_50mib_download_with_curl(sstack, tmp_short):
    session = "download-curl"
    warm_up(sstack, session)
    out = tmp_short / "down.bin"
    with RssSampler(sstack.gateway.pid) as m:
        r = curl(sstack.url("/bytes?n=%d" % BIG), headers={"x-fc-session-id": session},
                 output=out, timeout=90)
    assert r.status == 200, r.error
    assert out.stat().st_size == BIG
    crc = 0
    with open(out, "rb") as f:
        while True:
            b = f.read(MiB)
            if not b:
                break
            crc = zlib.crc32(b, crc)
    assert crc == zlib.crc32(ALPHABET * (BIG // len(ALPHABET)))
    m.check("curl download")


# ------------------------------------------------------------------ SSE

@pytest.mark.berth_timeout(60)
def test_sse_events_arrive_one_by_one(sstack):
    n, interval = 5, 0.3
    events = []  # (arrival seconds, id, server t_ms)
    status = None
    headers = {}
    in_body = False
    cur_id = None
    for t, line in curl_stream(sstack.url("/sse?n=%d&interval_ms=%d" % (n, interval * 1000)),
                               headers={"x-fc-session-id": "sse-timing"}, timeout=30):
        if status is None:
            status = int(line.split()[1])
        elif not in_body:
            if line == "":
                in_body = True
            else:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        elif line.startswith("id: "):
            cur_id = int(line[4:])
        elif line.startswith("data: "):
            d = json.loads(line[6:])
            assert d["i"] == cur_id
            events.append((t, d["i"], d["t_ms"]))
    assert status == 200
    assert headers.get("content-type") == "text/event-stream"
    assert headers.get("x-berth-session") == "sse-timing"
    assert [e[1] for e in events] == list(range(n)), events
    arrivals = [e[0] for e in events]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    # no batching: every event arrives about <interval> after the previous one...
    for g in gaps:
        assert g >= interval - 0.1, "events batched: gaps %r" % gaps
        assert g <= interval + 0.25 * SLOW, "events delayed: gaps %r" % gaps
    # ...and when the instance wrote it (server clock differences vs client clock differences)
    for (ta, _, sa), (tb, _, sb) in zip(events, events[1:]):
        assert abs((tb - ta) - (sb - sa) / 1000.0) < 0.1 * SLOW, events


def gateway_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


@pytest.mark.berth_timeout(60)
def test_client_disconnect_mid_sse_cancels_the_upstream_request(sstack):
    session = "sse-cancel"  # no warm-up: no idle instance connection in the pool yet
    gpid = sstack.gateway.pid
    wait_until(lambda: metrics(sstack)["berth_gateway_streams_active"] == 0, 5 * SLOW,
               "no stream in flight before the test")
    fds_before = gateway_fds(gpid)
    s = socket.create_connection(("127.0.0.1", sstack.ports["gateway"]), timeout=10 * SLOW)
    s.sendall(b"GET /sse?n=100000&interval_ms=50 HTTP/1.1\r\nHost: t\r\n"
              b"x-fc-session-id: sse-cancel\r\n\r\n")
    got = b""
    deadline = time.monotonic() + 10 * SLOW
    while got.count(b"data: ") < 3 and time.monotonic() < deadline:
        got += s.recv(65536)
    assert got.startswith(b"HTTP/1.1 200"), got[:200]
    assert got.count(b"data: ") >= 3
    m = metrics(sstack)
    assert m["berth_gateway_streams_active"] == 1
    # the client and the instance connection (waited for: the admin connection of the metrics
    # request just made may not be closed on the gateway's side yet)
    wait_until(lambda: gateway_fds(gpid) == fds_before + 2, 3 * SLOW,
               "exactly the client and the instance connection open")
    s.close()
    # the gateway notices, ends the stream and closes the instance connection (not pooled)
    wait_until(lambda: metrics(sstack)["berth_gateway_streams_active"] == 0, 3 * SLOW,
               "streams_active back to 0 after the client left")
    wait_until(lambda: gateway_fds(gpid) == fds_before, 3 * SLOW,
               "the gateway's client and instance sockets closed (had %d fds before)"
               % fds_before)
    out1 = metrics(sstack)['berth_gateway_body_bytes_total{direction="out"}']
    time.sleep(0.5)
    out2 = metrics(sstack)['berth_gateway_body_bytes_total{direction="out"}']
    assert out1 == out2, "bytes still relayed after the client left"
    # the session still works
    assert sstack.get("/after", session=session).status == 200


SIGTERM_GRACE = 10  # seconds a stopping gateway may take with a stream still open


@pytest.mark.berth_timeout(90)
def test_sigterm_with_an_open_stream_stops_in_bounded_time(make_stack):
    """A stopping gateway finishes what is in flight, but an endless stream (SSE, WebSocket)
    must not keep it alive forever: it ends within a bounded grace period."""
    s = make_stack({"templates": [echo_template(pool={"min": 1, "max": 4})]})
    sock = socket.create_connection(("127.0.0.1", s.ports["gateway"]), timeout=10 * SLOW)
    try:
        sock.sendall(b"GET /sse?n=100000&interval_ms=50 HTTP/1.1\r\nHost: t\r\n"
                     b"x-fc-session-id: endless\r\n\r\n")
        got = b""
        while got.count(b"data: ") < 2:
            d = sock.recv(65536)
            assert d, got
            got += d
        g = s.gateway
        t0 = time.monotonic()
        g.signal(signal.SIGTERM)
        try:
            g.p.wait(SIGTERM_GRACE * SLOW)
            exited = True
        except subprocess.TimeoutExpired:
            exited = False
            g.signal(signal.SIGKILL)
            g.p.wait(10)
        took = time.monotonic() - t0
        problems = [p for p in g.stop() if "exited with -9" not in p]
        s.gateway = None
    finally:
        sock.close()
    assert exited, "berth-gateway still running %.0fs after SIGTERM with one SSE stream " \
        "open (killed)" % took
    assert not problems, problems

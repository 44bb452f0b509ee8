"""HTTP/2 on the gateway's client side: h2 by ALPN on the TLS listener, h2c with prior knowledge
on the cleartext one. Real clients: curl (--http2, --http2-prior-knowledge), nghttp, h2load,
and python3-h2 for raw frames. Upstreams: berth-echo in the process sandbox, and a small
Python server (a "static" template on /misc/) for trailers, a WebSocket-style 101 and an
instance that never reads.

What a hostile client could try, and what is checked: many sessions on one connection (each
stream sticks to its own sandbox), a window held shut (only its stream stalls, then it is
reset at send_timeout), an instance that does not read (only its stream stalls), rapid reset
(CVE-2023-44487), CONTINUATION floods (CVE-2024-27316 class), PING and SETTINGS floods, an
HPACK bomb, too many streams, a header list over the limit, garbage after the preface: each
answered with GOAWAY or RST_STREAM (or a 431), while another client keeps being served."""

import json
import socket
import struct
import subprocess
import threading
import time
import zlib

import h2.events
import h2.settings
import hpack
import pytest

from conftest import (SLOW, Stack, _remove_tree, _short_tmp, _skip_unless_root, curl,
                      deep_merge, echo_template, free_port, make_test_certs, prom_metrics, wait_until,
                      write_config)
from h2client import H2

SEND_TIMEOUT = 2.0   # gateway.h2.send_timeout (scaled by SLOW)
MAX_STREAMS = 8      # gateway.h2.max_concurrent_streams
RESET_BURST = 50     # gateway.h2.reset_burst
HEADER_LIST = 16384  # gateway.h2.max_header_list
HEADER_TIMEOUT = 3.0  # gateway.limits.header_timeout (scaled by SLOW)

# ------------------------------------------------------------------ a static upstream


class Misc(threading.Thread):
    """/misc/trailers: a chunked answer with trailers. /misc/ws: 101, then every byte back.
    /misc/wslate: 101, then nothing read until wslate_go is set, then every byte back, read
    slowly; at the end of its input it records the byte count (wslate_eof) and closes.
    /misc/eofbody: a body that ends with the instance's close; /misc/eofrst: the same body,
    then a reset instead of the close.
    /misc/noread: never reads the request body, answers after the client gave up.
    /misc/slow: answers after a second."""

    def __init__(self):
        super().__init__(daemon=True)
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(64)
        self.port = self.srv.getsockname()[1]
        self.stop = False
        self.noread_seen = threading.Event()
        self.wslate_go = threading.Event()
        self.wslate_eof = None

    def run(self):
        while not self.stop:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        c.settimeout(60)
        try:
            while True:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    d = c.recv(4096)
                    if not d:
                        return
                    buf += d
                head, rest = buf.split(b"\r\n\r\n", 1)
                line = head.split(b"\r\n")[0].decode()
                path = line.split(" ")[1].split("?")[0]
                what = path.rsplit("/", 1)[-1]
                if what == "trailers":
                    c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                              b"Trailer: x-checksum\r\nContent-Type: text/plain\r\n\r\n"
                              b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc123\r\n\r\n")
                elif what == "ws":
                    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                              b"Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n")
                    if rest:
                        c.sendall(rest)
                    while True:
                        d = c.recv(65536)
                        if not d:
                            return
                        c.sendall(d)
                elif what == "wslate":
                    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                              b"Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n")
                    self.wslate_go.wait(60)
                    n = len(rest)
                    if rest:
                        c.sendall(rest)
                    while True:
                        d = c.recv(4096)
                        if not d:
                            self.wslate_eof = n
                            return
                        n += len(d)
                        c.sendall(d)
                        time.sleep(0.004)  # slower than the gateway: its output stays full
                elif what in ("eofbody", "eofrst"):  # a body that ends with the close
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
                              b"the whole body")
                    if what == "eofrst":  # an error, not the end: RST instead of FIN
                        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
                    return
                elif what == "hop":  # HTTP/1 connection fields, mixed-case names, chunked
                    c.sendall(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Internal\r\n"
                              b"X-Internal: secret\r\nKeep-Alive: timeout=5\r\n"
                              b"Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nTE: trailers\r\n"
                              b"X-Mixed-Case: yes\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"3\r\nhop\r\n0\r\n\r\n")
                elif what == "bigtrailer":  # a trailer section without end
                    c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"2\r\nok\r\n0\r\nx-t: ")
                    try:
                        for _ in range(1000):
                            c.sendall(b"v" * 65536)
                    except OSError:
                        pass
                    return
                elif what == "interims":  # 1xx heads without end
                    try:
                        for _ in range(10000):
                            c.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
                    except OSError:
                        pass
                    return
                elif what == "noread":
                    self.noread_seen.set()
                    time.sleep(30)
                    return
                elif what == "slow":
                    time.sleep(1)
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
                else:
                    c.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.stop = True
        self.srv.close()


@pytest.fixture(scope="module")
def misc():
    m = Misc()
    m.start()
    yield m
    m.close()


@pytest.fixture(scope="module")
def hstack(misc):
    _skip_unless_root()
    d = _short_tmp()
    certs = _short_tmp()
    make_test_certs(certs)
    tls_port = free_port()
    s = Stack(d, {"templates": [echo_template(pool={"min": 4, "max": 16})],
                  "scheduler": {"capacity": 24}}, start_gateway=False)
    s_header_timeout = "%dms" % (HEADER_TIMEOUT * 1000 * SLOW)
    try:
        cfg = deep_merge(s.cfg, {"gateway": {
            "tls_listen": "127.0.0.1:%d" % tls_port,
            "tls": {"certificates": [{"cert": str(certs / "localhost-chain.pem"),
                                      "key": str(certs / "localhost.key")}]},
            "access_log": {"enabled": True},
            "limits": {"header_timeout": s_header_timeout},
            "h2": {"send_timeout": "%dms" % (SEND_TIMEOUT * 1000 * SLOW),
                   "max_concurrent_streams": MAX_STREAMS, "reset_burst": RESET_BURST,
                   "reset_rate": 10, "max_header_list": HEADER_LIST},
            "routes": [
                {"name": "misc", "path_prefix": "/misc/", "template": "misc"},
                {"name": "keyless", "host": "keyless.test", "template": "echo",
                 "no_key": "new"},
                {"name": "echo", "path_prefix": "/", "template": "echo",
                 "key_headers": ["x-fc-session-id"], "cookie": "berth_session"}]}})
        cfg["templates"] = cfg["templates"] + [
            {"name": "misc", "driver": "static", "sessions_per_instance": 0,
             "upstreams": ["127.0.0.1:%d" % misc.port]}]
        s.config_path = write_config(d / "berth-gateway.yaml", cfg)
        s.start_gateway()
        s.tls_port = tls_port
        s.certs = certs
    except BaseException:
        s.stop(check=False)
        _remove_tree(d)
        _remove_tree(certs)
        raise
    yield s
    try:
        problems = s.stop(check=False)
        assert not problems, problems
    finally:
        _remove_tree(d)
        _remove_tree(certs)


def port(s):
    return s.ports["gateway"]


def metric(s, name):
    return prom_metrics(s.admin_url("/metrics"))[name]


def fill_until_shut(c, sid):
    """Sends DATA on <sid> as long as its window opens again: until what the gateway holds
    toward the instance keeps the window shut for a second. Returns the bytes sent."""
    sent, quiet_since = 0, None
    deadline = time.monotonic() + 30 * SLOW
    while time.monotonic() < deadline and sent < (64 << 20):
        w = c.conn.local_flow_control_window(sid)
        if w > 0:
            n = min(w, c.conn.max_outbound_frame_size)
            c.conn.send_data(sid, b"x" * n)
            c.flush()
            sent += n
            quiet_since = None
            continue
        quiet_since = quiet_since or time.monotonic()
        if time.monotonic() - quiet_since > 1.0 * SLOW:
            break
        c.pump(0.1)
    assert c.conn.local_flow_control_window(sid) == 0, sent
    return sent


def served(s):
    """Another client, on its own connection, is served meanwhile."""
    r = curl(s.url("/seen"), headers={"x-fc-session-id": "bystander"}, http="2")
    assert r.status == 200, r
    return r


def run(argv, timeout=60):
    p = subprocess.run([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=timeout * SLOW)
    return p.returncode, p.stdout.decode(errors="replace")


# ------------------------------------------------------------------ the basics, real clients

def test_h2c_with_prior_knowledge_reaches_the_session(hstack):
    s = hstack
    r = curl(s.url("/seen"), headers={"x-fc-session-id": "h2-a", "X-Forwarded-Proto": "https"},
             http="2", extra=["-w", "%{http_version}\n%{http_code}"])
    assert r.status == 200, r
    assert r.write_out.splitlines()[0] == "2"
    seen = r.json()
    assert seen["headers"]["x-forwarded-proto"] == "http"  # the client's own is replaced
    assert r.header("x-berth-session") == "h2-a"
    # the same session over HTTP/1.1: the same sandbox
    r1 = curl(s.url("/seen"), headers={"x-fc-session-id": "h2-a"})
    assert r1.status == 200 and r1.header("x-berth-instance") == r.header("x-berth-instance")


def test_h2_over_tls_by_alpn(hstack):
    s = hstack
    extra = ["--cacert", str(s.certs / "ca.pem"), "--resolve",
             "localhost:%d:127.0.0.1" % s.tls_port, "-w", "%{http_version}\n%{http_code}"]
    url = "https://localhost:%d/seen" % s.tls_port
    r = curl(url, headers={"x-fc-session-id": "h2-tls"}, http="2", extra=extra)
    assert r.status == 200 and r.write_out.splitlines()[0] == "2", r
    assert r.json()["headers"]["x-forwarded-proto"] == "https"
    # a client that offers only http/1.1 still gets it
    r1 = curl(url, headers={"x-fc-session-id": "h2-tls"}, extra=extra)
    assert r1.status == 200 and r1.write_out.splitlines()[0] == "1.1", r1
    assert r1.header("x-berth-instance") == r.header("x-berth-instance")
    # nghttp over TLS, several streams on one connection
    rc, out = run(["nghttp", "-n", "-s", "-m", "5", "-H", "x-fc-session-id: h2-tls", url])
    assert rc == 0 and out.count(" 200 ") == 5, out


def test_the_access_log_says_http2(hstack):
    s = hstack
    r = curl(s.url("/seen?acc=h2"), headers={"x-fc-session-id": "h2-acc",
                                              "x-request-id": "h2-acc-1"}, http="2")
    assert r.status == 200
    wait_until(lambda: "req=h2-acc-1" in s.gateway.log(), 5 * SLOW, "the access-log line")
    line = [ln for ln in s.gateway.log().splitlines() if "req=h2-acc-1" in ln and "sys=access" in ln]
    assert line and "proto=http/2" in line[0] and "status=200" in line[0], line


def test_many_sessions_on_one_connection_each_stick_to_their_own(hstack):
    s = hstack
    keys = ["multi-%d" % i for i in range(MAX_STREAMS // 2)]
    with H2(port(s)) as c:
        sids = {}
        for k in keys + keys:  # twice each, all in flight together
            sids.setdefault(k, []).append(c.request("/seen", [("x-fc-session-id", k)]))
        inst = {}
        for k, ids in sids.items():
            got = set()
            for sid in ids:
                st = c.wait_done(sid)
                assert st["headers"][":status"] == "200", st
                got.add(st["headers"]["x-berth-instance"])
            assert len(got) == 1, (k, got)  # both of a session's streams: one sandbox
            inst[k] = got.pop()
        assert len(set(inst.values())) == len(keys), inst  # one sandbox per session


def test_cookie_crumbs_are_joined_and_te_is_not_passed_on(hstack):
    s = hstack
    with H2(port(s)) as c:
        sid = c.request("/seen", [("x-fc-session-id", "crumbs"), ("cookie", "a=1"),
                                  ("cookie", "b=2"), ("te", "trailers"), ("x-custom", "v")])
        st = c.wait_done(sid)
        h = json.loads(st["data"])["headers"]
        assert h["cookie"] == "a=1; b=2", h
        assert "te" not in h and h["x-custom"] == "v"


def test_keyless_streams_share_their_connection_session(hstack):
    """no_key: new on HTTP/2: like an HTTP/1 connection, the connection (not each stream) gets
    one new session; another connection gets another."""
    s = hstack
    insts = []
    for _ in range(2):
        c = H2(port(s), host="keyless.test")
        try:
            a = c.wait_done(c.request("/seen"))
            b = c.wait_done(c.request("/seen"))
            assert a["headers"][":status"] == "200" and b["headers"][":status"] == "200"
            assert a["headers"]["x-berth-instance"] == b["headers"]["x-berth-instance"]
            insts.append(a["headers"]["x-berth-instance"])
        finally:
            c.close()
    assert insts[0] != insts[1]


def test_h2load_many_streams(hstack):
    s = hstack
    rc, out = run(["h2load", "-n", "2000", "-c", "4", "-m", "8", "-H", "x-fc-session-id: load",
                   s.url("/seen")], timeout=120)
    assert rc == 0, out
    assert "2000 succeeded" in out, out


def test_h2load_large_downloads_with_large_windows(hstack):
    """h2load's windows are 1 GiB: the gateway's output, not the client, is what bounds the
    frames queued at once (a stall there once left every stream waiting), over h2c and h2."""
    s = hstack
    for url in (s.url("/bytes?n=%d" % (1 << 20)),
                "https://127.0.0.1:%d/bytes?n=%d" % (s.tls_port, 1 << 20)):
        rc, out = run(["h2load", "-n", "64", "-c", "2", "-m", "4", "-H",
                       "x-fc-session-id: load-mib", url], timeout=120)
        assert rc == 0 and "64 succeeded" in out, out


# ------------------------------------------------------------------ streaming

def test_sse_streams_event_by_event(hstack):
    s = hstack
    interval = 300 * SLOW
    with H2(port(s)) as c:
        sid = c.request("/sse?n=4&interval_ms=%d" % interval, [("x-fc-session-id", "h2-sse")])
        st = c.wait_done(sid, timeout=30)
        assert st["headers"][":status"] == "200"
        assert st["headers"]["content-type"].startswith("text/event-stream")
        assert st["data"].count(b"data: ") == 4
        # the first event came well before the last: nothing buffered the stream
        assert st["t_end"] - st["t_first"] >= 2 * interval / 1000.0, st


def test_request_body_without_length_and_a_large_download(hstack):
    s = hstack
    body = bytes(range(256)) * 4096  # 1 MiB, in many DATA frames, no content-length
    with H2(port(s)) as c:
        sid = c.request("/seen?max_body=1", [("x-fc-session-id", "h2-up")], body=body)
        st = c.wait_done(sid, timeout=30)
        assert st["headers"][":status"] == "200", st
        seen = json.loads(st["data"])
        assert seen["body_bytes"] == len(body)
        assert seen["body_crc32"] == zlib.crc32(body)
        sid = c.request("/bytes?n=%d" % (3 << 20), [("x-fc-session-id", "h2-up")])
        st = c.wait_done(sid, timeout=30)
        assert st["headers"][":status"] == "200" and len(st["data"]) == 3 << 20


def test_a_body_that_ends_with_the_close_and_one_cut_by_a_reset(hstack):
    """A body delimited by the instance's close is whole when the instance closes (END_STREAM)
    and cut when it resets the connection (RST_STREAM): the client must not take a body the
    instance never finished as whole."""
    s = hstack
    with H2(port(s)) as c:
        st = c.wait_done(c.request("/misc/eofbody"))
        assert st["headers"][":status"] == "200" and st["data"] == b"the whole body", st
        assert st["ended"] and st["reset"] is None, st
        st = c.wait_done(c.request("/misc/eofrst"))
        assert st["reset"] is not None and not st["ended"], st


def test_trailers_are_passed_on(hstack):
    s = hstack
    with H2(port(s)) as c:
        st = c.wait_done(c.request("/misc/trailers"))
        assert st["headers"][":status"] == "200"
        assert st["data"] == b"hello world"
        assert st["trailers"] == {"x-checksum": "abc123"}, st


def test_websocket_over_h2_extended_connect(hstack):
    s = hstack
    with H2(port(s)) as c:
        c.wait(lambda: c.conn.remote_settings.get(
            h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL) == 1, what="SETTINGS")
        sid = c.new_stream()
        c.conn.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"),
                                  (":scheme", "http"), (":authority", "localhost"),
                                  (":path", "/misc/ws"), ("sec-websocket-version", "13")])
        c.flush()
        c.wait(lambda: c.streams[sid]["headers"] is not None, what="the CONNECT's answer")
        assert c.streams[sid]["headers"][":status"] == "200", c.streams[sid]
        for msg in (b"hello", b"x" * 100000):
            c.streams[sid]["data"] = b""
            c.send_body(sid, msg, end=False)
            c.wait(lambda: len(c.streams[sid]["data"]) >= len(msg), what="the echo")
            assert c.streams[sid]["data"] == msg
        # END_STREAM is a half-close: the instance sees its end, closes, and the stream ends
        # cleanly (no reset)
        c.conn.end_stream(sid)
        c.flush()
        st = c.wait_done(sid)
        assert st["ended"] and st["reset"] is None, st
    # a plain CONNECT (no :protocol) is not a tunnel the gateway opens
    with H2(port(s)) as c:
        c.conn.config.validate_outbound_headers = False
        sid = c.new_stream()
        c.conn.send_headers(sid, [(":method", "CONNECT"), (":authority", "example.com:443")],
                            end_stream=True)
        c.flush()
        st = c.wait_done(sid)
        assert st["headers"][":status"] == "405", st
        c.pump(0.3)
        assert st["reset"] is None, st  # the stream was closed: no RST_STREAM after it


def test_websocket_over_h2_end_reaches_an_instance_that_reads_late(hstack, misc):
    """The client's END_STREAM comes while the stream's window is shut by what waits for an
    instance that reads late and slowly: the instance gets every byte and then its end,
    answers, closes, and the stream ends cleanly, long before stream_idle_timeout. (Whether
    the gateway's own output toward the instance is still non-empty at that moment depends on
    the kernel's buffers: usually they have taken it, so this checks the half-close end to
    end, not that one moment.)"""
    s = hstack
    with H2(port(s)) as c:
        sid = c.new_stream()
        c.conn.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"),
                                  (":scheme", "http"), (":authority", "localhost"),
                                  (":path", "/misc/wslate"), ("sec-websocket-version", "13")])
        c.flush()
        c.wait(lambda: c.streams[sid]["headers"] is not None, what="the CONNECT's answer")
        assert c.streams[sid]["headers"][":status"] == "200", c.streams[sid]
        # send until what the gateway holds toward the instance shuts the stream's window
        sent = fill_until_shut(c, sid)
        c.conn.end_stream(sid)  # an empty DATA frame: no window needed
        c.flush()
        misc.wslate_go.set()
        st = c.wait_done(sid, timeout=60 * SLOW)
        assert st["ended"] and st["reset"] is None, st
        assert len(st["data"]) == sent and misc.wslate_eof == sent, (len(st["data"]), sent,
                                                                     misc.wslate_eof)


# ------------------------------------------------------------------ flow control

def test_an_instance_that_does_not_read_stalls_only_its_stream(hstack, misc):
    s = hstack
    with H2(port(s)) as c:
        stuck = c.request("/misc/noread", body=None, end=False, method="POST")
        c.send_body(stuck, b"x" * 65535, end=False)  # the whole initial window
        assert misc.noread_seen.wait(10 * SLOW)
        # what the gateway buffers toward the instance (buffer_high, and the socket's) fills,
        # then the stream's window stays shut
        fill_until_shut(c, stuck)
        # the connection's other streams go on
        for i in range(3):
            body = b"y" * (512 * 1024)
            sid = c.request("/seen", [("x-fc-session-id", "h2-flow")], body=body)
            st = c.wait_done(sid, timeout=30)
            assert json.loads(st["data"])["body_bytes"] == len(body)
        assert c.conn.local_flow_control_window(stuck) == 0
        c.conn.reset_stream(stuck)
        c.flush()


def test_a_window_held_shut_stalls_only_its_stream_then_it_is_reset(hstack):
    s = hstack
    with H2(port(s)) as c:
        held = c.request("/bytes?n=1000000", [("x-fc-session-id", "h2-held")])
        c.streams[held]["hold_window"] = True  # never acknowledged: its window stays shut
        c.wait(lambda: len(c.streams[held]["data"]) >= 65535, what="the first window")
        t0 = time.monotonic()
        for _ in range(3):
            st = c.wait_done(c.request("/seen", [("x-fc-session-id", "h2-held")]))
            assert st["headers"][":status"] == "200"
        st = c.wait_done(held, timeout=SEND_TIMEOUT * 5)
        assert st["reset"] is not None and not st["ended"], st
        assert time.monotonic() - t0 >= SEND_TIMEOUT * SLOW * 0.5
        st = c.wait_done(c.request("/seen", [("x-fc-session-id", "h2-held")]))
        assert st["headers"][":status"] == "200"  # the connection lives on


def test_an_answer_left_behind_by_its_exchange_is_reset_too(hstack):
    """A download small enough for its exchange to finish (and free the instance's
    connection) while the client holds the window shut: what is left is reset at
    send_timeout as well, never kept for as long as the client likes."""
    s = hstack
    with H2(port(s)) as c:
        held = c.request("/bytes?n=200000", [("x-fc-session-id", "h2-left")])
        c.streams[held]["hold_window"] = True
        c.wait(lambda: len(c.streams[held]["data"]) >= 65535, what="the first window")
        st = c.wait_done(held, timeout=SEND_TIMEOUT * 5)
        assert st["reset"] == 8 and not st["ended"], st  # CANCEL
        st = c.wait_done(c.request("/seen", [("x-fc-session-id", "h2-left")]))
        assert st["headers"][":status"] == "200"


def test_an_answer_before_the_request_ended_resets_the_rest_of_it(hstack):
    """The gateway answers a request it refuses at once (a bad session key) while the client
    is still to send its body: a whole answer, then RST_STREAM NO_ERROR (RFC 9113 8.1), so the
    stream does not stay open on the client's word."""
    s = hstack
    with H2(port(s)) as c:
        sid = c.request("/seen", [("x-fc-session-id", "bad key")], end=False, method="POST")
        st = c.wait_done(sid)
        c.wait(lambda: st["reset"] is not None, what="the RST_STREAM")
        assert st["headers"][":status"] == "400" and st["ended"] and st["reset"] == 0, st
        assert json.loads(st["data"])["error"]["code"] == "invalid_session_key"


def test_an_instances_http1_connection_fields_never_reach_the_client(hstack):
    """What an instance sends for its HTTP/1 connection (Connection and the fields it names,
    Keep-Alive, Proxy-Connection, Upgrade, TE, Transfer-Encoding) is not HTTP/2's to carry
    (RFC 9113 8.2.2: a client treats it as malformed): the client gets the rest, names in
    lower case. python-h2 validates what it receives."""
    s = hstack
    with H2(port(s)) as c:
        st = c.wait_done(c.request("/misc/hop"))
        assert st["headers"][":status"] == "200" and st["data"] == b"hop", st
        h = st["headers"]
        assert h["x-mixed-case"] == "yes"
        assert not {"connection", "x-internal", "keep-alive", "proxy-connection", "upgrade",
                    "te", "transfer-encoding"} & set(h), h


def test_a_hostile_instance_cannot_grow_trailers_or_interim_heads(hstack):
    """An instance that sends a trailer section without end, or 1xx heads without end: its
    stream is cut (RST_STREAM) before the gateway holds more than max_header_bytes of
    trailers or 16 interim heads; the connection's other streams are served."""
    s = hstack
    with H2(port(s)) as c:
        for what in ("bigtrailer", "interims"):
            sid = c.request("/misc/" + what)
            st = c.wait_done(sid, timeout=20)
            assert st["reset"] == 2 and not st["ended"], (what, st)  # INTERNAL_ERROR
            assert len(st["informational"]) <= 16, len(st["informational"])
            ok = c.wait_done(c.request("/seen", [("x-fc-session-id", "h2-hostile")]))
            assert ok["headers"][":status"] == "200"


def test_a_client_that_stops_reading_is_closed_at_send_timeout(hstack):
    s = hstack
    with H2(port(s), rcvbuf=4096,
            settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: (1 << 31) - 1}) as c:
        c.conn.increment_flow_control_window((1 << 31) - 1 - 65535)
        c.flush()
        c.request("/bytes?n=%d" % (8 << 20), [("x-fc-session-id", "h2-noread")])
        time.sleep(SEND_TIMEOUT * SLOW * 2)  # never reading meanwhile
        c.sock.settimeout(10 * SLOW)
        deadline = time.monotonic() + 20 * SLOW
        closed = False
        while time.monotonic() < deadline:
            try:
                if not c.sock.recv(1 << 20):
                    closed = True
                    break
            except (ConnectionResetError, OSError):
                closed = True
                break
        assert closed, "the gateway kept a connection whose client took nothing"
    served(s)


def test_a_header_block_that_never_ends_is_closed_at_header_timeout(hstack):
    s = hstack
    for tail in (frame(1, 0x4, 1, b"")[:9].replace(b"\x00\x00\x00", b"\x00\x00\x10", 1),
                 frame(1, 0x1, 1, request_block("/seen"))):  # no END_HEADERS, no CONTINUATION
        sock = raw_conn(s)
        try:
            t0 = time.monotonic()
            sock.sendall(tail)
            codes = read_until_closed(sock, timeout=HEADER_TIMEOUT * 4)
            assert time.monotonic() - t0 >= HEADER_TIMEOUT * SLOW * 0.5
            assert codes == [0], codes  # GOAWAY NO_ERROR, then the close
        finally:
            sock.close()
    served(s)


def test_resets_the_client_provokes_count_as_its_own(hstack):
    """MadeYouReset (CVE-2025-8671): streams the client makes nghttp2 reset (a DATA frame
    beyond its content-length: PROTOCOL_ERROR) count as resets: GOAWAY ENHANCE_YOUR_CALM."""
    s = hstack
    enc = hpack.Encoder()
    out = b""
    for i in range(RESET_BURST * 4):
        sid = 1 + 2 * i
        out += frame(1, 0x4, sid, enc.encode([
            (":method", "POST"), (":scheme", "http"), (":authority", "localhost"),
            (":path", "/seen"), ("x-fc-session-id", "myr"), ("content-length", "0")]))
        out += frame(0, 0x1, sid, b"x")  # more than its content-length
    codes = flood_codes(s, out)
    assert codes == [11], codes
    served(s)


# ------------------------------------------------------------------ limits and attacks

def frame(ftype, flags, sid, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", sid) + payload


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def raw_conn(s):
    sock = socket.create_connection(("127.0.0.1", port(s)), timeout=10 * SLOW)
    sock.sendall(PREFACE + frame(4, 0, 0, b""))
    return sock


def read_until_closed(sock, timeout=10):
    """Everything the gateway sends until it closes; the GOAWAY error codes found in it."""
    sock.settimeout(timeout * SLOW)
    data = b""
    deadline = time.monotonic() + timeout * SLOW
    while time.monotonic() < deadline:
        try:
            d = sock.recv(1 << 20)
        except (socket.timeout, TimeoutError):
            raise AssertionError("the gateway did not close the connection")
        except OSError:
            break
        if not d:
            break
        data += d
    codes, i = [], 0
    while i + 9 <= len(data):
        n = int.from_bytes(data[i:i + 3], "big")
        if data[i + 3] == 7 and i + 9 + 8 <= len(data):
            codes.append(int.from_bytes(data[i + 13:i + 17], "big"))
        i += 9 + n
    return codes


def flood_codes(s, data):
    """Sends <data> after the preface on a raw connection; the GOAWAY codes the gateway sent
    before closing it (the gateway may close before taking all of <data>)."""
    sock = raw_conn(s)
    try:
        try:
            sock.sendall(data)
        except OSError:
            pass
        return read_until_closed(sock)
    finally:
        sock.close()


def request_block(path, extra=()):
    e = hpack.Encoder()
    return e.encode([(":method", "GET"), (":scheme", "http"), (":authority", "localhost"),
                     (":path", path), ("x-fc-session-id", "attack")] + list(extra))


def test_rapid_reset_gets_goaway(hstack):
    s = hstack
    before = metric(s, "berth_gateway_h2_goaways_total")
    out = b""
    for i in range(RESET_BURST * 4):
        sid = 1 + 2 * i
        out += frame(1, 0x4 | 0x1, sid, request_block("/seen"))  # HEADERS, END_HEADERS
        out += frame(3, 0, sid, struct.pack(">I", 8))            # RST_STREAM CANCEL
    codes = flood_codes(s, out)
    assert codes == [11], codes  # GOAWAY ENHANCE_YOUR_CALM
    served(s)
    wait_until(lambda: metric(s, "berth_gateway_streams_active") == 0, 10 * SLOW,
               "the reset streams' exchanges to end")
    assert metric(s, "berth_gateway_h2_goaways_total") == before + 1


def test_continuation_flood_gets_goaway(hstack):
    s = hstack
    out = frame(1, 0x1, 1, request_block("/seen"))  # HEADERS without END_HEADERS
    filler = hpack.Encoder().encode([("x-filler", "a" * 100)])
    for _ in range(500):
        out += frame(9, 0, 1, filler)  # CONTINUATION, never the last
    codes = flood_codes(s, out)
    assert codes == [11], codes  # GOAWAY ENHANCE_YOUR_CALM
    served(s)


@pytest.mark.parametrize("kind", ["ping", "settings"])
def test_control_frame_floods_get_goaway(hstack, kind):
    """A client that floods PINGs or SETTINGS and never reads their acks: the acks queue up to
    gateway.h2.max_outbound_ack, then GOAWAY ENHANCE_YOUR_CALM and the close (counted in
    h2_goaways: not a gateway that merely stopped reading, nor the send timeout)."""
    s = hstack
    before = metric(s, "berth_gateway_h2_goaways_total")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10 * SLOW)
    sock.connect(("127.0.0.1", port(s)))
    try:
        one = frame(6, 0, 0, b"12345678") if kind == "ping" else frame(4, 0, 0, b"")
        chunk = one * 4096
        sock.sendall(PREFACE + frame(4, 0, 0, b""))
        deadline = time.monotonic() + 20 * SLOW
        while time.monotonic() < deadline:
            try:
                sock.sendall(chunk)
            except OSError:  # the gateway closed (reset), or stopped reading (a timeout)
                break
        read_until_closed(sock)  # raises unless the gateway really closed the connection
    finally:
        sock.close()
    assert metric(s, "berth_gateway_h2_goaways_total") == before + 1
    served(s)


def test_hpack_bomb_is_refused(hstack):
    """One 4 KB header put in the HPACK table, then referenced 4,000 times in one block
    (16 MB decoded from a few KB): the stream is answered 431, the connection goes on."""
    s = hstack
    enc = hpack.Encoder()
    first = enc.encode([(":method", "GET"), (":scheme", "http"), (":authority", "localhost"),
                        (":path", "/seen"), ("x-fc-session-id", "bomb"), ("x-bomb", "b" * 4000)])
    idx = bytes([0x80 | 62])  # the newest dynamic-table entry: x-bomb
    bomb = first + idx * 4000
    with H2(port(s)) as c:
        sid = c.new_stream()
        c.send_raw(frame(1, 0x5, sid, bomb))
        # python-h2 keeps its own HPACK state: the raw block went past it, so read by hand
        sock = c.sock
        sock.settimeout(10 * SLOW)
        data = b""
        deadline = time.monotonic() + 10 * SLOW
        status = None
        while status is None and time.monotonic() < deadline:
            d = sock.recv(65536)
            assert d, "closed"
            data += d
            i = 0
            dec = hpack.Decoder()
            while i + 9 <= len(data):
                n = int.from_bytes(data[i:i + 3], "big")
                if i + 9 + n > len(data):
                    break
                t, sidr = data[i + 3], int.from_bytes(data[i + 5:i + 9], "big") & 0x7fffffff
                if t == 1 and sidr == sid:
                    status = dict(dec.decode(data[i + 9:i + 9 + n])).get(":status")
                elif t == 3 and sidr == sid:
                    status = "reset"
                i += 9 + n
        assert status in ("431", "reset"), (status, data[:200])
    served(s)


def test_header_list_over_the_limit_gets_431(hstack):
    s = hstack
    with H2(port(s)) as c:
        big = [("x-big-%d" % i, "v" * 1000) for i in range(HEADER_LIST // 1000 + 2)]
        st = c.wait_done(c.request("/seen", [("x-fc-session-id", "big")] + big))
        assert st["headers"][":status"] == "431", st
        st = c.wait_done(c.request("/seen", [("x-fc-session-id", "big")]))
        assert st["headers"][":status"] == "200"


def frames(data):
    """(type, flags, stream, payload) of each whole frame in <data>."""
    out, i = [], 0
    while i + 9 <= len(data):
        n = int.from_bytes(data[i:i + 3], "big")
        if i + 9 + n > len(data):
            break
        out.append((data[i + 3], data[i + 4],
                    int.from_bytes(data[i + 5:i + 9], "big") & 0x7fffffff,
                    data[i + 9:i + 9 + n]))
        i += 9 + n
    return out


def test_streams_over_the_limit_end_the_connection(hstack):
    """A client that opens more streams than the SETTINGS it acknowledged allow breaks the
    protocol: GOAWAY PROTOCOL_ERROR (nghttp2's choice among those RFC 9113 5.1.2 allows). A
    client keeping to the limit (python-h2 refuses to go over it) is served."""
    s = hstack
    sock = raw_conn(s)
    try:
        sock.settimeout(10 * SLOW)
        data = b""
        while not any(t == 4 and f & 1 for t, f, _, _ in frames(data)):  # our SETTINGS' ack
            d = sock.recv(65536)
            assert d, "closed"
            data += d
        sock.sendall(frame(4, 1, 0, b""))  # and theirs
        enc = hpack.Encoder()
        out = b""
        for i in range(MAX_STREAMS + 1):
            out += frame(1, 0x5, 1 + 2 * i, enc.encode([
                (":method", "GET"), (":scheme", "http"), (":authority", "localhost"),
                (":path", "/misc/slow")]))
        sock.sendall(out)
        codes = read_until_closed(sock)
        assert codes == [1], codes
    finally:
        sock.close()
    with H2(port(s)) as c:
        c.wait(lambda: c.got_settings, what="the gateway's SETTINGS")
        assert c.conn.remote_settings.max_concurrent_streams == MAX_STREAMS
        sids = [c.request("/misc/slow") for _ in range(MAX_STREAMS)]
        for sid in sids:
            assert c.wait_done(sid, timeout=20)["headers"][":status"] == "200"


def test_garbage_after_the_preface_gets_goaway(hstack):
    s = hstack
    codes = flood_codes(s, b"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + b"\xff" * 64)  # nonsense
    assert codes and codes[-1] != 0, codes
    served(s)


def test_client_reset_ends_the_exchange(hstack):
    s = hstack
    with H2(port(s)) as c:
        sid = c.request("/sse?n=100&interval_ms=200", [("x-fc-session-id", "h2-rst")])
        c.wait(lambda: c.streams[sid]["data"], what="the first event")
        assert metric(s, "berth_gateway_streams_active") >= 1
        c.conn.reset_stream(sid)
        c.flush()
        wait_until(lambda: metric(s, "berth_gateway_streams_active") == 0, 10 * SLOW,
                   "the reset stream's exchange to end")
        st = c.wait_done(c.request("/seen", [("x-fc-session-id", "h2-rst")]))
        assert st["headers"][":status"] == "200"

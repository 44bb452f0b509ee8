"""What a client sees of the gateway as an HTTP/1.1 proxy: hop-by-hop headers removed in both
directions, X-Forwarded-For / X-Forwarded-Proto / x-request-id, the x-berth-* response headers,
keep-alive reuse, pipelining, HEAD, 204/304, HTTP/1.0 clients. Upstreams are berth-echo in the
process sandbox and, for the statuses berth-echo never sends, a small Python HTTP server
registered as a "static" template."""

import http.server
import json
import re
import socket
import subprocess
import threading
import time
import zlib

import pytest

from conftest import (SLOW, Stack, _remove_tree, _short_tmp, _skip_unless_root, curl,
                      deep_merge, echo_template, free_port, prom_metrics, write_config)


RESPONSE_TIMEOUT = 1.0  # gateway.limits.response_timeout of this module's gateway
STREAM_IDLE = 4.0       # gateway.limits.stream_idle_timeout (both scaled by SLOW)
ECHO_AUTHORITY = "127.0.0.1:8000"  # the Host an echo instance gets (upstream_host: instance)
CLIENT_HOST = "client-host.test"   # the route with upstream_host: client

# ------------------------------------------------------------------ a static upstream

def _read_body(handler):
    """The request body of <handler> (Content-Length or chunked), read as it arrives."""
    n = 0
    if (handler.headers.get("Transfer-Encoding") or "").lower() == "chunked":
        while True:
            size = int(handler.rfile.readline().split(b";")[0], 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return n
            n += len(handler.rfile.read(size))
            handler.rfile.readline()
    left = int(handler.headers.get("Content-Length") or 0)
    while left:
        got = handler.rfile.read1(min(left, 65536))
        if not got:
            break
        n += len(got)
        left -= len(got)
    return n


class MiscHandler(http.server.BaseHTTPRequestHandler):
    """Answers /misc/<what>: statuses and header shapes berth-echo does not produce."""
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def _send(self, status, headers, body=b""):
        self.send_response_only(status)
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET()

    def do_POST(self):
        what = self.path.split("?")[0].rsplit("/", 1)[-1]
        n = _read_body(self)
        if what == "upload-stall":
            time.sleep(RESPONSE_TIMEOUT * SLOW * 3)  # past the gateway's response_timeout
        body = json.dumps({"bytes": n}).encode()
        try:
            self._send(200, [("Content-Type", "application/json"),
                             ("Content-Length", str(len(body)))], body)
        except OSError:
            self.close_connection = True  # the gateway gave up on us (the timeout tests)

    def do_GET(self):
        what = self.path.split("?")[0].rsplit("/", 1)[-1]
        if what == "204":
            self._send(204, [("X-Misc", "204")])
        elif what == "304":
            # Content-Length of a 304 describes the representation; no body follows
            self._send(304, [("ETag", '"v1"'), ("Content-Length", "1000")])
        elif what == "hop":
            body = b"hop\n"
            self._send(200, [("Connection", "keep-alive, X-Internal"), ("X-Internal", "secret"),
                             ("Keep-Alive", "timeout=5"), ("Proxy-Authenticate", "Basic"),
                             ("Trailer", "X-T"), ("Upgrade", "h2c"), ("X-Public", "yes"),
                             ("X-Berth-Instance", "forged"), ("x-berth-session", "forged"),
                             ("Content-Length", str(len(body)))], body)
        elif what == "chunked":
            self._send(200, [("Transfer-Encoding", "chunked"), ("Content-Type", "text/plain")])
            if self.command != "HEAD":
                for part in (b"first;", b"second;", b"third"):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.write(b"0\r\n\r\n")
        elif what == "trailer-cut":
            # a chunked body whose trailer section (holding a Transfer-Encoding, which flips
            # llhttp's framing flags) is cut by the close: a truncation, not an end
            self._send(200, [("Transfer-Encoding", "chunked")])
            self.wfile.write(b"5\r\nhello\r\n0\r\nTransfer-Encoding: gzip\r\n")
            self.wfile.flush()
            self.close_connection = True
        elif what == "garbage":
            self.wfile.write(b"HTTP/1.1 2000 Nonsense\r\nContent-Length: 0\r\n\r\n")
            self.close_connection = True
        elif what == "drop":
            self.close_connection = True  # closes without a byte
        elif what == "stall":
            time.sleep(RESPONSE_TIMEOUT * SLOW * 3)  # well past the gateway's timeout in every build
            self._send(200, [("Content-Length", "0")])
        elif what == "host":
            body = json.dumps({"host": self.headers.get_all("Host"),
                               "xfh": self.headers.get_all("X-Forwarded-Host"),
                               "target": self.path}).encode()
            self._send(200, [("Content-Type", "application/json"),
                             ("Content-Length", str(len(body)))], body)
        elif what == "close":
            self._send(200, [("Connection", "close"), ("Content-Type", "text/plain")])
            if self.command != "HEAD":
                self.wfile.write(b"until the connection closes")
            self.close_connection = True
        else:
            self._send(404, [("Content-Length", "0")])


@pytest.fixture(scope="module")
def misc_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), MiscHandler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def pstack(misc_server):
    _skip_unless_root()
    d = _short_tmp()
    s = Stack(d, {"templates": [echo_template(pool={"min": 4, "max": 40})],
                  "scheduler": {"capacity": 48}}, start_gateway=False)
    try:
        # The gateway's config adds a "static" template (the Python server above) on /misc/.
        # berth-scheduler refuses to start with a static template in its config ("driver
        # static is not available on this host"), so it keeps the file without it.
        cfg = deep_merge(s.cfg, {"gateway": {
            "limits": {"response_timeout": "%dms" % (RESPONSE_TIMEOUT * 1000 * SLOW),
                       "stream_idle_timeout": "%dms" % (STREAM_IDLE * 1000 * SLOW)},
            "routes": [
            {"name": "client-host", "host": CLIENT_HOST, "template": "echo",
             "upstream_host": "client"},
            {"name": "misc", "path_prefix": "/misc/", "template": "misc"},
            {"name": "echo", "path_prefix": "/", "template": "echo"}]}})
        cfg["templates"] = cfg["templates"] + [
            {"name": "misc", "driver": "static", "sessions_per_instance": 0,
             "upstreams": ["127.0.0.1:%d" % misc_server]}]
        s.config_path = write_config(d / "berth-gateway.yaml", cfg)
        s.start_gateway()
    except BaseException:
        s.stop(check=False)
        _remove_tree(d)
        raise
    yield s
    try:
        s.stop()
    finally:
        _remove_tree(d)


# ------------------------------------------------------------------ raw HTTP

class Conn:
    """One raw TCP connection to the gateway with a response reader that follows the
    message framing rules (so pipelining and HEAD can be checked byte for byte)."""

    def __init__(self, port, timeout=10):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout * SLOW)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data.encode() if isinstance(data, str) else data)

    def _fill(self):
        d = self.s.recv(65536)
        if not d:
            raise EOFError("connection closed")
        self.buf += d

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def response(self, head_request=False):
        """(status, version, headers as a list of (lower name, value), body)."""
        while True:
            line = self._line().decode("latin-1")
            m = re.match(r"HTTP/(\d\.\d) (\d{3})(?: (.*))?$", line)
            assert m, "bad status line %r" % line
            headers = []
            while True:
                h = self._line().decode("latin-1")
                if not h:
                    break
                k, _, v = h.partition(":")
                headers.append((k.strip().lower(), v.strip()))
            status = int(m.group(2))
            if 100 <= status < 200 and status != 101:
                continue  # interim
            break
        hd = dict(headers)
        if head_request or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "chunked" in hd.get("transfer-encoding", "").lower():
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                body += self._take(size)
                assert self._take(2) == b"\r\n"
        elif "content-length" in hd:
            body = self._take(int(hd["content-length"]))
        else:
            body = self.read_to_close()
        return status, m.group(1), headers, body

    def read_to_close(self):
        out = self.buf
        self.buf = b""
        while True:
            d = self.s.recv(65536)
            if not d:
                return out
            out += d

    def closed(self, wait=2):
        """True if the peer closes within <wait> seconds without sending anything more."""
        self.s.settimeout(wait * SLOW)
        try:
            return self.buf == b"" and self.s.recv(1) == b""
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def close(self):
        self.s.close()


def hget(headers, name):
    vals = [v for k, v in headers if k == name]
    return vals[-1] if vals else None


def req(method, path, session=None, headers=(), body=None, version="1.1", host=True):
    lines = ["%s %s HTTP/%s" % (method, path, version)]
    if host:
        lines.append("Host: gw.test")
    if session:
        lines.append("x-fc-session-id: %s" % session)
    lines += ["%s: %s" % kv for kv in headers]
    if body is not None:
        lines.append("Content-Length: %d" % len(body))
    out = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return out + (body.encode() if isinstance(body, str) else (body or b""))


def echo_seen(pstack, session, headers, path="/seen"):
    """The headers berth-echo received for a GET through the gateway."""
    r = curl(pstack.url(path), headers=[("x-fc-session-id", session)] + list(headers))
    assert r.status == 200, r
    return r, r.json()["headers"]


def metrics(pstack):
    return prom_metrics(pstack.admin_url("/metrics"))


# ------------------------------------------------------------------ request direction

def test_connection_listed_and_hop_by_hop_request_headers_are_removed(pstack):
    _, seen = echo_seen(pstack, "hop-req", [
        ("Connection", "keep-alive, X-Drop-Me , x-drop-too"), ("X-Drop-Me", "1"),
        ("X-Drop-Too", "2"), ("Keep-Alive", "timeout=5"), ("TE", "trailers"),
        ("Proxy-Authorization", "Basic eDp5"), ("Proxy-Connection", "keep-alive"),
        ("Trailer", "X-T"), ("Upgrade", "h2c"), ("X-Keep-Me", "3"),
        ("Authorization", "Bearer for-the-app")])
    for gone in ("x-drop-me", "x-drop-too", "keep-alive", "te", "proxy-authorization",
                 "proxy-connection", "trailer", "upgrade"):
        assert gone not in seen, (gone, seen)
    assert seen["x-keep-me"] == "3"
    assert seen["authorization"] == "Bearer for-the-app"  # end-to-end: the app's business
    assert seen["host"] == ECHO_AUTHORITY
    assert seen["x-forwarded-host"] == "127.0.0.1:%d" % pstack.ports["gateway"]


def test_connection_cannot_strip_framing_or_host(pstack):
    c = Conn(pstack.ports["gateway"])
    c.send(req("POST", "/framing", "hop-frame",
               [("Connection", "Content-Length, Host, Transfer-Encoding")], body="12345"))
    st, _, _, body = c.response()
    c.close()
    assert st == 200
    j = json.loads(body)
    assert j["body"] == "12345" and j["body_bytes"] == 5
    assert j["headers"]["host"] == ECHO_AUTHORITY
    assert j["headers"]["x-forwarded-host"] == "gw.test"


def test_x_forwarded_for_is_appended(pstack):
    _, seen = echo_seen(pstack, "xff", [])
    assert seen["x-forwarded-for"] == "127.0.0.1"
    _, seen = echo_seen(pstack, "xff", [("X-Forwarded-For", "203.0.113.7")])
    assert seen["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    _, seen = echo_seen(pstack, "xff", [("X-Forwarded-For", "203.0.113.7, 10.1.2.3")])
    assert seen["x-forwarded-for"] == "203.0.113.7, 10.1.2.3, 127.0.0.1"
    # two headers: the list they make, then the client
    _, seen = echo_seen(pstack, "xff", [("X-Forwarded-For", "198.51.100.1"),
                                        ("X-Forwarded-For", "198.51.100.2")])
    assert [a.strip() for a in seen["x-forwarded-for"].split(",")] == \
        ["198.51.100.1", "198.51.100.2", "127.0.0.1"]


def test_x_forwarded_proto_is_set_by_the_gateway(pstack):
    _, seen = echo_seen(pstack, "xfp", [])
    assert seen["x-forwarded-proto"] == "http"
    _, seen = echo_seen(pstack, "xfp", [("X-Forwarded-Proto", "https")])
    assert seen["x-forwarded-proto"] == "http"  # a client cannot claim TLS


def test_x_request_id_is_added_or_kept(pstack):
    ids = set()
    for _ in range(5):
        _, seen = echo_seen(pstack, "rid", [])
        rid = seen["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{16}", rid), rid
        ids.add(rid)
    assert len(ids) == 5
    _, seen = echo_seen(pstack, "rid", [("X-Request-Id", "client-chosen-42")])
    assert seen["x-request-id"] == "client-chosen-42"
    _, seen = echo_seen(pstack, "rid", [("X-Request-Id", "r" * 129)])  # too long: replaced
    assert re.fullmatch(r"[0-9a-f]{16}", seen["x-request-id"]), seen["x-request-id"]


# ------------------------------------------------------------------ Host upstream

def test_instance_gets_its_own_host_and_the_client_host_in_x_forwarded_host(pstack,
                                                                            misc_server):
    # upstream_host: instance (default): apps that check Host (DNS-rebinding guards, Chromium's
    # DevTools) see the address they listen on; a client's X-Forwarded-Host is replaced
    _, seen = echo_seen(pstack, "host-1", [("Host", "agents.example.com:8443"),
                                           ("X-Forwarded-Host", "forged.example")])
    assert seen["host"] == ECHO_AUTHORITY, seen
    assert seen["x-forwarded-host"] == "agents.example.com:8443", seen
    # a static upstream gets its configured address
    r = curl(pstack.url("/misc/host"), headers=[("x-fc-session-id", "host-misc"),
                                                ("Host", "agents.example.com")])
    assert r.status == 200, r
    j = r.json()
    assert j["host"] == ["127.0.0.1:%d" % misc_server], j
    assert j["xfh"] == ["agents.example.com"], j
    # absolute-form: the instance gets origin-form (its Host is its own now)
    c = Conn(pstack.ports["gateway"])
    c.send(req("GET", "http://agents.example.com/misc/host?q=1", "host-misc"))
    st, _, _, body = c.response()
    c.close()
    j = json.loads(body)
    assert st == 200 and j["target"] == "/misc/host?q=1" and j["xfh"] == ["gw.test"], j


def test_upstream_host_client_passes_the_clients_host(pstack):
    _, seen = echo_seen(pstack, "host-2", [("Host", CLIENT_HOST + ":81"),
                                           ("X-Forwarded-Host", "forged.example")])
    assert seen["host"] == CLIENT_HOST + ":81", seen
    assert seen["x-forwarded-host"] == CLIENT_HOST + ":81", seen


def test_overlong_host_is_refused(pstack):
    c = Conn(pstack.ports["gateway"])
    c.send("GET / HTTP/1.1\r\nHost: %s\r\nx-fc-session-id: long-host\r\n\r\n" % ("h" * 262))
    st, _, _, body = c.response()
    c.close()
    assert st == 400 and json.loads(body)["error"]["code"] == "bad_request"
    # 261 bytes, the limit, is fine
    name = ".".join(["a" * 63] * 3 + ["b" * 63]) + ":65535"
    assert len(name) == 261
    _, seen = echo_seen(pstack, "long-host", [("Host", name)])
    assert seen["x-forwarded-host"] == name


# ------------------------------------------------------------------ request body timing

def _slow_upload(port, path, session, total, pieces, pause, chunked=False):
    """Sends a POST whose body arrives in <pieces> equal parts <pause> s apart; returns the
    connection and the monotonic time the last byte was sent."""
    c = Conn(port, timeout=30)
    part = b"x" * (total // pieces)
    assert len(part) * pieces == total
    framing = [("Transfer-Encoding", "chunked")] if chunked else \
        [("Content-Length", str(total))]
    c.send(req("POST", path, session, framing))
    for i in range(pieces):
        time.sleep(pause)
        c.send(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
    if chunked:
        c.send(b"0\r\n\r\n")
    return c, time.monotonic()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_slow_steady_upload_outlives_response_timeout(pstack, chunked):
    # response_timeout runs from the end of the request: an upload taking three times as long
    # at a steady rate succeeds (each pause is well inside stream_idle_timeout)
    pieces = 12
    pause = RESPONSE_TIMEOUT * SLOW * 3 / pieces
    c, _ = _slow_upload(pstack.ports["gateway"], "/misc/upload", "upload-1", 12 * 1000, pieces,
                        pause, chunked)
    st, _, _, body = c.response()
    c.close()
    assert st == 200 and json.loads(body) == {"bytes": 12000}, (st, body)


def test_response_timeout_counts_from_the_last_body_byte(pstack):
    c, t_end = _slow_upload(pstack.ports["gateway"], "/misc/upload-stall", "upload-2", 6000, 6,
                            RESPONSE_TIMEOUT * SLOW * 2 / 6)
    st, _, _, body = c.response()
    took = time.monotonic() - t_end
    c.close()
    assert st == 504 and json.loads(body)["error"]["code"] == "upstream_timeout", body
    assert took >= RESPONSE_TIMEOUT * SLOW - 0.1, took  # not from the head


def test_stalled_upload_gets_408_after_stream_idle_timeout(pstack):
    c = Conn(pstack.ports["gateway"], timeout=STREAM_IDLE * 3 + 10)
    c.send(req("POST", "/misc/upload", "upload-3", [("Content-Length", "1000")]))
    c.send(b"y" * 400)
    t0 = time.monotonic()
    st, _, hdrs, body = c.response()
    took = time.monotonic() - t0
    assert st == 408 and json.loads(body)["error"]["code"] == "request_timeout", body
    assert took >= STREAM_IDLE * SLOW - 0.1, took
    assert hget(hdrs, "connection") == "close" and c.closed()
    c.close()


def test_large_header_values_pass_through(pstack):
    big = "v" * 8000
    _, seen = echo_seen(pstack, "bighdr", [("X-Big", big)])
    assert seen["x-big"] == big


# ------------------------------------------------------------------ response direction

def test_berth_headers_on_every_proxied_response(pstack):
    r = pstack.get("/any", session="berth-hdrs")
    assert r.status == 200
    assert r.header("x-berth-session") == "berth-hdrs"
    assert r.header("x-berth-instance") == r.json()["instance"]
    r404 = pstack.get("/files/does-not-exist", session="berth-hdrs")
    assert r404.status == 404 and r404.header("x-berth-instance") == r.header("x-berth-instance")


def test_hop_by_hop_response_headers_are_removed(pstack):
    r = curl(pstack.url("/misc/hop"), headers={"x-fc-session-id": "hop-resp"})
    assert r.status == 200 and r.body == b"hop\n"
    for gone in ("x-internal", "keep-alive", "proxy-authenticate", "trailer", "upgrade"):
        assert gone not in r.headers, (gone, r.raw_headers)
    assert r.header("x-public") == "yes"
    conn = [v.lower() for v in r.headers.get("connection", [])]
    assert all("x-internal" not in v for v in conn), conn
    # the instance cannot forge the gateway's own headers
    assert r.headers.get("x-berth-instance") and r.headers["x-berth-instance"] != ["forged"]
    assert len(r.headers["x-berth-instance"]) == 1
    assert r.headers.get("x-berth-session") == ["hop-resp"]


# ------------------------------------------------------------------ connections

def test_keep_alive_one_connection_for_two_urls(pstack):
    before = metrics(pstack)
    p = subprocess.run(["curl", "-sS", "--http1.1", "-H", "x-fc-session-id: keepalive",
                        "-o", "/dev/null", "-o", "/dev/null", "-w", "%{http_code} %{num_connects}\n",
                        pstack.url("/ka/1"), pstack.url("/ka/2")],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30 * SLOW)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().split("\n")[:2] == ["200 1", "200 0"], p.stdout
    after = metrics(pstack)
    assert after["berth_gateway_connections_total"] - before["berth_gateway_connections_total"] == 1
    # the second request went over a kept-alive upstream connection too
    assert after["berth_gateway_upstream_reuses_total"] > before["berth_gateway_upstream_reuses_total"]


def test_pipelined_requests_are_answered_in_order(pstack):
    c = Conn(pstack.ports["gateway"])
    c.send(req("GET", "/p/1", "pipe-a") + req("POST", "/p/2", "pipe-a", body="body-two") +
           req("GET", "/p/3", "pipe-b") + req("HEAD", "/p/4", "pipe-a") +
           req("GET", "/bytes?n=300000", "pipe-b") + req("GET", "/p/6", "pipe-a"))
    order = []
    for i, head in enumerate([False, False, False, True, False, False]):
        st, _, hdrs, body = c.response(head_request=head)
        assert st == 200, (i, st, body[:200])
        order.append((hget(hdrs, "x-berth-session"), body))
    c.close()
    assert json.loads(order[0][1])["path"] == "/p/1"
    j2 = json.loads(order[1][1])
    assert j2["path"] == "/p/2" and j2["body"] == "body-two" and j2["method"] == "POST"
    assert json.loads(order[2][1])["path"] == "/p/3"
    assert order[3][1] == b""
    assert len(order[4][1]) == 300000
    assert json.loads(order[5][1])["path"] == "/p/6"
    assert [s for s, _ in order] == ["pipe-a", "pipe-a", "pipe-b", "pipe-a", "pipe-b", "pipe-a"]


def test_head_responses_have_no_body(pstack):
    c = Conn(pstack.ports["gateway"])
    for path in ("/head", "/bytes?n=5000", "/sse?n=3&interval_ms=1"):
        c.send(req("HEAD", path, "head-sess") + req("GET", "/after-head", "head-sess"))
        st, _, hdrs, body = c.response(head_request=True)
        assert st == 200 and body == b"", (path, body[:100])
        if path.startswith("/bytes"):
            assert hget(hdrs, "content-length") == "5000"
        # the next response starts right where the HEAD response ended
        st, _, _, body = c.response()
        assert st == 200 and json.loads(body)["path"] == "/after-head", path
    c.close()
    # curl -I: a HEAD that returns at once (a body expected after it would hang curl)
    r = curl(pstack.url("/bytes?n=777"), headers={"x-fc-session-id": "head-sess"}, extra=["-I"],
             timeout=5)
    assert r.status == 200 and r.header("content-length") == "777", r.error


def test_204_and_304_have_no_body(pstack):
    c = Conn(pstack.ports["gateway"])
    c.send(req("GET", "/misc/204", "misc-s") + req("GET", "/misc/304", "misc-s") +
           req("GET", "/misc/hop", "misc-s"))
    st, _, hdrs, body = c.response()
    assert st == 204 and body == b"" and hget(hdrs, "x-misc") == "204"
    st, _, hdrs, body = c.response()
    assert st == 304 and body == b"" and hget(hdrs, "etag") == '"v1"'
    st, _, _, body = c.response()
    assert st == 200 and body == b"hop\n"
    c.close()
    r = curl(pstack.url("/misc/304"), headers={"x-fc-session-id": "misc-s"})
    assert r.status == 304 and r.body == b""


def test_close_delimited_upstream_body(pstack):
    c = Conn(pstack.ports["gateway"])
    c.send(req("GET", "/misc/close", "misc-close"))
    st, _, hdrs, body = c.response()
    assert st == 200 and body == b"until the connection closes"
    assert (hget(hdrs, "connection") or "").lower() == "close"
    c.close()


def test_http10_clients(pstack):
    # no Host, no keep-alive: the gateway answers and closes
    c = Conn(pstack.ports["gateway"])
    c.send(req("GET", "/old", "http10", version="1.0", host=False))
    st, _, hdrs, body = c.response()
    assert st == 200
    j = json.loads(body)
    assert j["path"] == "/old" and j["headers"]["x-fc-session-id"] == "http10"
    assert c.closed()
    c.close()
    # Connection: keep-alive is honoured for 1.0 clients and said back
    c = Conn(pstack.ports["gateway"])
    c.send(req("GET", "/old/1", "http10", [("Connection", "keep-alive")], version="1.0"))
    st, _, hdrs, body = c.response()
    assert st == 200 and (hget(hdrs, "connection") or "").lower() == "keep-alive"
    c.send(req("GET", "/old/2", "http10", [("Connection", "keep-alive")], version="1.0"))
    st, _, _, body = c.response()
    assert st == 200 and json.loads(body)["path"] == "/old/2"
    c.close()
    # a chunked upstream body reaches a 1.0 client de-chunked and close-delimited
    c = Conn(pstack.ports["gateway"])
    c.send(req("GET", "/misc/chunked", "http10-misc", version="1.0"))
    st, _, hdrs, body = c.response()
    assert st == 200 and body == b"first;second;third", body
    assert "transfer-encoding" not in dict(hdrs)
    c.close()
    # real curl in 1.0 mode, with a body
    r = curl(pstack.url("/curl10"), http="1.0", headers={"x-fc-session-id": "http10"},
             data="ten-bytes!")
    assert r.status == 200 and r.json()["body"] == "ten-bytes!"


def test_expect_100_continue(pstack):
    data = bytes(range(256)) * 4096  # 1 MiB: curl sends Expect: 100-continue
    r = curl(pstack.url("/expect"), headers={"x-fc-session-id": "expect"}, data=data,
             extra=["-H", "Expect: 100-continue"])
    assert r.status == 200
    j = r.json()
    assert j["body_bytes"] == len(data) and j["body_crc32"] == zlib.crc32(data)


def test_client_connection_close_is_honoured(pstack):
    c = Conn(pstack.ports["gateway"])
    c.send(req("GET", "/bye", "conn-close", [("Connection", "close")]))
    st, _, hdrs, body = c.response()
    assert st == 200 and json.loads(body)["path"] == "/bye"
    assert (hget(hdrs, "connection") or "").lower() == "close"
    assert c.closed()
    c.close()


def test_many_pipelined_requests_in_one_write(pstack):
    n = 60
    c = Conn(pstack.ports["gateway"])
    c.send(b"".join(req("GET" if i % 3 else "POST", "/burst/%d" % i, "burst-%d" % (i % 3),
                        body=None if i % 3 else "b%d" % i) for i in range(n)))
    for i in range(n):
        st, _, hdrs, body = c.response()
        assert st == 200, (i, body[:200])
        j = json.loads(body)
        assert j["path"] == "/burst/%d" % i, (i, j["path"])
        assert hget(hdrs, "x-berth-session") == "burst-%d" % (i % 3)
        if i % 3 == 0:
            assert j["body"] == "b%d" % i
    c.close()


def test_chunked_body_cut_in_its_trailers_is_a_truncation(pstack):
    truncations = pstack.gateway.log().count("response truncated")
    c = Conn(pstack.ports["gateway"])
    c.send(req("GET", "/misc/trailer-cut", "misc-trailer"))
    line = c._line()
    assert line.startswith(b"HTTP/1.1 200"), line
    rest = c.read_to_close()  # the gateway closes: the client must see the body incomplete
    assert b"5\r\nhello\r\n" in rest
    assert not rest.endswith(b"\r\n\r\n"), rest  # the chunked message was never completed
    c.close()
    assert pstack.gateway.log().count("response truncated") == truncations + 1
    r = curl(pstack.url("/misc/hop"), headers={"x-fc-session-id": "misc-trailer"})
    assert r.status == 200 and r.body == b"hop\n"


def test_connect_is_refused_with_405(pstack):
    # llhttp would take a CONNECT's body as tunnel data, i.e. as the next request
    c = Conn(pstack.ports["gateway"])
    c.send(b"CONNECT gw.test:443 HTTP/1.1\r\nHost: gw.test:443\r\nx-fc-session-id: cn\r\n"
           b"Content-Length: 40\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n")
    st, _, _, body = c.response()
    assert st == 405
    assert json.loads(body)["error"]["code"] == "method_not_allowed"
    assert c.closed()
    c.close()


def test_invalid_upstream_response_is_502_bad_gateway(pstack):
    r = curl(pstack.url("/misc/garbage"), headers={"x-fc-session-id": "misc-bad"})
    assert r.status == 502, r
    assert r.json()["error"]["code"] == "bad_gateway"
    # the next request of the session is served again
    r = curl(pstack.url("/misc/hop"), headers={"x-fc-session-id": "misc-bad"})
    assert r.status == 200 and r.body == b"hop\n"


def test_upstream_closing_without_answer_is_502(pstack):
    r = curl(pstack.url("/misc/drop"), headers={"x-fc-session-id": "misc-drop"})
    assert r.status == 502, r
    assert r.json()["error"]["code"] == "instance_lost"
    r = curl(pstack.url("/misc/hop"), headers={"x-fc-session-id": "misc-drop"})
    assert r.status == 200


def test_upstream_not_answering_in_time_is_504(pstack):
    t0 = time.monotonic()
    r = curl(pstack.url("/misc/stall"), headers={"x-fc-session-id": "misc-stall"}, timeout=20)
    took = time.monotonic() - t0
    assert r.status == 504, r
    assert r.json()["error"]["code"] == "upstream_timeout"
    assert RESPONSE_TIMEOUT * SLOW - 0.1 <= took <= RESPONSE_TIMEOUT * SLOW + 2, took


# ------------------------------------------------------------------ keep-alive timeout

def _get_on(s):
    s.sendall(b"GET /ka HTTP/1.1\r\nHost: x\r\nx-fc-session-id: ka-1\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, "connection closed before the response"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    n = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(body) < n:
        chunk = s.recv(65536)
        assert chunk
        body += chunk
    return head.split(b" ", 2)[1]


def test_keepalive_timeout_counts_from_the_last_exchange(make_stack):
    """The connection's timer is lazy (not re-armed per exchange): a connection that keeps
    working past the moment it was first armed stays open, and an idle one is closed once
    keepalive_timeout has passed since its last exchange."""
    ka = 1.5 * SLOW
    st = make_stack({"templates": [echo_template(pool={"min": 1, "max": 2})],
                     "gateway": {"limits": {"keepalive_timeout": "%dms" % (ka * 1000)}}})
    s = socket.create_connection(("127.0.0.1", st.ports["gateway"]), timeout=10 * SLOW)
    try:
        t0 = time.monotonic()
        assert _get_on(s) == b"200"
        # keep working across the first arming's deadline (t0 + ka), never idle for ka
        while time.monotonic() - t0 < ka * 1.8:
            time.sleep(ka / 3)
            assert _get_on(s) == b"200"
        last = time.monotonic()
        s.settimeout(ka * 4)
        assert s.recv(1) == b"", "an idle connection must be closed"
        waited = time.monotonic() - last
        assert ka * 0.9 <= waited <= ka * 2.5, waited
    finally:
        s.close()

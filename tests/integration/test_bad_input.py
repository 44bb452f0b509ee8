"""Bad input and failures as a client sees them: each gets its status and JSON error code from
the gateway (never a crash, a hang or a response from the instance), the connection is closed
where the framing can no longer be trusted, and the gateway keeps serving other clients.
Also: no capacity, Redis gone, an instance dying (template on_lost: replace / fail)."""

import json
import re
import socket
import subprocess
import threading
import time

import pytest

from conftest import (SLOW, Stack, _remove_tree, _short_tmp, _skip_unless_root, curl,
                      deep_merge, echo_template, wait_until, write_config)

HEADER_TIMEOUT = 1.0
MAX_HEADER_BYTES = 4096
MAX_HEADERS = 20


class Recorder:
    """A raw upstream (the /rec/ route's "static" template) that keeps every byte each
    gateway connection sends it: what an instance would have read. It answers a request head
    at once (200, connection: close) and reads on until the gateway closes."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.conns = []  # [bytearray, closed]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            rec = [bytearray(), False]
            with self.lock:
                self.conns.append(rec)
            threading.Thread(target=self._serve, args=(s, rec), daemon=True).start()

    def _serve(self, s, rec):
        answered = False
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                with self.lock:
                    rec[0] += d
                if not answered and b"\r\n\r\n" in rec[0]:
                    answered = True
                    s.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n"
                              b"connection: close\r\n\r\nrecorded\n")
        except OSError:
            pass
        finally:
            with self.lock:
                rec[1] = True
            s.close()

    def mark(self):
        with self.lock:
            return len(self.conns)

    def since(self, mark):
        """What each connection accepted since <mark> got (one at least), once the gateway
        closed them all."""
        def all_closed():
            with self.lock:
                return len(self.conns) > mark and all(c for _, c in self.conns[mark:])
        wait_until(all_closed, 10 * SLOW, "a connection from the gateway to the recorder, closed")
        with self.lock:
            return [bytes(data) for data, _ in self.conns[mark:]]

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def recorder():
    r = Recorder()
    yield r
    r.close()


@pytest.fixture(scope="module")
def bstack(recorder):
    _skip_unless_root()
    d = _short_tmp()
    s = Stack(d, {
        "templates": [echo_template(pool={"min": 3, "max": 24})],
        "scheduler": {"capacity": 30},
        "gateway": {
            "limits": {"header_timeout": "%dms" % (HEADER_TIMEOUT * 1000),
                       "max_header_bytes": MAX_HEADER_BYTES, "max_headers": MAX_HEADERS},
            "routes": [
                {"name": "small", "path_prefix": "/small/", "max_body": "1KiB"},
                {"name": "reject", "path_prefix": "/reject/", "no_key": "reject"},
                {"name": "default", "path_prefix": "/"},
            ]},
    }, start_gateway=False)
    try:
        # The gateway's config adds a "static" template for the recorder on /rec/ (the
        # scheduler refuses one it cannot run, so its config stays without it).
        cfg = deep_merge(s.cfg, {})
        cfg["gateway"]["routes"] = [{"name": "rec", "path_prefix": "/rec/", "template": "rec"}] \
            + cfg["gateway"]["routes"]
        cfg["templates"] = cfg["templates"] + [
            {"name": "rec", "driver": "static", "sessions_per_instance": 0,
             "upstreams": ["127.0.0.1:%d" % recorder.port]}]
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


# ------------------------------------------------------------------ raw exchanges

class Answer:
    def __init__(self, status, headers, body, closed, elapsed, rest):
        self.status = status
        self.headers = headers
        self.body = body
        self.closed = closed      # the gateway closed the connection after answering
        self.elapsed = elapsed    # seconds from the last byte sent to the answer
        self.rest = rest          # bytes after the first response (a second response?)

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<Answer %s %r closed=%s rest=%r>" % (self.status, self.body[:200], self.closed,
                                                     self.rest[:200])


def exchange(port, data, wait_close=2.0, timeout=10, pause_before_last=0):
    """Sends <data> (bytes or a list of pieces sent apart), reads one response, then whether the
    connection gets closed (within <wait_close> s) and whatever else arrives."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout * SLOW)
    try:
        pieces = data if isinstance(data, list) else [data]
        for i, p in enumerate(pieces):
            if i and pause_before_last:
                time.sleep(pause_before_last)
            try:
                s.sendall(p)
            except (BrokenPipeError, ConnectionResetError):
                break  # the gateway answered and closed early; read its answer
        t0 = time.monotonic()
        buf = b""
        while b"\r\n\r\n" not in buf:
            try:
                d = s.recv(65536)
            except ConnectionResetError:
                d = b""
            if not d:
                raise AssertionError("connection closed without a response (got %r)" % buf)
            buf += d
        elapsed = time.monotonic() - t0
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
        assert m, lines[0]
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers.setdefault(k.strip().lower(), v.strip())
        n = int(headers.get("content-length", "0"))
        while len(body) < n:
            d = s.recv(65536)
            if not d:
                break
            body += d
        rest = body[n:]
        body = body[:n]
        s.settimeout(wait_close * SLOW)
        closed = False
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    closed = True
                    break
                rest += d
        except socket.timeout:
            pass
        except ConnectionResetError:
            closed = True
        return Answer(int(m.group(1)), headers, body, closed, elapsed, rest)
    finally:
        s.close()


def request(path="/", headers=(), body=b"", method="GET", session="bad-input", version="1.1"):
    lines = ["%s %s HTTP/%s" % (method, path, version), "Host: gw.test"]
    if session:
        lines.append("x-fc-session-id: %s" % session)
    lines += ["%s: %s" % kv for kv in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def gateway_error(a, status, code):
    """<a> is the gateway's own JSON error (not the instance's)."""
    assert a.status == status, a
    assert a.headers.get("content-type") == "application/json", a.headers
    j = a.json()
    assert set(j) == {"error"} and j["error"]["code"] == code, j
    assert isinstance(j["error"]["message"], str) and j["error"]["message"]
    assert "x-berth-instance" not in a.headers, "answered by the instance: %r" % a.headers
    assert "x-echo-instance" not in a.headers, "answered by the instance: %r" % a.headers


def still_serving(stack, session="bystander"):
    r = stack.get("/still-serving", session=session, timeout=10)
    assert r.status == 200, r
    assert r.json()["path"] == "/still-serving"


# ------------------------------------------------------------------ head limits

def test_oversized_head_is_431(bstack):
    port = bstack.ports["gateway"]
    big = "x" * (MAX_HEADER_BYTES + 100)
    a = exchange(port, request(headers=[("X-Big", big)]))
    gateway_error(a, 431, "headers_too_large")
    assert a.closed
    # the same without the end of the head ever arriving: refused once over the limit
    a = exchange(port, request(headers=[("X-Big", big)])[:-4])
    gateway_error(a, 431, "headers_too_large")
    assert a.closed and a.elapsed < HEADER_TIMEOUT, a.elapsed
    still_serving(bstack)


def test_too_many_headers_is_431(bstack):
    a = exchange(bstack.ports["gateway"],
                 request(headers=[("X-H%d" % i, "v") for i in range(MAX_HEADERS + 5)]))
    gateway_error(a, 431, "headers_too_large")
    assert a.closed
    # just under the limit passes (Host and the key header count too)
    a = exchange(bstack.ports["gateway"],
                 request(headers=[("X-H%d" % i, "v") for i in range(MAX_HEADERS - 2)]))
    assert a.status == 200, a
    still_serving(bstack)


def test_a_head_the_gateway_takes_is_not_too_many_headers_for_a_default_instance(stack):
    """The gateway adds up to 4 headers (x-forwarded-for, x-forwarded-proto, x-request-id,
    x-forwarded-host; the client's Host is replaced by the instance's own). With the default limits (gateway.limits.max_headers, berth-echo's
    --max-headers) each count around the limit gets the instance's answer, with every header,
    or the gateway's own 431; never the instance's 431 (before: 100 client headers, the
    gateway's limit, became 103 and berth-echo refused them)."""
    refused_from = None
    for n in range(90, 106):  # client headers, Host and the key included
        a = exchange(stack.ports["gateway"], request(
            "/many-headers", [("X-H%d" % i, "v") for i in range(n - 2)], session="many-headers"),
            wait_close=0.1)
        if a.status == 431:
            gateway_error(a, 431, "headers_too_large")
            refused_from = refused_from or n
            continue
        assert a.status == 200, "%d headers: %r" % (n, a)
        assert refused_from is None, "%d headers refused, %d taken" % (refused_from, n)
        got = a.json()["headers"]
        assert len(got) == n + 4, "%d headers sent, the instance got %d" % (n, len(got))
    assert refused_from is not None, "no limit between 90 and 105 headers"


@pytest.mark.parametrize("line", ids=["extra", "space-in-target", "bad-method", "bad-version",
                                     "tls-hello", "h2-preface"], argvalues=[
    b"GET / HTTP/1.1 extra\r\n",
    b"GET /a b HTTP/1.1\r\n",
    b"G@T / HTTP/1.1\r\n",
    b"GET / HTTX/1.1\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",             # an HTTP/2 preface
])
def test_malformed_request_line_is_400_at_once(bstack, line):
    # no end of head needed: garbage is refused before the header timeout
    a = exchange(bstack.ports["gateway"], b"GET /\r\n")
    gateway_error(a, 400, "bad_request")
    assert a.closed
    assert a.elapsed < HEADER_TIMEOUT, "400 only after %.2fs" % a.elapsed
    still_serving(bstack)


@pytest.mark.parametrize("line", ids=["two-spaces-after-method", "two-spaces-after-target",
                                     "bare-lf", "utf8-target", "obs-text-target"], argvalues=[
    b"GET  /two-spaces HTTP/1.1\r\n",
    b"GET /two-spaces  HTTP/1.1\r\n",
    b"GET /bare-lf HTTP/1.1\n",
    b"GET /caf\xc3\xa9 HTTP/1.1\r\n",
    b"GET /\x80 HTTP/1.1\r\n",
])
def test_request_line_not_exactly_method_target_version_is_400(bstack, line):
    """RFC 9112 3: method SP request-target SP HTTP-version CRLF, one SP each, a target of
    visible ASCII. llhttp 8 takes all of these (the instance then sees a line it may split
    another way): 400 and close, with the whole head or with the line alone."""
    a = exchange(bstack.ports["gateway"],
                 line + b"Host: x\r\nx-fc-session-id: bad-input\r\n\r\n")
    gateway_error(a, 400, "bad_request")
    assert a.closed and a.rest == b"", a
    a = exchange(bstack.ports["gateway"], line)
    gateway_error(a, 400, "bad_request")
    assert a.elapsed < HEADER_TIMEOUT, "400 only after %.2fs" % a.elapsed
    still_serving(bstack)


def test_http09_request_is_answered_at_once(bstack):
    """An HTTP/0.9 request is its request line without a version; its client waits for the
    answer. llhttp 8 waits for header lines after it, so the gateway answered only when
    header_timeout ran out (408)."""
    a = exchange(bstack.ports["gateway"], b"GET /\r\n")
    gateway_error(a, 400, "bad_request")
    assert a.closed
    assert a.elapsed < HEADER_TIMEOUT, "400 only after %.2fs" % a.elapsed
    still_serving(bstack)


def test_http_versions_other_than_1x_are_400(bstack):
    for v in (b"HTTP/2.0", b"HTTP/0.9", b"HTTP/3.0"):
        a = exchange(bstack.ports["gateway"], b"GET / " + v + b"\r\nHost: x\r\n\r\n")
        gateway_error(a, 400, "bad_request")
    a = exchange(bstack.ports["gateway"], b"GET /\r\n\r\n")
    gateway_error(a, 400, "bad_request")
    still_serving(bstack)


def test_missing_host_in_http11_is_400(bstack):
    a = exchange(bstack.ports["gateway"],
                 b"GET / HTTP/1.1\r\nx-fc-session-id: bad-input\r\n\r\n")
    gateway_error(a, 400, "bad_request")
    a = exchange(bstack.ports["gateway"], request(headers=[("Host", "again")]))
    gateway_error(a, 400, "bad_request")  # two Host headers
    still_serving(bstack)


# ------------------------------------------------------------------ framing

def test_content_length_with_transfer_encoding_is_400_and_closed(bstack):
    a = exchange(bstack.ports["gateway"], request(
        "/cl-te", [("Content-Length", "5"), ("Transfer-Encoding", "chunked")], method="POST",
        body=b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\nx-fc-session-id: victim\r\n\r\n"))
    gateway_error(a, 400, "bad_request")
    assert a.closed and a.rest == b"", a
    still_serving(bstack)


def test_duplicate_content_length_is_400(bstack):
    for cls in ([("Content-Length", "5"), ("Content-Length", "5")],
                [("Content-Length", "5"), ("Content-Length", "6")],
                [("Content-Length", "5, 5")]):
        a = exchange(bstack.ports["gateway"], request("/dup-cl", cls, method="POST",
                                                      body=b"hello!"))
        gateway_error(a, 400, "bad_request")
        assert a.closed and a.rest == b""
    still_serving(bstack)


def test_bad_chunk_size_is_400(bstack):
    a = exchange(bstack.ports["gateway"], request(
        "/bad-chunk", [("Transfer-Encoding", "chunked")], method="POST",
        body=b"5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n"))
    gateway_error(a, 400, "bad_request")
    assert a.closed
    still_serving(bstack)


# a session of its own: a key bound to an echo instance by other tests would go there
CHUNKED_HEAD = (b"POST /rec/chunked HTTP/1.1\r\nHost: x\r\nx-fc-session-id: recorded\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")


@pytest.mark.parametrize("body", ids=["bare-cr-in-size-line", "no-crlf-after-data",
                                      "long-chunk-extension", "obs-fold-in-trailer",
                                      "space-before-trailer-colon", "bare-lf-ending-trailers"],
                         argvalues=[
    b"5\r\r;ABCD\r\n0\r\n\r\n",
    b"1\r\nZxx0\r\n\r\n",
    b"1;" + b"e" * 300 + b"\r\nZ\r\n0\r\n\r\n",  # limits.max_chunk_ext_bytes: 256 (default)
    b"1\r\nZ\r\n0\r\nX-T: a\r\n b\r\n\r\n",
    b"1\r\nZ\r\n0\r\nX-T : a\r\n\r\n",
    b"1\r\nZ\r\n0\r\n\n",
])
def test_bad_chunked_framing_is_400_and_never_forwarded(bstack, recorder, body):
    """Chunked framing llhttp 8.1 accepts (issue 14): "5" CR CR ";ABCD" (h2o reads the CR
    ";ABCD" as an extension), chunk data followed by any two bytes, chunk extensions past
    the limit, invalid trailer lines. The gateway forwarded such a body byte for byte, so an
    instance parsing it another way saw a request the gateway never checked. Now: 400, close,
    and the instance (connected to: the request was routed there) got at most the request
    head, not a byte of the body."""
    mark = recorder.mark()
    a = exchange(bstack.ports["gateway"], CHUNKED_HEAD + body +
                 b"POST /rec/smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    gateway_error(a, 400, "bad_request")
    assert a.closed and a.rest == b"", a
    for got in recorder.since(mark):
        head, _, after = got.partition(b"\r\n\r\n")
        assert after == b"", "body bytes reached the instance: %r" % got
    still_serving(bstack)


def test_chunked_body_within_the_limits_is_forwarded_as_sent(bstack, recorder):
    """The counterpart: extensions up to the limit and valid trailers reach the instance as
    the client sent them (chunked bodies are relayed, not re-framed)."""
    body = (b"1;" + b"e" * 200 + b"\r\nZ\r\n3;a=\"q s\"\r\nabc\r\n0\r\n"
            b"X-Trailer: t\r\nY:\r\n\r\n")
    mark = recorder.mark()
    a = exchange(bstack.ports["gateway"], CHUNKED_HEAD + body)
    assert a.status == 200 and a.body == b"recorded\n", a
    got = recorder.since(mark)
    assert len(got) == 1 and got[0].partition(b"\r\n\r\n")[2] == body, got


def test_body_over_max_body_with_content_length_is_413(bstack):
    # refused from the head alone: the client need not send the body
    a = exchange(bstack.ports["gateway"], request("/small/up", [("Content-Length", "2000")],
                                                  method="POST"))
    gateway_error(a, 413, "body_too_large")
    assert a.closed
    a = exchange(bstack.ports["gateway"], request("/small/up", [("Content-Length", "1024")],
                                                  method="POST", body=b"k" * 1024))
    assert a.status == 200 and a.json()["body_bytes"] == 1024
    still_serving(bstack)


def test_body_over_max_body_chunked_is_413(bstack):
    chunks = b"".join(b"320\r\n" + b"c" * 800 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
    a = exchange(bstack.ports["gateway"], request("/small/up", [("Transfer-Encoding", "chunked")],
                                                  method="POST", body=chunks))
    gateway_error(a, 413, "body_too_large")
    assert a.closed
    # under the limit, chunked, is fine
    ok = b"320\r\n" + b"c" * 800 + b"\r\n0\r\n\r\n"
    a = exchange(bstack.ports["gateway"], request("/small/up", [("Transfer-Encoding", "chunked")],
                                                  method="POST", body=ok))
    assert a.status == 200 and a.json()["body_bytes"] == 800
    still_serving(bstack)


@pytest.mark.parametrize("name,head", ids=["te-gzip", "space-before-colon", "empty-name"],
                         argvalues=[
    ("transfer-coding not ending in chunked",
     b"POST /te HTTP/1.1\r\nHost: x\r\nx-fc-session-id: bad-input\r\n"
     b"Transfer-Encoding: gzip\r\n\r\n"
     b"GET /smuggled HTTP/1.1\r\nHost: x\r\nx-fc-session-id: victim\r\n\r\n"),
    ("white space before the colon",
     b"GET /ws-colon HTTP/1.1\r\nHost: x\r\nx-fc-session-id: bad-input\r\n"
     b"X-Other : y\r\n\r\n"),
    ("empty header name",
     b"GET /empty-name HTTP/1.1\r\nHost: x\r\nx-fc-session-id: bad-input\r\n: v\r\n\r\n"),
])
def test_smuggling_shapes_are_400_and_closed(bstack, name, head):
    """RFC 9112 6.1 (a request whose Transfer-Encoding does not end in chunked), 5.1 (white
    space between a field name and the colon) and 5.1/RFC 9110 5.1 (a field name is a
    non-empty token): 400 and close, never forwarded."""
    a = exchange(bstack.ports["gateway"], head)
    gateway_error(a, 400, "bad_request")
    assert a.closed, "%s: connection left open" % name
    assert a.rest == b"", "%s: a second response followed: %r" % (name, a.rest[:300])
    still_serving(bstack)


def test_obs_fold_is_refused_or_unfolded(bstack):
    """RFC 9112 5.2: obs-fold in a request is answered 400, or replaced by SP before the
    value is interpreted or forwarded."""
    a = exchange(bstack.ports["gateway"], request(
        "/fold", [("X-Folded", "first\r\n second")]))
    if a.status == 400:
        gateway_error(a, 400, "bad_request")
    else:
        assert a.status == 200, a
        v = a.json()["headers"].get("x-folded", "")
        assert re.fullmatch(r"first[ \t]+second", v), \
            "obs-fold not replaced by SP: the instance saw %r" % v
    still_serving(bstack)


@pytest.mark.parametrize("te", ids=["cow-chunked", "identity-chunked", "two-headers",
                                   "chunked-twice"], argvalues=[
    [b"cow, chunked"], [b"identity, chunked"], [b"gzip", b"chunked"], [b"chunked", b"chunked"],
])
def test_transfer_encoding_other_than_exactly_chunked_is_refused(bstack, te):
    """RFC 9112 6.1 allows 501 or 400 for a coding the server does not know. llhttp 8 frames
    all but the last as chunked and the gateway forwarded them; an instance that knows no
    "cow" or reads only the first header reads the body as the next request."""
    head = b"POST /te-list HTTP/1.1\r\nHost: x\r\nx-fc-session-id: bad-input\r\n"
    head += b"".join(b"Transfer-Encoding: " + v + b"\r\n" for v in te)
    a = exchange(bstack.ports["gateway"], head + b"\r\n5\r\nhello\r\n0\r\n\r\n"
                 b"GET /smuggled HTTP/1.1\r\nHost: x\r\nx-fc-session-id: victim\r\n\r\n")
    gateway_error(a, 400, "bad_request")
    assert a.closed and a.rest == b"", a
    still_serving(bstack)


@pytest.mark.parametrize("head", ids=["transfer-encoding", "content-length", "host",
                                     "x-fc-session-id", "mcp-session-id", "cookie"], argvalues=[
    b"POST /fold HTTP/1.1\r\nHost: x\r\nx-fc-session-id: bad-input\r\n"
    b"Transfer-Encoding:\r\n chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /fold HTTP/1.1\r\nHost: x\r\nx-fc-session-id: bad-input\r\n"
    b"Content-Length:\r\n 5\r\n\r\nhello",
    b"GET /fold HTTP/1.1\r\nHost:\r\n x\r\nx-fc-session-id: bad-input\r\n\r\n",
    b"GET /fold HTTP/1.1\r\nHost: x\r\nx-fc-session-id:\r\n bad-input\r\n\r\n",
    b"GET /fold HTTP/1.1\r\nHost: x\r\nMcp-Session-Id:\r\n some-mcp-id\r\n\r\n",
    b"GET /fold HTTP/1.1\r\nHost: x\r\nCookie:\r\n berth_session=bad-input\r\n\r\n",
])
def test_obs_fold_after_an_empty_first_line_is_400(bstack, head):
    """RFC 9112 5.2. llhttp 8 reads "Name:" CRLF " value" as the value: the gateway framed,
    routed or keyed the request by it while the folded line went to the instance as sent."""
    a = exchange(bstack.ports["gateway"], head)
    gateway_error(a, 400, "bad_request")
    assert a.closed and a.rest == b"", a
    still_serving(bstack)


def test_upgrade_request_with_a_body_is_not_left_hanging(bstack):
    """An Upgrade request the instance does not switch for is an ordinary request: its body
    must reach the instance (or the request be refused), not be read as the next request."""
    try:
        a = exchange(bstack.ports["gateway"], request(
            "/upgrade-body", [("Connection", "Upgrade"), ("Upgrade", "websocket"),
                              ("Content-Length", "5")], method="POST", body=b"hello"), timeout=8)
    except socket.timeout:
        raise AssertionError("no answer within %ds to an Upgrade request with a 5-byte body"
                             % (8 * SLOW))
    assert a.status in (200, 400), a
    if a.status == 200:
        assert a.json()["body_bytes"] == 5
    still_serving(bstack)


def test_slow_headers_get_408(bstack):
    t0 = time.monotonic()
    a = exchange(bstack.ports["gateway"], b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
    took = time.monotonic() - t0
    gateway_error(a, 408, "request_timeout")
    assert a.closed
    assert HEADER_TIMEOUT - 0.1 <= took <= HEADER_TIMEOUT + 1.0 * SLOW, took
    # a client dribbling bytes does not extend the timeout
    t0 = time.monotonic()
    a = exchange(bstack.ports["gateway"],
                 [b"GET / HTTP/1.1\r\n", b"Host: x\r\n", b"X-A: 1\r\n", b"X-B: 2\r\n"],
                 pause_before_last=0.3)
    took = time.monotonic() - t0
    gateway_error(a, 408, "request_timeout")
    assert took <= HEADER_TIMEOUT + 1.0 * SLOW, took
    still_serving(bstack)


def test_nul_and_control_bytes_are_400(bstack):
    for bad in (b"X-N: a\x00b", b"X-C: a\x01b", b"X-\x80: y"):
        a = exchange(bstack.ports["gateway"],
                     b"GET / HTTP/1.1\r\nHost: x\r\n" + bad + b"\r\n\r\n")
        gateway_error(a, 400, "bad_request")
    still_serving(bstack)


# ------------------------------------------------------------------ session keys

@pytest.mark.parametrize("key", ["has space", "k" * 129, "caf\xe9", "tab\there", ""],
                         ids=["space", "129-chars", "non-ascii", "tab", "empty"])
def test_invalid_session_key_is_400(bstack, key):
    raw = ("GET / HTTP/1.1\r\nHost: x\r\nx-fc-session-id: %s\r\n\r\n" % key).encode("latin-1")
    a = exchange(bstack.ports["gateway"], raw + request("/next", session="valid-key"))
    gateway_error(a, 400, "invalid_session_key")
    # the connection stays usable: the next request on it is answered normally
    assert not a.closed
    assert a.rest.startswith(b"HTTP/1.1 200"), a.rest[:200]
    still_serving(bstack)


@pytest.mark.parametrize("keys", ids=["two-headers", "same-twice", "comma-list", "two-mcp-ids"],
                         argvalues=[
    [("x-fc-session-id", "key-one"), ("x-fc-session-id", "key-two")],
    [("x-fc-session-id", "key-one"), ("X-FC-Session-Id", "key-one")],
    [("x-fc-session-id", "key-one,key-two")],
    [("Mcp-Session-Id", "mcp-one"), ("Mcp-Session-Id", "mcp-two")],
])
def test_two_session_keys_are_400(bstack, keys):
    """Which of two keys is the key depends on the parser (the gateway took the first; an
    instance may take the last or join them): 400 invalid_session_key, as for two Hosts."""
    a = exchange(bstack.ports["gateway"],
                 request("/two-keys", session=None, headers=keys) +
                 request("/next", session="valid-key"))
    gateway_error(a, 400, "invalid_session_key")
    assert not a.closed  # the framing is fine: the next request on the connection is served
    assert a.rest.startswith(b"HTTP/1.1 200"), a.rest[:200]
    still_serving(bstack)


def test_invalid_cookie_key_is_400(bstack):
    a = exchange(bstack.ports["gateway"], request(headers=[("Cookie", "berth_session=a b")],
                                                  session=None))
    gateway_error(a, 400, "invalid_session_key")


def test_route_with_no_key_reject_requires_a_key(bstack):
    a = exchange(bstack.ports["gateway"], request("/reject/x", session=None))
    gateway_error(a, 400, "session_key_required")
    assert not a.closed
    a = exchange(bstack.ports["gateway"], request("/reject/x", session="has-a-key"))
    assert a.status == 200 and a.json()["path"] == "/reject/x"


# ------------------------------------------------------------------ capacity, store, instances

@pytest.mark.berth_timeout(90)
def test_no_capacity_is_503_with_retry_after(make_stack):
    # No warm pool, and a host with room for one instance: the first session is started on
    # demand, the second finds the pool empty and the host full. (pool.max bounds the warm
    # pool, not the instances sessions run in.)
    s = make_stack({"templates": [echo_template(pool={"min": 0, "max": 0})],
                    "scheduler": {"capacity": 1}}, wait_pools=False)
    assert s.get("/", session="takes-the-room").status == 200
    t0 = time.monotonic()
    r = s.get("/", session="no-room")
    took = time.monotonic() - t0
    assert r.status == 503, r
    assert r.json()["error"]["code"] == "no_capacity"
    assert r.header("retry-after") == "1"
    assert took < 5 * SLOW, "no_capacity after %.1fs" % took
    assert s.get("/", session="no-room").status == 503


@pytest.mark.berth_timeout(90)
def test_scheduler_stopped_bound_sessions_work_new_ones_503(make_stack):
    s = make_stack({"templates": [echo_template(pool={"min": 1, "max": 4})],
                    "gateway": {"limits": {"start_timeout": "3s"}}})
    r = s.get("/", session="bound-before")
    assert r.status == 200
    inst = r.header("x-berth-instance")
    s.wait_pool("echo", 1)
    s.stop_scheduler()
    # the warm instance left in the pool still serves one new session
    assert s.get("/", session="from-the-pool").status == 200
    # then no pool and no scheduler: 503 no_capacity, not a hang past start_timeout
    t0 = time.monotonic()
    r = s.get("/", session="nothing-left", timeout=30)
    took = time.monotonic() - t0
    assert r.status == 503 and r.json()["error"]["code"] == "no_capacity", r
    assert r.header("retry-after") is not None
    assert took < 3 + 2 * SLOW, "answered after %.1fs" % took
    # bound sessions keep working
    r = s.get("/", session="bound-before")
    assert r.status == 200 and r.header("x-berth-instance") == inst


@pytest.mark.berth_timeout(90)
def test_redis_stopped_cached_session_works_new_session_503_fast(make_stack):
    s = make_stack({"templates": [echo_template(pool={"min": 2, "max": 4})],
                    "gateway": {"cache_ttl": "1s"}})
    r = s.get("/", session="cached-one")
    assert r.status == 200
    inst = r.header("x-berth-instance")
    s.problems += s.redis_server.stop()
    for i in range(3):
        r = s.get("/after-redis/%d" % i, session="cached-one")
        assert r.status == 200 and r.header("x-berth-instance") == inst, r
    time.sleep(1.5)  # past cache_ttl: still served from the cache while Redis is away
    r = s.get("/after-ttl", session="cached-one")
    assert r.status == 200 and r.header("x-berth-instance") == inst, r
    t0 = time.monotonic()
    r = s.get("/", session="brand-new")
    took = time.monotonic() - t0
    assert r.status == 503, r
    assert r.json()["error"]["code"] == "store_unavailable"
    assert took < 1.0 * SLOW, "store_unavailable after %.2fs" % took
    # keyless (no_key: new) requests need the store too
    r = curl(s.url("/"))
    assert r.status == 503 and r.json()["error"]["code"] == "store_unavailable"
    # and the cached session still works afterwards
    assert s.get("/", session="cached-one").status == 200


FAIL_HOST = "fail.test"  # routed to the on_lost: fail template (paths must stay "/exit")


def lost_stack(make_stack):
    return make_stack({
        "templates": [echo_template(pool={"min": 2, "max": 8}),
                      echo_template("echofail", on_lost="fail", pool={"min": 2, "max": 8})],
        "gateway": {"routes": [{"name": "fail", "host": FAIL_HOST, "template": "echofail"},
                               {"name": "replace", "template": "echo"}]},
    })


def session_state(s, key):
    for k in s.redis.scan(s.key("s:*")):
        if ":" in k[len(s.key("s:")):]:
            continue
        h = s.redis.hgetall(k)
        if h.get("key") == key:
            return h
    return {}


def kill_via_exit(s, key, headers=None):
    r = s.get("/exit", session=key, method="POST", data=b"", headers=headers)
    assert r.status == 200 and r.json()["exiting"] is True, r


@pytest.mark.berth_timeout(120)
def test_instance_death_on_lost_replace(make_stack):
    s = lost_stack(make_stack)
    key = "dies-replace"
    r = s.get("/", session=key)
    assert r.status == 200
    first = r.header("x-berth-instance")
    kill_via_exit(s, key)
    # right after the death: a 502 instance_lost or already a fresh instance, never the old one
    r = s.get("/next", session=key, timeout=15)
    assert r.status in (200, 502), r
    if r.status == 502:
        assert r.json()["error"]["code"] == "instance_lost"
    else:
        assert r.header("x-berth-instance") != first
    # once the scheduler has recorded the loss, the next request gets a new instance
    wait_until(lambda: session_state(s, key).get("state") != "bound" or
               session_state(s, key).get("instance") != first, 15 * SLOW,
               "the loss of %s recorded in Redis" % first)
    deadline = time.monotonic() + 10 * SLOW
    while True:
        r = s.get("/replaced", session=key, timeout=15)
        if r.status == 200 or time.monotonic() > deadline:
            break
        assert r.status == 502 and r.json()["error"]["code"] == "instance_lost", r
        time.sleep(0.2)
    assert r.status == 200, r
    second = r.header("x-berth-instance")
    assert second != first
    assert r.json()["instance"] == second
    assert s.get("/again", session=key).header("x-berth-instance") == second


@pytest.mark.berth_timeout(120)
def test_instance_death_on_lost_fail(make_stack):
    s = lost_stack(make_stack)
    key = "dies-fail"
    fh = {"Host": FAIL_HOST}
    r = s.get("/", session=key, headers=fh)
    assert r.status == 200
    first = r.header("x-berth-instance")
    assert s.instances()[first]["template"] == "echofail"
    kill_via_exit(s, key, headers=fh)
    wait_until(lambda: session_state(s, key).get("state") == "lost", 15 * SLOW,
               "session state 'lost' in Redis")
    for i in range(3):
        r = s.get("/after/%d" % i, session=key, headers=fh, timeout=15)
        assert r.status == 502, r
        assert r.json()["error"]["code"] == "instance_lost"
        assert r.header("x-berth-session") == key
    # other sessions of the template are unaffected
    r = s.get("/", session="fail-bystander", headers=fh)
    assert r.status == 200 and r.header("x-berth-instance") != first


@pytest.mark.berth_timeout(90)
def test_instance_death_during_a_stream_ends_it(make_stack):
    s = lost_stack(make_stack)
    key = "dies-streaming"
    assert s.get("/", session=key).status == 200
    p = subprocess.Popen(["curl", "-sS", "-N", "--http1.1", "--max-time", str(60 * SLOW),
                          "-H", "x-fc-session-id: %s" % key,
                          s.url("/sse?n=100000&interval_ms=50")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        got = b""
        while got.count(b"data: ") < 2:
            d = p.stdout.read1(4096)
            assert d, "stream ended early: %r" % got
            got += d
        kill_via_exit(s, key)
        t0 = time.monotonic()
        try:
            p.wait(10 * SLOW)
        except subprocess.TimeoutExpired:
            raise AssertionError("the client's stream is still open 10s after its instance died")
        assert p.returncode != 0, "a cut stream must not look complete to the client"
        assert time.monotonic() - t0 < 10 * SLOW
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        p.stdout.close()
        p.stderr.close()


def test_out_of_descriptors_backs_off_and_serves_again(make_stack):
    """The gateway's descriptors run out (a low RLIMIT_NOFILE and a flood of idle
    connections): accept fails with EMFILE, the listener pauses 100 ms and resumes by itself,
    and once the flood is gone requests are served again. (The resume once called
    evconnlistener_enable with the timer's -1 as its listener: a crash 100 ms after the first
    EMFILE.)"""
    from conftest import Proc, binary
    s = make_stack(start_gateway=False)
    s.gateway = Proc("gateway", ["prlimit", "--nofile=64:64", binary("berth-gateway"), "-c",
                                 s.config_path], s.base, cwd=str(s.base))
    wait_until(lambda: curl(s.admin_url("/readyz"), timeout=2).status == 200, 20 * SLOW,
               "berth-gateway /readyz")
    flood = []
    try:
        for _ in range(80):  # more than the gateway has descriptors
            try:
                flood.append(socket.create_connection(("127.0.0.1", s.ports["gateway"]),
                                                      timeout=5 * SLOW))
            except OSError:
                break
        wait_until(lambda: "accept failed" in s.gateway.log(), 10 * SLOW, "EMFILE")
        time.sleep(0.5)  # several back-off periods over (each 100 ms)
        assert s.gateway.alive(), s.gateway.tail()
    finally:
        for c in flood:
            c.close()
    r = wait_until(lambda: (lambda r: r if r.status == 200 else None)(
        curl(s.url("/after"), headers={"x-fc-session-id": "emfile"}, timeout=5)),
        20 * SLOW, "a request served after the flood")
    assert r.header("x-berth-instance"), r
    assert s.gateway.alive(), s.gateway.tail()

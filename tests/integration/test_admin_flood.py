"""The control listeners under a flood (issue 14): unfinished requests, idle connections and one
tenant's many connections must not take health and readiness, nor another tenant's requests.

- gateway.health_listen / scheduler.health_listen: /healthz (and the gateway's /readyz) on
  connections of their own, answered while the admin port or the scheduler API is full.
- gateway.admin.header_timeout / scheduler.api_header_timeout: an unfinished head gets 408
  request_timeout within it (not within the much longer timeout).
- gateway.admin.max_connections_per_tenant: a tenant at its limit gets 429
  too_many_connections; another tenant is served.
- gateway.admin.max_connections_per_address: connections no tenant holds yet, per client
  address; more get 429 at accept, other addresses are served.

Real redis-server, real berth-gateway / berth-scheduler, raw sockets and real curl.
"""

import json
import selectors
import socket
import subprocess
import time

from conftest import (DEV_KEY, OTHER_KEY, SLOW, binary, curl, echo_template, free_port,
                      make_config, raw_error, raw_exchange, wait_until, write_config)

PARTIAL = b"GET /v1/sessions HTTP/1.1\r\nHost: x\r\n"  # a head that never ends


def gateway(make_stack, admin, health=True):
    """A gateway and Redis (no scheduler), its admin limits <admin>, a health listener."""
    gw = {"admin": admin}
    port = None
    if health:
        port = free_port()
        gw["health_listen"] = "127.0.0.1:%d" % port
    s = make_stack({"templates": [echo_template()], "gateway": gw}, start_scheduler=False,
                   wait_pools=False)
    return s, port


def url(port, path):
    return "http://127.0.0.1:%d%s" % (port, path)


def connect(port, src="127.0.0.1"):
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        c.bind((src, 0))
        c.settimeout(10 * SLOW)
        c.connect(("127.0.0.1", port))
    except BaseException:
        c.close()
        raise
    return c


def read_answer(c):
    """One answer on a keep-alive connection: (status, headers dict, body bytes)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = c.recv(65536)
        assert chunk, buf
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    n = int(hdrs.get("content-length", "0"))
    while len(body) < n:
        chunk = c.recv(65536)
        assert chunk, body
        body += chunk
    return int(lines[0].split(" ")[1]), hdrs, body


def api_on(c, key, path="/v1/sessions"):
    """A control API request with <key> on the open connection <c>; its answer."""
    c.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n" %
              (path.encode(), key.encode()))
    return read_answer(c)


def all_answers(socks, timeout):
    """What each of <socks> received until it was closed, waiting at most <timeout> in all
    (bounded). Returns the outputs in order; one still open at the deadline fails."""
    out = {c: b"" for c in socks}
    sel = selectors.DefaultSelector()
    for c in socks:
        c.setblocking(False)
        sel.register(c, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    open_ = len(socks)
    try:
        while open_:
            left = deadline - time.monotonic()
            assert left > 0, "%d of %d connections neither answered nor closed" % (open_,
                                                                                    len(socks))
            for key, _ in sel.select(left):
                c = key.fileobj
                try:
                    chunk = c.recv(65536)
                except OSError:
                    chunk = b""
                if chunk:
                    out[c] += chunk
                else:
                    sel.unregister(c)
                    open_ -= 1
    finally:
        sel.close()
    return [out[c] for c in socks]


def full(port):
    """The listener on <port> answers a new connection 503 overloaded (it is full)."""
    out = raw_exchange(port, b"GET /healthz HTTP/1.1\r\n\r\n")
    return out.startswith(b"HTTP/1.1 503") and raw_error(out) == (503, "overloaded")


def close_all(socks):
    for c in socks:
        c.close()


# --- gateway ------------------------------------------------------------------------------


def test_unfinished_heads_fill_the_admin_port_not_the_health_listener(make_stack):
    n = 300
    s, health = gateway(make_stack, {"max_connections": n, "max_connections_per_address": 1000,
                                     "timeout": "%ds" % (60 * SLOW),
                                     "header_timeout": "%ds" % (2 * SLOW)})
    admin = s.ports["admin"]
    socks = []
    try:
        for _ in range(n):
            c = connect(admin)
            socks.append(c)
            c.sendall(PARTIAL)
        # The admin port is full: its own /healthz cannot be reached now ...
        wait_until(lambda: full(admin), 10 * SLOW, "the admin port full")
        # ... while the health listener answers at once.
        r = curl(url(health, "/healthz"), timeout=5)
        assert (r.status, r.json()) == (200, {"status": "ok"}), r
        r = curl(url(health, "/readyz"), timeout=5)
        assert (r.status, r.json()) == (200, {"status": "ready"}), r
        assert curl(url(health, "/readyz"), method="HEAD", extra=["-I"]).status == 200
        # Each unfinished head gets its 408 within header_timeout (2s), far before timeout
        # (60s; both times SLOW): the bound here is between the two.
        outs = all_answers(socks, 20 * SLOW)
        assert [raw_error(o) for o in outs] == [(408, "request_timeout")] * n, outs[:3]
    finally:
        close_all(socks)
    # The admin port serves again.
    wait_until(lambda: curl(s.admin_url("/healthz"), timeout=3).status == 200, 10 * SLOW,
               "the admin listener again")


def test_health_listener_serves_probes_only(make_stack):
    s, health = gateway(make_stack, {"header_timeout": "1s"})
    r = curl(url(health, "/v1/sessions"), headers={"Authorization": "Bearer " + DEV_KEY})
    assert r.status == 404 and r.json()["error"]["code"] == "not_found", r
    r = curl(url(health, "/metrics"))
    assert r.status == 404, r
    r = curl(url(health, "/healthz"), method="POST", data="")
    assert r.status == 405 and r.header("allow") == "GET, HEAD", r
    # Its own refusals are JSON too, and a request body is not taken.
    assert raw_error(raw_exchange(health, b"\x00GARBAGE\r\n\r\n")) == (400, "bad_request")
    big = b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 8192 + b"\r\n\r\n"
    assert raw_error(raw_exchange(health, big)) == (431, "headers_too_large")
    body = b"POST /healthz HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789"
    assert raw_error(raw_exchange(health, body)) == (413, "body_too_large")
    # An unfinished head on it is answered 408 within header_timeout too.
    with connect(health) as c:
        c.sendall(b"GET /healthz HTTP/1.1\r\n")
        (out,) = all_answers([c], 15 * SLOW)
    assert raw_error(out) == (408, "request_timeout")


def test_tenant_at_its_connection_limit_does_not_stop_another(make_stack):
    s, _ = gateway(make_stack, {"max_connections_per_tenant": 4, "timeout": "60s"},
                   health=False)
    admin = s.ports["admin"]
    held = []
    try:
        # Tenant "default" holds four keep-alive connections (each made one request).
        for _ in range(4):
            c = connect(admin)
            held.append(c)
            status, hdrs, _ = api_on(c, DEV_KEY)
            assert status == 200 and "connection" not in hdrs, (status, hdrs)
        # A fifth of its requests on a new connection: 429, and that connection closes.
        r = s.api("GET", "/v1/sessions")
        assert r.status == 429, (r.status, r.body)
        assert r.json()["error"]["code"] == "too_many_connections", r.body
        with connect(admin) as c:
            status, hdrs, body = api_on(c, DEV_KEY)
            assert status == 429 and hdrs.get("connection") == "close", (status, hdrs)
            assert c.recv(100) == b""
        # The other tenant, and anyone's /healthz, are served.
        for _ in range(3):
            r = s.api("GET", "/v1/sessions", key=OTHER_KEY)
            assert r.status == 200, (r.status, r.body)
        assert curl(s.admin_url("/healthz")).status == 200
        # The held connections still serve their tenant.
        status, _, body = api_on(held[0], DEV_KEY)
        assert status == 200 and "sessions" in json.loads(body), body
        # One of them goes: the tenant may open another.
        held.pop().close()
        wait_until(lambda: s.api("GET", "/v1/sessions").status == 200, 10 * SLOW,
                   "a request of the tenant once one of its connections closed")
    finally:
        close_all(held)


def test_unauthenticated_connections_are_limited_per_address(make_stack):
    s, _ = gateway(make_stack, {"max_connections_per_address": 4, "header_timeout": "30s",
                                "timeout": "60s"}, health=False)
    admin = s.ports["admin"]
    silent = []
    try:
        for _ in range(4):
            silent.append(connect(admin))

        def refused():
            out = raw_exchange(admin, b"GET /healthz HTTP/1.1\r\n\r\n")
            return raw_error(out) if out.startswith(b"HTTP/1.1 429") else None
        assert wait_until(refused, 10 * SLOW, "a 429 for a fifth connection from 127.0.0.1") == \
            (429, "too_many_connections")
        # Another client address is not affected.
        with connect(admin, src="127.0.0.2") as c:
            status, _, _ = api_on(c, OTHER_KEY)
            assert status == 200
        # A connection that authenticated no longer counts against its address: one of the
        # four makes a tenant's request, and 127.0.0.1 may open one more.
        status, _, _ = api_on(silent[0], DEV_KEY)
        assert status == 200
        r = curl(s.admin_url("/healthz"), timeout=5)
        assert r.status == 200, r
    finally:
        close_all(silent)
    wait_until(lambda: curl(s.admin_url("/healthz"), timeout=3).status == 200, 10 * SLOW,
               "127.0.0.1 served again")


def test_gateway_refuses_a_header_timeout_over_its_timeout(tmp_short):
    ports = {"gateway": free_port(), "admin": free_port(), "scheduler": free_port()}
    cfg = make_config(tmp_short, "127.0.0.1:1", ports,
                      {"gateway": {"admin": {"timeout": "2s", "header_timeout": "3s"}}})
    path = write_config(tmp_short / "berth.yaml", cfg)
    p = subprocess.run([binary("berth-gateway"), "-c", str(path)], capture_output=True,
                       text=True, timeout=30 * SLOW)
    assert p.returncode != 0
    assert "gateway.admin.header_timeout: must not exceed timeout" in p.stderr + p.stdout, \
        p.stderr


# --- scheduler ----------------------------------------------------------------------------


def test_scheduler_api_full_of_unfinished_heads_leaves_its_health_listener(make_stack):
    n = 16
    health = free_port()
    s = make_stack({"scheduler": {"api_max_connections": n,
                                  "api_header_timeout": "%ds" % (2 * SLOW),
                                  "api_timeout": "%ds" % (60 * SLOW),
                                  "health_listen": "127.0.0.1:%d" % health}},
                   start_gateway=False, wait_pools=False)
    api = s.ports["scheduler"]
    socks = []
    try:
        for _ in range(n):
            c = connect(api)
            socks.append(c)
            c.sendall(b"POST /v1/start HTTP/1.1\r\nHost: x\r\n")
        wait_until(lambda: full(api), 10 * SLOW, "the scheduler API full")
        r = curl(url(health, "/healthz"), timeout=5)
        assert r.status == 200 and r.json()["status"] == "ok", r
        assert curl(url(health, "/v1/status")).status == 404
        outs = all_answers(socks, 20 * SLOW)
        assert [raw_error(o) for o in outs] == [(408, "request_timeout")] * n, outs[:3]
    finally:
        close_all(socks)
    wait_until(lambda: curl(s.scheduler_url("/healthz"), timeout=3).status == 200, 10 * SLOW,
               "the scheduler API again")

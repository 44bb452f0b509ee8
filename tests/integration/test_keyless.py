"""Keyless requests that never become sessions, and CORS preflights, with real parts: redis-server,
berth-scheduler with process sandboxes, berth-gateway, curl, and the MCP reference server
(@modelcontextprotocol/server-everything) with the official TypeScript SDK's client.

  - a CORS preflight on an MCP route (or a route with cors_origins) is answered by the gateway
    itself: no session is claimed and no instance sees it; allowed origins get the CORS headers
    (on the answers too, the instance's own replaced), others 403 origin_not_allowed;
  - a session made for a keyless request (no_key: new or issue) whose answer is an error without
    an Mcp-Session-Id (or no answer: the client left) is released at once: its instance is
    destroyed, never handed to another session, and the pool is refilled; a success keeps it.

Needs root (the process sandbox), node + npm (tests/clients is installed with npm ci).
Run: BERTH_BUILD_DIR=build /usr/bin/python3 -m pytest tests/integration/test_keyless.py
"""

import http.server
import json
import socket
import threading

import pytest

from conftest import (SLOW, Stack, _remove_tree, _short_tmp, _skip_unless_root, curl,
                      echo_template, free_port, wait_until)
from templates import (CLIENTS, _sandbox_template, ensure_chromium, ensure_clients,
                       mcp_template, run_node, sandbox_ro_binds)

APP = "https://app.example"      # the origin the routes allow
EVIL = "https://evil.example"
POOL_MIN = 2


class PageHandler(http.server.BaseHTTPRequestHandler):
    """A blank page: the origin a browser-based MCP client runs in."""
    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        body = b"<!doctype html><title>mcp client</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def pages():
    """Two page servers on loopback: [allowed origin, other origin]."""
    servers = []
    for _ in range(2):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), PageHandler)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    yield ["http://127.0.0.1:%d" % srv.server_address[1] for srv in servers]
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="module")
def kstack(pages):
    _skip_unless_root()
    ensure_clients()
    d = _short_tmp()
    try:
        s = Stack(d, {
            "templates": [echo_template(pool={"min": POOL_MIN, "max": 6}),
                          mcp_template(pool={"min": 1, "max": 3}),
                          _sandbox_template("hostmcp", ["/usr/bin/node",
                                                        CLIENTS / "mcp_host_checked.mjs"],
                                            pool={"min": 1, "max": 2})],
            "scheduler": {"ro_binds": sandbox_ro_binds(), "capacity": 16},
            "gateway": {"routes": [
                {"name": "mcp-echo", "host": "m.test", "template": "echo", "no_key": "new",
                 "cors_origins": [APP], "cors_max_age": 120},
                {"name": "mcp-open", "host": "open.test", "template": "echo",
                 "cors_origins": ["*"]},
                {"name": "mcp-plain", "host": "plain.test", "template": "echo"},
                {"name": "web", "host": "web.test", "template": "echo", "mcp": False,
                 "no_key": "issue"},
                {"name": "web-app-cors", "host": "webcors.test", "template": "echo",
                 "mcp": False},
                {"name": "host-checked", "host": "mcp.example.com", "template": "hostmcp"},
                {"name": "host-checked-client", "host": "mcp-client.example.com",
                 "template": "hostmcp", "upstream_host": "client"},
                {"name": "everything", "path_prefix": "/", "template": "mcp",
                 "cors_origins": [APP, pages[0]]},
            ]},
        })
    except BaseException:
        _remove_tree(d)
        raise
    try:
        yield s
    finally:
        problems = s.stop(check=False)
        _remove_tree(d)
    assert not problems, "\n".join(problems)


HOSTS = {"/m/": "m.test", "/open/": "open.test", "/plain/": "plain.test", "/web/": "web.test",
         "/webcors/": "webcors.test"}


def routed(path, headers=None):
    """("/m/sse?n=1", headers) -> ("/sse?n=1", headers + the route's Host): the routes are
    told apart by Host, so the echo app sees its own paths."""
    h = list(headers.items() if isinstance(headers, dict) else (headers or []))
    for prefix, host in HOSTS.items():
        if path.startswith(prefix):
            return path[len(prefix) - 1:], h + [("Host", host)]
    return path, h


def get(s, path, session=None, headers=None, **kw):
    path, h = routed(path, headers)
    if session is not None:
        h.append(("x-fc-session-id", session))
    return curl(s.url(path), headers=h, **kw)


def sessions(s):
    """The tenant's sessions by id. Tests compare sets, never counts: an earlier test's
    keyless session the gateway is still releasing leaves the set at any moment."""
    return set(s.redis.cmd("ZRANGE", s.key("sessions:default"), 0, -1))


def new_sessions(s, before):
    return sessions(s) - before


def bound_instances(s, template="echo"):
    return {i for i, v in s.instances().items()
            if v.get("template") == template and v.get("state") == "bound"}


def settle(s, before=None, template="echo", pool=POOL_MIN):
    """Waits until no session is left beyond the set <before> and the pool is refilled."""
    if before is not None:
        wait_until(lambda: not new_sessions(s, before), 20 * SLOW, "released sessions gone")
    s.wait_pool(template, pool)


def preflight(s, path, origin, method="POST", req_headers=None):
    h = [("Origin", origin), ("Access-Control-Request-Method", method)]
    if req_headers:
        h.append(("Access-Control-Request-Headers", req_headers))
    path, h = routed(path, h)
    return curl(s.url(path), method="OPTIONS", headers=h)


# ------------------------------------------------------------------ CORS preflights

def test_preflight_is_answered_by_the_gateway_without_a_session(kstack):
    s = kstack
    before, bound = sessions(s), bound_instances(s)
    for _ in range(5):
        r = preflight(s, "/m/tools", APP, "POST", "content-type, mcp-session-id, "
                                                  "mcp-protocol-version")
        assert r.status == 204, r
        assert r.header("access-control-allow-origin") == APP
        assert r.header("access-control-allow-methods") == "POST"
        assert r.header("access-control-allow-headers") == \
            "content-type, mcp-session-id, mcp-protocol-version"
        assert r.header("access-control-allow-credentials") == "true"
        assert r.header("access-control-max-age") == "120"
        assert "mcp-session-id" in r.header("access-control-expose-headers")
        assert r.header("x-berth-instance") is None  # no instance saw it
    # the MCP reference server's own route: its cors() middleware never sees the preflight
    r = preflight(s, "/mcp", APP, "DELETE")
    assert r.status == 204 and r.header("access-control-allow-origin") == APP, r
    assert not new_sessions(s, before) and not bound_instances(s) - bound


def test_preflight_from_another_origin_is_refused(kstack):
    s = kstack
    before = sessions(s)
    for path in ("/m/x", "/mcp", "/plain/x"):  # /plain: an MCP route listing no origins
        r = preflight(s, path, EVIL)
        assert r.status == 403, r
        assert r.json()["error"]["code"] == "origin_not_allowed"
        assert r.header("access-control-allow-origin") is None
    r = preflight(s, "/plain/x", APP)
    assert r.status == 403, r
    assert not new_sessions(s, before)


def test_preflight_any_origin_and_bad_preflights(kstack):
    s = kstack
    r = preflight(s, "/open/x", EVIL, "GET")
    assert r.status == 204 and r.header("access-control-allow-origin") == "*", r
    assert r.header("access-control-allow-credentials") is None  # never with "*"
    for method, hdrs in (("GET, POST", None), ("POST", "content-type(x"), ("", None)):
        h = [("Origin", APP), ("Access-Control-Request-Method", method)]
        if hdrs:
            h.append(("Access-Control-Request-Headers", hdrs))
        path, h = routed("/m/x", h)
        r = curl(s.url(path), method="OPTIONS", headers=h)
        assert r.status == 400 and r.json()["error"]["code"] == "bad_request", (method, r)


def test_preflight_on_a_non_mcp_route_reaches_the_app(kstack):
    # mcp: false and no cors_origins: CORS stays the app's business (berth-echo answers it)
    s = kstack
    r = preflight(s, "/webcors/x", EVIL)
    assert r.status == 200 and r.header("x-berth-instance"), r
    assert r.json()["method"] == "OPTIONS"


def test_answers_to_allowed_origins_carry_cors_headers(kstack):
    s = kstack
    r = get(s, "/m/hello", session="cors-1", headers={"Origin": APP})
    assert r.status == 200, r
    assert r.header("access-control-allow-origin") == APP
    assert "origin" in [v.strip().lower() for v in r.header("vary").split(",")]
    r = get(s, "/m/hello", session="cors-1", headers={"Origin": EVIL})
    assert r.status == 200 and r.header("access-control-allow-origin") is None, r
    # the gateway's own errors too (a browser client must read a 404 session_not_found)
    r = curl(s.url("/mcp"), method="POST", data="{}",
             headers={"Origin": APP, "Mcp-Session-Id": "no-such-session",
                      "Content-Type": "application/json"})
    assert r.status == 404 and r.header("access-control-allow-origin") == APP, r


def test_instance_cors_headers_are_replaced_on_routes_with_origins(kstack):
    # server-everything's cors() middleware answers "Access-Control-Allow-Origin: *" and
    # exposes Mcp-Session-Id itself: on a route listing origins only the gateway's count
    s = kstack
    before = sessions(s)
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-03-26", "capabilities": {},
                       "clientInfo": {"name": "curl", "version": "1"}}}
    r = curl(s.url("/mcp"), method="POST", data=json.dumps(init),
             headers={"Origin": APP, "Content-Type": "application/json",
                      "Accept": "application/json, text/event-stream"}, timeout=30)
    assert r.status == 200 and r.header("mcp-session-id"), r
    assert r.headers["access-control-allow-origin"] == [APP], r.headers
    assert len(r.headers.get("access-control-expose-headers", [])) == 1, r.headers
    assert len(new_sessions(s, before)) == 1  # initialize started a session


# ------------------------------------------------------------------ keyless errors

def test_keyless_error_answers_leave_no_session(kstack):
    s = kstack
    settle(s)
    before = sessions(s)
    seen = []
    for _ in range(4):
        r = get(s, "/m/sse?n=not-a-number")  # berth-echo answers 400 bad_query
        assert r.status == 400 and r.json()["error"]["code"] == "bad_query", r
        seen.append(r.header("x-berth-instance"))
    assert len(set(seen)) == 4, seen  # a fresh instance each time, none handed on
    # each is released at once: no session left, the instances destroyed, the pool refilled
    settle(s, before)
    wait_until(lambda: not (set(seen) & set(s.instances())), 20 * SLOW,
               "the unused instances destroyed")
    # a keyless success keeps its session, reachable with the key it was told
    r = get(s, "/m/fine")
    assert r.status == 200, r
    key = r.header("x-berth-session")
    assert len(new_sessions(s, before)) == 1
    r2 = get(s, "/m/again", session=key)
    assert r2.status == 200 and r2.header("x-berth-instance") == r.header("x-berth-instance")


def test_keyless_error_then_success_on_one_connection(kstack):
    # no_key: new is per connection: after an error released the connection's session, its
    # next keyless request gets a new one (never the destroyed instance)
    s = kstack
    settle(s)
    before = sessions(s)
    port = s.ports["gateway"]
    with socket.create_connection(("127.0.0.1", port), timeout=30 * SLOW) as c:
        f = c.makefile("rb")

        def ask(path):
            c.sendall(("GET %s HTTP/1.1\r\nHost: m.test\r\n\r\n" % path).encode())
            status = int(f.readline().split()[1])
            hdrs = {}
            while True:
                line = f.readline().strip()
                if not line:
                    break
                k, _, v = line.decode().partition(":")
                hdrs[k.strip().lower()] = v.strip()
            f.read(int(hdrs["content-length"]))
            return status, hdrs
        st1, h1 = ask("/sse?n=x")
        st2, h2 = ask("/ok")
        st3, h3 = ask("/ok2")
    assert (st1, st2, st3) == (400, 200, 200)
    assert h2["x-berth-instance"] != h1["x-berth-instance"]
    assert h3["x-berth-instance"] == h2["x-berth-instance"]  # the session started by /m/ok
    assert h2["x-berth-session"] == h3["x-berth-session"] != h1["x-berth-session"]
    wait_until(lambda: len(new_sessions(s, before)) == 1, 20 * SLOW, "one session kept")


def test_keyless_error_on_a_cookie_route_sets_no_cookie(kstack):
    s = kstack
    settle(s)
    before = sessions(s)
    r = get(s, "/web/sse?n=x")
    assert r.status == 400 and r.header("set-cookie") is None, r
    settle(s, before)
    r = get(s, "/web/page")
    assert r.status == 200 and r.header("set-cookie", "").startswith("berth_session="), r
    assert len(new_sessions(s, before)) == 1


def test_keyed_requests_keep_their_session_on_errors(kstack):
    # the rule is for sessions made for a keyless request only: a named session answered
    # with an error stays (its client holds the key)
    s = kstack
    before = sessions(s)
    r = get(s, "/m/sse?n=x", session="named-err")
    assert r.status == 400, r
    r2 = get(s, "/m/ok", session="named-err")
    assert r2.status == 200 and r2.header("x-berth-instance") == r.header("x-berth-instance")
    assert len(new_sessions(s, before)) == 1


def test_mcp_probe_without_session_leaves_nothing_and_sdk_client_works(kstack):
    # a keyless GET on the MCP endpoint (what a version probe or a stray client sends) is
    # answered 400 by the reference server: released; the SDK's real client then works
    s = kstack
    settle(s, template="mcp", pool=1)
    before = sessions(s)
    for _ in range(3):
        r = curl(s.url("/mcp"), headers={"Accept": "text/event-stream"}, timeout=30)
        assert r.status == 400, r
    settle(s, before, template="mcp", pool=1)
    out = run_node("mcp_sessions.mjs", ["--transport", "streamable", "--url",
                                        "http://127.0.0.1:%d" % s.ports["gateway"],
                                        "--sessions", 1, "--timeout-ms", int(100 * SLOW * 1000)],
                   120)
    assert out["ok"] and out["sessions"][0]["ok"], out


# ------------------------------------------------------------------ apps that check Host

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-03-26", "capabilities": {},
                   "clientInfo": {"name": "curl", "version": "1"}}}
MCP_ACCEPT = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def _sse_json(r):
    """The JSON-RPC message of an answer (a JSON body, or the data of an SSE event)."""
    text = r.body.decode()
    if r.header("content-type", "").startswith("text/event-stream"):
        text = "".join(l[5:].strip() for l in text.splitlines() if l.startswith("data:"))
    return json.loads(text)


def test_mcp_server_with_dns_rebinding_protection_behind_a_named_gateway(kstack):
    # tests/clients/mcp_host_checked.mjs: createMcpExpressApp() as the SDK's README shows it
    s = kstack
    h = dict(MCP_ACCEPT, Host="mcp.example.com")
    r = curl(s.url("/mcp"), method="POST", data=json.dumps(INIT), headers=h, timeout=30)
    assert r.status == 200, r
    sid = r.header("mcp-session-id")
    assert sid and _sse_json(r)["result"]["serverInfo"]["name"] == "berth-host-checked", r
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "whoami", "arguments": {}}}
    r2 = curl(s.url("/mcp"), method="POST", data=json.dumps(call), timeout=30,
              headers=dict(h, **{"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-03-26"}))
    assert r2.status == 200, r2
    assert _sse_json(r2)["result"]["content"][0]["text"] == r.header("x-berth-instance")
    # with upstream_host: client the app sees the public name and refuses it, as it would
    # without the gateway: the route setting is what makes the difference
    r3 = curl(s.url("/mcp"), method="POST", data=json.dumps(INIT), timeout=30,
              headers=dict(MCP_ACCEPT, Host="mcp-client.example.com"))
    assert r3.status == 403, r3


# ------------------------------------------------------------------ a real browser

@pytest.mark.berth_timeout(240)
def test_browser_mcp_client_from_another_origin(kstack, pages):
    """Chromium runs an MCP client in a page of an allowed origin: its preflights are
    answered by the gateway, the answers are readable (Mcp-Session-Id exposed), and the
    session works; from an origin the route does not list, the browser refuses (no session
    was made for the refused preflight)."""
    ensure_chromium()
    s = kstack
    settle(s, template="mcp", pool=1)
    before = sessions(s)
    ok = run_node("cors_fetch.mjs", ["--page", pages[0] + "/", "--endpoint", s.url("/mcp"),
                                     "--timeout-ms", int(120 * SLOW * 1000)], 180)
    assert ok["ok"], ok
    assert ok["init"].get("status") == 200 and ok["init"]["sessionId"], ok
    assert ok["list"]["status"] == 200 and '"tools"' in ok["list"]["body"], ok
    assert len(new_sessions(s, before)) == 1
    bad = run_node("cors_fetch.mjs", ["--page", pages[1] + "/", "--endpoint", s.url("/mcp"),
                                      "--timeout-ms", int(120 * SLOW * 1000)], 180)
    assert bad["ok"] and "Failed to fetch" in bad["init"].get("error", ""), bad
    assert len(new_sessions(s, before)) == 1

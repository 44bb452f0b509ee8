"""Browsers through the gateway with real clients: Debian's Chromium driven by playwright-core
(tests/clients/browser_session.mjs, cdp_connect.mjs; never a downloaded browser), and Debian's
python3-websockets as a WebSocket client.

  - cookie sessions: a route with no_key: issue; the browser keeps the cookie across
    navigations (link, form, fetch) and stays on its one berth-echo instance;
  - WebSocket: tests/clients/ws_app.py as the app of a `ws` template; echo from inside a page;
    close from either side reaches the other; a silent peer is cut by stream_idle_timeout;
  - CDP: a `browser` template whose app is headless Chromium inside the sandbox, a route with
    cdp_rewrite: true, and playwright's connectOverCDP through the gateway;
  - the same over the gateway's TLS listener: wss:// in CDP answers, playwright over https and
    wss, a WebSocket tunnelled over TLS.

Needs root (the process sandbox), node + npm (tests/clients, npm ci), Debian's chromium and
python3-websockets (installed with apt-get when absent, else skipped with the reason).
Run: BERTH_BUILD_DIR=build /usr/bin/python3 -m pytest tests/integration/test_browser.py
"""

import asyncio
import json
import re
import secrets
import socket
import time

import pytest

from conftest import (DEV_KEY, SLOW, Stack, _remove_tree, _short_tmp, _skip_unless_root, curl,
                      echo_template, free_port, make_test_certs, wait_until)
from templates import (browser_template, ensure_chromium, ensure_clients, ensure_websockets,
                       run_node, sandbox_ro_binds, ws_template)


def base_overrides(idle_timeout=None):
    limits = {"start_timeout": "%ds" % (30 * SLOW)}
    if idle_timeout:
        limits["stream_idle_timeout"] = idle_timeout
    return {
        "templates": [
            echo_template(pool={"min": 2, "max": 6}),
            ws_template(pool={"min": 2, "max": 6}),
            browser_template(pool={"min": 1, "max": 3}),
        ],
        "scheduler": {"ro_binds": sandbox_ro_binds(), "capacity": 24},
        "gateway": {
            "limits": limits,
            "routes": [
                {"name": "echo-cookie", "path_prefix": "/echo/", "template": "echo",
                 "no_key": "issue"},
                {"name": "ws", "path_prefix": "/ws/", "template": "ws", "no_key": "issue",
                 "cookie": "berth_ws"},
                {"name": "cdp", "path_prefix": "/", "template": "browser", "cdp_rewrite": True,
                 "no_key": "reject"},
            ],
        },
    }


def _make(overrides, tls=False):
    _skip_unless_root()
    ensure_clients()
    ensure_chromium()
    ensure_websockets()
    d = _short_tmp()
    try:
        port = None
        if tls:  # a TLS listener too, with a test CA's certificate for 127.0.0.1
            certs = make_test_certs(d / "tls")
            port = free_port()
            overrides["gateway"]["tls_listen"] = "127.0.0.1:%d" % port
            overrides["gateway"]["tls"] = {"certificates": [
                {"cert": str(certs / "localhost-chain.pem"), "key": str(certs / "localhost.key")}]}
        s = Stack(d, overrides)
        s.tls_port, s.tls_ca = port, d / "tls" / "ca.pem"
    except BaseException:
        _remove_tree(d)
        raise
    return s, d


@pytest.fixture(scope="module")
def browser_stack():
    s, d = _make(base_overrides(), tls=True)
    try:
        yield s
    finally:
        problems = s.stop(check=False)
        _remove_tree(d)
    assert not problems, "\n".join(problems)


@pytest.fixture
def idle_stack():
    """Only the ws template, and a gateway whose stream_idle_timeout is 2 seconds."""
    o = base_overrides(idle_timeout="2s")
    o["templates"] = [t for t in o["templates"] if t["name"] != "browser"]
    o["gateway"]["routes"] = o["gateway"]["routes"][:2]
    s, d = _make(o)
    try:
        yield s
    finally:
        problems = s.stop(check=False)
        _remove_tree(d)
    assert not problems, "\n".join(problems)


COOKIE_RE = re.compile(r"^berth_session=([0-9a-f]{32}); Path=/; HttpOnly; SameSite=Lax$")


# ------------------------------------------------------------------ cookies (berth-echo)

@pytest.mark.berth_timeout(180)
def test_browser_cookie_session_and_websocket(browser_stack):
    s = browser_stack
    doc = run_node("browser_session.mjs", ["--url", s.url(), "--timeout-ms", 90000 * SLOW], 120)
    assert doc["ok"], "%s\n%s" % (doc.get("error"), doc.get("_stderr"))
    info = json.dumps({k: v for k, v in doc.items() if k != "_stderr"}, indent=1)[:6000]

    first, *later = doc["echo"]
    assert first["status"] == 200, info
    m = COOKIE_RE.match(first["setCookie"] or "")
    assert m, info
    sid = m.group(1)
    inst = first["instance"]
    assert first["session"] == sid and inst and first["echoInstance"] == inst, info
    assert first["cookieSent"] is None, info  # the first request had no cookie yet
    # link click and form GET: same session, same instance, no new cookie
    assert [r["echoPath"] for r in later] == ["/echo/b", "/echo/c"], info
    for r in later + [doc["fetch"]]:
        assert r["status"] == 200 and r["instance"] == inst and r["echoInstance"] == inst, info
        assert r["cookieSent"] == "berth_session=%s" % sid, info
    for r in later:
        assert r["setCookie"] is None and r["session"] == sid, info
    cookies = [c for c in doc["cookies"] if c["name"] == "berth_session"]
    assert len(cookies) == 1, doc["cookies"]
    c = cookies[0]
    assert c["value"] == sid and c["httpOnly"] and c["sameSite"] == "Lax" and c["path"] == "/"
    assert not c["secure"]  # plain HTTP listener
    # the control API sees the cookie's session (same key class as x-fc-session-id)
    r = s.api("GET", "/v1/sessions/%s" % sid)
    assert r.status == 200 and r.json()["instance"] == inst, r
    # another profile: another cookie, another instance
    o = doc["other"]
    m2 = COOKIE_RE.match(o["setCookie"] or "")
    assert o["status"] == 200 and m2 and m2.group(1) != sid, info
    assert o["instance"] != inst and o["echoInstance"] == o["instance"], info

    # WebSocket from inside a page of the ws app (its own route and cookie)
    ws = doc["ws"]
    page_inst = ws["page"]["instance"]
    assert ws["page"]["status"] == 200 and page_inst, info
    assert re.match(r"^berth_ws=[0-9a-f]{32}; Path=/; HttpOnly; SameSite=Lax$",
                    ws["page"]["setCookie"] or ""), info
    assert ws["page"]["title"] == "ws-app %s" % page_inst, info
    assert ws["page"]["info"]["instance"] == page_inst
    wsid = ws["page"]["setCookie"].split(";")[0].split("=", 1)[1]
    p = ws["inPage"]
    assert p["echo"] == "echo:hello" and p["bigOk"], info
    assert p["whoami"] == page_inst, info  # the WebSocket followed the cookie to the page's instance
    assert p["clientClose"]["code"] == 1000, info
    assert p["serverClose"]["code"] == 4001, info
    assert ws["stats"]["instance"] == page_inst, info

    # a WebSocket opened first (no page of its route loaded): the 101 answer issued the
    # cookie, so the profile's next WebSocket reached the same instance
    a, b = doc["wsFirst"]
    assert a == b and a.startswith("t"), doc["wsFirst"]
    assert doc["wsFirstCookies"] == ["berth_session", "berth_ws"], doc["wsFirstCookies"]

    # what the app saw of those two connections (same cookie: same instance)
    def stats():
        r = curl(s.url("/ws/stats"), headers={"Cookie": "berth_ws=%s" % wsid})
        assert r.status == 200 and r.header("x-berth-instance") == page_inst, r
        return r.json()
    st = wait_until(lambda: (lambda j: j if j["open"] == 0 and j["closed"] >= 2 else None)(
        stats()), 10 * SLOW, "both WebSockets ended at the app")
    assert st["opened"] == 2 and 1000 in st["close_codes"], st
    assert sorted(st["ends"]) == ["client-close", "server-close"], st


# ------------------------------------------------------------------ WebSocket close semantics

def ws_cookie(s):
    r = curl(s.url("/ws/page"))
    assert r.status == 200, r
    ck = r.header("set-cookie").split(";")[0]
    return ck, r.header("x-berth-instance")


def ws_stats(s, ck):
    r = curl(s.url("/ws/stats"), headers={"Cookie": ck})
    assert r.status == 200, r
    return r.json()


def ws_url(s, path="/ws/echo"):
    return s.url(path).replace("http://", "ws://")


async def _ws_connect(s, ck):
    import websockets
    return await websockets.connect(ws_url(s), extra_headers={"Cookie": ck}, ping_interval=None,
                                    close_timeout=5 * SLOW, open_timeout=10 * SLOW)


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout * SLOW))


def test_websocket_handshake_issues_the_cookie(browser_stack):
    """no_key: issue on a WebSocket route: the 101 answer carries Set-Cookie (and
    x-berth-instance), and a reconnect with that cookie reaches the same instance."""
    s = browser_stack

    async def go():
        import websockets
        ws = await websockets.connect(ws_url(s), ping_interval=None, open_timeout=10 * SLOW)
        h = ws.response_headers
        await ws.send("whoami")
        inst = await ws.recv()
        await ws.close()
        ck = h.get("set-cookie", "")
        ws2 = await _ws_connect(s, ck.split(";")[0])
        await ws2.send("whoami")
        inst2 = await ws2.recv()
        await ws2.close()
        return ck, h.get("x-berth-instance"), inst, inst2
    ck, hdr_inst, inst, inst2 = run(go())
    assert re.match(r"^berth_ws=[0-9a-f]{32}; Path=/; HttpOnly; SameSite=Lax$", ck), ck
    assert hdr_inst == inst == inst2, (hdr_inst, inst, inst2)


def test_websocket_client_close_reaches_the_app(browser_stack):
    s = browser_stack
    ck, inst = ws_cookie(s)

    async def go():
        ws = await _ws_connect(s, ck)
        await ws.send("whoami")
        assert await ws.recv() == inst
        await ws.close(code=1000, reason="done")
        return ws.close_code
    assert run(go()) == 1000
    st = wait_until(lambda: (lambda j: j if j["closed"] == 1 else None)(ws_stats(s, ck)),
                    10 * SLOW, "the app to see the close")
    assert st["open"] == 0 and st["close_codes"] == [1000] and st["ends"] == ["client-close"]


def test_websocket_client_vanishing_reaches_the_app(browser_stack):
    """The client's TCP connection goes away without a close frame: the gateway closes the
    app's side too (no half-open tunnel left behind)."""
    s = browser_stack
    ck, inst = ws_cookie(s)

    async def go():
        ws = await _ws_connect(s, ck)
        await ws.send("hi")
        assert await ws.recv() == "echo:hi"
        ws.transport.abort()  # RST/FIN, no close frame
    run(go())
    st = wait_until(lambda: (lambda j: j if j["closed"] == 1 else None)(ws_stats(s, ck)),
                    10 * SLOW, "the app to see the connection end")
    assert st["open"] == 0 and st["close_codes"] == [] and st["ends"] == ["eof"], st


def test_websocket_server_close_reaches_the_client(browser_stack):
    s = browser_stack
    ck, inst = ws_cookie(s)

    async def go():
        import websockets
        ws = await _ws_connect(s, ck)
        t0 = time.monotonic()
        await ws.send("close:4002")
        try:
            await ws.recv()
            raise AssertionError("message after close")
        except websockets.ConnectionClosed as e:
            code = e.code
        await ws.wait_closed()  # the TCP connection ended too
        return code, time.monotonic() - t0
    code, took = run(go())
    assert code == 4002 and took < 3 * SLOW, (code, took)
    st = wait_until(lambda: (lambda j: j if j["closed"] == 1 else None)(ws_stats(s, ck)),
                    10 * SLOW, "the app's connection to end")
    assert st["ends"] == ["server-close"], st


def test_websocket_idle_peer_is_cut_by_stream_idle_timeout(idle_stack):
    """stream_idle_timeout 2s: a tunnel with traffic every 0.5s lives on past it; a silent one
    is cut after it (client and app both see the end)."""
    s = idle_stack
    ck, inst = ws_cookie(s)

    async def busy():
        ws = await _ws_connect(s, ck)
        for i in range(8):  # 4 s of traffic, twice the idle timeout
            await ws.send("m%d" % i)
            assert await ws.recv() == "echo:m%d" % i
            await asyncio.sleep(0.5)
        await ws.close()

    async def silent():
        import websockets
        ws = await _ws_connect(s, ck)
        await ws.send("hi")
        assert await ws.recv() == "echo:hi"
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(ws.recv(), 15 * SLOW)
            raise AssertionError("a message arrived on an idle WebSocket")
        except websockets.ConnectionClosed as e:
            return e.code, time.monotonic() - t0
    run(busy())
    code, took = run(silent())
    assert code == 1006, code  # cut, no close frame: the gateway closed the TCP connection
    assert 1.5 <= took <= 6 * SLOW, took
    st = wait_until(lambda: (lambda j: j if j["closed"] == 2 else None)(ws_stats(s, ck)),
                    10 * SLOW, "the app to see the idle connection end")
    assert st["open"] == 0 and st["ends"][1] == "eof", st


# ------------------------------------------------------------------ CDP

def cdp_get(s, path, session):
    h = {"x-fc-session-id": session} if session else {}
    return curl(s.url(path), headers=h)


@pytest.mark.berth_timeout(180)
def test_cdp_through_the_gateway(browser_stack):
    s = browser_stack
    gw = "127.0.0.1:%d" % s.ports["gateway"]
    # no key: this route rejects (a browser must be a session's)
    r = cdp_get(s, "/json/version", None)
    assert r.status == 400 and r.json()["error"]["code"] == "session_key_required", r

    r = cdp_get(s, "/json/version", "b1")
    assert r.status == 200, r
    inst1 = r.header("x-berth-instance")
    v = r.json()
    assert v["webSocketDebuggerUrl"].startswith("ws://%s/devtools/browser/" % gw), v
    assert int(r.header("content-length")) == len(r.body)

    title = "berth-b1-%s" % secrets.token_hex(4)
    doc = run_node("cdp_connect.mjs", ["--url", s.url(), "--session", "b1", "--title", title,
                                       "--timeout-ms", 60000 * SLOW], 90)
    assert doc["ok"], "%s\n%s" % (doc.get("error"), doc.get("_stderr"))
    assert doc["title"] == title
    assert doc["computed"] == ["session b1", 42, True], doc
    assert "Chrome" in doc["version"] or doc["version"][0].isdigit(), doc

    # the page lives on in the session's browser: /json/list shows it, rewritten
    r = cdp_get(s, "/json/list", "b1")
    assert r.status == 200 and r.header("x-berth-instance") == inst1, r
    pages = [p for p in r.json() if p.get("title") == title]
    assert len(pages) == 1, r.json()
    p = pages[0]
    assert p["webSocketDebuggerUrl"] == "ws://%s/devtools/page/%s" % (gw, p["id"]), p
    if "devtoolsFrontendUrl" in p:
        assert "ws=%s/devtools/page/%s" % (gw, p["id"]) in p["devtoolsFrontendUrl"], p
    assert "ws://" not in r.text.replace("ws://%s/" % gw, ""), r.text  # nothing left unrewritten

    # a second connection of the same session reaches the same browser; another session
    # gets another browser that knows nothing of it
    again = run_node("cdp_connect.mjs", ["--url", s.url(), "--session", "b1"], 90)
    assert again["ok"] and title in again["titles"], again
    other = run_node("cdp_connect.mjs", ["--url", s.url(), "--session", "b2",
                                         "--title", "berth-b2"], 90)
    assert other["ok"] and other["title"] == "berth-b2" and title not in other["titles"], other
    r2 = cdp_get(s, "/json/version", "b2")
    assert r2.status == 200 and r2.header("x-berth-instance") not in (None, inst1), r2


@pytest.mark.berth_timeout(180)
def test_cdp_through_a_named_gateway_host(browser_stack):
    """Chromium's DevTools answers only requests whose Host is an IP address or localhost
    (its DNS-rebinding guard: 500 "Host header is specified and is not an IP address or
    localhost" otherwise). With upstream_host: instance (default) the browser gets its own
    address as Host, and the discovery answers are rewritten to the name the client used:
    GET /json/version, PUT /json/new and the WebSocket all work through a named gateway."""
    s = browser_stack
    port = s.ports["gateway"]
    name = "browsers.example.com:%d" % port
    h = {"x-fc-session-id": "b-named", "Host": name}
    r = curl(s.url("/json/version"), headers=h)
    assert r.status == 200, r
    browser_ws = r.json()["webSocketDebuggerUrl"]
    assert browser_ws.startswith("ws://%s/devtools/browser/" % name), browser_ws
    r = curl(s.url("/json/new?about:blank"), method="PUT", headers=h)
    assert r.status == 200, r
    page = r.json()
    assert page["webSocketDebuggerUrl"] == "ws://%s/devtools/page/%s" % (name, page["id"]), page
    if "devtoolsFrontendUrl" in page:
        assert "ws=%s/devtools/page/%s" % (name, page["id"]) in page["devtoolsFrontendUrl"]

    import websockets

    async def cdp(url, method, params=None):
        # connect to the gateway's address, with the URL's name as Host (no DNS needed)
        sock = socket.create_connection(("127.0.0.1", port))
        ws = await websockets.connect(url, sock=sock, extra_headers={"x-fc-session-id":
                                                                     "b-named"},
                                      ping_interval=None, open_timeout=20 * SLOW,
                                      max_size=None)
        try:
            await ws.send(json.dumps({"id": 1, "method": method, "params": params or {}}))
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("id") == 1:
                    return msg
        finally:
            await ws.close()
    v = asyncio.run(asyncio.wait_for(cdp(browser_ws, "Browser.getVersion"), 60 * SLOW))
    assert "Chrome" in v["result"]["product"] or "Chromium" in v["result"]["product"], v
    p = asyncio.run(asyncio.wait_for(cdp(page["webSocketDebuggerUrl"], "Runtime.evaluate",
                                         {"expression": "6 * 7", "returnByValue": True}),
                                     60 * SLOW))
    assert p["result"]["result"]["value"] == 42, p  # the page's own target answered


# ------------------------------------------------------------------ over TLS

@pytest.mark.berth_timeout(180)
def test_cdp_and_websockets_over_tls(browser_stack):
    """The TLS listener: CDP discovery answers name wss://, playwright's connectOverCDP works
    over https and wss (Node trusts the test CA through NODE_EXTRA_CA_CERTS), and a WebSocket
    is tunnelled over TLS to the same app as over the cleartext listener."""
    s = browser_stack
    gw = "127.0.0.1:%d" % s.tls_port
    base = "https://%s" % gw
    r = curl(base + "/json/version", headers={"x-fc-session-id": "btls"},
             extra=["--cacert", str(s.tls_ca)])
    assert r.status == 200, r
    v = r.json()
    assert v["webSocketDebuggerUrl"].startswith("wss://%s/devtools/browser/" % gw), v
    assert int(r.header("content-length")) == len(r.body)
    title = "berth-tls-%s" % secrets.token_hex(4)
    doc = run_node("cdp_connect.mjs", ["--url", base, "--session", "btls", "--title", title,
                                       "--timeout-ms", 60000 * SLOW], 90,
                   env={"NODE_EXTRA_CA_CERTS": str(s.tls_ca)})
    assert doc["ok"], "%s\n%s" % (doc.get("error"), doc.get("_stderr"))
    assert doc["title"] == title and doc["computed"] == ["session btls", 42, True], doc
    # the same session's browser, asked over the cleartext listener, has that page
    r = cdp_get(s, "/json/list", "btls")
    assert r.status == 200 and any(p.get("title") == title for p in r.json()), r.text

    import ssl

    async def go():
        import websockets
        ctx = ssl.create_default_context(cafile=str(s.tls_ca))
        ws = await websockets.connect("wss://%s/ws/echo" % gw, ssl=ctx, ping_interval=None,
                                      open_timeout=10 * SLOW, close_timeout=5 * SLOW)
        ck = ws.response_headers.get("set-cookie", "")
        msgs = []
        for m in ("hello over tls", "x" * 100000):
            await ws.send(m)
            msgs.append(await ws.recv())
        await ws.send("whoami")
        inst = await ws.recv()
        await ws.close()
        return ck, msgs, inst
    ck, msgs, inst = run(go())
    assert msgs == ["echo:hello over tls", "echo:" + "x" * 100000], [m[:40] for m in msgs]
    assert "; Secure" in ck, ck
    assert inst == ws_stats_instance(s, ck.split(";")[0]), (inst, ck)


def ws_stats_instance(s, ck):
    """The instance a cookie's session is on, asked over the cleartext listener."""
    async def go():
        ws = await _ws_connect(s, ck)
        await ws.send("whoami")
        inst = await ws.recv()
        await ws.close()
        return inst
    return run(go())

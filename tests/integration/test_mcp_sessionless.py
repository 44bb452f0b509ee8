"""Sessionless MCP through the gateway with real parts: a stateless MCP server written with the
official TypeScript SDK (StreamableHTTPServerTransport with sessionIdGenerator: undefined, a new
server + transport per request: the 2026-07-28 style, where no Mcp-Session-Id exists) runs as
the app of a sandbox template (tests/clients/mcp_stateless.mjs server); SDK clients
(StreamableHTTPClientTransport, tests/clients/mcp_stateless.mjs client) reach it through two
real berth-gateway replicas on one real redis-server, the session named only by the platform
key: the x-fc-session-id header, or the berth_session cookie.

For 5 keys at once, each key makes 3 client connections (a new SDK Client, transport and
connection pool each, alternating between the replicas) with 2 tool calls each, and:
  - no response ever carries an Mcp-Session-Id (and no MCP alias is stored in Redis);
  - every request of a key reaches one instance: the tool's BERTH_INSTANCE_ID equals the
    x-berth-instance header of its POST, and the app's per-process counter counts exactly that
    key's calls, 1..6 (no other key's call reached the instance);
  - different keys are on different instances; the control API shows each key's session on it;
  - the cookie and the header name the same session (same key, same instance);
  - keys of several users sharing one keep-alive connection per replica (one agent process,
    as Node's global fetch pools them) are still routed request by request.

Needs root (the process sandbox), node + npm (tests/clients is installed with npm ci).
Run: BERTH_BUILD_DIR=build /usr/bin/python3 -m pytest tests/integration/test_mcp_sessionless.py
"""

import os

import pytest

from conftest import SLOW, Stack, _remove_tree, _short_tmp, _skip_unless_root
from templates import CLIENTS, _sandbox_template, ensure_clients, run_node, sandbox_ro_binds
from test_mcp import Replica

TEMPLATE = "mcp-stateless"
N_KEYS = 5     # concurrent keys per run
ROUNDS = 3     # client connections per key (new Client, transport and connection pool each)
CALLS = 2      # tool calls per client connection
COOKIE = "berth_session"
STATELESS_APP = CLIENTS / "mcp_stateless.mjs"


def stateless_template():
    return _sandbox_template(TEMPLATE, ["/usr/bin/node", STATELESS_APP, "server"],
                             pool={"min": N_KEYS + 1, "max": 6 * N_KEYS})


@pytest.fixture(scope="module")
def sl_stack():
    _skip_unless_root()
    ensure_clients()
    d = _short_tmp()
    s = replica = None
    problems = []
    try:
        s = Stack(d, {
            "templates": [stateless_template()],
            "scheduler": {"ro_binds": sandbox_ro_binds(), "capacity": 8 * N_KEYS},
            "gateway": {
                "limits": {"start_timeout": "%ds" % (30 * SLOW)},
                # default key_headers [x-fc-session-id], cookie berth_session, no_key new
                "routes": [{"name": "mcp", "path_prefix": "/mcp", "template": TEMPLATE}],
            },
        })
        replica = Replica(s)
        s.replica = replica
        yield s
    finally:
        problems += replica.stop() if replica else []
        if s:
            problems += s.stop(check=False)
        _remove_tree(d)
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ helpers

def new_keys(tag, n=N_KEYS):
    run = os.urandom(4).hex()
    return ["sl-%s-%s-%d" % (tag, run, i) for i in range(n)]


def run_clients(s, keys, via, rounds=ROUNDS, calls=CALLS, timeout=120, extra=()):
    urls = [s.url(), s.replica.url()]
    args = ["client", "--url", ",".join(urls), "--key", ",".join(keys), "--via", via,
            "--cookie-name", COOKIE, "--rounds", rounds, "--calls", calls,
            "--timeout-ms", int((timeout - 10) * SLOW * 1000)] + list(extra)
    return run_node("mcp_stateless.mjs", args, timeout)


def summarize(doc):
    lines = ["ok=%s elapsed=%sms rc=%s error=%s" % (doc.get("ok"), doc.get("elapsedMs"),
                                                    doc.get("_rc"), doc.get("error"))]
    for k in doc.get("keys", []):
        lines.append("%s ok=%s err=%s" % (k["key"], k["ok"], (k.get("error") or "")[:400]))
        for r in k["rounds"]:
            lines.append("   via %s sid=%s calls=%s reqs=%s" % (
                r["replica"][-5:], r["transportSessionId"],
                [(c["instance"], c["count"], c["header"]) for c in r["calls"]],
                [(q["method"], q.get("status"), q.get("instance"), q.get("mcpSessionId"),
                  q.get("body", q.get("error", ""))[:80]) for q in r["requests"]]))
    lines.append("stderr: " + doc.get("_stderr", "")[-1500:])
    return "\n".join(lines)


def mcp_alias_keys(s):
    return s.redis.scan(s.key("a:*"))


def check_run(s, doc, keys, rounds=ROUNDS, calls=CALLS):
    """The checks of one client run; returns {key: instance}."""
    info = summarize(doc)
    assert doc["_rc"] == 0 and doc["ok"] and len(doc["keys"]) == len(keys), info
    replicas = {"127.0.0.1:%d" % s.ports["gateway"], "127.0.0.1:%d" % s.replica.port}
    placed = {}
    for k in doc["keys"]:
        key, where = k["key"], "key %s: " % k["key"]
        assert len(k["rounds"]) == rounds, where + info
        reqs = [q for r in k["rounds"] for q in r["requests"]]
        got = [c for r in k["rounds"] for c in r["calls"]]
        # sessionless: the server never minted an Mcp-Session-Id, the SDK never had one
        assert all(q.get("mcpSessionId") is None for q in reqs), where + info
        assert all(r["transportSessionId"] is None for r in k["rounds"]), where + info
        # The SDK opens its optional standalone-SSE GET in the background and aborts it itself
        # when the client closes; on a slow (sanitizer) run that can happen before the 405
        # arrives. Such a client-side abort says nothing about the gateway: leave it out.
        reqs = [q for q in reqs if not (q["method"] == "GET" and q.get("status") is None
                                        and "aborted" in (q.get("error") or ""))]
        # every exchange went through the gateway to one instance
        assert all(q.get("status") and not q.get("error") for q in reqs), where + info
        inst = {q["instance"] for q in reqs}
        assert len(inst) == 1 and None not in inst, where + info
        inst = inst.pop()
        # the app's only refusal is the stateless server's 405 to the standalone-SSE GET
        assert all(q["status"] < 400 or (q["method"] == "GET" and q["status"] == 405)
                   for q in reqs), where + info
        assert {q["method"] for q in reqs} <= {"POST", "GET"}, where + info  # no DELETE
        # every round initialized and called, over both replicas
        assert {r["replica"] for r in k["rounds"]} == replicas, where + info
        assert len(got) == rounds * calls, where + info
        # the app agrees: its own BERTH_INSTANCE_ID is the gateway's x-berth-instance...
        assert all(c["instance"] == inst and c["header"] == inst for c in got), where + info
        # ...and its per-process counter saw exactly this key's calls, in order
        assert [c["count"] for c in got] == list(range(1, rounds * calls + 1)), where + info
        assert len({c["pid"] for c in got}) == 1, where + info
        placed[key] = inst
    assert set(placed) == set(keys)
    assert len(set(placed.values())) == len(keys), "keys share instances: %s\n%s" % (
        placed, info)
    # nothing was learned as an MCP alias; the platform session of each key is on its instance
    assert mcp_alias_keys(s) == [], mcp_alias_keys(s)
    live = s.instances()
    for key, inst in placed.items():
        assert live.get(inst, {}).get("state") == "bound", (key, inst, live.get(inst))
        r = s.api("GET", "/v1/sessions/%s" % key)
        assert r.status == 200, r
        assert r.json()["instance"] == inst, (key, r.json())
    return placed


# ------------------------------------------------------------------ tests

@pytest.mark.berth_timeout(240)
def test_stateless_mcp_by_platform_key_header(sl_stack):
    """x-fc-session-id alone routes every request of a stateless MCP client."""
    s = sl_stack
    s.wait_pool(TEMPLATE, N_KEYS, timeout=90 * SLOW)
    keys = new_keys("h")
    placed = check_run(s, run_clients(s, keys, "header"), keys)
    s.header_placed = placed


@pytest.mark.berth_timeout(240)
def test_stateless_mcp_by_cookie(sl_stack):
    """Cookie: berth_session=<key> alone does the same."""
    s = sl_stack
    s.wait_pool(TEMPLATE, N_KEYS, timeout=90 * SLOW)
    keys = new_keys("c")
    placed = check_run(s, run_clients(s, keys, "cookie"), keys)
    earlier = set(getattr(s, "header_placed", {}).values())
    assert not earlier & set(placed.values()), (placed, earlier)


@pytest.mark.berth_timeout(240)
def test_stateless_mcp_cookie_and_header_name_one_session(sl_stack):
    """The header and the cookie carry the same kind of key: a key first used in the header and
    then in the cookie (and back) stays on its instance, whose counter goes on."""
    s = sl_stack
    s.wait_pool(TEMPLATE, 2, timeout=90 * SLOW)
    keys = new_keys("hc", 2)
    first = check_run(s, run_clients(s, keys, "header", rounds=2, calls=1), keys,
                      rounds=2, calls=1)
    doc = run_clients(s, keys, "cookie", rounds=2, calls=1)
    info = summarize(doc)
    assert doc["_rc"] == 0 and doc["ok"], info
    for k in doc["keys"]:
        got = [c for r in k["rounds"] for c in r["calls"]]
        assert all(c["instance"] == first[k["key"]] == c["header"] for c in got), info
        assert [c["count"] for c in got] == [3, 4], info  # after the header run's 1, 2
        assert all(q.get("mcpSessionId") is None for r in k["rounds"] for q in r["requests"])
    assert mcp_alias_keys(s) == []


@pytest.mark.berth_timeout(240)
def test_stateless_mcp_keys_sharing_one_connection(sl_stack):
    """One client process, 5 keys, one connection per replica for all of them (undici Agent
    with connections: 1): each request is routed by its own key, never by the connection."""
    s = sl_stack
    s.wait_pool(TEMPLATE, N_KEYS, timeout=90 * SLOW)
    keys = new_keys("p")
    check_run(s, run_clients(s, keys, "header", extra=["--shared-pool", 1]), keys)

"""GET /v1/events (issue 17): the caller's tenant's audit trail, paged by stream id, filtered by
session and type, and followed as SSE. What a hostile tenant could do with it: read another
tenant's events (it cannot: each tenant reads its own stream, P events:{tenant}), or hold
followers open (bounded by gateway.admin.max_connections_per_tenant, like any connection)."""
import hashlib
import json
import os
import select
import subprocess
import time

import pytest

from conftest import DEV_KEY, OTHER_KEY, SLOW, echo_template, wait_until

pytestmark = pytest.mark.berth_timeout(180)


@pytest.fixture
def ev_stack(make_stack):
    return make_stack({"templates": [echo_template(pool={"min": 1, "max": 4})],
                       "gateway": {"admin": {"events_poll": "100ms"}}})


AUDIT_KEY = "berth-audit-key"  # a second key of tenant default (kid_stack)


def sha256(text):
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def kid_stack(make_stack):
    """Tenant default with two API keys; echo (a warm pool: a create is bound by the claim
    script) and cold (no pool: the scheduler starts one and its bind script binds it), routed
    at /cold/ for the data plane."""
    return make_stack({
        "tenants": [{"name": "default", "api_keys_sha256": [sha256(DEV_KEY), sha256(AUDIT_KEY)]},
                    {"name": "other", "api_keys_sha256": [sha256(OTHER_KEY)]}],
        "templates": [echo_template(pool={"min": 1, "max": 4}),
                      echo_template("cold", pool={"min": 0, "max": 2})],
        "gateway": {"admin": {"events_poll": "100ms"},
                    "routes": [{"name": "cold", "path_prefix": "/cold/", "template": "cold"},
                               {"name": "default", "path_prefix": "/"}]}})


def events(s, query="", key=None):
    kw = {"key": key} if key else {}
    r = s.api("GET", "/v1/events" + query, **kw)
    assert r.status == 200, r
    return r.json()


def test_the_trail_of_a_session(ev_stack):
    s = ev_stack
    assert s.get("/", session="ev-1").status == 200
    assert s.api("POST", "/v1/sessions/ev-1/pause").status == 200
    assert s.api("POST", "/v1/sessions/ev-1/resume").status == 200
    r = s.api("POST", "/v1/sessions/ev-1/exec", {"cmd": ["/bin/sh", "-c", "exit 4"]})
    assert r.status == 200
    assert s.get("/", session="ev-2").status == 200
    assert s.api("DELETE", "/v1/sessions/ev-1").status == 204

    def trail():
        j = events(s, "?session=ev-1")
        types = [e["type"] for e in j["events"]]
        return j if "deleted" in types and "exec_ended" in types else None
    j = wait_until(trail, 10 * SLOW, "the session's events")
    types = [e["type"] for e in j["events"]]
    for t in ("created", "bound", "paused", "resumed", "exec_started", "exec_ended", "deleted"):
        assert t in types, types
    assert types.index("created") < types.index("paused") < types.index("resumed") \
        < types.index("deleted")
    h = j["events"][0]["session"]
    assert all(e["session"] == h and e["tenant"] == "default" for e in j["events"])
    assert all(isinstance(e["ts"], int) and e["id"] for e in j["events"])
    started = [e for e in j["events"] if e["type"] == "exec_started"][0]
    ended = [e for e in j["events"] if e["type"] == "exec_ended"][0]
    assert started["cmd"] == "/bin/sh -c exit 4" and len(started["key_id"]) == 12
    assert ended["end"].startswith("code=4 ") and ended["timed_out"] == "0"
    paused = [e for e in j["events"] if e["type"] == "paused"][0]
    assert paused["reason"] == "api" and paused["instance"]
    # The API key that asked: the first 12 hex digits of its SHA-256, as the config lists it.

    kid = hashlib.sha256(b"berth-dev-key").hexdigest()[:12]
    for t in ("paused", "resumed", "exec_started", "exec_ended", "deleted"):
        assert [e for e in j["events"] if e["type"] == t][0]["key_id"] == kid, t
    assert "key_id" not in [e for e in j["events"] if e["type"] == "bound"][0]
    # Filters and paging.
    only = events(s, "?type=paused,resumed")["events"]
    assert [e["type"] for e in only] == ["paused", "resumed"]
    every, since, pages = [], "", 0
    while pages < 50:
        j = events(s, "?limit=2" + ("&since=" + since if since else ""))
        every += j["events"]
        pages += 1
        if not j["more"]:
            break
        since = j["next_since"]
    assert pages > 2 and len({e["id"] for e in every}) == len(every)
    assert {e["session"] for e in every} >= {h}
    assert every == sorted(every, key=lambda e: tuple(int(x) for x in e["id"].split("-")))
    # Another tenant sees nothing of it.
    assert events(s, key=OTHER_KEY)["events"] == []
    assert events(s, "?session=ev-1", key=OTHER_KEY)["events"] == []


def test_follow_streams_new_events(ev_stack):
    s = ev_stack
    p = subprocess.Popen(["curl", "-sS", "-N", "-H", "Authorization: Bearer berth-dev-key",
                          s.admin_url("/v1/events?follow=1&type=created")],
                         stdout=subprocess.PIPE, bufsize=0)
    try:
        time.sleep(0.3)  # the follower starts from now on: this session comes after it
        assert s.get("/", session="ev-follow").status == 200
        buf, t0 = b"", time.monotonic()
        while b"\n\n" not in buf and time.monotonic() - t0 < 10 * SLOW:
            if select.select([p.stdout], [], [], 0.5)[0]:
                buf += os.read(p.stdout.fileno(), 4096)
        lines = buf.decode().split("\n")
        assert lines[0].startswith("id: ") and lines[1] == "event: created", lines
        ev = json.loads(lines[2][len("data: "):])
        assert ev["type"] == "created" and ev["tenant"] == "default"
        first_id = lines[0][4:]
    finally:
        p.kill()
        p.wait()
    # Last-Event-ID picks up after it: the next created event only.
    assert s.get("/", session="ev-follow-2").status == 200
    r = subprocess.run(["curl", "-sS", "-N", "--max-time", str(2 * SLOW),
                        "-H", "Authorization: Bearer berth-dev-key",
                        "-H", "Last-Event-ID: " + first_id,
                        s.admin_url("/v1/events?follow=1&type=created")],
                       capture_output=True, text=True)
    got = [json.loads(x[6:]) for x in r.stdout.split("\n") if x.startswith("data: ")]
    assert len(got) == 1 and got[0]["id"] != first_id


def test_events_bad_input(ev_stack):
    s = ev_stack
    for q in ("?limit=0", "?limit=100000", "?type=Bad", "?since=abc", "?since=1-2-3",
              "?follow=maybe", "?other=1", "?session=" + "x" * 200):
        r = s.api("GET", "/v1/events" + q)
        assert r.status == 400 and r.json()["error"]["code"] == "invalid_argument", (q, r)
    assert s.api("POST", "/v1/events").status == 405
    assert s.api("GET", "/v1/events", key="wrong").status == 401


def test_key_id_of_created_bound_updated(kid_stack):
    """created, bound and updated carry the id of the API key whose call caused them (the first
    12 hex digits of its SHA-256), whether the claim script bound a warm instance or the
    scheduler's bind script one it started; a session the data plane made has no API key, so
    its created and bound events have no key_id."""
    s = kid_stack
    kid = sha256(AUDIT_KEY)[:12]
    assert kid != sha256(DEV_KEY)[:12]
    assert s.pool_len("echo") >= 1 and s.pool_len("cold") == 0
    for sid, tpl in (("kid-warm", "echo"), ("kid-cold", "cold")):
        r = s.api("POST", "/v1/sessions", {"id": sid, "template": tpl}, key=AUDIT_KEY,
                  timeout=30)
        assert r.status == 201 and r.json()["template"] == tpl, r
        r = s.api("PATCH", "/v1/sessions/" + sid, {"ttl": 600}, key=AUDIT_KEY)
        assert r.status == 200, r
    # Keyless: a warm one (the claim script) and a started one (the bind script).
    assert s.get("/", session="kid-dp").status == 200
    assert s.get("/cold/", session="kid-dp-cold").status == 200

    def trail(sid, want):
        def got():
            evs = events(s, "?session=" + sid)["events"]
            return evs if want <= {e["type"] for e in evs} else None
        return wait_until(got, 10 * SLOW, "the events of " + sid)

    for sid in ("kid-warm", "kid-cold"):
        evs = trail(sid, {"created", "bound", "updated"})
        for t in ("created", "bound", "updated"):
            e = [e for e in evs if e["type"] == t]
            assert len(e) == 1 and e[0]["key_id"] == kid, (sid, t, evs)
    for sid in ("kid-dp", "kid-dp-cold"):
        evs = trail(sid, {"created", "bound"})
        for t in ("created", "bound"):
            e = [e for e in evs if e["type"] == t]
            assert len(e) == 1 and "key_id" not in e[0], (sid, t, evs)
    # The key's id only: never the key.
    raw = json.dumps(events(s)["events"])
    assert AUDIT_KEY not in raw and DEV_KEY not in raw

"""Preview links: a person's browser opens http://<port>-<session>.<domain>/ and reaches <port>
inside that session's sandbox (the gateway asks berth-agent for the port on its ports socket).

The template's app runs two berth-echo servers in one sandbox: 8000 (the app port the agent
relays ordinary requests to) and 8001 (something an agent started, like a dev server).
"""
import pytest

from conftest import binary, echo_template

DOMAIN = "preview.localhost"


@pytest.fixture(scope="module")
def pstack(request):
    from conftest import Stack, _remove_tree, _short_tmp, _skip_unless_root
    _skip_unless_root()
    echo = binary("berth-echo")
    tpl = echo_template(app={"command": ["/bin/sh", "-c",
                                         "%s --port 8001 & exec %s --port 8000" % (echo, echo)],
                             "port": 8000})
    d = _short_tmp()
    s = Stack(d, {"templates": [tpl],
                  "gateway": {"routes": [{"name": "preview", "preview_domain": DOMAIN}]}})
    yield s
    try:
        s.stop()
    finally:
        _remove_tree(d)


def preview(stack, port, key, path="/"):
    return stack.get(path, headers={"Host": "%d-%s.%s" % (port, key, DOMAIN)})


def test_preview_reaches_the_port_in_the_sessions_sandbox(pstack):
    main = pstack.get("/hello", session="pv1")
    assert main.status == 200, main
    inst, pid = main.json()["instance"], main.json()["pid"]

    other = preview(pstack, 8001, "pv1", "/page")
    assert other.status == 200, other
    body = other.json()
    # Same sandbox (instance id, hostname), another process: the server on port 8001.
    assert body["instance"] == inst
    assert body["hostname"] == main.json()["hostname"]
    assert body["pid"] != pid
    assert body["path"] == "/page"
    assert other.header("x-berth-instance") == inst

    same = preview(pstack, 8000, "pv1")
    assert same.status == 200 and same.json()["pid"] == pid and same.json()["instance"] == inst


def test_preview_connections_are_pooled_per_port(pstack):
    pstack.get("/", session="pv2")
    pids = {preview(pstack, 8001, "pv2").json()["pid"] for _ in range(5)}
    assert len(pids) == 1
    assert preview(pstack, 8000, "pv2").json()["pid"] not in pids


def test_preview_of_an_unknown_session_is_404_and_starts_nothing(pstack):
    before = len(pstack.instances())
    r = preview(pstack, 8001, "never-created")
    assert r.status == 404, r
    assert r.json()["error"]["code"] == "session_not_found"
    assert len(pstack.instances()) == before


def test_preview_of_a_port_nobody_listens_on_is_502_and_keeps_the_session(pstack):
    first = pstack.get("/", session="pv3")
    r = preview(pstack, 8002, "pv3")
    assert r.status == 502, r
    assert r.json()["error"]["code"] == "bad_gateway"
    again = pstack.get("/", session="pv3")
    assert again.status == 200 and again.json()["instance"] == first.json()["instance"]


def test_hosts_that_are_not_preview_hosts_route_normally(pstack):
    for host in ("99999-pv1.%s" % DOMAIN, "pv1.%s" % DOMAIN, "8001-pv1.other.localhost",
                 "8001-.%s" % DOMAIN):
        r = pstack.get("/", session="plain", headers={"Host": host})
        assert r.status == 200, (host, r)
        assert r.json()["path"] == "/"


def test_preview_of_a_lost_session_starts_nothing(pstack):
    """A lookup never binds: with on_lost: replace, the preview link of a session whose
    instance died answers 502 instance_lost and leaves the session lost; the session's own
    next request gets the replacement."""
    import time
    from conftest import SLOW, wait_until
    first = pstack.get("/", session="pv4")
    assert first.status == 200, first
    inst = first.json()["instance"]
    r = pstack.get("/exit", session="pv4", method="POST", data=b"")
    assert r.status == 200 and r.json()["exiting"] is True, r

    def state():
        for k in pstack.redis.scan(pstack.key("s:*")):
            h = pstack.redis.hgetall(k)
            if h.get("key") == "pv4":
                return h
        return {}
    wait_until(lambda: state().get("state") == "lost", 15 * SLOW, "the loss recorded")
    for _ in range(3):
        r = preview(pstack, 8001, "pv4")
        assert r.status == 502, r
        assert r.json()["error"]["code"] == "instance_lost"
    time.sleep(0.3)
    assert state().get("state") == "lost"
    assert state().get("instance") == inst  # nothing was bound in its place
    again = pstack.get("/", session="pv4", timeout=15)
    assert again.status == 200, again
    assert again.json()["instance"] != inst

"""The instance relay (issue 18): with scheduler.instance_relay.listen set, every instance is
published as "relay:<host:port>/<kind>/<id>" and gateways reach it through the scheduler host's
relay, which takes a connection only after the gateway's line "BERTH-RELAY <id> <channel>
<time> <HMAC>" (scheduler/relay.h). Real berth-scheduler (process sandboxes), berth-gateway,
redis-server, curl; the hostile client is a raw socket.

    BERTH_BUILD_DIR=build /usr/bin/python3 -m pytest tests/integration/test_instance_relay.py
"""
import hashlib
import os
import signal
import hmac
import json
import socket
import time
import zlib

import pytest

from conftest import (SCHED_SECRET, SLOW, Stack, _remove_tree, _short_tmp, _skip_unless_root,
                      binary, curl, curl_stream, echo_template, free_port, wait_until)

pytestmark = pytest.mark.berth_timeout(240)

DOMAIN = "preview.localhost"


def relay_config(port):
    return {"listen": "127.0.0.1:%d" % port, "handshake_timeout": "1s"}


@pytest.fixture(scope="module")
def rstack():
    _skip_unless_root()
    echo = binary("berth-echo")
    # Two servers in each sandbox: the app (8000) and one reached as a preview port (8001),
    # through the agent's ports socket: the relay's "ports" channel.
    tpl = echo_template(app={"command": ["/bin/sh", "-c",
                                         "%s --port 8001 & exec %s --port 8000" % (echo, echo)],
                             "port": 8000}, pool={"min": 2, "max": 4})
    d = _short_tmp()
    port = free_port()
    s = Stack(d, {"templates": [tpl],
                  "scheduler": {"instance_relay": relay_config(port)},
                  "gateway": {"routes": [{"name": "preview", "preview_domain": DOMAIN}]}})
    s.relay_port = port
    yield s
    try:
        s.stop()
    finally:
        _remove_tree(d)


def hello(inst, channel="app", ts=None, secret=SCHED_SECRET):
    ts = int(time.time()) if ts is None else ts
    msg = ("berth-relay %s %s %d" % (inst, channel, ts)).encode()
    mac = hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()
    return ("BERTH-RELAY %s %s %d %s\r\n" % (inst, channel, ts, mac)).encode()


def talk(port, data, timeout=10, host="127.0.0.1"):
    """Connects to the relay, sends <data>, and returns every byte it answers until it closes
    (or <timeout> seconds pass: then None)."""
    with socket.create_connection((host, port), timeout=timeout * SLOW) as c:
        if data:
            c.sendall(data)
        got = b""
        try:
            while True:
                b = c.recv(65536)
                if not b:
                    return got
                got += b
        except socket.timeout:
            return None
        except ConnectionResetError:
            return got


def sched_status(s):
    r = curl("http://127.0.0.1:%d/v1/status" % s.ports["scheduler"],
             headers={"Authorization": "Bearer " + SCHED_SECRET})
    assert r.status == 200, r
    return r.json()


def test_sessions_reach_their_instance_through_the_relay(rstack):
    s = rstack
    r = s.get("/hello", session="rl-1")
    assert r.status == 200, r
    inst = r.header("x-berth-instance")
    addr = s.redis.hgetall(s.key("i:", inst))["addr"]
    assert addr == "relay:127.0.0.1:%d/proc/%s" % (s.relay_port, inst)
    host = s.redis.hgetall(s.key("host:", s.host_id))
    assert host["relay"] == "127.0.0.1:%d" % s.relay_port
    # Sticky through the relay, on pooled connections.
    for _ in range(10):
        r2 = s.get("/", session="rl-1")
        assert r2.status == 200 and r2.header("x-berth-instance") == inst
    st = sched_status(s)["relay"]
    assert st["relayed"] >= 1 and st["advertise"] == "127.0.0.1:%d" % s.relay_port


def test_bodies_both_ways_are_relayed_intact(rstack, tmp_path):
    s = rstack
    body = bytes(range(256)) * 4096 * 5  # 5 MiB
    src = tmp_path / "up.bin"
    src.write_bytes(body)
    r = curl(s.url("/upload"), method="POST", data_file=str(src),
             headers={"x-fc-session-id": "rl-body"}, timeout=60)
    assert r.status == 200, r
    assert r.json()["body_bytes"] == len(body)
    assert r.json()["body_crc32"] == zlib.crc32(body)
    out = tmp_path / "down.bin"
    r = curl(s.url("/bytes?n=%d" % (20 << 20)), headers={"x-fc-session-id": "rl-body"},
             output=str(out), timeout=60)
    assert r.status == 200, r
    assert out.stat().st_size == 20 << 20


def test_sse_streams_through_the_relay_unbuffered(rstack):
    s = rstack
    arrivals = []
    for t, line in curl_stream(s.url("/sse?n=3&interval_ms=800"),
                               headers={"x-fc-session-id": "rl-sse"}, timeout=30):
        if line.startswith("data: "):
            arrivals.append((t, json.loads(line[6:])["i"]))
    assert [i for _, i in arrivals] == [0, 1, 2]
    # The server writes them 0.8 s apart: a relay that held them would deliver them together.
    assert arrivals[-1][0] - arrivals[0][0] >= 1.2, arrivals


def test_exec_and_preview_ports_use_the_relays_ports_channel(rstack):
    s = rstack
    r = s.get("/", session="rl-ports")
    assert r.status == 200, r
    inst, pid = r.header("x-berth-instance"), r.json()["pid"]
    x = s.api("POST", "/v1/sessions/rl-ports/exec", {"cmd": ["/bin/sh", "-c", "echo hi; hostname"]},
              timeout=30 * SLOW)
    assert x.status == 200, x
    events = [json.loads(line) for line in x.body.decode().splitlines() if line]
    out = "".join(e.get("data", "") for e in events if e["type"] == "stdout")
    assert out.split() == ["hi", inst]
    assert events[-1]["type"] == "exit" and events[-1]["exit_code"] == 0
    p = s.get("/page", headers={"Host": "8001-rl-ports.%s" % DOMAIN})
    assert p.status == 200, p
    assert p.json()["instance"] == inst and p.json()["pid"] != pid


def test_the_relay_gives_nothing_without_the_gateways_line(rstack):
    s = rstack
    r = s.get("/", session="rl-hostile")
    assert r.status == 200, r
    inst = r.header("x-berth-instance")
    port = s.relay_port
    request = (b"GET / HTTP/1.1\r\nHost: x\r\nx-fc-session-id: rl-hostile\r\n"
               b"Connection: close\r\n\r\n")
    refused0 = sched_status(s)["relay"]["refused"]
    # The positive control: the same request after a right line is answered by the instance.
    ok = talk(port, hello(inst) + request)
    assert ok and ok.startswith(b"HTTP/1.1 200"), ok
    assert json.loads(ok.split(b"\r\n\r\n", 1)[1])["instance"] == inst
    attempts = {
        "plain HTTP": request,
        "another secret": hello(inst, secret="x" * 40) + request,
        "a line from 2 minutes ago": hello(inst, ts=int(time.time()) - 120) + request,
        "a line from the future": hello(inst, ts=int(time.time()) + 120) + request,
        "an instance not on this host": hello(inst + "x") + request,
        "a channel that does not exist": hello(inst, channel="ctl") + request,
        "a MAC for another instance": hello(inst).replace(inst.encode(), (inst[:-1] + "0").encode()
                                                         if not inst.endswith("0")
                                                         else (inst[:-1] + "1").encode()) + request,
        "a line with no end": b"BERTH-RELAY " + b"a" * 400,
    }
    for what, data in attempts.items():
        got = talk(port, data)
        assert got == b"", "%s: the relay answered %r" % (what, got)
    # A client that sends nothing is dropped after handshake_timeout (1 s here).
    t0 = time.monotonic()
    assert talk(port, b"", timeout=20) == b""
    assert time.monotonic() - t0 < 10 * SLOW
    refused = sched_status(s)["relay"]["refused"] - refused0
    assert refused >= len(attempts) + 1, refused


def test_a_restarted_scheduler_relays_to_the_instances_it_adopted(rstack):
    s = rstack
    r = s.get("/", session="rl-restart")
    assert r.status == 200, r
    inst = r.header("x-berth-instance")
    s.stop_scheduler()
    s.start_scheduler()
    wait_until(lambda: sched_status(s).get("recovered"), 30 * SLOW, "scheduler recovery")
    for _ in range(3):
        r2 = s.get("/", session="rl-restart")
        assert r2.status == 200, r2
        assert r2.header("x-berth-instance") == inst


def relay_pids(s):
    """Pids of the scheduler's berth-relay children."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        comm = st[st.index("(") + 1:st.rindex(")")]
        ppid = int(st[st.rindex(")") + 2:].split()[1])
        if comm == "berth-relay" and ppid == s.scheduler.pid:
            out.append(int(d))
    return out


def test_a_relay_process_that_dies_is_replaced_and_knows_every_instance(rstack):
    """The relay is a process of the scheduler's (berth-relay): killed, the scheduler forks
    another on the same listener and tells it every live instance."""
    s = rstack
    r = s.get("/", session="rl-crash")
    assert r.status == 200, r
    inst = r.header("x-berth-instance")
    old = relay_pids(s)
    assert len(old) == 1, old
    os.kill(old[0], signal.SIGKILL)
    wait_until(lambda: relay_pids(s) and relay_pids(s) != old, 10 * SLOW, "a new relay process")
    wait_until(lambda: "relay process started again" in s.scheduler.log(), 10 * SLOW,
               "the scheduler's note of it")
    for _ in range(3):
        r2 = s.get("/", session="rl-crash")
        assert r2.status == 200 and r2.header("x-berth-instance") == inst, r2

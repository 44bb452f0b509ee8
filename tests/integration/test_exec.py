"""POST /v1/sessions/{id}/exec (issue 17): a command runs inside the session's sandbox through
berth-agent's exec channel, its output streamed back as it is produced (NDJSON, or SSE), with
its exit code, signal and duration. What a hostile tenant could do with it: run anything in
its own sandbox (that is the point: the command has the app's user, namespaces, limits and
seccomp filter, never the host's, which these tests check), run many commands (bounded by
scheduler.exec_max), or try another tenant's session (404)."""
import json
import os
import subprocess
import time

import pytest

from conftest import OTHER_KEY, SLOW, curl, echo_template, wait_until

pytestmark = pytest.mark.berth_timeout(240)


def exec_stack(make_stack, **sched):
    tpl = echo_template(pool={"min": 1, "max": 4})
    return make_stack({"templates": [tpl], "scheduler": dict({"capacity": 16}, **sched)})


def bind(stack, key):
    r = stack.get("/", session=key)
    assert r.status == 200, r
    return r.header("x-berth-instance")


def run(stack, key, body, key_header=None, accept=None, timeout=30):
    """POST .../exec: (status, [events] or error json, raw body)."""
    headers = {}
    if accept:
        headers["Accept"] = accept
    kw = {"key": key_header} if key_header else {}
    r = stack.api("POST", "/v1/sessions/%s/exec" % key, body, headers=headers,
                  timeout=timeout * SLOW, **kw)
    if r.status != 200 or accept:
        return r.status, (r.json() if r.status != 200 else None), r
    return r.status, [json.loads(line) for line in r.body.decode().splitlines() if line], r


def out_of(events, kind="stdout"):
    return "".join(e.get("data", "") for e in events if e["type"] == kind)


def test_exec_runs_inside_the_sandbox(make_stack):
    s = exec_stack(make_stack)
    inst = bind(s, "x-inside")
    st, ev, r = run(s, "x-inside", {"cmd": ["/bin/sh", "-c",
                                            "id -u; hostname; echo err >&2; pwd; exit 3"]})
    assert st == 200, ev
    assert r.header("Content-Type") == "application/x-ndjson"
    assert r.header("X-Berth-Instance") == inst
    lines = out_of(ev).split()
    assert lines[0] == "1000"        # the app's user, not root
    assert lines[1] == inst          # the sandbox's own hostname
    assert lines[2] == "/workspace"  # its workspace
    assert out_of(ev, "stderr") == "err\n"
    end = ev[-1]
    assert end["type"] == "exit" and end["exit_code"] == 3 and end["signal"] is None
    assert end["timed_out"] is False and end["duration_ms"] >= 0
    # The host's files are not there; the workspace is the app's (the echo app sees the file).
    st, ev, _ = run(s, "x-inside", {"cmd": ["/bin/sh", "-c",
                                            "ls /root /home 2>&1; echo hi > /workspace/fromexec; "
                                            "cat /proc/1/cmdline | tr '\\0' ' '"]})
    assert "No such file" in out_of(ev) and "berth-agent" in out_of(ev)
    r = s.get("/workspace/fromexec", session="x-inside")
    assert r.status == 200 and r.body == b"hi\n"
    # env, cwd, stdin.
    st, ev, _ = run(s, "x-inside", {"cmd": ["/bin/sh", "-c", 'echo "$GREETING $HOME"; pwd; cat'],
                                    "env": {"GREETING": "hello"}, "cwd": "/tmp",
                                    "stdin": "from stdin\n"})
    assert out_of(ev) == "hello /workspace\n/tmp\nfrom stdin\n"
    assert ev[-1]["exit_code"] == 0


def test_exec_streams_output_as_it_is_produced(make_stack):
    s = exec_stack(make_stack)
    bind(s, "x-stream")
    body = json.dumps({"cmd": ["/bin/sh", "-c",
                               "for i in 1 2 3; do echo tick$i; sleep 0.4; done"]})
    p = subprocess.Popen(["curl", "-sS", "-N", "-H", "Authorization: Bearer berth-dev-key",
                          "-H", "Accept: text/event-stream", "--data-binary", body,
                          s.admin_url("/v1/sessions/x-stream/exec")],
                         stdout=subprocess.PIPE, bufsize=0)
    try:
        t0 = time.monotonic()
        seen = []
        buf = b""
        while len(seen) < 4 and time.monotonic() - t0 < 20 * SLOW:
            chunk = os.read(p.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            while b"\n\n" in buf:
                ev, buf = buf.split(b"\n\n", 1)
                seen.append((time.monotonic() - t0, ev.decode()))
        assert [e.split("\n")[0] for _t, e in seen] == ["event: stdout"] * 3 + ["event: exit"]
        # The first line came before the command ended (it takes 1.2 s in all).
        assert seen[0][0] < seen[3][0] - 0.5
        assert json.loads(seen[0][1].split("data: ", 1)[1]) == {"type": "stdout",
                                                                "data": "tick1\n"}
    finally:
        p.kill()
        p.wait()


def test_exec_timeout_client_gone_and_limits(make_stack):
    s = exec_stack(make_stack, exec_max=2)
    inst = bind(s, "x-limits")
    st, ev, _ = run(s, "x-limits", {"cmd": ["/bin/sleep", "30"], "timeout": 1})
    assert st == 200
    assert ev[-1] == {"type": "exit", "exit_code": None, "signal": 9, "timed_out": True,
                      "duration_ms": ev[-1]["duration_ms"]}
    assert 900 <= ev[-1]["duration_ms"] < 10000
    # A command that cannot start: 400 exec_failed, with the reason.
    st, err, _ = run(s, "x-limits", {"cmd": ["/no/such/program"]})
    assert st == 400 and err["error"]["code"] == "exec_failed"
    assert "No such file" in err["error"]["message"]
    st, err, _ = run(s, "x-limits", {"cmd": ["/bin/true"], "cwd": "/no/such/dir"})
    assert st == 400 and err["error"]["code"] == "exec_failed"
    # Two at once at most (exec_max 2): a third is 429 too_many_execs with Retry-After.
    body = json.dumps({"cmd": ["/bin/sleep", "20"]})
    ps = [subprocess.Popen(["curl", "-sS", "-N", "-H", "Authorization: Bearer berth-dev-key",
                            "--data-binary", body, s.admin_url("/v1/sessions/x-limits/exec")],
                           stdout=subprocess.DEVNULL) for _ in range(2)]
    try:
        def sleeps():
            out = subprocess.run(["pgrep", "-f", "^/bin/sleep 20$"], capture_output=True,
                                 text=True).stdout.split()
            return out if len(out) == 2 else None
        pids = wait_until(sleeps, 10 * SLOW, "two commands running")
        st, err, r = run(s, "x-limits", {"cmd": ["/bin/true"]})
        assert st == 429 and err["error"]["code"] == "too_many_execs", err
        assert r.header("Retry-After")
        # The clients go away: their commands are killed.
        for p in ps:
            p.kill()
            p.wait()
        wait_until(lambda: not any(os.path.exists("/proc/%s" % pid) for pid in pids),
                   10 * SLOW, "the commands to be killed")
    finally:
        for p in ps:
            if p.poll() is None:
                p.kill()
                p.wait()
    st, ev, _ = run(s, "x-limits", {"cmd": ["/bin/true"]})
    assert st == 200 and ev[-1]["exit_code"] == 0
    assert inst


def test_exec_bad_input_and_other_tenants(make_stack):
    s = exec_stack(make_stack)
    bind(s, "x-bad")
    for body, code in (({}, "invalid_argument"),
                       ({"cmd": []}, "invalid_argument"),
                       ({"cmd": "ls"}, "invalid_argument"),
                       ({"cmd": [""]}, "invalid_argument"),
                       ({"cmd": ["a\u0000b"]}, "invalid_argument"),
                       ({"cmd": ["ls"], "env": {"1X": "y"}}, "invalid_argument"),
                       ({"cmd": ["ls"], "cwd": "relative"}, "invalid_argument"),
                       ({"cmd": ["ls"], "timeout": 0}, "invalid_argument"),
                       ({"cmd": ["ls"], "timeout": 999999}, "invalid_argument"),
                       ({"cmd": ["ls"], "sudo": True}, "invalid_argument")):
        st, err, _ = run(s, "x-bad", body)
        assert st == 400 and err["error"]["code"] == code, (body, err)
    r = curl(s.admin_url("/v1/sessions/x-bad/exec"), method="POST", data=b"not json",
             headers={"Authorization": "Bearer berth-dev-key"})
    assert r.status == 400 and r.json()["error"]["code"] == "bad_request"
    st, err, _ = run(s, "x-bad", {"cmd": ["/bin/true"]}, key_header=OTHER_KEY)
    assert st == 404 and err["error"]["code"] == "not_found"
    st, err, _ = run(s, "nosuch", {"cmd": ["/bin/true"]})
    assert st == 404
    r = s.api("GET", "/v1/sessions/x-bad/exec")
    assert r.status == 405 and r.header("Allow") == "POST"


def test_exec_and_files_wait_for_the_sessions_data(make_stack):
    """A command or a file sent right after the session is created waits for the bind, whose
    /data (an ext4 image made at the first bind) is mounted then: before the fix it ran on
    the empty mount point, and a file written there was hidden under the image."""
    s = exec_stack(make_stack)
    for i in range(3):
        key = "x-early-%d" % i
        r = s.api("POST", "/v1/sessions", {"id": key})
        assert r.status == 201, r
        st, ev, _ = run(s, key, {"cmd": ["/bin/sh", "-c",
                                         "ls -a /data; echo early > /data/early.txt"]})
        assert st == 200 and "lost+found" in out_of(ev).split(), ev  # the image's root
        r = s.api("PUT", "/v1/sessions/%s/files/data/put.txt" % key, None)
        assert r.status == 200, r
    time.sleep(0.5)
    st, ev, _ = run(s, "x-early-2", {"cmd": ["/bin/ls", "/data"]})
    assert set(out_of(ev).split()) >= {"early.txt", "put.txt"}


def test_exec_resumes_a_paused_sandbox(make_stack):
    s = exec_stack(make_stack)
    inst = bind(s, "x-paused")
    assert s.api("POST", "/v1/sessions/x-paused/pause").json()["paused"] is True
    st, ev, _ = run(s, "x-paused", {"cmd": ["/bin/echo", "awake"]})
    assert st == 200 and out_of(ev) == "awake\n"
    assert s.api("GET", "/v1/sessions/x-paused").json()["paused"] is False
    assert bind(s, "x-paused") == inst
    # A running command keeps the sandbox from pausing.
    body = json.dumps({"cmd": ["/bin/sleep", "3"]})
    p = subprocess.Popen(["curl", "-sS", "-N", "-H", "Authorization: Bearer berth-dev-key",
                          "--data-binary", body, s.admin_url("/v1/sessions/x-paused/exec")],
                         stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: subprocess.run(["pgrep", "-f", "^/bin/sleep 3$"],
                                          capture_output=True).returncode == 0,
                   10 * SLOW, "the command to run")
        r = s.api("POST", "/v1/sessions/x-paused/pause")
        assert r.status == 409 and r.json()["error"]["code"] == "session_busy", r
        assert "a command" in r.json()["error"]["message"]
    finally:
        p.kill()
        p.wait()

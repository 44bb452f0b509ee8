"""berth, the command-line client (issue 17), through the real control API: sessions, exec
(output, exit code, stdin), cp both ways, events, pause and resume, and errors as one line."""
import json
import os
import subprocess
import time

import pytest

from conftest import SLOW, binary, echo_template, free_port, wait_until

pytestmark = pytest.mark.berth_timeout(180)


@pytest.fixture
def cli(make_stack, tmp_path):
    s = make_stack({"templates": [echo_template(pool={"min": 1, "max": 4})]})
    env = dict(os.environ, BERTH_URL=s.admin_url("/").rstrip("/"), BERTH_API_KEY="berth-dev-key")

    def run(*args, stdin=None, env_over=None, check=None):
        e = dict(env, **(env_over or {}))
        p = subprocess.run([binary("berth")] + [str(a) for a in args], input=stdin,
                           capture_output=True, env=e, timeout=60 * SLOW)
        if check is not None:
            assert p.returncode == check, (args, p.returncode, p.stdout, p.stderr)
        return p
    run.stack = s
    run.tmp = tmp_path
    return run


def test_sessions_and_errors(cli):
    p = cli("sessions", "create", "cli-1", "--ttl", "600", check=0)
    out = p.stdout.decode().splitlines()
    assert out[0].split() == ["ID", "TEMPLATE", "STATE", "INSTANCE", "PAUSED"]
    assert out[1].split()[:3] == ["cli-1", "echo", "bound"]
    p = cli("--json", "sessions", "get", "cli-1", check=0)
    assert json.loads(p.stdout)["ttl_s"] == 600
    p = cli("sessions", "list", check=0)
    assert "cli-1" in p.stdout.decode()
    # Errors: one line with the API's code, status 1.
    p = cli("sessions", "create", "cli-1", check=1)
    assert p.stderr.decode() == "berth: conflict: session already exists\n" or \
        p.stderr.decode().startswith("berth: conflict: ")
    assert p.stderr.decode().count("\n") == 1
    p = cli("sessions", "get", "nosuch", check=1)
    assert p.stderr.decode().startswith("berth: not_found: ")
    p = cli("sessions", "list", env_over={"BERTH_API_KEY": "wrong"}, check=1)
    assert p.stderr.decode().startswith("berth: unauthorized: ")
    p = cli("sessions", "list", env_over={"BERTH_URL": "http://127.0.0.1:%d" % free_port()},
            check=1)
    assert p.stderr.decode().startswith("berth: cannot reach ")
    cli("frobnicate", check=2)
    cli("sessions", "delete", "cli-1", check=0)
    cli("sessions", "get", "cli-1", check=1)


def test_exec_cp_events_pause(cli):
    cli("sessions", "create", "cli-2", check=0)
    p = cli("exec", "cli-2", "--", "/bin/sh", "-c", "echo out; echo err >&2; exit 7", check=7)
    assert p.stdout == b"out\n" and p.stderr == b"err\n"
    p = cli("exec", "cli-2", "--env", "X=42", "--cwd", "/tmp", "--", "/bin/sh", "-c",
            'echo "$X $(pwd)"; tr a-z A-Z', stdin=b"piped\n", check=0)
    assert p.stdout == b"42 /tmp\nPIPED\n"
    cli("exec", "cli-2", "--timeout", "1", "--", "/bin/sleep", "30", check=124)
    p = cli("--json", "exec", "cli-2", "--", "/bin/echo", "x", check=0)
    assert [json.loads(x)["type"] for x in p.stdout.decode().splitlines()] == ["stdout", "exit"]
    # cp both ways, binary-safe.
    src = cli.tmp / "in.bin"
    src.write_bytes(os.urandom(200000))
    cli("cp", src, "cli-2:/data/copy.bin", check=0)
    dst = cli.tmp / "out.bin"
    cli("cp", "cli-2:/data/copy.bin", dst, check=0)
    assert dst.read_bytes() == src.read_bytes()
    assert cli("cp", "cli-2:/workspace/nope", cli.tmp / "x", check=1).stderr.decode() \
        .startswith("berth: not_found: ")
    assert not (cli.tmp / "x").exists()
    # pause, resume, events.
    p = cli("pause", "cli-2", check=0)
    assert p.stdout.decode().splitlines()[1].split()[-1] == "paused"
    p = cli("resume", "cli-2", check=0)
    assert p.stdout.decode().splitlines()[1].split()[-1] == "-"
    p = cli("events", "--session", "cli-2", check=0)
    types = [line.split()[1] for line in p.stdout.decode().splitlines()[1:]]
    for t in ("created", "exec_started", "exec_ended", "file_written", "paused", "resumed"):
        assert t in types, types
    # usage: a table per session and per template.
    def metered():
        p = cli("usage", check=0)
        rows = [line.split() for line in p.stdout.decode().splitlines()[1:]]
        # cli-2 made no data-plane request: its time is all idle (and paused), its CPU its
        # commands'
        return [r for r in rows if r[0] == "cli-2" and r[1] == "0" and
                float(r[5]) + float(r[6]) > 0] or None
    assert wait_until(metered, 10 * SLOW, "cli-2's usage")
    p = cli("usage", "--by", "template", check=0)
    assert p.stdout.decode().splitlines()[1].split()[0] == "echo"
    assert cli("usage", "--by", "instance", check=2)
    # --follow streams: a new session's created event arrives, then we stop it.
    f = subprocess.Popen([binary("berth"), "--json", "events", "--follow", "--type", "created"],
                         stdout=subprocess.PIPE,
                         env=dict(os.environ, BERTH_URL=cli.stack.admin_url("/").rstrip("/"),
                                  BERTH_API_KEY="berth-dev-key"))
    try:
        time.sleep(0.5)
        cli("sessions", "create", "cli-3", check=0)
        line = f.stdout.readline()
        assert json.loads(line)["type"] == "created"
    finally:
        f.kill()
        f.wait()


def test_egress_lists(cli):
    p = cli("--json", "sessions", "create", "cli-eg", "--allow", "*.pypi.org", "--allow",
            "api.example.com:443", check=0)
    assert json.loads(p.stdout)["egress"] == {"allow": ["*.pypi.org", "api.example.com:443"],
                                              "deny": []}
    p = cli("egress", "cli-eg", "--allow", "*.pypi.org", "--deny", "upload.pypi.org", check=0)
    assert p.stdout.decode().splitlines() == ["allow  *.pypi.org", "deny   upload.pypi.org"]
    p = cli("egress", "cli-eg", "--clear", check=0)
    assert p.stdout.decode().splitlines() == ["allow ", "deny  "]
    p = cli("egress", "cli-eg", "--allow", "bad name", check=1)
    assert p.stderr.decode().startswith("berth: invalid_argument: egress.allow[0]")
    cli("egress", "cli-eg", check=2)
    cli("sessions", "delete", "cli-eg", check=0)

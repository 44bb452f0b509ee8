"""deploy/local/run, the README's first command, end to end: it starts the stack, every curl
line it prints works as described, and Ctrl-C stops everything (daemons, sandboxes, mounts)."""

import os
import re
import signal
import subprocess
import threading
import time

from conftest import (BUILD_DIR, REPO, SANITIZER_PATTERNS, SLOW, _mounts_under, _pids_matching,
                      _remove_tree, _short_tmp, _skip_unless_root, free_port, port_open)
import pytest


@pytest.mark.berth_timeout(240)
def test_quick_start_runs_what_it_prints():
    _skip_unless_root()
    state = _short_tmp()
    host_id = "qs%s" % os.urandom(3).hex()
    ports = {"BERTH_GATEWAY_PORT": free_port(), "BERTH_ADMIN_PORT": free_port(),
             "BERTH_SCHEDULER_PORT": free_port(), "BERTH_GATEWAY_TLS_PORT": free_port()}
    env = dict(os.environ, BERTH_BUILD_DIR=str(BUILD_DIR), BERTH_STATE_DIR=str(state),
               BERTH_HOST_ID=host_id, BERTH_SKIP_INSTALL="1",
               BERTH_READY_TIMEOUT=str(60 * SLOW), **{k: str(v) for k, v in ports.items()})
    p = subprocess.Popen([str(REPO / "deploy" / "local" / "run")], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                         start_new_session=True)
    out = []
    ready = threading.Event()

    def reader():
        for line in iter(p.stdout.readline, b""):
            out.append(line.decode(errors="replace").rstrip("\n"))
            if "Ctrl-C stops everything" in out[-1]:
                ready.set()
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 180 * SLOW
        while not ready.is_set() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.is_set(), "the quick start did not get ready:\n" + "\n".join(out[-60:])
        text = "\n".join(out)
        assert "berth-dev-key" in text  # the dev API key is shown
        cmds = [line.strip() for line in out if line.startswith("  curl ")]
        assert len(cmds) >= 10, cmds
        results = []
        for c in cmds:
            r = subprocess.run(["bash", "-c", c], capture_output=True, timeout=30 * SLOW)
            results.append((c, r.returncode, r.stdout.decode(errors="replace")))
        failed = [(c, rc) for c, rc, _ in results if rc != 0]
        assert not failed, failed

        inst = [o.strip() for c, _, o in results if "grep -i '^x-berth-instance'" in c]
        assert len(inst) == 3 and all(i.lower().startswith("x-berth-instance:") for i in inst)
        assert inst[0] == inst[1], "the same session key reached two instances: %s" % inst
        assert inst[2] != inst[0], "two session keys share an instance: %s" % inst
        assert host_id in inst[0]
        by_cmd = {c: o for c, _, o in results}
        echo = next(o for c, o in by_cmd.items() if "-d 'hello'" in c)
        assert '"body":"hello"' in echo and '"path":"/some/path"' in echo
        # over the TLS listener, with the certificate it made: the same session's sandbox
        tls = next(o for c, o in by_cmd.items() if "https://localhost:" in c)
        assert '"path":"/over/tls"' in tls and '"x-forwarded-proto":"https"' in tls, tls
        # HTTP/2 both ways: h2 over TLS, h2c in the clear
        h2 = next(o for c, o in by_cmd.items() if "/over/h2 " in c + " ")
        assert '"path":"/over/h2"' in h2 and h2.rstrip().endswith("http/2"), h2
        h2c = next(o for c, o in by_cmd.items() if "/over/h2c" in c)
        assert '"path":"/over/h2c"' in h2c and h2c.rstrip().endswith("http/2"), h2c
        sse = next(o for c, o in by_cmd.items() if "/sse?" in c)
        assert len(re.findall(r"^data: ", sse, re.M)) == 5, sse
        files = [o for c, o in by_cmd.items() if "/files/notes.txt" in c]
        assert files[-1] == "kept", files
        created = next(o for c, o in by_cmd.items() if '"id":"api-demo"' in c)
        assert "api-demo" in created and "error" not in created, created
        metrics = next(o for c, o in by_cmd.items() if "/metrics" in c)
        assert metrics.strip(), "no metrics"
        # The scheduler API's secret: made in the state dir, root's only, and the printed
        # status command sends it (the full status lists the instances).
        secret = state / "api_secret"
        assert (secret.stat().st_mode & 0o777) == 0o600, oct(secret.stat().st_mode)
        assert len(secret.read_text().strip()) == 64
        assert "api_secret_file: %s" % secret in (state / "berth.yaml").read_text()
        status = next(o for c, o in by_cmd.items() if "/v1/status" in c)
        assert '"authenticated":true' in status and '"instances":[' in status, status
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGINT)  # what Ctrl-C does to the script
        try:
            rc = p.wait(60 * SLOW)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            rc = "hung"
        t.join(5)
    try:
        assert rc == 0, "exit %s after Ctrl-C:\n%s" % (rc, "\n".join(out[-30:]))
        assert any("berth: stopped" in line for line in out), out[-10:]
        left = _pids_matching(host_id, None)
        assert not left, "sandbox processes left after Ctrl-C: %s" % left
        for port in ports.values():
            assert not port_open(port), "port %d still open after Ctrl-C" % port
        assert not _mounts_under(state), _mounts_under(state)
        for log in (state / "log").glob("*.log"):
            assert not SANITIZER_PATTERNS.search(log.read_text(errors="replace")), \
                "sanitizer report in %s" % log
    finally:
        _remove_tree(state)

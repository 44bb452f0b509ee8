"""Templates and real clients for the agent-protocol tests (test_mcp.py, test_browser.py).

  ensure_clients()        tests/clients/node_modules installed (npm ci from the committed lock,
                          npm install when package.json is newer than the lock); node and npm
                          installed with apt-get when absent; pytest.skip with the reason only
                          when they truly cannot be had. Returns the node executable.
  ensure_chromium()       Debian's /usr/bin/chromium (apt-get install chromium when absent;
                          never a downloaded browser). Returns its path or skips.
  ensure_websockets()     Debian's python3-websockets for /usr/bin/python3 (the sandboxed WS app).
  run_node(script, args)  runs tests/clients/<script> with node, bounded in time; returns the
                          JSON document it printed on stdout.
  mcp_template(...), ws_template(...), browser_template(...)
                          sandbox templates whose apps are @modelcontextprotocol/server-everything
                          (Streamable HTTP or legacy SSE), tests/clients/ws_app.py and headless
                          Chromium with CDP.
  sandbox_ro_binds()      ro_binds that make those apps visible inside the sandbox.
"""

import fcntl
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, SLOW, binary, deep_merge

CLIENTS = REPO / "tests" / "clients"
NODE_MODULES = CLIENTS / "node_modules"
EVERYTHING = NODE_MODULES / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
WS_APP = CLIENTS / "ws_app.py"
CHROMIUM = "/usr/bin/chromium"
SYS_PYTHON = "/usr/bin/python3"  # Debian's: sees python3-websockets

_APT_ENV = dict(os.environ, DEBIAN_FRONTEND="noninteractive")


def _apt_install(*pkgs):
    """apt-get install -y <pkgs> (as root). Returns None, or why it failed."""
    if os.geteuid() != 0:
        return "not root: cannot apt-get install %s" % " ".join(pkgs)
    if not shutil.which("apt-get"):
        return "no apt-get to install %s" % " ".join(pkgs)
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *pkgs]
    for argv in (install, ["apt-get", "update", "-q"], install):
        try:
            p = subprocess.run(argv, env=_APT_ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            return "%s: %s" % (" ".join(argv), e)
        if p.returncode == 0 and argv[1] == "install":
            return None
    return "apt-get install %s failed: %s" % (" ".join(pkgs),
                                              p.stdout.decode(errors="replace")[-800:])


def _skip(reason):
    print("SKIP: " + reason)
    pytest.skip(reason)


_node = None


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _lock_matches_package():
    """package-lock.json exists and records exactly package.json's dependencies."""
    pkg, lock = _read_json(CLIENTS / "package.json"), _read_json(CLIENTS / "package-lock.json")
    if not pkg or not lock:
        return False
    root = lock.get("packages", {}).get("", {})
    return root.get("dependencies", {}) == pkg.get("dependencies", {})


def _installed_matches_lock():
    """node_modules holds every package of the lock at its locked version (npm's hidden
    lockfile node_modules/.package-lock.json records what was installed)."""
    lock = _read_json(CLIENTS / "package-lock.json")
    have = _read_json(NODE_MODULES / ".package-lock.json")
    if not lock or not have or not _lock_matches_package():
        return False
    want = {k: v.get("version") for k, v in lock.get("packages", {}).items() if k}
    got = {k: v.get("version") for k, v in have.get("packages", {}).items() if k}
    return all(got.get(k) == v for k, v in want.items() if not
               lock["packages"][k].get("optional"))


def ensure_clients():
    """node + npm present and tests/clients/node_modules matching the lock. Returns node's
    path, or skips the test with the reason."""
    global _node
    if _node:
        return _node
    if not shutil.which("node") or not shutil.which("npm"):
        # Debian's npm depends on Debian's nodejs; a nodejs that bundles npm needs nothing else.
        why = _apt_install("nodejs") if not shutil.which("node") else None
        if not why and not shutil.which("npm"):
            why = _apt_install("npm")
        if why or not shutil.which("node") or not shutil.which("npm"):
            _skip("node/npm unavailable: %s" % (why or "not on PATH after apt-get install"))
    node = shutil.which("node")
    with open(CLIENTS / ".install.lock", "w") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)  # two test runs must not install at once
        if not _installed_matches_lock():
            # npm ci installs exactly the committed lock; npm install only when package.json
            # names dependencies the lock does not have yet (then the lock is rewritten).
            argv = ["npm", "ci" if _lock_matches_package() else "install",
                    "--no-audit", "--no-fund"]
            env = dict(os.environ, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1")  # never a browser
            try:
                p = subprocess.run(argv, cwd=str(CLIENTS), env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, timeout=600)
            except subprocess.TimeoutExpired:
                _skip("%s in tests/clients took over 600s" % " ".join(argv))
            if p.returncode != 0:
                _skip("%s in tests/clients failed (no registry?):\n%s" % (
                    " ".join(argv), p.stdout.decode(errors="replace")[-1500:]))
            if not _installed_matches_lock():
                pytest.fail("tests/clients/node_modules does not match package-lock.json "
                            "after %s" % " ".join(argv))
    if not EVERYTHING.is_file():
        pytest.fail("%s missing after npm install" % EVERYTHING)
    _node = node
    return node


def ensure_chromium():
    if not os.access(CHROMIUM, os.X_OK):
        why = _apt_install("chromium")
        if why or not os.access(CHROMIUM, os.X_OK):
            _skip("Debian's chromium unavailable: %s" % (why or "not installed"))
    return CHROMIUM


def ensure_websockets():
    def have():
        return subprocess.run([SYS_PYTHON, "-c", "import websockets"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    if not have():
        why = _apt_install("python3-websockets")
        if why or not have():
            _skip("python3-websockets unavailable: %s" % (why or "not importable"))


def run_node(script, args, timeout, env=None):
    """Runs node tests/clients/<script> <args> in its own process group (a browser it starts
    goes with it); returns the JSON object it printed last on stdout. Fails the test (with
    stderr) if it printed none or ran over <timeout> seconds."""
    node = ensure_clients()
    argv = [node, str(CLIENTS / script)] + [str(a) for a in args]
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.Popen(argv, cwd=str(CLIENTS), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=e, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout * SLOW)
    except subprocess.TimeoutExpired:
        _killpg(p)
        out, err = p.communicate()
        pytest.fail("%s ran over %ds\nstdout: %s\nstderr: %s" % (
            script, timeout * SLOW, out[-2000:], err[-2000:]))
    finally:
        _killpg(p)  # leftovers (a browser whose node died)
    out = out.decode(errors="replace").strip().splitlines()
    err = err.decode(errors="replace")
    for line in reversed(out):
        if line.startswith("{"):
            doc = json.loads(line)
            doc["_stderr"] = err[-4000:]
            doc["_rc"] = p.returncode
            return doc
    pytest.fail("%s printed no JSON (rc %d)\nstdout: %s\nstderr: %s" % (
        script, p.returncode, "\n".join(out)[-2000:], err[-4000:]))


def _killpg(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ------------------------------------------------------------------ templates

def sandbox_ro_binds():
    """berth-echo's directory (the default template) and tests/clients (node_modules with
    server-everything, ws_app.py), bound read-only at the same paths inside every sandbox,
    and what Debian's Chromium reads from /etc (the sandbox's /etc is generated: its launcher
    script sources /etc/chromium.d/*, and fontconfig wants /etc/fonts)."""
    # Listed even before Chromium is installed: a missing ro_bind is skipped at start.
    etc = ["/etc/chromium.d", "/etc/chromium", "/etc/fonts"]
    return [str(Path(binary("berth-echo")).parent), str(CLIENTS)] + etc


def _sandbox_template(name, command, port=8000, **over):
    t = {
        "name": name,
        "driver": "process",
        "app": {"command": [str(c) for c in command], "port": port},
        "memory": "512MiB",
        "pids": 256,
        "workspace_size": "64MiB",
        "pool": {"min": 1, "max": 4},
        "ready_timeout": "%ds" % (20 * SLOW),
        "ttl": "1h",
        "idle_timeout": "10m",
        "data": False,
    }
    return deep_merge(t, over)


def mcp_template(name="mcp", mode="streamableHttp", **over):
    """server-everything (the MCP reference server) in <mode> (streamableHttp or sse); it reads
    PORT, which the process driver sets to app.port."""
    return _sandbox_template(name, ["/usr/bin/node", EVERYTHING, mode], **over)


def ws_template(name="ws", **over):
    return _sandbox_template(name, [SYS_PYTHON, WS_APP, "--port", "8000"], memory="128MiB",
                             pids=64, **over)


def browser_template(name="browser", port=9222, **over):
    """Headless Chromium with its DevTools endpoint on 127.0.0.1:<port> inside the sandbox.
    Root is tmpfs (workspace_size): the profile, /tmp and /dev/shm all live in it."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--remote-debugging-port=%d" % port, "--remote-debugging-address=127.0.0.1",
           "--user-data-dir=/workspace/chromium-profile", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--disable-breakpad", "--no-default-browser-check",
           "--use-mock-keychain", "--password-store=basic", "about:blank"]
    return _sandbox_template(name, cmd, port=port, memory="1GiB", pids=1024,
                             workspace_size="512MiB", **over)

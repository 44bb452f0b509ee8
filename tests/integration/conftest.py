"""Fixtures for Berth's integration tests: real binaries, a real redis-server, real curl.

Run with Debian's interpreter (the first python3 on PATH may be another build):

    BERTH_BUILD_DIR=build-tests /usr/bin/python3 -m pytest tests/integration

What is here:
  binary(name)        absolute path of a built executable (berth-gateway, berth-echo, ...)
  free_port()         a free TCP port on 127.0.0.1
  RedisServer         redis-server on a free loopback port, data in a temp dir (extra
                      settings such as ACL users, and the AUTH its clients send)
  RedisClient         a small RESP client (Python sockets): r.cmd("HGETALL", key), r.hgetall()
  Proc                a daemon in its own process group with its output in a log file;
                      stop() sends SIGTERM to the group, then SIGKILL; sanitizer reports in
                      its output fail the test
  curl(url, ...)      runs real curl; returns Response(status, headers, body); .json()
  curl_stream(...)    runs curl -N and yields (seconds since start, line) as lines arrive
  make_config(...)    a config dict (the sample config's shape) with overrides deep-merged;
                      write_config() writes it (JSON is YAML); its scheduler.api_secret is
                      SCHED_SECRET (Stack.sched_api() sends it)
  Stack               redis + berth-scheduler + berth-gateway from one config, started and
                      waited for (gateway /readyz, scheduler /healthz, pools filled in Redis),
                      always stopped (instances killed, mounts undone, dirs removed)

Fixtures: `stack` (one default stack per test module), `make_stack` (factory:
make_stack({"templates": ...}) for custom configs, stopped after the test), `redis_server`,
`echo_server` (factory: a bare berth-echo), `require_root`, `tmp_short`.

Tests needing root-only features (namespaces, cgroups: every test that starts a scheduler)
are skipped with the reason printed when not run as root.

Environment: BERTH_BUILD_DIR (default "build", relative to the repository root),
BERTH_SANITIZED=1 (set by tests/run for the ASan build: longer timeouts; detected from the
build dir's options too), BERTH_TEST_TIMEOUT (seconds per test, default 120, x3 sanitized),
BERTH_KEEP_LOGS=1 (keep the temp dirs with the daemons' logs).
"""

import copy
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_build = Path(os.environ.get("BERTH_BUILD_DIR", "build"))
BUILD_DIR = _build if _build.is_absolute() else REPO / _build

DEV_KEY = "berth-dev-key"          # tenant "default" (the sample config's development key)
OTHER_KEY = "berth-other-key"      # tenant "other"
PREFIX = "berth:"
# The scheduler API's shared secret (scheduler.api_secret) of every stack the tests make.
SCHED_SECRET = "test-sched-" + os.urandom(24).hex()


def _sha256(s):
    return hashlib.sha256(s.encode()).hexdigest()


def _detect_sanitized():
    if os.environ.get("BERTH_SANITIZED") in ("1", "true", "yes"):
        return True
    try:
        opts = json.loads((BUILD_DIR / "meson-info" / "intro-buildoptions.json").read_text())
        for o in opts:
            if o.get("name") == "b_sanitize":
                return o.get("value") not in (None, "none", "")
    except (OSError, ValueError):
        pass
    return False


SANITIZED = _detect_sanitized()
SLOW = 3 if SANITIZED else 1  # time multiplier for sanitizer builds


def wait_until(pred, timeout, what, interval=0.05):
    """Polls pred() until it returns a true value (returned) or <timeout> seconds pass
    (AssertionError naming <what>). An AssertionError raised by pred() ends the wait at once
    (say: the daemon being waited for exited); other exceptions count as "not yet"."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except AssertionError:
            raise
        except Exception as e:  # noqa: BLE001 - reported below if it never succeeds
            last_exc = e
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s%s" % (
                timeout, what, " (last error: %r)" % last_exc if last_exc else ""))
        time.sleep(interval)


# ------------------------------------------------------------------ binaries and ports

_BIN_DIRS = ["gateway", "scheduler", "scheduler/agent", "deploy", "bench", ""]


def binary(name):
    """Absolute path of executable <name> in the build dir; fails the test if it is not built."""
    for d in _BIN_DIRS:
        p = BUILD_DIR / d / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    for p in BUILD_DIR.rglob(name):
        if p.is_file() and os.access(p, os.X_OK) and ".p" not in p.parent.name:
            return str(p)
    pytest.fail("%s is not built in %s (run ninja -C %s)" % (name, BUILD_DIR, BUILD_DIR))


_given_ports = set()


def free_port():
    """A TCP port free on 127.0.0.1 now and not handed out before in this session."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _given_ports:
            _given_ports.add(port)
            return port
    raise RuntimeError("no free port found")


def port_open(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# ------------------------------------------------------------------ processes

SANITIZER_PATTERNS = re.compile(
    r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|"
    r"ERROR: UndefinedBehaviorSanitizer|WARNING: ThreadSanitizer|SUMMARY: \w+Sanitizer")


def sanitizer_env(env=None):
    env = dict(os.environ if env is None else env)
    if SANITIZED:
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1:halt_on_error=1:"
                       "detect_stack_use_after_return=0")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        env.setdefault("LSAN_OPTIONS", "")
    return env


class Proc:
    """A process in its own process group, output (stdout+stderr) in <log_dir>/<name>.log."""

    def __init__(self, name, argv, log_dir, env=None, cwd=None, ok_codes=(0,)):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_dir) / ("%s.log" % name)
        self.ok_codes = ok_codes
        self._log = open(self.log_path, "ab")
        self.p = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                  stderr=subprocess.STDOUT, env=sanitizer_env(env),
                                  cwd=cwd, start_new_session=True)
        self.pid = self.p.pid
        self.returncode = None

    def alive(self):
        return self.p.poll() is None

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, n=40):
        return "\n".join(self.log().splitlines()[-n:])

    def signal(self, sig):
        if self.alive():
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout=10):
        """SIGTERM to the group, then SIGKILL after <timeout>. Returns a list of problems:
        an unclean exit, a hang, a sanitizer report."""
        problems = []
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.p.wait(timeout * SLOW)
            except subprocess.TimeoutExpired:
                problems.append("%s did not exit within %ds of SIGTERM" % (self.name,
                                                                          timeout * SLOW))
                self.signal(signal.SIGKILL)
                self.p.wait(10)
        else:
            self.p.wait()
        try:  # leftovers of the group (helpers it forked)
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.returncode = self.p.returncode
        self._log.close()
        if self.returncode not in self.ok_codes and self.returncode != -signal.SIGTERM and \
                not any("did not exit" in p for p in problems):
            problems.append("%s exited with %s" % (self.name, self.returncode))
        problems += self.sanitizer_problems()
        return problems

    def sanitizer_problems(self):
        out = []
        text = self.log()
        m = SANITIZER_PATTERNS.search(text)
        if m:
            start = max(0, m.start() - 200)
            out.append("sanitizer report in %s output (%s):\n%s" % (
                self.name, self.log_path, text[start:start + 4000]))
        # With log_path=... in ASAN_OPTIONS/UBSAN_OPTIONS (tests/run sets it) the report is
        # a file <log_path>.<pid>; it is renamed to *.seen once a test has failed on it.
        for f in sanitizer_report_files(self.pid):
            out.append("sanitizer report of %s (%s):\n%s" % (
                self.name, f, Path(f).read_text(errors="replace")[:4000]))
            os.rename(f, f + ".seen")
        return out


def _sanitizer_log_paths():
    paths = []
    for var in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
        m = re.search(r"(?:^|:)log_path=([^:]+)", os.environ.get(var, ""))
        if m:
            paths.append(m.group(1))
    return paths


def sanitizer_report_files(pid):
    """Report files the sanitizers wrote for process <pid> (see sanitizer_problems)."""
    out = []
    for lp in _sanitizer_log_paths():
        for f in Path(lp).parent.glob(Path(lp).name + ".%d*" % pid):
            if not f.name.endswith(".seen"):
                out.append(str(f))
    return sorted(set(out))


# ------------------------------------------------------------------ Redis

class RedisError(Exception):
    pass


class RedisClient:
    """A minimal synchronous RESP2 client. Replies: str (bulk/simple, UTF-8 with
    surrogateescape), int, list, None; errors raise RedisError."""

    def __init__(self, port=None, host="127.0.0.1", unix=None, timeout=5):
        if unix:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(unix)
        else:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def close(self):
        self.sock.close()

    def _fill(self):
        d = self.sock.recv(65536)
        if not d:
            raise ConnectionError("redis closed the connection")
        self.buf += d

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _read(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest.decode(errors="surrogateescape")
        if t == b"-":
            raise RedisError(rest.decode(errors="replace"))
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self._fill()
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data.decode(errors="surrogateescape")
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise RedisError("bad reply %r" % line)

    def cmd(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self.sock.sendall(b"".join(out))
        return self._read()

    __call__ = cmd

    def hgetall(self, key):
        r = self.cmd("HGETALL", key) or []
        return dict(zip(r[0::2], r[1::2]))

    def scan(self, pattern):
        cursor, keys = "0", []
        for _ in range(100000):
            cursor, batch = self.cmd("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            keys += batch
            if cursor == "0":
                break
        return sorted(set(keys))


class RedisServer:
    """redis-server on a free 127.0.0.1 port (no persistence), data in <base>/redis.
    <args>: more command-line settings (e.g. ["--user", "berth", "on", ">pw", ...] for ACL
    users); <auth>: (user, password) that client() sends first (for a server whose default
    user is off)."""

    def __init__(self, base, port=None, args=(), auth=None):
        self.base = Path(base)
        self.dir = self.base / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.args = [str(a) for a in args]
        self.auth = auth
        self.proc = None
        self.start()

    def start(self):
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = Proc("redis", [exe, "--port", self.port, "--bind", "127.0.0.1",
                                   "--dir", self.dir, "--save", "", "--appendonly", "no",
                                   "--daemonize", "no", "--protected-mode", "yes",
                                   "--loglevel", "warning"] + self.args,
                         self.base, env=dict(os.environ))
        wait_until(lambda: self.ping(), 10, "redis-server on port %d" % self.port)

    def ping(self):
        c = self.client(timeout=1)
        try:
            return c.cmd("PING") == "PONG"
        finally:
            c.close()

    def client(self, timeout=5):
        c = RedisClient(self.port, timeout=timeout)
        if self.auth:
            try:
                c.cmd("AUTH", *self.auth)
            except BaseException:
                c.close()
                raise
        return c

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def stop(self):
        if self.proc:
            problems = self.proc.stop(timeout=10)
            self.proc = None
            return problems
        return []


# ------------------------------------------------------------------ HTTP through curl

class Response:
    def __init__(self, status, headers, body, raw_headers="", error=""):
        self.status = status
        self.headers = headers          # lower-case name -> list of values
        self.body = body                # bytes
        self.raw_headers = raw_headers
        self.error = error              # curl's error text when status is 0

    def header(self, name, default=None):
        v = self.headers.get(name.lower())
        return v[-1] if v else default

    @property
    def text(self):
        return self.body.decode(errors="replace")

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            raise AssertionError("not JSON (status %d): %r" % (self.status, self.body[:500]))

    def __repr__(self):
        return "<Response %d %r>" % (self.status, self.body[:200])


_curl_seq = itertools.count()


def _curl_tmp():
    d = Path(tempfile.gettempdir()) / ("berth-curl-%d" % os.getpid())
    d.mkdir(exist_ok=True)
    return d


def raw_exchange(port, data, timeout=5):
    """Sends <data> on a fresh loopback connection to <port>, returns what the server sent
    before closing. The server may answer and close (even reset) before all of <data> is
    written: that is a refusal too."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout * SLOW) as c:
        try:
            c.sendall(data)
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        while True:
            try:
                chunk = c.recv(65536)
            except socket.timeout:
                raise AssertionError("the server neither answered nor closed")
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out


def raw_error(out):
    """(status, error code) of a raw answer that must be one JSON error closing the connection
    (common/httpd.c's refusals); fails on anything else."""
    head, sep, body = out.partition(b"\r\n\r\n")
    assert sep, out[:300]
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    assert hdrs.get("content-type") == "application/json", head
    assert hdrs.get("connection") == "close", head
    assert int(hdrs["content-length"]) == len(body), out[:300]
    j = json.loads(body)
    assert set(j) == {"error"} and set(j["error"]) == {"code", "message"}, j
    assert j["error"]["message"], j
    return status, j["error"]["code"]


def curl(url, method=None, headers=None, data=None, data_file=None, timeout=10,
         http="1.1", output=None, extra=()):
    """Runs real curl. <headers>: dict or list of (name, value); <data>: bytes/str sent as
    the body (--data-binary); <data_file>: a path uploaded with -T; <output>: where the body
    goes (e.g. /dev/null; then Response.body is empty). Returns a Response (status 0 with
    .error when curl could not get an answer)."""
    d = _curl_tmp()
    n = next(_curl_seq)
    hfile, bfile = d / ("h%d" % n), d / ("b%d" % n)
    argv = ["curl", "-sS", "--max-time", str(timeout * SLOW), "-D", str(hfile),
            "-o", str(output or bfile), "-w", "%{http_code}"]
    if http == "2":  # h2 by ALPN over TLS, h2c with prior knowledge in the clear
        argv.append("--http2" if url.startswith("https:") else "--http2-prior-knowledge")
    else:
        argv.append("--http1.0" if http == "1.0" else "--http1.1")
    if method:
        argv += ["-X", method]
    hl = headers.items() if isinstance(headers, dict) else (headers or [])
    for k, v in hl:
        argv += ["-H", "%s: %s" % (k, v) if v != "" else "%s;" % k]
    inp = None
    if data is not None:
        argv += ["--data-binary", "@-"]
        inp = data.encode() if isinstance(data, str) else data
        if not any(k.lower() == "content-type" for k, _ in hl):
            argv += ["-H", "Content-Type: application/octet-stream"]
    if data_file is not None:
        argv += ["-T", str(data_file)]
    argv += list(extra) + [url]
    p = subprocess.run(argv, input=inp, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout * SLOW + 10)
    try:
        raw = hfile.read_bytes().decode(errors="replace") if hfile.exists() else ""
        body = bfile.read_bytes() if bfile.exists() else b""
    finally:
        for f in (hfile, bfile):
            try:
                f.unlink()
            except OSError:
                pass
    # The last header block is the final response (after any 100 Continue).
    blocks = [b for b in re.split(r"\r?\n\r?\n", raw) if b.strip()]
    headers_out = {}
    if blocks:
        for line in blocks[-1].splitlines()[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers_out.setdefault(k.strip().lower(), []).append(v.strip())
    out = p.stdout.decode(errors="replace").strip()
    try:  # the last line of --write-out is the status (extra -w formats may precede it)
        status = int(out.splitlines()[-1]) if out else 0
    except ValueError:
        status = 0
    r = Response(status, headers_out, body, blocks[-1] if blocks else "",
                 p.stderr.decode(errors="replace").strip())
    r.write_out = out
    return r


def prom_metrics(url):
    """The samples of a /metrics page at <url>: {"name{labels}": value}."""
    out = {}
    for line in curl(url).text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out


def curl_stream(url, headers=None, timeout=30, extra=()):
    """Runs curl -N and yields (seconds since start, line without newline) as lines arrive;
    the response headers come first (curl -i). Ends when curl ends; kills curl if the
    consumer stops early."""
    argv = ["curl", "-sS", "-N", "-i", "--max-time", str(timeout * SLOW), "--http1.1"]
    hl = headers.items() if isinstance(headers, dict) else (headers or [])
    for k, v in hl:
        argv += ["-H", "%s: %s" % (k, v)]
    argv += list(extra) + [url]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    t0 = time.monotonic()
    try:
        buf = b""
        while True:
            chunk = p.stdout.read1(65536) if hasattr(p.stdout, "read1") else p.stdout.read(1)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                yield time.monotonic() - t0, line.rstrip(b"\r").decode(errors="replace")
        if buf:
            yield time.monotonic() - t0, buf.decode(errors="replace")
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        p.stdout.close()
        p.stderr.close()


# ------------------------------------------------------------------ config

def deep_merge(base, over):
    """Returns <base> with <over> merged in: dicts recursively, anything else replaced; a value
    of None deletes the key."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def echo_template(name="echo", **over):
    """The default template: berth-echo, pool min 2 max 8 (like deploy/config/berth.yaml)."""
    t = {
        "name": name,
        "driver": "process",
        "app": {"command": [binary("berth-echo"), "--port", "8000"], "port": 8000},
        "cpus": 0.5,
        "memory": "256MiB",
        "pids": 128,
        "pool": {"min": 2, "max": 8},
        "ready_timeout": "%ds" % (10 * SLOW),
        "ttl": "1h",
        "idle_timeout": "10m",
    }
    return deep_merge(t, over)


# ------------------------------------------------------------------ TLS test certificates

def openssl(*args):
    p = subprocess.run(["openssl"] + [str(a) for a in args], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=60)
    assert p.returncode == 0, p.stdout.decode(errors="replace")
    return p.stdout.decode(errors="replace")


def make_ca(d):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", d / "ca.key", "-out", d / "ca.pem", "-days", "400",
            "-subj", "/CN=berth test CA")
    (d / "index.txt").write_text("")


def make_cert(d, name, sans, days=365):
    """<d>/<name>.key, <name>.pem (the leaf) and <name>-chain.pem (leaf + CA), signed by the CA.
    Shaped as a public one would be (a year, an OCSP responder named), so that testssl.sh
    rates the gateway's settings, not the test certificate."""
    ext = d / ("%s.ext" % name)
    ext.write_text("subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                   "extendedKeyUsage=serverAuth\n"
                   "authorityInfoAccess=OCSP;URI:http://127.0.0.1:9/\n" % ",".join(sans))
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", d / ("%s.key" % name), "-out", d / ("%s.csr" % name),
            "-subj", "/CN=%s" % sans[0].split(":", 1)[1])
    openssl("x509", "-req", "-in", d / ("%s.csr" % name), "-CA", d / "ca.pem",
            "-CAkey", d / "ca.key", "-CAcreateserial", "-out", d / ("%s.pem" % name),
            "-days", str(days), "-extfile", ext)
    (d / ("%s-chain.pem" % name)).write_text((d / ("%s.pem" % name)).read_text() +
                                             (d / "ca.pem").read_text())
    return cert_serial(d / ("%s.pem" % name))


def cert_serial(pem):
    return openssl("x509", "-in", pem, "-noout", "-serial").strip().split("=", 1)[1]


def make_ocsp(d, name):
    """A successful OCSP response for <name>'s certificate, signed by the CA (as a responder)."""
    openssl("ocsp", "-issuer", d / "ca.pem", "-cert", d / ("%s.pem" % name), "-reqout",
            d / ("%s.ocspreq" % name))
    # the CA's index: "V", expiry, (revocation), serial, file, subject
    line = "V\t301231235959Z\t\t%s\tunknown\t/CN=%s\n" % (cert_serial(d / ("%s.pem" % name)), name)
    with open(d / "index.txt", "a") as f:
        f.write(line)
    openssl("ocsp", "-index", d / "index.txt", "-rsigner", d / "ca.pem", "-rkey", d / "ca.key",
            "-CA", d / "ca.pem", "-reqin", d / ("%s.ocspreq" % name), "-respout",
            d / ("%s.ocsp" % name), "-ndays", "1")


def make_test_certs(d):
    """In <d>: a test CA (ca.pem, ca.key); localhost (localhost.pem, -chain.pem, .key: DNS
    localhost and IP 127.0.0.1) with a stapleable OCSP response (localhost.ocsp); preview
    (*.preview.test and web.test)."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    make_ca(d)
    make_cert(d, "localhost", ["DNS:localhost", "IP:127.0.0.1"])
    make_cert(d, "preview", ["DNS:*.preview.test", "DNS:web.test"])
    make_ocsp(d, "localhost")
    return d


def make_config(base, redis_address, ports, overrides=None, host_id=None):
    """A full config dict for a stack rooted at <base> (a short directory: unix socket paths
    under run_dir must fit 108 bytes). <ports>: dict with gateway, admin, scheduler."""
    base = Path(base)
    host_id = host_id or "t%s" % os.urandom(3).hex()
    cfg = {
        "log": {"level": "info"},
        "redis": {"address": redis_address, "prefix": PREFIX, "connect_timeout": "2s",
                  "command_timeout": "%ds" % (2 * SLOW)},
        "tenants": [
            {"name": "default", "api_keys_sha256": [_sha256(DEV_KEY)]},
            {"name": "other", "api_keys_sha256": [_sha256(OTHER_KEY)]},
        ],
        "templates": [echo_template()],
        "gateway": {
            "listen": "127.0.0.1:%d" % ports["gateway"],
            "admin_listen": "127.0.0.1:%d" % ports["admin"],
            "workers": 1,
            "host_stale": "%ds" % (5 * SLOW),
            "limits": {"start_timeout": "%ds" % (15 * SLOW)},
        },
        "scheduler": {
            "host_id": host_id,
            "api_listen": "127.0.0.1:%d" % ports["scheduler"],
            "run_dir": str(base / "run"),
            "storage_root": str(base / "data"),
            "capacity": 16,
            "heartbeat": "200ms",
            "reap_interval": "200ms",
            "cgroup_parent": "berth-test-%s" % host_id,
            "ro_binds": [str(Path(binary("berth-echo")).parent)],
            "api_secret": SCHED_SECRET,
        },
    }
    return deep_merge(cfg, overrides)


def stored_file(s, h, name, tenant="default"):
    """Text of /data/<name> in session <h>'s durable storage, or None when it has no such file.
    The storage is an ext4 image ({storage_root}/{tenant}/{h}/data.img): read through the
    live mount while an instance of the session has it attached, else with debugfs (the file
    system was unmounted cleanly, so its journal is empty)."""
    for iid, inst in s.instances().items():
        if inst.get("session") == h:
            p = Path(s.cfg["scheduler"]["run_dir"]) / iid / "data" / name
            if any(line.split()[4] == str(p.parent) for line in open("/proc/self/mountinfo")):
                return p.read_text() if p.exists() else None
    img = Path(s.cfg["scheduler"]["storage_root"]) / tenant / h / "data.img"
    if not img.exists():
        return None
    p = subprocess.run(["debugfs", "-R", "cat /%s" % name, str(img)], capture_output=True,
                       timeout=30)
    if p.returncode != 0 or b"not found" in p.stderr:
        return None
    return p.stdout.decode()


def write_config(path, cfg):
    """Writes <cfg> as YAML (JSON is a subset of YAML's flow style). Returns the path."""
    Path(path).write_text(json.dumps(cfg, indent=2) + "\n")
    return str(path)



def guest_image(build_dir=None):
    """The normal build's microVM guest image (scheduler/guest/): its kernel package fetched
    once from Debian's mirror into the build's cache (skips the test, with the reason, when it
    is not cached and cannot be fetched), then the meson target (which rebuilds it when the
    agent, berth-echo or mkimage.py changed, else does nothing). Returns the directory."""
    build_dir = Path(build_dir or BUILD_DIR)
    d = build_dir / "scheduler" / "guest"
    fetch = subprocess.run(
        [sys.executable, str(REPO / "scheduler/guest/mkimage.py"), "--cache", str(d / "cache"),
         "--fetch-only"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=600)
    if fetch.returncode == 3:
        pytest.skip("guest kernel not cached and cannot be fetched: %s" % fetch.stdout[-300:])
    assert fetch.returncode == 0, fetch.stdout
    build = subprocess.run(["nice", "meson", "compile", "-C", str(build_dir), "guest-image"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=900)
    assert build.returncode == 0, "guest-image build failed:\n" + build.stdout[-3000:]
    return d


def pid_alive(pid):
    """Whether <pid> runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

# ------------------------------------------------------------------ the stack

def _mounts_under(base):
    base = os.path.realpath(str(base))
    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mp = line.split()[4].replace("\\040", " ")
                if mp == base or mp.startswith(base + "/"):
                    out.append(mp)
    except OSError:
        pass
    return sorted(out, key=len, reverse=True)


def _pids_matching(host_id, cgroup_name):
    """Host pids of processes that belong to this stack's instances: in its cgroups, or with
    BERTH_INSTANCE_ID=<host_id>-... in their environment."""
    needle_env = ("BERTH_INSTANCE_ID=%s-" % host_id).encode()
    found = set()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open("/proc/%s/cgroup" % d) as f:
                if cgroup_name and cgroup_name in f.read():
                    found.add(int(d))
                    continue
            with open("/proc/%s/environ" % d, "rb") as f:
                if needle_env in f.read():
                    found.add(int(d))
        except OSError:
            continue
    return found


def kill_sandboxes(host_id, cgroup_name, tries=100):
    """SIGKILLs every process of host <host_id>'s sandboxes (_pids_matching), again until none
    is left (bounded)."""
    for _ in range(tries):
        pids = _pids_matching(host_id, cgroup_name)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def events(stack, kind):
    out = []
    for _id, fields in stack.redis.cmd("XRANGE", stack.key("events"), "-", "+"):
        e = dict(zip(fields[0::2], fields[1::2]))
        if e.get("type") == kind:
            out.append(e)
    return out


def cgroup_dir(pid, ctrl):
    """The directory of <pid>'s cgroup for controller <ctrl> (v1 hierarchy or v2 unified)."""
    mounts = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            fstype, sopts = parts[sep + 1], parts[sep + 3]
            if fstype == "cgroup":
                for c in sopts.split(","):
                    mounts[c] = (parts[3], parts[4])
            elif fstype == "cgroup2":
                mounts.setdefault("", (parts[3], parts[4]))
    with open("/proc/%d/cgroup" % pid) as f:
        for line in f:
            _n, ctrls, path = line.rstrip("\n").split(":", 2)
            if ctrl in ctrls.split(",") and ctrl in mounts:
                root, point = mounts[ctrl]
            elif ctrls == "" and ctrl not in mounts and "" in mounts:
                root, point = mounts[""]
            else:
                continue
            rel = path[len(root):] if root != "/" and path.startswith(root) else path
            return point + rel
    raise AssertionError("no %s cgroup for pid %d" % (ctrl, pid))


def _bearer_call(url, method, body, token, headers, **kw):
    """curl <url> with "Authorization: Bearer <token>" (none when <token> is None); <body>: a
    dict sent as JSON, or bytes/str as they are."""
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = "Bearer %s" % token
    data = None
    if body is not None:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        h.setdefault("Content-Type", "application/json")
    return curl(url, method=method, headers=h, data=data, **kw)



def logged_cgroup_parents(text, name):
    """The cgroup parent directories a scheduler's log <text> names ("controller ready ...
    dir=...") for cgroup_parent <name>. The process driver's end in <name>; the microvm
    driver's are <name>/microvm."""
    parents = set()
    for d in re.findall(r"\bdir=(/sys/fs/cgroup/\S+)", text):
        if name and ("/" + name + "/") in d + "/":
            parents.add(d[:(d + "/").index("/" + name + "/") + len(name) + 1])
    return parents


def remove_cgroup_dirs(parents):
    """Removes each (empty by now) cgroup directory of <parents>, bottom up; bounded."""
    for parent in parents:
        for _ in range(50):
            if not os.path.isdir(parent):
                break
            for root, dirs, _files in os.walk(parent, topdown=False):
                for d in dirs:
                    try:
                        os.rmdir(os.path.join(root, d))
                    except OSError:
                        pass
            try:
                os.rmdir(parent)
            except OSError:
                time.sleep(0.05)

class Stack:
    """redis-server + berth-scheduler + berth-gateway from one config."""

    def __init__(self, base, overrides=None, start_scheduler=True, start_gateway=True,
                 wait_pools=True, redis_args=(), redis_auth=None):
        self.base = Path(base)
        self.ports = {"gateway": free_port(), "admin": free_port(), "scheduler": free_port()}
        self.problems = []
        self.scheduler = self.gateway = None
        self.redis_server = RedisServer(self.base, args=redis_args, auth=redis_auth)
        self.cfg = make_config(self.base, self.redis_server.address, self.ports, overrides)
        self.host_id = self.cfg["scheduler"]["host_id"]
        self.prefix = self.cfg["redis"]["prefix"]
        self.config_path = write_config(self.base / "berth.yaml", self.cfg)
        self.redis = self.redis_server.client()
        try:
            if start_scheduler:
                self.start_scheduler(wait_pools=wait_pools)
            if start_gateway:
                self.start_gateway()
        except BaseException:
            self.stop(check=False)
            raise

    # -- addresses
    def url(self, path="/"):
        return "http://127.0.0.1:%d%s" % (self.ports["gateway"], path)

    def admin_url(self, path="/"):
        return "http://127.0.0.1:%d%s" % (self.ports["admin"], path)

    def scheduler_url(self, path="/"):
        return "http://127.0.0.1:%d%s" % (self.ports["scheduler"], path)

    # -- daemons
    def start_scheduler(self, wait_pools=True):
        self.scheduler = Proc("scheduler", [binary("berth-scheduler"), "-c", self.config_path],
                              self.base, cwd=str(self.base))
        self.wait_scheduler(wait_pools)

    def wait_scheduler(self, wait_pools=True):
        def healthy():
            if not self.scheduler.alive():
                raise AssertionError("berth-scheduler exited (%s):\n%s" % (
                    self.scheduler.p.returncode, self.scheduler.tail()))
            return curl(self.scheduler_url("/healthz"), timeout=2).status == 200
        wait_until(healthy, 20 * SLOW, "berth-scheduler /healthz")
        if wait_pools:
            for t in self.cfg["templates"]:
                self.wait_pool(t["name"], t.get("pool", {}).get("min", 1))

    def start_gateway(self):
        self.gateway = Proc("gateway", [binary("berth-gateway"), "-c", self.config_path],
                            self.base, cwd=str(self.base))

        def ready():
            if not self.gateway.alive():
                raise AssertionError("berth-gateway exited (%s):\n%s" % (
                    self.gateway.p.returncode, self.gateway.tail()))
            return curl(self.admin_url("/readyz"), timeout=2).status == 200
        wait_until(ready, 20 * SLOW, "berth-gateway /readyz")

    def stop_scheduler(self):
        if self.scheduler:
            self.problems += self.scheduler.stop()
            self.scheduler = None

    def stop_gateway(self):
        if self.gateway:
            self.problems += self.gateway.stop()
            self.gateway = None

    # -- Redis views
    def key(self, *parts):
        return self.prefix + "".join(parts)

    def pool_len(self, template="echo"):
        return self.redis.cmd("LLEN", self.key("pool:%s:%s" % (self.host_id, template)))

    def wait_pool(self, template="echo", n=1, timeout=None):
        # Starts run in parallel but share 2 cores with everything else: a larger pool (or a
        # heavier app, e.g. node) gets proportionally longer.
        timeout = timeout or (30 + 3 * n) * SLOW

        def full():
            if self.scheduler and not self.scheduler.alive():
                raise AssertionError("berth-scheduler exited:\n%s" % self.scheduler.tail())
            return self.pool_len(template) >= n
        wait_until(full, timeout, "%d warm %s instance(s) in the pool" % (n, template))

    def instances(self):
        """id -> the i:{id} hash, for every instance in Redis."""
        out = {}
        for k in self.redis.scan(self.key("i:*")):
            out[k[len(self.key("i:")):]] = self.redis.hgetall(k)
        return out

    def session(self, h):
        return self.redis.hgetall(self.key("s:", h))

    # -- HTTP helpers
    def get(self, path="/", session=None, headers=None, **kw):
        h = dict(headers or {})
        if session is not None:
            h["x-fc-session-id"] = session
        return curl(self.url(path), headers=h, **kw)

    def sched_api(self, path, method=None, body=None, secret=SCHED_SECRET, headers=None, **kw):
        """A call to the scheduler's API, with "Authorization: Bearer <secret>" unless
        <secret> is None; <body>: a dict sent as JSON, or bytes/str as they are."""
        return _bearer_call(self.scheduler_url(path), method, body, secret, headers, **kw)

    def api(self, method, path, body=None, key=DEV_KEY, headers=None, **kw):
        return _bearer_call(self.admin_url(path), method, body, key, headers, **kw)

    # -- teardown
    def kill_instances(self):
        """Kills every process of this stack's sandboxes (instances outlive the scheduler by
        design) and undoes their mounts."""
        pids = set()
        try:
            for inst in self.instances().values():
                if inst.get("pid", "").isdigit() and int(inst["pid"]) > 1:
                    pids.add(int(inst["pid"]))
        except Exception:  # noqa: BLE001 - Redis may be gone already
            pass
        cg = self.cfg["scheduler"].get("cgroup_parent")
        self.thaw_cgroups()  # a frozen (paused) sandbox takes no SIGKILL on cgroup v1
        for _ in range(50):
            pids |= _pids_matching(self.host_id, cg)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.05)
            pids = set()
        for mp in _mounts_under(self.base):
            subprocess.run(["umount", "-l", mp], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        self.remove_cgroups()

    def cgroup_parents(self):
        """This stack's cgroup parent directories: the scheduler logs each controller's
        ("controller ready ... dir=..."); the instances' cgroups are below them."""
        log = self.base / "scheduler.log"
        try:
            text = log.read_text(errors="replace")
        except OSError:
            return set()
        return logged_cgroup_parents(text, self.cfg["scheduler"].get("cgroup_parent", ""))

    def thaw_cgroups(self):
        """Thaws every frozen cgroup of this stack (tests that pause sandboxes may leave one)."""
        for parent in self.cgroup_parents():
            for root, _dirs, files in os.walk(parent):
                for f, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
                    if f in files and root != parent:
                        try:
                            with open(os.path.join(root, f), "w") as fh:
                                fh.write(value)
                        except OSError:
                            pass

    def remove_cgroups(self):
        """Removes this stack's (now empty) cgroup directories: the scheduler logs each
        controller's parent directory ("controller ready ... dir=..."); the instances' cgroups
        are below it."""
        remove_cgroup_dirs(self.cgroup_parents())

    def stop(self, check=True):
        self.stop_gateway()
        self.stop_scheduler()
        self.kill_instances()
        try:
            self.redis.close()
        except OSError:
            pass
        self.problems += self.redis_server.stop()
        problems, self.problems = self.problems, []
        if check and problems:
            raise AssertionError("\n".join(problems))
        return problems


# ------------------------------------------------------------------ fixtures

def _skip_unless_root():
    if os.geteuid() != 0:
        pytest.skip("needs root: the process sandbox uses namespaces and cgroups")


@pytest.fixture
def require_root():
    _skip_unless_root()


def _short_tmp():
    # Short: {run_dir}/{id}/sock/app.sock must fit a unix socket path. Searchable by others:
    # the microvm driver's QEMU runs as an unprivileged uid and reaches {run_dir}/microvm/.
    d = Path(tempfile.mkdtemp(prefix="b", dir="/tmp"))
    os.chmod(d, 0o711)
    return d


def _remove_tree(path):
    if os.environ.get("BERTH_KEEP_LOGS"):
        print("keeping %s" % path)
        return
    if _mounts_under(path):  # never recurse through a mount point
        print("not removing %s: mounts remain under it" % path)
        return
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tmp_short():
    d = _short_tmp()
    yield d
    _remove_tree(d)


@pytest.fixture
def redis_server():
    d = _short_tmp()
    r = RedisServer(d)
    yield r
    problems = r.stop()
    _remove_tree(d)
    assert not problems, "\n".join(problems)


@pytest.fixture
def echo_server():
    """Factory: echo_server(args=[], env={}) starts a bare berth-echo on a free port and
    returns (port, Proc). All are stopped (and checked for sanitizer reports) afterwards."""
    d = _short_tmp()
    procs = []

    def start(args=(), env=None, instance="echo-test"):
        port = free_port()
        e = dict(os.environ)
        e["BERTH_INSTANCE_ID"] = instance
        e.update(env or {})
        p = Proc("echo-%d" % port, [binary("berth-echo"), "--port", port] + list(args), d,
                 env=e, cwd=str(d))
        procs.append(p)
        # Readiness from its log line, not a probe connection (which would occupy a
        # connection slot for a moment and race with the test's own connections).
        wait_until(lambda: "listening on" in p.log() or not p.alive(), 10 * SLOW,
                   "berth-echo to listen")
        assert p.alive(), "berth-echo exited:\n%s" % p.tail()
        return port, p

    start.dir = d
    yield start
    problems = []
    for p in procs:
        problems += p.stop()
    _remove_tree(d)
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def stack():
    """One default stack (the sample config's shape, fresh Redis) shared by a test module."""
    _skip_unless_root()
    d = _short_tmp()
    s = Stack(d)
    yield s
    try:
        s.stop()
    finally:
        _remove_tree(d)


@pytest.fixture
def make_stack():
    """Factory for stacks with config overrides, e.g.
    make_stack({"templates": [echo_template(pool={"min": 0, "max": 2})]}); keyword arguments
    go to Stack (start_gateway=False, wait_pools=False, ...). Stopped after the test."""
    stacks = []

    def make(overrides=None, **kw):
        _skip_unless_root()
        d = _short_tmp()
        try:
            s = Stack(d, overrides, **kw)
        except BaseException:
            _remove_tree(d)
            raise
        stacks.append((s, d))
        return s

    yield make
    problems = []
    for s, d in stacks:
        problems += s.stop(check=False)
        _remove_tree(d)
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ per-test time bound

def pytest_configure(config):
    config.addinivalue_line("markers", "berth_timeout(seconds): per-test time limit "
                            "(default BERTH_TEST_TIMEOUT or 120; tripled for sanitizer builds)")


class TestTimeout(Exception):
    pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    m = item.get_closest_marker("berth_timeout")
    limit = float(m.args[0]) if m else float(os.environ.get("BERTH_TEST_TIMEOUT", "120"))
    limit *= SLOW

    def on_alarm(signum, frame):
        raise TestTimeout("test exceeded %.0fs" % limit)

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_curl_tmp(), ignore_errors=True)

"""bench/: the load generator, the bench upstream and `bench/run --quick` end to end.

No timing assertions: these tests check that the benchmark works and that what it reports is
true (every response of a session came from one instance, the instance Berth names is the
upstream that answered, streams opened, nothing left running), never how fast anything is."""

import json
import os
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import (BUILD_DIR, REPO, SLOW, binary, curl, curl_stream, free_port, pid_alive,
                      sanitizer_env)

PY = "/usr/bin/python3"


@pytest.fixture
def upstream(tmp_path):
    """berth-bench-upstream with two listeners (ids a, b) on free ports: yields {id: port}."""
    log = open(tmp_path / "upstream.log", "wb")
    p = subprocess.Popen([binary("berth-bench-upstream"), "--listen", "127.0.0.1:0=a",
                          "--listen", "127.0.0.1:0=b"], stdout=subprocess.PIPE, stderr=log,
                         start_new_session=True, env=sanitizer_env())
    try:
        line = p.stdout.readline().decode()
        assert line.startswith("ready "), line
        ports = {kv.split("=")[0]: int(kv.rsplit(":", 1)[1]) for kv in line.split()[1:]}
        yield ports
    finally:
        p.terminate()
        p.wait(10 * SLOW)
        log.close()
        text = (tmp_path / "upstream.log").read_text(errors="replace")
        assert "Sanitizer" not in text and "runtime error" not in text, text


def loadgen(*args, timeout=60):
    """Runs berth-loadgen; returns (exit code, parsed JSON or None, stderr)."""
    p = subprocess.run([binary("berth-loadgen")] + [str(a) for a in args],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout * SLOW,
                       env=sanitizer_env())
    out = p.stdout.decode()
    try:
        doc = json.loads(out) if out.strip() else None
    except ValueError:
        doc = None
    return p.returncode, doc, p.stderr.decode(errors="replace")


# ------------------------------------------------------------------ the upstream

def test_upstream_endpoints(upstream):
    a, b = upstream["a"], upstream["b"]
    r = curl("http://127.0.0.1:%d/" % a)
    assert r.status == 200 and r.body == b"hello, agent\n"
    assert r.header("x-upstream-id") == "a"
    assert curl("http://127.0.0.1:%d/" % b).header("x-upstream-id") == "b"
    r = curl("http://127.0.0.1:%d/bytes/100000" % a)
    assert r.status == 200 and len(r.body) == 100000
    r = curl("http://127.0.0.1:%d/upload" % a, method="POST", data=b"x" * 300000)
    assert r.status == 200 and r.json() == {"received": 300000}
    r = curl("http://127.0.0.1:%d/upload" % a, method="POST", data=b"y" * 5000,
             headers={"Transfer-Encoding": "chunked"})
    assert r.status == 200 and r.json() == {"received": 5000}
    r = curl("http://127.0.0.1:%d/nope" % a)
    assert r.status == 404 and r.json()["error"]["code"] == "not_found"
    r = curl("http://127.0.0.1:%d/bytes/12x" % a)
    assert r.status == 400 and r.json()["error"]["code"] == "bad_request"


def test_upstream_sse_events_carry_timestamps(upstream):
    lines = []
    for _, line in curl_stream("http://127.0.0.1:%d/sse?every=50" % upstream["a"], timeout=10):
        lines.append(line)
        if sum(1 for x in lines if x.startswith("data: ")) >= 4:  # open + 3 ticks
            break
    assert lines[0].startswith("HTTP/1.1 200")
    assert "content-type: text/event-stream" in [x.lower() for x in lines]
    assert "event: open" in lines
    stamps = [int(x[6:]) for x in lines if x.startswith("data: ")]
    assert len(stamps) >= 4 and stamps == sorted(stamps), lines


def test_upstream_malformed_request_gets_json_400(upstream):
    with socket.create_connection(("127.0.0.1", upstream["a"]), timeout=5 * SLOW) as s:
        s.sendall(b"GARBAGE \x01\x02 nonsense\r\n\r\n")
        data = b""
        while True:
            d = s.recv(4096)
            if not d:
                break
            data += d
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), data
    assert json.loads(body)["error"]["code"] == "bad_request"


# ------------------------------------------------------------------ the load generator

def test_loadgen_closed_and_open_loop_against_upstream(upstream):
    port = upstream["a"]
    rc, doc, err = loadgen("--target", "127.0.0.1:%d" % port, "--connections", 4,
                           "--sessions", 20, "--duration", "0.5s", "--warmup", "0.1s",
                           "--instance-header", "x-upstream-id")
    assert rc == 0, err
    assert doc["mode"] == "max" and doc["requests"] > 0 and doc["ok"] == doc["requests"]
    assert doc["errors_total"] == 0, doc["errors"]
    assert doc["sticky"]["sessions_checked"] == 20
    assert doc["sticky"]["sessions_violated"] == 0
    assert doc["sticky"]["instances"] == {"a": doc["sticky"]["responses_checked"]}
    lat = doc["latency_us"]
    assert lat["count"] == doc["requests"]
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"]

    rc, doc, err = loadgen("--target", "127.0.0.1:%d" % port, "--mode", "rate", "--rate", 400,
                           "--connections", 4, "--sessions", 20, "--churn", 0.25,
                           "--duration", "1s", "--warmup", "0.2s",
                           "--instance-header", "x-upstream-id")
    assert rc == 0, err
    # the open loop schedules exactly rate x window requests in the window
    assert doc["sent"] + doc["unsent"] == 400
    assert doc["requests"] <= doc["sent"]
    # churn: every 4th request of the run (warmup included) starts a new session; priming
    # used the first 20
    assert 20 + doc["sent"] // 4 <= doc["sticky"]["sessions_new"] <= 20 + 480 // 4


def test_loadgen_counts_missing_instance_header(upstream):
    rc, doc, err = loadgen("--target", "127.0.0.1:%d" % upstream["a"], "--connections", 2,
                           "--sessions", 4, "--duration", "0.3s", "--warmup", "0",
                           "--instance-header", "x-not-sent")
    assert rc == 0, err
    assert doc["errors"]["no_instance_header"] >= doc["ok"] > 0


class _Flapping(BaseHTTPRequestHandler):
    """Answers every request from a different 'instance': a proxy that does not stick."""
    protocol_version = "HTTP/1.1"
    counter = 0
    lock = threading.Lock()

    def do_GET(self):  # noqa: N802 - http.server's name
        with self.lock:
            _Flapping.counter += 1
            n = _Flapping.counter
        body = b"ok\n"
        self.send_response(200)
        self.send_header("x-upstream-id", "u%d" % (n % 2))
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_loadgen_detects_a_proxy_that_does_not_stick():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Flapping)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        rc, doc, err = loadgen("--target", "127.0.0.1:%d" % srv.server_address[1],
                               "--connections", 2, "--sessions", 3, "--duration", "0.5s",
                               "--warmup", "0", "--instance-header", "x-upstream-id")
    finally:
        srv.shutdown()
        srv.server_close()
    assert rc == 0, err
    assert doc["sticky"]["sessions_violated"] > 0
    assert doc["errors"]["sticky"] > 0
    assert set(doc["sticky"]["instances"]) == {"u0", "u1"}


def test_loadgen_sse_streams_and_rss(upstream, tmp_path):
    out = tmp_path / "sse.json"
    rc, doc, err = loadgen("--target", "127.0.0.1:%d" % upstream["b"], "--mode", "sse",
                           "--streams", 50, "--sessions", 10, "--sse-every", 100,
                           "--duration", "0.6s", "--watch-pid", os.getpid(),
                           "--instance-header", "x-upstream-id", "--json", out)
    assert rc == 0, err
    doc = json.loads(out.read_text())
    assert doc["sse"]["opened"] == 50 and doc["sse"]["failed"] == 0
    assert doc["sse"]["events"] > 0 and doc["sse"]["cross_us"]["count"] == doc["sse"]["events"]
    assert doc["sticky"]["sessions_checked"] == 10 and doc["sticky"]["sessions_violated"] == 0
    assert doc["rss"]["pids"] == [os.getpid()] and doc["rss"]["before_kib"] > 0


@pytest.mark.parametrize("args, msg", [
    ([], "--target"),
    (["--target", "localhost:80"], "IPv4"),
    (["--target", "127.0.0.1:1", "--mode", "rate"], "--rate"),
    (["--target", "127.0.0.1:1", "--churn", "2"], "--churn"),
    (["--target", "127.0.0.1:1", "--body-size", "1MiB"], "POST"),
    (["--target", "127.0.0.1:1", "--duration", "soon"], "--duration"),
])
def test_loadgen_rejects_bad_arguments(args, msg):
    rc, doc, err = loadgen(*args)
    assert rc == 2 and doc is None
    assert msg in err, err


@pytest.mark.parametrize("args", [["--cpus", "0"], ["--rounds", "5"], ["--gap-us", "-1"],
                                  ["--bogus"]])
def test_wakeprobe_rejects_bad_arguments(args):
    p = subprocess.run([binary("berth-wakeprobe")] + args, capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 2 and "berth-wakeprobe" in p.stderr, (p.returncode, p.stderr)


def test_wakeprobe_measures_round_trips():
    p = subprocess.run([binary("berth-wakeprobe"), "--cpus", "0,0", "--rounds", "200",
                        "--gap-us", "10"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["rounds"] == 200 and doc["other_pair"] == "cpu0<->cpu0"
    assert 0 < doc["same_cpu"]["p50"] <= doc["same_cpu"]["p99"], doc


def test_loadgen_reports_refused_connections():
    port = free_port()  # nothing listens there
    rc, doc, err = loadgen("--target", "127.0.0.1:%d" % port, "--connections", 1,
                           "--sessions", 1, "--duration", "0.2s", "--timeout", "1s")
    assert rc == 3, err
    assert doc["prepare_failed"] is True and doc["requests"] == 0


# ------------------------------------------------------------------ bench/relay --quick

def test_bench_relay_quick(tmp_path):
    """bench/relay: both stacks (direct, relay) measured in each phase, the relay really on the
    path of the second (its sessions' instances are relay: addresses), no errors, nothing left
    running (the stacks' sandboxes and cgroups)."""
    from conftest import _skip_unless_root
    _skip_unless_root()
    out = tmp_path / "relay.json"
    p = subprocess.run([PY, str(REPO / "bench" / "relay"), "--quick", "--build-dir",
                        str(BUILD_DIR), "--out", str(out)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300 * SLOW,
                       env=sanitizer_env(), cwd=str(REPO))
    stdout, stderr = p.stdout.decode(), p.stderr.decode(errors="replace")
    assert p.returncode == 0, "bench/relay exited %d\n%s\n%s" % (p.returncode, stdout,
                                                                  stderr[-4000:])
    for phase in ("closed", "open", "newconn"):
        assert "| %s | relay / direct |" % phase in stdout, stdout
    runs = json.loads(out.read_text())["runs"]
    for phase in ("closed", "open", "newconn"):
        for kind in ("direct", "relay"):
            (r,) = runs[phase][kind]
            assert r["responses_all"] > 0 and r["errors_total"] == 0, (phase, kind, r)
            assert r["daemon_cpu_s"] > 0, (phase, kind)
            assert r["instance_addr"].startswith("relay:" if kind == "relay" else "unix:"), r
    # The stacks' sandboxes (host ids br<hex>) are gone, and so are their cgroups.
    left = []
    for d in os.listdir("/proc"):
        try:
            with open("/proc/%s/environ" % d, "rb") as f:
                if b"BERTH_INSTANCE_ID=br" in f.read():
                    left.append(d)
        except OSError:
            pass
    assert not left, left
    import glob
    assert not glob.glob("/sys/fs/cgroup/*/berth-bench-br*"), glob.glob(
        "/sys/fs/cgroup/*/berth-bench-br*")


# ------------------------------------------------------------------ bench/run --quick

def test_bench_run_quick(tmp_path):
    out = tmp_path / "latest.json"
    p = subprocess.run([PY, str(REPO / "bench" / "run"), "--quick", "--build-dir",
                        str(BUILD_DIR), "--out", str(out)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300 * SLOW,
                       env=sanitizer_env(), cwd=str(REPO))
    stdout, stderr = p.stdout.decode(), p.stderr.decode(errors="replace")
    assert p.returncode == 0, "bench/run exited %d\n%s\n%s" % (p.returncode, stdout, stderr[-6000:])

    # the table, on stdout and next to the JSON
    assert "| workers | scenario | figure | Berth | nginx | HAProxy | direct | Berth/nginx | " \
           "Berth/HAProxy | target |" in stdout
    for fig in ("throughput, closed loop (req/s)", "added p99 over direct (µs)",
                "proxy RSS per stream", "event crossing p99 (µs)", "upload throughput (MiB/s)",
                "download throughput (MiB/s)"):
        assert fig in stdout, fig
    assert out.with_suffix(".md").read_text().strip() in stdout

    doc = json.loads(out.read_text())
    m = doc["machine"]
    assert m["cores"] >= 1 and m["kernel"] and m["versions"]["nginx"] and \
        m["versions"]["haproxy"] and m["versions"]["redis"]
    assert doc["profile"] == "quick" and not doc["failures"]
    if len(os.sched_getaffinity(0)) >= 2:  # the wake-up floor, measured and shown
        wp = m["wake_probe"]
        for pair in ("other_cpu", "same_cpu"):
            assert 0 < wp[pair]["p50"] <= wp[pair]["p99"] <= wp[pair]["p99.9"], wp
        assert "Wake-ups (berth-wakeprobe" in stdout

    # every phase ran against every target, and what it reports holds
    runs = doc["runs"]
    phases = {"hot-max", "hot-rate", "churn-max", "churn-rate", "sse", "upload", "download"}
    assert {(r["phase"], r["target"]) for r in runs} == \
        {(ph, t) for ph in phases for t in ("berth", "nginx", "haproxy", "direct")}
    for r in runs:
        res = r["result"]
        label = "%s/%s" % (r["phase"], r["target"])
        assert res["sticky"]["sessions_violated"] == 0, label
        errs = {k: v for k, v in res["errors"].items() if v and k != "timeout"}
        assert not errs, (label, res["errors"])
        if r["phase"] == "sse":
            assert res["sse"]["opened"] == res["sse"]["streams"] > 0, label
            if r["target"] != "direct":
                assert res["rss"]["before_kib"] > 0 and "per_stream_bytes" in res["rss"], label
        else:
            assert res["requests"] > 0 and res["sticky"]["responses_checked"] > 0, label
        if r["target"] == "berth":
            # Berth names fleet-N; the static template's N-th upstream is the bench's uN
            for inst in res["sticky"]["instances"]:
                berth, up = inst.split("|")
                assert berth == "fleet-" + up[1:], inst
        if r["phase"] == "hot-max" and r["target"] != "direct":
            assert len(res["sticky"]["instances"]) >= 2, (label, res["sticky"]["instances"])

    # nothing it started is left running
    assert doc["processes"]
    left = [pr for pr in doc["processes"] if pid_alive(pr["pid"])]
    assert not left, left


def test_bench_run_h2_quick(tmp_path):
    """bench/run --h2: berth-h2load and h2load over TLS against each proxy, every request
    answered."""
    out = tmp_path / "latest.json"
    p = subprocess.run([PY, str(REPO / "bench" / "run"), "--h2", "--quick", "--build-dir",
                        str(BUILD_DIR), "--out", str(out)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300 * SLOW,
                       env=sanitizer_env(), cwd=str(REPO))
    assert p.returncode == 0, "bench/run --h2 exited %d\n%s\n%s" % (
        p.returncode, p.stdout.decode(), p.stderr.decode(errors="replace")[-6000:])
    doc = json.loads((tmp_path / "h2.json").read_text())["h2"]
    assert set(doc["summary"]) == {"berth", "nginx", "haproxy"}
    for key, runs in doc["runs"].items():
        for r in runs["small"]:
            # every request answered with a 2xx by its session's one instance, all 1,000
            # sessions used (berth-h2load ends what is in flight before it stops)
            assert r["succeeded"] > 0 and r["succeeded"] == r["status_2xx"] == r["done"], (key, r)
            assert r["reset"] == r["conn_errors"] == r["unfinished"] == 0, (key, r)
            assert r["sticky_violated"] == 0 and r["sessions_seen"] == 1000, (key, r)
        for r in runs["mib"]:
            assert r["succeeded"] == r["done"] == 200 and r["failed"] == r["errored"] == 0, \
                (key, r)
            assert r["data_bytes"] >= 200 << 20, (key, r)
    assert doc["summary"]["berth"]["small"]["vs_nginx"] > 0


class FlipH2Server:
    """A cleartext HTTP/2 server (python-h2, prior knowledge) on a free loopback port that
    answers every request 200 with an x-upstream-id of "u0", or, with <flip>, "u0" and "u1" in
    turn for each session key: berth-h2load's stickiness check must see the second one.
    Keeps the session keys it was sent."""

    def __init__(self, flip, goaway_after=0):
        import h2.config
        import h2.connection
        import h2.events
        self.h2 = h2
        self.flip, self.keys, self.goaway_after = flip, {}, goaway_after
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.accept, daemon=True)]
        self.threads[0].start()

    def accept(self):
        while not self.stop.is_set():
            try:
                s, _ = self.sock.accept()
            except OSError:
                continue
            t = threading.Thread(target=self.serve, args=(s,), daemon=True)
            self.threads.append(t)
            t.start()

    def serve(self, s):
        h2 = self.h2
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        s.settimeout(0.2)
        answered = 0
        with s:
            s.sendall(conn.data_to_send())
            while not self.stop.is_set():
                try:
                    data = s.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not data:
                    return
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        hdrs = dict((k.decode() if isinstance(k, bytes) else k,
                                     v.decode() if isinstance(v, bytes) else v)
                                    for k, v in ev.headers)
                        key = hdrs.get("x-fc-session-id")
                        n = self.keys[key] = self.keys.get(key, 0) + 1
                        inst = "u%d" % (n % 2) if self.flip else "u0"
                        conn.send_headers(ev.stream_id, [(":status", "200"),
                                                         ("x-upstream-id", inst),
                                                         ("content-length", "2")])
                        conn.send_data(ev.stream_id, b"ok", end_stream=True)
                        answered += 1
                        if answered == self.goaway_after:  # then the connection ends
                            conn.close_connection()
                            s.sendall(conn.data_to_send())
                            return
                s.sendall(conn.data_to_send())

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(5)
        self.sock.close()


@pytest.mark.parametrize("flip", [False, True])
def test_berth_h2load(flip):
    """berth-h2load over h2c: each request carries the next of --sessions keys, every
    response is counted, and a session answered by two instances fails the run."""
    srv = FlipH2Server(flip)
    try:
        p = subprocess.run([binary("berth-h2load"), "--target", "127.0.0.1:%d" % srv.port,
                            "--connections", "2", "--streams", "4", "--sessions", "10",
                            "--session-prefix", "t", "--duration", "2",
                            "--instance-header", "x-upstream-id"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60 * SLOW,
                           env=sanitizer_env())
    finally:
        srv.close()
    doc = json.loads(p.stdout.decode().strip().splitlines()[-1])
    assert doc["started"] == doc["done"] == doc["succeeded"] == doc["status_2xx"] > 0, doc
    assert doc["reset"] == doc["conn_errors"] == doc["unfinished"] == 0, doc
    assert set(srv.keys) == {"t-%d" % i for i in range(10)}, srv.keys
    if flip:
        assert p.returncode == 1 and doc["sticky_violated"] > 0, (p.returncode, doc)
    else:
        assert p.returncode == 0 and doc["sticky_violated"] == 0, (p.returncode, doc)
        assert doc["sessions_seen"] == 10 and doc["sticky_checked"] == doc["succeeded"], doc


def test_berth_h2load_ends_when_the_server_sends_goaway():
    """A server that answers 20 requests per connection, then GOAWAY and a close: no new
    request goes out on that connection (nghttp2 would refuse each at once, and asking for
    the next from its close would never end), the run ends and fails."""
    srv = FlipH2Server(False, goaway_after=20)
    try:
        p = subprocess.run([binary("berth-h2load"), "--target", "127.0.0.1:%d" % srv.port,
                            "--connections", "2", "--streams", "4", "--sessions", "10",
                            "--duration", "30", "--timeout", "5"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30 * SLOW,
                           env=sanitizer_env())
    finally:
        srv.close()
    doc = json.loads(p.stdout.decode().strip().splitlines()[-1])
    assert p.returncode == 1, (p.returncode, doc)
    assert doc["status_2xx"] == 40 and doc["conn_errors"] == 2, doc
    assert doc["started"] < 100 and doc["elapsed_s"] < 20, doc


def test_berth_h2load_bad_arguments():
    """Bad arguments: exit 2 and a line saying what is wrong, never a run."""
    for args in (["--target", "nohost"], ["--target", "127.0.0.1:1", "--streams", "0"],
                 ["--target", "127.0.0.1:1", "--path", "x"],
                 ["--target", "127.0.0.1:1", "--session-header", "X-Fc-Session-Id"], []):
        p = subprocess.run([binary("berth-h2load")] + args, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30 * SLOW, env=sanitizer_env())
        assert p.returncode == 2 and p.stderr.strip() and not p.stdout, (args, p)


def test_parse_h2load():
    b = load_bench_run()
    text = ("finished in 1.00s, 100.00 req/s, 1.00MB/s\n"
            "requests: 120 total, 110 started, 100 done, 98 succeeded, 2 failed, 0 errored, "
            "0 timeout\n"
            "status codes: 98 2xx, 0 3xx, 0 4xx, 2 5xx\n"
            "traffic: 1.17MB (1226400) total, 3.56KB (3646) headers (space savings 90.1%), "
            "1.15MB (1205000) data\n")
    assert b.parse_h2load(text) == {"done": 100, "succeeded": 98, "failed": 2, "errored": 0,
                                    "status_2xx": 98, "data_bytes": 1205000}


def load_bench_run():
    """bench/run as a module (it is a script without .py)."""
    import importlib.machinery
    import importlib.util
    loader = importlib.machinery.SourceFileLoader("bench_run", str(REPO / "bench" / "run"))
    spec = importlib.util.spec_from_loader("bench_run", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def test_hot_path_verdict_is_paired_by_round():
    """The throughput verdict compares Berth with each proxy within a round (runs seconds
    apart), not the medians each target had over rounds of a drifting machine: here Berth is
    1.15x nginx in three rounds of five, but the medians taken apart (from different rounds)
    say 1.51x. The verdict follows the rounds: not met; and met once every round is 1.25x."""
    br = load_bench_run()
    berth = [16.0, 30.0, 18.0, 32.0, 17.0]  # CPU us per response; the machine drifts

    def recs(cpu):
        return [{"round": i, "result": {"rps": 1e6 / c},
                 "machine": {"proxy_cpu_us_per_response": c, "proxy_cpu_pct": 90,
                             "load_cpu_pct": 80, "other_cpu_pct": 0, "steal_pct": 0}}
                for i, c in enumerate(cpu)]

    def rows_for(nginx_ratios):
        mx = {"berth": recs(berth),
              "nginx": recs([b * f for b, f in zip(berth, nginx_ratios)]),
              "haproxy": recs([b * 1.1 for b in berth])}
        rows = br.build_rows({1: {"hot": {"max": mx, "rate": {}, "rate_rps": 1000}}},
                             ["berth", "nginx", "haproxy"], {1: 1})
        cap = [r for r in rows if r[2].startswith("requests per proxy CPU-second")]
        paired = [r for r in rows if r[2].startswith("the same, Berth ÷ the other within")]
        assert len(cap) == 1 and len(paired) == 1
        return rows, cap[0], paired[0]

    rows, cap, paired = rows_for([1.15, 1.15, 1.15, 1.5, 1.6])
    assert br.ratio(cap[3]["berth"], cap[3]["nginx"]) == "1.51×"  # medians from other rounds
    assert cap[6] is None  # no verdict on the medians' row
    _, _, fig, v, _, tgt, met = paired
    assert "of 5 rounds" in fig
    assert v[br.RATIO_CELLS] == {"nginx": "1.15× [1.15–1.60]", "haproxy": "1.10× [1.10–1.10]"}
    assert tgt.startswith("≥ HAProxy and ≥ 1.2× nginx") and met is False
    rows, _, paired = rows_for([1.25] * 5)
    assert paired[6] is True
    assert "| 1.25× [1.25–1.25] | 1.10× [1.10–1.10] | ≥ HAProxy and ≥ 1.2× nginx — **met** |" \
        in br.render_table(rows, ["berth", "nginx", "haproxy"])


def test_cpu_per_response_at_the_same_rate_is_shown():
    """Besides the closed loop (where a faster proxy idles and the slower ones do not), the
    table shows what each proxy spent per response at the open loop's common rate: the
    median of the rate runs' figures, with its ratios, and no verdict on it."""
    br = load_bench_run()

    def recs(cpu):
        return [{"round": i, "result": {"rps": 1e6 / c, "latency_us": {
                    "p50": 50, "p99": 90, "p999": 120}},
                 "machine": {"proxy_cpu_us_per_response": c, "proxy_cpu_pct": 60,
                             "load_cpu_pct": 50, "other_cpu_pct": 0, "steal_pct": 0}}
                for i, c in enumerate(cpu)]

    mx = {"berth": recs([20.0] * 3), "nginx": recs([24.0] * 3)}
    rt = {"berth": recs([33.0, 30.0, 36.0]), "nginx": recs([31.0, 32.0, 30.0])}
    rows = br.build_rows({2: {"hot": {"max": mx, "rate": rt, "rate_rps": 17913}}},
                         ["berth", "nginx"], {2: 1})
    at_rate = [r for r in rows if r[2] == "proxy CPU per response at 17,913 req/s (µs)"]
    assert len(at_rate) == 1
    w, scenario, _, v, digits, tgt, met = at_rate[0]
    assert (w, scenario, digits, tgt, met) == (2, "hot path", 1, "", None)
    assert v == {"berth": 33.0, "nginx": 31.0}
    table = br.render_table(rows, ["berth", "nginx"])
    assert "| 2 | hot path | proxy CPU per response at 17,913 req/s (µs) | 33.0 | 31.0 | 1.06× |" \
        in table

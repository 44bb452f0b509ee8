"""Egress (issue 19): a sandbox reaches nothing but through its host's egress proxy, which lets
through only what the template's and the session's allow lists name, checked on the name asked
for and on every address it resolves to (scheduler/egress.h).

The world is network namespaces this test makes (netns.py) on one bridge: `node`
(203.0.113.2, and 10.99.0.2: redis-server, berth-scheduler with process sandboxes, berth-gateway,
all on its loopback), `web` (203.0.113.10 and the private 10.99.0.1: HTTP on 80, HTTPS on 443
with a certificate of the test's CA for allowed.test and other.test) and `dns` (203.0.113.53: a
DNS server the test runs: allowed.test, other.test -> 203.0.113.10, private.test -> 10.99.0.1).
Nothing leaves the machine. Inside the sandboxes the client is real curl, run through the
control API's exec.

    BERTH_BUILD_DIR=build /usr/bin/python3 -m pytest tests/integration/test_egress.py
"""
import http.client
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from conftest import (DEV_KEY, SLOW, Proc, RedisClient, _mounts_under, _remove_tree,
                      _short_tmp, _skip_unless_root, binary, echo_template, free_port,
                      kill_sandboxes, logged_cgroup_parents, make_ca, make_cert, make_config,
                      remove_cgroup_dirs, wait_until, write_config)
from netns import Net

pytestmark = pytest.mark.berth_timeout(300)

HERE = Path(__file__).resolve().parent
WEB, DNS = "203.0.113.10", "203.0.113.53"
PRIVATE = "10.99.0.1"


class World:
    def __init__(self, base):
        self.base = Path(base)
        self.net = Net({"node": 2, "web": 10, "dns": 53}, subnet="203.0.113")
        self.procs = []
        try:
            self.net.add_addr("web", PRIVATE + "/24")
            self.net.add_addr("node", "10.99.0.2/24")
            self.on_node = self.net.executor("node", workers=4)
            self.certs = self.base / "certs"
            self.certs.mkdir()
            make_ca(self.certs)
            make_cert(self.certs, "web", ["DNS:allowed.test", "DNS:other.test"])
            py = "/usr/bin/python3"
            self.run("dns", "dns", [py, HERE / "egress_servers.py", "dns", DNS,
                                    "allowed.test=" + WEB, "other.test=" + WEB,
                                    "private.test=" + PRIVATE, "bad.wild.test=" + WEB,
                                    "self.test=203.0.113.2",
                                    "a.wild.test=" + WEB])
            self.run("web", "web", [py, HERE / "egress_servers.py", "web", "0.0.0.0", "web",
                                    self.certs / "web.pem", self.certs / "web.key"])
            wait_until(lambda: "ready" in self.procs[-1].log() and "ready" in
                       self.procs[-2].log(), 10 * SLOW, "the test's DNS and web servers")
            self.start_berth()
        except BaseException:
            self.stop()
            raise

    def run(self, name, host, argv):
        p = Proc(name, self.net.argv(host) + [str(a) for a in argv], self.base,
                 cwd=str(self.base))
        self.procs.append(p)
        return p

    def start_berth(self):
        rport = free_port()
        self.run("redis", "node", [shutil.which("redis-server") or "/usr/bin/redis-server",
                                   "--port", rport, "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", self.base])
        ports = {"gateway": free_port(), "admin": free_port(), "scheduler": free_port()}
        self.ports = ports
        self.host_id = "eg%s" % os.urandom(3).hex()
        closed = echo_template("closed", pool={"min": 1, "max": 4})
        opened = echo_template("open", pool={"min": 1, "max": 4},
                               egress={"allow": ["allowed.test", "private.test", "*.wild.test",
                                                 "self.test"],
                                       "deny": ["bad.wild.test"]})
        ops = echo_template("ops", pool={"min": 0, "max": 2},
                            egress={"allow": ["private.test", PRIVATE, "203.0.113.2"]})
        self.cfg = make_config(self.base, "127.0.0.1:%d" % rport, ports, {
            "templates": [closed, opened, ops],
            "scheduler": {"capacity": 64,
                          "egress": {"resolver": DNS, "handshake_timeout": "5s",
                                     "max_connections_per_sandbox": 8},
                          "ro_binds": [str(Path(binary("berth-echo")).parent),
                                       str(self.certs)]}}, host_id=self.host_id)
        self.prefix = self.cfg["redis"]["prefix"]
        path = write_config(self.base / "berth.yaml", self.cfg)
        wait_until(lambda: self.redis_ok(rport), 10 * SLOW, "redis-server")
        self.redis = self.on_node.submit(RedisClient, rport).result()
        self.scheduler = self.run("scheduler", "node", [binary("berth-scheduler"), "-c", path])
        wait_until(lambda: self.redis.cmd("LLEN", "%spool:%s:open" % (self.prefix, self.host_id))
                   >= 1 and self.redis.cmd("LLEN", "%spool:%s:closed" % (self.prefix,
                                                                         self.host_id)) >= 1,
                   30 * SLOW, "the warm pools")
        self.gateway = self.run("gateway", "node", [binary("berth-gateway"), "-c", path])
        wait_until(lambda: self.api("GET", "/readyz")[0] == 200, 20 * SLOW, "the gateway")

    def redis_ok(self, port):
        def ping():
            try:
                c = RedisClient(port, timeout=1)
                try:
                    return c.cmd("PING") == "PONG"
                finally:
                    c.close()
            except OSError:
                return False
        return self.on_node.submit(ping).result()

    def api(self, method, path, body=None, timeout=60):
        def go():
            c = http.client.HTTPConnection("127.0.0.1", self.ports["admin"],
                                           timeout=timeout * SLOW)
            try:
                h = {"Authorization": "Bearer " + DEV_KEY}
                data = None
                if body is not None:
                    data = json.dumps(body)
                    h["Content-Type"] = "application/json"
                c.request(method, path, body=data, headers=h)
                r = c.getresponse()
                return r.status, r.read()
            except OSError as e:
                return 0, str(e).encode()
            finally:
                c.close()
        return self.on_node.submit(go).result()

    def session(self, template, **kw):
        st, body = self.api("POST", "/v1/sessions", dict({"template": template}, **kw))
        assert st == 201, (st, body)
        return json.loads(body)["id"]

    def sh(self, sid, script):
        """Runs /bin/sh -c <script> in the session's sandbox: (exit code, stdout)."""
        st, body = self.api("POST", "/v1/sessions/%s/exec" % sid,
                            {"cmd": ["/bin/sh", "-c", script], "timeout": 60})
        assert st == 200, (st, body)
        ev = [json.loads(x) for x in body.decode().splitlines() if x]
        out = "".join(e.get("data", "") for e in ev if e["type"] == "stdout")
        return ev[-1].get("exit_code"), out

    def curl(self, sid, url, *extra):
        """curl <url> through the proxy in the sandbox: (status, headers dict, body)."""
        args = " ".join("'%s'" % a for a in extra)
        # --noproxy '': the sandbox's NO_PROXY must not keep loopback URLs from the proxy here
        code, out = self.sh(sid, "curl -sS -m 20 -x http://127.0.0.1:3128 --noproxy '' -D - "
                                 "%s '%s' --cacert %s/ca.pem" % (args, url, self.certs))
        head, _, body = out.partition("\r\n\r\n")
        if head.startswith("HTTP/1.1 200 Connection established"):
            head, _, body = body.partition("\r\n\r\n")
        lines = head.split("\r\n")
        status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
        headers = dict((k.strip().lower(), v.strip()) for k, _, v in
                       (ln.partition(":") for ln in lines[1:]))
        return status, headers, body

    def raw_head(self, sid, head):
        """The first line the sandbox's proxy answers to <head> (printf syntax) sent as is."""
        code, out = self.sh(sid, "printf '%s' | curl -sS -m 5 telnet://127.0.0.1:3128 2>&1 | "
                                 "head -1" % head)
        return out

    def events(self, kind):
        out = []
        for _id, f in self.redis.cmd("XRANGE", self.prefix + "events", "-", "+"):
            e = dict(zip(f[0::2], f[1::2]))
            if e.get("type") == kind:
                out.append(e)
        return out

    def stop(self):
        for p in reversed(self.procs):
            p.stop()
        hid = getattr(self, "host_id", "none")
        kill_sandboxes(hid, "berth-test-%s" % hid)
        for mp in _mounts_under(self.base):
            os.system("umount -l '%s' 2>/dev/null" % mp)
        log = self.base / "scheduler.log"
        if log.exists() and getattr(self, "host_id", None):
            remove_cgroup_dirs(logged_cgroup_parents(log.read_text(errors="replace"),
                                                     "berth-test-%s" % self.host_id))
        self.net.close()


@pytest.fixture(scope="module")
def w():
    _skip_unless_root()
    if not shutil.which("curl") or not shutil.which("nsenter"):
        pytest.skip("curl and nsenter are needed")
    d = _short_tmp()
    world = World(d)
    try:
        yield world
    finally:
        try:
            world.stop()
        finally:
            _remove_tree(d)


def test_without_a_policy_nothing_is_reachable(w):
    sid = w.session("closed")
    st, h, body = w.curl(sid, "http://allowed.test/x")
    assert st == 403 and h.get("x-berth-egress") == "policy", (st, h, body)
    assert "allowed.test:80 refused" in body
    # No route around the proxy: the sandbox's network is its own loopback.
    code, out = w.sh(sid, "curl -sS -m 5 --noproxy '*' http://%s/ 2>&1; echo exit=$?" % WEB)
    assert "exit=7" in out or "exit=28" in out, out
    # The app's environment names the proxy.
    code, out = w.sh(sid, "for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/environ; done "
                          "2>/dev/null | grep -i '_proxy=' | sort -u")
    assert "HTTP_PROXY=http://127.0.0.1:3128" in out and "https_proxy=http://127.0.0.1:3128" in \
        out and "NO_PROXY=localhost,127.0.0.1,::1" in out, out
    # No process the tenant runs holds the proxy's listener (the agent keeps it close-on-exec):
    # nothing in the sandbox can accept the others' connections or stand in for the proxy.
    code, out = w.sh(sid, "while read sl local rem st q t r uid to ino rest; do "
                          "[ \"$local $st\" = \"0100007F:0C38 0A\" ] && inode=$ino; "
                          "done < /proc/net/tcp; echo inode=$inode; "
                          "echo readable=$(ls -l /proc/[0-9]*/fd 2>/dev/null | grep -c socket); "
                          "echo holders=$(ls -l /proc/[0-9]*/fd 2>/dev/null | "
                          "grep -c \"socket:\\[$inode\\]\")")
    kv = dict(x.split("=", 1) for x in out.split())
    assert kv["inode"].isdigit() and int(kv["readable"]) > 0, out  # it is there; fds are seen
    assert kv["holders"] == "0", out


def test_an_allowed_name_is_reached_and_nothing_else_on_its_address(w):
    sid = w.session("open")
    st, h, body = w.curl(sid, "http://allowed.test/path?q=1")
    assert st == 200, (st, h, body)
    got = json.loads(body)
    assert got["server"] == "web" and got["host"] == "allowed.test" and got["path"] == "/path?q=1"
    assert "proxy-connection" not in got["headers"]
    # Another name on the same address, and the address itself: refused before any lookup.
    for url in ("http://other.test/", "http://%s/" % WEB, "https://other.test/"):
        st, h, body = w.curl(sid, url)
        assert st == 403 and h.get("x-berth-egress") == "policy", (url, st, h, body)
    # A suffix pattern, and a deny entry inside it.
    assert w.curl(sid, "http://a.wild.test/")[0] == 200
    st, h, _ = w.curl(sid, "http://bad.wild.test/")
    assert st == 403 and h.get("x-berth-egress") == "policy"


def test_https_is_tunnelled_end_to_end(w):
    sid = w.session("open")
    code, out = w.sh(sid, "curl -sS -m 20 -x http://127.0.0.1:3128 --cacert %s/ca.pem "
                          "-w '\\nverify=%%{ssl_verify_result}' https://allowed.test/tls"
                     % w.certs)
    body, _, verify = out.rpartition("\n")
    got = json.loads(body)
    # The server's own certificate (the test CA's, for allowed.test) was verified by curl.
    assert verify == "verify=0" and got["host"] == "allowed.test" and got["path"] == "/tls", out


def test_a_name_that_resolves_to_a_private_address_is_refused(w):
    sid = w.session("open")
    st, h, body = w.curl(sid, "http://private.test/")
    assert st == 403 and h.get("x-berth-egress") == "address", (st, h, body)
    # ... unless the operator's template names that address.
    sid2 = w.session("ops")
    st, h, body = w.curl(sid2, "http://private.test/")
    assert st == 200 and json.loads(body)["host"] == "private.test", (st, h, body)


def test_a_session_cannot_open_a_private_address_or_the_hosts_loopback(w):
    sid = w.session("closed", egress={"allow": ["private.test", PRIVATE, "127.0.0.1",
                                                "169.254.169.254"]})
    st, h, _ = w.curl(sid, "http://private.test/")
    assert st == 403 and h.get("x-berth-egress") == "address"
    st, h, _ = w.curl(sid, "http://%s/" % PRIVATE)
    assert st == 403 and h.get("x-berth-egress") == "address"
    # The scheduler's API, Redis: the proxy's host's loopback.
    st, h, _ = w.curl(sid, "http://127.0.0.1:%d/v1/status" % w.ports["scheduler"])
    assert st == 403 and h.get("x-berth-egress") == "address"


def test_a_patch_takes_effect_in_the_running_sandbox(w):
    sid = w.session("closed")
    assert w.curl(sid, "http://other.test/")[0] == 403
    st, body = w.api("PATCH", "/v1/sessions/" + sid, {"egress": {"allow": ["other.test"]}})
    assert st == 200, (st, body)
    # Effective within a second (the scheduler reads it and tells the proxy).
    deadline = time.monotonic() + 5 * SLOW
    while True:
        st, h, body = w.curl(sid, "http://other.test/")
        if st == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert st == 200 and json.loads(body)["host"] == "other.test", (st, h, body)
    assert w.curl(sid, "http://allowed.test/")[0] == 403  # only what was added
    got = json.loads(w.api("GET", "/v1/sessions/" + sid)[1])
    assert got["egress"] == {"allow": ["other.test"], "deny": []}, got
    st, body = w.api("PATCH", "/v1/sessions/" + sid, {"egress": None})
    assert st == 200, (st, body)
    wait_until(lambda: w.curl(sid, "http://other.test/")[0] == 403, 5 * SLOW,
               "the session's lists gone")


def test_bad_policies_and_bad_requests_get_clear_errors(w):
    st, body = w.api("POST", "/v1/sessions", {"template": "closed",
                                              "egress": {"allow": ["bad name"]}})
    assert st == 400 and json.loads(body)["error"]["code"] == "invalid_argument", body
    assert "egress.allow[0]" in json.loads(body)["error"]["message"]
    st, body = w.api("POST", "/v1/sessions", {"template": "closed", "egress": {"other": []}})
    assert st == 400, body
    sid = w.session("open")
    # Garbage, a relative URL and a lying Host: answers from the proxy, which goes on serving.
    for head, status in (("NOT HTTP\\r\\n\\r\\n", 400),
                         ("GET / HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n", 405),
                         ("GET http://allowed.test/ HTTP/1.1\\r\\nHost: other.test"
                          "\\r\\n\\r\\n", 400)):
        out = w.raw_head(sid, head)
        assert out.startswith("HTTP/1.1 %d" % status), (head, out)
    assert w.curl(sid, "http://allowed.test/")[0] == 200


def test_decisions_are_audit_events(w):
    sid = w.session("open")
    w.curl(sid, "http://allowed.test/audit")
    w.curl(sid, "http://other.test/audit")
    h = json.loads(w.api("GET", "/v1/sessions/" + sid)[1])
    wait_until(lambda: any(e.get("host") == "other.test" for e in w.events("egress_refused")),
               10 * SLOW, "an egress_refused event")
    ref = [e for e in w.events("egress_refused") if e.get("host") == "other.test"]
    ok = [e for e in w.events("egress_allowed") if e.get("host") == "allowed.test"]
    assert ok, w.events("egress_allowed")
    assert ref[-1]["port"] == "80" and ref[-1]["reason"] == "policy"
    assert ref[-1]["tenant"] == "default" and ref[-1]["instance"] == h["instance"]


def test_a_proxy_that_dies_is_replaced_and_knows_every_sandbox(w):
    """berth-egress is the scheduler's child: killed, another one is forked and gets every
    sandbox's listener and policy again."""
    sid = w.session("open")
    assert w.curl(sid, "http://allowed.test/")[0] == 200

    def proxies():
        out = []
        for d in os.listdir("/proc"):
            try:
                st = open("/proc/%s/stat" % d).read() if d.isdigit() else ""
            except OSError:
                continue
            if st and st[st.index("(") + 1:st.rindex(")")] == "berth-egress" and \
                    int(st[st.rindex(")") + 2:].split()[1]) == w.scheduler.pid:
                out.append(int(d))
        return out
    old = proxies()
    assert len(old) == 1, old
    os.kill(old[0], signal.SIGKILL)
    wait_until(lambda: proxies() and proxies() != old, 10 * SLOW, "a new egress proxy")
    wait_until(lambda: "egress proxy started again" in w.scheduler.log(), 10 * SLOW,
               "the scheduler's note of it")
    st, h, body = w.curl(sid, "http://allowed.test/again")
    assert st == 200 and json.loads(body)["path"] == "/again", (st, h, body)
    assert w.curl(sid, "http://other.test/")[0] == 403
    # It runs as nobody (it parses what sandboxes send).
    with open("/proc/%d/status" % proxies()[0]) as f:
        uids = [ln.split()[1:] for ln in f if ln.startswith("Uid:")][0]
    assert uids == ["65534"] * 4, uids


def test_one_sandbox_cannot_take_the_proxys_connections(w):
    """Past max_connections_per_sandbox (8 here) a sandbox's connections get 503 at once; another
    sandbox is served."""
    sid, other = w.session("open"), w.session("open")
    # The sandbox's python (the host's /usr) holds 8 connections open, then opens 4 more.
    script = ("import socket, time\n"
              "held = [socket.create_connection(('127.0.0.1', 3128)) for _ in range(8)]\n"
              "time.sleep(0.5)\n"
              "extra = [socket.create_connection(('127.0.0.1', 3128)) for _ in range(4)]\n"
              "for s in extra:\n"
              "    s.settimeout(5)\n"
              "    print(s.recv(100).split(b'\\r\\n')[0].decode())\n")
    code, out = w.sh(sid, "python3 -c \"%s\"" % script.replace('"', '\\"'))
    assert out.count("503 Service Unavailable") == 4, out
    assert w.curl(other, "http://allowed.test/")[0] == 200


def test_bytes_to_and_from_destinations_are_in_usage(w):
    sid = w.session("open")
    code, out = w.sh(sid, "head -c 100000 /dev/zero | curl -sS -m 20 -x http://127.0.0.1:3128 "
                          "--noproxy '' --data-binary @- -o /dev/null -w '%{http_code} ' "
                          "http://allowed.test/up; curl -sS -m 20 -x http://127.0.0.1:3128 "
                          "--noproxy '' -o /dev/null -w '%{http_code} %{size_download}' "
                          "http://allowed.test/bytes/300000")
    assert out.split() == ["200", "200", "300000"], out

    def usage():
        st, body = w.api("GET", "/v1/usage?group_by=session")
        assert st == 200, body
        rows = [r for r in json.loads(body)["usage"] if r.get("id") == sid]
        return rows[0] if rows else None
    wait_until(lambda: (usage() or {}).get("egress_bytes_in", 0) >= 300000, 20 * SLOW,
               "the session's egress bytes in its usage")
    u = usage()
    assert 100000 <= u["egress_bytes_out"] < 110000, u
    assert 300000 <= u["egress_bytes_in"] < 310000, u


def test_the_proxys_own_host_is_never_a_destination(w):
    """A name that resolves to one of the proxy's host's own (public) addresses: refused, even
    when the template allows the name (it would reach services bound to 0.0.0.0)."""
    sid = w.session("open")
    st, h, body = w.curl(sid, "http://self.test:%d/v1/status" % w.ports["scheduler"])
    assert st == 403 and h.get("x-berth-egress") == "address", (st, h, body)
    # Even the operator's own address entry for it, asked for as such or IPv4-mapped.
    sid = w.session("ops")
    for host in ("203.0.113.2", "[::ffff:203.0.113.2]"):
        st, h, body = w.curl(sid, "http://%s:%d/v1/status" % (host, w.ports["scheduler"]))
        assert st == 403 and h.get("x-berth-egress") == "address", (host, st, h, body)


def test_one_request_per_proxied_connection(w):
    """Two requests pipelined on one proxy connection, for two hosts: the first goes to its
    host with "Connection: close", the second never reaches that host."""
    sid = w.session("open")
    script = ("import socket\n"
              "s = socket.create_connection(('127.0.0.1', 3128))\n"
              "s.sendall(b'GET http://allowed.test/first HTTP/1.1\\r\\nHost: allowed.test\\r\\n'"
              " b'Connection: keep-alive\\r\\n\\r\\n'"
              " b'GET http://other.test/second HTTP/1.1\\r\\nHost: other.test\\r\\n'"
              " b'Authorization: Bearer for-other\\r\\n\\r\\n')\n"
              "s.settimeout(10)\n"
              "got = b''\n"
              "while True:\n"
              "    b = s.recv(65536)\n"
              "    if not b:\n"
              "        break\n"
              "    got += b\n"
              "print(got.decode(errors='replace'))\n")
    code, out = w.sh(sid, "python3 -c \"%s\"" % script.replace('"', '\\"'))
    assert out.count("HTTP/1.") == 1 and '"path": "/first"' in out, out
    assert '"connection": "close"' in out and "/second" not in out, out


def test_control_characters_in_a_destination_are_refused(w):
    sid = w.session("open")
    for head in ("CONNECT a\\nlevel=error:443 HTTP/1.1\\r\\n\\r\\n",
                 "CONNECT a%%0a.test:443 HTTP/1.1\\r\\n\\r\\n"):
        out = w.raw_head(sid, head)
        assert out.startswith("HTTP/1.1 400"), (head, out)

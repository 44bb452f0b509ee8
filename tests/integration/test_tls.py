"""The gateway's TLS listener (gateway.tls_listen, gateway.tls): certificates made here with the
openssl CLI (a test CA, a localhost certificate with an OCSP response, a wildcard for preview
hosts), then real clients: curl, openssl s_client, Python's ssl module, testssl.sh.

What a hostile client could try, and what is checked: plain HTTP or garbage at the TLS port
(closed, the loop goes on), a TLS hello at the plain port (400), a handshake never finished
(closed at header_timeout), TLS 1.1 and weak ciphers (refused), a forged X-Forwarded-Proto
(replaced), a reload with a broken key (the running certificates stay)."""

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (SLOW, _remove_tree, _short_tmp, binary, cert_serial, curl, echo_template,
                      free_port, make_cert, make_config, make_ocsp, make_test_certs,
                      prom_metrics, raw_exchange, wait_until, write_config)


@pytest.fixture(scope="module")
def certs():
    d = _short_tmp()
    try:
        make_test_certs(d)
        yield d
    finally:
        _remove_tree(d)


def run(argv, **kw):
    return subprocess.run([str(a) for a in argv], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=kw.pop("timeout", 60), **kw)


def tls_overrides(certs, tls_port, header_timeout=None, **tls):
    o = {
        "templates": [echo_template(pool={"min": 1, "max": 4})],
        "gateway": {
            "tls_listen": "127.0.0.1:%d" % tls_port,
            "tls": dict({"certificates": [
                {"cert": str(certs / "localhost-chain.pem"), "key": str(certs / "localhost.key"),
                 "ocsp": str(certs / "localhost.ocsp")},
                {"cert": str(certs / "preview-chain.pem"), "key": str(certs / "preview.key")},
            ]}, **tls),
            "routes": [
                {"name": "web", "host": "web.test", "template": "echo",
                 "cookie": "berth_session", "no_key": "issue"},
                {"name": "main", "template": "echo", "key_headers": ["x-fc-session-id"],
                 "no_key": "reject"},
            ],
        },
    }
    if header_timeout:
        o["gateway"]["limits"] = {"header_timeout": header_timeout,
                                  "keepalive_timeout": header_timeout}
    return o


@pytest.fixture(scope="module")
def tstack(certs):
    from conftest import Stack, _skip_unless_root
    _skip_unless_root()
    d = _short_tmp()
    port = free_port()
    s = None
    try:
        s = Stack(d, tls_overrides(certs, port, header_timeout="%ds" % (2 * SLOW)))
        s.tls_port = port
        s.certs = certs
        yield s
    finally:
        try:
            if s:
                problems = s.stop(check=False)
                assert not problems, problems
        finally:
            _remove_tree(d)


def https(s, path, host="localhost", headers=None, extra=(), **kw):
    """curl over TLS to the stack's TLS port, verifying against the test CA (SNI = <host>)."""
    return curl("https://%s:%d%s" % (host, s.tls_port, path), headers=headers,
                extra=["--cacert", str(s.certs / "ca.pem"),
                       "--resolve", "%s:%d:127.0.0.1" % (host, s.tls_port)] + list(extra), **kw)


def s_client(s, *args, data=b""):
    p = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % s.tls_port,
                        "-CAfile", str(s.certs / "ca.pem")] + [str(a) for a in args],
                       input=data, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=30 * SLOW)
    return p.returncode, p.stdout.decode(errors="replace")


# ------------------------------------------------------------------ requests over TLS

def test_request_over_tls_reaches_the_session_with_proto_https(tstack):
    s = tstack
    r = https(s, "/seen", headers={"x-fc-session-id": "tls-1", "X-Forwarded-Proto": "http"})
    assert r.status == 200, r
    seen = r.json()["headers"]
    assert seen["x-forwarded-proto"] == "https"  # the client's own is replaced
    # the same session over the cleartext listener: the same sandbox, told "http"
    r2 = curl(s.url("/seen"), headers={"x-fc-session-id": "tls-1", "X-Forwarded-Proto": "https"})
    assert r2.status == 200 and r2.json()["headers"]["x-forwarded-proto"] == "http", r2
    assert r2.header("x-berth-instance") == r.header("x-berth-instance")


def test_keep_alive_and_bodies_over_tls(tstack):
    s = tstack
    body = os.urandom(300 * 1024)
    r = https(s, "/upload", headers={"x-fc-session-id": "tls-body"}, data=body, timeout=30)
    assert r.status == 200, r
    assert r.json()["body_bytes"] == len(body)
    # a large answer to a client reading slower than the gateway writes: SSL_write waits for
    # the socket, reading the instance pauses, nothing is lost
    n = 8 << 20
    r = https(s, "/bytes?n=%d" % n, headers={"x-fc-session-id": "tls-body"}, output="/dev/null",
              extra=["--limit-rate", "4M", "-w", "%{size_download}\\n%{http_code}"], timeout=60)
    assert r.status == 200 and int(r.write_out.splitlines()[0]) == n, r
    # two requests on one connection (curl reuses it: one handshake)
    p = run(["curl", "-sS", "--cacert", s.certs / "ca.pem", "--resolve",
             "localhost:%d:127.0.0.1" % s.tls_port, "-H", "x-fc-session-id: tls-ka",
             "-w", "%{num_connects}\\n", "-o", "/dev/null",
             "https://localhost:%d/a" % s.tls_port, "-o", "/dev/null",
             "https://localhost:%d/b" % s.tls_port], timeout=30 * SLOW)
    assert p.returncode == 0, p.stdout
    assert p.stdout.decode().split() == ["1", "0"], p.stdout


def test_sse_streams_over_tls(tstack):
    s = tstack
    r = https(s, "/sse?n=3&interval_ms=50", headers={"x-fc-session-id": "tls-sse"})
    assert r.status == 200 and r.text.count("data: ") == 3, r


def test_issued_cookie_is_secure_only_over_tls(tstack):
    s = tstack
    r = https(s, "/page", host="web.test")
    assert r.status == 200, r
    cookie = r.header("set-cookie", "")
    assert cookie.startswith("berth_session=") and "; Secure" in cookie, cookie
    r2 = curl(s.url("/page"), headers={"Host": "web.test"})
    assert r2.status == 200 and "Secure" not in r2.header("set-cookie", ""), r2


def test_alpn_offers_h2_then_http1(tstack):
    # h2 when the client offers it (test_h2.py has the rest), HTTP/1.1 for the others
    s = tstack
    r = https(s, "/x", headers={"x-fc-session-id": "tls-h2"},
              extra=["--http2", "-w", "%{http_version}\\n%{http_code}"])
    assert r.status == 200, r
    assert r.write_out.splitlines()[0] == "2", r.write_out
    rc, out = s_client(s, "-alpn", "h2,http/1.1")
    assert "ALPN protocol: h2" in out, out
    rc, out = s_client(s, "-alpn", "http/1.1,h2")  # the server's preference decides
    assert "ALPN protocol: h2" in out, out
    rc, out = s_client(s, "-alpn", "http/1.1")
    assert "ALPN protocol: http/1.1" in out, out


# ------------------------------------------------------------------ the handshake

def subject_cn(out):
    for line in out.splitlines():
        if line.startswith("subject="):
            return line.split("CN", 1)[1].lstrip(" =")
    return None


def test_sni_picks_the_certificate(tstack):
    s = tstack
    rc, out = s_client(s, "-servername", "3000-abc.preview.test", "-verify_return_error")
    assert rc == 0 and subject_cn(out) == "*.preview.test", out
    rc, out = s_client(s, "-servername", "web.test", "-verify_return_error")
    assert rc == 0 and subject_cn(out) == "*.preview.test", out
    rc, out = s_client(s, "-servername", "localhost", "-verify_return_error")
    assert rc == 0 and subject_cn(out) == "localhost", out
    # no SNI, or a name no certificate has: the first certificate
    rc, out = s_client(s, "-noservername")
    assert subject_cn(out) == "localhost", out
    rc, out = s_client(s, "-servername", "unknown.example")
    assert subject_cn(out) == "localhost", out
    # and a request through the wildcard certificate, verified by curl
    r = https(s, "/x", host="web.test")
    assert r.status == 200, r


def test_only_tls12_and_tls13_with_strong_ciphers(tstack):
    s = tstack
    rc, out = s_client(s, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert rc != 0, out
    rc, out = s_client(s, "-tls1_2")
    assert rc == 0 and "Protocol  : TLSv1.2" in out and "ECDHE" in out, out
    rc, out = s_client(s, "-tls1_3")
    assert rc == 0 and "TLSv1.3" in out, out
    for weak in ("AES128-SHA", "ECDHE-RSA-AES128-SHA", "DES-CBC3-SHA", "RC4-SHA", "NULL-SHA"):
        rc, out = s_client(s, "-tls1_2", "-cipher", weak + "@SECLEVEL=0")
        assert rc != 0, (weak, out)


def test_ocsp_response_is_stapled(tstack):
    s = tstack
    rc, out = s_client(s, "-servername", "localhost", "-status")
    assert rc == 0 and "OCSP Response Status: successful" in out, out
    rc, out = s_client(s, "-servername", "web.test", "-status")
    assert rc == 0 and "OCSP response: no response sent" in out, out


def expired_ocsp(certs, out):
    """An OCSP response for localhost's certificate, signed by the test CA, good but a day
    out of date (python3-cryptography: openssl ocsp cannot date one in the past)."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import ocsp
    leaf = x509.load_pem_x509_certificate((certs / "localhost.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
    now = datetime.datetime.utcnow()
    b = ocsp.OCSPResponseBuilder().add_response(
        cert=leaf, issuer=ca, algorithm=hashes.SHA1(), cert_status=ocsp.OCSPCertStatus.GOOD,
        this_update=now - datetime.timedelta(days=2),
        next_update=now - datetime.timedelta(days=1), revocation_time=None,
        revocation_reason=None).responder_id(ocsp.OCSPResponderEncoding.HASH, ca)
    out.write_bytes(b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))


def test_an_expired_ocsp_response_is_not_stapled_and_does_not_stop_the_gateway(
        certs, make_stack, tmp_path):
    """Whoever fetches the responses fell behind: the gateway still starts (a restart or a
    certificate rotation must not wait for them), says so, and staples nothing: a stale
    staple fails the clients that check it."""
    stale = tmp_path / "stale.ocsp"
    expired_ocsp(certs, stale)
    port = free_port()
    o = tls_overrides(certs, port)
    o["gateway"]["tls"]["certificates"][0]["ocsp"] = str(stale)
    s = make_stack(o, wait_pools=True)
    s.tls_port, s.certs = port, certs
    wait_until(lambda: "outside its validity" in s.gateway.log(), 10 * SLOW, "the warning")
    rc, out = s_client(s, "-servername", "localhost", "-status")
    assert rc == 0 and "OCSP response: no response sent" in out, out
    r = https(s, "/seen", headers={"x-fc-session-id": "stale-ocsp"})
    assert r.status == 200, r


def test_sessions_resume_with_tickets(tstack, tmp_path):
    s = tstack
    sess = tmp_path / "sess.pem"
    rc, out = s_client(s, "-tls1_2", "-sess_out", sess)
    assert rc == 0 and "TLS session ticket:" in out, out
    rc, out = s_client(s, "-tls1_2", "-sess_in", sess)
    assert rc == 0 and "Reused, TLSv1.2" in out, out
    # TLS 1.3: curl keeps the ticket of its first connection for the second (HTTP/1.1 with
    # "Connection: close": over h2 it would reuse the connection)
    p = run(["curl", "-sS", "--http1.1", "--tlsv1.3", "--cacert", s.certs / "ca.pem", "--resolve",
             "localhost:%d:127.0.0.1" % s.tls_port, "-H", "x-fc-session-id: tls-res",
             "-H", "Connection: close", "-o", "/dev/null", "-w", "%{num_connects}\\n",
             "https://localhost:%d/1" % s.tls_port, "-o", "/dev/null",
             "https://localhost:%d/2" % s.tls_port], timeout=30 * SLOW)
    assert p.returncode == 0 and p.stdout.decode().split() == ["1", "1"], p.stdout


# ------------------------------------------------------------------ bad input

def read_until_closed(sock, timeout):
    """Everything the peer sends until it closes; raises if it is still open after <timeout>."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError("still open after %ss (got %r)" % (timeout, data[:200]))


def test_plain_http_and_garbage_at_the_tls_port_are_closed(tstack):
    s = tstack
    for junk in (b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", b"\x00" * 64,
                 b"\x16\x03\x01\x00\x05hello", os.urandom(4096)):
        with socket.create_connection(("127.0.0.1", s.tls_port), timeout=10 * SLOW) as c:
            c.sendall(junk)
            out = read_until_closed(c, 10 * SLOW)
            assert not out.startswith(b"HTTP/1.1 200"), out
    # the loop goes on serving
    r = https(s, "/after-junk", headers={"x-fc-session-id": "tls-junk"})
    assert r.status == 200, r


def test_tls_hello_at_the_plain_port_gets_400(tstack):
    s = tstack
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", s.ports["gateway"]), timeout=10 * SLOW)
    try:
        with pytest.raises((ssl.SSLError, OSError)):
            ctx.wrap_socket(raw, server_hostname="localhost")
    finally:
        raw.close()
    out = raw_exchange(s.ports["gateway"], b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" +
                       os.urandom(32), timeout=10 * SLOW)
    assert out.startswith(b"HTTP/1.1 400"), out


def test_a_handshake_never_finished_is_closed_at_header_timeout(tstack):
    s = tstack  # header_timeout 2 s (x SLOW) for this stack
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", s.tls_port), timeout=10 * SLOW) as c:
        read_until_closed(c, 15 * SLOW)  # nothing sent at all
    with socket.create_connection(("127.0.0.1", s.tls_port), timeout=10 * SLOW) as c:
        c.sendall(b"\x16\x03\x01\x02\x00\x01\x00")  # the first bytes of a ClientHello
        read_until_closed(c, 15 * SLOW)
    assert time.monotonic() - t0 >= 2 * 2 * SLOW * 0.9
    ctx = ssl.create_default_context(cafile=str(s.certs / "ca.pem"))
    # a finished handshake and no request (a browser's preconnect): an idle connection, closed
    # without an answer once keepalive_timeout ran out too (no 408 for what was never asked)
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", s.tls_port), timeout=10 * SLOW) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as c:
            out = read_until_closed(c, 20 * SLOW)
    assert out == b"" and time.monotonic() - t0 >= 2 * 2 * SLOW * 0.9, out
    # part of a head and no more: 408 at header_timeout
    with socket.create_connection(("127.0.0.1", s.tls_port), timeout=10 * SLOW) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
            out = read_until_closed(c, 15 * SLOW)
    assert out.startswith(b"HTTP/1.1 408"), out


# ------------------------------------------------------------------ reload

def test_sighup_reloads_certificates_without_dropping_connections(certs, make_stack, tmp_path):
    d = tmp_path / "live"
    d.mkdir()
    for f in ("localhost-chain.pem", "localhost.key"):
        shutil.copy(certs / f, d / f)
    port = free_port()
    o = tls_overrides(certs, port)
    o["gateway"]["tls"]["certificates"] = [{"cert": "live/localhost-chain.pem",
                                            "key": "live/localhost.key"}]
    s = make_stack(o, wait_pools=True, start_gateway=False)
    # relative names: from the config file's directory
    (Path(s.base) / "live").mkdir()
    for f in ("localhost-chain.pem", "localhost.key"):
        shutil.copy(d / f, Path(s.base) / "live" / f)
    s.start_gateway()
    s.tls_port, s.certs = port, certs
    before = cert_serial(certs / "localhost.pem")
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
    c = ctx.wrap_socket(raw, server_hostname="localhost")
    try:
        def ask(path):
            c.sendall(("GET %s HTTP/1.1\r\nHost: localhost\r\nx-fc-session-id: reload\r\n\r\n"
                       % path).encode())
            f = c.makefile("rb")
            status = f.readline()
            n = 0
            while True:
                line = f.readline().strip()
                if not line:
                    break
                k, _, v = line.decode().partition(":")
                if k.lower() == "content-length":
                    n = int(v)
            f.read(n)
            return status
        def configs():
            return prom_metrics(s.admin_url("/metrics"))["berth_gateway_tls_configs"]

        assert ask("/one").startswith(b"HTTP/1.1 200")
        assert configs() == 1
        sess = tmp_path / "sess.pem"
        rc, out = s_client(s, "-tls1_2", "-servername", "localhost", "-sess_out", sess)
        assert rc == 0, out
        assert format(c.getpeercert(binary_form=False)["serialNumber"]).upper() == \
            before.upper()
        # a new certificate (new serial) in place of the old files, then SIGHUP
        after = make_cert(certs, "reloaded", ["DNS:localhost", "IP:127.0.0.1"])
        shutil.copy(certs / "reloaded-chain.pem", Path(s.base) / "live" / "localhost-chain.pem")
        shutil.copy(certs / "reloaded.key", Path(s.base) / "live" / "localhost.key")
        s.gateway.signal(signal.SIGHUP)
        wait_until(lambda: "TLS certificates reloaded" in s.gateway.log(), 10 * SLOW,
                   "the reload")

        rc, out = s_client(s, "-servername", "localhost", "-showcerts")
        assert rc == 0, out
        pem = out[out.index("-----BEGIN CERTIFICATE-----"):out.index("-----END CERTIFICATE-----")
                  + 25]
        p = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=pem.encode(),
                           stdout=subprocess.PIPE)
        assert p.stdout.decode().strip().split("=", 1)[1] == after, out
        # the connection made before goes on, with the certificate it negotiated; the
        # configuration it was made under lives as long as it does
        assert ask("/two").startswith(b"HTTP/1.1 200")
        assert configs() == 2
        # and a session made before resumes: the ticket keys outlive the reload
        rc, out = s_client(s, "-tls1_2", "-servername", "localhost", "-sess_in", sess)
        assert rc == 0 and "Reused, TLSv1.2" in out, out
        # a broken reload (a key that does not match) keeps the running certificate
        shutil.copy(certs / "preview.key", Path(s.base) / "live" / "localhost.key")
        s.gateway.signal(signal.SIGHUP)
        wait_until(lambda: "TLS reload failed" in s.gateway.log(), 10 * SLOW, "the failure")
        assert s.gateway.alive()
        r = https(s, "/three", headers={"x-fc-session-id": "reload"})
        assert r.status == 200, r
        assert ask("/four").startswith(b"HTTP/1.1 200")
        # once that connection ends, only the current configuration is left in memory
        c.close()
        wait_until(lambda: configs() == 1, 10 * SLOW, "the old TLS configuration freed")
        # reloads with no connection in between keep one
        for i in range(3):
            shutil.copy(certs / "reloaded.key", Path(s.base) / "live" / "localhost.key")
            s.gateway.signal(signal.SIGHUP)
            wait_until(lambda: s.gateway.log().count("TLS certificates reloaded") == 2 + i,
                       10 * SLOW, "reload %d" % i)
        assert configs() == 1
    finally:
        c.close()


# ------------------------------------------------------------------ config

def test_config_errors_are_clear(certs, tmp_path):
    def check(gateway):
        cfg = make_config(tmp_path, "127.0.0.1:1", {"gateway": 1, "admin": 2, "scheduler": 3},
                          {"gateway": gateway})
        path = write_config(tmp_path / "berth.yaml", cfg)
        p = run([binary("berth-gateway"), "-c", path, "-t"])
        return p.returncode, p.stdout.decode(errors="replace")
    rc, out = check({"tls_listen": "127.0.0.1:1"})
    assert rc == 1 and "gateway.tls.certificates" in out and "at least one" in out, out
    rc, out = check({"tls": {"certificates": [{"cert": "a.pem", "key": "b.pem"}]}})
    assert rc == 1 and "without gateway.tls_listen" in out, out
    rc, out = check({"tls_listen": "127.0.0.1:1", "tls": {"certificates": [{"cert": "a.pem"}]}})
    assert rc == 1 and "needs both cert" in out, out
    rc, out = check({"tls_listen": "127.0.0.1:1",
                     "tls": {"certificates": [{"cert": "/nonexistent.pem", "key": "/n.key"}]}})
    assert rc == 1 and "/nonexistent.pem" in out, out
    rc, out = check({"tls_listen": "127.0.0.1:1", "tls": {
        "certificates": [{"cert": str(certs / "localhost-chain.pem"),
                          "key": str(certs / "preview.key")}]}})
    assert rc == 1 and "preview.key" in out, out
    rc, out = check({"tls_listen": "127.0.0.1:1", "tls": {"min_version": "1.1", "certificates": [
        {"cert": str(certs / "localhost-chain.pem"), "key": str(certs / "localhost.key")}]}})
    assert rc == 1 and "min_version" in out, out
    rc, out = check({"tls_listen": "127.0.0.1:1", "tls": {"certificates": [
        {"cert": str(certs / "localhost-chain.pem"), "key": str(certs / "localhost.key"),
         "ocsp": str(certs / "localhost.key")}]}})
    assert rc == 1 and "OCSP" in out, out
    # a good OCSP response, but about another certificate (what a mixed-up file name does)
    o = tmp_path / "o"
    o.mkdir()
    for f in ("ca.pem", "ca.key", "preview.pem"):
        shutil.copy(certs / f, o / f)
    make_ocsp(o, "preview")
    rc, out = check({"tls_listen": "127.0.0.1:1", "tls": {"certificates": [
        {"cert": str(certs / "localhost-chain.pem"), "key": str(certs / "localhost.key"),
         "ocsp": str(o / "preview.ocsp")}]}})
    assert rc == 1 and "preview.ocsp" in out and "another certificate" in out, out
    rc, out = check({"tls_listen": "127.0.0.1:1", "tls": {"certificates": [
        {"cert": str(certs / "localhost-chain.pem"), "key": str(certs / "localhost.key")}]}})
    assert rc == 0, out


# ------------------------------------------------------------------ testssl.sh

@pytest.mark.berth_timeout(900)
def test_testssl_finds_nothing_high_or_critical(tstack, tmp_path):
    exe = shutil.which("testssl") or shutil.which("testssl.sh")
    if not exe:
        pytest.skip("testssl.sh is not installed (tests/run installs it)")
    s = tstack
    out = tmp_path / "testssl.json"
    p = subprocess.run([exe, "--quiet", "--color", "0", "--warnings", "off",
                        "--ip", "127.0.0.1", "--jsonfile", str(out),
                        "localhost:%d" % s.tls_port],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=800)
    assert out.exists(), p.stdout.decode(errors="replace")[-3000:]
    findings = json.loads(out.read_text())
    bad = [f for f in findings if f.get("severity") in ("HIGH", "CRITICAL")]
    # the test CA is not a public one: testssl.sh rates "chain of trust" for that alone
    bad = [f for f in bad if f.get("id") not in ("cert_chain_of_trust",)]
    assert not bad, json.dumps(bad, indent=1)

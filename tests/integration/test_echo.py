"""berth-echo, the default template's app, on its own: what it answers, and that bad input
gets a JSON error instead of a crash or a hang."""

import json
import os
import re
import socket
import time
import zlib

import pytest

import subprocess

from conftest import SLOW, binary, curl, curl_stream, wait_until


def raw(port, data, timeout=5, shut=False):
    """Sends raw bytes, returns everything read until the server closes (or the timeout)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout * SLOW)
    try:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            try:
                d = s.recv(65536)
            except socket.timeout:
                out += b"<timeout>"
                break
            if not d:
                break
            out += d
        return out
    finally:
        s.close()


def split_response(data):
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def is_json_error(resp_body, code):
    j = json.loads(resp_body)
    assert set(j) == {"error"}, j
    assert j["error"]["code"] == code, j
    assert isinstance(j["error"]["message"], str) and j["error"]["message"], j
    return j


def test_echo_describes_the_request(echo_server):
    port, proc = echo_server(instance="i-echo-1")
    r = curl("http://127.0.0.1:%d/some/path?x=1&y=two" % port,
             headers=[("X-Custom", "A"), ("x-custom", "B"), ("X-Fc-Session-Id", "s1")])
    assert r.status == 200
    assert r.header("content-type") == "application/json"
    j = r.json()
    assert j["instance"] == "i-echo-1"
    assert j["pid"] == proc.pid
    assert j["hostname"] == socket.gethostname()
    assert j["kernel"] == os.uname().release
    assert j["uid"] == os.getuid() and j["gid"] == os.getgid()
    assert abs(j["time_ms"] / 1000 - time.time()) < 3600     # its wall clock, in ms
    assert j["method"] == "GET"
    assert j["path"] == "/some/path"
    assert j["query"] == "x=1&y=two"
    assert j["headers"]["x-custom"] == "A, B"          # lower-cased, repeats joined
    assert j["headers"]["x-fc-session-id"] == "s1"
    assert j["headers"]["host"] == "127.0.0.1:%d" % port
    assert j["body"] == "" and j["body_bytes"] == 0 and j["body_crc32"] == 0


def test_env_shows_only_echo_variables(echo_server):
    port, _ = echo_server(env={"ECHO_GREETING": "hi there", "SECRET_TOKEN": "s3cr3t"})
    r = curl("http://127.0.0.1:%d/env/ECHO_GREETING" % port)
    assert r.status == 200 and r.json() == {"name": "ECHO_GREETING", "value": "hi there"}
    r = curl("http://127.0.0.1:%d/env/SECRET_TOKEN" % port)
    assert r.status == 400 and b"s3cr3t" not in r.body
    is_json_error(r.body, "bad_name")
    r = curl("http://127.0.0.1:%d/env/ECHO_" % port)
    assert r.status == 400
    r = curl("http://127.0.0.1:%d/env/ECHO_UNSET" % port)
    assert r.status == 404
    is_json_error(r.body, "not_found")


def test_instance_defaults_to_local(echo_server):
    port, _ = echo_server(env={"BERTH_INSTANCE_ID": ""})
    assert curl("http://127.0.0.1:%d/" % port).json()["instance"] == "local"


def test_content_length_body(echo_server):
    port, _ = echo_server()
    body = "héllo wörld \"quoted\" \\ \n tab\t".encode()
    r = curl("http://127.0.0.1:%d/post" % port, method="POST", data=body)
    j = r.json()
    assert j["method"] == "POST"
    assert j["body"].encode() == body
    assert j["body_bytes"] == len(body)
    assert j["body_crc32"] == zlib.crc32(body)
    assert j["body_truncated"] is False


def test_chunked_binary_body_is_counted_and_truncated(echo_server):
    port, _ = echo_server()
    body = os.urandom(300 * 1024)
    r = curl("http://127.0.0.1:%d/up" % port, method="PUT", data=body,
             headers=[("Transfer-Encoding", "chunked")])
    j = r.json()
    assert j["headers"]["transfer-encoding"] == "chunked"
    assert j["body_bytes"] == len(body)
    assert j["body_crc32"] == zlib.crc32(body)
    assert j["body_truncated"] is True
    # Invalid UTF-8 bytes come back as \u00XX: the first 64 KiB, byte for byte, in Latin-1
    # wherever the input was not UTF-8; for ASCII-only input it is exact:
    ascii_body = bytes(range(32, 127)) * 1000
    j = curl("http://127.0.0.1:%d/" % port, method="POST", data=ascii_body).json()
    assert j["body"].encode() == ascii_body[:65536]
    assert j["body_crc32"] == zlib.crc32(ascii_body)


def test_large_upload_with_expect_100_continue(echo_server):
    port, _ = echo_server()
    body = os.urandom(3 * 1024 * 1024)  # curl sends Expect: 100-continue above 1 MiB
    t0 = time.monotonic()
    r = curl("http://127.0.0.1:%d/big" % port, method="POST", data=body,
             headers=[("Expect", "100-continue")])
    elapsed = time.monotonic() - t0
    j = r.json()
    assert j["body_bytes"] == len(body) and j["body_crc32"] == zlib.crc32(body)
    assert elapsed < 0.9 * SLOW, "curl waited for 100 Continue (%.2fs)" % elapsed


def test_keep_alive_and_pipelining(echo_server):
    port, _ = echo_server()
    reqs = b"".join(b"GET /r%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(3))
    reqs += b"POST /last HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
    out = raw(port, reqs)
    bodies = [json.loads(b) for b in re.findall(rb'\{"instance".*?\}\n', out)]
    assert [b["path"] for b in bodies] == ["/r0", "/r1", "/r2", "/last"]
    assert bodies[3]["body"] == "abc"
    assert out.count(b"HTTP/1.1 200 OK") == 4


def test_http10_closes(echo_server):
    port, _ = echo_server()
    out = raw(port, b"GET /old HTTP/1.0\r\n\r\n")
    status, headers, body = split_response(out)
    assert status == 200
    assert headers.get("connection") == "close"
    j = json.loads(body)
    assert j["path"] == "/old" and j["http_version"] == "1.0"


def test_head_has_no_body(echo_server):
    port, _ = echo_server()
    out = raw(port, b"HEAD /bytes?n=10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, body = split_response(out)
    assert status == 200 and headers["content-length"] == "10" and body == b""


def test_sse_events_arrive_one_at_a_time(echo_server):
    port, _ = echo_server(instance="i-sse")
    lines = list(curl_stream("http://127.0.0.1:%d/sse?n=5&interval_ms=200" % port))
    text = [line for _, line in lines]
    assert text[0].startswith("HTTP/1.1 200")
    assert "Content-Type: text/event-stream" in text
    events = [(t, json.loads(line[len("data: "):])) for t, line in lines
              if line.startswith("data: ")]
    ids = [line for _, line in lines if line.startswith("id: ")]
    assert ids == ["id: %d" % i for i in range(5)]
    assert [e["i"] for _, e in events] == list(range(5))
    assert all(e["instance"] == "i-sse" for _, e in events)
    assert all(isinstance(e["t_ms"], int) for _, e in events)
    # flushed one by one: arrival times are spread by the interval, not bunched at the end
    arrivals = [t for t, _ in events]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert all(g > 0.12 for g in gaps), gaps
    sent = [e["t_ms"] for _, e in events]
    assert all(b - a >= 190 for a, b in zip(sent, sent[1:])), sent


def test_sse_resumes_after_last_event_id(echo_server):
    port, _ = echo_server()
    lines = [line for _, line in curl_stream(
        "http://127.0.0.1:%d/sse?n=4&interval_ms=1" % port, headers={"Last-Event-ID": "1"})]
    assert [line for line in lines if line.startswith("id: ")] == ["id: 2", "id: 3"]


def test_bytes_streams_without_holding_the_body(echo_server):
    port, proc = echo_server()
    r = curl("http://127.0.0.1:%d/bytes?n=100000" % port)
    alphabet = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/"
    assert r.status == 200 and len(r.body) == 100000
    assert r.body == (alphabet * (100000 // 64 + 1))[:100000]
    n = 300 * 1024 * 1024
    r = curl("http://127.0.0.1:%d/bytes?n=%d" % (port, n), timeout=60, output="/dev/null",
             extra=["-w", "%{size_download}\n%{http_code}"])
    assert r.status == 200, r.error
    assert r.write_out.splitlines()[0] == str(n)
    with open("/proc/%d/status" % proc.pid) as f:
        hwm_kb = int(next(line for line in f if line.startswith("VmHWM:")).split()[1])
    limit = 60 * 1024 if SLOW == 1 else 400 * 1024  # ASan's shadow memory counts too
    assert hwm_kb < limit, "berth-echo peak RSS %d KiB after streaming %d bytes" % (hwm_kb, n)


def test_files_durable_and_workspace(echo_server):
    base = echo_server.dir
    data_dir, ws_dir = base / "data", base / "ws"
    data_dir.mkdir()
    ws_dir.mkdir()
    port, _ = echo_server(["--data-dir", str(data_dir), "--workspace-dir", str(ws_dir)])
    url = "http://127.0.0.1:%d" % port
    content = os.urandom(200 * 1024)
    r = curl(url + "/files/notes.bin", method="PUT", data=content)
    assert r.status == 201, r
    j = r.json()
    assert j["bytes"] == len(content) and j["crc32"] == zlib.crc32(content)
    assert (data_dir / "notes.bin").read_bytes() == content
    assert curl(url + "/files/notes.bin", method="PUT", data=b"v2").status == 200
    r = curl(url + "/files/notes.bin")
    assert r.status == 200 and r.body == b"v2"
    assert r.header("content-type") == "application/octet-stream"
    assert curl(url + "/workspace/w.txt", method="PUT", data=b"scratch").status == 201
    assert (ws_dir / "w.txt").read_bytes() == b"scratch"
    assert curl(url + "/workspace/w.txt").body == b"scratch"
    assert not list(data_dir.glob("*.upload.*")), "temporary upload files left behind"

    r = curl(url + "/files/missing")
    assert r.status == 404
    is_json_error(r.body, "not_found")
    r = curl(url + "/workspace/missing")
    assert r.status == 404
    for bad in ["/files/a%2Fb", "/files/.hidden%20x", "/files/x*y", "/files/" + "n" * 300]:
        r = curl(url + bad, method="PUT", data=b"x", extra=["--path-as-is"])
        assert r.status == 400, (bad, r)
        is_json_error(r.body, "bad_name")
    r = curl(url + "/files/..", method="GET", extra=["--path-as-is"])
    assert r.status == 400
    r = curl(url + "/files/x", method="POST", data=b"x")
    assert r.status == 405
    is_json_error(r.body, "method_not_allowed")


def test_files_without_durable_storage(echo_server):
    port, _ = echo_server(["--data-dir", "/nonexistent-berth-data"])
    r = curl("http://127.0.0.1:%d/files/a" % port, method="PUT", data=b"x")
    assert r.status == 503
    is_json_error(r.body, "storage_unavailable")


def test_upload_over_the_limit(echo_server):
    d = echo_server.dir / "d"
    d.mkdir()
    port, _ = echo_server(["--data-dir", str(d), "--max-file-bytes", "1000"])
    r = curl("http://127.0.0.1:%d/files/big" % port, method="PUT", data=b"x" * 5000)
    assert r.status == 413
    is_json_error(r.body, "body_too_large")
    r = curl("http://127.0.0.1:%d/files/big" % port, method="PUT", data=b"x" * 5000,
             headers=[("Transfer-Encoding", "chunked")])
    assert r.status == 413
    assert not list(d.iterdir()), list(d.iterdir())


def test_exit_ends_the_process(echo_server):
    port, proc = echo_server()
    r = curl("http://127.0.0.1:%d/exit?code=3" % port, method="POST")
    assert r.status == 200 and r.json() == {"exiting": True, "code": 3}
    wait_until(lambda: not proc.alive(), 5 * SLOW, "berth-echo to exit")
    assert proc.p.returncode == 3
    proc.ok_codes = (3,)


def test_bad_input_gets_json_errors(echo_server):
    port, proc = echo_server(["--max-header-bytes", "4096", "--max-headers", "20"])
    url = "http://127.0.0.1:%d" % port

    status, _, body = split_response(raw(port, b"NOT HTTP AT ALL\r\n\r\n"))
    assert status == 400
    is_json_error(body, "bad_request")

    status, _, body = split_response(raw(
        port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n"))
    assert status == 400
    is_json_error(body, "bad_request")

    status, _, body = split_response(raw(
        port, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"))
    assert status == 400

    r = curl(url + "/", headers=[("X-Big", "a" * 5000)])
    assert r.status == 431
    is_json_error(r.body, "headers_too_large")
    r = curl(url + "/", headers=[("X-H%d" % i, "v") for i in range(30)])
    assert r.status == 431

    for q in ["/sse?n=abc", "/sse?n=-1", "/bytes?n=1e9", "/sse?interval_ms=99999999",
              "/bytes?n=999999999999999999999999"]:
        r = curl(url + q)
        assert r.status == 400, q
        is_json_error(r.body, "bad_query")
    r = curl(url + "/exit?code=256", method="POST")
    assert r.status == 400

    # NUL and control bytes in the request line, a truncated request with EOF
    for junk in [b"GET /\x00 HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                 b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"]:
        out = raw(port, junk, shut=True)
        if out:
            assert out.startswith(b"HTTP/1.1 400"), out[:100]
    assert proc.alive()
    assert curl(url + "/still-alive").json()["path"] == "/still-alive"


def test_connection_limit(echo_server):
    port, proc = echo_server(["--max-connections", "2"])

    def threads():
        with open("/proc/%d/status" % proc.pid) as f:
            return int(next(line for line in f if line.startswith("Threads:")).split()[1])
    assert threads() == 1  # one thread per connection, and no connection yet
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        wait_until(lambda: threads() == 3, 5 * SLOW, "two connection threads")
        r = curl("http://127.0.0.1:%d/" % port)
        assert r.status == 503
        is_json_error(r.body, "overloaded")
    finally:
        for s in held:
            s.close()
    wait_until(lambda: curl("http://127.0.0.1:%d/" % port).status == 200, 5 * SLOW,
               "a free connection slot")


def test_idle_and_read_timeouts(echo_server):
    port, _ = echo_server(["--idle-timeout-ms", "300", "--read-timeout-ms", "300"])
    s = socket.create_connection(("127.0.0.1", port), timeout=5 * SLOW)
    t0 = time.monotonic()
    assert s.recv(100) == b""  # idle keep-alive connection closed by the server
    assert 0.2 < time.monotonic() - t0 < 3 * SLOW
    s.close()
    out = raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n")  # head never finished
    assert out.startswith(b"HTTP/1.1 408"), out
    is_json_error(split_response(out)[2], "request_timeout")


def test_command_line(tmp_path):
    exe = binary("berth-echo")
    p = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=10)
    assert p.returncode == 0 and "--port" in p.stdout
    for argv in [[], ["--port"], ["--port", "70000"], ["--port", "1", "extra"],
                 ["--port", "1", "--host", "not-an-ip"], ["--port", "1", "--max-headers", "0"],
                 ["--bogus"]]:
        p = subprocess.run([exe] + argv, capture_output=True, text=True, timeout=10)
        assert p.returncode == 2, (argv, p.returncode, p.stderr)
        assert p.stderr, argv


@pytest.mark.skipif(SLOW > 1, reason="static linking is for the normal build")
def test_statically_linked_when_possible():
    out = subprocess.run(["file", "-L", binary("berth-echo")], capture_output=True,
                         text=True).stdout if os.path.exists("/usr/bin/file") else ""
    if not out:
        with open(binary("berth-echo"), "rb") as f:
            elf = f.read(1 << 20)
        assert b"/lib64/ld-linux" not in elf and b"ld-linux-x86-64.so" not in elf
    else:
        assert "statically linked" in out, out

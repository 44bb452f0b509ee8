"""gateway.access_log: one line per exchange (request id, peer, protocol, method, path, status,
tenant, session, instance, body bytes each way, time to the response head and in all), and
the request id on every log line about an exchange. What a client could try: forge the line
with quotes, spaces or a long X-Request-Id (made log-safe and cut)."""

import re
import socket
import time

from conftest import SLOW, curl, curl_stream, echo_template, wait_until

def access_lines(s):
    return [l for l in s.gateway.log().splitlines() if "sys=access" in l]


def fields(line):
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S+)", line))


def one_line(s, req_id):
    def find():
        got = [fields(l) for l in access_lines(s) if "req=%s " % req_id in l]
        return got[0] if got else None
    return wait_until(find, 10 * SLOW, "the access line of %s" % req_id)


def test_access_lines_and_request_ids(make_stack):
    s = make_stack({"templates": [echo_template(pool={"min": 1, "max": 4})],
                    "gateway": {"access_log": {"enabled": True}}})
    # the client's id: kept upstream, on the line
    r = curl(s.url("/one?x=1"), headers={"x-fc-session-id": "acc", "X-Request-Id": "rid-1"})
    assert r.status == 200 and r.json()["headers"]["x-request-id"] == "rid-1", r
    f = one_line(s, "rid-1")
    assert f["method"] == "GET" and f["path"] == "/one?x=1" and f["status"] == "200", f
    assert f["proto"] == "http/1.1" and f["tenant"] == "default" and f["peer"] == "127.0.0.1"
    assert f["instance"] == r.header("x-berth-instance"), f
    assert re.fullmatch(r"[0-9a-f]{32}", f["session"]), f
    assert f["in"] == "0" and int(f["out"]) == len(r.body), (f, len(r.body))
    assert 0 <= float(f["ttfb_ms"]) <= float(f["total_ms"]), f
    # none sent: ours, the same upstream and on the line
    r = curl(s.url("/two"), data=b"x" * 1000, headers={"x-fc-session-id": "acc"})
    ours = r.json()["headers"]["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", ours), ours
    f = one_line(s, ours)
    assert f["method"] == "POST" and f["in"] == "1000" and f["status"] == "200", f
    # answered by the gateway (a key too long to be one): its status, no instance
    r = curl(s.url("/three"), headers={"x-fc-session-id": "k" * 300, "X-Request-Id": "rid-3"})
    assert r.status == 400, r
    f = one_line(s, "rid-3")
    assert f["status"] == "400" and f["instance"] == "-" and f["session"] == "-", f


def test_forged_ids_and_paths_stay_one_line(make_stack):
    s = make_stack({"templates": [echo_template(pool={"min": 1, "max": 2})],
                    "gateway": {"access_log": {"enabled": True}}})
    bad = 'a" status=999 b\\c'
    r = curl(s.url("/p"), headers={"x-fc-session-id": "forge", "X-Request-Id": bad})
    assert r.status == 200, r
    f = one_line(s, "a__status=999_b_c")  # quote, space and backslash made '_'
    assert f["status"] == "200", f
    assert not [l for l in access_lines(s) if 'a"' in l or " status=999" in l]
    # an id over 128 bytes is not the client's: ours instead, upstream too
    r = curl(s.url("/q"), headers={"x-fc-session-id": "forge", "X-Request-Id": "z" * 200})
    ours = r.json()["headers"]["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", ours), ours
    one_line(s, ours)
    # a long path is cut
    r = curl(s.url("/" + "p" * 1000), headers={"x-fc-session-id": "forge", "X-Request-Id": "long"})
    f = one_line(s, "long")
    assert f["path"].endswith("...") and len(f["path"]) <= 260, f


def test_aborted_exchange_and_logs_carry_the_request_id(make_stack):
    s = make_stack({"templates": [echo_template(pool={"min": 1, "max": 2})],
                    "gateway": {"access_log": {"enabled": True}}})
    # an SSE stream the client leaves: its line says so
    for _, line in curl_stream(s.url("/sse?n=1000&interval_ms=50"),
                               headers={"x-fc-session-id": "ab", "X-Request-Id": "rid-sse"}):
        if line.startswith("data: "):
            break  # the consumer stops: curl is killed, the client is gone
    f = one_line(s, "rid-sse")
    assert f.get("end") == "aborted" and f["status"] == "200", f
    # a bad chunked body: the gateway's own log line about it names the exchange
    with socket.create_connection(("127.0.0.1", s.ports["gateway"]), timeout=10 * SLOW) as c:
        c.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nx-fc-session-id: ab\r\nX-Request-Id: rid-bad\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\nzz\r\n")
        c.recv(4096)
    wait_until(lambda: [l for l in s.gateway.log().splitlines()
                        if "bad chunked request body" in l and "req=rid-bad" in l],
               10 * SLOW, "the log line with the request id")
    assert one_line(s, "rid-bad")["status"] == "400"


def test_sampling(make_stack):
    s = make_stack({"templates": [echo_template(pool={"min": 1, "max": 2})],
                    "gateway": {"access_log": {"enabled": True, "sample": 4}}})
    for i in range(12):
        r = curl(s.url("/s%d" % i), headers={"x-fc-session-id": "samp",
                                               "X-Request-Id": "samp-%d" % i})
        assert r.status == 200, r
    # the lines are written as each exchange ends, which may be just after curl saw it whole
    wait_until(lambda: len([l for l in access_lines(s) if "req=samp-" in l]) >= 3, 10 * SLOW,
               "three sampled lines")
    time.sleep(0.5)
    got = [l for l in access_lines(s) if "req=samp-" in l]
    assert len(got) == 3, got

"""PUT, GET, DELETE /v1/sessions/{id}/files/{path} and GET .../files/{dir}/ (issue 17): files of
a session's sandbox through berth-agent, confined to its workspace and /data. What a hostile
tenant could do with it, and what these tests try: leave the roots with "..", an absolute
symlink or one that climbs out (refused: paths are resolved inside the root, RESOLVE_BENEATH),
write where the sandbox's user may not, fill the disk (its quota: 507), or reach another
tenant's session (404)."""
import hashlib
import json
import os

import pytest

from conftest import OTHER_KEY, SLOW, curl, echo_template

pytestmark = pytest.mark.berth_timeout(180)


@pytest.fixture
def fstack(make_stack):
    return make_stack({"templates": [echo_template(pool={"min": 1, "max": 4},
                                                   workspace_size="2MiB")],
                       "gateway": {"admin": {"max_upload": "16MiB"}}})


def fcall(s, method, path, data=None, key="berth-dev-key", timeout=30):
    return curl(s.admin_url("/v1/sessions/" + path), method=method, data=data,
                headers={"Authorization": "Bearer " + key}, timeout=timeout * SLOW,
                extra=["--path-as-is"])  # dot segments reach the gateway as sent


def run(s, key, *cmd):
    r = s.api("POST", "/v1/sessions/%s/exec" % key, {"cmd": list(cmd)})
    assert r.status == 200, r
    evs = [json.loads(x) for x in r.body.decode().splitlines() if x]
    return "".join(e.get("data", "") for e in evs if e["type"] == "stdout")


def test_files_round_trip(fstack):
    s = fstack
    assert s.get("/", session="f1").status == 200
    # 12 MiB: over admin.max_body (1 MiB), streamed to the sandbox, never buffered whole.
    blob = os.urandom(12 << 20) + b"end"
    r = fcall(s, "PUT", "f1/files/data/dir/sub/blob.bin", data=blob)
    assert r.status == 200, r
    assert r.json() == {"path": "/data/dir/sub/blob.bin", "size": len(blob)}
    r = fcall(s, "GET", "f1/files/data/dir/sub/blob.bin")
    assert r.status == 200 and r.header("Content-Type") == "application/octet-stream"
    assert hashlib.sha256(r.body).hexdigest() == hashlib.sha256(blob).hexdigest()
    # Inside, the sandbox's user owns it, and the app sees it.
    assert run(s, "f1", "/bin/sh", "-c", "stat -c '%u %s' /data/dir/sub/blob.bin") == \
        "1000 %d\n" % len(blob)
    assert fcall(s, "PUT", "f1/files/workspace/notes.md", data=b"# hi\n").status == 200
    assert s.get("/workspace/notes.md", session="f1").body == b"# hi\n"
    # Listing.
    r = fcall(s, "GET", "f1/files/data/dir/sub/")
    assert r.status == 200
    entries = r.json()["entries"]
    assert r.json()["path"] == "/data/dir/sub/"
    assert [(e["name"], e["type"], e["size"]) for e in entries] == \
        [("blob.bin", "file", len(blob))]
    assert entries[0]["mode"] == "644" and entries[0]["mtime_ms"] > 0
    names = {e["name"]: e["type"] for e in fcall(s, "GET", "f1/files/data/").json()["entries"]}
    assert names["dir"] == "directory"
    # Delete: a file, then an empty directory; a full one is refused.
    assert fcall(s, "DELETE", "f1/files/data/dir").status == 409
    assert fcall(s, "DELETE", "f1/files/data/dir/sub/blob.bin").status == 204
    assert fcall(s, "GET", "f1/files/data/dir/sub/blob.bin").status == 404
    assert fcall(s, "DELETE", "f1/files/data/dir/sub").status == 204
    # Audited.
    evs = s.api("GET", "/v1/events?session=f1&type=file_written,file_deleted").json()["events"]
    assert [e["type"] for e in evs][:1] == ["file_written"]
    assert evs[0]["path"] == "/data/dir/sub/blob.bin" and evs[0]["size"] == str(len(blob))


def test_files_stay_inside_the_roots(fstack):
    s = fstack
    assert s.get("/", session="f2").status == 200
    # Symlinks the tenant makes inside: to the host's root, climbing out, absolute.
    run(s, "f2", "/bin/sh", "-c", "cd /workspace && ln -s / root && ln -s ../../etc up && "
        "ln -s /data/x abs && mkdir d && echo in > d/f && ln -s d/f inside")
    for path in ("workspace/root/etc/passwd", "workspace/up/passwd", "workspace/abs",
                 "workspace/../etc/passwd", "workspace/./d/f", "etc/passwd", "tmp/x",
                 "workspace//d/f", "data/.."):
        r = fcall(s, "GET", "f2/files/" + path)
        assert r.status in (400, 404), (path, r)
        if r.status == 400:
            assert r.json()["error"]["code"] == "invalid_argument"
    r = fcall(s, "PUT", "f2/files/workspace/root/tmp/evil", data=b"x")
    assert r.status == 400, r
    # Percent-encoded slashes and dots are decoded first, then refused the same way.
    assert fcall(s, "GET", "f2/files/workspace%2F..%2Fetc%2Fpasswd").status == 400
    # A symlink that stays inside is followed.
    assert fcall(s, "GET", "f2/files/workspace/inside").body == b"in\n"
    # Not a file / not a directory.
    assert fcall(s, "GET", "f2/files/workspace/d").status == 409
    assert fcall(s, "GET", "f2/files/workspace/d/f/").status == 409
    # A FIFO does not hang the read.
    run(s, "f2", "/usr/bin/mkfifo", "/workspace/fifo")
    assert fcall(s, "GET", "f2/files/workspace/fifo", timeout=10).status == 409
    # Over the workspace's size (2 MiB): 507, and nothing is left behind.
    r = fcall(s, "PUT", "f2/files/workspace/big", data=b"z" * (3 << 20))
    assert r.status == 507 and r.json()["error"]["code"] == "insufficient_storage", r
    # Over admin.max_upload (16 MiB): 413 at its Content-Length, before any byte goes in...
    r = fcall(s, "PUT", "f2/files/data/huge", data=b"z" * (17 << 20))
    assert r.status == 413, r
    # ...or, chunked (no length), once the bytes passed it; nothing is left behind.
    big = s.base / "big.bin"
    big.write_bytes(b"y" * (17 << 20))
    r = curl(s.admin_url("/v1/sessions/f2/files/data/huge"), method="PUT",
             headers={"Authorization": "Bearer berth-dev-key", "Transfer-Encoding": "chunked"},
             data_file=str(big), timeout=60 * SLOW)
    assert r.status in (0, 413), r
    assert fcall(s, "GET", "f2/files/data/huge").status == 404
    assert ".berth-upload" not in run(s, "f2", "/bin/ls", "-a", "/data")
    assert fcall(s, "GET", "f2/files/workspace/big").status == 404
    assert ".berth-upload" not in run(s, "f2", "/bin/ls", "-a", "/workspace")


def test_files_bad_input_and_other_tenants(fstack):
    s = fstack
    assert s.get("/", session="f3").status == 200
    assert fcall(s, "PUT", "f3/files/data/mine", data=b"secret").status == 200
    r = fcall(s, "GET", "f3/files/data/mine", key=OTHER_KEY)
    assert r.status == 404 and r.json()["error"]["code"] == "not_found"
    assert fcall(s, "GET", "nosuch/files/data/x").status == 404
    r = fcall(s, "POST", "f3/files/data/mine")
    assert r.status == 405 and r.header("Allow") == "GET, PUT, DELETE"
    assert fcall(s, "GET", "f3/files/data/%zz").status == 400
    assert fcall(s, "PUT", "f3/files/data/", data=b"x").status == 409
    assert fcall(s, "DELETE", "f3/files/data").status == 409

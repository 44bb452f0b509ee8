"""The microvm driver (scheduler/README.md, "The microvm driver"), with real microVMs.

Every instance is a QEMU `-M microvm` clone restored from its template's snapshot. The
accelerator is what the driver's probe picked on this host: KVM where a probe boot reached
READY, TCG elsewhere (on these PVM hosts /dev/kvm cannot boot a stock kernel, or is not open to
an unprivileged group). Each test prints which (`accel=`), and GET /v1/status says why.

The guest image (kernel + initramfs) comes from the normal build's guest-image target (built
here when missing; the kernel package is fetched from Debian's mirror once). A sanitized build
runs its scheduler against the normal build's image (build-tests/ next to it), so the driver
runs under ASan too; without one the module is skipped, with the reason.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (BUILD_DIR, REPO, SANITIZED, SLOW, binary, curl, echo_template,
                      stored_file, wait_until)

QEMU = "/usr/bin/qemu-system-x86_64"


def _image_dir():
    own = BUILD_DIR / "scheduler" / "guest"
    if not SANITIZED:
        fetch = subprocess.run(
            [sys.executable, str(REPO / "scheduler/guest/mkimage.py"), "--cache",
             str(own / "cache"), "--fetch-only"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
        if fetch.returncode == 3:
            pytest.skip("guest kernel not cached and cannot be fetched: %s" % fetch.stdout[-300:])
        assert fetch.returncode == 0, fetch.stdout
        build = subprocess.run(["nice", "meson", "compile", "-C", str(BUILD_DIR), "guest-image"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=900)
        assert build.returncode == 0, build.stdout[-3000:]
        return own
    # A sanitized build has no image target (its agent is not static): the normal build's.
    for cand in (BUILD_DIR.parent / "build-tests", REPO / "build"):
        d = cand / "scheduler" / "guest"
        if all((d / f).exists() for f in ("vmlinux", "initramfs.cpio.gz", "kernel.release")):
            return d
    pytest.skip("sanitized build and no normal build's guest image next to it")


@pytest.fixture(scope="module")
def image_dir():
    if not os.path.exists(QEMU):
        pytest.skip("qemu-system-x86_64 not installed (tests/run installs qemu-system-x86)")
    return _image_dir()


def mvm_template(name="echo", **over):
    """The default echo template with driver: microvm, and nothing else changed (the issue's
    requirement: no other key is needed)."""
    t = echo_template(name, driver="microvm")
    return json.loads(json.dumps(dict(t, **over)))


def mvm_overrides(image_dir, templates, **sched):
    s = {"capacity": 40, "microvm": {"image_dir": str(image_dir)}}
    s.update(sched)
    return {"templates": templates, "scheduler": s}


def status(s):
    st = s.sched_api("/v1/status").json()
    return next(d for d in st["drivers"] if d["name"] == "microvm")


def vm_of(s, iid):
    """(pid, cmdline words) of instance <iid>'s QEMU."""
    pid = int(s.instances()[iid]["pid"])
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        return pid, f.read().split(b"\0")


def run_dir(s, iid):
    return Path(s.cfg["scheduler"]["run_dir"]) / "microvm" / iid


def port_open(port):
    with socket.socket() as c:
        c.settimeout(1)
        return c.connect_ex(("127.0.0.1", port)) == 0


def echo(s, key, path="/", **kw):
    r = s.get(path, session=key, timeout=30 * SLOW, **kw)
    assert r.status == 200, (r.status, r.body[:500])
    return r.json()


@pytest.fixture(scope="module")
def mvm(image_dir, tmp_path_factory):
    from conftest import Stack, _remove_tree, _short_tmp, _skip_unless_root
    _skip_unless_root()
    d = _short_tmp()
    idle = mvm_template("idle", idle_timeout="2s", pool={"min": 1, "max": 4})
    s = Stack(d, mvm_overrides(image_dir, [mvm_template(), idle]), wait_pools=False)
    try:
        s.wait_pool("echo", 2, timeout=120 * SLOW)
        s.wait_pool("idle", 1, timeout=120 * SLOW)
        st = status(s)
        print("microvm accel=%s (%s)" % (st["status"]["accel"], st["status"]["accel_reason"]))
        yield s
    finally:
        try:
            s.stop()
        finally:
            _remove_tree(d)


def guest_release(image_dir):
    return (Path(image_dir) / "kernel.release").read_text().strip()


def test_each_session_gets_its_own_vm(mvm, image_dir):
    s = mvm
    accel = status(s)["status"]["accel"]
    outs = {}
    for i in range(5):
        outs["vm-%d" % i] = echo(s, "vm-%d" % i)
    host_release = os.uname().release
    release = guest_release(image_dir)
    names = set()
    now = time.time() * 1000
    for key, o in outs.items():
        assert o["kernel"] == release and o["kernel"] != host_release, o
        names.add(o["hostname"])
        # The clone's clock was set at bind (the snapshot's is older than this test).
        assert abs(o["time_ms"] - now) < 60_000, o
    assert len(names) == 5, names
    # Each hostname is the instance id the agent got at bind, and each is its own QEMU.
    insts = s.instances()
    pids = set()
    for name in names:
        assert name in insts, (name, list(insts))
        assert insts[name]["driver"] == "microvm" and insts[name]["accel"] == accel
        pid, words = vm_of(s, name)
        assert words[0].endswith(b"qemu-system-x86_64") and b"berth-" + name.encode() in words
        pids.add(pid)
    assert len(pids) == 5
    # Entropy: two clones of one snapshot draw different bytes; the clock is the host's.
    a, b = echo(s, "vm-0"), echo(s, "vm-1")
    assert a["random"] != b["random"] and a["hostname"] != b["hostname"]
    t0 = time.time() * 1000
    c = echo(s, "vm-2")
    t1 = time.time() * 1000
    assert t0 - 1000 <= c["time_ms"] <= t1 + 1000, (t0, c["time_ms"], t1)
    # The workspace is the VM's own.
    w = s.get("/workspace/mine.txt", session="vm-0", method="PUT", data="zero",
              timeout=30 * SLOW)
    assert w.status in (200, 201), w
    assert s.get("/workspace/mine.txt", session="vm-0", timeout=30 * SLOW).body == b"zero"
    assert s.get("/workspace/mine.txt", session="vm-1", timeout=30 * SLOW).status == 404


def test_delete_destroys_the_vm_and_keeps_data(mvm):
    s = mvm
    o = echo(s, "keep-1")
    iid = o["hostname"]
    h = s.instances()[iid]["session"]
    w = s.get("/files/note.txt", session="keep-1", method="PUT", data="durable",
              timeout=30 * SLOW)
    assert w.status in (200, 201), w
    pid, _ = vm_of(s, iid)
    port = int(s.instances()[iid]["addr"].rsplit(":", 1)[1])
    assert run_dir(s, iid).is_dir() and port_open(port)
    assert s.api("DELETE", "/v1/sessions/keep-1").status == 204
    wait_until(lambda: not os.path.exists("/proc/%d" % pid), 30 * SLOW, "QEMU to end")
    wait_until(lambda: not run_dir(s, iid).exists(), 30 * SLOW, "the VM's run dir to go")
    assert iid not in s.instances()
    assert not port_open(port)
    # The guest unmounted /data cleanly when it powered off: the host reads the image.
    assert stored_file(s, h, "note.txt") == "durable"
    # The same session key later: a new VM, the same /data.
    o2 = echo(s, "keep-1")
    assert o2["hostname"] != iid
    r = s.get("/files/note.txt", session="keep-1", timeout=30 * SLOW)
    assert r.status == 200 and r.body == b"durable", r


def test_idle_timeout_destroys_the_vm(mvm):
    s = mvm
    r = s.api("POST", "/v1/sessions", {"id": "idle-1", "template": "idle"})
    assert r.status in (200, 201), r
    iid = r.json()["instance"]
    assert echo(s, "idle-1")["hostname"] == iid
    pid, _ = vm_of(s, iid)
    wait_until(lambda: not os.path.exists("/proc/%d" % pid), 30 * SLOW,
               "the idle session's QEMU to end")
    wait_until(lambda: not run_dir(s, iid).exists(), 30 * SLOW, "the VM's run dir to go")


def test_qemu_killed_from_outside_is_lost(mvm):
    s = mvm
    o = echo(s, "killed-1")
    iid = o["hostname"]
    pid, _ = vm_of(s, iid)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: s.session(s.instances().get(iid, {}).get("session", "x")).get("state")
               in (None, "lost") or iid not in s.instances(), 30 * SLOW, "the loss")
    wait_until(lambda: not run_dir(s, iid).exists(), 30 * SLOW, "the VM's run dir to go")
    log = (Path(s.base) / "scheduler.log").read_text()
    assert "inst=%s" % iid in log and "killed signal=9" in log


def test_app_exit_ends_the_vm(mvm):
    s = mvm
    o = echo(s, "exit-1")
    iid = o["hostname"]
    pid, _ = vm_of(s, iid)
    s.get("/exit", session="exit-1", method="POST", timeout=10 * SLOW)
    wait_until(lambda: not os.path.exists("/proc/%d" % pid), 30 * SLOW, "QEMU to end")
    wait_until(lambda: not run_dir(s, iid).exists(), 30 * SLOW, "the VM's run dir to go")


def test_many_at_once_and_scheduler_kill9(image_dir, make_stack):
    s = make_stack(mvm_overrides(image_dir, [mvm_template(pool={"min": 0, "max": 24})]),
                   wait_pools=False)
    wait_until(lambda: status(s)["status"]["templates"][0]["snapshot"] == "ready", 120 * SLOW,
               "the template's snapshot")
    import concurrent.futures as cf

    def one(k):
        return echo(s, "burst-%d" % k)["hostname"]

    # 10 from an empty pool (API starts: each a clone restored on demand) ...
    with cf.ThreadPoolExecutor(10) as ex:
        first = list(ex.map(one, range(10)))
    assert len(set(first)) == 10
    # ... the scheduler killed -9 while VMs run, restarted: every bound session keeps its VM.
    s.scheduler.p.send_signal(signal.SIGKILL)
    s.scheduler.p.wait(10)
    s.start_scheduler(wait_pools=False)
    with cf.ThreadPoolExecutor(10) as ex:
        again = list(ex.map(one, range(10)))
    assert again == first
    # ... and 10 more at once, from the pool the restarted scheduler refills.
    with cf.ThreadPoolExecutor(10) as ex:
        more = list(ex.map(one, range(10, 20)))
    assert len(set(more) | set(first)) == 20
    log = (Path(s.base) / "scheduler.log").read_text()
    assert "lost=0" in log.split("recovery done")[-1].split("\n")[0]


def test_never_ready_template_fails_with_reason(image_dir, make_stack):
    bad = mvm_template("never", app={"command": ["/bin/sleep", "1000"], "port": 8000},
                       ready_timeout="5s", pool={"min": 1, "max": 1})
    s = make_stack(mvm_overrides(image_dir, [bad]), wait_pools=False)
    wait_until(lambda: status(s)["status"]["templates"][0]["snapshot"] == "failed",
               120 * SLOW, "the snapshot to fail")
    t = status(s)["status"]["templates"][0]
    assert "not READY" in t["reason"], t
    # Nothing left behind: no QEMU of this stack runs, no instance dir stays.
    base = Path(s.cfg["scheduler"]["run_dir"]) / "microvm"
    wait_until(lambda: not [p for p in base.iterdir() if p.name != "cache"], 30 * SLOW,
               "the failed VMs' dirs to go")

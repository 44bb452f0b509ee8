"""bench/vm (bench/README.md, "microVMs (bench/vm)"): a --quick run end to end, and SIGTERM.

No timing assertions: these check that bench/vm completes, reports both drivers' figures from
real sessions (each on an instance of its own, of the driver named), and leaves nothing behind
(no QEMU, no sandbox process, no cgroup, no temp dir), also when it is stopped with SIGTERM in
the middle of a run. Skipped without qemu-system-x86_64 or the guest image (fetched and built as
test_microvm.py does), in sanitized builds (bench/vm builds and measures the normal binaries and
the image, which needs static ones) and when not root."""

import json
import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BUILD_DIR, REPO, SANITIZED, guest_image, pid_alive

PY = "/usr/bin/python3"
QEMU = "/usr/bin/qemu-system-x86_64"
PHASES = ("warm_seq", "warm_burst", "cold_seq", "cold_burst")


@pytest.fixture(scope="module")
def vm_ready():
    if os.geteuid() != 0:
        pytest.skip("needs root: the scheduler uses namespaces and cgroups")
    if SANITIZED:
        pytest.skip("sanitized build: bench/vm measures a normal build (the guest image needs "
                    "static binaries)")
    if not os.path.exists(QEMU):
        pytest.skip("qemu-system-x86_64 not installed (tests/run installs qemu-system-x86)")
    guest_image()


def leftovers(host_id, cgroup_parent):
    """What of one stack is still there: processes in its cgroups, with its instances'
    BERTH_INSTANCE_ID, or QEMUs named for its instances; and its cgroup directories."""
    procs = []
    env_needle = ("BERTH_INSTANCE_ID=%s-" % host_id).encode()
    name_needle = ("berth-%s-" % host_id).encode()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if cgroup_parent in Path("/proc/%s/cgroup" % d).read_text() or \
                    env_needle in Path("/proc/%s/environ" % d).read_bytes() or \
                    name_needle in Path("/proc/%s/cmdline" % d).read_bytes():
                procs.append(int(d))
        except OSError:
            continue
    cgroups = []
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        if cgroup_parent in dirs:
            cgroups.append(os.path.join(root, cgroup_parent))
        if root.count("/") >= 6:  # the parent is at most a few levels below a hierarchy's root
            dirs[:] = []
    return procs, cgroups


def run_vm(out, *extra, timeout=900):
    return subprocess.run([PY, str(REPO / "bench" / "vm"), "--quick", "--no-install",
                           "--build-dir", str(BUILD_DIR), "--out", str(out)] + list(extra),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                          cwd=str(REPO))


@pytest.mark.berth_timeout(900)
def test_bench_vm_quick(vm_ready, tmp_path):
    out = tmp_path / "vm.json"
    p = run_vm(out)
    stdout, stderr = p.stdout.decode(), p.stderr.decode(errors="replace")
    assert p.returncode == 0, "bench/vm exited %d\n%s\n%s" % (p.returncode, stdout,
                                                              stderr[-6000:])
    # the table, on stdout and next to the JSON
    assert "| figure | microvm | process | target (microvm) |" in stdout
    for fig in ("warm bind, 1 at a time p99 (ms)", "cold start, 1 at a time p50 (ms)",
                "PSS per idle instance, mean (MiB)", "instances per GiB",
                "snapshot build, warm / cold template (ms)"):
        assert fig in stdout, fig
    assert out.with_suffix(".md").read_text().strip() in stdout

    doc = json.loads(out.read_text())
    m = doc["machine"]
    assert m["cores"] >= 1 and len(m["loadavg_start"]) == 3 and m["versions"]["qemu"]
    assert doc["profile"] == "quick" and not doc["failures"]
    n = doc["sizes"]
    for driver in ("microvm", "process"):
        r = doc["results"][driver]
        assert "error" not in r, r["error"]
        for ph in PHASES:
            x = r[ph]
            want = n["seq"] if ph.endswith("seq") else n["burst"]
            # every session answered, each by an instance of its own, of this driver
            assert x["requests"] == x["ok"] == want and not x["errors"], (driver, ph, x)
            assert x["distinct_instances"] == want and x["drivers"] == [driver], (driver, ph)
            assert 0 < x["p50_ms"] <= x["p99_ms"] <= x["max_ms"], (driver, ph, x)
            assert len(x["samples_ms"]) == want
        mem = r["memory"]
        assert mem["instances"] == n["pool"], mem
        for inst in mem["per_instance"]:
            assert inst["pss"] > 0 and inst["rss"] >= inst["pss"] and inst["cgroup"], inst
        assert mem["vms_per_gib"] > 0 and r["pool_fill_s"] > 0
    mv = doc["results"]["microvm"]
    assert mv["accel"] in ("tcg", "kvm") and mv["accel_reason"]
    assert set(mv["snapshot_ms"]) == {"warm", "cold"} and min(mv["snapshot_ms"].values()) > 0
    # a microVM instance's memory is its QEMU's: one process in the driver's cgroup
    for inst in mv["memory"]["per_instance"]:
        assert inst["pids"] == 1 and "/microvm/" in inst["cgroup"], inst
    # the targets, with words, not assertions on the figures
    assert [t["key"] for t in doc["targets"]] == ["warm_seq_p99", "cold_seq_p50", "pss_mib"]
    for t in doc["targets"]:
        assert re.match(r"(met|not met)\b", t["verdict"]), t
        assert t["verdict"].split(" (")[0] in stdout

    # nothing it started is left running: its own children, and every stack's instances
    left = [pr for pr in doc["processes"] if pid_alive(pr["pid"])]
    assert not left, left
    for driver in ("microvm", "process"):
        r = doc["results"][driver]
        procs, cgroups = leftovers(r["host_id"], r["cgroup_parent"])
        assert not procs and not cgroups, (driver, procs, cgroups)
        assert not os.path.exists(r["dir"]), r["dir"]


@pytest.mark.berth_timeout(600)
def test_bench_vm_sigterm_stops_every_vm(vm_ready, tmp_path):
    """SIGTERM while the microVMs' warm pool is full: bench/vm exits 130 and no QEMU, process
    or cgroup of its stack is left (the VMs outlive the scheduler by design)."""
    p = subprocess.Popen([PY, str(REPO / "bench" / "vm"), "--quick", "--no-install",
                          "--drivers", "microvm", "--build-dir", str(BUILD_DIR),
                          "--out", str(tmp_path / "vm.json")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(REPO))
    err = b""
    host = cg = sdir = None
    try:
        deadline = time.monotonic() + 480
        while time.monotonic() < deadline and p.poll() is None:
            r, _, _ = select.select([p.stderr], [], [], 1)
            if r:
                line = p.stderr.readline()
                err += line
                mm = re.search(rb"stack up in (\S+) host_id=(\S+)", line)
                if mm:
                    sdir, host = mm.group(1).decode(), mm.group(2).decode()
                    cg = "berth-bench-" + host
                if b"pool of" in line and b"full" in line:
                    break
        assert host and b"pool of" in err, err.decode(errors="replace")
        procs, cgroups = leftovers(host, cg)
        qemus = [pid for pid in procs
                 if b"qemu-system" in Path("/proc/%d/cmdline" % pid).read_bytes()]
        assert qemus and cgroups, ("no QEMU or cgroup of the stack before SIGTERM", procs,
                                   cgroups)
        p.send_signal(signal.SIGTERM)
        _, more = p.communicate(timeout=120)
        err += more
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err.decode(errors="replace")[-3000:]
    assert b"interrupted" in err
    procs, cgroups = leftovers(host, cg)
    assert not procs and not cgroups, (procs, cgroups)
    assert not [pid for pid in qemus if pid_alive(pid)]
    assert not os.path.exists(sdir)

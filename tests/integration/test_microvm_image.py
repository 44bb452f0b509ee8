"""The microVM guest image (scheduler/README.md, "microVM guest image"), booted for real.

QEMU `-M microvm` boots the Debian cloud kernel (PVH vmlinux) with the initramfs of the build's
guest-image target: berth-agent as /init, berth-echo as the app. The accelerator is TCG (the
recipe of research/microvm.md: `-accel tcg,tb-size=64 -cpu max`, tsc_early_khz): KVM is never
probed here, because this host's /dev/kvm (PVM) cannot boot a stock kernel; the driver's probe
boot will decide that later.

The image is built by this module when it is missing or stale (`mkimage.py --fetch-only` first,
then the meson target): the kernel package (~27 MB) is fetched from Debian's mirror once per
build directory and cached there. Skipped, with the reason, in sanitized builds (their agent and
echo are dynamically linked), without qemu-system-x86_64, or when the kernel cannot be fetched
(no network). A build failure after the fetch fails the test.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import (BUILD_DIR, REPO, SANITIZED, SLOW, Proc, binary, curl, free_port,
                      wait_until)

GUEST_DIR = BUILD_DIR / "scheduler" / "guest"
IMAGE = ["vmlinux", "initramfs.cpio.gz", "kernel.release"]
QEMU = "qemu-system-x86_64"
APP_PORT = 8080   # scheduler/guest/mkimage.py: berth-echo's port in the guest
BOOT_LIMIT = 90   # seconds to READY; a TCG boot takes ~2 s on an idle machine


def _tsc_khz():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    return 2000000


@pytest.fixture(scope="module")
def guest_image():
    if SANITIZED:
        pytest.skip("sanitized build: berth-agent and berth-echo are linked dynamically, the "
                    "guest image needs them static (the normal build boots it)")
    if not shutil.which(QEMU):
        pytest.skip("%s not installed (Debian package qemu-system-x86; tests/run installs it)"
                    % QEMU)
    fetch = subprocess.run(
        [sys.executable, str(REPO / "scheduler/guest/mkimage.py"), "--cache",
         str(GUEST_DIR / "cache"), "--fetch-only"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    if fetch.returncode == 3:
        pytest.skip("guest kernel not cached and cannot be fetched: %s" % fetch.stdout[-300:])
    assert fetch.returncode == 0, fetch.stdout
    # ninja rebuilds the image when the agent, echo or mkimage.py changed, else does nothing.
    build = subprocess.run(["nice", "ninja", "-C", str(BUILD_DIR)] +
                           ["scheduler/guest/" + f for f in IMAGE],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=600)
    assert build.returncode == 0, "guest-image build failed:\n" + build.stdout[-3000:]
    return {f: GUEST_DIR / f for f in IMAGE}


class Guest:
    """One microVM: console (hvc0) in <tmp>/qemu.log, the app forwarded to 127.0.0.1:port."""

    def __init__(self, image, tmp, instance_id):
        self.port = free_port()
        self.proc = Proc("qemu", [
            QEMU, "-M", "microvm,x-option-roms=off,isa-serial=off",
            "-accel", "tcg,tb-size=64", "-cpu", "max", "-m", "128", "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", image["vmlinux"], "-initrd", image["initramfs.cpio.gz"],
            "-append", "console=hvc0 quiet panic=-1 tsc_early_khz=%d berth.id=%s"
            % (_tsc_khz(), instance_id),
            "-device", "virtio-serial-device",
            "-chardev", "stdio,id=con0,signal=off", "-device", "virtconsole,chardev=con0",
            "-netdev", "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:%d-:%d"
            % (self.port, APP_PORT),
            "-device", "virtio-net-device,netdev=n0"], tmp)

    def console(self):
        return self.proc.log()

    def wait_ready(self):
        def ready():
            assert self.proc.alive(), "QEMU exited:\n" + self.console()[-3000:]
            return re.search(r"^READY\r?$", self.console(), re.M)
        wait_until(ready, BOOT_LIMIT, "READY on the guest console")

    def stop(self):
        self.proc.stop(timeout=10)


@pytest.fixture
def guest(guest_image, tmp_path):
    g = Guest(guest_image, tmp_path, "mvm-" + uuid.uuid4().hex[:12])
    try:
        yield g
    finally:
        g.stop()
    assert not g.proc.alive()


@pytest.mark.berth_timeout(240)
def test_guest_boots_agent_as_init_and_serves_echo_through_hostfwd(guest, guest_image):
    guest.wait_ready()
    con = guest.console()
    # The agent ran as PID 1, took its identity from the kernel command line, and said READY
    # only after the app accepted connections.
    assert re.search(r"berth-agent: instance=mvm-\w+ pid=1 ", con), con
    # (the app's own output passes through the agent, so it may come after READY: seen in a
    # loaded full run)
    wait_until(lambda: "listening on 0.0.0.0:%d" % APP_PORT in guest.console(), 30 * SLOW,
               "berth-echo's own line on the console")
    assert con.index("app ready port=%d" % APP_PORT) < re.search(r"^READY", con, re.M).start()
    assert "module" not in con, con   # no module failed to load (guest.c logs "module X: ...")
    assert "eth0:" not in con, con

    r = curl("http://127.0.0.1:%d/hello?x=1" % guest.port, timeout=30)
    assert r.status == 200, r.body
    j = r.json()
    instance = re.search(r"instance=(mvm-\w+)", con).group(1)
    assert j["instance"] == instance           # BERTH_INSTANCE_ID set by the agent
    assert j["path"] == "/hello" and j["query"] == "x=1"
    assert j["pid"] != 1                         # the app is the agent's child
    guest_kernel = guest_image["kernel.release"].read_text().strip()
    assert j["kernel"] == guest_kernel           # the Debian cloud kernel of the image ...
    assert j["kernel"] != os.uname().release     # ... not the host's


@pytest.mark.berth_timeout(240)
def test_guest_app_workspace_and_files(guest):
    """The app's cwd (its workspace) is writable in the guest; /data is absent (no disk yet)."""
    guest.wait_ready()
    base = "http://127.0.0.1:%d" % guest.port
    r = curl(base + "/workspace/note.txt", method="PUT", data=b"in the guest", timeout=30)
    assert r.status in (200, 201), r.body
    r = curl(base + "/workspace/note.txt", timeout=30)
    assert r.status == 200 and r.body == b"in the guest"
    r = curl(base + "/files/x", method="PUT", data=b"x", timeout=30)
    assert r.status == 503 and json.loads(r.body)["error"]["code"] == "storage_unavailable"


@pytest.mark.parametrize("argv0", ["agent", "/init"])
def test_agent_as_pid1_of_a_host_namespace_refuses_guest_mode(argv0):
    """Guest mode mounts over /dev, loads modules and configures eth0: it must not start on a
    host, where the agent can be PID 1 of a pid namespace without arguments (an admin's
    `unshare -pf berth-agent`, a tenant that got hold of the binary). Without the initramfs as
    its root it prints its usage and exits 2, even when named /init. (Private mount and network
    namespaces: an agent that did enter guest mode here harms nothing.)"""
    if os.geteuid() != 0:
        pytest.skip("needs root (unshare of pid, mount and network namespaces)")
    agent = binary("berth-agent")
    p = subprocess.run(
        ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "bash", "-c",
         'exec -a "$1" "$0"', agent, agent if argv0 == "agent" else argv0],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        timeout=60)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "usage: berth-agent" in p.stderr
    assert "module" not in p.stderr and "guest.conf" not in p.stderr

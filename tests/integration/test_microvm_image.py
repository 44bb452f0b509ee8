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
import gzip
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import (BUILD_DIR, REPO, SANITIZED, SLOW, Proc, binary, curl, free_port,
                      wait_until)
from conftest import guest_image as conftest_guest_image

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
    conftest_guest_image()
    return {f: GUEST_DIR / f for f in IMAGE}


class Guest:
    """One microVM: console (hvc0) in <tmp>/qemu.log, the app forwarded to 127.0.0.1:port.
    With <root>/<data> (ext4 images) the VM gets the contract's disks, the berth.ctl control
    port (a unix socket QEMU serves, <ctl_path>) and the forward goes to <guest_port> (the
    agent's relay listener)."""

    def __init__(self, image, tmp, instance_id, root=None, data=None, ctl_path=None,
                 guest_port=APP_PORT):
        self.port = free_port()
        self.ctl_path = ctl_path
        extra = []
        if ctl_path:
            extra += ["-chardev", "socket,id=ctl,path=%s,server=on,wait=off" % ctl_path,
                      "-device", "virtserialport,chardev=ctl,name=berth.ctl"]
        net = ["-netdev", "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:%d-:%d"
               % (self.port, guest_port), "-device", "virtio-net-device,netdev=n0"]
        disks = ["-device", "virtio-rng-device"] if root else []
        if root:
            disks += ["-drive", "file=%s,if=none,id=root,format=raw,readonly=on" % root,
                      "-device", "virtio-blk-device,drive=root,serial=berth-root"]
        if data:
            disks += ["-drive", "file=%s,if=none,id=data,format=raw" % data,
                      "-device", "virtio-blk-device,drive=data,serial=berth-data"]
        self.proc = Proc("qemu", [
            QEMU, "-M", "microvm,x-option-roms=off,isa-serial=off",
            "-accel", "tcg,tb-size=64", "-cpu", "max", "-m", "128", "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", image["vmlinux"], "-initrd", image["initramfs.cpio.gz"],
            "-append", "console=hvc0 quiet panic=-1 tsc_early_khz=%d berth.id=%s"
            % (_tsc_khz(), instance_id),
            "-device", "virtio-serial-device",
            "-chardev", "stdio,id=con0,signal=off", "-device", "virtconsole,chardev=con0"]
            + extra + net + disks, tmp)

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


# ---------------------------------------------------------------- the host <-> guest contract

WORKSPACE_SIZE = 4 << 20   # the rooted guest's workspace tmpfs (guest.conf workspace_size=)
RELAY_PORT = 1             # guest.conf relay_port= (the contract's default)
HOLD_MS = 120000           # guest.conf hold_ms=: longer than the test, so only BIND releases
SEED = "5eed" * 16


def _mkfs(img, size_mb, tree=None):
    with open(img, "wb") as f:
        f.truncate(size_mb << 20)
    cmd = ["mkfs.ext4", "-q", "-F", "-O", "^has_journal"]
    if tree:
        cmd += ["-d", str(tree)]
    subprocess.run(cmd + [str(img)], check=True, timeout=60, stdout=subprocess.PIPE,
                   stderr=subprocess.STDOUT)


class Ctl:
    """A connection to the guest agent's control port through QEMU's unix socket."""

    def __init__(self, path):
        self.s = None
        deadline = time.monotonic() + 30 * SLOW
        while True:   # QEMU creates the socket while it starts
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                break
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        s.settimeout(30 * SLOW)
        self.s = s
        self.buf = b""

    def send_raw(self, data):
        self.s.sendall(data)

    def cmd(self, line):
        self.s.sendall(line.encode() + b"\n")
        while b"\n" not in self.buf:
            chunk = self.s.recv(4096)
            assert chunk, "control port closed waiting for the reply to %r" % line
            self.buf += chunk
        reply, self.buf = self.buf.split(b"\n", 1)
        return reply.decode()

    def close(self):
        if self.s:
            self.s.close()
            self.s = None


@pytest.fixture
def rooted(guest_image, tmp_path, request):
    """A VM with the contract's disks: the template's root (a static berth-echo and a
    guest.conf with env=, uid=1000, relay_port=, hold_ms=, workspace_size=), a data disk and
    the berth.ctl port; the forward goes to the agent's relay listener."""
    if not shutil.which("mkfs.ext4") or not shutil.which("debugfs"):
        pytest.skip("mkfs.ext4/debugfs not installed (Debian package e2fsprogs)")
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "etc/berth").mkdir(parents=True)
    shutil.copy(binary("berth-echo"), tree / "bin/berth-echo")
    hold_ms = getattr(request, "param", HOLD_MS)   # indirect parametrization: another hold
    conf = ["port=8080", "relay_port=%d" % RELAY_PORT, "hold_ms=%d" % hold_ms, "uid=1000",
            "workspace_size=%d" % WORKSPACE_SIZE, "env=ECHO_GREETING=hello from the root disk",
            "env=LANG=C"]
    conf += ["arg=" + a for a in ["/bin/berth-echo", "--host", "127.0.0.1", "--port", "8080"]]
    (tree / "etc/berth/guest.conf").write_text("\n".join(conf) + "\n")
    _mkfs(tmp_path / "root.img", 32, tree)
    _mkfs(tmp_path / "data.img", 16)
    sockdir = tempfile.mkdtemp(prefix="mvm", dir="/tmp")   # a unix socket path is short
    g = Guest(guest_image, tmp_path, "mvm-" + uuid.uuid4().hex[:12], root=tmp_path / "root.img",
              data=tmp_path / "data.img", ctl_path=os.path.join(sockdir, "ctl.sock"),
              guest_port=RELAY_PORT)
    g.data_img = tmp_path / "data.img"
    ctls = []
    g.ctl = lambda: ctls.append(Ctl(g.ctl_path)) or ctls[-1]
    try:
        yield g
    finally:
        for c in ctls:
            c.close()
        g.stop()
        shutil.rmtree(sockdir, ignore_errors=True)
    assert not g.proc.alive()


def _status(ctl):
    r = ctl.cmd("STATUS")
    m = re.fullmatch(r"OK (ready|starting) bound=(\S+) conns=(\d+) held=(\d+) id=(\S+)", r)
    assert m, r
    return {"state": m.group(1), "bound": m.group(2), "conns": int(m.group(3)),
            "held": int(m.group(4)), "id": m.group(5)}


@pytest.mark.berth_timeout(300)
@pytest.mark.parametrize("rooted", [1500], indirect=True)
def test_a_connection_never_reaches_the_app_before_bind(rooted):
    """hold_ms passes without a BIND: the agent closes the connection; it does not go on to
    the app, which would answer on the snapshot's clock and RNG state."""
    g = rooted
    g.wait_ready()
    ctl = g.ctl()
    r = subprocess.run(["curl", "-sS", "--max-time", str(60 * SLOW),
                        "http://127.0.0.1:%d/never" % g.port],
                       capture_output=True, text=True, timeout=90 * SLOW)
    assert r.returncode == 52 and r.stdout == "", (r.returncode, r.stdout, r.stderr)  # empty reply
    st = _status(ctl)
    assert st["bound"] == "-" and st["held"] == 0 and st["conns"] == 0, st


@pytest.mark.berth_timeout(300)
def test_rooted_guest_holds_until_bind_then_applies_clock_seed_id_and_data(rooted):
    g = rooted
    g.wait_ready()
    con = g.console()
    instance = re.search(r"instance=(mvm-\w+) pid=1 ", con).group(1)
    assert "module" not in con, con            # overlay and the virtio modules loaded
    ctl = g.ctl()
    assert ctl.cmd("PING") == "OK ready"
    st = _status(ctl)
    assert st["bound"] == "-" and st["held"] == 0 and st["id"] == instance, st

    # A request through the forward reaches the agent's relay and is held: no BIND yet.
    url = "http://127.0.0.1:%d" % g.port
    held = subprocess.Popen(["curl", "-sS", "--max-time", str(120 * SLOW), url + "/hello"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _status(ctl)["held"] == 1, 60 * SLOW, "the request held by the agent")
        assert held.poll() is None, "the request completed before BIND"

        # Hostile BINDs: one bad word refuses the whole line; nothing is applied or released.
        for bad in ["BIND s1 clock=now seed=%s id=evil" % SEED,
                    "BIND s1 clock=1.000000000 seed=%s id=evil" % SEED[:-1],
                    "BIND s1 clock=99999999999999.000000000 id=evil",
                    "BIND s1 id=evil/x data=1", "BIND s1 id=evil data=yes",
                    "BIND s1 id=evil mount=/etc"]:
            assert ctl.cmd(bad).startswith("ERR "), bad
        st = _status(ctl)
        assert st["bound"] == "-" and st["held"] == 1 and st["id"] == instance, st
        assert held.poll() is None, "a refused BIND released the held request"

        future = int(time.time()) + 1000
        assert ctl.cmd("BIND sess-1 clock=%d.000000000 seed=%s id=mvm-clone-1 data=1"
                       % (future, SEED)) == "OK"
        out, err = held.communicate(timeout=60 * SLOW)
    finally:
        if held.poll() is None:
            held.kill()
            held.wait()
    assert held.returncode == 0, err
    j = json.loads(out)
    assert j["path"] == "/hello"
    assert j["hostname"] == "mvm-clone-1"                 # id=: sethostname
    assert j["instance"] == instance                      # the app's env from the boot
    assert j["time_ms"] >= (future - 60) * 1000, (j["time_ms"], future)   # clock= applied
    assert j["uid"] == 1000 and j["gid"] == 1000          # uid= of guest.conf
    st = _status(ctl)
    assert st["bound"] == "sess-1" and st["id"] == "mvm-clone-1" and st["held"] == 0, st
    assert "data disk /dev/vd" in g.console()

    # The same session again: OK, not mounted twice; another session: refused.
    assert ctl.cmd("BIND sess-1 data=1") == "OK"
    assert ctl.cmd("BIND sess-2") == "ERR bound to another session"
    assert g.console().count("data disk /dev/vd") == 1

    # The app's environment (guest.conf env=) and its bounded workspace (cwd /workspace).
    r = curl(url + "/env/ECHO_GREETING", timeout=30)
    assert r.status == 200 and r.json()["value"] == "hello from the root disk", r.body
    r = curl(url + "/workspace/small", method="PUT", data=b"fits", timeout=30)
    assert r.status in (200, 201), r.body
    big = g.data_img.parent / "big"
    big.write_bytes(b"x" * (WORKSPACE_SIZE + (1 << 20)))
    r = curl(url + "/workspace/big", method="PUT", data_file=str(big), timeout=60)
    assert r.status == 507 and json.loads(r.body)["error"]["code"] == "insufficient_storage", \
        r.body
    r = curl(url + "/workspace/small", timeout=30)
    assert r.status == 200 and r.body == b"fits"

    # /data is the data disk: what the app writes there is in the image after power-off.
    r = curl(url + "/files/proof", method="PUT", data=b"durable in sess-1", timeout=30)
    assert r.status in (200, 201), r.body

    # A host that leaves mid-line: the guest drops the partial line, the next host starts clean.
    ctl.send_raw(b"STAT")
    ctl.close()
    wait_until(lambda: "berth.ctl: host disconnected (dropped 4 bytes" in g.console(),
               30 * SLOW, "the agent noticing the host left")
    ctl = g.ctl()
    assert ctl.cmd("PING") == "OK ready"

    # TERM: the app stops, the agent syncs, unmounts /data and powers off; QEMU exits 0.
    assert ctl.cmd("TERM") == "OK"
    wait_until(lambda: not g.proc.alive(), 60 * SLOW, "QEMU exiting after TERM")
    assert g.proc.p.returncode == 0, g.console()[-2000:]
    p = subprocess.run(["debugfs", "-R", "cat /proof", str(g.data_img)], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    assert p.stdout == b"durable in sess-1", (p.stdout, p.stderr)


def _cpio_file(archive, wanted):
    """The content of <wanted> in a cpio newc archive (bytes)."""
    off = 0
    while off < len(archive):
        hdr = archive[off:off + 110]
        assert hdr[:6] == b"070701", hdr
        filesize, namesize = int(hdr[54:62], 16), int(hdr[94:102], 16)
        name = archive[off + 110:off + 110 + namesize - 1].decode()
        data = off + 110 + namesize
        data += -data % 4
        if name == wanted:
            return archive[data:data + filesize]
        off = data + filesize
        off += -off % 4
    raise AssertionError("%s not in the archive" % wanted)


def _overlay_initramfs(image, tmp, files):
    """The image's initramfs with a second cpio appended (the kernel unpacks both; later
    entries replace earlier ones): <files> maps paths to bytes."""
    sys.path.insert(0, str(REPO / "scheduler/guest"))
    try:
        import mkimage
    finally:
        sys.path.pop(0)
    c = mkimage.Cpio()
    for name, data in files.items():
        c.file(name, data)
    out = tmp / "initramfs-overlaid.cpio.gz"
    out.write_bytes(Path(image["initramfs.cpio.gz"]).read_bytes() + gzip.compress(c.finish()))
    return dict(image, **{"initramfs.cpio.gz": out})


@pytest.mark.berth_timeout(240)
def test_failed_module_and_bad_config_are_on_the_console_and_power_off(guest_image, tmp_path):
    """Early failures are visible despite `quiet` (they happen before the console is open)
    and every exit path of the agent in guest mode powers the VM off: QEMU exits by itself."""
    order = _cpio_file(gzip.decompress(Path(guest_image["initramfs.cpio.gz"]).read_bytes()),
                       "lib/modules/order")
    assert order.startswith(b"virtio"), order
    image = _overlay_initramfs(guest_image, tmp_path, {
        "lib/modules/order": order + b"bogus.ko\n",
        "lib/modules/bogus.ko": b"not an ELF module",
        "etc/berth/guest.conf": b"port=8080\narg=/bin/berth-echo\nsurprise=1\n",
    })
    g = Guest(image, tmp_path, "mvm-" + uuid.uuid4().hex[:12])
    try:
        wait_until(lambda: not g.proc.alive(), BOOT_LIMIT, "QEMU powering off by itself")
        con = g.console()
        assert "berth-agent: module bogus.ko: " in con, con
        assert "/etc/berth/guest.conf: unknown key" in con, con
        assert "READY" not in con
        assert g.proc.p.returncode == 0, con
    finally:
        g.stop()

"""The process sandbox, attacked from inside as hostile code would (issue 13).

A template whose app is tests/probe/sandbox_probe.py runs whatever a test asks, as the
sandbox's app, through the real gateway and scheduler; every test is named for the attack it
tries and asserts that it fails, and that the host and the other sessions are unharmed.
Real redis-server, real berth-scheduler/berth-gateway, real sandboxes (root needed).
"""

import concurrent.futures
import json
import os
import stat
import time
from pathlib import Path

import pytest

from conftest import REPO, SLOW, binary, curl, echo_template, wait_until

PROBE_DIR = REPO / "tests" / "probe"
PY = "/usr/bin/python3"


def probe_template(name="probe", **over):
    t = {
        "name": name,
        "app": {"command": [PY, str(PROBE_DIR / "sandbox_probe.py")], "port": 8000},
        "pool": {"min": 2, "max": 6},
        "memory": "128MiB",
        "pids": 64,
        "cpus": 1,
        "workspace_size": "16MiB",
        "data_size": "32MiB",
        "io": {"read_bps": "8MiB", "write_iops": 500},
        "ready_timeout": "%ds" % (20 * SLOW),
        "ttl": "1h",
        "idle_timeout": "10m",
    }
    t.update(over)
    return t


def overrides(*templates):
    return {
        "templates": [probe_template(), echo_template(pool={"min": 1, "max": 4})] +
        list(templates),
        "scheduler": {"capacity": 48,
                      "ro_binds": [str(PROBE_DIR), str(Path(binary("berth-probe")).parent),
                                   str(Path(binary("berth-echo")).parent)]},
        "gateway": {"routes": [
            {"path_prefix": "/echo", "template": "echo"},
            {"path_prefix": "/", "template": "probe"}]},
    }


@pytest.fixture(scope="module")
def st(request):
    """One stack for the module (sandboxes are slow to start under load)."""
    from conftest import Stack, _remove_tree, _short_tmp, _skip_unless_root
    _skip_unless_root()
    d = _short_tmp()
    s = Stack(d, overrides())
    yield s
    try:
        s.stop()
    finally:
        _remove_tree(d)


def run(st, session, argv, timeout=20, stdin=""):
    """Runs argv in <session>'s sandbox; returns {"code","stdout","stderr"}."""
    r = curl(st.url("/run"), method="POST", headers={"x-fc-session-id": session,
                                                      "Content-Type": "application/json"},
             data=json.dumps({"argv": argv, "timeout": timeout, "stdin": stdin}),
             timeout=timeout + 10 * SLOW)
    assert r.status == 200, r
    return r.json()


def py(st, session, code, timeout=20):
    """Runs Python <code> in the sandbox; its stdout parsed as JSON when it prints one line."""
    out = run(st, session, [PY, "-c", code], timeout=timeout)
    assert out["code"] == 0, out
    return json.loads(out["stdout"])


# A ctypes prelude for the raw syscalls the attacks use.
LIBC = """
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(*a):
    r = libc.syscall(*a)
    return r, (ctypes.get_errno() if r < 0 else 0)
"""


def instance_of(st, session):
    h = curl(st.url("/"), headers={"x-fc-session-id": session})
    assert h.status == 200, h
    return h.json()["instance"]


def status_of(st, session):
    out = run(st, session, ["cat", "/proc/self/status", "/proc/self/uid_map",
                            "/proc/self/gid_map"])
    assert out["code"] == 0, out
    return out["stdout"]


# ------------------------------------------------------------------ identity and privileges

def test_app_runs_as_unprivileged_user_in_own_user_namespace(st):
    a, b = status_of(st, "sec-id-a"), status_of(st, "sec-id-b")
    for text in (a, b):
        uid_line = [l for l in text.splitlines() if l.startswith("Uid:")][0]
        assert uid_line.split()[1:] == ["1000"] * 4, uid_line
        maps = [l.split() for l in text.splitlines() if l.strip() and l.strip()[0].isdigit()]
        assert maps[0][0] == "0" and maps[0][2] == "65536", maps
        assert int(maps[0][1]) >= 1000000000, "sandbox root must be an unprivileged host uid"
    base_a = [l for l in a.splitlines() if l.strip().startswith("0 ")][0].split()[1]
    base_b = [l for l in b.splitlines() if l.strip().startswith("0 ")][0].split()[1]
    assert base_a != base_b, "each instance has its own uid range"
    # Seen from the host, the agent runs as the instance's range, never as root.
    for inst in st.instances().values():
        if inst.get("pid", "").isdigit():
            uid = [l for l in Path("/proc/%s/status" % inst["pid"]).read_text().splitlines()
                   if l.startswith("Uid:")][0].split()[1]
            assert int(uid) >= 1000000000


def test_every_capability_set_is_empty(st):
    text = status_of(st, "sec-caps")
    for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        line = [l for l in text.splitlines() if l.startswith(field + ":")][0]
        assert int(line.split()[1], 16) == 0, line


def test_no_new_privs_and_seccomp_filter(st):
    text = status_of(st, "sec-nnp")
    fields = dict(l.split(":", 1) for l in text.splitlines() if ":" in l)
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"


def test_cgroup_namespace_hides_the_host_hierarchy(st):
    out = run(st, "sec-cgns", ["cat", "/proc/self/cgroup"])
    for line in out["stdout"].splitlines():
        assert line.rsplit(":", 1)[1] == "/", out


def test_agent_cannot_be_ptraced_or_read_by_the_app(st):
    r = py(st, "sec-ptrace", LIBC + """
PTRACE_ATTACH = 16
r, e = sc(101, PTRACE_ATTACH, 1, 0, 0)
try:
    open("/proc/1/environ").read(); env = "read"
except OSError as x:
    env = x.errno
print(json.dumps({"attach": [r, e], "environ": env}))
""")
    assert r["attach"][0] == -1 and r["attach"][1] == 1, r  # EPERM
    assert r["environ"] in (1, 13), r  # EPERM / EACCES


def test_run_as_root_template_still_has_no_capability(make_stack):
    s = make_stack({
        "templates": [probe_template("rooty", run_as_root=True, pool={"min": 1, "max": 2})],
        "scheduler": overrides()["scheduler"],
        "gateway": {"routes": [{"path_prefix": "/", "template": "rooty"}]},
    })
    text = status_of(s, "sec-rooty")
    uid = [l for l in text.splitlines() if l.startswith("Uid:")][0].split()[1:]
    assert uid == ["0"] * 4
    eff = [l for l in text.splitlines() if l.startswith("CapEff:")][0].split()[1]
    bnd = [l for l in text.splitlines() if l.startswith("CapBnd:")][0].split()[1]
    assert int(eff, 16) == 0 and int(bnd, 16) == 0
    # root in name only: the host's files stay the host's
    out = run(s, "sec-rooty", ["sh", "-c", "echo x > /usr/berth-pwned"])
    assert out["code"] != 0
    # its own /data is its own (the image's root belongs to the app's uid, 0 here)
    out = run(s, "sec-rooty", ["sh", "-c", "echo mine > /data/f && cat /data/f"])
    assert out["stdout"] == "mine\n", out


# ------------------------------------------------------------------ seccomp

def test_open_by_handle_at_is_refused(st):
    # "shocker": a handle for inode 2 (an ext4 root) opened through a host mount (/usr).
    r = py(st, "sec-shocker", LIBC + """
class FH(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * 8)]
h = FH(8, 1, (ctypes.c_ubyte * 8)(2, 0, 0, 0, 0, 0, 0, 0))
mfd = os.open("/usr", os.O_RDONLY)
r, e = sc(304, mfd, ctypes.byref(h), 0)  # open_by_handle_at
fh = FH(); fh.handle_bytes = 8; mid = ctypes.c_int()
r2, e2 = sc(303, -100, b"/usr", ctypes.byref(fh), ctypes.byref(mid), 0)  # name_to_handle_at
print(json.dumps({"open": [r, e], "name": [r2, e2]}))
""")
    assert r["open"] == [-1, 1], r
    assert r["name"] == [-1, 1], r


@pytest.mark.parametrize("name,nr,args", [
    ("bpf", 321, (0, 0, 0)), ("perf_event_open", 298, (0, 0, -1, -1, 0)),
    ("keyctl", 250, (0, 0, 0)), ("add_key", 248, (0, 0, 0, 0, 0)),
    ("init_module", 175, (0, 0, 0)), ("finit_module", 313, (-1, 0, 0)),
    ("kexec_load", 246, (0, 0, 0, 0)), ("reboot", 169, (0, 0, 0, 0)),
    ("swapon", 167, (0, 0)), ("settimeofday", 164, (0, 0)), ("clock_settime", 227, (0, 0)),
    ("acct", 163, (0,)), ("quotactl", 179, (0, 0, 0, 0)), ("syslog", 103, (3, 0, 0)),
    ("userfaultfd", 323, (0,)), ("pivot_root", 155, (0, 0)), ("umount2", 166, (0, 0)),
    ("setns", 308, (0, 0)), ("io_uring_setup", 425, (1, 0)),
])
def test_dangerous_syscall_is_refused_with_eperm(st, name, nr, args):
    r = py(st, "sec-sys", LIBC + "print(json.dumps(sc(%d, %s)))" % (
        nr, ", ".join(str(a) for a in args) + ("," if len(args) == 1 else "")))
    assert r == [-1, 1], "%s: %r" % (name, r)


def test_new_user_namespace_is_refused(st):
    r = py(st, "sec-unshare", LIBC + """
CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET = 0x10000000, 0x20000, 0x40000000
print(json.dumps([sc(272, CLONE_NEWUSER), sc(272, CLONE_NEWNS), sc(272, CLONE_NEWNET),
                  sc(56, CLONE_NEWUSER | 17, 0, 0, 0, 0)]))
""")
    assert r == [[-1, 1]] * 4, r
    out = run(st, "sec-unshare", ["unshare", "-U", "-r", "true"])
    assert out["code"] != 0


def test_32bit_abi_is_refused(st):
    out = run(st, "sec-abi", [binary("berth-probe"), "int80"])
    assert out["code"] == 0 and out["stdout"].strip() == "int80 ret=-1 errno=1", out
    out = run(st, "sec-abi", [binary("berth-probe"), "x32"])
    assert out["stdout"].split()[1] == "ret=-1", out


def test_strict_profile_refuses_ptrace_and_raw_socket_families(make_stack):
    s = make_stack({
        "templates": [probe_template("strict", seccomp="strict", pool={"min": 1, "max": 2})],
        "scheduler": overrides()["scheduler"],
        "gateway": {"routes": [{"path_prefix": "/", "template": "strict"}]},
    })
    r = py(s, "sec-strict", LIBC + """
import socket
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); nl = 0
except OSError as x:
    nl = x.errno
socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
print(json.dumps({"ptrace": sc(101, 0, 0, 0, 0), "netlink": nl}))
""")
    assert r["ptrace"] == [-1, 1], r
    assert r["netlink"] == 97, r  # EAFNOSUPPORT


# ------------------------------------------------------------------ filesystem

def test_proc_sys_and_sysrq_are_read_only(st):
    for path in ("/proc/sys/kernel/core_pattern", "/proc/sysrq-trigger",
                 "/proc/sys/vm/drop_caches"):
        out = run(st, "sec-procsys", ["sh", "-c", "echo '|/tmp/x' > %s" % path])
        assert out["code"] != 0, (path, out)
    assert Path("/proc/sys/kernel/core_pattern").read_text().strip() != "|/tmp/x"


def test_proc_masked_paths_are_empty(st):
    r = py(st, "sec-mask", """
import json, os
out = {}
for p in ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/kallsyms", "/proc/sched_debug"):
    try:
        with open(p, "rb") as f:
            out[p] = len(f.read(4096))
    except OSError as e:
        out[p] = -e.errno
print(json.dumps(out))
""")
    for p, n in r.items():
        assert n <= 0, (p, n)


def test_mounts_and_cgroupfs_are_refused(st):
    for argv in (["mount", "-t", "tmpfs", "none", "/tmp"],
                 ["mount", "-t", "cgroup2", "none", "/tmp"],
                 ["mount", "-t", "proc", "proc", "/tmp"],
                 ["mount", "--bind", "/", "/tmp"]):
        out = run(st, "sec-mount", argv)
        assert out["code"] != 0, (argv, out)
    r = py(st, "sec-mount", LIBC + """
print(json.dumps(sc(165, b"none", b"/tmp", b"cgroup", 0, 0)))
""")
    assert r == [-1, 1], r


def test_root_is_minimal(st):
    r = py(st, "sec-root", """
import json, os
print(json.dumps({"root": sorted(os.listdir("/")), "dev": sorted(os.listdir("/dev")),
                  "etc": sorted(os.listdir("/etc")),
                  "passwd": open("/etc/passwd").read()}))
""")
    assert "sys" not in r["root"] and "var" not in r["root"] and "home" not in r["root"], r
    assert set(r["dev"]) == {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm",
                             "ptmx", "fd", "stdin", "stdout", "stderr"}, r["dev"]
    assert "shadow" not in r["etc"] and "berth" not in r["etc"], r["etc"]
    assert set(r["etc"]) <= {"passwd", "group", "hosts", "hostname", "resolv.conf",
                             "nsswitch.conf", "ld.so.cache", "ssl"}, r["etc"]
    assert "sandbox:x:1000:1000" in r["passwd"]
    # the root and the system trees are read-only, mounts nosuid/nodev
    out = run(st, "sec-root", ["cat", "/proc/self/mountinfo"])
    for line in out["stdout"].splitlines():
        f = line.split()
        mp, opts, fstype = f[4], f[5].split(","), f[f.index("-") + 1]
        assert "nosuid" in opts, line
        if mp in ("/", "/usr", "/etc/ssl/certs") or mp.startswith(("/usr/", "/proc/")):
            assert "ro" in opts, line
        if fstype not in ("devtmpfs", "devpts"):  # device nodes: /dev, masked /proc files
            assert "nodev" in opts, line


def test_host_secrets_are_not_visible(st):
    for path in ("/etc/shadow", st.config_path, str(st.base), "/root",
                 st.cfg["scheduler"]["run_dir"], st.cfg["scheduler"]["storage_root"]):
        out = run(st, "sec-secrets", ["cat", path])
        assert out["code"] != 0 and "No such file" in out["stderr"], (path, out)


def test_host_listeners_are_unreachable(st):
    ports = [st.ports["scheduler"], st.ports["admin"], st.ports["gateway"]]
    redis_addr = st.redis_server.address
    if redis_addr.startswith("unix:"):
        unix_paths = [redis_addr[5:]]
    else:
        unix_paths = []
        ports.append(int(redis_addr.rsplit(":", 1)[1]))
    r = py(st, "sec-listen", """
import json, socket
out = {}
for p in %r:
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect(("127.0.0.1", p)); out[str(p)] = "connected"
    except OSError as e:
        out[str(p)] = e.errno
    s.close()
for path in %r:
    s = socket.socket(socket.AF_UNIX); s.settimeout(2)
    try:
        s.connect(path); out[path] = "connected"
    except OSError as e:
        out[path] = e.errno
    s.close()
print(json.dumps(out))
""" % (ports, unix_paths))
    for k, v in r.items():
        assert v != "connected", (k, r)


def test_other_sandboxes_are_unreachable(st):
    run(st, "sec-victim", ["sh", "-c", "echo secret > /data/secret; echo ws > /workspace/ws"])
    victim = instance_of(st, "sec-victim")
    run_dir = st.cfg["scheduler"]["run_dir"]
    paths = ["%s/%s/sock/app.sock" % (run_dir, victim), "%s/%s/sock/ctl.sock" % (run_dir, victim),
             "%s/%s/data/secret" % (run_dir, victim)]
    for p in paths:
        out = run(st, "sec-attacker", ["cat", p])
        assert out["code"] != 0, (p, out)
    # no other sandbox's processes are visible
    out = run(st, "sec-attacker", ["sh", "-c", "ls /proc | grep -c '^[0-9]'"])
    assert int(out["stdout"].strip()) < 10, out
    assert run(st, "sec-victim", ["cat", "/data/secret"])["stdout"] == "secret\n"


def test_replacing_sockets_and_state_files_cannot_redirect_or_stall(st):
    """The sockets the gateway connects to, the exit file and the state file live on the
    host where the sandbox cannot reach them: the old attack surface (/run/berth) is gone,
    and whatever the sandbox makes in its own tree is never read by the host."""
    victim = instance_of(st, "sec-redirect-victim")
    attacker = instance_of(st, "sec-redirect-attacker")
    run_dir = st.cfg["scheduler"]["run_dir"]
    out = run(st, "sec-redirect-attacker", ["sh", "-c",
              "ln -sf %s/%s/sock/app.sock /run/berth/app.sock; mkdir -p /run/berth; "
              "mkfifo /run/berth/exit; ln -sf /etc/shadow /workspace/exit; "
              "ln -sf %s/%s/sock/app.sock /workspace/app.sock; mkfifo /tmp/exit" % (
                  run_dir, victim, run_dir, victim)])
    assert "Read-only file system" in out["stderr"] or out["code"] != 0
    for name in ("app.sock", "ctl.sock", "ports.sock"):
        p = Path(run_dir) / attacker / "sock" / name
        st_ = os.lstat(p)
        assert stat.S_ISSOCK(st_.st_mode) and st_.st_uid == 0, p
        assert stat.S_IMODE(st_.st_mode) & 0o007 == 0, (p, oct(st_.st_mode))
    assert instance_of(st, "sec-redirect-attacker") == attacker
    assert instance_of(st, "sec-redirect-victim") == victim
    # The attacker ends its own sandbox (the most a sandbox can do): the scheduler reads the
    # end from its own exit file, cleans up, and serves on; the victim is untouched.
    out = run(st, "sec-redirect-attacker", ["sh", "-c", "kill -KILL 1; echo $?; "
                                            "(sleep 0.3; kill -TERM 1) >/dev/null 2>&1 &"])
    wait_until(lambda: attacker not in st.instances(), 20 * SLOW, "the attacker's end")
    wait_until(lambda: not (Path(run_dir) / attacker).exists(), 20 * SLOW, "its run dir gone")
    assert curl(st.scheduler_url("/healthz"), timeout=5).status == 200
    assert instance_of(st, "sec-redirect-victim") == victim


# ------------------------------------------------------------------ limits

def parallel_requests_ok(st, session, seconds):
    """Echo requests of another session for <seconds>; returns (ok, total)."""
    ok = total = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        r = curl(st.url("/echo/x"), headers={"x-fc-session-id": session}, timeout=10 * SLOW)
        total += 1
        ok += r.status == 200
        time.sleep(0.05)
    return ok, total


def under_attack(st, attacker, argv, timeout=30):
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        attack = ex.submit(run, st, attacker, argv, timeout)
        ok, total = parallel_requests_ok(st, "sec-bystander", 4)
        out = attack.result(timeout=timeout + 30 * SLOW)
    assert total > 0 and ok == total, "bystander %d/%d" % (ok, total)
    return out


def test_fork_bomb_hits_pids_limit(st):
    out = under_attack(st, "sec-forkbomb", [PY, "-c", """
import os, time, errno
n = 0
end = time.time() + 5
kids = []
while time.time() < end:
    try:
        pid = os.fork()
    except OSError as e:
        print("EAGAIN" if e.errno == errno.EAGAIN else e.errno, n); break
    if pid == 0:
        time.sleep(8); os._exit(0)
    kids.append(pid); n += 1
"""])
    assert out["stdout"].startswith("EAGAIN"), out
    assert int(out["stdout"].split()[1]) < 64


def test_memory_hog_is_stopped_by_memory_limit(st):
    out = under_attack(st, "sec-memhog", [PY, "-c", """
chunks = []
for i in range(64):
    chunks.append(bytearray(16 << 20))
print("survived", len(chunks))
"""])
    assert "survived" not in out["stdout"], out
    assert out["code"] in (-9, 137, 1) or "MemoryError" in out["stderr"], out


def test_workspace_filler_hits_its_size(st):
    out = under_attack(st, "sec-wsfill", ["sh", "-c",
                       "dd if=/dev/zero of=/workspace/fill bs=1M count=64 2>&1; "
                       "dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>&1; true"])
    assert "No space left on device" in out["stdout"], out
    sizes = run(st, "sec-wsfill", ["sh", "-c", "du -sm /workspace /tmp"])["stdout"]
    total = sum(int(l.split()[0]) for l in sizes.splitlines())
    assert total <= 17, sizes


def test_data_filler_hits_data_size(st):
    out = under_attack(st, "sec-datafill", ["sh", "-c",
                       "dd if=/dev/zero of=/data/fill bs=1M count=64 conv=fsync 2>&1; "
                       "df -m /data | tail -1"])
    assert "No space left on device" in out["stdout"], out
    # the session's storage still works after the filler is gone
    out = run(st, "sec-datafill", ["sh", "-c", "rm /data/fill && echo ok > /data/after && "
                                   "cat /data/after"])
    assert out["stdout"] == "ok\n", out


def test_scheduler_stays_healthy_throughout(st):
    assert curl(st.scheduler_url("/healthz"), timeout=5).status == 200
    r = st.sched_api("/v1/status", timeout=5)
    process = [d for d in r.json()["drivers"] if d["name"] == "process"][0]
    assert r.status == 200 and process["status"]["security"] == {
        "user_namespace": True, "seccomp": True, "insecure": False, "uid_base": 1000000000,
        "uid_range": 65536, "seccomp_profiles": ["default", "strict"]}, process
    # without the secret: no driver details, no instances
    anon = curl(st.scheduler_url("/v1/status"), timeout=5).json()
    assert "instances" not in anon and "drivers" not in anon and "driver" not in anon, anon


def test_io_limits_apply_to_the_session_s_device(st):
    """The template's io limits land on the session's own loop device (its /data), in the
    instance's blkio/io cgroup."""
    run(st, "sec-io", ["sh", "-c", "echo x > /data/x"])
    iid = instance_of(st, "sec-io")
    state = (Path(st.cfg["scheduler"]["run_dir"]) / iid / "state").read_text()
    dirs = [l[7:] for l in state.splitlines() if l.startswith("cgroup=")]
    dev = [l.split()[2] for l in open("/proc/self/mountinfo")
           if l.split()[4] == "%s/%s/data" % (st.cfg["scheduler"]["run_dir"], iid)]
    assert dev, "the session's file system is mounted on the instance's data/"
    blkio = [d for d in dirs if "/blkio/" in d or Path(d, "io.max").exists()]
    assert blkio, dirs
    d = Path(blkio[0])
    if (d / "io.max").exists():
        text = (d / "io.max").read_text()
        assert "rbps=8388608" in text and "wiops=500" in text, text
    else:
        assert (d / "blkio.throttle.read_bps_device").read_text().split()[1] == "8388608"
        assert (d / "blkio.throttle.write_iops_device").read_text().split()[1] == "500"
        major_minor = (d / "blkio.throttle.read_bps_device").read_text().split()[0]
        assert major_minor.startswith("7:"), major_minor  # a loop device


def test_all_sandboxes_share_one_capped_parent(st):
    """scheduler.reserve: the parent cgroup of every instance is capped below the host."""
    status = st.sched_api("/v1/status", timeout=5).json()
    cg = [d for d in status["drivers"] if d["name"] == "process"][0]["status"]["cgroups"]
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < cg["memory"]["limit"] <= total - (512 << 20) + 4096, cg["memory"]
    assert 0 < cg["cpu"]["limit_millis"] <= os.cpu_count() * 1000 - 500, cg["cpu"]


def _minimal_rootfs(base):
    """A root directory holding only what berth-echo needs (its libraries and the loader, found
    with ldd) and a marker: what a template's `rootfs` (e.g. a debootstrap tree) provides."""
    import shutil
    import subprocess
    root = Path(base) / "rootfs"
    echo = binary("berth-echo")
    out = subprocess.run(["ldd", echo], capture_output=True, text=True, timeout=30).stdout
    libs = [w for line in out.splitlines() for w in line.split() if w.startswith("/")]
    for lib in libs:
        real = os.path.realpath(lib)
        for p in {lib, real}:
            dst = root / p.lstrip("/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                shutil.copy2(real, dst)
    (root / "usr/share").mkdir(parents=True, exist_ok=True)
    (root / "usr/share/berth-rootfs").write_text("mine\n")
    os.chmod(root, 0o755)
    return root


def test_template_rootfs_replaces_the_host_system_trees(make_stack, tmp_path):
    root = _minimal_rootfs(tmp_path)
    s = make_stack({
        "templates": [echo_template("own", rootfs=str(root), pool={"min": 1, "max": 2})],
        "scheduler": overrides()["scheduler"],
    })
    r = s.get("/", session="sec-rootfs")
    assert r.status == 200, (r, s.scheduler.tail())
    pid = s.instances()[r.json()["instance"]]["pid"]
    inside = Path("/proc/%s/root" % pid)
    assert (inside / "usr/share/berth-rootfs").read_text() == "mine\n"
    assert not (inside / "usr/bin/python3").exists()  # nothing of the host's /usr
    mi = Path("/proc/%s/mountinfo" % pid).read_text().splitlines()
    usr = [l.split() for l in mi if l.split()[4] == "/usr"]
    assert usr and usr[0][5].split(",")[0] == "ro", usr


def test_inotify_exhaustion_stays_inside_the_sandbox(st):
    """What a sandbox creates in kernel budgets counted per user (inotify instances, message
    queues, ...) is charged up to its user namespace's owner: the instance's own base id, not
    root. A sandbox that takes every inotify instance it can leaves root's and other tenants'."""
    import ctypes
    import fcntl
    iid = instance_of(st, "sec-inotify")
    pid = st.instances()[iid]["pid"]
    fd = os.open("/proc/%s/ns/user" % pid, os.O_RDONLY)
    try:
        buf = bytearray(4)
        fcntl.ioctl(fd, 0xb704, buf)  # NS_GET_OWNER_UID
        owner = int.from_bytes(buf, "little")
    finally:
        os.close(fd)
    assert owner >= 1000000000, "the user namespace is owned by the instance's range, not root"
    # The sandbox takes every inotify instance it can and holds them (in the background).
    hog = ("import ctypes, time\n"
           "libc = ctypes.CDLL(None, use_errno=True)\n"
           "fds = []\n"
           "while len(fds) < 100000:\n"
           "    r = libc.inotify_init()\n"
           "    if r < 0: break\n"
           "    fds.append(r)\n"
           "open('/tmp/ino.out', 'w').write('%d %d' % (len(fds), ctypes.get_errno()))\n"
           "time.sleep(30)\n")
    run(st, "sec-inotify", ["sh", "-c", "%s -c \"$0\" >/dev/null 2>&1 &" % PY, hog])
    got = wait_until(lambda: run(st, "sec-inotify", ["cat", "/tmp/ino.out"])["stdout"],
                     20 * SLOW, "the sandbox to hold its inotify instances")
    assert 0 < int(got.split()[0]) < 100000, got
    libc = ctypes.CDLL(None, use_errno=True)
    held = []
    try:
        for _ in range(8):  # root can still make instances (and while one sandbox holds many)
            r = libc.inotify_init()
            assert r >= 0, "host root lost its inotify budget: errno %d" % ctypes.get_errno()
            held.append(r)
    finally:
        for r in held:
            os.close(r)
    other = run(st, "sec-inotify-other", [PY, "-c", "import ctypes; l = ctypes.CDLL(None); "
                                          "print(l.inotify_init() >= 0)"])
    assert other["stdout"].strip() == "True", other
    run(st, "sec-inotify", ["sh", "-c", "pkill -f ino.out; true"])


def test_tcp_buffers_cannot_park_memory_beyond_the_limit(st):
    """Loopback TCP queues are kernel memory outside memory.limit_in_bytes on cgroup v1: the
    sandbox's TCP memory is capped like its memory (memory.kmem.tcp) and each socket's buffers
    by its network namespace's tcp_rmem/tcp_wmem. 60 connections filled without reading park
    at most about the memory limit (128 MiB here), not 60 x the host's buffer sizes."""
    r = py(st, "sec-tcpmem", """
import json, socket, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(128)
queued, conns = 0, []
for i in range(60):
    c = socket.create_connection(srv.getsockname()); a, _ = srv.accept()
    c.setblocking(False); conns.append((c, a))
    chunk = b"x" * 65536
    end = time.time() + 2
    while time.time() < end:
        try:
            queued += c.send(chunk)
        except BlockingIOError:
            break
        except OSError:
            break
print(json.dumps({"queued": queued, "rmem": open("/proc/sys/net/ipv4/tcp_rmem").read().split()}))
""", timeout=200)
    print("queued MiB", r["queued"] >> 20)
    assert r["rmem"][2] == "4194304", r
    assert r["queued"] < 200 << 20, "parked %d MiB in TCP buffers" % (r["queued"] >> 20)


def test_ro_bind_below_tmp_is_visible_over_the_sandbox_tmp(make_stack):
    """A checkout in /tmp (an ro_bind below /tmp) must be visible inside, read-only, on top of
    the sandbox's own writable /tmp (found by running the quick start from a clone in /tmp)."""
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix="berth-rob-", dir="/tmp")
    try:
        os.chmod(d, 0o755)
        Path(d, "marker").write_text("from the host\n")
        ov = overrides()
        ov["scheduler"]["ro_binds"].append(d)
        ov["templates"] = [probe_template(pool={"min": 1, "max": 2})]
        ov["gateway"] = {"routes": [{"path_prefix": "/", "template": "probe"}]}
        s = make_stack(ov)
        out = run(s, "sec-robtmp", ["cat", "%s/marker" % d])
        assert out["stdout"] == "from the host\n", out
        out = run(s, "sec-robtmp", ["sh", "-c", "echo x > %s/new; echo y > /tmp/mine && "
                                    "cat /tmp/mine" % d])
        assert out["stdout"] == "y\n" and not Path(d, "new").exists(), out
    finally:
        shutil.rmtree(d, ignore_errors=True)

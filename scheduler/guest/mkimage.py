#!/usr/bin/python3
"""Builds the microVM guest image (scheduler/README.md, "microVM guest image").

    mkimage.py --cache DIR --fetch-only
    mkimage.py --cache DIR --agent BERTH_AGENT --app BERTH_ECHO --outdir DIR

--fetch-only downloads (never installs) Debian's linux-image-cloud-amd64 and the versioned
kernel package it depends on into DIR with `apt-get download`, and unpacks the latter with
`dpkg -x` into DIR/kpkg. It needs Debian's mirror once; afterwards DIR is the cache and nothing
is fetched again. Exit status 3 means "cannot fetch" (no network, no apt).

The full run also writes into --outdir:
  vmlinux            the PVH ELF kernel, taken from the LZ4 payload of the package's bzImage
                     (QEMU's -M microvm starts it at its PVH entry: no real mode, no decompressor)
  initramfs.cpio.gz  cpio newc, gzip: berth-agent as /init, the app, the virtio modules in
                     load order (/lib/modules/order) and /etc/berth/guest.conf
  kernel.release     the guest kernel's release (uname -r in the guest)
Both binaries must be linked statically: the initramfs carries no shared libraries.
"""
import argparse
import glob
import gzip
import io
import os
import struct
import subprocess
import sys

# The modules the guest needs (the cloud kernel builds them as modules), by module name. Their
# dependencies are added from each .ko's modinfo "depends=" and everything is loaded in
# dependency order (the agent has no modprobe).
MODULES = ["virtio_mmio", "virtio_net", "virtio_console", "virtio_rng", "virtio_blk", "overlay"]
APP_PORT = 8080
META = "linux-image-cloud-amd64"


class FetchError(Exception):
    pass


def run(cmd, cwd=None):
    p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=600)
    if p.returncode != 0:
        raise FetchError("%s: exit %d: %s" % (" ".join(cmd), p.returncode, p.stdout[-800:]))
    return p.stdout


def apt_download(pkg, cache):
    try:
        run(["apt-get", "download", pkg], cwd=cache)
    except FetchError:
        if os.geteuid() != 0:
            raise
        run(["apt-get", "update", "-qq"])  # stale lists name versions the mirror dropped
        run(["apt-get", "download", pkg], cwd=cache)


def fetch(cache):
    """Returns the directory the kernel package is unpacked in (cached)."""
    os.makedirs(cache, exist_ok=True)
    kpkg = os.path.join(cache, "kpkg")
    if glob.glob(os.path.join(kpkg, "lib/modules/*/kernel")):
        return kpkg
    metas = glob.glob(os.path.join(cache, META + "_*.deb"))
    if not metas:
        apt_download(META, cache)
        metas = glob.glob(os.path.join(cache, META + "_*.deb"))
    depends = run(["dpkg-deb", "-f", metas[0], "Depends"]).strip()
    img = next((d.split()[0] for d in depends.split(",")
                if d.strip().startswith("linux-image-")), None)
    if not img:
        raise FetchError("%s: no linux-image dependency in %r" % (metas[0], depends))
    debs = glob.glob(os.path.join(cache, img + "_*.deb"))
    if not debs:
        apt_download(img, cache)
        debs = glob.glob(os.path.join(cache, img + "_*.deb"))
    tmp = kpkg + ".tmp"
    run(["rm", "-rf", tmp])
    run(["dpkg", "-x", debs[0], tmp])
    os.rename(tmp, kpkg)
    return kpkg


def extract_vmlinux(vmlinuz, out):
    data = open(vmlinuz, "rb").read()
    off = data.find(b"\x02\x21\x4c\x18")  # LZ4 legacy frame magic (CONFIG_KERNEL_LZ4)
    if off < 0:
        sys.exit("mkimage: %s holds no LZ4 payload" % vmlinuz)
    # lz4 stops with an error at the bzImage's trailer after the frame: judge by the output.
    p = subprocess.run(["lz4", "-dc"], input=data[off:], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL)
    elf = p.stdout
    if elf[:4] != b"\x7fELF" or len(elf) < (1 << 20):
        sys.exit("mkimage: the LZ4 payload of %s is not an ELF kernel" % vmlinuz)
    write_atomic(out, elf)


def modinfo_depends(ko):
    data = open(ko, "rb").read()
    i = data.find(b"\0depends=")
    if i < 0:
        return []
    v = data[i + 9:data.index(b"\0", i + 9)].decode()
    return [d for d in v.split(",") if d]


def module_order(moddir):
    paths = {}
    for root, _, files in os.walk(moddir):
        for f in files:
            if f.endswith(".ko"):
                paths[f[:-3].replace("-", "_")] = os.path.join(root, f)
    order, seen = [], set()

    def visit(name, chain):
        name = name.replace("-", "_")
        if name in seen:
            return
        if name in chain:
            sys.exit("mkimage: module dependency cycle at %s" % name)
        if name not in paths:
            sys.exit("mkimage: module %s not in %s" % (name, moddir))
        for d in modinfo_depends(paths[name]):
            visit(d, chain + [name])
        seen.add(name)
        order.append(paths[name])

    for m in MODULES:
        visit(m, [])
    return order


def check_static(path):
    """Refuses ELF files with a program interpreter (dynamically linked)."""
    with open(path, "rb") as f:
        h = f.read(64)
        if h[:4] != b"\x7fELF" or h[4] != 2:
            sys.exit("mkimage: %s is not a 64-bit ELF file" % path)
        phoff, = struct.unpack_from("<Q", h, 32)
        phentsize, phnum = struct.unpack_from("<HH", h, 54)
        f.seek(phoff)
        ph = f.read(phentsize * phnum)
    for k in range(phnum):
        if struct.unpack_from("<I", ph, k * phentsize)[0] == 3:  # PT_INTERP
            sys.exit("mkimage: %s is dynamically linked; the guest image needs static binaries "
                     "(a build without -Db_sanitize)" % path)


class Cpio:
    """cpio "newc" writer (the format the kernel unpacks); every entry owned by root, mtime 0."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name, mode, data=b"", rdev=(0, 0)):
        name_b = name.encode() + b"\0"
        hdr = "070701" + "".join("%08X" % v for v in (
            self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0))
        self.ino += 1
        self.buf.write(hdr.encode() + name_b)
        self.buf.write(b"\0" * (-(110 + len(name_b)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name):
        self._entry(name, 0o040755)

    def file(self, name, data, perm=0o644):
        self._entry(name, 0o100000 | perm, data)

    def chardev(self, name, major, minor, perm=0o600):
        self._entry(name, 0o020000 | perm, rdev=(major, minor))

    def finish(self):
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def guest_conf():
    lines = ["# berth-agent's guest configuration (scheduler/guest/mkimage.py)",
             "port=%d" % APP_PORT]
    for a in ["/bin/berth-echo", "--host", "0.0.0.0", "--port", str(APP_PORT),
              "--workspace-dir", "/tmp"]:
        lines.append("arg=" + a)
    return ("\n".join(lines) + "\n").encode()


def write_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", required=True)
    ap.add_argument("--fetch-only", action="store_true")
    ap.add_argument("--agent")
    ap.add_argument("--app")
    ap.add_argument("--outdir")
    a = ap.parse_args()
    try:
        kpkg = fetch(a.cache)
    except (FetchError, OSError, subprocess.TimeoutExpired) as e:
        print("mkimage: cannot fetch the guest kernel: %s" % e, file=sys.stderr)
        return 3
    if a.fetch_only:
        return 0
    if not (a.agent and a.app and a.outdir):
        ap.error("--agent, --app and --outdir are needed unless --fetch-only")
    check_static(a.agent)
    check_static(a.app)
    kver = sorted(os.listdir(os.path.join(kpkg, "lib/modules")))[-1]
    extract_vmlinux(os.path.join(kpkg, "boot", "vmlinuz-" + kver),
                    os.path.join(a.outdir, "vmlinux"))

    c = Cpio()
    # mnt/lower, mnt/rw and sysroot: the root disk, the workspace tmpfs and their overlay (the
    # app's root). No /data: without a root disk the agent makes it when BIND data=1 mounts.
    for d in ["bin", "dev", "etc", "etc/berth", "lib", "lib/modules", "mnt", "proc",
              "run", "sys", "sysroot", "tmp"]:
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.file("init", open(a.agent, "rb").read(), 0o755)
    c.file("bin/berth-echo", open(a.app, "rb").read(), 0o755)
    names = []
    for ko in module_order(os.path.join(kpkg, "lib/modules", kver, "kernel")):
        names.append(os.path.basename(ko))
        c.file("lib/modules/" + names[-1], open(ko, "rb").read())
    c.file("lib/modules/order", ("\n".join(names) + "\n").encode())
    c.file("etc/berth/guest.conf", guest_conf())
    write_atomic(os.path.join(a.outdir, "initramfs.cpio.gz"),
                 gzip.compress(c.finish(), compresslevel=6, mtime=0))
    write_atomic(os.path.join(a.outdir, "kernel.release"), (kver + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())

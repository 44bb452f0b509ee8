"""Hosts as network namespaces on one bridge, for multi-host tests.

Net(hosts) makes a namespace per host ("<tag>-<host>", the tag random per run) plus one that
holds the bridge, links each host to it with a veth pair and gives it 10.211.0.<n>/24. Nothing
else is touched: no address in the test's own namespace, no route out. Processes run in a host
with Net.argv(host) + argv (nsenter --net: only the network namespace changes, so cgroups and
mounts stay the machine's), and Python code reaches the hosts through Net.executor(host), a
thread pool whose threads live in that namespace (sockets keep the namespace they were made
in). Net.close() deletes every namespace (their links go with them); idempotent.
"""
import concurrent.futures
import ctypes
import os
import subprocess

CLONE_NEWNET = 0x40000000
SUBNET = "10.211.0"
_libc = ctypes.CDLL(None, use_errno=True)


def _ip(*args, check=True):
    p = subprocess.run(["ip"] + [str(a) for a in args], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=30)
    if check and p.returncode != 0:
        raise AssertionError("ip %s: %s" % (" ".join(map(str, args)), p.stdout.decode()))
    return p


def _enter(path):
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, "setns %s: %s" % (path, os.strerror(e)))
    finally:
        os.close(fd)


class Net:
    def __init__(self, hosts, subnet=SUBNET):
        """<hosts>: {name: n} for <subnet>.<n> (10.211.0.<n> by default)."""
        self.tag = "bt%s" % os.urandom(3).hex()
        self.subnet = subnet
        self.hosts = dict(hosts)
        self.made = []
        self.pools = []
        try:
            self._make("sw")
            _ip("-n", self.ns("sw"), "link", "add", "br0", "type", "bridge")
            _ip("-n", self.ns("sw"), "link", "set", "br0", "up")
            for i, (h, n) in enumerate(sorted(self.hosts.items())):
                self._make(h)
                ns, peer = self.ns(h), "%sv%d" % (self.tag, i)
                _ip("link", "add", peer, "netns", self.ns("sw"), "type", "veth", "peer", "name",
                    "eth0", "netns", ns)
                _ip("-n", self.ns("sw"), "link", "set", peer, "master", "br0", "up")
                _ip("-n", ns, "addr", "add", "%s.%d/24" % (subnet, n), "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def _make(self, h):
        _ip("netns", "add", self.ns(h))
        self.made.append(self.ns(h))

    def ns(self, host):
        return "%s-%s" % (self.tag, host)

    def addr(self, host):
        return "%s.%d" % (self.subnet, self.hosts[host])

    def add_addr(self, host, cidr):
        """Another address on <host>'s link (e.g. one in a private range)."""
        _ip("-n", self.ns(host), "addr", "add", cidr, "dev", "eth0")

    def argv(self, host):
        return ["nsenter", "--net=/run/netns/%s" % self.ns(host), "--"]

    def executor(self, host, workers=4):
        pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, initializer=_enter,
            initargs=("/run/netns/%s" % self.ns(host),))
        self.pools.append(pool)
        return pool

    def close(self):
        for pool in self.pools:
            pool.shutdown(wait=True, cancel_futures=True)
        self.pools = []
        for ns in reversed(self.made):
            _ip("netns", "del", ns, check=False)
        self.made = []

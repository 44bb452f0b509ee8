#include "scheduler/seccomp.h"

#include <errno.h>
#include <linux/filter.h>
#include <sched.h>
#include <seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif
#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000
#endif

/* Every namespace flag: a sandbox makes no namespace of its own (a new user namespace would give
 * it capabilities over whatever it creates there). */
#define NS_FLAGS                                                                                   \
    (CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET |     \
     CLONE_NEWCGROUP | CLONE_NEWTIME)

const char *const sch_seccomp_profiles[] = {"default", "strict", NULL};

/* Refused by every profile. Names this libseccomp does not know are skipped (an old library on
 * a new kernel: the kernel refuses those for want of capabilities anyway). */
static const char *const denied_default[] = {
    /* mounts and the new mount API */
    "mount", "umount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr", "chroot",
    /* file handles: open_by_handle_at reaches any inode of a mounted file system */
    "open_by_handle_at", "name_to_handle_at",
    /* kernel code and state */
    "bpf", "perf_event_open", "init_module", "finit_module", "delete_module", "create_module",
    "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "syslog", "acct", "quotactl",
    "quotactl_fd", "lookup_dcookie", "nfsservctl", "_sysctl", "sysfs", "uselib", "ustat",
    "get_kernel_syms", "query_module", "iopl", "ioperm", "vhangup", "pciconfig_read",
    "pciconfig_write", "pciconfig_iobase", "fanotify_init",
    /* keyrings */
    "keyctl", "add_key", "request_key",
    /* clock and time */
    "settimeofday", "clock_settime", "clock_settime64", "clock_adjtime", "clock_adjtime64",
    "adjtimex", "stime",
    /* host-wide identity */
    "sethostname", "setdomainname",
    /* memory and I/O interfaces with a long record of kernel bugs */
    "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    /* namespaces: joining any is refused; creating them is refused by flag below */
    "setns", NULL};

static const char *const denied_strict[] = {"ptrace", "process_vm_readv", "process_vm_writev",
                                            "kcmp",   "personality",      NULL};

static int deny(scmp_filter_ctx ctx, const char *name, char *err, size_t errlen)
{
    int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR)
        return 0;
    int rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 0);
    /* -EFAULT/-EOPNOTSUPP: a pseudo syscall this ABI does not have (e.g. stime on x86_64). */
    if (rc < 0 && rc != -EFAULT && rc != -EOPNOTSUPP) {
        snprintf(err, errlen, "seccomp rule for %s: %s", name, strerror(-rc));
        return rc;
    }
    return 0;
}

static int build(scmp_filter_ctx ctx, int strict, char *err, size_t errlen)
{
    int rc;
    for (const char *const *s = denied_default; *s; s++)
        if ((rc = deny(ctx, *s, err, errlen)) < 0)
            return rc;
    /* unshare(flags) and clone(flags, ...) with any CLONE_NEW*: EPERM (on x86_64 clone's flags
     * are its first argument). clone3 passes its flags in memory a filter cannot read: ENOSYS,
     * so that glibc falls back to clone. */
    rc = 0;
    for (unsigned bit = 0; bit < 32 && rc == 0; bit++) {
        unsigned long f = 1UL << bit;
        if (!(NS_FLAGS & f))
            continue;
        rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(unshare), 1,
                              SCMP_A0(SCMP_CMP_MASKED_EQ, f, f));
        if (rc == 0)
            rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                                  SCMP_A0(SCMP_CMP_MASKED_EQ, f, f));
    }
    if (rc == 0)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
    if (rc < 0) {
        snprintf(err, errlen, "seccomp namespace rules: %s", strerror(-rc));
        return rc;
    }
    /* vsock ignores network namespaces: it would be a channel to the hypervisor or the host
     * around the sandbox's loopback-only network. */
    rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EAFNOSUPPORT), SCMP_SYS(socket), 1,
                          SCMP_A0(SCMP_CMP_EQ, AF_VSOCK));
    if (rc < 0) {
        snprintf(err, errlen, "seccomp vsock rule: %s", strerror(-rc));
        return rc;
    }
    if (!strict)
        return 0;
    for (const char *const *s = denied_strict; *s; s++)
        if ((rc = deny(ctx, *s, err, errlen)) < 0)
            return rc;
    /* socket(): only AF_UNIX, AF_INET and AF_INET6. */
    rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EAFNOSUPPORT), SCMP_SYS(socket), 4,
                          SCMP_A0(SCMP_CMP_NE, AF_VSOCK), SCMP_A0(SCMP_CMP_NE, AF_UNIX),
                          SCMP_A0(SCMP_CMP_NE, AF_INET), SCMP_A0(SCMP_CMP_NE, AF_INET6));
    if (rc == -EINVAL) {
        /* Older libseccomp cannot AND several comparisons of one argument: refuse the ranges
         * around the three allowed families instead. */
        rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EAFNOSUPPORT), SCMP_SYS(socket), 1,
                              SCMP_A0(SCMP_CMP_GT, AF_INET6));
        for (int fam = 0; rc == 0 && fam < AF_INET6; fam++)
            if (fam != AF_UNIX && fam != AF_INET)
                rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EAFNOSUPPORT), SCMP_SYS(socket), 1,
                                      SCMP_A0(SCMP_CMP_EQ, fam));
    }
    if (rc < 0) {
        snprintf(err, errlen, "seccomp socket rules: %s", strerror(-rc));
        return rc;
    }
    return 0;
}

int sch_seccomp_known(const char *name)
{
    for (const char *const *p = sch_seccomp_profiles; *p; p++)
        if (strcmp(*p, name) == 0)
            return 1;
    return 0;
}

const char *const *sch_seccomp_denied(const char *name)
{
    return strcmp(name, "strict") == 0 ? denied_strict : denied_default;
}

int sch_seccomp_compile(const char *name, struct sch_seccomp_prog *ret, char *err, size_t errlen)
{
    if (!sch_seccomp_known(name)) {
        snprintf(err, errlen, "unknown seccomp profile '%s' (known: default, strict)", name);
        return -ENOENT;
    }
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (!ctx) {
        snprintf(err, errlen, "seccomp_init failed");
        return -ENOMEM;
    }
    int rc, fd = -1;
    struct sock_filter *filter = NULL;
    /* Other ABIs (i386 via int 0x80, x32) are refused, not killed. We set no_new_privs
     * ourselves, before the filter is installed. */
    if ((rc = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_ERRNO(EPERM))) < 0 ||
        (rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0)) < 0) {
        snprintf(err, errlen, "seccomp attributes: %s", strerror(-rc));
        goto out;
    }
    if ((rc = build(ctx, strcmp(name, "strict") == 0, err, errlen)) < 0)
        goto out;
    fd = memfd_create("berth-seccomp", MFD_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        snprintf(err, errlen, "memfd_create: %s", strerror(errno));
        goto out;
    }
    if ((rc = seccomp_export_bpf(ctx, fd)) < 0) {
        snprintf(err, errlen, "seccomp_export_bpf: %s", strerror(-rc));
        goto out;
    }
    off_t size = lseek(fd, 0, SEEK_END);
    if (size <= 0 || size % (off_t)sizeof(struct sock_filter) != 0 ||
        size / (off_t)sizeof(struct sock_filter) > BPF_MAXINSNS) {
        rc = -EINVAL;
        snprintf(err, errlen, "seccomp program of %lld bytes is not usable", (long long)size);
        goto out;
    }
    filter = malloc((size_t)size);
    if (!filter || pread(fd, filter, (size_t)size, 0) != (ssize_t)size) {
        rc = filter ? -EIO : -ENOMEM;
        snprintf(err, errlen, "cannot read the seccomp program");
        goto out;
    }
    ret->len = (unsigned short)(size / (off_t)sizeof(struct sock_filter));
    ret->filter = filter;
    filter = NULL;
    rc = 0;
out:
    free(filter);
    if (fd >= 0)
        close(fd);
    seccomp_release(ctx);
    return rc;
}

void sch_seccomp_prog_fini(struct sch_seccomp_prog *p)
{
    if (!p)
        return;
    free(p->filter);
    p->filter = NULL;
    p->len = 0;
}

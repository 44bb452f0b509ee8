/* The sandbox's seccomp profiles, as data (seccomp.c), compiled with libseccomp into classic BPF
 * once per profile when the driver starts; the sandbox child only installs the ready program
 * (no allocation, no libseccomp call between clone() and exec).
 *
 * Every refusal is EPERM (ENOSYS for clone3, whose flags a filter cannot read, so that libc falls
 * back to clone): tools see a failed call, never a kill. Syscalls of other ABIs (i386 through
 * int 0x80, x32) get EPERM too. Profiles:
 *   default  Docker's default profile in spirit: mounts, module loading, kexec, reboot, swap,
 *            clock and time setting, acct, quotas, syslog, keyrings, bpf, perf events,
 *            userfaultfd, file handles, io_uring, new namespaces (unshare/clone with CLONE_NEW*,
 *            setns), vsock sockets (they ignore network namespaces) and a few obsolete or
 *            host-wide calls.
 *   strict   default, plus ptrace, process_vm_readv/writev, kcmp, personality and every socket
 *            family but AF_UNIX, AF_INET and AF_INET6. */
#ifndef SCH_SECCOMP_H
#define SCH_SECCOMP_H

#include <stddef.h>

struct sock_filter;

struct sch_seccomp_prog {
    unsigned short len;
    struct sock_filter *filter; /* owned; free with sch_seccomp_prog_fini() */
};

/* Names of the profiles, NULL-terminated. */
extern const char *const sch_seccomp_profiles[];

/* Returns 1 if <name> is a profile. */
int sch_seccomp_known(const char *name);

/* Compiles profile <name> for this machine's native ABI. Returns 0, or a negative errno with a
 * message in <err> (-ENOENT: unknown profile). */
int sch_seccomp_compile(const char *name, struct sch_seccomp_prog *ret, char *err, size_t errlen);
void sch_seccomp_prog_fini(struct sch_seccomp_prog *p);

/* The syscall names a profile refuses outright (for documentation and --check); NULL-terminated,
 * static. Argument-filtered rules (unshare/clone flags, socket families) are not listed. */
const char *const *sch_seccomp_denied(const char *name);

#endif

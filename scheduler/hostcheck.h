/* What this host offers the process sandbox, probed for real (a child process tries each
 * mechanism), for the driver's start-up and `berth-scheduler --check`:
 *   userns   a child can get a new user namespace whose id maps the parent writes, and become
 *            its root;
 *   seccomp  a child with no_new_privs can install the default filter, which then refuses
 *            acct() with EPERM while getpid() still works.
 * Each probe forks; call it at start-up only, not from the loop while it serves. */
#ifndef SCH_HOSTCHECK_H
#define SCH_HOSTCHECK_H

#include <stdint.h>

struct sch_host_support {
    int userns, seccomp; /* 1: works */
    char userns_why[160], seccomp_why[160];
};

/* Probes both, with the default seccomp profile (one that does not compile is reported as
 * seccomp missing, with the compiler's words). <uid_base> is the first host id the probe
 * maps. The answer is kept: a later call with the same <uid_base> forks nothing. */
void sch_hostcheck(struct sch_host_support *ret, uint32_t uid_base);

#endif

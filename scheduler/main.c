/* berth-scheduler: one per worker host. Keeps warm pools full, starts, binds and destroys
 * sandbox instances, reaps expired sessions and adopts its instances after a restart.
 *
 *   berth-scheduler -c CONFIG [--check]
 *
 * --check loads and validates the configuration, prints the scheduler settings, what this host
 * offers the sandbox and, per driver, whether it works here and why not, and exits: 0 when
 * everything the templates need works, 1 for a configuration error (a driver no one knows),
 * 3 when a driver a template uses cannot work here (or sandboxes would be refused). */
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/log.h"
#include "scheduler/cgroup.h"
#include "scheduler/config.h"
#include "scheduler/driver.h"
#include "scheduler/hostcheck.h"
#include "scheduler/sched.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: berth-scheduler -c CONFIG [--check]\n");
}

/* --check: what this host offers the sandbox. Returns 1 when sandboxes may start (everything
 * works, or scheduler.insecure accepts what is missing). */
static int check_host(const struct sch_config *sc)
{
    struct sch_host_support hs;
    sch_hostcheck(&hs, sc->uid_base);
    printf("user_namespaces=%s%s%s\n", hs.userns ? "yes" : "no (", hs.userns ? "" : hs.userns_why,
           hs.userns ? "" : ")");
    printf("seccomp=%s%s%s\n", hs.seccomp ? "yes" : "no (", hs.seccomp ? "" : hs.seccomp_why,
           hs.seccomp ? "" : ")");
    struct sch_cgroups *cg = sch_cgroups_create(sc->cgroup_parent, "/sys/fs/cgroup");
    for (int i = 0; cg && i < SCH_CG_COUNT; i++) {
        const char *w = sch_cgroups_warning(cg, (enum sch_cg_ctrl)i);
        printf("cgroup.%s=%s%s%s\n", sch_cgroups_ctrl_name((enum sch_cg_ctrl)i),
               w ? "no (" : (sch_cgroups_version(cg, (enum sch_cg_ctrl)i) == 2 ? "v2" : "v1"),
               w ? w : "", w ? ")" : "");
    }
    sch_cgroups_undo_parents(cg); /* a check leaves nothing on the host */
    sch_cgroups_destroy(cg);
    int secure = hs.userns && hs.seccomp;
    if (secure)
        printf("sandboxes=secure\n");
    else if (sc->insecure)
        printf("sandboxes=INSECURE (scheduler.insecure is set: never run untrusted code here)\n");
    else
        printf("sandboxes=refused (this host lacks what the sandbox needs; scheduler.insecure: "
               "true would start them anyway, never for untrusted code)\n");
    return secure || sc->insecure;
}

/* --check: every driver this scheduler knows, whether it works here (and why not), and the
 * templates that use it. Returns 0; -ENOTSUP when a template's driver cannot work here (the
 * line says why); another negative errno with <err> for a driver no driver kind is called. */
static int check_drivers(const struct cm_config *cfg, const struct sch_config *sc, char *err,
                         size_t errlen)
{
    struct sch_drivers *r = sch_drivers_create(sch_driver_builtin, sc, NULL);
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    sch_drivers_probe_all(r);
    for (size_t i = 0; i < sch_drivers_count(r); i++) {
        const char *name = sch_drivers_name(r, i), *why = "";
        int ok = sch_drivers_available(r, i, &why) == 1;
        printf("driver.%s=%s%s%s%s templates=", name, ok ? "works" : "does not work (",
               ok ? (*why ? " (" : "") : why, ok ? why : "", *why || !ok ? ")" : "");
        int n = 0;
        for (size_t t = 0; t < cfg->n_templates; t++)
            if (strcmp(cfg->templates[t].driver, name) == 0)
                printf("%s%s", n++ ? "," : "", cfg->templates[t].name);
        printf("%s\n", n ? "" : "-");
    }
    int rc = sch_drivers_for_templates(r, cfg, 0, err, errlen);
    if (rc == -ENOTSUP)
        printf("drivers=refused (%s)\n", err);
    sch_drivers_destroy(r);
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"check", no_argument, NULL, 'k'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *path = NULL;
    int check = 0, o;
    while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c':
            path = optarg;
            break;
        case 'k':
            check = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!path || optind != argc) {
        usage(stderr);
        return 2;
    }
    char err[1024];
    struct cm_config *cfg = cm_config_load(path, err, sizeof(err));
    if (!cfg) {
        fprintf(stderr, "berth-scheduler: %s\n", err);
        return 1;
    }
    struct sch_config sc;
    if (sch_config_parse(&sc, cm_ynode_get(cfg->root, "scheduler"), cfg->file, err, sizeof(err)) <
        0) {
        fprintf(stderr, "berth-scheduler: %s\n", err);
        cm_config_free(cfg);
        return 1;
    }
    enum cm_log_level level = CM_LOG_INFO;
    cm_log_level_parse(cfg->log_level, &level);
    cm_log_init("berth-scheduler", level);
    if (check) {
        printf("host_id=%s api=%s:%u api_secret=set run_dir=%s storage_root=%s capacity=%u "
               "agent=%s templates=%zu\n",
               sc.host_id, sc.api_host, sc.api_port, sc.run_dir, sc.storage_root, sc.capacity,
               sc.agent_path, cfg->n_templates);
        int ok = check_host(&sc);
        int rc = check_drivers(cfg, &sc, err, sizeof(err));
        if (rc < 0 && rc != -ENOTSUP)
            fprintf(stderr, "berth-scheduler: %s\n", err);
        sch_config_fini(&sc);
        cm_config_free(cfg);
        return rc < 0 && rc != -ENOTSUP ? 1 : ok && rc == 0 ? 0 : 3;
    }
    signal(SIGPIPE, SIG_IGN);
    struct event_base *base = event_base_new();
    if (!base) {
        fprintf(stderr, "berth-scheduler: cannot create the event loop\n");
        return 1;
    }
    struct sch_ctx *ctx = sch_ctx_create(base, cfg, &sc, err, sizeof(err));
    if (!ctx) {
        cm_log_error("main", "cannot start err=\"%s\"", err);
        event_base_free(base);
        sch_config_fini(&sc);
        cm_config_free(cfg);
        return 1;
    }
    event_base_dispatch(base);
    sch_ctx_destroy(ctx);
    event_base_free(base);
    cm_log_info("main", "stopped");
    sch_config_fini(&sc);
    cm_config_free(cfg);
    return 0;
}

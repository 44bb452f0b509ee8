/* berth-scheduler: one per worker host. Keeps warm pools full, starts, binds and destroys
 * sandbox instances, reaps expired sessions and adopts its instances after a restart.
 *
 *   berth-scheduler -c CONFIG [--check]
 *
 * --check loads and validates the configuration, prints the scheduler settings and exits. */
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/log.h"
#include "scheduler/config.h"
#include "scheduler/sched.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: berth-scheduler -c CONFIG [--check]\n");
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
        sch_config_fini(&sc);
        cm_config_free(cfg);
        return 0;
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

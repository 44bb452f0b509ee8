/* berth-gateway: the data-plane workers and the admin listener. */
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/config.h"
#include "common/log.h"
#include "gateway/admin.h"
#include "gateway/config.h"
#include "gateway/touchtab.h"
#include "gateway/worker.h"

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
    stop_signal = sig;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: berth-gateway -c CONFIG [-t] [-l LEVEL]\n"
               "  -c, --config FILE   Berth YAML config (gateway: section and shared ones)\n"
               "  -t, --test          check the config and exit\n"
               "  -l, --log-level L   error|warn|info|debug (overrides log.level)\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"test", no_argument, NULL, 't'},
                                         {"log-level", required_argument, NULL, 'l'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *path = NULL, *level_arg = NULL;
    int test = 0, o;
    while ((o = getopt_long(argc, argv, "c:tl:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c': path = optarg; break;
        case 't': test = 1; break;
        case 'l': level_arg = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!path) {
        usage(stderr);
        return 2;
    }
    char err[1024];
    struct cm_config *cfg = cm_config_load(path, err, sizeof(err));
    if (!cfg) {
        fprintf(stderr, "berth-gateway: %s\n", err);
        return 1;
    }
    struct gw_config *gc = gw_config_load(cfg, err, sizeof(err));
    if (!gc) {
        fprintf(stderr, "berth-gateway: %s\n", err);
        cm_config_free(cfg);
        return 1;
    }
    enum cm_log_level level = CM_LOG_INFO;
    if (cm_log_level_parse(level_arg ? level_arg : cfg->log_level, &level) < 0) {
        fprintf(stderr, "berth-gateway: bad log level '%s'\n", level_arg);
        return 2;
    }
    if (test) {
        printf("berth-gateway: %s: configuration OK (%zu routes, %zu templates)\n", path,
               gc->n_routes, cfg->n_templates);
        gw_config_free(gc);
        cm_config_free(cfg);
        return 0;
    }
    cm_log_init("gateway", level);
    signal(SIGPIPE, SIG_IGN);
    /* No evthread_use_pthreads(): every loop is touched by its own thread only (stop requests
     * come through pipes), so libevent runs without locks on the hot path. */

    struct gw_worker **workers = calloc(gc->workers, sizeof(*workers));
    struct gw_metrics **shards = calloc(gc->workers, sizeof(*shards));
    if (!workers || !shards) {
        fprintf(stderr, "berth-gateway: out of memory\n");
        return 1;
    }
    int rc = 0;
    uint32_t started = 0;
    /* With several loops, a session's connections may reach more than one: they share a note
     * of its touches (gateway/touchtab.h). */
    struct gw_touchtab *touchtab = NULL;
    if (gc->workers > 1 && !(touchtab = gw_touchtab_create(GW_TOUCHTAB_SLOTS))) {
        fprintf(stderr, "berth-gateway: out of memory\n");
        rc = 1;
        goto out;
    }
    for (uint32_t i = 0; i < gc->workers; i++) {
        workers[i] = gw_worker_create((int)i, gc, err, sizeof(err));
        if (!workers[i]) {
            cm_log_error("main", "cannot start worker=%u err=\"%s\"", i, err);
            rc = 1;
            goto out;
        }
        workers[i]->touchtab = touchtab;
        shards[i] = &workers[i]->metrics;
    }
    struct gw_admin *admin = gw_admin_start(gc, shards, (int)gc->workers, err, sizeof(err));
    if (!admin) {
        cm_log_error("main", "cannot start admin listener err=\"%s\"", err);
        rc = 1;
        goto out;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    /* Workers inherit this mask: signals are taken by the main thread only. */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    for (; started < gc->workers; started++) {
        if (gw_worker_start(workers[started]) < 0) {
            cm_log_error("main", "cannot start worker thread=%u", started);
            rc = 1;
            break;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc == 0) {
        gw_admin_set_ready(admin, 1);
        cm_log_info("main", "listening listen=%s admin=%s workers=%u", gc->listen,
                    gc->admin_listen, gc->workers);
        while (!stop_signal)
            pause();
        cm_log_info("main", "stopping signal=%d", (int)stop_signal);
    }
    gw_admin_set_ready(admin, 0);
    for (uint32_t i = 0; i < started; i++)
        gw_worker_stop(workers[i]);
    gw_admin_stop(admin);
out:
    for (uint32_t i = 0; i < gc->workers; i++) {
        if (workers[i] && i >= started)
            workers[i]->thread = 0;
        gw_worker_destroy(workers[i]);
    }
    gw_touchtab_destroy(touchtab);
    free(workers);
    free(shards);
    gw_config_free(gc);
    cm_config_free(cfg);
    return rc;
}

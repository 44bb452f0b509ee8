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
#include "gateway/tls.h"
#include "gateway/touchtab.h"
#include "gateway/usage.h"
#include "gateway/worker.h"

static volatile sig_atomic_t stop_signal;

static volatile sig_atomic_t reload_signal;

static void on_signal(int sig)
{
    if (sig == SIGHUP)
        reload_signal = 1;
    else
        stop_signal = sig;
}

/* SIGHUP: the config file is read again and its gateway.tls section (certificates, keys, OCSP
 * responses, protocol settings) replaces the TLS listener's; connections keep what they
 * negotiated. Anything wrong keeps the previous one, with the reason in the log. Nothing else
 * of the config changes without a restart. */
static void reload_tls(const char *path, const struct gw_config *running)
{
    char err[1024];
    if (!*running->tls_listen) {
        cm_log_info("main", "SIGHUP: no gateway.tls_listen, nothing to reload");
        return;
    }
    struct cm_config *cfg = cm_config_load(path, err, sizeof(err));
    struct gw_config *gc = cfg ? gw_config_load(cfg, err, sizeof(err)) : NULL;
    struct gw_tls *t = NULL;
    if (gc && !*gc->tls_listen)
        snprintf(err, sizeof(err), "gateway.tls_listen was removed: a restart does that");
    else if (gc)
        t = gw_tls_new(gc, err, sizeof(err));
    if (t) {
        gw_tls_publish(t);
        cm_log_info("main", "SIGHUP: TLS certificates reloaded certificates=%zu", gc->tls.n_certs);
    } else {
        cm_log_error("main",
                     "SIGHUP: TLS reload failed, keeping the running certificates "
                     "err=\"%s\"",
                     err);
    }
    gw_config_free(gc);
    cm_config_free(cfg);
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
    /* Until its handler is installed, a SIGHUP (a reload asked too early) must not end us. */
    signal(SIGHUP, SIG_IGN);
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
    if (*gc->tls_listen) {
        struct gw_tls *t = gw_tls_new(gc, err, sizeof(err));
        if (!t) {
            fprintf(stderr, "berth-gateway: %s: gateway.tls: %s\n", path, err);
            gw_config_free(gc);
            cm_config_free(cfg);
            return 1;
        }
        gw_tls_publish(t);
    }
    if (test) {
        gw_tls_free_all();
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
    struct cm_usagetab **usage = calloc(gc->workers, sizeof(*usage));
    if (!workers || !shards || !usage) {
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
        usage[i] = workers[i]->usage->labels;
    }
    struct gw_admin *admin = gw_admin_start(gc, shards, usage, (int)gc->workers, err, sizeof(err));
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
    sigaction(SIGHUP, &sa, NULL);
    /* Workers inherit this mask: signals are taken by the main thread only. */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    for (; started < gc->workers; started++) {
        if (gw_worker_start(workers[started]) < 0) {
            cm_log_error("main", "cannot start worker thread=%u", started);
            rc = 1;
            break;
        }
    }
    if (rc == 0) {
        gw_admin_set_ready(admin, 1);
        cm_log_info("main", "listening listen=%s tls_listen=%s admin=%s workers=%u", gc->listen,
                    *gc->tls_listen ? gc->tls_listen : "-", gc->admin_listen, gc->workers);
        /* The three signals stay blocked but while sigsuspend() waits: one that comes during a
         * reload is taken at the next wait, never lost before a pause(). */
        while (!stop_signal) {
            sigsuspend(&old);
            if (reload_signal && !stop_signal) {
                reload_signal = 0;
                reload_tls(path, gc);
            }
        }
        cm_log_info("main", "stopping signal=%d", (int)stop_signal);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
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
    gw_tls_free_all();
    free(workers);
    free(shards);
    free(usage);
    gw_config_free(gc);
    cm_config_free(cfg);
    return rc;
}

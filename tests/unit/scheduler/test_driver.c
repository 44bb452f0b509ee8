/* scheduler/driver.c: the driver registry. Each test builds a registry over its own table of
 * driver kinds (the product's table, sch_driver_builtin, holds only real drivers): "ok" works
 * here, "no" reports that it cannot, and both count how often they were probed and created. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/json.h"
#include "scheduler/config.h"
#include "scheduler/driver.h"
#include "tests/harness/test.h"

static int probes, creates, purges;
static const char *ok_traces[4], *no_traces[4];

struct fake {
    struct sch_driver base;
    const char **traces;
};

static int f_list(struct sch_driver *d, char ***ret_ids)
{
    const char **t = ((struct fake *)d)->traces;
    char **ids = calloc(5, sizeof(*ids));
    for (int i = 0; ids && t[i]; i++)
        ids[i] = strdup(t[i]);
    *ret_ids = ids;
    return ids ? 0 : -ENOMEM;
}

static int f_purge(struct sch_driver *d, const char *id)
{
    (void)d, (void)id;
    purges++;
    return 0;
}

static void f_status(struct sch_driver *d, struct cm_jbuf *out)
{
    cm_jbuf_printf(out, "{\"fake\":\"%s\"}", d->ops->name);
}

static void f_destroy(struct sch_driver *d)
{
    free(d);
}

static const struct sch_driver_ops ok_ops = {
    .name = "ok", .list = f_list, .purge = f_purge, .status = f_status, .destroy = f_destroy};
static const struct sch_driver_ops no_ops = {
    .name = "no", .list = f_list, .purge = f_purge, .status = f_status, .destroy = f_destroy};

static int ok_probe(const struct sch_config *cfg, char *why, size_t len)
{
    (void)cfg;
    probes++;
    snprintf(why, len, "%s", "");
    return 1;
}

static int no_probe(const struct sch_config *cfg, char *why, size_t len)
{
    (void)cfg;
    probes++;
    snprintf(why, len, "no /dev/kvm");
    return 0;
}

static struct sch_driver *make(const struct sch_driver_ops *ops, const char **traces)
{
    creates++;
    struct fake *f = calloc(1, sizeof(*f));
    f->base.ops = ops;
    f->traces = traces;
    return &f->base;
}

static struct sch_driver *ok_create(const struct sch_config *cfg, const struct sch_driver_env *env,
                                  char *err, size_t errlen)
{
    (void)cfg, (void)env, (void)err, (void)errlen;
    return make(&ok_ops, ok_traces);
}

static struct sch_driver *no_create(const struct sch_config *cfg, const struct sch_driver_env *env,
                                  char *err, size_t errlen)
{
    (void)cfg, (void)env, (void)err, (void)errlen;
    return make(&no_ops, no_traces);
}

static const struct sch_driver_kind kinds[] = {
    {"ok", ok_probe, ok_create},
    {"no", no_probe, no_create},
    {NULL, NULL, NULL},
};

static struct sch_config sc; /* the fakes ignore it */

static struct sch_drivers *fresh(void)
{
    probes = creates = purges = 0;
    memset(ok_traces, 0, sizeof(ok_traces));
    memset(no_traces, 0, sizeof(no_traces));
    struct sch_drivers *r = sch_drivers_create(kinds, &sc, NULL);
    CHECK_NOT_NULL(r);
    return r;
}

static struct cm_config *config(const char *yaml)
{
    char err[1024];
    struct cm_config *cfg =
        cm_config_load(test_write_file("berth.yaml", yaml, (size_t)-1), err, sizeof(err));
    CHECK_MSG(cfg != NULL, "%s", err);
    return cfg;
}

TEST(unknown_name_is_refused_naming_the_known_ones)
{
    struct sch_drivers *r = fresh();
    char err[256] = "";
    CHECK_NULL(sch_drivers_use(r, "microvm", err, sizeof(err)));
    CHECK_STR_EQ(err, "unknown driver 'microvm' (known: ok, no)");
    CHECK_INT_EQ(probes, 0);
    CHECK_INT_EQ(creates, 0);
    sch_drivers_destroy(r);
}

TEST(driver_that_cannot_work_here_is_refused_with_its_reason)
{
    struct sch_drivers *r = fresh();
    char err[256] = "";
    CHECK_NULL(sch_drivers_use(r, "no", err, sizeof(err)));
    CHECK_STR_EQ(err, "driver 'no' cannot work on this host: no /dev/kvm");
    CHECK_INT_EQ(creates, 0); /* never created */
    CHECK_NULL(sch_drivers_get(r, "no"));
    const char *why = NULL;
    CHECK_INT_EQ(sch_drivers_available(r, 1, &why), 0);
    CHECK_STR_EQ(why, "no /dev/kvm");
    /* Asked again: probed once. */
    CHECK_NULL(sch_drivers_use(r, "no", err, sizeof(err)));
    CHECK_INT_EQ(probes, 1);
    sch_drivers_destroy(r);
}

TEST(drivers_are_created_lazily_once)
{
    struct sch_drivers *r = fresh();
    char err[256] = "", names[64];
    CHECK_INT_EQ(sch_drivers_count(r), 2);
    CHECK_INT_EQ(sch_drivers_available(r, 0, NULL), -1); /* not probed yet */
    sch_drivers_names(r, names, sizeof(names));
    CHECK_STR_EQ(names, "");
    struct sch_driver *d = sch_drivers_use(r, "ok", err, sizeof(err));
    CHECK_NOT_NULL(d);
    CHECK(sch_drivers_use(r, "ok", err, sizeof(err)) == d);
    CHECK(sch_drivers_get(r, "ok") == d);
    CHECK(sch_drivers_at(r, 0) == d);
    CHECK_NULL(sch_drivers_at(r, 1));
    CHECK_INT_EQ(creates, 1);
    CHECK_INT_EQ(probes, 1); /* "no" was not probed: nobody asked */
    sch_drivers_names(r, names, sizeof(names));
    CHECK_STR_EQ(names, "ok");
    sch_drivers_destroy(r);
}

TEST(templates_create_only_their_drivers)
{
    struct sch_drivers *r = fresh();
    struct cm_config *cfg = config("templates:\n"
                                   "  - name: a\n    driver: ok\n    app: {command: x}\n"
                                   "  - name: ext\n    driver: static\n    upstreams: [\"h:1\"]\n");
    char err[512] = "";
    CHECK_INT_EQ(sch_drivers_for_templates(r, cfg, 1, err, sizeof(err)), 0);
    CHECK_NOT_NULL(sch_drivers_get(r, "ok"));
    CHECK_NULL(sch_drivers_get(r, "no"));
    CHECK_INT_EQ(creates, 1);
    cm_config_free(cfg);
    sch_drivers_destroy(r);
}

TEST(template_with_unknown_driver_is_a_positioned_error)
{
    struct sch_drivers *r = fresh();
    struct cm_config *cfg = config("templates:\n"
                                   "  - name: a\n    driver: ok\n    app: {command: x}\n"
                                   "  - name: b\n    driver: vm\n    app: {command: x}\n");
    char err[512] = "", want[4200];
    CHECK_INT_EQ(sch_drivers_for_templates(r, cfg, 1, err, sizeof(err)), -ENOENT);
    snprintf(want, sizeof(want), "%s:6:13: templates.b.driver: unknown driver 'vm' (known: ok, no)",
             cfg->file);
    CHECK_STR_EQ(err, want);
    /* --check's mode creates nothing and says the same. */
    sch_drivers_destroy(r);
    r = fresh();
    CHECK_INT_EQ(sch_drivers_for_templates(r, cfg, 0, err, sizeof(err)), -ENOENT);
    CHECK_STR_EQ(err, want);
    CHECK_INT_EQ(creates, 0);
    cm_config_free(cfg);
    sch_drivers_destroy(r);
}

TEST(template_with_a_driver_that_cannot_work_here_is_refused)
{
    struct sch_drivers *r = fresh();
    struct cm_config *cfg = config("templates:\n"
                                   "  - name: vm\n    driver: no\n    app: {command: x}\n");
    char err[512] = "", want[4200];
    snprintf(want, sizeof(want),
             "%s:3:13: templates.vm.driver: driver 'no' cannot work on this host: no /dev/kvm",
             cfg->file);
    CHECK_INT_EQ(sch_drivers_for_templates(r, cfg, 0, err, sizeof(err)), -ENOTSUP);
    CHECK_STR_EQ(err, want);
    CHECK_INT_EQ(sch_drivers_for_templates(r, cfg, 1, err, sizeof(err)), -ENOTSUP);
    CHECK_STR_EQ(err, want);
    CHECK_INT_EQ(creates, 0);
    cm_config_free(cfg);
    sch_drivers_destroy(r);
}

TEST(status_lists_every_known_driver)
{
    struct sch_drivers *r = fresh();
    char err[256];
    sch_drivers_probe_all(r);
    CHECK_NOT_NULL(sch_drivers_use(r, "ok", err, sizeof(err)));
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    sch_drivers_status(r, &b);
    cm_jbuf_raw(&b, "", 1);
    CHECK_STR_EQ(b.data, "[{\"name\":\"ok\",\"available\":true,\"reason\":\"\",\"in_use\":true,"
                         "\"status\":{\"fake\":\"ok\"}},"
                         "{\"name\":\"no\",\"available\":false,\"reason\":\"no /dev/kvm\","
                         "\"in_use\":false}]");
    cm_jbuf_fini(&b);
    sch_drivers_destroy(r);
}

TEST(owner_is_the_driver_whose_traces_hold_the_id)
{
    struct sch_drivers *r = fresh();
    char err[256];
    /* Both created (a test may make "no" work: create it through the table directly). */
    struct sch_driver *ok = sch_drivers_use(r, "ok", err, sizeof(err));
    CHECK_NOT_NULL(ok);
    ok_traces[0] = "h-1";
    ok_traces[1] = "h-2";
    struct sch_drivers_traces *t = sch_drivers_list_all(r);
    CHECK_NOT_NULL(t);
    int amb = -1;
    CHECK(sch_drivers_owner(t, "h-1", NULL, &amb) == ok);
    CHECK_INT_EQ(amb, 0);
    /* A record naming another driver does not move the instance: the traces decide. */
    CHECK(sch_drivers_owner(t, "h-2", "no", &amb) == ok);
    /* No traces anywhere: no owner, whatever the record says. */
    CHECK_NULL(sch_drivers_owner(t, "h-3", "ok", &amb));
    CHECK_INT_EQ(amb, 0);
    sch_drivers_traces_free(t);
    /* Purging an unknown id goes through every created driver. */
    sch_drivers_purge(r, "h-9");
    CHECK_INT_EQ(purges, 1);
    sch_drivers_destroy(r);
}

static const struct sch_driver_kind two_ok[] = {
    {"ok", ok_probe, ok_create},
    {"no", ok_probe, no_create}, /* works here in this table */
    {NULL, NULL, NULL},
};

static int seen_null, seen_total;
static void count_each(const char *id, struct sch_driver *owner, void *data)
{
    (void)id, (void)data;
    seen_total++;
    seen_null += owner == NULL;
}

TEST(an_id_listed_by_two_drivers_is_ambiguous)
{
    probes = creates = purges = 0;
    memset(ok_traces, 0, sizeof(ok_traces));
    memset(no_traces, 0, sizeof(no_traces));
    struct sch_drivers *r = sch_drivers_create(two_ok, &sc, NULL);
    char err[256];
    struct sch_driver *a = sch_drivers_use(r, "ok", err, sizeof(err));
    struct sch_driver *b = sch_drivers_use(r, "no", err, sizeof(err));
    CHECK(a && b);
    ok_traces[0] = "h-1";
    ok_traces[1] = "h-2";
    no_traces[0] = "h-2";
    struct sch_drivers_traces *t = sch_drivers_list_all(r);
    CHECK_NOT_NULL(t);
    int amb = 0;
    CHECK_NULL(sch_drivers_owner(t, "h-2", NULL, &amb));
    CHECK_INT_EQ(amb, 1);
    CHECK(sch_drivers_owner(t, "h-2", "no", &amb) == b); /* the record decides between them */
    seen_null = seen_total = 0;
    sch_drivers_traces_each(t, count_each, NULL);
    CHECK_INT_EQ(seen_total, 2); /* each id once */
    CHECK_INT_EQ(seen_null, 1);  /* h-2 has no single owner: an orphan purge leaves it alone */
    sch_drivers_traces_free(t);
    sch_drivers_purge(r, "h-9");
    CHECK_INT_EQ(purges, 2);
    sch_drivers_destroy(r);
}

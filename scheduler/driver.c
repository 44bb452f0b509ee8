/* The driver registry: which drivers this scheduler knows, which of them work on this host,
 * and the ones its templates use (created on first use). */
#include "scheduler/driver.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/json.h"
#include "common/yaml.h"

const struct sch_driver_kind sch_driver_builtin[] = {
    {"process", sch_driver_process_probe, sch_driver_process_create},
    {"microvm", sch_driver_microvm_probe, sch_driver_microvm_create},
    {NULL, NULL, NULL},
};

#define WHY_MAX 512

struct entry {
    const struct sch_driver_kind *kind;
    int probed, available;
    char why[WHY_MAX];
    struct sch_driver *drv;
};

struct sch_drivers {
    const struct sch_config *cfg;
    struct sch_slots slots;
    struct sch_driver_env env;
    size_t n;
    struct entry *e;
};

int sch_slots_take(struct sch_slots *s)
{
    for (uint32_t k = 0; k < s->n; k++)
        if (!s->used[k]) {
            s->used[k] = 1;
            return (int)k;
        }
    return -1;
}

void sch_slots_mark(struct sch_slots *s, int k, int used)
{
    if (k >= 0 && (uint32_t)k < s->n)
        s->used[k] = (unsigned char)used;
}

struct sch_drivers *sch_drivers_create(const struct sch_driver_kind *kinds,
                                       const struct sch_config *cfg, struct event_base *base)
{
    struct sch_drivers *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->cfg = cfg;
    r->slots.n = cfg->capacity;
    r->slots.used = calloc(cfg->capacity ? cfg->capacity : 1, 1);
    r->env.base = base;
    r->env.slots = &r->slots;
    if (!r->slots.used) {
        free(r);
        return NULL;
    }
    while (kinds[r->n].name)
        r->n++;
    r->e = calloc(r->n ? r->n : 1, sizeof(*r->e));
    if (!r->e) {
        free(r->slots.used);
        free(r);
        return NULL;
    }
    for (size_t i = 0; i < r->n; i++)
        r->e[i].kind = &kinds[i];
    return r;
}

void sch_drivers_destroy(struct sch_drivers *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++)
        sch_driver_destroy(r->e[i].drv);
    free(r->e);
    free(r->slots.used);
    free(r);
}

static void probe(struct sch_drivers *r, struct entry *e)
{
    if (e->probed)
        return;
    e->why[0] = '\0';
    e->available = e->kind->probe(r->cfg, e->why, sizeof(e->why)) == 1;
    if (!e->available && !e->why[0])
        snprintf(e->why, sizeof(e->why), "its probe failed without a reason");
    e->probed = 1;
}

void sch_drivers_probe_all(struct sch_drivers *r)
{
    for (size_t i = 0; i < r->n; i++)
        probe(r, &r->e[i]);
}

static struct entry *find(const struct sch_drivers *r, const char *name)
{
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->e[i].kind->name, name) == 0)
            return &r->e[i];
    return NULL;
}

struct sch_driver *sch_drivers_use(struct sch_drivers *r, const char *name, char *err,
                                   size_t errlen)
{
    struct entry *e = find(r, name);
    if (!e) {
        int n = snprintf(err, errlen, "unknown driver '%s' (known:", name);
        for (size_t i = 0; i < r->n && n >= 0 && (size_t)n < errlen; i++)
            n += snprintf(err + n, errlen - (size_t)n, "%s %s", i ? "," : "", r->e[i].kind->name);
        if (n >= 0 && (size_t)n < errlen)
            snprintf(err + n, errlen - (size_t)n, "%s)", r->n ? "" : " none");
        return NULL;
    }
    if (e->drv)
        return e->drv;
    probe(r, e);
    if (!e->available) {
        snprintf(err, errlen, "driver '%s' cannot work on this host: %s", name, e->why);
        return NULL;
    }
    char why[WHY_MAX] = "";
    e->drv = e->kind->create(r->cfg, &r->env, why, sizeof(why));
    if (!e->drv)
        snprintf(err, errlen, "driver '%s': %s", name, why[0] ? why : "cannot be created");
    return e->drv;
}

int sch_drivers_for_templates(struct sch_drivers *r, const struct cm_config *cfg, int create,
                              char *err, size_t errlen)
{
    const struct cm_ynode *tpls = cfg->root ? cm_ynode_get(cfg->root, "templates") : NULL;
    /* Every name checked before any driver is created: a refused config leaves nothing made
     * on the host (run dirs, cgroup caps). */
    for (int pass = 0; pass < 1 + !!create; pass++) {
        for (size_t i = 0; i < cfg->n_templates; i++) {
            const struct cm_template *t = &cfg->templates[i];
            if (strcmp(t->driver, "static") == 0)
                continue;
            char why[WHY_MAX + 128];
            int rc = 0;
            struct entry *e = find(r, t->driver);
            if (!e) {
                sch_drivers_use(r, t->driver, why, sizeof(why)); /* the "unknown" message */
                rc = -ENOENT;
            } else if (pass == 0) {
                probe(r, e);
                if (!e->available) {
                    snprintf(why, sizeof(why), "driver '%s' cannot work on this host: %s",
                             t->driver, e->why);
                    rc = -ENOTSUP;
                }
            } else {
                struct sch_driver *d = sch_drivers_use(r, t->driver, why, sizeof(why));
                if (!d)
                    rc = -ENOTSUP;
                else if (d->ops->prepare && (rc = d->ops->prepare(d, t, why, sizeof(why))) == 0)
                    continue;
            }
            if (rc == 0)
                continue;
            /* Where the template says it (the default "process" has no node: the template). */
            const struct cm_ynode *at =
                tpls && tpls->type == CM_YNODE_SEQ && i < tpls->n ? tpls->items[i] : NULL;
            const struct cm_ynode *dn =
                at && at->type == CM_YNODE_MAP ? cm_ynode_get(at, "driver") : NULL;
            if (dn)
                at = dn;
            snprintf(err, errlen, "%s:%u:%u: templates.%s.driver: %s", cfg->file ? cfg->file : "",
                     at ? at->line : 0, at ? at->col : 0, t->name, why);
            return rc;
        }
    }
    return 0;
}

struct sch_driver *sch_drivers_get(const struct sch_drivers *r, const char *name)
{
    struct entry *e = find(r, name);
    return e ? e->drv : NULL;
}

size_t sch_drivers_count(const struct sch_drivers *r)
{
    return r->n;
}

const char *sch_drivers_name(const struct sch_drivers *r, size_t i)
{
    return i < r->n ? r->e[i].kind->name : NULL;
}

int sch_drivers_available(const struct sch_drivers *r, size_t i, const char **ret_why)
{
    if (i >= r->n)
        return -1;
    if (ret_why)
        *ret_why = r->e[i].probed ? r->e[i].why : "";
    return r->e[i].probed ? r->e[i].available : -1;
}

struct sch_driver *sch_drivers_at(const struct sch_drivers *r, size_t i)
{
    return i < r->n ? r->e[i].drv : NULL;
}

void sch_drivers_names(const struct sch_drivers *r, char *buf, size_t len)
{
    size_t n = 0;
    if (len)
        buf[0] = '\0';
    for (size_t i = 0; i < r->n; i++) {
        if (!r->e[i].drv)
            continue;
        int k = snprintf(buf + n, len - n, "%s%s", n ? "," : "", r->e[i].kind->name);
        if (k < 0 || (size_t)k >= len - n)
            break;
        n += (size_t)k;
    }
}

void sch_drivers_status(const struct sch_drivers *r, struct cm_jbuf *out)
{
    cm_jbuf_raw(out, "[", 1);
    for (size_t i = 0; i < r->n; i++) {
        const struct entry *e = &r->e[i];
        cm_jbuf_printf(out, "%s{\"name\":", i ? "," : "");
        cm_jbuf_cstr(out, e->kind->name);
        cm_jbuf_printf(out, ",\"available\":%s,\"reason\":",
                       !e->probed     ? "null"
                       : e->available ? "true"
                                      : "false");
        cm_jbuf_cstr(out, e->probed ? e->why : "not probed");
        cm_jbuf_printf(out, ",\"in_use\":%s", e->drv ? "true" : "false");
        if (e->drv) {
            cm_jbuf_raw(out, ",\"status\":", 10);
            e->drv->ops->status(e->drv, out);
        }
        cm_jbuf_raw(out, "}", 1);
    }
    cm_jbuf_raw(out, "]", 1);
}

void sch_drivers_purge(struct sch_drivers *r, const char *id)
{
    for (size_t i = 0; i < r->n; i++)
        if (r->e[i].drv)
            r->e[i].drv->ops->purge(r->e[i].drv, id);
}

/* ------------------------------------------------------------------ traces */

struct sch_drivers_traces {
    size_t n;
    struct sch_driver **drv; /* per created driver */
    char ***ids;             /* its list() (NULL when it failed) */
};

struct sch_drivers_traces *sch_drivers_list_all(struct sch_drivers *r)
{
    struct sch_drivers_traces *t = calloc(1, sizeof(*t));
    if (!t || !(t->drv = calloc(r->n + 1, sizeof(*t->drv))) ||
        !(t->ids = calloc(r->n + 1, sizeof(*t->ids)))) {
        sch_drivers_traces_free(t);
        return NULL;
    }
    for (size_t i = 0; i < r->n; i++) {
        struct sch_driver *d = r->e[i].drv;
        char **ids = NULL;
        if (!d)
            continue;
        if (d->ops->list(d, &ids) < 0) {
            sch_drivers_traces_free(t);
            return NULL; /* a partial view would call another driver's instance an orphan */
        }
        t->drv[t->n] = d;
        t->ids[t->n] = ids;
        t->n++;
    }
    return t;
}

static int listed(char **ids, const char *id)
{
    for (char **p = ids; p && *p; p++)
        if (strcmp(*p, id) == 0)
            return 1;
    return 0;
}

struct sch_driver *sch_drivers_owner(const struct sch_drivers_traces *t, const char *id,
                                     const char *recorded, int *ret_ambiguous)
{
    struct sch_driver *owner = NULL, *named = NULL;
    int count = 0;
    for (size_t i = 0; i < t->n; i++) {
        if (!listed(t->ids[i], id))
            continue;
        count++;
        owner = t->drv[i];
        if (recorded && strcmp(t->drv[i]->ops->name, recorded) == 0)
            named = t->drv[i];
    }
    if (ret_ambiguous)
        *ret_ambiguous = count > 1;
    if (count > 1)
        return named;
    return owner;
}

void sch_drivers_traces_each(const struct sch_drivers_traces *t,
                             void (*cb)(const char *id, struct sch_driver *owner, void *data),
                             void *data)
{
    for (size_t i = 0; i < t->n; i++)
        for (char **p = t->ids[i]; p && *p; p++) {
            /* Each id once: at its first driver. */
            int seen = 0;
            for (size_t j = 0; j < i && !seen; j++)
                seen = listed(t->ids[j], *p);
            if (seen)
                continue;
            int amb = 0;
            struct sch_driver *owner = sch_drivers_owner(t, *p, NULL, &amb);
            cb(*p, amb ? NULL : owner, data);
        }
}

void sch_drivers_traces_free(struct sch_drivers_traces *t)
{
    if (!t)
        return;
    for (size_t i = 0; t->ids && i < t->n; i++)
        cm_strv_free(t->ids[i]);
    free(t->ids);
    free(t->drv);
    free(t);
}

void sch_driver_destroy(struct sch_driver *d)
{
    if (d)
        d->ops->destroy(d);
}

#include "scheduler/driver.h"

#include <stdio.h>
#include <string.h>

struct sch_driver *sch_driver_create(const char *name, const struct sch_config *cfg, char *err,
                                     size_t errlen)
{
    if (strcmp(name, "process") == 0)
        return sch_driver_process_create(cfg, err, errlen);
    snprintf(err, errlen, "unknown driver '%s' (known: process)", name);
    return NULL;
}

void sch_driver_destroy(struct sch_driver *d)
{
    if (d)
        d->ops->destroy(d);
}

/* Host paths the scheduler builds from outside input: which names are safe as one path
 * component, and creating directories with their parents. */
#ifndef SCH_PATHS_H
#define SCH_PATHS_H

#include <stddef.h>
#include <sys/types.h>

/* 1..63 bytes of [A-Za-z0-9._-], not "." or "..": safe as one path component (tenant names,
 * template names). Returns 1 or 0. */
int sch_safe_name(const char *s, size_t len);
/* mkdir -p <path> with <mode> for every directory it creates (existing ones are left as
 * they are). Returns 0 or a negative errno. */
int sch_mkdir_p(const char *path, mode_t mode);

#endif

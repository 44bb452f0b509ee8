/* Structured logging for the daemons (common/ itself never logs). One line per event on stderr:
 *   ts=2026-11-22T04:09:48.123Z level=warn sys=upstream msg="connect failed" inst=i-12 err=...
 * The level check happens before the arguments are evaluated. Settings are process globals set
 * once at start-up (cm_log_init) before any thread starts. */
#ifndef CM_LOG_H
#define CM_LOG_H

#include "compat.h"

enum cm_log_level {
    CM_LOG_ERROR = 0,
    CM_LOG_WARN = 1,
    CM_LOG_INFO = 2,
    CM_LOG_DEBUG = 3,
};

extern enum cm_log_level cm_log_max_level;

/* Sets the process name shown in every line and the highest level printed. */
void cm_log_init(const char *proc, enum cm_log_level level);
/* Parses "error|warn|info|debug"; returns 0 or -EINVAL (leaves <ret_level> untouched). */
int cm_log_level_parse(const char *s, enum cm_log_level *ret_level);

/* <sys> is the subsystem; <fmt> is the free text, followed by key=value pairs written by the
 * caller into the format (e.g. "connect failed inst=%s err=%s"). */
void cm_log_write(enum cm_log_level level, const char *sys, const char *fmt, ...) CM_PRINTF(3, 4);

#define cm_log(level, sys, ...)                                                                    \
    do {                                                                                           \
        if ((level) <= cm_log_max_level)                                                           \
            cm_log_write((level), (sys), __VA_ARGS__);                                             \
    } while (0)
#define cm_log_error(sys, ...) cm_log(CM_LOG_ERROR, sys, __VA_ARGS__)
#define cm_log_warn(sys, ...) cm_log(CM_LOG_WARN, sys, __VA_ARGS__)
#define cm_log_info(sys, ...) cm_log(CM_LOG_INFO, sys, __VA_ARGS__)
#define cm_log_debug(sys, ...) cm_log(CM_LOG_DEBUG, sys, __VA_ARGS__)

#endif

#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

enum cm_log_level cm_log_max_level = CM_LOG_INFO;
static const char *log_proc = "berth";

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void cm_log_init(const char *proc, enum cm_log_level level)
{
    log_proc = proc;
    cm_log_max_level = level;
}

int cm_log_level_parse(const char *s, enum cm_log_level *ret_level)
{
    for (size_t i = 0; i < CM_ARRAY_SIZE(level_names); i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *ret_level = (enum cm_log_level)i;
            return 0;
        }
    }
    return -EINVAL;
}

void cm_log_write(enum cm_log_level level, const char *sys, const char *fmt, ...)
{
    char line[2048];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof(line),
                     "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03dZ proc=%s level=%s sys=%s msg=\"",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, (int)(tv.tv_usec / 1000), log_proc, level_names[level], sys);
    if (n < 0 || (size_t)n >= sizeof(line))
        return;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 2, fmt, ap);
    va_end(ap);
    if (m < 0)
        return;
    size_t len = (size_t)n + CM_MIN((size_t)m, sizeof(line) - (size_t)n - 3);
    /* The message ends at the first " key=" the caller wrote; close the quote there. */
    char *kv = NULL;
    for (char *p = line + n; p < line + len; p++) {
        if (*p == ' ' && p[1] && strchr(p + 1, '=') != NULL) {
            char *eq = strchr(p + 1, '=');
            char *sp = strchr(p + 1, ' ');
            if (eq && (!sp || eq < sp)) {
                kv = p;
                break;
            }
        }
    }
    if (kv) {
        memmove(kv + 1, kv, len - (size_t)(kv - line));
        *kv = '"';
        len++;
    } else {
        line[len++] = '"';
    }
    line[len++] = '\n';
    fwrite(line, 1, len, stderr);
}

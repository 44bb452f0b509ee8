#include "scheduler/report.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* A decimal 0..max of at most 3 digits at s[0..n); returns it or -1. */
static int small_number(const char *s, size_t n, int max)
{
    if (n == 0 || n > 3)
        return -1;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (n > 1 && s[0] == '0')
        return -1;
    return v <= max ? v : -1;
}

int sch_report_exit(const char *buf, size_t len, char *out, size_t outlen)
{
    static const struct {
        const char *prefix;
        int min, max;
    } forms[] = {{"exited status=", 0, 255}, {"killed signal=", 1, 64}};
    if (len > 0 && buf[len - 1] == '\n')
        len--;
    for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
        size_t pl = strlen(forms[i].prefix);
        if (len <= pl || memcmp(buf, forms[i].prefix, pl) != 0)
            continue;
        int v = small_number(buf + pl, len - pl, forms[i].max);
        if (v < forms[i].min)
            return -EINVAL;
        if (outlen)
            snprintf(out, outlen, "%s%d", forms[i].prefix, v);
        return 0;
    }
    return -EINVAL;
}

int sch_report_status(const char *line, size_t len, int *ret_ready, int *ret_bound)
{
    *ret_ready = *ret_bound = 0;
    static const char ready[] = "OK ready ", starting[] = "OK starting ";
    size_t off;
    if (len >= sizeof(ready) - 1 && memcmp(line, ready, sizeof(ready) - 1) == 0)
        off = sizeof(ready) - 1;
    else if (len >= sizeof(starting) - 1 && memcmp(line, starting, sizeof(starting) - 1) == 0)
        off = sizeof(starting) - 1;
    else
        return -EINVAL;
    static const char bound[] = "bound=";
    if (len - off <= sizeof(bound) - 1 || memcmp(line + off, bound, sizeof(bound) - 1) != 0)
        return -EINVAL;
    off += sizeof(bound) - 1;
    *ret_ready = off == sizeof(ready) - 1 + sizeof(bound) - 1;
    *ret_bound = line[off] != '-' && line[off] != ' ';
    return 0;
}

void sch_report_sanitize(const char *in, size_t len, char *out, size_t outlen)
{
    if (!outlen)
        return;
    size_t o = 0;
    for (size_t i = 0; i < len && o + 1 < outlen; i++) {
        unsigned char ch = (unsigned char)in[i];
        out[o++] = (ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\') ? (char)ch : '?';
    }
    out[o] = '\0';
}

int sch_console_scan_feed(struct sch_console_scan *s, const char *buf, size_t len)
{
    int ready = 0;
    for (size_t i = 0; i < len; i++) {
        char c = buf[i];
        if (c == '\n') {
            size_t n = s->len;
            if (n && s->line[n - 1] == '\r')
                n--;
            if (!s->overlong && n == 5 && memcmp(s->line, "READY", 5) == 0)
                ready = 1;
            s->len = 0;
            s->overlong = 0;
        } else if (s->len < sizeof(s->line)) {
            s->line[s->len++] = c;
        } else {
            s->overlong = 1;
        }
    }
    return ready;
}

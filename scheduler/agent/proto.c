#include "scheduler/agent/proto.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int word_is(const char *w, size_t n, const char *lit)
{
    return n == strlen(lit) && memcmp(w, lit, n) == 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

int agent_id_valid(const char *v, size_t len)
{
    if (len == 0 || len > AGENT_ID_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = v[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '.' ||
              c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* clock=<sec>.<nsec9>: decimal seconds since the epoch (1..12 digits, at most
 * AGENT_CLOCK_SEC_MAX), a dot, exactly nine digits of nanoseconds. */
static int parse_clock(struct agent_cmd *cmd, const char *v, size_t n)
{
    size_t i = 0;
    long long sec = 0;
    while (i < n && is_digit(v[i]) && i < 12)
        sec = sec * 10 + (v[i++] - '0');
    if (i == 0 || i >= n || v[i] != '.' || n - i - 1 != 9 || sec > AGENT_CLOCK_SEC_MAX)
        return -EINVAL;
    long nsec = 0;
    for (i++; i < n; i++) {
        if (!is_digit(v[i]))
            return -EINVAL;
        nsec = nsec * 10 + (v[i] - '0');
    }
    cmd->clock_sec = sec;
    cmd->clock_nsec = nsec;
    cmd->has_clock = 1;
    return 0;
}

/* One optional word of BIND. */
static int bind_word(struct agent_cmd *cmd, const char *w, size_t n, const char **ret_err)
{
    const char *eq = memchr(w, '=', n);
    if (n == 0 || !eq) {
        *ret_err = "BIND: expected clock=, seed=, id=, data= or exec_key= after the session";
        return -EINVAL;
    }
    size_t klen = (size_t)(eq - w), vlen = n - klen - 1;
    const char *v = eq + 1;
    if (word_is(w, klen, "clock")) {
        if (cmd->has_clock) {
            *ret_err = "BIND: clock= given twice";
            return -EINVAL;
        }
        if (parse_clock(cmd, v, vlen) < 0) {
            *ret_err = "BIND: clock= expects <seconds>.<9 digits of nanoseconds>";
            return -EINVAL;
        }
    } else if (word_is(w, klen, "seed")) {
        if (cmd->has_seed) {
            *ret_err = "BIND: seed= given twice";
            return -EINVAL;
        }
        if (vlen != 2 * AGENT_SEED_BYTES) {
            *ret_err = "BIND: seed= expects 64 hex digits";
            return -EINVAL;
        }
        for (size_t i = 0; i < AGENT_SEED_BYTES; i++) {
            int hi = hexval(v[2 * i]), lo = hexval(v[2 * i + 1]);
            if (hi < 0 || lo < 0) {
                *ret_err = "BIND: seed= expects 64 hex digits";
                return -EINVAL;
            }
            cmd->seed[i] = (unsigned char)(hi << 4 | lo);
        }
        cmd->has_seed = 1;
    } else if (word_is(w, klen, "id")) {
        if (cmd->id[0]) {
            *ret_err = "BIND: id= given twice";
            return -EINVAL;
        }
        if (!agent_id_valid(v, vlen)) {
            *ret_err = "BIND: id= expects 1 to 64 of A-Z a-z 0-9 . _ -";
            return -EINVAL;
        }
        memcpy(cmd->id, v, vlen);
        cmd->id[vlen] = '\0';
    } else if (word_is(w, klen, "data")) {
        if (cmd->data) {
            *ret_err = "BIND: data= given twice";
            return -EINVAL;
        }
        if (!word_is(v, vlen, "1")) {
            *ret_err = "BIND: data= expects 1";
            return -EINVAL;
        }
        cmd->data = 1;
    } else if (word_is(w, klen, "exec_key")) {
        if (cmd->exec_key[0]) {
            *ret_err = "BIND: exec_key= given twice";
            return -EINVAL;
        }
        int ok = vlen == AGENT_EXEC_KEY_LEN;
        for (size_t i = 0; ok && i < vlen; i++)
            ok = is_digit(v[i]) || (v[i] >= 'a' && v[i] <= 'f');
        if (!ok) {
            *ret_err = "BIND: exec_key= expects 64 lower-case hex digits";
            return -EINVAL;
        }
        memcpy(cmd->exec_key, v, vlen);
        cmd->exec_key[vlen] = '\0';
    } else {
        *ret_err = "BIND: expected clock=, seed=, id=, data= or exec_key= after the session";
        return -EINVAL;
    }
    return 0;
}

int agent_proto_parse(const char *line, size_t len, struct agent_cmd *ret, const char **ret_err)
{
    if (len > 0 && line[len - 1] == '\r')
        len--;
    if (len == 0) {
        *ret_err = "empty line";
        return -EINVAL;
    }
    if (len > AGENT_LINE_MAX) {
        *ret_err = "line too long";
        return -EINVAL;
    }
    size_t cmdlen = 0;
    while (cmdlen < len && line[cmdlen] != ' ')
        cmdlen++;
    const char *arg = line + cmdlen;
    size_t arglen = len - cmdlen;
    if (arglen > 0) { /* exactly one space before an argument */
        arg++;
        arglen--;
    }
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)line[i] < 0x20 || (unsigned char)line[i] > 0x7e) {
            *ret_err = "control or non-ASCII byte in line";
            return -EINVAL;
        }
    struct agent_cmd cmd;
    memset(&cmd, 0, sizeof(cmd));
    if (word_is(line, cmdlen, "PING") || word_is(line, cmdlen, "STATUS") ||
        word_is(line, cmdlen, "TERM") || word_is(line, cmdlen, "RESUME")) {
        if (cmdlen != len) {
            *ret_err = "this command takes no argument";
            return -EINVAL;
        }
        cmd.type = word_is(line, cmdlen, "PING")     ? AGENT_CMD_PING
                   : word_is(line, cmdlen, "STATUS") ? AGENT_CMD_STATUS
                   : word_is(line, cmdlen, "TERM")   ? AGENT_CMD_TERM
                                                     : AGENT_CMD_RESUME;
    } else if (word_is(line, cmdlen, "SYNC")) {
        int ok = cmdlen != len && arglen >= 1 && arglen <= AGENT_SYNC_MAX;
        for (size_t i = 0; ok && i < arglen; i++)
            ok = is_digit(arg[i]) || (arg[i] >= 'a' && arg[i] <= 'z') ||
                 (arg[i] >= 'A' && arg[i] <= 'Z');
        if (!ok) {
            *ret_err = "usage: SYNC <token> (1-32 of [A-Za-z0-9])";
            return -EINVAL;
        }
        cmd.type = AGENT_CMD_SYNC;
        memcpy(cmd.arg, arg, arglen);
        cmd.arg[arglen] = '\0';
    } else if (word_is(line, cmdlen, "PAUSE")) {
        unsigned long v = 0;
        size_t i = 0;
        while (i < arglen && i < 9 && is_digit(arg[i]))
            v = v * 10 + (unsigned long)(arg[i++] - '0');
        if (cmdlen == len || i == 0 || i != arglen || v > AGENT_QUIET_MS_MAX) {
            *ret_err = "usage: PAUSE <quiet_ms> (0..86400000)";
            return -EINVAL;
        }
        cmd.type = AGENT_CMD_PAUSE;
        cmd.quiet_ms = v;
    } else if (word_is(line, cmdlen, "BIND")) {
        size_t slen = 0;
        while (slen < arglen && arg[slen] != ' ')
            slen++;
        if (cmdlen == len || slen == 0 || slen > AGENT_SESSION_MAX) {
            *ret_err = "usage: BIND <session> [clock=S.N] [seed=HEX] [id=ID] [data=1] [exec_key=HEX]";
            return -EINVAL;
        }
        cmd.type = AGENT_CMD_BIND;
        memcpy(cmd.arg, arg, slen);
        cmd.arg[slen] = '\0';
        const char *p = arg + slen, *end = arg + arglen;
        while (p < end) {
            p++; /* the one space before each word */
            const char *w = p;
            while (p < end && *p != ' ')
                p++;
            if (bind_word(&cmd, w, (size_t)(p - w), ret_err) < 0)
                return -EINVAL;
        }
    } else {
        *ret_err = "unknown command";
        return -EINVAL;
    }
    *ret = cmd;
    return 0;
}

size_t agent_linebuf_feed(struct agent_linebuf *lb, const char *in, size_t len, int *ret_status)
{
    const char *nl = memchr(in, '\n', len);
    size_t take = nl ? (size_t)(nl - in) + 1 : len;
    size_t data = nl ? take - 1 : take;
    *ret_status = 0;
    if (!lb->too_long) {
        if (lb->len + data > AGENT_LINE_MAX) {
            lb->too_long = 1;
        } else {
            memcpy(lb->buf + lb->len, in, data);
            lb->len += data;
        }
    }
    if (nl) {
        if (lb->too_long) {
            *ret_status = -E2BIG;
        } else {
            lb->buf[lb->len] = '\0';
            *ret_status = 1;
        }
    }
    return take;
}

void agent_linebuf_reset(struct agent_linebuf *lb)
{
    lb->len = 0;
    lb->too_long = 0;
    lb->buf[0] = '\0';
}

/* ------------------------------------------------------------------ exec frames */

static char *dup_bytes(const char *p, size_t n)
{
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

static int env_name_ok(const char *p, size_t n)
{
    if (n == 0 || (p[0] >= '0' && p[0] <= '9'))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= 'A' && p[i] <= 'Z') || is_digit(p[i]) ||
              p[i] == '_'))
            return 0;
    return 1;
}

int agent_exec_spec_add(struct agent_exec_spec *s, char type, const char *p, size_t n,
                        const char **ret_err)
{
    if (memchr(p, '\0', n)) {
        *ret_err = "a NUL byte in the command";
        return -EINVAL;
    }
    if (s->bytes + n > AGENT_EXEC_SPEC_MAX) {
        *ret_err = "the command, its environment and directory are over 256 KiB";
        return -EINVAL;
    }
    switch (type) {
    case 'A':
        if (n == 0 || n > AGENT_EXEC_ARG_MAX || s->argc >= AGENT_EXEC_ARGS_MAX) {
            *ret_err = "argv: 1 to 256 elements of 1 to 4096 bytes";
            return -EINVAL;
        }
        if (!(s->argv[s->argc] = dup_bytes(p, n)))
            return -ENOMEM;
        s->argc++;
        break;
    case 'E': {
        const char *eq = memchr(p, '=', n);
        if (!eq || !env_name_ok(p, (size_t)(eq - p)) || s->envc >= AGENT_EXEC_ENV_MAX) {
            *ret_err = "env: up to 256 NAME=value, NAME of [A-Za-z_][A-Za-z0-9_]*";
            return -EINVAL;
        }
        if (!(s->env[s->envc] = dup_bytes(p, n)))
            return -ENOMEM;
        s->envc++;
        break;
    }
    case 'D':
        if (n == 0 || p[0] != '/' || n > AGENT_EXEC_ARG_MAX || s->cwd) {
            *ret_err = "cwd: one absolute path of up to 4096 bytes";
            return -EINVAL;
        }
        if (!(s->cwd = dup_bytes(p, n)))
            return -ENOMEM;
        break;
    case 'T': {
        uint64_t v = 0;
        size_t i = 0;
        while (i < n && i < 12 && is_digit(p[i]))
            v = v * 10 + (uint64_t)(p[i++] - '0');
        if (i == 0 || i != n || v == 0 || v > AGENT_EXEC_TIMEOUT_MAX || s->timeout_ms) {
            *ret_err = "timeout: one number of ms, 1..86400000";
            return -EINVAL;
        }
        s->timeout_ms = v;
        break;
    }
    default:
        *ret_err = "unexpected frame before the start";
        return -EINVAL;
    }
    s->bytes += n;
    return 0;
}

void agent_exec_spec_free(struct agent_exec_spec *s)
{
    for (size_t i = 0; i < s->argc; i++)
        free(s->argv[i]);
    for (size_t i = 0; i < s->envc; i++)
        free(s->env[i]);
    free(s->cwd);
    memset(s, 0, sizeof(*s));
}

/* ------------------------------------------------------------------ file paths */

int agent_file_path(const char *p, size_t n, const char **ret_root, char *rest, int *ret_dir,
                    const char **ret_err)
{
    static const char *const roots[] = {"workspace", "data"};
    *ret_dir = 0;
    if (n == 0 || n > AGENT_PATH_MAX || memchr(p, '\0', n)) {
        *ret_err = "bad_path: a path of 1 to 4096 bytes without NUL";
        return -EINVAL;
    }
    if (p[n - 1] == '/') {
        *ret_dir = 1;
        n--;
    }
    const char *root = NULL;
    size_t rl = 0;
    for (size_t i = 0; i < 2 && !root; i++) {
        size_t l = strlen(roots[i]);
        if (n >= l && memcmp(p, roots[i], l) == 0 && (n == l || p[l] == '/')) {
            root = roots[i];
            rl = l;
        }
    }
    if (!root) {
        *ret_err = "bad_path: files live under workspace/ or data/";
        return -EINVAL;
    }
    size_t off = rl < n ? rl + 1 : n;
    for (size_t i = off; i <= n; i++) { /* every component: not empty, not . or .. */
        size_t start = i;
        while (i < n && p[i] != '/')
            i++;
        size_t cl = i - start;
        if (off == n)
            break;
        if (cl == 0 || (cl == 1 && p[start] == '.') ||
            (cl == 2 && p[start] == '.' && p[start + 1] == '.')) {
            *ret_err = "bad_path: an empty, . or .. component";
            return -EINVAL;
        }
    }
    memcpy(rest, p + off, n - off);
    rest[n - off] = '\0';
    *ret_root = root;
    return 0;
}

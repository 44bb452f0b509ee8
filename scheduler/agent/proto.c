#include "scheduler/agent/proto.h"

#include <errno.h>
#include <string.h>

static int word_is(const char *w, size_t n, const char *lit)
{
    return n == strlen(lit) && memcmp(w, lit, n) == 0;
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
    if (word_is(line, cmdlen, "PING") || word_is(line, cmdlen, "STATUS")) {
        if (cmdlen != len) {
            *ret_err = "this command takes no argument";
            return -EINVAL;
        }
        cmd.type = word_is(line, cmdlen, "PING") ? AGENT_CMD_PING : AGENT_CMD_STATUS;
    } else if (word_is(line, cmdlen, "BIND")) {
        if (cmdlen == len || arglen == 0 || arglen > AGENT_SESSION_MAX ||
            memchr(arg, ' ', arglen)) {
            *ret_err = "usage: BIND <session>";
            return -EINVAL;
        }
        cmd.type = AGENT_CMD_BIND;
        memcpy(cmd.arg, arg, arglen);
        cmd.arg[arglen] = '\0';
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

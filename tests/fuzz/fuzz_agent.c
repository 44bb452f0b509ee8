/* Fuzz target: berth-agent's pure parsers (scheduler/agent/proto.c, guest.c): control lines
 * (the host's BIND with its clock/seed/id/data words, split into lines by the bounded line
 * buffer), guest.conf and the kernel command line. The input is split at its first 0xff byte:
 * before it control-channel bytes, after it a guest.conf text (also tried as a command line).
 * The whole input is also read as exec-channel frames (the gateway's, on the ports socket). */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler/agent/guest.h"
#include "scheduler/agent/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The input as exec-channel frames (proto.h): each frame's bounds, and a spec built from them
 * never over its limits. */
static void frames(const char *in, size_t len)
{
    struct agent_exec_spec spec;
    memset(&spec, 0, sizeof(spec));
    size_t off = 0;
    while (off < len) {
        char type;
        const char *p;
        size_t n;
        long used = cm_frame_next(in + off, len - off, &type, &p, &n);
        if (used <= 0)
            break;
        if ((size_t)used != CM_FRAME_HDR + n || n > CM_FRAME_MAX || p != in + off + CM_FRAME_HDR)
            abort();
        const char *err = NULL;
        if (type == 'P') { /* a file path: confined to its root, or refused with a reason */
            char *rest = malloc(n + 1);
            const char *root = NULL;
            int dir = 0;
            if (rest && agent_file_path(p, n, &root, rest, &dir, &err) == 0 &&
                ((strcmp(root, "data") != 0 && strcmp(root, "workspace") != 0) ||
                 strcmp(rest, "..") == 0 || strncmp(rest, "../", 3) == 0 ||
                 strstr(rest, "/../") || strstr(rest, "//") || strlen(rest) > n ||
                 (strlen(rest) >= 3 && strcmp(rest + strlen(rest) - 3, "/..") == 0)))
                abort();
            free(rest);
        } else if (agent_exec_spec_add(&spec, type, p, n, &err) == -EINVAL && !err) {
            abort();
        }
        if (spec.argc > AGENT_EXEC_ARGS_MAX || spec.envc > AGENT_EXEC_ENV_MAX ||
            spec.bytes > AGENT_EXEC_SPEC_MAX || spec.argv[spec.argc] || spec.env[spec.envc] ||
            spec.timeout_ms > AGENT_EXEC_TIMEOUT_MAX)
            abort();
        off += (size_t)used;
    }
    agent_exec_spec_free(&spec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    frames((const char *)data, size);
    const uint8_t *cut = memchr(data, 0xff, size);
    size_t clen = cut ? (size_t)(cut - data) : size;
    struct agent_linebuf lb;
    memset(&lb, 0, sizeof(lb));
    const char *in = (const char *)data;
    size_t off = 0;
    while (off < clen) {
        int st = 0;
        size_t used = agent_linebuf_feed(&lb, in + off, clen - off, &st);
        if (used == 0 || used > clen - off)
            abort();
        off += used;
        if (st == 1) {
            if (lb.len > AGENT_LINE_MAX || strlen(lb.buf) > lb.len)
                abort();
            struct agent_cmd cmd;
            memset(&cmd, 0x5a, sizeof(cmd));
            const char *err = NULL;
            if (agent_proto_parse(lb.buf, lb.len, &cmd, &err) == 0) {
                if (cmd.type == AGENT_CMD_BIND &&
                    (!cmd.arg[0] || strnlen(cmd.arg, sizeof(cmd.arg)) == sizeof(cmd.arg) ||
                     strnlen(cmd.id, sizeof(cmd.id)) == sizeof(cmd.id) ||
                     (cmd.has_clock && (cmd.clock_nsec < 0 || cmd.clock_nsec > 999999999))))
                    abort();
            } else if (!err) {
                abort();
            }
        }
        if (st != 0)
            agent_linebuf_reset(&lb);
    }
    if (cut) {
        const char *text = (const char *)cut + 1;
        size_t tlen = size - clen - 1;
        if (tlen > AGENT_GUEST_CONF_MAX)
            tlen = AGENT_GUEST_CONF_MAX;
        struct agent_guest_conf *conf = malloc(sizeof(*conf));
        if (!conf)
            return 0;
        const char *err = NULL;
        agent_guest_conf_init(conf);
        if (agent_guest_parse_conf(conf, text, tlen, &err) == 0) {
            if (conf->argc < 1 || conf->argc > AGENT_GUEST_ARGS_MAX || conf->argv[conf->argc])
                abort();
        } else if (!err) {
            abort();
        }
        agent_guest_conf_init(conf);
        err = NULL;
        if (agent_guest_parse_cmdline(conf, text, tlen, &err) < 0 && !err)
            abort();
        free(conf);
    }
    return 0;
}

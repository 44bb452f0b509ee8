/* Blocking QMP client (qmp.h). */
#include "scheduler/qmp.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/json.h"

int sch_qmp_parse_line(const char *line, size_t len, struct cm_json **ret_tree,
                       const struct cm_json **ret_value, char *err, size_t errlen)
{
    char perr[96];
    *ret_tree = NULL;
    *ret_value = NULL;
    struct cm_json *j = cm_json_parse(line, len, perr, sizeof(perr));
    if (!j) {
        snprintf(err, errlen, "QEMU sent a line that is not JSON: %s", perr);
        return -EINVAL;
    }
    if (j->type != CM_JSON_OBJECT) {
        cm_json_free(j);
        snprintf(err, errlen, "QEMU sent JSON that is not an object");
        return -EINVAL;
    }
    const struct cm_json *v;
    if ((v = cm_json_get(j, "return"))) {
        *ret_tree = j;
        *ret_value = v;
        return 1;
    }
    if (cm_json_get(j, "event")) {
        *ret_tree = j;
        return 2;
    }
    if (cm_json_get(j, "QMP")) {
        cm_json_free(j);
        return 3;
    }
    const struct cm_json *e = cm_json_get(j, "error");
    const struct cm_json *d = e && e->type == CM_JSON_OBJECT ? cm_json_get(e, "desc") : NULL;
    if (e) {
        /* The description is QEMU's text, possibly shaped by the guest: keep it printable. */
        size_t n = 0;
        if (d && d->type == CM_JSON_STRING)
            for (size_t i = 0; i < d->len && n + 1 < errlen && n < 200; i++)
                err[n++] = d->str[i] >= 0x20 && d->str[i] < 0x7f ? d->str[i] : '?';
        if (errlen)
            err[n < errlen ? n : errlen - 1] = '\0';
        if (!n)
            snprintf(err, errlen, "QEMU refused the command");
        cm_json_free(j);
        return -EIO;
    }
    cm_json_free(j);
    snprintf(err, errlen, "QEMU sent an object that is no reply, event or greeting");
    return -EINVAL;
}

static int wait_fd(struct sch_qmp *q, short what)
{
    cm_usec_t now = cm_now_mono();
    if (now >= q->deadline)
        return -ETIMEDOUT;
    struct pollfd p = {.fd = q->fd, .events = what};
    int ms = (int)((q->deadline - now + 999) / 1000);
    int rc = poll(&p, 1, ms);
    if (rc < 0)
        return errno == EINTR ? 0 : -errno;
    return rc == 0 ? -ETIMEDOUT : 0;
}

/* One line into q->buf (NUL-terminated, without the line end), <= SCH_QMP_LINE_MAX bytes. */
static int read_line(struct sch_qmp *q, size_t *ret_len, char *err, size_t errlen)
{
    for (;;) {
        char *nl = memchr(q->buf, '\n', q->len);
        if (nl) {
            *nl = '\0';
            *ret_len = (size_t)(nl - q->buf);
            return 0;
        }
        if (q->len >= SCH_QMP_LINE_MAX) {
            snprintf(err, errlen, "QEMU sent a line longer than %d bytes", SCH_QMP_LINE_MAX);
            return -E2BIG;
        }
        ssize_t n = read(q->fd, q->buf + q->len, SCH_QMP_LINE_MAX - q->len);
        if (n > 0) {
            q->len += (size_t)n;
            continue;
        }
        if (n == 0) {
            snprintf(err, errlen, "QEMU closed the monitor connection");
            return -EPIPE;
        }
        if (errno != EAGAIN && errno != EINTR) {
            int e = errno;
            snprintf(err, errlen, "reading the monitor: %s", strerror(e));
            return -e;
        }
        int rc = wait_fd(q, POLLIN);
        if (rc < 0) {
            snprintf(err, errlen, "QEMU did not answer in time");
            return rc;
        }
    }
}

static void consume_line(struct sch_qmp *q, size_t len)
{
    size_t used = len + 1;
    memmove(q->buf, q->buf + used, q->len - used);
    q->len -= used;
}

ssize_t sch_qmp_sendmsg(int sock, const char *data, size_t len, int pass_fd, int flags)
{
    struct iovec iov = {.iov_base = (char *)data, .iov_len = len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    if (pass_fd >= 0) {
        memset(&u, 0, sizeof(u));
        mh.msg_control = u.buf;
        mh.msg_controllen = sizeof(u.buf);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
    }
    return sendmsg(sock, &mh, MSG_NOSIGNAL | flags);
}

static int send_all(struct sch_qmp *q, const char *data, size_t len, int pass_fd, char *err,
                    size_t errlen)
{
    size_t off = 0;
    while (off < len) {
        ssize_t n = sch_qmp_sendmsg(q->fd, data + off, len - off, off == 0 ? pass_fd : -1, 0);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            int e = errno;
            snprintf(err, errlen, "writing to the monitor: %s", strerror(e));
            return -e;
        }
        int rc = wait_fd(q, POLLOUT);
        if (rc < 0) {
            snprintf(err, errlen, "QEMU did not take the command in time");
            return rc;
        }
    }
    return 0;
}

int sch_qmp_cmd(struct sch_qmp *q, const char *json, int pass_fd, struct cm_json **ret, char *err,
                size_t errlen)
{
    if (ret)
        *ret = NULL;
    int rc = send_all(q, json, strlen(json), pass_fd, err, errlen);
    if (rc == 0)
        rc = send_all(q, "\n", 1, -1, err, errlen);
    while (rc == 0) {
        size_t len;
        if ((rc = read_line(q, &len, err, errlen)) < 0)
            break;
        struct cm_json *tree;
        const struct cm_json *value;
        int kind = sch_qmp_parse_line(q->buf, len, &tree, &value, err, errlen);
        consume_line(q, len);
        if (kind == 2 || kind == 3) {
            cm_json_free(tree);
            continue;
        }
        if (kind == 1) {
            if (ret)
                *ret = tree;
            else
                cm_json_free(tree);
            return 0;
        }
        rc = kind;
    }
    return rc;
}

int sch_qmp_open(struct sch_qmp *q, const char *path, pid_t peer, cm_usec_t timeout, char *err,
                 size_t errlen)
{
    q->len = 0;
    q->deadline = cm_now_mono() + timeout;
    q->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (q->fd < 0) {
        int e = errno;
        snprintf(err, errlen, "socket: %s", strerror(e));
        return -e;
    }
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sun.sun_path)) {
        snprintf(err, errlen, "monitor path too long");
        sch_qmp_close(q);
        return -ENAMETOOLONG;
    }
    memcpy(sun.sun_path, path, strlen(path) + 1);
    if (connect(q->fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 && errno != EINPROGRESS) {
        int e = errno;
        snprintf(err, errlen, "connecting to the monitor %s: %s", path, strerror(e));
        sch_qmp_close(q);
        return -e;
    }
    size_t len;
    int rc = 0;
    struct ucred cr;
    socklen_t crlen = sizeof(cr);
    if (peer > 0 &&
        (getsockopt(q->fd, SOL_SOCKET, SO_PEERCRED, &cr, &crlen) < 0 || cr.pid != peer)) {
        /* Not the QEMU we started: the path was swapped (a QEMU owns the directory). */
        snprintf(err, errlen, "the monitor at %s is not QEMU pid %d's", path, (int)peer);
        rc = -EPERM;
    }
    if (rc == 0)
        rc = read_line(q, &len, err, errlen);
    if (rc == 0) {
        struct cm_json *tree;
        const struct cm_json *value;
        int kind = sch_qmp_parse_line(q->buf, len, &tree, &value, err, errlen);
        cm_json_free(tree);
        consume_line(q, len);
        if (kind != 3) {
            if (kind >= 0)
                snprintf(err, errlen, "QEMU's monitor did not greet");
            rc = -EPROTO;
        }
    }
    if (rc == 0)
        rc = sch_qmp_cmd(q, "{\"execute\":\"qmp_capabilities\"}", -1, NULL, err, errlen);
    if (rc < 0)
        sch_qmp_close(q);
    return rc;
}

void sch_qmp_close(struct sch_qmp *q)
{
    if (q->fd >= 0)
        close(q->fd);
    q->fd = -1;
    q->len = 0;
}

/* scheduler/agentctl.c: one request on a real unix socket, with a scripted agent in a thread:
 * the reply is the line after the echo of the request's SYNC, whatever came before it. */
#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "scheduler/agentctl.h"
#include "tests/harness/test.h"

struct agent {
    int listen_fd;
    const char *before; /* written before the echo (may be "") */
    int echo;           /* 1: "SYNC <token>"; 0: an old agent's "ERR unknown command" */
    const char *reply;
};

static void *agent_main(void *arg)
{
    struct agent *a = arg;
    int fd = accept(a->listen_fd, NULL, NULL);
    if (fd < 0)
        return NULL;
    char buf[512];
    size_t got = 0;
    while (got < sizeof(buf) - 1) { /* two lines: SYNC <token>, the command */
        ssize_t n = read(fd, buf + got, sizeof(buf) - 1 - got);
        if (n <= 0)
            break;
        got += (size_t)n;
        buf[got] = '\0';
        char *nl = strchr(buf, '\n');
        if (nl && strchr(nl + 1, '\n'))
            break;
    }
    buf[got] = '\0';
    char out[2048];
    char *nl = strchr(buf, '\n');
    if (nl)
        *nl = '\0';
    snprintf(out, sizeof(out), "%s%s\n%s\n", a->before, a->echo ? buf : "ERR unknown command",
             a->reply);
    ssize_t w = write(fd, out, strlen(out));
    (void)w;
    sleep(1); /* the client closes first */
    close(fd);
    return NULL;
}

struct result {
    char reply[256];
    int err, done;
    struct event_base *base;
};

static void on_reply(const char *reply, int err, void *data)
{
    struct result *r = data;
    snprintf(r->reply, sizeof(r->reply), "%s", reply ? reply : "");
    r->err = err;
    r->done = 1;
    event_base_loopbreak(r->base);
}

static struct result run(const char *before, int echo, const char *reply)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/ctl.sock", test_tmpdir());
    unlink(path);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    CHECK(strlen(path) < sizeof(sa.sun_path));
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(lfd >= 0);
    CHECK(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    CHECK(listen(lfd, 4) == 0);
    struct agent a = {.listen_fd = lfd, .before = before, .echo = echo, .reply = reply};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, agent_main, &a) == 0);
    struct result r = {.base = event_base_new()};
    struct sch_agentctl *ac = sch_agentctl_create(r.base);
    CHECK(ac != NULL);
    CHECK(sch_agentctl_request(ac, path, "STATUS", 5 * CM_USEC_PER_SEC, on_reply, &r) == 0);
    event_base_dispatch(r.base);
    CHECK(r.done);
    sch_agentctl_destroy(ac);
    event_base_free(r.base);
    pthread_join(th, NULL);
    close(lfd);
    return r;
}

TEST(the_reply_is_the_line_after_the_echo)
{
    struct result r = run("", 1, "OK ready bound=- conns=0 held=0 id=x");
    CHECK_INT_EQ(r.err, 0);
    CHECK_STR_EQ(r.reply, "OK ready bound=- conns=0 held=0 id=x");
}

TEST(lines_meant_for_an_earlier_connection_are_skipped)
{
    /* what a VM's agent held for a host that left: its SYNC echo and its reply */
    struct result r = run("SYNC 0000000000000000\nOK closed=0\nERR bound to another session\n",
                          1, "OK");
    CHECK_INT_EQ(r.err, 0);
    CHECK_STR_EQ(r.reply, "OK");
}

TEST(an_agent_from_before_sync_is_understood)
{
    struct result r = run("", 0, "OK starting");
    CHECK_INT_EQ(r.err, 0);
    CHECK_STR_EQ(r.reply, "OK starting");
}

TEST(endless_other_lines_are_a_protocol_error)
{
    char junk[1024] = "";
    for (int i = 0; i < 20; i++)
        strcat(junk, "OK\n");
    struct result r = run(junk, 1, "OK");
    CHECK_INT_EQ(r.err, -EPROTO);
}

/* scheduler/relay.c: the gateway's line (shape, clock, MAC), the local sockets of a driver
 * address, and a real relay on loopback in front of a unix-socket "instance" served by a
 * thread: bytes both ways, half-close, back-pressure through a small pipe, refusals. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/secret.h"
#include "scheduler/config.h"
#include "scheduler/relay.h"
#include "tests/harness/test.h"

#define SECRET "0123456789abcdef0123456789abcdef-relay"

static int check(const char *line, int64_t now, char *id, enum sch_relay_channel *chan)
{
    return sch_relay_check_hello(line, strlen(line), SECRET, now, 30, id, chan);
}

/* A line made by common/ without its "\r\n". */
static const char *line_of(const char *id, const char *chan, int64_t ts, const char *secret)
{
    static char buf[CM_RELAY_HELLO_MAX];
    CHECK(cm_secret_relay_hello(secret, id, chan, ts, buf) > 0);
    buf[strlen(buf) - 2] = '\0';
    return buf;
}

TEST(a_line_made_with_the_secret_is_taken)
{
    char id[CM_RELAY_ID_MAX + 1] = "";
    enum sch_relay_channel chan = SCH_RELAY_APP;
    CHECK(check(line_of("h1-0000abcd", "ports", 1000, SECRET), 1000, id, &chan) == 0);
    CHECK(strcmp(id, "h1-0000abcd") == 0 && chan == SCH_RELAY_PORTS);
    CHECK(check(line_of("h1-0000abcd", "app", 1000, SECRET), 1029, id, &chan) == 0);
    CHECK(chan == SCH_RELAY_APP);
    CHECK(check(line_of("h1-0000abcd", "app", 1000, SECRET), 971, id, &chan) == 0);
}

TEST(another_secret_or_another_field_is_refused)
{
    char id[CM_RELAY_ID_MAX + 1] = "untouched";
    enum sch_relay_channel chan = SCH_RELAY_PORTS;
    CHECK(check(line_of("h1-0000abcd", "app", 1000, SECRET "x"), 1000, id, &chan) == -EACCES);
    /* A MAC is for its own instance, channel and time only. */
    char l[CM_RELAY_HELLO_MAX];
    snprintf(l, sizeof(l), "%s", line_of("h1-0000abcd", "app", 1000, SECRET));
    l[strlen("BERTH-RELAY h1-0000abc")] = 'e';
    CHECK(check(l, 1000, id, &chan) == -EACCES);
    snprintf(l, sizeof(l), "%s", line_of("h1-0000abcd", "app", 1000, SECRET));
    memcpy(strstr(l, " app ") + 1, "ctl", 3);
    CHECK(check(l, 1000, id, &chan) == -EINVAL);
    snprintf(l, sizeof(l), "%s", line_of("h1-0000abcd", "app", 1000, SECRET));
    *(strstr(l, " 1000 ") + 4) = '1';
    CHECK(check(l, 1000, id, &chan) == -EACCES);
    CHECK(strcmp(id, "untouched") == 0 && chan == SCH_RELAY_PORTS);
}

TEST(a_line_outside_the_clock_skew_is_refused)
{
    char id[CM_RELAY_ID_MAX + 1];
    enum sch_relay_channel chan;
    CHECK(check(line_of("h1-0000abcd", "app", 1000, SECRET), 1031, id, &chan) == -ETIME);
    CHECK(check(line_of("h1-0000abcd", "app", 1000, SECRET), 969, id, &chan) == -ETIME);
}

TEST(lines_of_another_shape_are_refused)
{
    char id[CM_RELAY_ID_MAX + 1];
    enum sch_relay_channel chan;
    char upper[CM_RELAY_HELLO_MAX];
    snprintf(upper, sizeof(upper), "%s", line_of("h1-0000abcd", "app", 1000, SECRET));
    for (char *p = upper + strlen(upper) - CM_EXEC_KEY_LEN; *p; p++)
        if (*p >= 'a' && *p <= 'f')
            *p = (char)(*p - 'a' + 'A');
    char extra[CM_RELAY_HELLO_MAX + 8];
    snprintf(extra, sizeof(extra), "%s x", line_of("h1-0000abcd", "app", 1000, SECRET));
    const char *bad[] = {
        "",
        "BERTH-RELAY",
        "BERTH-RELAY ",
        "BERTH-RELAY a app 1000",
        "BERTH-RELAY a  app 1000 "
        "0000000000000000000000000000000000000000000000000000000000000000",
        "BERTH-RELAY a/b app 1000 "
        "0000000000000000000000000000000000000000000000000000000000000000",
        "BERTH-RELAY a app -1000 "
        "0000000000000000000000000000000000000000000000000000000000000000",
        "BERTH-RELAY a app 1000 "
        "000000000000000000000000000000000000000000000000000000000000000",
        "GET / HTTP/1.1",
        upper,
        extra,
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK_MSG(check(bad[i], 1000, id, &chan) == -EINVAL, "taken: '%s'", bad[i]);
    char longid[CM_RELAY_ID_MAX + 2];
    memset(longid, 'a', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = '\0';
    char buf[CM_RELAY_HELLO_MAX];
    CHECK(cm_secret_relay_hello(SECRET, longid, "app", 1000, buf) == -EINVAL);
    CHECK(cm_secret_relay_hello(SECRET, "a b", "app", 1000, buf) == -EINVAL);
    CHECK(cm_secret_relay_hello(SECRET, "a", "ctl", 1000, buf) == -EINVAL);
}

TEST(local_sockets_of_each_driver_address)
{
    struct sockaddr_storage ss;
    unsigned len;
    CHECK(sch_relay_local_addr("unix:/run/b/h-1/sock/app.sock", SCH_RELAY_APP, &ss, &len) == 0);
    CHECK(ss.ss_family == AF_UNIX &&
          strcmp(((struct sockaddr_un *)&ss)->sun_path, "/run/b/h-1/sock/app.sock") == 0);
    CHECK(sch_relay_local_addr("unix:/run/b/h-1/sock/app.sock", SCH_RELAY_PORTS, &ss, &len) == 0);
    CHECK(strcmp(((struct sockaddr_un *)&ss)->sun_path, "/run/b/h-1/sock/ports.sock") == 0);
    CHECK(sch_relay_local_addr("vm:127.0.0.1:4000", SCH_RELAY_APP, &ss, &len) == 0);
    CHECK(ntohs(((struct sockaddr_in *)&ss)->sin_port) == 4000);
    CHECK(sch_relay_local_addr("vm:127.0.0.1:4000", SCH_RELAY_PORTS, &ss, &len) == 0);
    CHECK(ntohs(((struct sockaddr_in *)&ss)->sin_port) == 4001);
    CHECK(sch_relay_local_addr("tcp:127.0.0.1:4000", SCH_RELAY_APP, &ss, &len) == 0);
    CHECK(sch_relay_local_addr("tcp:127.0.0.1:4000", SCH_RELAY_PORTS, &ss, &len) == -EINVAL);
    CHECK(sch_relay_local_addr("vm:127.0.0.1:65535", SCH_RELAY_PORTS, &ss, &len) == -EINVAL);
    CHECK(sch_relay_local_addr("unix:/run/b/h-1/sock/ctl.sock", SCH_RELAY_APP, &ss, &len) ==
          -EINVAL);
    CHECK(sch_relay_local_addr("relay:1.2.3.4:5/proc/x", SCH_RELAY_APP, &ss, &len) == -EINVAL);
}

/* ------------------------------------------------------------------ a real relay */

struct instance {
    int lfd;
    char path[108];
    int conns; /* connections to serve, then the thread ends */
};

/* Each connection: echoes what it reads until EOF, then writes "bye" and closes. */
static void *instance_main(void *arg)
{
    struct instance *in = arg;
    for (int k = 0; k < in->conns; k++) {
        int fd = accept(in->lfd, NULL, NULL);
        if (fd < 0)
            return NULL;
        char buf[65536];
        for (;;) {
            ssize_t n = read(fd, buf, sizeof(buf));
            if (n <= 0)
                break;
            for (ssize_t off = 0; off < n;) {
                ssize_t w = write(fd, buf + off, (size_t)(n - off));
                if (w <= 0)
                    goto done;
                off += w;
            }
        }
        if (write(fd, "bye", 3) != 3) {
            /* the test sees the missing bytes */
        }
    done:
        close(fd);
    }
    return NULL;
}

static struct sch_relay *relay_up(struct sch_relay_config *rc, uint64_t buffer, int *ret_port)
{
    signal(SIGPIPE, SIG_IGN); /* as berth-scheduler does */
    memset(rc, 0, sizeof(*rc));
    rc->listen = "127.0.0.1:0";
    rc->max_conns = 16;
    rc->handshake_timeout = 2 * CM_USEC_PER_SEC;
    rc->max_skew_s = 30;
    rc->buffer = buffer;
    char err[256] = "";
    struct sch_relay *r = sch_relay_create(rc, SECRET, err, sizeof(err));
    CHECK_MSG(r, "sch_relay_create: %s", err);
    const char *adv = sch_relay_advertised(r);
    CHECK(strncmp(adv, "127.0.0.1:", 10) == 0);
    *ret_port = atoi(adv + 10);
    CHECK(*ret_port > 0);
    return r;
}

static void instance_up(struct instance *in, int conns)
{
    snprintf(in->path, sizeof(in->path), "%s/app.sock", test_tmpdir());
    in->lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    snprintf(un.sun_path, sizeof(un.sun_path), "%s", in->path);
    CHECK(in->lfd >= 0 && bind(in->lfd, (struct sockaddr *)&un, sizeof(un)) == 0 &&
          listen(in->lfd, 8) == 0);
    in->conns = conns;
}

static int dial(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(fd >= 0 && connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    struct timeval tv = {.tv_sec = 20};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

static void send_all(int fd, const void *p, size_t n)
{
    for (size_t off = 0; off < n;) {
        ssize_t w = write(fd, (const char *)p + off, n - off);
        CHECK(w > 0);
        off += (size_t)w;
    }
}

struct sender {
    int fd;
    const char *data;
    size_t len;
};

static void *sender_main(void *arg)
{
    struct sender *s = arg;
    send_all(s->fd, s->data, s->len);
    shutdown(s->fd, SHUT_WR);
    return NULL;
}

/* Sends <len> bytes after <hello> with a half-close, reads everything back until EOF. */
static char *roundtrip(int port, const char *hello, const char *data, size_t len, size_t *ret_len)
{
    int fd = dial(port);
    send_all(fd, hello, strlen(hello));
    struct sender s = {fd, data, len};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, sender_main, &s) == 0);
    size_t cap = len + 64, got = 0;
    char *out = malloc(cap);
    CHECK(out);
    for (;;) {
        ssize_t n = read(fd, out + got, cap - got);
        CHECK_MSG(n >= 0, "read: %s", strerror(errno));
        if (n == 0)
            break;
        got += (size_t)n;
        CHECK(got < cap);
    }
    pthread_join(th, NULL);
    close(fd);
    *ret_len = got;
    return out;
}

static const char *hello_now(const char *id, const char *chan)
{
    static char buf[CM_RELAY_HELLO_MAX];
    CHECK(cm_secret_relay_hello(SECRET, id, chan, (int64_t)time(NULL), buf) > 0);
    return buf;
}

TEST(bytes_cross_both_ways_with_half_close_and_backpressure)
{
    struct sch_relay_config rc;
    int port;
    /* A 4 KiB pipe: 8 MiB must cross it in many rounds, each side waiting for the other. */
    struct sch_relay *r = relay_up(&rc, 4096, &port);
    struct instance in;
    instance_up(&in, 2);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, instance_main, &in) == 0);
    char addr[160];
    snprintf(addr, sizeof(addr), "unix:%s", in.path);
    CHECK(sch_relay_add(r, "h1-00000001", addr) == 0);
    char pub[200];
    CHECK(sch_relay_public_addr(r, "h1-00000001", addr, pub, sizeof(pub)) == 0);
    char want[200];
    snprintf(want, sizeof(want), "relay:127.0.0.1:%d/proc/h1-00000001", port);
    CHECK(strcmp(pub, want) == 0);

    size_t n;
    char *out = roundtrip(port, hello_now("h1-00000001", "app"), "ping", 4, &n);
    CHECK(n == 7 && memcmp(out, "pingbye", 7) == 0);
    free(out);

    size_t big = 8u << 20;
    char *data = malloc(big);
    CHECK(data);
    for (size_t i = 0; i < big; i++)
        data[i] = (char)(i * 7 + (i >> 13));
    out = roundtrip(port, hello_now("h1-00000001", "app"), data, big, &n);
    CHECK_MSG(n == big + 3, "got %zu bytes", n);
    CHECK(memcmp(out, data, big) == 0 && memcmp(out + big, "bye", 3) == 0);
    free(out);
    free(data);
    pthread_join(th, NULL);
    close(in.lfd);

    struct sch_relay_stats st;
    sch_relay_get_stats(r, &st);
    CHECK(st.accepted == 2 && st.relayed == 2 && st.refused == 0);
    sch_relay_destroy(r);
}

TEST(unknown_and_forgotten_instances_are_refused_without_a_byte)
{
    struct sch_relay_config rc;
    int port;
    struct sch_relay *r = relay_up(&rc, 65536, &port);
    struct instance in;
    instance_up(&in, 1);
    char addr[160];
    snprintf(addr, sizeof(addr), "unix:%s", in.path);
    CHECK(sch_relay_add(r, "h1-00000002", addr) == 0);
    CHECK(sch_relay_add(r, "bad id", addr) == -EINVAL);
    CHECK(sch_relay_add(r, "h1-00000003", "relay:x") == -EINVAL);
    sch_relay_del(r, "h1-00000002");
    sch_relay_del(r, "never-there");
    const char *hellos[] = {hello_now("h1-00000002", "app"), "GET / HTTP/1.1\r\n\r\n"};
    for (size_t i = 0; i < 2; i++) {
        int fd = dial(port);
        send_all(fd, hellos[i], strlen(hellos[i]));
        char b[16];
        CHECK(read(fd, b, sizeof(b)) <= 0); /* EOF, or a reset: bytes of ours left unread */
        close(fd);
    }
    /* Nobody connected to the instance. */
    struct pollfd p = {.fd = in.lfd, .events = POLLIN};
    CHECK(poll(&p, 1, 0) == 0);
    struct sch_relay_stats st;
    sch_relay_get_stats(r, &st);
    CHECK(st.accepted == 2 && st.relayed == 0 && st.refused == 2);
    close(in.lfd);
    sch_relay_destroy(r);
}

TEST(destroy_ends_open_connections)
{
    struct sch_relay_config rc;
    int port;
    struct sch_relay *r = relay_up(&rc, 65536, &port);
    struct instance in;
    instance_up(&in, 1);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, instance_main, &in) == 0);
    char addr[160];
    snprintf(addr, sizeof(addr), "unix:%s", in.path);
    CHECK(sch_relay_add(r, "h1-00000004", addr) == 0);
    int fd = dial(port);
    const char *h = hello_now("h1-00000004", "app");
    send_all(fd, h, strlen(h));
    send_all(fd, "x", 1);
    char b[4];
    CHECK(read(fd, b, 1) == 1 && b[0] == 'x');
    sch_relay_destroy(r);
    CHECK(read(fd, b, sizeof(b)) <= 0);
    close(fd);
    pthread_join(th, NULL);
    close(in.lfd);
}

TEST(silent_connections_from_one_address_are_bounded)
{
    struct sch_relay_config rc;
    int port;
    struct sch_relay *r = relay_up(&rc, 65536, &port); /* handshake_timeout 2 s */
    int held[16];
    for (int i = 0; i < 16; i++)
        held[i] = dial(port); /* say nothing */
    /* Let the relay take them all before the next one comes. */
    struct timespec ts = {0, 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
    int fd = dial(port);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    CHECK(poll(&p, 1, 1000) == 1); /* closed at once, not after the handshake timeout */
    char b[4];
    CHECK(read(fd, b, sizeof(b)) <= 0);
    close(fd);
    for (int i = 0; i < 16; i++)
        close(held[i]);
    struct sch_relay_stats st;
    sch_relay_get_stats(r, &st);
    CHECK(st.refused >= 1);
    sch_relay_destroy(r);
}

/* berth-agent: init of every sandbox instance.
 *
 *   berth-agent --id ID --port N (--sock-dir DIR | --app-fd FD --ports-fd FD --ctl-fd FD
 *               --exit-fd FD) [--ready-fd FD] [--hold-ms MS] [--log-max BYTES] [--buffer BYTES]
 *               [--max-conns N] -- APP [ARGS...]
 *
 * With --sock-dir the agent makes its sockets (app.sock, ports.sock, ctl.sock) and its exit file
 * in DIR itself (a microVM guest). The process driver instead passes sockets the host made, in a
 * directory the sandbox cannot see, and the exit file opened for writing: nothing the sandbox
 * could replace.
 *
 * Starts APP with the agent's own environment (the driver prepared it) in the working
 * directory, sends the app's output to stderr (at most --log-max bytes), probes 127.0.0.1:N
 * until the app accepts connections and then writes "READY\n" to --ready-fd. It relays every
 * connection on DIR/app.sock to the app (relay.c) and answers the control protocol (proto.h) on
 * DIR/ctl.sock. As PID 1 it reaps every zombie; SIGTERM/SIGINT are forwarded to the app. When
 * the app exits, the agent writes DIR/exit ("exited status=N" or "killed signal=N") and exits
 * with the app's status (128+signal when killed), which ends the sandbox.
 *
 * Static, plain libc and epoll: it also runs as PID 1 of a microVM initramfs. Started there by
 * the kernel (as PID 1, /init, without arguments, on the initramfs: guest.h), it first prepares the
 * machine and reads its configuration (guest.h), then runs as above with --sock-dir /run/berth,
 * a TCP relay listener that holds every connection until BIND, the control protocol also on
 * the virtio-serial port "berth.ctl", READY on the console, and powers the VM off whenever it
 * ends. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "scheduler/agent/exec.h"
#include "scheduler/agent/guest.h"
#include "scheduler/agent/loop.h"
#include "scheduler/agent/proto.h"
#include "scheduler/agent/relay.h"

#define PROBE_INTERVAL_MS 20
#define PROBE_WAIT_MS 100
#define LISTEN_BACKLOG 1024
#define CTL_MAX_CLIENTS 16 /* concurrent control connections */
#define MAX_EVENTS 64

struct ctl_client {
    struct agent_watch w;
    struct agent_linebuf lb;
    struct ctl_client *next;
    int dead;
};

/* Guest mode: the control protocol on the virtio-serial port "berth.ctl". The host's side is a
 * unix socket QEMU serves to one client at a time; while none is connected the port polls
 * EPOLLHUP (level-triggered, so it would spin the loop): the port is then left out of the epoll
 * set and looked at again every PORT_POLL_MS. Until the port exists (its name arrives from the
 * host after the device is probed) it is looked for every PORT_POLL_MS, for PORT_WAIT_MS.
 *
 * The guest learns that a host connected from a control message that the kernel handles in a
 * work queue, while the host's data arrives by interrupt: on a loaded TCG host the first
 * command is read while the port still says "no host" (a read of 0 once the data is taken,
 * EAGAIN on write). Until the guest has seen the host (a read of EAGAIN, a write that went
 * through) a read of 0 is therefore not taken as a disconnect: the partial line and the
 * replies stay, the replies wait for EPOLLOUT, for at most PORT_REPLY_HOLD_MS (a host whose
 * connection ended before the guest saw it begin must not have its reply go to the next). A
 * read of 0 after the host was seen ends the connection: its partial line and replies go. */
#define PORT_POLL_MS 50
#define PORT_WAIT_MS 10000
#define PORT_REPLY_HOLD_MS 5000
#define PORT_OUT_MAX (8 * (AGENT_LINE_MAX + 2))
struct ctl_port {
    struct ctl_client c; /* c.w.fd: the open port, -1 until found */
    int connected;       /* the guest saw the host connected since the last read of 0 */
    uint64_t retry_at;   /* monotonic ms of the next look; 0: none due */
    uint64_t give_up_at; /* the port did not appear by then: stop looking */
    int open_failed;     /* an open() failure was logged (retries are not) */
    char out[PORT_OUT_MAX];
    size_t out_len;          /* bytes of whole reply lines in out, not yet written */
    uint64_t out_expires_at; /* monotonic ms: out is dropped then, unless written */
};

struct agent {
    const char *id;
    const char *sock_dir;
    int app_fd, ports_fd, ctl_fd, exit_fd; /* host-made, or -1 (then sock_dir) */
    uint16_t port;
    int ready_fd;
    uint64_t log_max, log_written;
    int log_dropped;
    char **app_argv;
    pid_t app_pid;
    int ready;
    int terminating;
    char bound[AGENT_SESSION_MAX + 1];
    int epfd;
    struct agent_relay_config relay_cfg;
    struct agent_relay *relay;
    struct agent_watch sig_w, timer_w, ctl_w, out_w;
    struct ctl_client *clients;
    unsigned n_clients;
    uint64_t timer_deadline; /* monotonic ms the timer fires at; 0: disarmed */
    int exit_code;           /* -1 while running */
    int guest;               /* PID 1 of a microVM (guest.h) */
    unsigned max_execs;      /* commands run through the exec channel at once (exec.h) */
    struct agent_guest_conf guest_conf;
    struct ctl_port vport;
};

static struct agent A; /* the one agent; reached from watch callbacks */

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Everything the agent and the app print goes through here, bounded by --log-max. */
static void log_bytes(const char *buf, size_t len)
{
    if (A.log_written >= A.log_max) {
        if (!A.log_dropped) {
            static const char msg[] = "berth-agent: console log limit reached, dropping output\n";
            ssize_t n = write(2, msg, sizeof(msg) - 1);
            (void)n;
            A.log_dropped = 1;
        }
        return;
    }
    size_t take = len;
    if (take > A.log_max - A.log_written)
        take = (size_t)(A.log_max - A.log_written);
    while (take > 0) {
        ssize_t n = write(2, buf, take);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        buf += n;
        take -= (size_t)n;
        A.log_written += (uint64_t)n;
    }
}

static void logf_(const char *fmt, ...)
{
    char line[512];
    int n = snprintf(line, sizeof(line), "berth-agent: ");
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        return;
    size_t len =
        (size_t)n +
        ((size_t)m < sizeof(line) - (size_t)n - 1 ? (size_t)m : sizeof(line) - (size_t)n - 2);
    line[len++] = '\n';
    log_bytes(line, len);
}

/* Ends the agent with <code>; in guest mode every end powers the VM off (sync first). */
static void __attribute__((noreturn)) agent_exit(int code)
{
    if (A.guest)
        agent_guest_poweroff();
    exit(code);
}

static void usage(void)
{
    fprintf(
        stderr,
        "usage: berth-agent --id ID --port N (--sock-dir DIR | --app-fd FD "
        "--ports-fd FD --ctl-fd FD --exit-fd FD) [--ready-fd FD] [--hold-ms MS] "
        "[--log-max BYTES] [--buffer BYTES] [--max-conns N] [--max-execs N] -- APP [ARGS...]\n");
    exit(2);
}

static uint64_t num_arg(const char *name, const char *v, uint64_t min, uint64_t max)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || *end || !*v || x < min || x > max) {
        fprintf(stderr, "berth-agent: %s: expected a number in %" PRIu64 "..%" PRIu64 "\n", name,
                min, max);
        exit(2);
    }
    return x;
}

static void set_defaults(void)
{
    A.ready_fd = -1;
    A.app_fd = A.ports_fd = A.ctl_fd = A.exit_fd = -1;
    A.log_max = 1 << 20;
    A.relay_cfg.buffer = 64 << 10;
    A.relay_cfg.max_conns = 1024;
    A.max_execs = 16;
}

static void parse_args(int argc, char **argv)
{
    set_defaults();
    int i;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (strcmp(a, "--id") == 0)
            A.id = v;
        else if (strcmp(a, "--port") == 0)
            A.port = (uint16_t)num_arg(a, v, 1, 65535);
        else if (strcmp(a, "--sock-dir") == 0)
            A.sock_dir = v;
        else if (strcmp(a, "--app-fd") == 0)
            A.app_fd = (int)num_arg(a, v, 0, 65535);
        else if (strcmp(a, "--ports-fd") == 0)
            A.ports_fd = (int)num_arg(a, v, 0, 65535);
        else if (strcmp(a, "--ctl-fd") == 0)
            A.ctl_fd = (int)num_arg(a, v, 0, 65535);
        else if (strcmp(a, "--exit-fd") == 0)
            A.exit_fd = (int)num_arg(a, v, 0, 65535);
        else if (strcmp(a, "--ready-fd") == 0)
            A.ready_fd = (int)num_arg(a, v, 0, 65535);
        else if (strcmp(a, "--hold-ms") == 0)
            A.relay_cfg.hold_ms = num_arg(a, v, 0, 86400000);
        else if (strcmp(a, "--log-max") == 0)
            A.log_max = num_arg(a, v, 0, UINT64_MAX);
        else if (strcmp(a, "--buffer") == 0)
            A.relay_cfg.buffer = (size_t)num_arg(a, v, 1024, 1 << 30);
        else if (strcmp(a, "--max-conns") == 0)
            A.relay_cfg.max_conns = (unsigned)num_arg(a, v, 1, 1 << 20);
        else if (strcmp(a, "--max-execs") == 0)
            A.max_execs = (unsigned)num_arg(a, v, 0, 10000);
        else
            usage();
    }
    int by_fd = A.app_fd >= 0 && A.ports_fd >= 0 && A.ctl_fd >= 0 && A.exit_fd >= 0;
    if (!A.id || !A.port || (!A.sock_dir == !by_fd) || i >= argc)
        usage();
    A.app_argv = argv + i;
    A.relay_cfg.port = A.port;
}

static int listen_unix(const char *name, mode_t mode)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int n = snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/%s", A.sock_dir, name);
    if (n < 0 || (size_t)n >= sizeof(sa.sun_path)) {
        logf_("socket path %s/%s too long", A.sock_dir, name);
        return -1;
    }
    unlink(sa.sun_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        chmod(sa.sun_path, mode) < 0 || listen(fd, LISTEN_BACKLOG) < 0) {
        logf_("cannot listen on %s: %s", sa.sun_path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

/* Guest mode: the relay's TCP listener on 0.0.0.0:PORT, the target of the host's forward. */
static int listen_tcp(uint16_t port, int ports)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_ANY);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, LISTEN_BACKLOG) < 0) {
        logf_("cannot listen on 0.0.0.0:%u: %s", port, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    int r = agent_relay_listen_tcp(A.relay, fd, ports);
    if (r < 0)
        logf_("relay listener: %s", strerror(-r));
    else
        logf_("relay listening on 0.0.0.0:%u%s hold_ms=%" PRIu64, port, ports ? " (ports)" : "",
              A.relay_cfg.hold_ms);
    return r;
}

/* ------------------------------------------------------------------ app process */

static void start_app(int out_fd, const sigset_t *orig_mask)
{
    pid_t pid = fork();
    if (pid < 0) {
        logf_("fork: %s", strerror(errno));
        agent_exit(127);
    }
    if (pid == 0) {
        signal(SIGPIPE, SIG_DFL);
        sigprocmask(SIG_SETMASK, orig_mask, NULL);
        if (dup2(out_fd, 1) < 0 || dup2(out_fd, 2) < 0)
            _exit(127);
        syscall(SYS_close_range, 3, ~0U, 0);
        const char *what;
        int r;
        if (A.guest && (r = agent_guest_enter_app(&A.guest_conf, &what)) < 0) {
            dprintf(2, "berth-agent: cannot start the app: %s: %s\n", what, strerror(-r));
            _exit(127);
        }
        execvp(A.app_argv[0], A.app_argv);
        dprintf(2, "berth-agent: cannot run %s: %s\n", A.app_argv[0], strerror(errno));
        _exit(127);
    }
    A.app_pid = pid;
    logf_("started app pid=%d cmd=%s port=%u", (int)pid, A.app_argv[0], A.port);
}

static void write_exit_file(const char *what)
{
    if (A.exit_fd >= 0) {
        /* The host's file: rewritten in place, read by the scheduler once we are gone. */
        size_t n = strlen(what);
        if (pwrite(A.exit_fd, what, n, 0) == (ssize_t)n && ftruncate(A.exit_fd, (off_t)n) < 0)
            logf_("cannot truncate the exit file: %s", strerror(errno));
        return;
    }
    char path[256], tmp[256];
    snprintf(path, sizeof(path), "%s/exit", A.sock_dir);
    snprintf(tmp, sizeof(tmp), "%s/exit.tmp", A.sock_dir);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    ssize_t n = write(fd, what, strlen(what));
    (void)n;
    close(fd);
    rename(tmp, path);
}

static void reap_children(void)
{
    for (;;) {
        int st;
        pid_t pid = waitpid(-1, &st, WNOHANG);
        if (pid <= 0)
            return;
        if (pid != A.app_pid) {
            agent_exec_reaped(pid, st);
            continue;
        }
        char what[64];
        if (WIFEXITED(st)) {
            snprintf(what, sizeof(what), "exited status=%d", WEXITSTATUS(st));
            A.exit_code = WEXITSTATUS(st);
        } else {
            snprintf(what, sizeof(what), "killed signal=%d", WTERMSIG(st));
            A.exit_code = 128 + WTERMSIG(st);
        }
        logf_("app %s", what);
        write_exit_file(what);
        A.app_pid = 0;
    }
}

/* ------------------------------------------------------------------ readiness */

static int probe_app(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(A.port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = 0;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
        ok = 1;
    } else if (errno == EINPROGRESS) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int err = 0;
        socklen_t len = sizeof(err);
        if (poll(&p, 1, PROBE_WAIT_MS) == 1 &&
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0)
            ok = 1;
    }
    close(fd);
    return ok;
}

static void port_tick(uint64_t now);

/* Keeps the one timer armed for the earliest of: the next readiness probe (until ready) and
 * the next hold deadline of a waiting connection. Disarmed when neither is due. */
static void rearm(void)
{
    uint64_t now = agent_now_ms(), want = 0;
    if (!A.ready && A.app_pid)
        want = now + PROBE_INTERVAL_MS;
    if (agent_relay_timed(A.relay)) {
        uint64_t next = agent_relay_tick(A.relay, now);
        if (next && (!want || next < want))
            want = next;
    }
    if (A.vport.retry_at && (!want || A.vport.retry_at < want))
        want = A.vport.retry_at;
    if (A.vport.out_len && (!want || A.vport.out_expires_at < want))
        want = A.vport.out_expires_at;
    uint64_t ex = agent_exec_tick(now);
    if (ex && (!want || ex < want))
        want = ex;
    if (A.timer_deadline && want && A.timer_deadline <= want)
        return; /* an earlier expiry is pending anyway */
    if (want == A.timer_deadline)
        return;
    struct itimerspec its = {0};
    if (want) {
        uint64_t d = want > now ? want - now : 1;
        its.it_value.tv_sec = (time_t)(d / 1000);
        its.it_value.tv_nsec = (long)(d % 1000) * 1000000;
    }
    timerfd_settime(A.timer_w.fd, 0, &its, NULL);
    A.timer_deadline = want;
}

static void on_timer(struct agent_watch *w, uint32_t ev)
{
    (void)ev;
    uint64_t expirations;
    ssize_t n = read(w->fd, &expirations, sizeof(expirations));
    (void)n;
    A.timer_deadline = 0;
    port_tick(agent_now_ms());
    if (!A.ready && A.app_pid && probe_app()) {
        A.ready = 1;
        logf_("app ready port=%u", A.port);
        if (A.ready_fd >= 0) {
            n = write(A.ready_fd, "READY\n", 6);
            close(A.ready_fd);
            A.ready_fd = -1;
        }
        agent_relay_set_ready(A.relay);
    }
}

/* ------------------------------------------------------------------ control socket */

/* SIGTERM to the app (a signal or TERM): the agent ends when the app has exited. */
static void stop_app(const char *why)
{
    A.terminating = 1;
    if (A.app_pid) {
        logf_("%s: stopping app pid=%d", why, (int)A.app_pid);
        kill(A.app_pid, SIGTERM);
    }
}

static uint32_t port_events(const struct ctl_port *p)
{
    return EPOLLIN | (p->out_len ? EPOLLOUT : 0);
}

/* Writes what waits for the port. A virtio port takes a write whole (one buffer of up to
 * 32 KiB) or not at all (EAGAIN); a short count is handled all the same. */
static void port_flush(struct ctl_port *p)
{
    while (p->out_len) {
        ssize_t n = write(p->c.w.fd, p->out, p->out_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n < 0 && errno != EAGAIN) { /* not a full queue: the port itself failed */
                logf_("control replies dropped on the virtio port: %s", strerror(errno));
                p->out_len = 0;
            }
            break;
        }
        p->connected = 1; /* a write goes through only to a connected host */
        memmove(p->out, p->out + n, p->out_len - (size_t)n);
        p->out_len -= (size_t)n;
    }
    if (p->c.w.added) /* else port_tick puts it back with these events */
        agent_watch_set(A.epfd, &p->c.w, port_events(p));
}

static void client_reply(struct ctl_client *c, const char *line)
{
    char buf[AGENT_LINE_MAX + 2];
    int n = snprintf(buf, sizeof(buf), "%s\n", line);
    if (c == &A.vport.c) {
        struct ctl_port *p = &A.vport;
        if (p->out_len + (size_t)n > sizeof(p->out)) { /* a host that reads nothing */
            logf_("control reply dropped on the virtio port: %zu bytes wait already",
                  p->out_len);
            return;
        }
        if (!p->out_len)
            p->out_expires_at = agent_now_ms() + PORT_REPLY_HOLD_MS;
        memcpy(p->out + p->out_len, buf, (size_t)n);
        p->out_len += (size_t)n;
        port_flush(p);
        return;
    }
    /* write(), not send(): the same code serves the virtio port. SIGPIPE is ignored and
     * every fd is non-blocking. */
    if (write(c->w.fd, buf, (size_t)n) != n)
        c->dead = 1; /* replies are tiny: a client that cannot take one is gone */
}

static void handle_line(struct ctl_client *c, const char *line, size_t len)
{
    struct agent_cmd cmd;
    const char *err;
    char reply[AGENT_LINE_MAX];
    if (agent_proto_parse(line, len, &cmd, &err) < 0) {
        snprintf(reply, sizeof(reply), "ERR %s", err);
        client_reply(c, reply);
        return;
    }
    switch (cmd.type) {
    case AGENT_CMD_PING:
        client_reply(c, A.ready ? "OK ready" : "OK starting");
        break;
    case AGENT_CMD_BIND:
        if (A.bound[0] && strcmp(A.bound, cmd.arg) != 0) {
            snprintf(reply, sizeof(reply), "ERR bound to another session");
            client_reply(c, reply);
            break;
        }
        if (A.guest && agent_guest_bind(&A.guest_conf, &cmd, reply + 4, sizeof(reply) - 4) < 0) {
            memcpy(reply, "ERR ", 4);
            logf_("BIND session=%s refused: %s", cmd.arg, reply + 4);
            client_reply(c, reply);
            break;
        }
        if (!A.bound[0])
            logf_("bound session=%s id=%s", cmd.arg, A.id);
        snprintf(A.bound, sizeof(A.bound), "%s", cmd.arg);
        if (cmd.exec_key[0]) {
            agent_exec_set_key(cmd.exec_key);
            agent_relay_set_key(A.relay, cmd.exec_key);
        }
        agent_relay_release(A.relay);
        agent_exec_release();
        client_reply(c, "OK");
        break;
    case AGENT_CMD_STATUS:
        snprintf(reply, sizeof(reply), "OK %s bound=%s conns=%u held=%u id=%s",
                 A.ready ? "ready" : "starting", A.bound[0] ? A.bound : "-",
                 agent_relay_conns(A.relay), agent_relay_waiting(A.relay), A.id);
        client_reply(c, reply);
        break;
    case AGENT_CMD_TERM:
        stop_app("TERM");
        client_reply(c, "OK");
        break;
    case AGENT_CMD_PAUSE: {
        unsigned closed = 0;
        const char *why = "";
        if (agent_exec_open()) {
            snprintf(reply, sizeof(reply), "BUSY a command or a file transfer is running");
        } else if (agent_relay_pause(A.relay, agent_now_ms(), cmd.quiet_ms, &closed, &why) < 0) {
            snprintf(reply, sizeof(reply), "BUSY %s", why);
        } else {
            snprintf(reply, sizeof(reply), "OK closed=%u", closed);
            logf_("pausing closed=%u", closed);
        }
        client_reply(c, reply);
        break;
    }
    case AGENT_CMD_RESUME:
        if (agent_relay_quiesced(A.relay))
            logf_("resumed");
        agent_relay_resume(A.relay);
        client_reply(c, "OK");
        break;
    case AGENT_CMD_SYNC: /* the host's fence: what came before its echo was not its own */
        snprintf(reply, sizeof(reply), "SYNC %s", cmd.arg);
        client_reply(c, reply);
        break;
    }
}

static void feed(struct ctl_client *c, const char *buf, ssize_t n)
{
    size_t off = 0;
    while (off < (size_t)n && !c->dead) {
        int st;
        off += agent_linebuf_feed(&c->lb, buf + off, (size_t)n - off, &st);
        if (st == 1)
            handle_line(c, c->lb.buf, c->lb.len);
        else if (st == -E2BIG)
            client_reply(c, "ERR line too long");
        if (st != 0)
            agent_linebuf_reset(&c->lb);
    }
}

static void on_client(struct agent_watch *w, uint32_t ev)
{
    struct ctl_client *c = AGENT_CONTAINER_OF(w, struct ctl_client, w);
    char buf[1024];
    (void)ev;
    if (c->dead)
        return;
    ssize_t n = recv(w->fd, buf, sizeof(buf), 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        c->dead = 1;
        return;
    }
    feed(c, buf, n);
}

/* The virtio port: reads what the host sent. A read of 0 means the guest sees no host (the
 * comment on struct ctl_port says when that ends a connection); the port then sleeps for
 * PORT_POLL_MS instead of polling its EPOLLHUP. */
static void on_port(struct agent_watch *w, uint32_t ev)
{
    struct ctl_port *p = AGENT_CONTAINER_OF(w, struct ctl_port, c.w);
    char buf[1024];
    if (ev & EPOLLOUT)
        port_flush(p);
    for (int i = 0; i < 16; i++) { /* bounded per event: the loop has other work */
        ssize_t n = read(w->fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            p->connected = 1;
            return;
        }
        if (n <= 0) {
            if (p->connected) {
                logf_("%s: host disconnected (dropped %zu bytes of a partial line, %zu of "
                      "replies)",
                      AGENT_GUEST_CTL_PORT, p->c.lb.len, p->out_len);
                p->connected = 0;
                p->out_len = 0;
                agent_linebuf_reset(&p->c.lb);
            }
            agent_watch_set(A.epfd, w, 0);
            p->retry_at = agent_now_ms() + PORT_POLL_MS;
            return;
        }
        feed(&p->c, buf, n);
    }
}

/* Due from the timer: finds and opens the port, or puts it back in the epoll set. */
static void port_tick(uint64_t now)
{
    struct ctl_port *p = &A.vport;
    if (p->out_len && now >= p->out_expires_at) {
        logf_("%s: %zu bytes of replies dropped: the host was not seen in %u ms",
              AGENT_GUEST_CTL_PORT, p->out_len, PORT_REPLY_HOLD_MS);
        p->out_len = 0;
        if (p->c.w.added)
            agent_watch_set(A.epfd, &p->c.w, port_events(p));
    }
    if (!p->retry_at || now < p->retry_at)
        return;
    p->retry_at = 0;
    if (p->c.w.fd < 0) {
        char path[64];
        if (agent_guest_ctl_port(path, sizeof(path)) < 0) {
            if (now < p->give_up_at)
                p->retry_at = now + PORT_POLL_MS;
            else
                logf_("no virtio port %s after %u ms: control only on ctl.sock",
                      AGENT_GUEST_CTL_PORT, PORT_WAIT_MS);
            return;
        }
        int fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
            if (!p->open_failed) /* logged once: it is retried every PORT_POLL_MS */
                logf_("open %s: %s (retrying)", path, strerror(errno));
            p->open_failed = 1;
            p->retry_at = now + PORT_POLL_MS;
            return;
        }
        agent_watch_init(&p->c.w, fd, on_port);
        agent_linebuf_reset(&p->c.lb);
        logf_("control on %s (%s)", path, AGENT_GUEST_CTL_PORT);
    }
    if (agent_watch_set(A.epfd, &p->c.w, port_events(p)) < 0)
        p->retry_at = now + PORT_POLL_MS;
}

static void on_ctl_listen(struct agent_watch *w, uint32_t ev)
{
    (void)ev;
    for (;;) {
        int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        struct ctl_client *c = A.n_clients < CTL_MAX_CLIENTS ? calloc(1, sizeof(*c)) : NULL;
        if (!c) {
            static const char busy[] = "ERR too many control connections\n";
            ssize_t n = send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)n;
            close(fd);
            continue;
        }
        agent_watch_init(&c->w, fd, on_client);
        if (agent_watch_set(A.epfd, &c->w, EPOLLIN) < 0) {
            close(fd);
            free(c);
            continue;
        }
        c->next = A.clients;
        A.clients = c;
        A.n_clients++;
    }
}

static void reap_clients(void)
{
    struct ctl_client **pp = &A.clients;
    while (*pp) {
        struct ctl_client *c = *pp;
        if (c->dead) {
            *pp = c->next;
            agent_watch_close(A.epfd, &c->w);
            free(c);
            A.n_clients--;
        } else {
            pp = &c->next;
        }
    }
}

/* ------------------------------------------------------------------ signals, output */

static void on_signal(struct agent_watch *w, uint32_t ev)
{
    (void)ev;
    struct signalfd_siginfo si;
    while (read(w->fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo == SIGCHLD) {
            reap_children();
        } else if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
            stop_app(si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
        }
    }
}

static void on_output(struct agent_watch *w, uint32_t ev)
{
    (void)ev;
    char buf[8192];
    ssize_t n = read(w->fd, buf, sizeof(buf));
    if (n > 0)
        log_bytes(buf, (size_t)n);
    else if (n == 0 || (errno != EAGAIN && errno != EINTR))
        agent_watch_close(A.epfd, w);
}

/* Guest mode: the configuration comes from the image and the kernel command line. */
static void guest_args(void)
{
    set_defaults();
    A.guest = 1;
    if (agent_guest_boot(&A.guest_conf, &A.ready_fd) < 0)
        agent_guest_poweroff();
    A.id = A.guest_conf.id; /* BIND id= changes it in place */
    A.port = A.guest_conf.port;
    A.relay_cfg.port = A.port;
    /* A clone is always held: its connections wait for BIND (the host's post-restore step),
     * and one that waits longer than hold_ms is closed, never passed to the app unbound. */
    A.relay_cfg.hold_ms = A.guest_conf.hold_ms;
    A.relay_cfg.hold_closes = 1;
    /* Its ports listener is a host forward any local user reaches: port lines need the key. */
    A.relay_cfg.require_key = 1;
    A.relay_cfg.own_ports[0] = A.guest_conf.relay_port;
    A.relay_cfg.own_ports[1] = A.guest_conf.ports_port;
    agent_watch_init(&A.vport.c.w, -1, on_port);
    A.vport.retry_at = agent_now_ms();
    A.vport.give_up_at = A.vport.retry_at + PORT_WAIT_MS;
    A.sock_dir = AGENT_GUEST_SOCK_DIR;
    A.app_argv = A.guest_conf.argv;
}

int main(int argc, char **argv)
{
    /* The kernel starts /init without arguments; every other caller passes --id. */
    if (agent_guest_detect(argc, argv[0]))
        guest_args();
    else
        parse_args(argc, argv);
    A.exit_code = -1;
    /* execveat() names us after the fd number; say who we are in ps. */
    prctl(PR_SET_NAME, "berth-agent", 0, 0, 0);
    /* The app may run as our uid (run_as_root): not dumpable, so it cannot ptrace us or read our
     * /proc files (our descriptors are the instance's sockets). Its exec resets its own flag. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    signal(SIGPIPE, SIG_IGN);
    sigset_t mask, orig;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, &orig);

    A.epfd = epoll_create1(EPOLL_CLOEXEC);
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    int out[2];
    if (A.epfd < 0 || sfd < 0 || tfd < 0 || pipe2(out, O_CLOEXEC) < 0) {
        logf_("setup: %s", strerror(errno));
        agent_exit(127);
    }
    if (A.ready_fd >= 0)
        fcntl(A.ready_fd, F_SETFD, FD_CLOEXEC);
    int app_fd, ports_fd, ctl_fd;
    if (A.sock_dir) {
        app_fd = listen_unix("app.sock", 0666);
        ports_fd = listen_unix("ports.sock", 0666);
        ctl_fd = listen_unix("ctl.sock", 0600);
    } else {
        /* Host-made listening sockets: ours to accept on, not to re-create. */
        app_fd = A.app_fd, ports_fd = A.ports_fd, ctl_fd = A.ctl_fd;
        int fds[] = {app_fd, ports_fd, ctl_fd, A.exit_fd};
        for (size_t k = 0; k < sizeof(fds) / sizeof(fds[0]); k++)
            if (fcntl(fds[k], F_SETFD, FD_CLOEXEC) < 0 ||
                (k < 3 && fcntl(fds[k], F_SETFL, O_NONBLOCK) < 0)) {
                logf_("fd %d: %s", fds[k], strerror(errno));
                agent_exit(127);
            }
    }
    if (app_fd < 0 || ports_fd < 0 || ctl_fd < 0)
        agent_exit(127);
    A.relay_cfg.on_exec = agent_exec_take;
    struct agent_exec_config xcfg = {.max_execs = A.max_execs,
                                     .hold_ms = A.relay_cfg.hold_ms,
                                     .child_mask = &orig,
                                     .guest_conf = A.guest ? &A.guest_conf : NULL,
                                     .require_key = A.guest};
    agent_exec_init(A.epfd, &xcfg);
    A.relay = agent_relay_create(A.epfd, app_fd, ports_fd, &A.relay_cfg);
    if (!A.relay) {
        logf_("relay: out of memory");
        agent_exit(127);
    }
    if (A.guest &&
        (listen_tcp(A.guest_conf.relay_port, 0) < 0 || listen_tcp(A.guest_conf.ports_port, 1) < 0))
        agent_exit(127);
    agent_watch_init(&A.sig_w, sfd, on_signal);
    agent_watch_init(&A.timer_w, tfd, on_timer);
    agent_watch_init(&A.ctl_w, ctl_fd, on_ctl_listen);
    agent_watch_init(&A.out_w, out[0], on_output);
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    if (agent_watch_set(A.epfd, &A.sig_w, EPOLLIN) < 0 ||
        agent_watch_set(A.epfd, &A.timer_w, EPOLLIN) < 0 ||
        agent_watch_set(A.epfd, &A.ctl_w, EPOLLIN) < 0 ||
        agent_watch_set(A.epfd, &A.out_w, EPOLLIN) < 0) {
        logf_("epoll: %s", strerror(errno));
        agent_exit(127);
    }
    logf_("instance=%s pid=%d hold_ms=%" PRIu64, A.id, (int)getpid(), A.relay_cfg.hold_ms);
    start_app(out[1], &orig);
    close(out[1]);
    rearm();

    struct epoll_event evs[MAX_EVENTS];
    while (A.exit_code < 0) {
        int n = epoll_wait(A.epfd, evs, MAX_EVENTS, -1);
        if (n < 0 && errno != EINTR) {
            logf_("epoll_wait: %s", strerror(errno));
            break;
        }
        for (int i = 0; i < n; i++) {
            struct agent_watch *w = evs[i].data.ptr;
            if (w->fd >= 0)
                w->cb(w, evs[i].events);
        }
        agent_relay_reap(A.relay);
        agent_exec_reap();
        reap_clients();
        rearm();
    }
    /* Drain the app's last words. */
    if (A.out_w.fd >= 0)
        on_output(&A.out_w, EPOLLIN);
    if (A.exit_code < 0)
        A.exit_code = 127;
    agent_exit(A.exit_code);
}

#include "scheduler/storage.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "scheduler/sandbox.h"

#ifndef FSCONFIG_SET_STRING
#define FSCONFIG_SET_FLAG 0
#define FSCONFIG_SET_STRING 1
#define FSCONFIG_CMD_CREATE 6
#endif
#ifndef FSOPEN_CLOEXEC
#define FSOPEN_CLOEXEC 0x00000001
#endif
#ifndef FSMOUNT_CLOEXEC
#define FSMOUNT_CLOEXEC 0x00000001
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif
#ifndef MOUNT_ATTR_IDMAP
#define MOUNT_ATTR_IDMAP 0x00100000
#endif
#ifndef MOUNT_ATTR_NOSUID
#define MOUNT_ATTR_NOSUID 0x00000002
#define MOUNT_ATTR_NODEV 0x00000004
struct mount_attr {
    uint64_t attr_set, attr_clr, propagation, userns_fd;
};
#endif

#define IMAGE_NAME "data.img"
#define MKFS_TIMEOUT_MS 60000
#define LOOP_TRIES 16

/* Next to an image a guest kernel has had as a block device (microvm driver). */
#define GUEST_MARK "guest-written"

static const char *const mkfs_paths[] = {"/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"};

static int run_mkfs(const char *image, unsigned owner, char *err, size_t errlen)
{
    const char *mkfs = NULL;
    for (size_t i = 0; i < sizeof(mkfs_paths) / sizeof(mkfs_paths[0]) && !mkfs; i++)
        if (access(mkfs_paths[i], X_OK) == 0)
            mkfs = mkfs_paths[i];
    if (!mkfs) {
        snprintf(err, errlen, "mkfs.ext4 not found (install e2fsprogs)");
        return -ENOENT;
    }
    char opts[64];
    snprintf(opts, sizeof(opts), "root_owner=%u:%u,lazy_itable_init=1,nodiscard", owner, owner);
    int out[2];
    if (pipe2(out, O_CLOEXEC) < 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return -errno;
    }
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(out[0]);
        close(out[1]);
        snprintf(err, errlen, "fork: %s", strerror(e));
        return -e;
    }
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        if (null < 0 || dup2(null, 0) < 0 || dup2(out[1], 1) < 0 || dup2(out[1], 2) < 0)
            _exit(127);
        char *const argv[] = {(char *)mkfs, "-q", "-F",         "-m",          "0", "-E",
                              opts,         "-L", "berth-data", (char *)image, NULL};
        char *const envp[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", NULL};
        execve(mkfs, argv, envp);
        _exit(127);
    }
    close(out[1]);
    char msg[256] = "";
    size_t got = 0;
    struct pollfd p = {.fd = out[0], .events = POLLIN};
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long left = MKFS_TIMEOUT_MS -
                    ((now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000);
        if (left <= 0 || poll(&p, 1, (int)left) == 0) {
            kill(pid, SIGKILL);
            snprintf(msg, sizeof(msg), "timed out");
            break;
        }
        ssize_t n = read(out[0], msg + got, sizeof(msg) - 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
        if (got >= sizeof(msg) - 1)
            got = 0; /* keep the last part */
    }
    msg[got] = '\0';
    close(out[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return 0;
    msg[strcspn(msg, "\n")] = '\0';
    snprintf(err, errlen, "mkfs.ext4 %s failed: %s", image, msg[0] ? msg : "exit status");
    return -EIO;
}

/* Opens (creating and formatting when missing) the image; returns an O_RDWR fd. */
static int open_image(const char *dir, uint64_t size, unsigned owner, char *err, size_t errlen)
{
    char img[4200];
    snprintf(img, sizeof(img), "%s/%s", dir, IMAGE_NAME);
    int fd = open(img, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0 && errno == ENOENT) {
        /* Made under a temporary name and renamed when formatted: a crash in between leaves no
         * half-made image to mount. */
        char tmp[4220];
        snprintf(tmp, sizeof(tmp), "%s/.%s.new", dir, IMAGE_NAME);
        unlink(tmp);
        int t = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (t < 0) {
            snprintf(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
            return -errno;
        }
        int rc = ftruncate(t, (off_t)size) < 0 ? -errno : 0;
        close(t);
        if (rc < 0)
            snprintf(err, errlen, "cannot size %s: %s", tmp, strerror(-rc));
        else if ((rc = run_mkfs(tmp, owner, err, errlen)) == 0 && rename(tmp, img) < 0) {
            rc = -errno;
            snprintf(err, errlen, "cannot rename %s: %s", tmp, strerror(errno));
        }
        if (rc < 0) {
            unlink(tmp);
            return rc;
        }
        fd = open(img, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    }
    if (fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", img, strerror(errno));
        return -errno;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        snprintf(err, errlen, "%s is not a regular file", img);
        return -EINVAL;
    }
    return fd;
}

/* Binds <img_fd> to a free loop device; returns the device's fd (O_RDWR). */
static int loop_attach(int img_fd, char *name, size_t namelen, char *err, size_t errlen)
{
    int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (ctl < 0) {
        snprintf(err, errlen, "cannot open /dev/loop-control: %s", strerror(errno));
        return -errno;
    }
    int rc = -EBUSY;
    for (int i = 0; i < LOOP_TRIES; i++) {
        int n = ioctl(ctl, LOOP_CTL_GET_FREE);
        if (n < 0) {
            rc = -errno;
            snprintf(err, errlen, "no free loop device: %s", strerror(errno));
            break;
        }
        snprintf(name, namelen, "/dev/loop%d", n);
        int dev = open(name, O_RDWR | O_CLOEXEC);
        if (dev < 0) {
            rc = -errno;
            snprintf(err, errlen, "cannot open %s: %s", name, strerror(errno));
            break;
        }
        struct loop_config cfg;
        memset(&cfg, 0, sizeof(cfg));
        cfg.fd = (unsigned)img_fd;
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        if (ioctl(dev, LOOP_CONFIGURE, &cfg) == 0) {
            close(ctl);
            return dev;
        }
        rc = -errno;
        close(dev);
        if (rc != -EBUSY) { /* taken by someone else in between: try the next free one */
            snprintf(err, errlen, "LOOP_CONFIGURE %s: %s", name, strerror(-rc));
            break;
        }
        snprintf(err, errlen, "every loop device was busy");
    }
    close(ctl);
    return rc;
}

int sch_storage_open_locked(const char *dir, uint64_t size, unsigned owner, int guest, char *err,
                            size_t errlen)
{
    char mark[4200];
    snprintf(mark, sizeof(mark), "%s/%s", dir, GUEST_MARK);
    if (!guest && access(mark, F_OK) == 0) {
        /* A guest kernel (a tenant's, as root in its VM) wrote this file system's blocks: the
         * host kernel must not parse it. The session keeps it for its microVMs. */
        snprintf(err, errlen,
                 "the storage in %s was written by a microVM: not mounted on the host (use a "
                 "microvm template for this session)",
                 dir);
        return -EPERM;
    }
    int img = open_image(dir, size, owner, err, errlen);
    if (img < 0)
        return img;
    if (flock(img, LOCK_EX | LOCK_NB) < 0) {
        int e = errno == EWOULDBLOCK ? EBUSY : errno;
        snprintf(err, errlen, "the storage in %s is attached to another instance", dir);
        close(img);
        return -e;
    }
    int m = guest ? open(mark, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600) : 0;
    if (m < 0) {
        int e = errno;
        snprintf(err, errlen, "cannot mark %s: %s", mark, strerror(e));
        close(img);
        return -e;
    }
    if (guest)
        close(m);
    return img;
}

int sch_storage_attach(const char *dir, uint64_t size, unsigned owner, int userns_fd,
                       const char *target, int *ret_lock_fd, struct sch_storage_dev *ret_dev,
                       char *err, size_t errlen)
{
    int img = sch_storage_open_locked(dir, size, owner, 0, err, errlen);
    if (img < 0)
        return img;
    char devname[64];
    int dev = loop_attach(img, devname, sizeof(devname), err, errlen);
    if (dev < 0) {
        close(img);
        return dev;
    }
    struct stat dst;
    int rc = 0, fsfd = -1, mnt = -1;
    const char *step = "fsopen";
    if (fstat(dev, &dst) < 0) {
        rc = -errno;
        step = "fstat";
        goto out;
    }
    fsfd = (int)syscall(SYS_fsopen, "ext4", FSOPEN_CLOEXEC);
    if (fsfd < 0 ||
        (step = "fsconfig source",
         syscall(SYS_fsconfig, fsfd, FSCONFIG_SET_STRING, "source", devname, 0) < 0) ||
        (step = "fsconfig errors",
         syscall(SYS_fsconfig, fsfd, FSCONFIG_SET_STRING, "errors", "remount-ro", 0) < 0) ||
        (step = "mount ext4",
         syscall(SYS_fsconfig, fsfd, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) ||
        (step = "fsmount", (mnt = (int)syscall(SYS_fsmount, fsfd, FSMOUNT_CLOEXEC,
                                               MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)) < 0)) {
        rc = -errno;
        goto out;
    }
    if (userns_fd >= 0) {
        struct mount_attr attr = {.attr_set = MOUNT_ATTR_IDMAP, .userns_fd = (uint64_t)userns_fd};
        step = "idmap";
        if (syscall(SYS_mount_setattr, mnt, "", AT_EMPTY_PATH, &attr, sizeof(attr)) < 0) {
            rc = -errno;
            goto out;
        }
    }
    step = "move_mount";
    if (syscall(SYS_move_mount, mnt, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH) < 0) {
        rc = -errno;
        goto out;
    }
    ret_dev->major = major(dst.st_rdev);
    ret_dev->minor = minor(dst.st_rdev);
out:
    if (rc < 0)
        snprintf(err, errlen, "%s of %s/%s on %s: %s", step, dir, IMAGE_NAME, devname,
                 strerror(-rc));
    if (mnt >= 0)
        close(mnt);
    if (fsfd >= 0)
        close(fsfd);
    close(dev); /* the mount holds the device now; autoclear detaches it after the last umount */
    if (rc < 0) {
        close(img);
        return rc;
    }
    *ret_lock_fd = img;
    return 0;
}

int sch_storage_relock(const char *dir)
{
    char img[4200];
    snprintf(img, sizeof(img), "%s/%s", dir, IMAGE_NAME);
    int fd = open(img, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0)
        return -errno;
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

/* A session's durable /data for the process driver: an ext4 file system in an image file of
 * the template's data_size, {storage_root}/{tenant}/{h}/data.img, so that its size is a real
 * quota (ENOSPC inside when full) that no amount of small files or metadata can exceed.
 *
 * Attaching: the image is created sparse and formatted on first use (mkfs.ext4, the root
 * directory owned by the app's user inside), locked (flock, so that two instances never mount
 * one image), set up on a free loop device (autoclear: it goes away with the last mount), mounted
 * nosuid,nodev with the new mount API and, when the instance has a user namespace, idmapped
 * through it: files are stored with the ids the sandbox sees (1000 for the app), whatever host
 * range the instance that writes them has. The detached mount is then moved onto <target> (the
 * instance's shared data mount point, from where it propagates into the sandbox).
 *
 * The host never reads the files in it; the kernel parses the file system, whose image only the
 * kernel writes (the sandbox has no access to the image file itself). */
#ifndef SCH_STORAGE_H
#define SCH_STORAGE_H

#include <stddef.h>
#include <stdint.h>

struct sch_storage_dev {
    unsigned major, minor; /* the loop device, for io limits */
};

/* Attaches the image in <dir> (created when missing: <size> bytes, its root directory owned by
 * <owner>, the app's uid inside the sandbox) on <target>. <userns_fd> is
 * the instance's user namespace (-1: no idmapping). Returns 0 with the image's lock in
 * <ret_lock_fd> (keep it open while attached; closing it releases the lock) and the loop device
 * in <ret_dev>, or a negative errno with a message in <err> (-EBUSY: the image is attached to
 * another instance). Blocks for the format (milliseconds) on first use. */
int sch_storage_attach(const char *dir, uint64_t size, unsigned owner, int userns_fd,
                       const char *target, int *ret_lock_fd, struct sch_storage_dev *ret_dev,
                       char *err, size_t errlen);

/* Opens the image in <dir> (created and formatted when missing, as above) and locks it.
 * <guest> 1: for a driver that hands the image itself to its instance (microvm: a virtio disk
 * whose blocks a guest kernel writes): <dir>/guest-written is made, and from then on the image
 * is refused (-EPERM) with <guest> 0, i.e. never mounted by the host's kernel. Returns the
 * locked O_RDWR descriptor (the lock lives as long as any duplicate of it, e.g. one passed to
 * QEMU), or a negative errno with a message in <err> (-EBUSY: attached elsewhere). */
int sch_storage_open_locked(const char *dir, uint64_t size, unsigned owner, int guest, char *err,
                            size_t errlen);

/* Takes the lock of an image already attached (after a scheduler restart). Returns the lock fd
 * or a negative errno. */
int sch_storage_relock(const char *dir);

#endif

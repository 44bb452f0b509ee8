/* The microvm driver's per-template root image: a read-only ext4 file system holding what the
 * template's app needs (its rootfs tree, or the closure of its command on the host) and the
 * generated /etc files and /etc/berth/guest.conf, cached in a directory under a content key.
 * Start-up code only: everything here blocks. README.md, "microVM root images", says what goes
 * into an image and why. */
#ifndef SCH_VMROOT_H
#define SCH_VMROOT_H

#include <stddef.h>
#include <stdint.h>

#include "common/config.h"

#define SCH_VMROOT_HASH_LEN 16 /* hex chars */
/* Bounds of one image's content (files, directories and links; bytes of regular files). */
#define SCH_VMROOT_MAX_FILES 200000u
#define SCH_VMROOT_MAX_BYTES (4ull << 30)
/* The agent's limit on guest.conf. */
#define SCH_VMROOT_CONF_MAX 4096

struct sch_vmroot_params {
    const struct cm_template *tpl;
    char *const *ro_binds; /* scheduler.ro_binds (NULL-terminated, may be empty) */
    uint16_t relay_port;   /* the agent's TCP relay port in the guest (guest.conf relay_port=) */
    uint16_t ports_port;   /* its TCP ports listener (guest.conf ports_port=; 0: not written) */
    uint64_t hold_ms;      /* guest.conf hold_ms= */
    const char *cache_dir; /* absolute, exists, root-owned 0700: images and staging go here */
};

/* Returns 0 with the absolute path of the template's read-only root image (an ext4 file
 * system) in <ret_path> and its content key (SCH_VMROOT_HASH_LEN lower-case hex + NUL) in
 * <ret_hash>, building it when no image with that key exists yet in cache_dir; or a negative
 * errno with a one-line message in <err>. Blocks (copies files, runs mkfs.ext4): call at
 * start-up only. The image is 0600, root-owned (QEMU gets a descriptor; a rootfs's root-only
 * files stay unreadable to the host's users), never written after it is renamed into place.
 * Refuses a rootfs that is "/", a rootfs or ro_binds path that holds cache_dir or lies in
 * it, and a cache_dir not owned by the caller's euid or writable by group or others. Removes this
 * template's leftovers of an interrupted build (stage-*, *.tmp) first. */
int sch_vmroot_build(const struct sch_vmroot_params *p, char *ret_path, size_t pathlen,
                     char *ret_hash, char *err, size_t errlen);

/* Removes images and staging dirs of template <tpl_name> in cache_dir other than the one with
 * <keep_hash> (NULL: all of that template). Returns how many it removed or a negative errno
 * (-EINVAL for a name that is not safe as a path component). Other templates' files, whatever
 * their names, are left alone. */
int sch_vmroot_gc(const char *cache_dir, const char *tpl_name, const char *keep_hash);

/* Pure: writes the guest.conf text for <p> into <buf> (NUL-terminated): a comment line, then
 * port=, relay_port=, hold_ms=, uid= (0 with run_as_root, else 1000), workspace_size=, one
 * env=NAME=VALUE per app.env entry in order, arg=<resolved_argv0>, one arg= per further word
 * of app.command, verbatim. Returns its length, or a negative errno: -E2BIG when longer than
 * SCH_VMROOT_CONF_MAX bytes (the agent's limit), -ENOBUFS when it fits that limit but not
 * <len>, -EINVAL for an env entry or argument holding a newline or NUL, or no command. */
int sch_vmroot_guest_conf(const struct sch_vmroot_params *p, const char *resolved_argv0, char *buf,
                          size_t len);

#endif

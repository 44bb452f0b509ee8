/* YAML documents as a node tree that keeps the file position of every node, so configuration
 * errors can read "file:line:col: key: message". Built on libyaml's event parser. Aliases and
 * tags are refused; only the first document of a stream is read. */
#ifndef CM_YAML_H
#define CM_YAML_H

#include <stddef.h>

enum cm_ynode_type {
    CM_YNODE_SCALAR,
    CM_YNODE_SEQ,
    CM_YNODE_MAP,
};

struct cm_ynode {
    enum cm_ynode_type type;
    unsigned line, col; /* 1-based */
    char *scalar;       /* CM_YNODE_SCALAR: NUL-terminated value */
    int quoted;         /* scalar was quoted: never null/bool by accident */
    size_t n;           /* SEQ: items; MAP: pairs */
    struct cm_ynode **items; /* SEQ: n items; MAP: 2n (key, value, key, value ...) */
};

/* Parses <len> bytes of <text>. Returns a new tree (free with cm_ynode_free()) or NULL with a
 * message "line:col: what" in <err> (at most <errlen> bytes). */
struct cm_ynode *cm_yaml_parse(const char *text, size_t len, char *err, size_t errlen);
/* Reads and parses <path>; messages are prefixed with the path. */
struct cm_ynode *cm_yaml_load(const char *path, char *err, size_t errlen);
/* Frees <node> and everything below; takes NULL. */
void cm_ynode_free(struct cm_ynode *node);
/* MAP lookup by key; NULL if <map> is not a map or has no such key. */
struct cm_ynode *cm_ynode_get(const struct cm_ynode *map, const char *key);

#endif

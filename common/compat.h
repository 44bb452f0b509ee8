/* Small shared macros: attributes, array size, container_of. Header-only. */
#ifndef CM_COMPAT_H
#define CM_COMPAT_H

#include <stddef.h>

#define CM_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#define CM_NORETURN __attribute__((noreturn))
#define CM_UNUSED __attribute__((unused))
#define CM_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define CM_CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#define CM_LIKELY(x) __builtin_expect(!!(x), 1)
#define CM_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define CM_MIN(a, b) ((a) < (b) ? (a) : (b))
#define CM_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif

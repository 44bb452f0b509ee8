#include "secret.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* The value node of <key> when it holds a value; NULL when absent, null or empty. */
static int value_node(struct cm_conf_ctx *ctx, const struct cm_ynode *map, const char *path,
                      const char *key, const struct cm_ynode **ret)
{
    const struct cm_ynode *v = cm_ynode_get(map, key);
    *ret = NULL;
    if (!v)
        return 0;
    if (v->type != CM_YNODE_SCALAR)
        return cm_conf_fail(ctx, v, path, key, "must be a string");
    if (v->scalar[0] == '\0' ||
        (!v->quoted && (strcmp(v->scalar, "~") == 0 || strcmp(v->scalar, "null") == 0)))
        return 0;
    *ret = v;
    return 0;
}

static int check_bytes(struct cm_conf_ctx *ctx, const struct cm_ynode *at, const char *path,
                       const char *key, const char *what, const char *s, size_t len, size_t min_len,
                       enum cm_secret_charset charset)
{
    if (len < min_len)
        return cm_conf_fail(ctx, at, path, key, "%s must be at least %zu bytes (it has %zu)", what,
                            min_len, len);
    if (len > CM_SECRET_MAX)
        return cm_conf_fail(ctx, at, path, key, "%s must be at most %d bytes", what, CM_SECRET_MAX);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (charset == CM_SECRET_TOKEN ? (c < 0x21 || c > 0x7e)
                                       : (c == '\0' || c == '\r' || c == '\n'))
            return cm_conf_fail(ctx, at, path, key,
                                charset == CM_SECRET_TOKEN
                                    ? "%s must be visible ASCII only (no blanks or control "
                                      "characters): byte %zu is 0x%02x"
                                    : "%s must not hold NUL or line breaks: byte %zu is 0x%02x",
                                what, i, c);
    }
    return 0;
}

/* Reads the secret file <name> into a new string. */
static int read_file(struct cm_conf_ctx *ctx, const struct cm_ynode *at, const char *path,
                     const char *key, const char *name, size_t min_len,
                     enum cm_secret_charset charset, char **ret)
{
    /* O_NONBLOCK: a FIFO named here must not hang the start (it is refused below). */
    int fd = open(name, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return cm_conf_fail(ctx, at, path, key, "cannot open '%s': %s", name, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        return cm_conf_fail(ctx, at, path, key, "cannot stat '%s': %s", name, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return cm_conf_fail(ctx, at, path, key, "'%s' is not a regular file", name);
    }
    if (st.st_mode & (S_IRWXG | S_IRWXO)) {
        close(fd);
        return cm_conf_fail(ctx, at, path, key,
                            "'%s' is open to group or others (mode %04o): it holds a secret, "
                            "chmod 600 it",
                            name, (unsigned)(st.st_mode & 07777));
    }
    /* The secret, an optional "\r\n", and one byte more to see that the file is too long. */
    char buf[CM_SECRET_MAX + 3];
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, sizeof(buf) - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            close(fd);
            explicit_bzero(buf, sizeof(buf));
            return cm_conf_fail(ctx, at, path, key, "cannot read '%s': %s", name, strerror(e));
        }
        if (n == 0 || (len += (size_t)n) == sizeof(buf))
            break;
    }
    close(fd);
    if (len && buf[len - 1] == '\n')
        len--;
    if (len && buf[len - 1] == '\r')
        len--;
    char what[64 + 32];
    snprintf(what, sizeof(what), "the secret in '%.64s'", name);
    int rc = check_bytes(ctx, at, path, key, what, buf, len, min_len, charset);
    char *s = rc == 0 ? strndup(buf, len) : NULL;
    explicit_bzero(buf, sizeof(buf));
    if (rc)
        return rc;
    if (!s)
        return cm_conf_fail(ctx, at, path, key, "out of memory");
    *ret = s;
    return 0;
}

int cm_conf_secret(struct cm_conf_ctx *ctx, const struct cm_ynode *map, const char *path,
                   const char *key, const char *file_key, size_t min_len,
                   enum cm_secret_charset charset, char **ret)
{
    const struct cm_ynode *inl, *file;
    if (value_node(ctx, map, path, key, &inl) || value_node(ctx, map, path, file_key, &file))
        return -EINVAL;
    if (inl && file)
        return cm_conf_fail(ctx, file, path, file_key, "set either %s or %s, not both", key,
                            file_key);
    if (file)
        return read_file(ctx, file, path, file_key, file->scalar, min_len, charset, ret);
    if (!inl) {
        *ret = NULL;
        return 0;
    }
    size_t len = strlen(inl->scalar);
    if (check_bytes(ctx, inl, path, key, "the secret", inl->scalar, len, min_len, charset))
        return -EINVAL;
    char *s = strdup(inl->scalar);
    if (!s)
        return cm_conf_fail(ctx, inl, path, key, "out of memory");
    *ret = s;
    return 0;
}

void cm_secret_free(char *s)
{
    if (!s)
        return;
    explicit_bzero(s, strlen(s));
    free(s);
}

const char *cm_bearer_token(const char *authorization, size_t *ret_len)
{
    if (!authorization)
        return NULL;
    const char *h = authorization;
    while (*h == ' ' || *h == '\t')
        h++;
    if (strncasecmp(h, "Bearer", 6) != 0 || (h[6] != ' ' && h[6] != '\t'))
        return NULL;
    h += 6;
    while (*h == ' ' || *h == '\t')
        h++;
    size_t n = strlen(h);
    while (n && (h[n - 1] == ' ' || h[n - 1] == '\t'))
        n--;
    if (n == 0)
        return NULL;
    *ret_len = n;
    return h;
}

int cm_secret_bearer_ok(const char *authorization, const char *secret)
{
    size_t n = 0;
    const char *h = cm_bearer_token(authorization, &n);
    if (!h || !secret)
        return 0;
    /* Digests of equal length, compared in constant time: neither a prefix that matches nor
     * the secret's length shows in the time taken. */
    unsigned char given[32], want[32];
    unsigned int gl = 0, wl = 0;
    if (!EVP_Digest(h, n, given, &gl, EVP_sha256(), NULL) ||
        !EVP_Digest(secret, strlen(secret), want, &wl, EVP_sha256(), NULL) || gl != 32 || wl != 32)
        return 0;
    return CRYPTO_memcmp(given, want, 32) == 0;
}

/* HMAC-SHA256(<secret>, <msg>) as lower-case hex into <out> (CM_EXEC_KEY_LEN + 1 bytes). */
static int hmac_hex(const char *secret, const unsigned char *msg, int n, char *out)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    out[0] = '\0';
    if (!secret || n < 0 || (size_t)n >= 256 ||
        !HMAC(EVP_sha256(), secret, (int)strlen(secret), msg, (size_t)n, md, &mdlen) ||
        mdlen * 2 != CM_EXEC_KEY_LEN)
        return -EIO;
    static const char hex[] = "0123456789abcdef";
    for (unsigned int i = 0; i < mdlen; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[CM_EXEC_KEY_LEN] = '\0';
    OPENSSL_cleanse(md, sizeof(md));
    return 0;
}

int cm_secret_exec_key(const char *secret, const char *id, char *out)
{
    unsigned char msg[256];
    int n = snprintf((char *)msg, sizeof(msg), "berth-exec %s", id);
    return hmac_hex(secret, msg, n, out);
}

int cm_secret_relay_mac(const char *secret, const char *id, const char *channel, int64_t ts,
                        char *out)
{
    unsigned char msg[256];
    int n = snprintf((char *)msg, sizeof(msg), "berth-relay %s %s %" PRId64, id, channel, ts);
    return hmac_hex(secret, msg, n, out);
}

int cm_secret_relay_hello(const char *secret, const char *id, const char *channel, int64_t now_s,
                          char *out)
{
    char mac[CM_EXEC_KEY_LEN + 1];
    size_t il = strlen(id);
    out[0] = '\0';
    if (il == 0 || il > CM_RELAY_ID_MAX || strspn(id, CM_RELAY_ID_CHARS) != il ||
        (strcmp(channel, "app") != 0 && strcmp(channel, "ports") != 0))
        return -EINVAL;
    if (cm_secret_relay_mac(secret, id, channel, now_s, mac) < 0)
        return -EIO;
    int n = snprintf(out, CM_RELAY_HELLO_MAX, "BERTH-RELAY %s %s %" PRId64 " %s\r\n", id, channel,
                     now_s, mac);
    OPENSSL_cleanse(mac, sizeof(mac));
    if (n < 0 || n >= CM_RELAY_HELLO_MAX) {
        out[0] = '\0';
        return -EINVAL;
    }
    return n;
}

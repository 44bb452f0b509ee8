#include "gateway/tls.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ocsp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/time.h"
#include "gateway/config.h"

#define OCSP_MAX (64 * 1024) /* a stapled response is a few KB */

/* What ALPN can pick, in our order of preference (wire format): h2 first unless gateway.h2
 * is disabled. */
static const unsigned char alpn_h2[] = "\x02h2\x08http/1.1";
static const unsigned char alpn_h1[] = "\x08http/1.1";

struct ticket_key {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
    cm_usec_t created; /* monotonic; 0: none */
    cm_usec_t retired; /* when a newer key took over encrypting; 0: still current */
};

struct tls_cert {
    SSL_CTX *ctx;
    X509 *x509;          /* borrowed from ctx */
    unsigned char *ocsp; /* DER, or NULL */
    size_t ocsp_len;
    struct gw_tls_ocsp_window ocsp_valid; /* stapled only within it */
    int stale_logged;
};

struct gw_tls {
    unsigned refs; /* its connections' SSLs, and 1 while it is the current one (publish_lock) */
    struct tls_cert *certs;
    size_t n_certs;
    cm_usec_t key_lifetime;
    pthread_mutex_t keys_lock; /* the loops' handshakes share the ticket keys */
    struct ticket_key cur, prev;
};

/* The current configuration, and how many are alive (the current one, and older ones that
 * connections made before a reload still use): both under publish_lock. */
static struct gw_tls *current;
static unsigned n_live;
static pthread_mutex_t publish_lock = PTHREAD_MUTEX_INITIALIZER;
/* The SSL ex_data slot holding an SSL's gw_tls: released when the SSL is freed. */
static int ssl_idx = -1;
static pthread_once_t ssl_idx_once = PTHREAD_ONCE_INIT;

static void tls_free(struct gw_tls *t);

/* Drops a reference to <t> (publish_lock held); returns <t> when it was the last (the caller
 * frees it after unlocking), else NULL. */
static struct gw_tls *unref_locked(struct gw_tls *t)
{
    if (!t || --t->refs)
        return NULL;
    n_live--;
    return t;
}

static void on_ssl_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    if (!ptr)
        return;
    pthread_mutex_lock(&publish_lock);
    struct gw_tls *dead = unref_locked(ptr);
    pthread_mutex_unlock(&publish_lock);
    tls_free(dead);
}

/* Nothing duplicates a connection's SSL (SSL_dup() would copy the slot without a reference):
 * a copy gets an empty slot. */
static int on_ssl_dup(CRYPTO_EX_DATA *to, const CRYPTO_EX_DATA *from, void **from_d, int idx,
                      long argl, void *argp)
{
    (void)to, (void)from, (void)idx, (void)argl, (void)argp;
    *from_d = NULL;
    return 1;
}

static void ssl_idx_init(void)
{
    ssl_idx = SSL_get_ex_new_index(0, NULL, NULL, on_ssl_dup, on_ssl_free);
}

void gw_tls_errors(char *buf, size_t len)
{
    size_t n = 0;
    buf[0] = '\0';
    unsigned long e;
    while ((e = ERR_get_error()) != 0 && n + 2 < len) {
        if (n)
            buf[n++] = ';', buf[n++] = ' ';
        ERR_error_string_n(e, buf + n, len - n);
        n += strlen(buf + n);
    }
    if (!n)
        snprintf(buf, len, "no detail from OpenSSL");
}

/* ------------------------------------------------------------------ session tickets */

static int new_key(struct ticket_key *k, cm_usec_t now)
{
    if (RAND_bytes(k->name, sizeof(k->name)) != 1 || RAND_bytes(k->aes, sizeof(k->aes)) != 1 ||
        RAND_bytes(k->hmac, sizeof(k->hmac)) != 1)
        return -1;
    k->created = now;
    return 0;
}

static int hmac_key(EVP_MAC_CTX *hctx, const struct ticket_key *k)
{
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)k->hmac, sizeof(k->hmac)),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end()};
    return EVP_MAC_CTX_set_params(hctx, params) == 1 ? 0 : -1;
}

/* OpenSSL asks for a key to encrypt a new ticket (enc = 1) or names the key of a ticket to
 * decrypt. A key encrypts for key_lifetime, then decrypts for as long after it was retired
 * (a ticket it made is
 * renewed under the newer key): a stolen ticket key exposes at most two lifetimes of
 * sessions, and nothing of it is ever written anywhere. Returns 1 (go on), 2 (go on, issue a
 * new ticket), 0 (unknown key: a full handshake), -1 (error). */
static int ticket_cb(SSL *s, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     EVP_MAC_CTX *hctx, int enc)
{
    struct gw_tls *t = SSL_CTX_get_app_data(SSL_get_SSL_CTX(s));
    if (!t)
        return -1;
    cm_usec_t now = cm_now_mono();
    struct ticket_key k;
    int rc = 0;
    pthread_mutex_lock(&t->keys_lock);
    if (!t->cur.created || now - t->cur.created >= t->key_lifetime) {
        struct ticket_key fresh;
        if (new_key(&fresh, now) == 0) {
            t->prev = t->cur;
            t->prev.retired = now;
            t->cur = fresh;
        }
    }
    if (enc) {
        k = t->cur;
        rc = k.created ? 1 : -1;
    } else if (t->cur.created && memcmp(name, t->cur.name, 16) == 0) {
        k = t->cur;
        rc = 1;
    } else if (t->prev.created && memcmp(name, t->prev.name, 16) == 0 &&
               now - t->prev.retired < t->key_lifetime) {
        k = t->prev;
        rc = 2;
    }
    pthread_mutex_unlock(&t->keys_lock);
    if (rc <= 0)
        return rc;
    if (enc) {
        memcpy(name, k.name, 16);
        if (RAND_bytes(iv, 16) != 1 ||
            EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv) != 1)
            rc = -1;
    } else if (EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv) != 1) {
        rc = -1;
    }
    if (rc > 0 && hmac_key(hctx, &k) < 0)
        rc = -1;
    OPENSSL_cleanse(&k, sizeof(k));
    return rc;
}

/* ------------------------------------------------------------------ SNI, ALPN, OCSP */

/* The certificate whose names cover the client's server name (X509_check_host: SAN DNS names,
 * one-label wildcards); none: the default (the first), as a server without SNI does. */
static int servername_cb(SSL *s, int *alert, void *arg)
{
    struct gw_tls *t = arg;
    (void)alert;
    const char *name = SSL_get_servername(s, TLSEXT_NAMETYPE_host_name);
    if (!name || !*name)
        return SSL_TLSEXT_ERR_OK;
    for (size_t i = 0; i < t->n_certs; i++) {
        if (X509_check_host(t->certs[i].x509, name, strlen(name), 0, NULL) == 1) {
            if (i > 0 && !SSL_set_SSL_CTX(s, t->certs[i].ctx))
                return SSL_TLSEXT_ERR_ALERT_FATAL;
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_OK;
}

static int alpn_cb(SSL *s, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)s;
    unsigned char *o;
    const unsigned char *protos = arg; /* alpn_h2 or alpn_h1: no zero byte inside */
    if (SSL_select_next_proto(&o, outlen, protos, (unsigned)strlen((const char *)protos), in,
                              inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = o;
    return SSL_TLSEXT_ERR_OK;
}

static int status_cb(SSL *s, void *arg)
{
    struct tls_cert *c = arg;
    if (!c || !c->ocsp)
        return SSL_TLSEXT_ERR_NOACK;
    if (!gw_tls_ocsp_fresh(&c->ocsp_valid, time(NULL))) {
        /* A stale staple fails the clients that check it; none only makes them ask the CA. */
        if (!__atomic_exchange_n(&c->stale_logged, 1, __ATOMIC_RELAXED))
            cm_log_warn("tls", "an OCSP response is outside its validity: not stapled; put a "
                               "fresh one in place and send SIGHUP");
        return SSL_TLSEXT_ERR_NOACK;
    }
    unsigned char *copy = OPENSSL_malloc(c->ocsp_len); /* the SSL frees it */
    if (!copy)
        return SSL_TLSEXT_ERR_NOACK;
    memcpy(copy, c->ocsp, c->ocsp_len);
    if (!SSL_set_tlsext_status_ocsp_resp(s, copy, (long)c->ocsp_len)) {
        OPENSSL_free(copy);
        return SSL_TLSEXT_ERR_NOACK;
    }
    return SSL_TLSEXT_ERR_OK;
}

/* <leaf>'s issuer name hashed with <md>, as an OCSP CertID carries it; its length, or 0. */
static unsigned issuer_name_hash(const X509 *leaf, const EVP_MD *md, unsigned char *out)
{
    unsigned char *der = NULL;
    int len = i2d_X509_NAME(X509_get_issuer_name(leaf), &der);
    unsigned n = 0;
    if (len <= 0 || !EVP_Digest(der, (size_t)len, out, &n, md, NULL))
        n = 0;
    OPENSSL_free(der);
    return n;
}

int gw_tls_ocsp_fresh(const struct gw_tls_ocsp_window *v, time_t now)
{
    return now >= v->from && (v->until == 0 || now < v->until);
}

int gw_tls_ocsp_check(const unsigned char *der, size_t len, const X509 *leaf,
                      struct gw_tls_ocsp_window *valid, char *why, size_t whylen)
{
    const unsigned char *p = der;
    OCSP_RESPONSE *r = d2i_OCSP_RESPONSE(NULL, &p, (long)len);
    OCSP_BASICRESP *bs = NULL;
    const char *fail = NULL;
    *valid = (struct gw_tls_ocsp_window){0, 0};
    if (!r || p != der + len || OCSP_response_status(r) != OCSP_RESPONSE_STATUS_SUCCESSFUL ||
        !(bs = OCSP_response_get1_basic(r))) {
        fail = "not a successful OCSP response, DER and nothing after it (as openssl ocsp "
               "-respout writes it)";
        goto out;
    }
    /* The single response about this certificate: its serial number and its issuer's name. */
    OCSP_SINGLERESP *single = NULL;
    for (int i = 0; i < OCSP_resp_count(bs) && !single; i++) {
        OCSP_SINGLERESP *sr = OCSP_resp_get0(bs, i);
        ASN1_OCTET_STRING *name_hash = NULL;
        ASN1_OBJECT *md_oid = NULL;
        ASN1_INTEGER *serial = NULL;
        if (!OCSP_id_get0_info(&name_hash, &md_oid, NULL, &serial,
                               (OCSP_CERTID *)OCSP_SINGLERESP_get0_id(sr)))
            continue;
        const EVP_MD *md = EVP_get_digestbyobj(md_oid);
        unsigned char h[EVP_MAX_MD_SIZE];
        unsigned hl = md ? issuer_name_hash(leaf, md, h) : 0;
        if (serial && ASN1_INTEGER_cmp(serial, X509_get0_serialNumber(leaf)) == 0 && hl &&
            name_hash && (unsigned)ASN1_STRING_length(name_hash) == hl &&
            memcmp(ASN1_STRING_get0_data(name_hash), h, hl) == 0)
            single = sr;
    }
    if (!single) {
        fail = "the OCSP response is about another certificate (serial number or issuer)";
        goto out;
    }
    int reason;
    ASN1_GENERALIZEDTIME *rev, *thisupd, *nextupd;
    int status = OCSP_single_get0_status(single, &reason, &rev, &thisupd, &nextupd);
    if (status != V_OCSP_CERTSTATUS_GOOD) {
        fail = status == V_OCSP_CERTSTATUS_REVOKED
                   ? "the OCSP response says the certificate is revoked"
                   : "the OCSP response does not say the certificate is good";
        goto out;
    }
    struct tm tm;
    if (!thisupd || !ASN1_TIME_to_tm(thisupd, &tm)) {
        fail = "the OCSP response has no usable thisUpdate";
        goto out;
    }
    /* From thisUpdate less the 5 minutes of clock skew a client allows (our clock may be
     * behind the responder's), until nextUpdate exactly. */
    valid->from = timegm(&tm) - 300;
    if (nextupd) {
        if (!ASN1_TIME_to_tm(nextupd, &tm)) {
            fail = "the OCSP response has no usable nextUpdate";
            goto out;
        }
        valid->until = timegm(&tm);
    }
out:
    if (fail)
        snprintf(why, whylen, "%s", fail);
    OCSP_BASICRESP_free(bs);
    OCSP_RESPONSE_free(r);
    return fail ? -1 : 0;
}

/* Reads the DER OCSP response at <path> (at most OCSP_MAX bytes) and checks it parses. */
static int load_ocsp(const char *path, struct tls_cert *c, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size <= 0 ||
        st.st_size > OCSP_MAX) {
        snprintf(err, errlen, "%s: %s", path,
                 fd < 0 ? strerror(errno) : "not a regular file of 1 byte to 64 KiB");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    c->ocsp = malloc((size_t)st.st_size);
    ssize_t n = c->ocsp ? read(fd, c->ocsp, (size_t)st.st_size) : -1;
    close(fd);
    if (n != st.st_size) {
        snprintf(err, errlen, "%s: cannot read it", path);
        return -1;
    }
    c->ocsp_len = (size_t)n;
    char why[256];
    if (gw_tls_ocsp_check(c->ocsp, c->ocsp_len, c->x509, &c->ocsp_valid, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "%s: %s", path, why);
        return -1;
    }
    /* Out of date is not a config error: a restart or a certificate rotation must not wait
     * for whoever fetches the responses. It is not stapled meanwhile. */
    if (!gw_tls_ocsp_fresh(&c->ocsp_valid, time(NULL))) {
        cm_log_warn("tls",
                    "%s: the OCSP response is outside its validity (expired, or not yet "
                    "valid): not stapled until a fresh one is loaded",
                    path);
        c->stale_logged = 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ contexts */

static SSL_CTX *new_ctx(const struct gw_tls_config *tc, const struct gw_tls_cert *cc,
                        struct gw_tls *t, char *err, size_t errlen)
{
    char why[512];
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        gw_tls_errors(why, sizeof(why));
        snprintf(err, errlen, "cannot create a TLS context: %s", why);
        return NULL;
    }
    SSL_CTX_set_app_data(ctx, t);
    const char *what = "settings";
    if (!SSL_CTX_set_min_proto_version(ctx, tc->min_version) ||
        !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION))
        goto fail;
    what = "gateway.tls.ciphers";
    if (!SSL_CTX_set_cipher_list(ctx, tc->ciphers))
        goto fail;
    what = "gateway.tls.ciphersuites";
    if (!SSL_CTX_set_ciphersuites(ctx, tc->ciphersuites))
        goto fail;
    /* Our order of the suites, not the client's: the list is strongest first, and a client
     * cannot steer toward the weakest one it shares with us. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_dh_auto(ctx, 1);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"berth", 5);
    if (tc->session_tickets) {
        SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
        /* a session lives as long as a ticket can be decrypted (OpenSSL's default: 2 h) */
        SSL_CTX_set_timeout(ctx, (long)(2 * tc->ticket_key_lifetime / CM_USEC_PER_SEC));
    } else {
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
        SSL_CTX_set_num_tickets(ctx, 0);
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    }
    SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, (void *)(tc->alpn_h2 ? alpn_h2 : alpn_h1));
    what = cc->cert;
    if (SSL_CTX_use_certificate_chain_file(ctx, cc->cert) != 1)
        goto fail;
    what = cc->key;
    if (SSL_CTX_use_PrivateKey_file(ctx, cc->key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1)
        goto fail;
    return ctx;
fail:
    gw_tls_errors(why, sizeof(why));
    snprintf(err, errlen, "%s: %s", what, why);
    SSL_CTX_free(ctx);
    return NULL;
}

static void tls_free(struct gw_tls *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n_certs; i++) {
        SSL_CTX_free(t->certs[i].ctx);
        free(t->certs[i].ocsp);
    }
    free(t->certs);
    OPENSSL_cleanse(&t->cur, sizeof(t->cur));
    OPENSSL_cleanse(&t->prev, sizeof(t->prev));
    pthread_mutex_destroy(&t->keys_lock);
    free(t);
}

struct gw_tls *gw_tls_new(const struct gw_config *gc, char *err, size_t errlen)
{
    const struct gw_tls_config *tc = &gc->tls;
    struct gw_tls *t = calloc(1, sizeof(*t));
    if (!t || !(t->certs = calloc(tc->n_certs ? tc->n_certs : 1, sizeof(*t->certs)))) {
        free(t);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_once(&ssl_idx_once, ssl_idx_init);
    if (ssl_idx < 0) {
        free(t->certs);
        free(t);
        snprintf(err, errlen, "no SSL ex_data index");
        return NULL;
    }
    pthread_mutex_init(&t->keys_lock, NULL);
    t->key_lifetime = tc->ticket_key_lifetime;
    for (size_t i = 0; i < tc->n_certs; i++) {
        struct tls_cert *c = &t->certs[i];
        t->n_certs++;
        if (!(c->ctx = new_ctx(tc, &tc->certs[i], t, err, errlen)))
            goto fail;
        c->x509 = SSL_CTX_get0_certificate(c->ctx);
        if (tc->certs[i].ocsp && load_ocsp(tc->certs[i].ocsp, c, err, errlen) < 0)
            goto fail;
        SSL_CTX_set_tlsext_status_cb(c->ctx, status_cb);
        SSL_CTX_set_tlsext_status_arg(c->ctx, c);
    }
    if (!t->n_certs) {
        snprintf(err, errlen, "no certificate");
        goto fail;
    }
    SSL_CTX_set_tlsext_servername_callback(t->certs[0].ctx, servername_cb);
    SSL_CTX_set_tlsext_servername_arg(t->certs[0].ctx, t);
    return t;
fail:
    tls_free(t);
    return NULL;
}

void gw_tls_publish(struct gw_tls *t)
{
    pthread_mutex_lock(&publish_lock);
    if (current && t->key_lifetime == current->key_lifetime) {
        /* a reload keeps the ticket keys: clients resume across it */
        pthread_mutex_lock(&current->keys_lock);
        t->cur = current->cur;
        t->prev = current->prev;
        pthread_mutex_unlock(&current->keys_lock);
    }
    t->refs = 1;
    n_live++;
    struct gw_tls *dead = unref_locked(current); /* its connections keep it until they end */
    current = t;
    pthread_mutex_unlock(&publish_lock);
    tls_free(dead);
}

SSL *gw_tls_ssl_new(void)
{
    /* The reference is taken under the lock, the SSL made outside it (the loops' accepts
     * do not wait on one another). */
    pthread_mutex_lock(&publish_lock);
    struct gw_tls *t = current;
    if (t)
        t->refs++;
    pthread_mutex_unlock(&publish_lock);
    if (!t)
        return NULL;
    SSL *ssl = SSL_new(t->certs[0].ctx);
    if (ssl && SSL_set_ex_data(ssl, ssl_idx, t))
        return ssl; /* SSL_free() releases t (on_ssl_free()) */
    if (ssl)        /* its slot is empty: on_ssl_free() releases nothing */
        SSL_free(ssl);
    pthread_mutex_lock(&publish_lock);
    struct gw_tls *dead = unref_locked(t);
    pthread_mutex_unlock(&publish_lock);
    tls_free(dead);
    return NULL;
}

unsigned gw_tls_live(void)
{
    pthread_mutex_lock(&publish_lock);
    unsigned n = n_live;
    pthread_mutex_unlock(&publish_lock);
    return n;
}

void gw_tls_free_all(void)
{
    pthread_mutex_lock(&publish_lock);
    struct gw_tls *dead = unref_locked(current);
    current = NULL;
    pthread_mutex_unlock(&publish_lock);
    tls_free(dead);
}

int gw_tls_alpn_h2(SSL *ssl)
{
    const unsigned char *p = NULL;
    unsigned len = 0;
    SSL_get0_alpn_selected(ssl, &p, &len);
    return len == 2 && p[0] == 'h' && p[1] == '2';
}

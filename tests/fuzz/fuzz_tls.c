/* Fuzz target: the gateway's TLS server side (gateway/tls.c contexts, gateway/stream.c's TLS
 * reads) fed what a client could send. The input is written, in pieces, into one end of a
 * socket pair whose other end is a gw_stream speaking TLS as the gateway's TLS listener does
 * (the same gw_tls, built from a certificate made here once); the loop runs until the stream
 * reports an end or the input is used up and nothing more happens. Whatever OpenSSL answers
 * (a ServerHello, an alert) is drained.
 *
 * Beyond "no crash, no leak, no hang": the stream ends (EOF or error) or stays open with
 * nothing read, and never delivers plaintext before its handshake finished.
 *
 * Input: byte 0 seeds where the bytes are split between writes; the rest is the stream. */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gateway/config.h"
#include "gateway/stream.h"
#include "gateway/tls.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "fuzz_tls: " __VA_ARGS__);                                                 \
        fprintf(stderr, "\n");                                                                     \
        abort();                                                                                   \
    } while (0)

static struct gw_tls *tls;
static struct event_base *base;
static char scratch_buf[16384];
static struct gw_stream_scratch scratch = {scratch_buf, sizeof(scratch_buf)};

/* A self-signed P-256 certificate for "localhost" in two temporary files. */
static void make_cert(char *cert_path, char *key_path)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    if (!k || !x)
        FAIL("cannot make a key");
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, k);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1,
                               0);
    X509_set_issuer_name(x, n);
    if (!X509_sign(x, k, EVP_sha256()))
        FAIL("cannot sign");
    int cf = mkstemp(cert_path), kf = mkstemp(key_path);
    FILE *c = cf >= 0 ? fdopen(cf, "w") : NULL, *kk = kf >= 0 ? fdopen(kf, "w") : NULL;
    if (!c || !kk || !PEM_write_X509(c, x) || !PEM_write_PrivateKey(kk, k, NULL, NULL, 0, NULL, NULL))
        FAIL("cannot write the certificate");
    fclose(c);
    fclose(kk);
    X509_free(x);
    EVP_PKEY_free(k);
}

static void setup(void)
{
    char cert[] = "/tmp/fuzz_tls_cert.XXXXXX", key[] = "/tmp/fuzz_tls_key.XXXXXX";
    make_cert(cert, key);
    struct gw_tls_cert c = {.cert = cert, .key = key, .ocsp = NULL};
    struct gw_config gc;
    memset(&gc, 0, sizeof(gc));
    gc.tls.certs = &c;
    gc.tls.n_certs = 1;
    gc.tls.min_version = 0x0303;
    gc.tls.ciphers = (char *)"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256";
    gc.tls.ciphersuites = (char *)"TLS_AES_128_GCM_SHA256";
    gc.tls.session_tickets = 1;
    gc.tls.ticket_key_lifetime = 3600000000ull;
    char err[512];
    tls = gw_tls_new(&gc, err, sizeof(err));
    unlink(cert);
    unlink(key);
    if (!tls)
        FAIL("gw_tls_new: %s", err);
    gw_tls_publish(tls);
    base = event_base_new();
    if (!base)
        FAIL("event_base_new");
}

struct run {
    int ended;
    size_t plaintext;
};

static void on_read(struct gw_stream *s, void *arg)
{
    struct run *r = arg;
    size_t n = evbuffer_get_length(s->in);
    if (n && !gw_stream_tls_ready(s))
        FAIL("plaintext before the handshake finished");
    r->plaintext += n;
    evbuffer_drain(s->in, n);
}

static void on_event(struct gw_stream *s, short what, void *arg)
{
    (void)s, (void)what;
    ((struct run *)arg)->ended = 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!tls)
        setup();
    if (size < 1)
        return 0;
    unsigned seed = data[0];
    data++, size--;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        FAIL("socketpair: %s", strerror(errno));
    struct gw_stream s;
    struct run r = {0, 0};
    if (gw_stream_init(&s, base, sv[0], &scratch) < 0 ||
        gw_stream_set_ssl(&s, gw_tls_ssl_new()) < 0)
        FAIL("stream set-up");
    gw_stream_setcb(&s, on_read, NULL, on_event, &r);
    gw_stream_read_enable(&s);
    size_t off = 0;
    char sink[65536];
    for (int round = 0; round < 64 && !r.ended; round++) {
        if (off < size) {
            size_t piece = 1 + (seed * 131u + (unsigned)round * 17u) % 1024u;
            if (piece > size - off)
                piece = size - off;
            ssize_t w = write(sv[1], data + off, piece);
            if (w > 0)
                off += (size_t)w;
        } else if (round > 0 && off == size) {
            shutdown(sv[1], SHUT_WR); /* the client is done: EOF next */
            off = size + 1;
        }
        event_base_loop(base, EVLOOP_NONBLOCK);
        while (read(sv[1], sink, sizeof(sink)) > 0) /* the server's answers */
            ;
        if (off > size && round > 8)
            break;
    }
    gw_stream_fini(&s);
    close(sv[1]);
    return 0;
}

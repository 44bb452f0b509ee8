/* Unit tests of gateway/tls.c: the check of an OCSP response before it is stapled (responses
 * built here with OpenSSL, a CA, a leaf it issued, the CA as responder, at chosen times, so
 * that validity is tested without waiting for it), and the life of a configuration a reload
 * replaced (as long as an SSL made under it). */
#include <openssl/evp.h>
#include <openssl/ocsp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/time.h"
#include "gateway/config.h"
#include "gateway/tls.h"
#include "tests/harness/test.h"

static EVP_PKEY *ca_key, *leaf_key;
static X509 *ca, *ca2, *leaf, *other, *twin;

static X509 *make_cert(const char *cn, long serial, EVP_PKEY *key, X509 *issuer,
                       EVP_PKEY *issuer_key)
{
    X509 *x = X509_new();
    CHECK(x != NULL);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
    X509_set_pubkey(x, key);
    CHECK(X509_sign(x, issuer_key, EVP_sha256()) > 0);
    return x;
}

static void teardown(void)
{
    X509_free(ca);
    X509_free(ca2);
    X509_free(leaf);
    X509_free(other);
    X509_free(twin);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(leaf_key);
}

static void setup(void)
{
    if (ca)
        return;
    atexit(teardown);
    ca_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    leaf_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    CHECK(ca_key && leaf_key);
    ca = make_cert("test ca", 1, ca_key, NULL, ca_key);
    ca2 = make_cert("another ca", 2, ca_key, NULL, ca_key); /* same key, another name */
    leaf = make_cert("localhost", 1000, leaf_key, ca, ca_key);
    other = make_cert("elsewhere", 1001, leaf_key, ca, ca_key);
    twin = make_cert("localhost", 1000, leaf_key, ca2, ca_key); /* leaf's serial, ca2's */
}

/* A DER OCSP response about <about> (issued by <issuer>) with <status>, thisUpdate
 * <this_off> and nextUpdate <next_off> seconds from now (none when <has_next> is 0). */
static int make_resp(X509 *about, X509 *issuer, int status, long this_off, long next_off,
                     int has_next, unsigned char **der)
{
    OCSP_BASICRESP *bs = OCSP_BASICRESP_new();
    OCSP_CERTID *id = OCSP_cert_to_id(EVP_sha1(), about, issuer);
    CHECK(bs && id);
    ASN1_TIME *t_this = X509_gmtime_adj(NULL, this_off);
    ASN1_TIME *t_next = has_next ? X509_gmtime_adj(NULL, next_off) : NULL;
    ASN1_TIME *t_rev = status == V_OCSP_CERTSTATUS_REVOKED ? X509_gmtime_adj(NULL, -60) : NULL;
    CHECK(OCSP_basic_add1_status(bs, id, status, status == V_OCSP_CERTSTATUS_REVOKED ? 1 : -1,
                                 t_rev, t_this, t_next) != NULL);
    CHECK(OCSP_basic_sign(bs, issuer, ca_key, EVP_sha256(), NULL, 0) == 1);
    OCSP_RESPONSE *r = OCSP_response_create(OCSP_RESPONSE_STATUS_SUCCESSFUL, bs);
    CHECK(r != NULL);
    *der = NULL;
    int len = i2d_OCSP_RESPONSE(r, der);
    CHECK(len > 0);
    OCSP_RESPONSE_free(r);
    OCSP_BASICRESP_free(bs);
    OCSP_CERTID_free(id);
    ASN1_TIME_free(t_this);
    ASN1_TIME_free(t_next);
    ASN1_TIME_free(t_rev);
    return len;
}

static int check(X509 *about, X509 *issuer, int status, long this_off, long next_off, int has_next,
                 struct gw_tls_ocsp_window *v, char *why, size_t whylen)
{
    unsigned char *der;
    int len = make_resp(about, issuer, status, this_off, next_off, has_next, &der);
    int rc = gw_tls_ocsp_check(der, (size_t)len, leaf, v, why, whylen);
    OPENSSL_free(der);
    return rc;
}

TEST(a_good_response_is_stapled_from_this_update_until_next_update)
{
    setup();
    struct gw_tls_ocsp_window v;
    time_t now = time(NULL);
    char why[256] = "";
    CHECK_MSG(check(leaf, ca, V_OCSP_CERTSTATUS_GOOD, -60, 86400, 1, &v, why, sizeof(why)) == 0,
              "%s", why);
    CHECK(v.from >= now - 60 - 300 - 5 && v.from <= now - 60 - 300 + 5);
    CHECK(v.until >= now + 86400 - 5 && v.until <= now + 86400 + 5);
    CHECK(gw_tls_ocsp_fresh(&v, now));
    CHECK(gw_tls_ocsp_fresh(&v, v.until - 1));
    CHECK(!gw_tls_ocsp_fresh(&v, v.until)); /* not a second past nextUpdate */
    CHECK(gw_tls_ocsp_fresh(&v, v.from));
    CHECK(!gw_tls_ocsp_fresh(&v, v.from - 1));
    /* no nextUpdate: newer information is always there, so it never ends */
    CHECK_MSG(check(leaf, ca, V_OCSP_CERTSTATUS_GOOD, -60, 0, 0, &v, why, sizeof(why)) == 0, "%s",
              why);
    CHECK(v.until == 0 && gw_tls_ocsp_fresh(&v, now + 10 * 365 * 86400L));
}

TEST(expired_and_future_responses_load_but_are_not_stapled)
{
    setup();
    struct gw_tls_ocsp_window v;
    time_t now = time(NULL);
    char why[256] = "";
    CHECK(check(leaf, ca, V_OCSP_CERTSTATUS_GOOD, -7200, -3600, 1, &v, why, sizeof(why)) == 0);
    CHECK(!gw_tls_ocsp_fresh(&v, now));
    CHECK(check(leaf, ca, V_OCSP_CERTSTATUS_GOOD, 3600, 7200, 1, &v, why, sizeof(why)) == 0);
    CHECK(!gw_tls_ocsp_fresh(&v, now));
    CHECK(gw_tls_ocsp_fresh(&v, now + 3600));
    /* a responder's clock a little ahead of ours: within the 5 minutes, stapled */
    CHECK(check(leaf, ca, V_OCSP_CERTSTATUS_GOOD, 120, 7200, 1, &v, why, sizeof(why)) == 0);
    CHECK(gw_tls_ocsp_fresh(&v, now));
}

TEST(a_response_about_another_certificate_is_refused)
{
    setup();
    struct gw_tls_ocsp_window v;
    char why[256] = "";
    /* another serial number, same issuer */
    CHECK(check(other, ca, V_OCSP_CERTSTATUS_GOOD, -60, 3600, 1, &v, why, sizeof(why)) < 0);
    CHECK_CONTAINS(why, "another certificate");
    /* the same serial number from an issuer of another name */
    why[0] = '\0';
    CHECK(check(twin, ca2, V_OCSP_CERTSTATUS_GOOD, -60, 3600, 1, &v, why, sizeof(why)) < 0);
    CHECK_CONTAINS(why, "another certificate");
}

TEST(revoked_and_unknown_are_refused)
{
    setup();
    struct gw_tls_ocsp_window v;
    char why[256] = "";
    CHECK(check(leaf, ca, V_OCSP_CERTSTATUS_REVOKED, -60, 3600, 1, &v, why, sizeof(why)) < 0);
    CHECK_CONTAINS(why, "revoked");
    CHECK(check(leaf, ca, V_OCSP_CERTSTATUS_UNKNOWN, -60, 3600, 1, &v, why, sizeof(why)) < 0);
    CHECK_CONTAINS(why, "does not say");
}

TEST(garbage_trailing_bytes_and_unsuccessful_responses_are_refused)
{
    setup();
    struct gw_tls_ocsp_window v;
    char why[256] = "";
    static const unsigned char junk[] = "not DER at all";
    CHECK(gw_tls_ocsp_check(junk, sizeof(junk), leaf, &v, why, sizeof(why)) < 0);
    CHECK_CONTAINS(why, "not a successful OCSP response");
    OCSP_RESPONSE *r = OCSP_response_create(OCSP_RESPONSE_STATUS_TRYLATER, NULL);
    unsigned char *der = NULL;
    int len = i2d_OCSP_RESPONSE(r, &der);
    CHECK(len > 0);
    CHECK(gw_tls_ocsp_check(der, (size_t)len, leaf, &v, why, sizeof(why)) < 0);
    OPENSSL_free(der);
    OCSP_RESPONSE_free(r);
    len = make_resp(leaf, ca, V_OCSP_CERTSTATUS_GOOD, -60, 3600, 1, &der);
    CHECK(gw_tls_ocsp_check(der, (size_t)len, leaf, &v, why, sizeof(why)) == 0);
    /* every prefix of a good one: refused, never read past its end */
    for (int n = 0; n < len; n++)
        CHECK(gw_tls_ocsp_check(der, (size_t)n, leaf, &v, why, sizeof(why)) < 0);
    /* a good one with bytes after it: refused (some clients reject what is stapled then) */
    unsigned char *more = OPENSSL_malloc((size_t)len + 1);
    CHECK(more != NULL);
    memcpy(more, der, (size_t)len);
    more[len] = 0;
    CHECK(gw_tls_ocsp_check(more, (size_t)len + 1, leaf, &v, why, sizeof(why)) < 0);
    CHECK_CONTAINS(why, "nothing after it");
    OPENSSL_free(more);
    OPENSSL_free(der);
}

/* ------------------------------------------------------------------ reloads */

/* A TLS configuration of one certificate (leaf and its key, written to <dir>). */
static struct gw_tls *make_tls(const char *dir)
{
    char cert[256], key[256], err[512];
    snprintf(cert, sizeof(cert), "%s/cert.pem", dir);
    snprintf(key, sizeof(key), "%s/key.pem", dir);
    FILE *f = fopen(cert, "w");
    CHECK(f && PEM_write_X509(f, leaf) == 1);
    fclose(f);
    f = fopen(key, "w");
    CHECK(f && PEM_write_PrivateKey(f, leaf_key, NULL, NULL, 0, NULL, NULL) == 1);
    fclose(f);
    static struct gw_tls_cert tc;
    tc = (struct gw_tls_cert){cert, key, NULL};
    struct gw_config gc;
    memset(&gc, 0, sizeof(gc));
    gc.tls = (struct gw_tls_config){.certs = &tc,
                                    .n_certs = 1,
                                    .min_version = 0x0303,
                                    .ciphers = (char *)"ECDHE+AESGCM",
                                    .ciphersuites = (char *)"TLS_AES_128_GCM_SHA256",
                                    .session_tickets = 1,
                                    .ticket_key_lifetime = 3600 * CM_USEC_PER_SEC,
                                    .alpn_h2 = 1};
    struct gw_tls *t = gw_tls_new(&gc, err, sizeof(err));
    CHECK_MSG(t != NULL, "%s", err);
    return t;
}

TEST(a_replaced_configuration_lives_as_long_as_its_connections)
{
    setup();
    char dir[] = "/tmp/berth-test-tls-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    CHECK(gw_tls_ssl_new() == NULL); /* none published yet */
    gw_tls_publish(make_tls(dir));
    CHECK_UINT_EQ(gw_tls_live(), 1);
    SSL *a = gw_tls_ssl_new(), *b = gw_tls_ssl_new();
    CHECK(a && b);
    gw_tls_publish(make_tls(dir)); /* a reload: a and b keep the first */
    CHECK_UINT_EQ(gw_tls_live(), 2);
    SSL *c = gw_tls_ssl_new(); /* made under the second */
    CHECK(c != NULL);
    SSL_free(a);
    CHECK_UINT_EQ(gw_tls_live(), 2);
    SSL_free(b); /* the first configuration's last connection */
    CHECK_UINT_EQ(gw_tls_live(), 1);
    gw_tls_publish(make_tls(dir));
    gw_tls_publish(make_tls(dir)); /* the third had no connection: freed at once */
    CHECK_UINT_EQ(gw_tls_live(), 2);
    SSL_free(c);
    CHECK_UINT_EQ(gw_tls_live(), 1);
    gw_tls_free_all();
    CHECK_UINT_EQ(gw_tls_live(), 0);
    CHECK(gw_tls_ssl_new() == NULL);
    char path[300];
    snprintf(path, sizeof(path), "%s/cert.pem", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/key.pem", dir);
    unlink(path);
    rmdir(dir);
}

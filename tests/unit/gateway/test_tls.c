/* Unit tests of gateway/tls.c's check of an OCSP response before it is stapled: responses
 * built here with OpenSSL (a CA, a leaf it issued, the CA as responder) at chosen times, so
 * that expiry is tested without waiting for it. */
#include <openssl/evp.h>
#include <openssl/ocsp.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gateway/tls.h"
#include "tests/harness/test.h"

static EVP_PKEY *ca_key, *leaf_key;
static X509 *ca, *leaf, *other;

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
    X509_free(leaf);
    X509_free(other);
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
    leaf = make_cert("localhost", 1000, leaf_key, ca, ca_key);
    other = make_cert("elsewhere", 1001, leaf_key, ca, ca_key);
}

/* A DER OCSP response about <about> with <status>, thisUpdate <this_off> and nextUpdate
 * <next_off> seconds from now (no nextUpdate when <has_next> is 0). */
static int make_resp(X509 *about, int status, long this_off, long next_off, int has_next,
                     unsigned char **der)
{
    OCSP_BASICRESP *bs = OCSP_BASICRESP_new();
    OCSP_CERTID *id = OCSP_cert_to_id(EVP_sha1(), about, ca);
    CHECK(bs && id);
    ASN1_TIME *t_this = X509_gmtime_adj(NULL, this_off);
    ASN1_TIME *t_next = has_next ? X509_gmtime_adj(NULL, next_off) : NULL;
    ASN1_TIME *t_rev = status == V_OCSP_CERTSTATUS_REVOKED ? X509_gmtime_adj(NULL, -60) : NULL;
    CHECK(OCSP_basic_add1_status(bs, id, status, status == V_OCSP_CERTSTATUS_REVOKED ? 1 : -1,
                                 t_rev, t_this, t_next) != NULL);
    CHECK(OCSP_basic_sign(bs, ca, ca_key, EVP_sha256(), NULL, 0) == 1);
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

static int check(X509 *about, int status, long this_off, long next_off, int has_next,
                 time_t *expires, char *why, size_t whylen)
{
    unsigned char *der;
    int len = make_resp(about, status, this_off, next_off, has_next, &der);
    int rc = gw_tls_ocsp_check(der, (size_t)len, leaf, time(NULL), expires, why, whylen);
    OPENSSL_free(der);
    return rc;
}

TEST(a_good_current_response_is_taken_until_its_next_update)
{
    setup();
    time_t exp, now = time(NULL);
    char why[256] = "";
    CHECK_MSG(check(leaf, V_OCSP_CERTSTATUS_GOOD, -60, 86400, 1, &exp, why, sizeof(why)) == 0, "%s",
              why);
    CHECK(exp >= now + 86400 + 300 - 5 && exp <= now + 86400 + 300 + 5);
    /* no nextUpdate: newer information is always there, so it never expires */
    CHECK_MSG(check(leaf, V_OCSP_CERTSTATUS_GOOD, -60, 0, 0, &exp, why, sizeof(why)) == 0, "%s",
              why);
    CHECK(exp == 0);
}

TEST(an_expired_response_is_refused)
{
    setup();
    time_t exp;
    char why[256] = "";
    CHECK(check(leaf, V_OCSP_CERTSTATUS_GOOD, -7200, -3600, 1, &exp, why, sizeof(why)) < 0);
    CHECK_CONTAINS(why, "expired");
    /* within the 5 minutes of clock skew: still taken */
    CHECK_MSG(check(leaf, V_OCSP_CERTSTATUS_GOOD, -7200, -120, 1, &exp, why, sizeof(why)) == 0,
              "%s", why);
}

TEST(a_response_from_the_future_is_refused)
{
    setup();
    time_t exp;
    char why[256] = "";
    CHECK(check(leaf, V_OCSP_CERTSTATUS_GOOD, 3600, 7200, 1, &exp, why, sizeof(why)) < 0);
    CHECK_CONTAINS(why, "not valid yet");
}

TEST(a_response_about_another_certificate_is_refused)
{
    setup();
    time_t exp;
    char why[256] = "";
    CHECK(check(other, V_OCSP_CERTSTATUS_GOOD, -60, 3600, 1, &exp, why, sizeof(why)) < 0);
    CHECK_CONTAINS(why, "another certificate");
}

TEST(revoked_and_unknown_are_refused)
{
    setup();
    time_t exp;
    char why[256] = "";
    CHECK(check(leaf, V_OCSP_CERTSTATUS_REVOKED, -60, 3600, 1, &exp, why, sizeof(why)) < 0);
    CHECK_CONTAINS(why, "revoked");
    CHECK(check(leaf, V_OCSP_CERTSTATUS_UNKNOWN, -60, 3600, 1, &exp, why, sizeof(why)) < 0);
    CHECK_CONTAINS(why, "does not say");
}

TEST(garbage_and_unsuccessful_responses_are_refused)
{
    setup();
    time_t exp;
    char why[256] = "";
    static const unsigned char junk[] = "not DER at all";
    CHECK(gw_tls_ocsp_check(junk, sizeof(junk), leaf, time(NULL), &exp, why, sizeof(why)) < 0);
    CHECK_CONTAINS(why, "not a successful OCSP response");
    OCSP_RESPONSE *r = OCSP_response_create(OCSP_RESPONSE_STATUS_TRYLATER, NULL);
    unsigned char *der = NULL;
    int len = i2d_OCSP_RESPONSE(r, &der);
    CHECK(len > 0);
    CHECK(gw_tls_ocsp_check(der, (size_t)len, leaf, time(NULL), &exp, why, sizeof(why)) < 0);
    OPENSSL_free(der);
    OCSP_RESPONSE_free(r);
    /* every prefix of a good one: refused, never read past its end */
    len = make_resp(leaf, V_OCSP_CERTSTATUS_GOOD, -60, 3600, 1, &der);
    for (int n = 0; n < len; n++)
        CHECK(gw_tls_ocsp_check(der, (size_t)n, leaf, time(NULL), &exp, why, sizeof(why)) < 0);
    OPENSSL_free(der);
}

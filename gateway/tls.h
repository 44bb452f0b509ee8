/* TLS for the gateway's TLS listener (gateway.tls_listen): one OpenSSL context per certificate
 * of gateway.tls.certificates, the first the default and SNI choosing among them (a wildcard
 * certificate serves its names); TLS 1.2 and 1.3 only, the configured cipher lists, ALPN (h2
 * unless gateway.h2 is disabled, then http/1.1), session tickets under keys of our own that
 * rotate (gateway.tls.ticket_key_lifetime), a stapled OCSP response where a certificate names
 * one.
 *
 * A struct gw_tls is built whole from the config (every file read then) and is read-only
 * after: the worker loops take their connections' SSL objects from it at once. A reload
 * (SIGHUP) builds a new one and publishes it (gw_tls_publish()); connections made before keep
 * theirs. Each SSL holds a reference to the configuration it was made from, and the current
 * one holds one more: an older configuration is freed when the last connection made under it
 * ends (gw_tls_live() counts them). */
#ifndef GW_TLS_H
#define GW_TLS_H

#include <stddef.h>
#include <time.h>

typedef struct ssl_st SSL;
typedef struct x509_st X509;
struct gw_config;
struct gw_tls;

/* Reads the certificates, keys and OCSP responses of gc->tls and builds the contexts. Returns
 * NULL with the reason in <err> (which file, OpenSSL's words). */
struct gw_tls *gw_tls_new(const struct gw_config *gc, char *err, size_t errlen);
/* Makes <t> the current one; the previous one lives on while a connection uses it. Any
 * thread. */
void gw_tls_publish(struct gw_tls *t);
/* A server-side SSL for one connection under the current configuration (which it holds until
 * SSL_free()), or NULL (none published, out of memory). Any thread. */
SSL *gw_tls_ssl_new(void);
/* How many configurations are alive: the current one and those still used by connections. */
unsigned gw_tls_live(void);
/* Drops the current one: at exit, after the loops stopped (and freed their connections). */
void gw_tls_free_all(void);
/* When a stapled OCSP response may go out: from <from> (its thisUpdate less 5 minutes of clock
 * skew) until <until> (its nextUpdate; 0: it has none, no end). */
struct gw_tls_ocsp_window {
    time_t from, until;
};
/* Checks the DER OCSP response <der> for stapling with the certificate <leaf>: successful, DER
 * with nothing after it, about <leaf> (its serial number and issuer name), saying "good".
 * 0 with its validity in <valid>, or -1 with the reason in <why>. */
int gw_tls_ocsp_check(const unsigned char *der, size_t len, const X509 *leaf,
                      struct gw_tls_ocsp_window *valid, char *why, size_t whylen);
/* 1 when a response of validity <v> may be stapled at <now>. */
int gw_tls_ocsp_fresh(const struct gw_tls_ocsp_window *v, time_t now);
/* 1 when ALPN picked h2 on <ssl> (after its handshake). */
int gw_tls_alpn_h2(SSL *ssl);
/* OpenSSL's error queue as one line (and emptied), for logs. */
void gw_tls_errors(char *buf, size_t len);

#endif

/* TLS for the gateway's TLS listener (gateway.tls_listen): one OpenSSL context per certificate
 * of gateway.tls.certificates, the first the default and SNI choosing among them (a wildcard
 * certificate serves its names); TLS 1.2 and 1.3 only, the configured cipher lists, ALPN
 * (http/1.1: HTTP/2 is not offered yet), session tickets under keys of our own that rotate
 * (gateway.tls.ticket_key_lifetime), a stapled OCSP response where a certificate names one.
 *
 * A struct gw_tls is built whole from the config (every file read then) and is read-only
 * after: the worker loops take their connections' SSL objects from it at once. A reload
 * (SIGHUP) builds a new one and publishes it (gw_tls_publish()); connections made before keep
 * theirs. Retired ones stay allocated until gw_tls_free_all() at exit (the loops may be in a
 * handshake with one), which bounds nothing but the count of reloads. */
#ifndef GW_TLS_H
#define GW_TLS_H

#include <stddef.h>

typedef struct ssl_st SSL;
struct gw_config;
struct gw_tls;

/* Reads the certificates, keys and OCSP responses of gc->tls and builds the contexts. Returns
 * NULL with the reason in <err> (which file, OpenSSL's words). */
struct gw_tls *gw_tls_new(const struct gw_config *gc, char *err, size_t errlen);
/* Makes <t> the current one (the previous is retired, not freed). Any thread. */
void gw_tls_publish(struct gw_tls *t);
/* The current one, or NULL before the first gw_tls_publish(). Any thread. */
struct gw_tls *gw_tls_current(void);
/* A server-side SSL for one connection, or NULL (out of memory). */
SSL *gw_tls_ssl_new(struct gw_tls *t);
/* Frees the current and every retired one: at exit, after the loops stopped. */
void gw_tls_free_all(void);
/* 1 when ALPN picked h2 on <ssl> (after its handshake). */
int gw_tls_alpn_h2(SSL *ssl);
/* OpenSSL's error queue as one line (and emptied), for logs. */
void gw_tls_errors(char *buf, size_t len);

#endif

/* HTTP/1.1 message heads: parsing into slices of the caller's buffer, and the rewriting a
 * proxy does (hop-by-hop headers per RFC 9110 section 7.6.1, X-Forwarded-*). Two parsers fill
 * the same struct gw_h1_head: gw_h1_scan(), ours, one pass over the common strict shape of a
 * head (and it finds the head's end), and gw_h1_parse_head() with llhttp for everything else
 * and for any message whose body needs a parser. Pure: no I/O, no allocation; fuzzed
 * (tests/fuzz/fuzz_h1.c, and tests/fuzz/fuzz_h1_scan.c against llhttp). */
#ifndef GW_H1_H
#define GW_H1_H

#include <event2/util.h>
#include <llhttp.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* What a header is to the gateway, found once while parsing (bits; 0 for most headers). */
enum gw_h1_class {
    GW_H1_C_HOP = 1 << 0,     /* not forwarded: hop-by-hop by name or named by Connection */
    GW_H1_C_XFP = 1 << 1,     /* X-Forwarded-Proto */
    GW_H1_C_BERTH = 1 << 2,   /* X-Berth-* */
    GW_H1_C_TE = 1 << 3,      /* Transfer-Encoding */
    GW_H1_C_CL = 1 << 4,      /* Content-Length */
    GW_H1_C_UPGRADE = 1 << 5, /* Upgrade */
    GW_H1_C_MCP = 1 << 6,     /* Mcp-Session-Id */
    GW_H1_C_XFH = 1 << 7,     /* X-Forwarded-Host */
    GW_H1_C_CORS = 1 << 8,    /* Access-Control-* */
};

struct gw_h1_header {
    const char *name, *value;
    uint32_t name_len, value_len;
    uint16_t cls; /* enum gw_h1_class bits */
};

#define GW_H1_MAX_CONN_TOKENS 16 /* more Connection options: 400 */

enum gw_h1_status {
    GW_H1_OK = 0,
    GW_H1_INCOMPLETE = -1,   /* need more bytes */
    GW_H1_BAD = -2,          /* malformed (400 / 502) */
    GW_H1_TOO_MANY = -3,     /* more headers than allowed (431) */
    GW_H1_BAD_FRAMING = -4,  /* CL+TE, duplicate CL, bad TE: smuggling shapes (400, close) */
    GW_H1_DEFER = -5,        /* gw_h1_scan(): not its shape; ask gw_h1_parse_head() */
    GW_H1_CONNECT = -6,      /* a CONNECT request: we are no forward proxy (405, close) */
};

struct gw_h1_head {
    /* request */
    const char *method;
    uint32_t method_len;
    const char *url;
    uint32_t url_len;
    uint8_t method_id; /* llhttp_method_t */
    /* response */
    int status;
    const char *reason;
    uint32_t reason_len;
    /* both */
    uint8_t http_major, http_minor;
    uint8_t keep_alive; /* per llhttp: persistent connection after this message */
    uint8_t upgrade;
    uint8_t chunked;
    uint8_t has_cl;
    uint8_t has_te;     /* a Transfer-Encoding header was seen (requests: exactly one) */
    uint8_t body_done;  /* the message ended with its head (no body) */
    uint64_t content_length;
    /* named headers found while parsing (index into headers, or -1) */
    int host, cookie, connection, te, expect, content_type, xff, request_id, authorization;
    uint32_t n_conn_tokens;
    struct { const char *p; uint32_t len; } conn_tokens[GW_H1_MAX_CONN_TOKENS];
    uint32_t n_headers, max_headers;
    struct gw_h1_header *headers; /* caller's array of max_headers */
    /* parsing state */
    int in_value;
    int err;
};

/* Parses a complete head (<len> bytes ending with CRLFCRLF) with <parser>, which the caller
 * initialised for requests or responses and keeps for the body. <head->headers> and
 * <head->max_headers> must be set. For a response to a HEAD request pass <head_request> 1.
 * A request line must be exactly method SP target SP HTTP-version CRLF, the target visible
 * ASCII (RFC 9112 3; llhttp 8 alone takes doubled spaces, a bare LF, bytes >= 0x80); each
 * header one line (obs-fold refused, RFC 9112 5.2, in requests and responses); a request's
 * Transfer-Encoding, if any, one header of exactly "chunked" (else GW_H1_BAD_FRAMING).
 * Returns GW_H1_OK (the parser now expects the body, or head->body_done is 1) or a negative
 * gw_h1_status. Slices point into <buf>. */
int gw_h1_parse_head(llhttp_t *parser, const llhttp_settings_t *settings, struct gw_h1_head *head,
                     const char *buf, size_t len, int head_request);
/* Our one-pass parser for the common shape of a head: HTTP/1.1; a request with GET, HEAD,
 * POST, PUT, DELETE, OPTIONS or PATCH, an origin-form target of plain URL characters and no
 * body; a 2xx-5xx response (not 204 or 304) with a reason phrase and a Content-Length;
 * header names of token characters, values of visible ASCII, spaces and tabs, no white space
 * at their end; no Transfer-Encoding, Upgrade or Proxy-Connection; Connection, if present,
 * only "close" or "keep-alive"; CRLF line ends. <buf> holds <avail> bytes from the start of
 * the message; the head may end anywhere in them.
 * Returns GW_H1_OK with *head_len set (the bytes up to and including the blank line) and
 * <head> filled exactly as gw_h1_parse_head() fills it (tests/fuzz/fuzz_h1_scan.c checks
 * that), or GW_H1_DEFER for anything else, including a head not complete in <avail> bytes,
 * more than head->max_headers headers and every malformed head: gw_h1_parse_head() then
 * decides, with the errors it gives. A response parsed here has body_done set or a
 * Content-Length body, which the caller counts itself or hands to gw_h1_parse_head(). */
int gw_h1_scan(struct gw_h1_head *head, const char *buf, size_t avail, int response,
               int head_request, size_t *head_len);
/* Settings whose callbacks fill a struct gw_h1_head in parser->data; on_body and
 * on_message_complete are set by the caller through <on_body>/<on_complete> (may be NULL). */
void gw_h1_settings_init(llhttp_settings_t *s, llhttp_data_cb on_body, llhttp_cb on_complete);
/* Checks a partial head early (before CRLFCRLF arrived) so garbage gets a 400 at once instead of
 * waiting for the size limit or the timeout: a request line that is not exactly method SP
 * target SP HTTP-version CRLF (HTTP/0.9 included) as soon as it is there. Returns
 * GW_H1_INCOMPLETE or a negative error. */
int gw_h1_precheck(const char *buf, size_t len, int response);

/* Offset of the "\r\n\r\n" ending the head at the start of <in> (<len> bytes), searching from
 * byte <scan> and no further than a head of <max> bytes can reach; -1 if not there. */
struct evbuffer;
ev_ssize_t gw_h1_head_end(struct evbuffer *in, size_t len, size_t scan, size_t max);

/* Byte classes of gw_h1_sc[] (h1.c): SC_TCHAR a header name byte (RFC 9110 5.6.2 tchar),
 * SC_VALUE a field value byte we take, SC_URL a request-target byte we take. */
enum { SC_TCHAR = 1, SC_VALUE = 2, SC_URL = 4 };
extern const uint8_t gw_h1_sc[256];

/* A chunked request body's framing, checked by us before llhttp sees the bytes (RFC 9112 7.1,
 * strictly): chunk-size = 1*HEXDIG (at most 2^60 - 1) right at the line start; chunk
 * extensions ";" token [ "=" ( token / quoted-string ) ], repeated, without white space, at
 * most max_ext bytes per line (0: none); every line end CRLF; the chunk data followed by CRLF;
 * the trailer lines token ":" field-value (VCHAR, obs-text, SP, HTAB) CRLF, no obs-fold, at
 * most max_trailer bytes with the final CRLF. llhttp 8 takes a bare CR in a size line
 * ("5" CR CR ";ABCD" CRLF) and any two bytes after chunk data ("1" CRLF "Zxx0" CRLF CRLF),
 * shapes another parser reads as extensions or data: the instance then finds a request the
 * gateway never checked. Whatever llhttp version is built, this decides first. Value type,
 * caller's storage; pure. */
struct gw_h1_chunked {
    uint64_t left; /* the chunk size being read, then its data bytes not yet seen */
    uint32_t n;    /* bytes of the extensions of this line, or of the trailer section */
    uint32_t max_ext, max_trailer;
    uint8_t state;
};
void gw_h1_chunked_init(struct gw_h1_chunked *ck, uint32_t max_ext, uint32_t max_trailer);
/* The next <len> bytes of the body (<len> > 0). Returns how many belong to it: <len>, or fewer
 * when the body ended in them (gw_h1_chunked_done() is then 1 and the rest follows the
 * message); or GW_H1_BAD_FRAMING if a byte breaks the grammar or a limit (none of <data> is to
 * be forwarded then; the state is left at the error, for good). */
ssize_t gw_h1_chunked_step(struct gw_h1_chunked *ck, const char *data, size_t len);
/* 1 once the last chunk's trailer section ended. */
int gw_h1_chunked_done(const struct gw_h1_chunked *ck);

/* Header helpers. */
/* The <n> bytes at <p> equal <lower> (lower case) ignoring ASCII case. Inline: header names
 * are compared several times per request, and strncasecmp() is a locale-aware call. */
static inline int gw_h1_ieq(const char *p, const char *lower, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if ((unsigned)(c - 'A') < 26u)
            c = (unsigned char)(c + 32);
        if (c != (unsigned char)lower[i])
            return 0;
    }
    return 1;
}
/* <h> is named <lower_name> (<n> bytes, lower case; any token characters). */
static inline int gw_h1_name_eq(const struct gw_h1_header *h, const char *lower_name, size_t n)
{
    return h->name_len == n && gw_h1_ieq(h->name, lower_name, n);
}
/* 1 if <h> (a header of <head>, as parsed) must not be forwarded: hop-by-hop, or named by a
 * Connection token. */
static inline int gw_h1_is_hop(const struct gw_h1_head *head, const struct gw_h1_header *h)
{
    (void)head;
    return h->cls & GW_H1_C_HOP;
}
/* Trims optional white space around a value. */
void gw_h1_trim(const char **p, size_t *n);

/* Runs <len> bytes of a message body through <p> (its body callbacks see them): returns how
 * many belong to the message, fewer than <len> when it ended in them (*ended = 1: a callback
 * paused the parser), or -1 with llhttp's error in *err. */
ssize_t gw_h1_body_step(llhttp_t *p, const char *data, size_t len, int *ended, llhttp_errno_t *err);

#endif

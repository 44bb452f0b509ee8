/* HTTP/1.1 chunked request bodies: their framing checked strictly before llhttp sees the bytes
 * (h1.h, struct gw_h1_chunked). Pure. */
#include "gateway/h1.h"

enum {
    CK_SIZE0,     /* the first hex digit of a size line */
    CK_SIZE,      /* more digits, ';' or CR */
    CK_EXT_NAME0, /* after ';': the first byte of an extension name */
    CK_EXT_NAME,  /* name bytes, '=', ';' or CR */
    CK_EXT_VAL0,  /* after '=': a token or a quoted-string */
    CK_EXT_TOKEN, /* token bytes, ';' or CR */
    CK_EXT_QUOTED,
    CK_EXT_QPAIR, /* after a backslash in a quoted-string */
    CK_EXT_QEND,  /* after the closing quote: ';' or CR */
    CK_SIZE_LF,   /* the LF of a size line */
    CK_DATA,
    CK_DATA_CR,
    CK_DATA_LF,
    CK_TRAILER0, /* the start of a trailer line, or the CR of the final CRLF */
    CK_TNAME,
    CK_TVALUE,
    CK_TLF,
    CK_END_LF,
    CK_DONE,
    CK_BAD,
};

void gw_h1_chunked_init(struct gw_h1_chunked *ck, uint32_t max_ext, uint32_t max_trailer)
{
    ck->left = 0;
    ck->n = 0;
    ck->max_ext = max_ext;
    ck->max_trailer = max_trailer;
    ck->state = CK_SIZE0;
}

int gw_h1_chunked_done(const struct gw_h1_chunked *ck)
{
    return ck->state == CK_DONE;
}

static int hex_digit(unsigned c)
{
    if (c - '0' < 10u)
        return (int)(c - '0');
    c |= 0x20;
    return c - 'a' < 6u ? (int)(c - 'a' + 10) : -1;
}

/* qdtext (RFC 9110 5.6.4): HTAB, SP, 0x21, 0x23-0x5B, 0x5D-0x7E, obs-text */
static int qdtext(unsigned c)
{
    return c == '\t' || (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f);
}

/* field-value bytes (RFC 9110 5.5): VCHAR, obs-text, SP, HTAB */
static int field_byte(unsigned c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

ssize_t gw_h1_chunked_step(struct gw_h1_chunked *ck, const char *data, size_t len)
{
    const unsigned char *p = (const unsigned char *)data, *end = p + len;
    unsigned st = ck->state;
    while (p < end) {
        unsigned c = *p;
        if (st == CK_DATA) { /* the common case: skip the data, no byte looked at */
            size_t take = (size_t)(end - p);
            if (take > ck->left)
                take = (size_t)ck->left;
            p += take;
            ck->left -= take;
            if (ck->left == 0)
                st = CK_DATA_CR;
            continue;
        }
        if (st >= CK_EXT_NAME0 && st <= CK_EXT_QEND && c != '\r' && ++ck->n > ck->max_ext)
            goto bad;
        switch (st) {
        case CK_SIZE0:
        case CK_SIZE: {
            int d = hex_digit(c);
            if (d >= 0) {
                if (ck->left >> 56) /* 15 hex digits at most (leading zeros aside) */
                    goto bad;
                ck->left = ck->left << 4 | (unsigned)d;
                st = CK_SIZE;
            } else if (st == CK_SIZE0) {
                goto bad;
            } else if (c == ';') {
                ck->n = 1;
                if (ck->n > ck->max_ext)
                    goto bad;
                st = CK_EXT_NAME0;
            } else if (c == '\r') {
                st = CK_SIZE_LF;
            } else {
                goto bad;
            }
            break;
        }
        case CK_EXT_NAME0:
            if (!(gw_h1_sc[c] & SC_TCHAR))
                goto bad;
            st = CK_EXT_NAME;
            break;
        case CK_EXT_NAME:
        case CK_EXT_TOKEN:
        case CK_EXT_QEND:
            if (st != CK_EXT_QEND && (gw_h1_sc[c] & SC_TCHAR))
                break;
            if (c == ';')
                st = CK_EXT_NAME0;
            else if (c == '\r')
                st = CK_SIZE_LF;
            else if (c == '=' && st == CK_EXT_NAME)
                st = CK_EXT_VAL0;
            else
                goto bad;
            break;
        case CK_EXT_VAL0:
            if (gw_h1_sc[c] & SC_TCHAR)
                st = CK_EXT_TOKEN;
            else if (c == '"')
                st = CK_EXT_QUOTED;
            else
                goto bad;
            break;
        case CK_EXT_QUOTED:
            if (c == '"')
                st = CK_EXT_QEND;
            else if (c == '\\')
                st = CK_EXT_QPAIR;
            else if (!qdtext(c))
                goto bad;
            break;
        case CK_EXT_QPAIR: /* quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text ) */
            if (!field_byte(c))
                goto bad;
            st = CK_EXT_QUOTED;
            break;
        case CK_SIZE_LF:
            if (c != '\n')
                goto bad;
            ck->n = 0;
            st = ck->left ? CK_DATA : CK_TRAILER0;
            break;
        case CK_DATA_CR:
            if (c != '\r')
                goto bad;
            st = CK_DATA_LF;
            break;
        case CK_DATA_LF:
            if (c != '\n')
                goto bad;
            st = CK_SIZE0;
            break;
        case CK_TRAILER0:
        case CK_TNAME:
        case CK_TVALUE:
        case CK_TLF:
        case CK_END_LF:
            if (++ck->n > ck->max_trailer)
                goto bad;
            if (st == CK_TRAILER0) {
                if (c == '\r')
                    st = CK_END_LF;
                else if (gw_h1_sc[c] & SC_TCHAR) /* not SP or HTAB: no obs-fold */
                    st = CK_TNAME;
                else
                    goto bad;
            } else if (st == CK_TNAME) {
                if (c == ':')
                    st = CK_TVALUE;
                else if (!(gw_h1_sc[c] & SC_TCHAR)) /* no white space before the colon either */
                    goto bad;
            } else if (st == CK_TVALUE) {
                if (c == '\r')
                    st = CK_TLF;
                else if (!field_byte(c))
                    goto bad;
            } else {
                if (c != '\n')
                    goto bad;
                if (st == CK_END_LF) {
                    ck->state = CK_DONE;
                    return (ssize_t)(p + 1 - (const unsigned char *)data);
                }
                st = CK_TRAILER0;
            }
            break;
        default: /* CK_DONE: nothing more belongs to the body; CK_BAD stays bad */
            if (st == CK_DONE)
                return (ssize_t)(p - (const unsigned char *)data);
            goto bad;
        }
        p++;
    }
    ck->state = (uint8_t)st;
    return (ssize_t)len;
bad:
    ck->state = CK_BAD;
    return GW_H1_BAD_FRAMING;
}

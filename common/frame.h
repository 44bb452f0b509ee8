/* The frames of berth-agent's exec channel (scheduler/agent/proto.h says what each type
 * means), shared by the agent and the gateway: [type: 1 byte][length: 4 bytes, big-endian]
 * [payload: length bytes]. Pure, header-only: the agent links no common/ library. */
#ifndef CM_FRAME_H
#define CM_FRAME_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#define CM_FRAME_HDR 5
#define CM_FRAME_MAX (64 * 1024) /* payload bytes */

/* The next frame of <buf> (<len> bytes): returns the bytes it takes (header and payload) with
 * its type and payload, 0 when more bytes are needed, or -EPROTO (a length over
 * CM_FRAME_MAX). */
static inline long cm_frame_next(const char *buf, size_t len, char *ret_type,
                                 const char **ret_payload, size_t *ret_len)
{
    if (len < CM_FRAME_HDR)
        return 0;
    const unsigned char *u = (const unsigned char *)buf;
    uint32_t n = (uint32_t)u[1] << 24 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 8 | u[4];
    if (n > CM_FRAME_MAX)
        return -EPROTO;
    if (len - CM_FRAME_HDR < n)
        return 0;
    *ret_type = buf[0];
    *ret_payload = buf + CM_FRAME_HDR;
    *ret_len = n;
    return (long)(CM_FRAME_HDR + n);
}

/* The header of a frame of <type> and <len> payload bytes (<len> <= CM_FRAME_MAX). */
static inline void cm_frame_header(char hdr[CM_FRAME_HDR], char type, size_t len)
{
    hdr[0] = type;
    hdr[1] = (char)(len >> 24 & 0xff);
    hdr[2] = (char)(len >> 16 & 0xff);
    hdr[3] = (char)(len >> 8 & 0xff);
    hdr[4] = (char)(len & 0xff);
}

#endif

/* Fuzz target: what the instance relay (scheduler/relay.c) reads from the network before it
 * trusts anyone: the gateway's first line, checked against a fixed secret and clock. The
 * same bytes also go through the listen-address and driver-address parsers (config and Redis
 * text). A line the checker takes must be one the secret made. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common/secret.h"
#include "scheduler/relay.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SECRET "fuzz-secret-fuzz-secret-fuzz-secret!"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char id[CM_RELAY_ID_MAX + 1];
    enum sch_relay_channel chan;
    char *s = malloc(size + 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    int rc = sch_relay_check_hello((const char *)data, size, SECRET, 1000, 30, id, &chan);
    if (rc == 0) {
        /* Taken: it must be exactly the line common/ makes for those fields. */
        char want[CM_RELAY_HELLO_MAX];
        const char *ts = strstr(s, chan == SCH_RELAY_APP ? " app " : " ports ");
        if (!ts)
            abort();
        int n =
            cm_secret_relay_hello(SECRET, id, chan == SCH_RELAY_APP ? "app" : "ports",
                                  strtoll(ts + (chan == SCH_RELAY_APP ? 5 : 7), NULL, 10), want);
        if (n < 2 || (size_t)n - 2 != size || memcmp(want, data, size) != 0)
            abort();
    } else if (rc != -EINVAL && rc != -ETIME && rc != -EACCES) {
        abort();
    }
    struct sockaddr_storage ss;
    unsigned len;
    if (sch_relay_parse_listen(s, &ss, &len) == 0 && len > sizeof(ss))
        abort();
    for (int c = 0; c < 2; c++)
        if (sch_relay_local_addr(s, (enum sch_relay_channel)c, &ss, &len) == 0 && len > sizeof(ss))
            abort();
    free(s);
    return 0;
}

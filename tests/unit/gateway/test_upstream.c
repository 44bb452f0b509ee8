/* gateway/upstream.c: the instance relay's addresses ("relay:<host:port>/<kind>/<id>") as the
 * scheduler publishes them (scheduler/relay.h), and the line a new connection starts with. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "common/secret.h"
#include "gateway/upstream.h"
#include "tests/harness/test.h"

TEST(relay_addresses_of_each_kind)
{
    struct gw_relay_addr ra;
    CHECK(gw_relay_addr_parse("relay:10.0.0.5:7070/proc/node1-0000abcd", &ra) == 0);
    CHECK(strcmp(ra.id, "node1-0000abcd") == 0 && !ra.vm && ra.has_ports);
    CHECK(ra.sa.ss_family == AF_INET && ntohs(((struct sockaddr_in *)&ra.sa)->sin_port) == 7070);
    CHECK(gw_relay_addr_parse("relay:[::1]:7070/vm/n-1", &ra) == 0);
    CHECK(ra.vm && ra.has_ports && ra.sa.ss_family == AF_INET6);
    CHECK(gw_relay_addr_parse("relay:10.0.0.5:7070/tcp/n-1", &ra) == 0);
    CHECK(!ra.vm && !ra.has_ports);
}

TEST(other_addresses_are_not_relay_addresses)
{
    struct gw_relay_addr ra;
    const char *bad[] = {
        "relay:10.0.0.5:7070/proc/",    "relay:10.0.0.5:7070/proc",
        "relay:10.0.0.5:7070/box/n-1",  "relay:/proc/n-1",
        "relay:10.0.0.5/proc/n-1",      "relay:10.0.0.5:7070/proc/n 1",
        "relay:10.0.0.5:7070/proc/n/1", "vm:127.0.0.1:4000",
        "unix:/run/x/app.sock",         "relay:host.example:7070/proc/n-1",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK_MSG(gw_relay_addr_parse(bad[i], &ra) < 0, "taken: %s", bad[i]);
}

TEST(the_hello_is_the_relays_line)
{
    struct gw_relay_addr ra;
    CHECK(gw_relay_addr_parse("relay:10.0.0.5:7070/vm/n-1", &ra) == 0);
    char line[CM_RELAY_HELLO_MAX];
    int n = gw_relay_hello("s3cret-s3cret-s3cret-s3cret-s3cret", &ra, "ports", line);
    CHECK(n > 0 && (size_t)n == strlen(line));
    CHECK(strncmp(line, "BERTH-RELAY n-1 ports ", 22) == 0);
    CHECK(strcmp(line + n - 2, "\r\n") == 0);
    CHECK(gw_relay_hello(NULL, &ra, "app", line) < 0);
}

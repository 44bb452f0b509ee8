/* Unit tests of gateway/rewrite.c's CDP rewrite: discovery answers name the browser's own
 * address; the client gets URLs built from its own Host and scheme. */
#include <event2/buffer.h>
#include <stdio.h>
#include <string.h>

#include "gateway/rewrite.h"
#include "tests/harness/test.h"

static char got[4096];

static int rewrite(const char *in, const char *host, int secure)
{
    struct evbuffer *out = evbuffer_new();
    CHECK(out != NULL);
    int n = gw_rewrite_cdp(in, strlen(in), host, strlen(host), secure, out);
    size_t len = evbuffer_get_length(out);
    CHECK(len < sizeof(got));
    evbuffer_remove(out, got, len);
    got[len] = '\0';
    evbuffer_free(out);
    return n;
}

TEST(version_answer_gets_the_clients_host)
{
    CHECK(rewrite("{\"webSocketDebuggerUrl\": \"ws://127.0.0.1:9222/devtools/browser/a\"}",
                  "browsers.example.com:8080", 0) == 1);
    CHECK_MSG(strcmp(got, "{\"webSocketDebuggerUrl\": "
                          "\"ws://browsers.example.com:8080/devtools/browser/a\"}") == 0,
              "%s", got);
}

TEST(frontend_url_parameter_and_tls_scheme)
{
    CHECK(rewrite("{\"devtoolsFrontendUrl\": \"/devtools/inspector.html?ws=127.0.0.1:9222/"
                  "devtools/page/P\", \"webSocketDebuggerUrl\": \"ws://localhost:9222/devtools/"
                  "page/P\"}",
                  "gw.example", 1) == 2);
    CHECK_MSG(strcmp(got, "{\"devtoolsFrontendUrl\": \"/devtools/inspector.html?wss=gw.example/"
                          "devtools/page/P\", \"webSocketDebuggerUrl\": \"wss://gw.example/"
                          "devtools/page/P\"}") == 0,
              "%s", got);
    /* an answer already in wss (a browser behind TLS) follows the client's scheme too */
    CHECK(rewrite("\"wss://10.0.0.1:9222/devtools/page/Q\" wss=10.0.0.1:9222/x", "h", 0) == 2);
    CHECK_MSG(strcmp(got, "\"ws://h/devtools/page/Q\" ws=h/x") == 0, "%s", got);
}

TEST(words_and_shapes_that_are_not_the_browsers_urls_stay)
{
    const char *in = "news://a/b rows=3/4 ws:// ws=/ \"ws://x\" ws://y";
    CHECK(rewrite(in, "h", 0) == 0);
    CHECK_MSG(strcmp(got, in) == 0, "%s", got);
}

// Sessionless MCP (the stateless Streamable HTTP server of the SDK docs, the 2026-07-28 style:
// no Mcp-Session-Id) through the gateway, routed by the platform key alone. Two modes:
//
//   node mcp_stateless.mjs server [--port P]
//     A stateless MCP server (the official TypeScript SDK: StreamableHTTPServerTransport with
//     sessionIdGenerator: undefined, a new McpServer + transport per request, GET and DELETE
//     answered 405, as the SDK's simpleStatelessStreamableHttp example does) on 127.0.0.1:P
//     (default $PORT, which the process driver sets to the template's app.port). Its tool
//     `whoami` returns {"instance": $BERTH_INSTANCE_ID, "count": <per-process call counter>,
//     "pid": ...} as text. Run as the app of a sandbox template.
//
//   node mcp_stateless.mjs client --url http://127.0.0.1:P1[,http://127.0.0.1:P2] --key K1,K2,..
//        [--via header|cookie] [--cookie-name berth_session] [--rounds 3] [--calls 2]
//        [--path /mcp] [--timeout-ms 60000] [--shared-pool N]
//     For every key at once: <rounds> times a new SDK Client with a new
//     StreamableHTTPClientTransport on a new connection pool (an undici Agent, closed after the
//     round, so every round opens new TCP connections), whose every request carries the key
//     (requestInit headers: x-fc-session-id: K, or Cookie: <cookie-name>=K); connect
//     (initialize), then <calls> calls of `whoami`, then close. Round r goes to the URL
//     r % (number of URLs) (replicas). --shared-pool N: all keys and rounds share one pool of
//     at most N connections per replica instead (one agent process serving several users over
//     the same keep-alive connections, as Node's global fetch does). Every HTTP exchange is recorded: method, replica,
//     status, x-berth-instance, mcp-session-id (the server must never mint one).
//
//     Output (stdout, one JSON object): {"ok": bool, "elapsedMs", "keys": [{key, ok, error,
//     rounds: [{replica, transportSessionId, calls: [{instance, count, pid, header}],
//     requests: [{method, replica, status, instance, mcpSessionId, contentType}]}]}]}.
//     Exit status 0 when the script ran (the test judges), 2 on bad arguments.

import http from 'node:http';

function usage(msg) {
    process.stderr.write(`mcp_stateless.mjs: ${msg}\n`);
    process.exit(2);
}

function parseArgs(argv) {
    const o = { mode: argv[0], urls: [], keys: [], via: 'header', cookieName: 'berth_session',
                rounds: 3, calls: 2, path: '/mcp', timeoutMs: 60000, sharedPool: 0,
                port: parseInt(process.env.PORT ?? '8000', 10) };
    for (let i = 1; i < argv.length; i++) {
        const a = argv[i], v = argv[i + 1];
        const need = () => { if (v === undefined) usage(`${a} needs a value`); i++; return v; };
        if (a === '--url') o.urls = need().split(',').filter(Boolean);
        else if (a === '--key') o.keys = need().split(',').filter(Boolean);
        else if (a === '--via') o.via = need();
        else if (a === '--cookie-name') o.cookieName = need();
        else if (a === '--rounds') o.rounds = parseInt(need(), 10);
        else if (a === '--calls') o.calls = parseInt(need(), 10);
        else if (a === '--path') o.path = need();
        else if (a === '--timeout-ms') o.timeoutMs = parseInt(need(), 10);
        else if (a === '--port') o.port = parseInt(need(), 10);
        else if (a === '--shared-pool') o.sharedPool = parseInt(need(), 10);
        else usage(`unknown argument ${a}`);
    }
    if (!['server', 'client'].includes(o.mode)) usage('first argument: server or client');
    if (o.mode === 'client') {
        if (!o.urls.length) usage('--url is required');
        if (!o.keys.length) usage('--key is required');
        if (!['header', 'cookie'].includes(o.via)) usage('--via must be header or cookie');
        if (!(o.rounds >= 1 && o.calls >= 1)) usage('--rounds and --calls must be >= 1');
    }
    return o;
}

const opts = parseArgs(process.argv.slice(2));

// ------------------------------------------------------------------ server

async function runServer() {
    const { McpServer } = await import('@modelcontextprotocol/sdk/server/mcp.js');
    const { StreamableHTTPServerTransport } =
        await import('@modelcontextprotocol/sdk/server/streamableHttp.js');
    const instance = process.env.BERTH_INSTANCE_ID ?? '';
    let counter = 0; // per process: survives the per-request servers

    const getServer = () => {
        const server = new McpServer({ name: 'berth-stateless-test', version: '1.0.0' });
        server.registerTool('whoami', {
            description: 'The sandbox instance this server runs in and a per-process call counter',
        }, async () => ({
            content: [{ type: 'text',
                        text: JSON.stringify({ instance, count: ++counter, pid: process.pid }) }],
        }));
        return server;
    };

    const notAllowed = res => {
        res.writeHead(405, { 'Content-Type': 'application/json', Allow: 'POST' }).end(JSON.stringify({
            jsonrpc: '2.0', error: { code: -32000, message: 'Method not allowed.' }, id: null }));
    };

    const httpServer = http.createServer(async (req, res) => {
        const path = (req.url ?? '/').split('?')[0];
        if (path !== opts.path) {
            res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found\n');
            return;
        }
        if (req.method !== 'POST') { // stateless: no standalone SSE stream, nothing to DELETE
            notAllowed(res);
            return;
        }
        // A new server and transport per request, nothing kept between requests.
        const server = getServer();
        const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
        res.on('close', () => {
            transport.close();
            server.close();
        });
        try {
            await server.connect(transport);
            await transport.handleRequest(req, res);
        } catch (e) {
            process.stderr.write(`mcp_stateless server: ${e?.stack ?? e}\n`);
            if (!res.headersSent)
                res.writeHead(500, { 'Content-Type': 'application/json' }).end(JSON.stringify({
                    jsonrpc: '2.0', error: { code: -32603, message: 'Internal server error' },
                    id: null }));
        }
    });
    httpServer.listen(opts.port, '127.0.0.1', () => {
        process.stderr.write(`mcp_stateless server on 127.0.0.1:${opts.port} instance=${instance}\n`);
    });
    const stop = () => httpServer.close(() => process.exit(0));
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
}

// ------------------------------------------------------------------ client

function withTimeout(p, ms, what) {
    let timer;
    return Promise.race([
        p.finally(() => clearTimeout(timer)),
        new Promise((_, rej) => { timer = setTimeout(() => rej(new Error(`timeout: ${what}`)), ms); }),
    ]);
}

async function runClient() {
    const { Client } = await import('@modelcontextprotocol/sdk/client/index.js');
    const { StreamableHTTPClientTransport } =
        await import('@modelcontextprotocol/sdk/client/streamableHttp.js');
    const { Agent } = await import('undici');
    const { recordedFetch } = await import('./recorded_fetch.mjs');
    const t0 = Date.now();
    const shared = opts.sharedPool > 0
        ? new Agent({ keepAliveTimeout: 30000, connections: opts.sharedPool }) : null;

    // A fetch on its own connection pool that records every exchange with the gateway.
    const recordingFetch = (round, agent) => async (url, init = {}) => {
        const rec = { method: init.method ?? 'GET', replica: new URL(url).host };
        round.requests.push(rec);
        return recordedFetch(rec, url, init, agent);
    };

    const runKey = async (key, index) => {
        const out = { key, ok: false, error: null, rounds: [] };
        const headers = opts.via === 'header' ? { 'x-fc-session-id': key }
                                              : { Cookie: `${opts.cookieName}=${key}` };
        try {
            for (let r = 0; r < opts.rounds; r++) {
                const base = opts.urls[(index + r) % opts.urls.length];
                const round = { replica: new URL(base).host, transportSessionId: null, calls: [],
                                requests: [] };
                out.rounds.push(round);
                const agent = shared ?? new Agent({ keepAliveTimeout: 30000 });
                const transport = new StreamableHTTPClientTransport(new URL(opts.path, base), {
                    fetch: recordingFetch(round, agent),
                    requestInit: { headers },
                    reconnectionOptions: { initialReconnectionDelay: 500,
                                           maxReconnectionDelay: 2000,
                                           reconnectionDelayGrowFactor: 1.5, maxRetries: 0 },
                });
                const client = new Client({ name: `berth-stateless-${index}`, version: '1.0.0' },
                                          { capabilities: {} });
                const step = (p, what) => withTimeout(p, 20000, `key ${key} round ${r}: ${what}`);
                try {
                    await step(client.connect(transport), 'connect');
                    round.transportSessionId = transport.sessionId ?? null;
                    for (let k = 0; k < opts.calls; k++) {
                        const nreq = round.requests.length;
                        const res = await step(client.callTool({ name: 'whoami', arguments: {} }),
                                               'callTool whoami');
                        const text = (res.content ?? []).filter(c => c.type === 'text')
                            .map(c => c.text).join('');
                        const call = JSON.parse(text);
                        // the gateway's header on the POST that carried this call
                        const post = round.requests.slice(nreq).find(q => q.method === 'POST');
                        call.header = post?.instance ?? null;
                        round.calls.push(call);
                    }
                    round.transportSessionId ??= transport.sessionId ?? null;
                } finally {
                    await client.close().catch(() => {});
                    if (!shared)
                        await agent.close().catch(() => {});
                }
            }
            out.ok = true;
        } catch (e) {
            out.error = String(e?.stack ?? e);
        }
        return out;
    };

    const keys = await withTimeout(Promise.all(opts.keys.map(runKey)), opts.timeoutMs, 'all keys')
        .catch(e => { process.stdout.write(JSON.stringify({ ok: false, error: String(e) }) + '\n');
                      process.exit(3); });
    if (shared)
        await shared.close().catch(() => {});
    process.stdout.write(JSON.stringify({ ok: keys.every(k => k.ok), elapsedMs: Date.now() - t0,
                                          keys }) + '\n');
    process.exit(0);
}

if (opts.mode === 'server')
    await runServer();
else
    await runClient();

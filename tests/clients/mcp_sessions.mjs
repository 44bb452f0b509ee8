// Runs N concurrent MCP client sessions (the official TypeScript SDK's Client) against one or
// more gateway replicas and prints one JSON document with what each session saw.
//
//   node mcp_sessions.mjs --transport streamable|sse --url http://127.0.0.1:P1[,http://...:P2]
//        [--sessions 20] [--path /mcp] [--timeout-ms 90000] [--no-delete] [--shared-pool]
//        [--header name:value]... [--stagger-ms MS] [--logging-wait-ms MS]
//        [--await-reconnect-ms MS] [--h2]
//
// Every HTTP request a session makes goes through a recording fetch: it switches to the next
// replica of --url on every request (round robin, starting at the session's index), and
// records method, replica, status and the gateway's x-berth-instance header. Each session:
//   connect (initialize), listTools, callTool echo and get-sum, get-env (the instance's own
//   BERTH_INSTANCE_ID, seen from inside the app), a tool call with progress notifications
//   (streamed on the POST's SSE response with Streamable HTTP, on the GET stream with legacy
//   SSE), toggle-simulated-logging and waits for one logging notification (a server-initiated
//   message with no request: it can only arrive on the standalone SSE stream), then
//   (streamable, unless --no-delete) terminates the session with DELETE and sends one more
//   request with the ended Mcp-Session-Id, whose status is recorded (the gateway must answer
//   404 so the client knows to initialize again).
// Each session uses its own connection pool (an undici Agent), as separate clients would;
// --shared-pool makes all sessions share one pool instead (one agent process multiplexing
// sessions over keep-alive connections, as Node's global fetch does). --h2: the pools offer h2
// by ALPN (undici's allowH2; https URLs), so a shared pool multiplexes every session's requests
// and streams over one HTTP/2 connection per replica. --stagger-ms starts
// session i after i*MS milliseconds. --await-reconnect-ms: after the DELETE, the client still
// open, wait (at most MS) until the SDK, on its own, has reconnected the standalone GET stream
// that the DELETE ended and that GET has its answer (or error), then send the request with the
// ended id (what the SDK may do anyway when that request is slow, on a busy machine).
//
// Output (stdout, one JSON object): {"ok": bool, "sessions": [{index, ok, error, mcpSessionId,
// requests: [{method, replica, path, sid (the Mcp-Session-Id sent, or null), status, instance,
// contentType, mcpSessionId (answered), body (of a 4xx/5xx), error (no answer)}],
// instances: [...distinct, of every request],
// envInstance, tools, echo, sum, progress: [...], progressAt: [ms after the call started],
// longMs (when its result came), logging: {level, data}|null,
// afterDelete: {status, body}|null, ms}], "elapsedMs"}. Exit status 0 when the script ran
// (even if sessions failed: the test judges), 2 on bad arguments, 3 on the global timeout.

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { LoggingMessageNotificationSchema } from '@modelcontextprotocol/sdk/types.js';
import { Agent } from 'undici';
import { recordedFetch } from './recorded_fetch.mjs';

function parseArgs(argv) {
    const o = { transport: 'streamable', urls: [], sessions: 20, path: null, timeoutMs: 90000,
                del: true, sharedPool: false, headers: {}, loggingWaitMs: 15000, staggerMs: 0,
                awaitReconnectMs: 0 };
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i], v = argv[i + 1];
        const need = () => { if (v === undefined) usage(`${a} needs a value`); i++; return v; };
        if (a === '--transport') o.transport = need();
        else if (a === '--url') o.urls = need().split(',').filter(Boolean);
        else if (a === '--sessions') o.sessions = parseInt(need(), 10);
        else if (a === '--path') o.path = need();
        else if (a === '--timeout-ms') o.timeoutMs = parseInt(need(), 10);
        else if (a === '--logging-wait-ms') o.loggingWaitMs = parseInt(need(), 10);
        else if (a === '--stagger-ms') o.staggerMs = parseInt(need(), 10);
        else if (a === '--await-reconnect-ms') o.awaitReconnectMs = parseInt(need(), 10);
        else if (a === '--no-delete') o.del = false;
        else if (a === '--shared-pool') o.sharedPool = true;
        else if (a === '--h2') o.h2 = true;
        else if (a === '--header') {
            const h = need(), c = h.indexOf(':');
            if (c <= 0) usage(`bad --header ${h}`);
            o.headers[h.slice(0, c).trim()] = h.slice(c + 1).trim();
        } else usage(`unknown argument ${a}`);
    }
    if (!['streamable', 'sse'].includes(o.transport)) usage('--transport must be streamable or sse');
    if (!o.urls.length) usage('--url is required');
    if (!(o.sessions >= 1 && o.sessions <= 1000)) usage('--sessions must be 1..1000');
    o.path ??= o.transport === 'sse' ? '/sse' : '/mcp';
    return o;
}

function usage(msg) {
    process.stderr.write(`mcp_sessions.mjs: ${msg}\n`);
    process.exit(2);
}

const opts = parseArgs(process.argv.slice(2));
const t0 = Date.now();
const results = [];
const agentOpts = { keepAliveTimeout: 30000, allowH2: !!opts.h2 };
const sharedAgent = opts.sharedPool ? new Agent(agentOpts) : null;

function withTimeout(p, ms, what) {
    let timer;
    return Promise.race([
        p.finally(() => clearTimeout(timer)),
        new Promise((_, rej) => { timer = setTimeout(() => rej(new Error(`timeout: ${what}`)), ms); }),
    ]);
}

// A fetch that goes to the next replica on every request and records the gateway's answer.
function recordingFetch(sess, agent) {
    let n = sess.index;
    return async (url, init = {}) => {
        const u = new URL(url);
        const base = new URL(opts.urls[n++ % opts.urls.length]);
        u.protocol = base.protocol;
        u.host = base.host;
        const rec = { method: init.method ?? 'GET', replica: base.host, path: u.pathname + u.search,
                      sid: new Headers(init.headers ?? {}).get('mcp-session-id') };
        sess.requests.push(rec);
        return recordedFetch(rec, u, init, agent);
    };
}

// Resolves when a GET sent after the session's DELETE has its answer or error, or after ms.
async function lateGetDone(sess, ms) {
    const d = sess.requests.map(r => r.method).lastIndexOf('DELETE');
    const done = () => sess.requests.slice(d + 1).some(
        r => r.method === 'GET' && (r.status !== undefined || r.error !== undefined));
    for (const end = Date.now() + ms; !done() && Date.now() < end;)
        await new Promise(r => setTimeout(r, 20));
}

function textOf(result) {
    return (result?.content ?? []).filter(c => c.type === 'text').map(c => c.text).join('\n');
}

async function runSession(index) {
    const sess = { index, ok: false, error: null, requests: [], progress: [], logging: null,
                   afterDelete: null, mcpSessionId: null };
    results[index] = sess;
    if (opts.staggerMs)
        await new Promise(r => setTimeout(r, index * opts.staggerMs));
    const started = Date.now();
    const agent = sharedAgent ?? new Agent(agentOpts);
    const fetchImpl = recordingFetch(sess, agent);
    const url = new URL(opts.path, opts.urls[0]);
    const tinit = { fetch: fetchImpl, requestInit: { headers: { ...opts.headers } } };
    const transport = opts.transport === 'sse'
        ? new SSEClientTransport(url, tinit)
        : new StreamableHTTPClientTransport(url, { ...tinit,
            reconnectionOptions: { initialReconnectionDelay: 500, maxReconnectionDelay: 2000,
                                   reconnectionDelayGrowFactor: 1.5, maxRetries: 2 } });
    const client = new Client({ name: `berth-test-${index}`, version: '1.0.0' }, { capabilities: {} });
    let gotLog;
    const logged = new Promise(res => { gotLog = res; });
    client.setNotificationHandler(LoggingMessageNotificationSchema, n => {
        if (!sess.logging)
            sess.logging = { level: n.params.level, data: String(n.params.data).slice(0, 200) };
        gotLog();
    });
    const step = (p, what, ms = 20000) => withTimeout(p, ms, `session ${index}: ${what}`);
    try {
        await step(client.connect(transport), 'connect');
        sess.mcpSessionId = transport.sessionId ?? null;
        if (opts.transport === 'sse') // the endpoint the server announced (its sessionId)
            sess.mcpSessionId = transport._endpoint?.searchParams.get('sessionId') ?? null;
        const tools = await step(client.listTools(), 'listTools');
        sess.tools = tools.tools.map(t => t.name).sort();
        sess.echo = textOf(await step(client.callTool({ name: 'echo',
            arguments: { message: `hello from session ${index}` } }), 'echo'));
        sess.sum = textOf(await step(client.callTool({ name: 'get-sum',
            arguments: { a: index, b: 1000 } }), 'get-sum'));
        const env = textOf(await step(client.callTool({ name: 'get-env', arguments: {} }), 'get-env'));
        try {
            sess.envInstance = JSON.parse(env).BERTH_INSTANCE_ID ?? null;
        } catch {
            sess.envInstance = `unparsable: ${env.slice(0, 100)}`;
        }
        const longStart = Date.now();
        sess.progressAt = [];
        const long = await step(client.callTool({ name: 'trigger-long-running-operation',
            arguments: { duration: 1.5, steps: 3 } }, undefined,
            { onprogress: p => { sess.progress.push(p.progress);
                                 sess.progressAt.push(Date.now() - longStart); } }), 'long-running');
        sess.longMs = Date.now() - longStart;
        sess.longResult = textOf(long);
        await step(client.callTool({ name: 'toggle-simulated-logging', arguments: {} }), 'logging on');
        try {
            await withTimeout(logged, opts.loggingWaitMs, 'logging notification');
        } catch {
            // reported as logging: null
        }
        if (opts.transport === 'streamable' && opts.del) {
            const id = transport.sessionId;
            await step(transport.terminateSession(), 'terminateSession (DELETE)');
            if (opts.awaitReconnectMs)
                await lateGetDone(sess, opts.awaitReconnectMs);
            // One more request with the ended id: the gateway must answer 404.
            const res = await fetchImpl(url, { method: 'POST',
                headers: { 'content-type': 'application/json',
                           accept: 'application/json, text/event-stream',
                           'mcp-session-id': id, 'mcp-protocol-version': transport.protocolVersion ?? '2025-06-18',
                           ...opts.headers },
                body: JSON.stringify({ jsonrpc: '2.0', id: 99, method: 'tools/list', params: {} }) });
            sess.afterDelete = { status: res.status, body: (await res.text()).slice(0, 300) };
        }
        sess.ok = true;
    } catch (e) {
        sess.error = String(e?.stack ?? e).slice(0, 1000);
    } finally {
        sess.ms = Date.now() - started;
        sess.instances = [...new Set(sess.requests.map(r => r.instance).filter(Boolean))];
        try {
            await withTimeout(client.close(), 5000, 'close');
        } catch { /* closing is best effort */ }
        if (!sharedAgent)
            await agent.close().catch(() => {});
    }
}

function report(code) {
    const out = { ok: results.length === opts.sessions && results.every(s => s?.ok),
                  elapsedMs: Date.now() - t0, sessions: results };
    process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(code));
}

const timer = setTimeout(() => {
    for (let i = 0; i < opts.sessions; i++)
        if (results[i] && !results[i].ok && !results[i].error)
            results[i].error = 'global timeout';
    report(3);
}, opts.timeoutMs);

await Promise.all(Array.from({ length: opts.sessions }, (_, i) => runSession(i)));
clearTimeout(timer);
if (sharedAgent)
    await sharedAgent.close().catch(() => {});
report(0);

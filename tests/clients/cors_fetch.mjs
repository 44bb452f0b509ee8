// A real browser (Debian's Chromium via playwright-core) calling an MCP route of the gateway
// from a page of another origin, the way a browser-based MCP client (an inspector, a web app)
// does: fetch() with a JSON body and MCP headers, so Chromium sends a CORS preflight first
// and enforces the answer. Prints one JSON document.
//
//   node cors_fetch.mjs --page http://127.0.0.1:P/ --endpoint http://127.0.0.1:G/mcp
//        [--chromium /usr/bin/chromium] [--timeout-ms 60000]
//
// In the page at --page: an MCP initialize POST to --endpoint, then (if the answer's
// Mcp-Session-Id was readable) a tools/list with that id. Output: {ok, error, init: {status,
// sessionId, body} | {error}, list: {status, body} | {error} | null}. A fetch the browser
// refuses (CORS) is {error: "TypeError: Failed to fetch"}.
import { chromium } from 'playwright-core';

const o = { page: null, endpoint: null, chromium: '/usr/bin/chromium', timeoutMs: 60000 };
for (let i = 2; i < process.argv.length; i += 2) {
    const k = process.argv[i].replace(/^--/, '').replace(/-(.)/g, (_, c) => c.toUpperCase());
    if (!(k in o) || process.argv[i + 1] === undefined) {
        process.stderr.write(`cors_fetch.mjs: bad argument ${process.argv[i]}\n`);
        process.exit(2);
    }
    o[k] = k === 'timeoutMs' ? parseInt(process.argv[i + 1], 10) : process.argv[i + 1];
}
if (!o.page || !o.endpoint) {
    process.stderr.write('cors_fetch.mjs: --page and --endpoint are required\n');
    process.exit(2);
}

const out = { ok: false, error: null, init: null, list: null };
let browser;
const timer = setTimeout(() => { out.error = 'global timeout'; finish(3); }, o.timeoutMs);

function finish(code) {
    clearTimeout(timer);
    const done = () => process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(code));
    if (browser) browser.close().then(done, done); else done();
}

try {
    browser = await chromium.launch({
        executablePath: o.chromium, headless: true, timeout: 30000,
        args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking',
               '--disable-dev-shm-usage'],
    });
    const page = await (await browser.newContext()).newPage();
    await page.goto(o.page);
    const r = await page.evaluate(async (endpoint) => {
        const headers = { 'content-type': 'application/json',
                          accept: 'application/json, text/event-stream',
                          'mcp-protocol-version': '2025-03-26' };
        const res = {};
        try {
            const a = await fetch(endpoint, { method: 'POST', headers, body: JSON.stringify({
                jsonrpc: '2.0', id: 1, method: 'initialize', params: {
                    protocolVersion: '2025-03-26', capabilities: {},
                    clientInfo: { name: 'cors_fetch', version: '1' } } }) });
            res.init = { status: a.status, sessionId: a.headers.get('mcp-session-id'),
                         body: (await a.text()).slice(0, 2000) };
        } catch (e) {
            res.init = { error: String(e) };
            return res;
        }
        if (!res.init.sessionId) return res;
        try {
            await fetch(endpoint, { method: 'POST', body: JSON.stringify({
                jsonrpc: '2.0', method: 'notifications/initialized' }),
                headers: { ...headers, 'mcp-session-id': res.init.sessionId } });
            const b = await fetch(endpoint, { method: 'POST', body: JSON.stringify({
                jsonrpc: '2.0', id: 2, method: 'tools/list' }),
                headers: { ...headers, 'mcp-session-id': res.init.sessionId } });
            res.list = { status: b.status, body: (await b.text()).slice(0, 4000) };
        } catch (e) {
            res.list = { error: String(e) };
        }
        return res;
    }, o.endpoint);
    Object.assign(out, r);
    out.ok = true;
    finish(0);
} catch (e) {
    out.error = String(e && e.stack || e);
    finish(1);
}

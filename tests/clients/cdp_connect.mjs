// Connects playwright-core to a Chromium that runs inside a Berth sandbox, through the gateway
// (connectOverCDP: GET /json/version, then the WebSocket its webSocketDebuggerUrl names, which
// the gateway rewrote to point at itself). Prints one JSON document.
//
//   node cdp_connect.mjs --url http://127.0.0.1:PORT --session b1 [--title T] [--timeout-ms N]
//
// With --title, opens a page on a data: URL titled T (and leaves it open: a later connection
// of the same session finds it in the same browser). Always reports the browser version, every
// page title it can see, and what a small script in the page computed.

import { chromium } from 'playwright-core';

const o = { url: null, session: null, title: null, timeoutMs: 60000 };
for (let i = 2; i < process.argv.length; i += 2) {
    const k = process.argv[i].replace(/^--/, '').replace(/-(.)/g, (_, c) => c.toUpperCase());
    if (!(k in o) || process.argv[i + 1] === undefined) {
        process.stderr.write(`cdp_connect.mjs: bad argument ${process.argv[i]}\n`);
        process.exit(2);
    }
    o[k] = k === 'timeoutMs' ? parseInt(process.argv[i + 1], 10) : process.argv[i + 1];
}
if (!o.url || !o.session) {
    process.stderr.write('cdp_connect.mjs: --url and --session are required\n');
    process.exit(2);
}

const out = { ok: false, error: null };
const timer = setTimeout(() => { out.error = 'global timeout'; finish(3); }, o.timeoutMs);

function finish(code) {
    clearTimeout(timer);
    process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(code));
}

try {
    const browser = await chromium.connectOverCDP(o.url, {
        headers: { 'x-fc-session-id': o.session }, timeout: 30000 });
    out.version = browser.version();
    const ctx = browser.contexts()[0];
    out.contexts = browser.contexts().length;
    if (o.title) {
        const page = await ctx.newPage();
        const html = `<!doctype html><title>${o.title}</title><p id="p">session ${o.session}</p>`;
        await page.goto('data:text/html,' + encodeURIComponent(html));
        out.title = await page.title();
        out.computed = await page.evaluate(() => [document.getElementById('p').textContent,
                                                  6 * 7, navigator.userAgent.includes('Chrome')]);
    }
    out.titles = [];
    for (const c of browser.contexts())
        for (const p of c.pages())
            out.titles.push(await p.title());
    out.ok = true;
    // No browser.close(): it would end the browser, which is the session's; exiting drops
    // our WebSocket only.
} catch (e) {
    out.error = String(e?.stack ?? e).slice(0, 2000);
}
finish(0);

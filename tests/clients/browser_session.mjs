// A real browser (Debian's Chromium, driven by playwright-core; never a downloaded browser)
// using a Berth gateway the way a browser agent does: no custom headers, only the session
// cookie the gateway issues. Prints one JSON document.
//
//   node browser_session.mjs --url http://127.0.0.1:PORT [--echo /echo/] [--ws /ws/]
//        [--chromium /usr/bin/chromium] [--timeout-ms 60000]
//
// Steps (each recorded, the test judges):
//   echo:   in a fresh context, navigations to <echo>a, <echo>b?x=1 (a link click) and
//           <echo>c (a form GET), plus a fetch() from the page; per navigation: status,
//           x-berth-instance, x-berth-session, set-cookie, and berth-echo's JSON (its
//           "instance" and the Cookie header it received); the context's cookies after.
//   other:  a second fresh context loads <echo>a: it must get its own session.
//   ws:     in the first context, <ws>page (served by the ws app, which issues its own cookie),
//           then inside the page: a WebSocket to <ws>echo, echo + whoami, a client close
//           (code 1000), a second WebSocket the app closes with 4001.
//   wsFirst: a fresh profile on an echo page opens two WebSockets to <ws>echo one after the
//           other (no page of the ws route loaded first): both must reach one instance.

import { chromium } from 'playwright-core';

const o = { url: null, echo: '/echo/', ws: '/ws/', chromium: '/usr/bin/chromium', timeoutMs: 60000 };
for (let i = 2; i < process.argv.length; i += 2) {
    const k = process.argv[i].replace(/^--/, '').replace(/-(.)/g, (_, c) => c.toUpperCase());
    if (!(k in o) || process.argv[i + 1] === undefined) {
        process.stderr.write(`browser_session.mjs: bad argument ${process.argv[i]}\n`);
        process.exit(2);
    }
    o[k] = k === 'timeoutMs' ? parseInt(process.argv[i + 1], 10) : process.argv[i + 1];
}
if (!o.url) {
    process.stderr.write('browser_session.mjs: --url is required\n');
    process.exit(2);
}

const out = { ok: false, error: null, echo: [], other: null, cookies: [], ws: null };
const timer = setTimeout(() => {
    out.error = 'global timeout';
    finish(3);
}, o.timeoutMs);

function finish(code) {
    clearTimeout(timer);
    process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(code));
}

async function record(resp) {
    const h = await resp.allHeaders(); // headers() leaves out Set-Cookie
    const rec = { url: resp.url(), status: resp.status(), instance: h['x-berth-instance'] ?? null,
                  session: h['x-berth-session'] ?? null, setCookie: h['set-cookie'] ?? null };
    try {
        const j = JSON.parse(await resp.text());
        rec.echoInstance = j.instance;
        rec.echoPath = j.path;
        rec.cookieSent = j.headers?.cookie ?? null;
    } catch {
        rec.body = (await resp.text().catch(() => '')).slice(0, 200);
    }
    return rec;
}

let browser;
try {
    browser = await chromium.launch({
        executablePath: o.chromium, headless: true, timeout: 30000,
        args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking',
               '--disable-component-update', '--disable-sync', '--no-first-run'],
    });
    out.browserVersion = browser.version();
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    const base = new URL(o.url);
    const at = p => new URL(p, base).href;

    // 1. plain navigation
    out.echo.push(await record(await page.goto(at(o.echo + 'a'))));
    // 2. a link click (a navigation the page itself starts)
    await page.evaluate(href => {
        const a = document.createElement('a');
        a.href = href;
        a.id = 'go';
        a.textContent = 'go';
        document.body.appendChild(a);
    }, at(o.echo + 'b?x=1'));
    const [r2] = await Promise.all([page.waitForResponse(r => r.url().includes(o.echo + 'b')),
                                    page.click('#go')]);
    out.echo.push(await record(r2));
    await page.waitForLoadState();
    // 3. a form submission (GET)
    await page.evaluate(action => {
        const f = document.createElement('form');
        f.method = 'GET';
        f.action = action;
        const i = document.createElement('input');
        i.name = 'q';
        i.value = 'form';
        f.appendChild(i);
        document.body.appendChild(f);
        f.submit();
    }, at(o.echo + 'c'));
    const r3 = await page.waitForResponse(r => r.url().includes(o.echo + 'c'));
    out.echo.push(await record(r3));
    await page.waitForLoadState();
    // 4. fetch() from the page (same origin: the cookie goes along)
    out.fetch = await page.evaluate(async u => {
        const r = await fetch(u, { credentials: 'same-origin' });
        const j = await r.json();
        return { status: r.status, instance: r.headers.get('x-berth-instance'),
                 echoInstance: j.instance, cookieSent: j.headers.cookie ?? null };
    }, at(o.echo + 'fetch'));
    out.cookies = await ctx.cookies();

    // another browser profile: another session
    const ctx2 = await browser.newContext();
    const p2 = await ctx2.newPage();
    out.other = await record(await p2.goto(at(o.echo + 'a')));
    out.otherCookies = await ctx2.cookies();
    await ctx2.close();

    // WebSocket through the gateway, from inside a page of the ws app
    const wsPageResp = await page.goto(at(o.ws + 'page'));
    const wsHead = await wsPageResp.allHeaders();
    out.ws = { page: { status: wsPageResp.status(), instance: wsHead['x-berth-instance'] ?? null,
                       setCookie: wsHead['set-cookie'] ?? null,
                       title: await page.title(),
                       info: JSON.parse(await page.textContent('#info')) } };
    out.ws.inPage = await page.evaluate(async wsPath => {
        const url = `ws://${location.host}${wsPath}`;
        const open = () => new Promise((res, rej) => {
            const ws = new WebSocket(url);
            const msgs = [];
            const waiters = [];
            ws.onmessage = e => { msgs.push(e.data); waiters.splice(0).forEach(w => w()); };
            ws.onopen = () => res({ ws, msgs, next: () => new Promise(r => {
                if (msgs.length) r(); else waiters.push(r); }) });
            ws.onerror = () => rej(new Error('websocket error'));
            setTimeout(() => rej(new Error('websocket open timeout')), 10000);
        });
        const closed = ws => new Promise(res => {
            if (ws.readyState === WebSocket.CLOSED) res({ code: -1 });
            ws.onclose = e => res({ code: e.code, reason: e.reason, clean: e.wasClean });
            setTimeout(() => res({ code: 'timeout' }), 10000);
        });
        const r = {};
        const a = await open();
        const got = [];
        for (const m of ['hello', 'whoami', 'x'.repeat(70000)]) {
            a.ws.send(m);
            await a.next();
            got.push(a.msgs.shift());
        }
        r.echo = got[0];
        r.whoami = got[1];
        r.bigOk = got[2] === 'echo:' + 'x'.repeat(70000);
        const c1 = closed(a.ws);
        a.ws.close(1000, 'bye');
        r.clientClose = await c1;
        const b = await open();
        const c2 = closed(b.ws);
        b.ws.send('close:4001');
        r.serverClose = await c2;
        return r;
    }, o.ws + 'echo');
    out.ws.stats = await (await page.request.get(at(o.ws + 'stats'))).json();

    // A WebSocket opened before any page of its route was loaded: the cookie comes with the
    // 101 answer, so the next WebSocket of this profile reaches the same instance.
    const ctx3 = await browser.newContext();
    const p3 = await ctx3.newPage();
    await p3.goto(at(o.echo + 'wsfirst'));
    out.wsFirst = await p3.evaluate(async wsPath => {
        const whoami = () => new Promise((res, rej) => {
            const ws = new WebSocket(`ws://${location.host}${wsPath}`);
            ws.onopen = () => ws.send('whoami');
            ws.onmessage = e => { ws.close(1000); res(e.data); };
            ws.onerror = () => rej(new Error('websocket error'));
            setTimeout(() => rej(new Error('websocket timeout')), 10000);
        });
        return [await whoami(), await whoami()];
    }, o.ws + 'echo');
    out.wsFirstCookies = (await ctx3.cookies()).map(c => c.name).sort();
    await ctx3.close();
    out.ok = true;
} catch (e) {
    out.error = String(e?.stack ?? e).slice(0, 2000);
} finally {
    if (browser)
        await browser.close().catch(() => {});
}
finish(0);

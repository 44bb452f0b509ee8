// One exchange with the gateway through undici's fetch on <agent>, recorded into <rec> (status,
// instance, content type, Mcp-Session-Id; the error body of a 4xx/5xx, the client getting an
// equal copy; a transport error). Shared by the MCP test clients.
import { fetch as undiciFetch } from 'undici';

export async function recordedFetch(rec, url, init, agent) {
    try {
        const res = await undiciFetch(url, { ...init, dispatcher: agent });
        rec.status = res.status;
        rec.instance = res.headers.get('x-berth-instance');
        rec.mcpSessionId = res.headers.get('mcp-session-id');
        rec.contentType = res.headers.get('content-type');
        if (res.status >= 400) {
            const body = await res.text();
            rec.body = body.slice(0, 300);
            return new Response(body, { status: res.status, statusText: res.statusText,
                                        headers: res.headers });
        }
        return res;
    } catch (e) {
        rec.error = String(e?.cause?.message ?? e?.message ?? e);
        throw e;
    }
}

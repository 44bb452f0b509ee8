// An MCP server made the way the TypeScript SDK's README shows: createMcpExpressApp() (bound
// to 127.0.0.1, so its DNS-rebinding protection is on: a request whose Host is not 127.0.0.1,
// localhost or [::1] is answered 403 "Invalid Host") with a stateful Streamable HTTP
// transport on /mcp. Used by tests/integration/test_keyless.py as the app of a sandbox: the
// gateway must give it its own address as Host (upstream_host: instance).
//
//   PORT=8000 node mcp_host_checked.mjs
//
// One tool, "whoami", answers the instance id (BERTH_INSTANCE_ID) the server runs in.
import { randomUUID } from 'node:crypto';
import { createMcpExpressApp } from '@modelcontextprotocol/sdk/server/express.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';

const port = parseInt(process.env.PORT || '8000', 10);
const app = createMcpExpressApp();
const transports = new Map();

app.all('/mcp', async (req, res) => {
    const sid = req.headers['mcp-session-id'];
    let t = sid ? transports.get(sid) : undefined;
    if (!t) {
        if (sid || req.method !== 'POST' || !isInitializeRequest(req.body)) {
            res.status(sid ? 404 : 400).json({
                jsonrpc: '2.0', id: null,
                error: { code: -32000, message: sid ? 'Session not found' : 'Bad Request: No valid session ID provided' },
            });
            return;
        }
        t = new StreamableHTTPServerTransport({
            sessionIdGenerator: () => randomUUID(),
            onsessioninitialized: (id) => transports.set(id, t),
        });
        t.onclose = () => { if (t.sessionId) transports.delete(t.sessionId); };
        const server = new McpServer({ name: 'berth-host-checked', version: '1.0.0' });
        server.registerTool('whoami', { description: 'the instance this server runs in' },
            async () => ({ content: [{ type: 'text', text: process.env.BERTH_INSTANCE_ID || '' }] }));
        await server.connect(t);
    }
    await t.handleRequest(req, res, req.body);
});

app.listen(port, '127.0.0.1', () => console.log(`mcp_host_checked listening on 127.0.0.1:${port}`));

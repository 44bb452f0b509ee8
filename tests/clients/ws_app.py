#!/usr/bin/python3
"""A tiny WebSocket echo app for the `ws` test template (Debian's python3-websockets, run by
/usr/bin/python3 inside the sandbox). Paths are matched by their last segment, so any route
prefix works:

  GET .../stats         JSON: instance, connections open now, opened, closed, the close codes
                        the app received from clients, messages echoed, and for every ended
                        connection how it ended ("client-close", "server-close", "eof")
  GET any other path    a small HTML page titled "ws-app <instance>" whose body is JSON:
                        instance, path, the Cookie header it received
  WebSocket, any path   echoes every message as "echo:<message>"; "whoami" answers the
                        instance id; "close:<code>" makes the app close with <code>

Pings are off on purpose: a silent peer stays silent, so the gateway's idle timeout is what
ends it. Usage: ws_app.py --port N [--host 127.0.0.1]
"""

import argparse
import asyncio
import http
import json
import os

import websockets

INSTANCE = os.environ.get("BERTH_INSTANCE_ID", "local")
STATS = {"open": 0, "opened": 0, "closed": 0, "close_codes": [], "messages": 0, "ends": []}


def last_segment(path):
    return path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


async def process_request(path, headers):
    if "upgrade" in headers.get("Connection", "").lower():
        return None  # go on with the WebSocket handshake
    if last_segment(path) == "stats":
        body = json.dumps(dict(STATS, instance=INSTANCE)).encode()
        ctype = "application/json"
    else:
        info = json.dumps({"instance": INSTANCE, "path": path,
                           "cookie": headers.get("Cookie", "")})
        body = ("<!doctype html><html><head><title>ws-app %s</title></head>"
                "<body><pre id=\"info\">%s</pre></body></html>" % (INSTANCE, info)).encode()
        ctype = "text/html; charset=utf-8"
    return (http.HTTPStatus.OK,
            [("Content-Type", ctype), ("Content-Length", str(len(body))),
             ("Cache-Control", "no-store")], body)


async def handler(ws, path=None):
    STATS["open"] += 1
    STATS["opened"] += 1
    how = "eof"
    try:
        async for msg in ws:
            STATS["messages"] += 1
            if msg == "whoami":
                await ws.send(INSTANCE)
            elif isinstance(msg, str) and msg.startswith("close:"):
                how = "server-close"
                await ws.close(code=int(msg[6:]), reason="asked to")
                break
            else:
                await ws.send("echo:%s" % msg if isinstance(msg, str) else msg)
        if how == "eof" and ws.close_code is not None and ws.close_rcvd is not None:
            how = "client-close"
    except websockets.ConnectionClosed:
        pass
    finally:
        if ws.close_rcvd is not None and how == "eof":
            how = "client-close"
        if ws.close_rcvd is not None:
            STATS["close_codes"].append(ws.close_rcvd.code)
        STATS["open"] -= 1
        STATS["closed"] += 1
        STATS["ends"].append(how)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    a = ap.parse_args()
    async with websockets.serve(handler, a.host, a.port, process_request=process_request,
                                ping_interval=None, close_timeout=2, max_size=1 << 20):
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())

#!/usr/bin/python3
"""A small misbehaving legacy-MCP (HTTP+SSE, 2024-11-05) server for the gateway's bad-input
tests; Python's standard library only, run by /usr/bin/python3 inside the sandbox. Paths are
matched by their last segment, so any route prefix works.

  GET .../sse?mode=good[&param=sessionId|session_id]
        a correct stream: "endpoint" event naming .../message?<param>=<fresh id>, then one
        "message" event per second (until the client goes, at most 120)
  GET .../sse?mode=noendpoint&bytes=N
        never an endpoint event: N bytes of "message" events and comments, then silence
        (the stream stays open until the client goes, at most 120 s)
  GET .../sse?mode=cut&framing=chunked|close
        starts an endpoint event ("event: endpoint\\ndata: /message?sessionId=cut-") and
        closes the connection in the middle of it (chunked: no last chunk; close: a
        close-delimited body)
  GET .../sse?mode=badid
        an endpoint event whose sessionId is not a valid session key (200 characters)
  POST .../message?sessionId=ID (or session_id=ID)
        202 with JSON {instance, id, known}: whether this instance issued ID
  GET .../stats
        JSON {instance, ids: [ids issued]}

Usage: sse_app.py --port N [--host 127.0.0.1]
"""

import argparse
import json
import os
import secrets
import select
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

INSTANCE = os.environ.get("BERTH_INSTANCE_ID", "local")
IDS = []
LOCK = threading.Lock()
STREAM_LIMIT_S = 120


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep the console log short
        pass

    def _json(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _sse_head(self, chunked=False, close=False):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.flush()

    def _chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _until_gone(self, chunked, seconds, tick=None):
        """Keeps the stream open (writing tick() each second if given) until the client goes."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                if tick:
                    data = tick()
                    self._chunk(data) if chunked else self.wfile.write(data)
                    self.wfile.flush()
                readable, _, _ = select.select([self.connection], [], [], 1.0)
                if readable and self.connection.recv(4096) == b"":
                    return  # the client (the gateway) closed its side
            except OSError:
                return

    def do_GET(self):
        u = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        seg = u.path.rstrip("/").rsplit("/", 1)[-1]
        base = u.path[: len(u.path) - len(seg)]
        if seg == "stats":
            with LOCK:
                return self._json(200, {"instance": INSTANCE, "ids": list(IDS)})
        if seg != "sse":
            return self._json(404, {"error": "unknown path"})
        mode = q.get("mode", "good")
        if mode == "good":
            sid = secrets.token_hex(12)
            with LOCK:
                IDS.append(sid)
            param = q.get("param", "sessionId")
            self._sse_head(chunked=True)
            self._chunk(b"event: endpoint\ndata: %smessage?%s=%s\n\n" % (
                base.encode(), param.encode(), sid.encode()))
            n = [0]

            def tick():
                n[0] += 1
                return b"event: message\ndata: {\"tick\": %d}\n\n" % n[0]
            self._until_gone(True, STREAM_LIMIT_S, tick)
        elif mode == "noendpoint":
            total = int(q.get("bytes", "4096"))
            self._sse_head(chunked=True)
            sent, i = 0, 0
            while sent < total:
                ev = b": padding %d\nevent: message\ndata: {\"n\": %d, \"pad\": \"%s\"}\n\n" % (
                    i, i, b"x" * 100)
                self._chunk(ev)
                sent += len(ev)
                i += 1
            self._until_gone(True, STREAM_LIMIT_S)
        elif mode == "cut":
            framing = q.get("framing", "chunked")
            part = b"event: endpoint\ndata: %smessage?sessionId=cut-" % base.encode()
            if framing == "chunked":
                self._sse_head(chunked=True)
                self._chunk(part)
            else:
                self._sse_head(close=True)
                self.wfile.write(part)
                self.wfile.flush()
            time.sleep(0.3)
            self.close_connection = True
            self.connection.shutdown(2)
        elif mode == "badid":
            self._sse_head(chunked=True)
            self._chunk(b"event: endpoint\ndata: %smessage?sessionId=%s\n\n" % (
                base.encode(), b"b" * 200))
            self._until_gone(True, STREAM_LIMIT_S)
        else:
            self._json(400, {"error": "unknown mode"})

    def do_POST(self):
        u = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        sid = q.get("sessionId", q.get("session_id"))
        with LOCK:
            known = sid in IDS
        self._json(202, {"instance": INSTANCE, "id": sid, "known": known})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    a = ap.parse_args()
    srv = ThreadingHTTPServer((a.host, a.port), Handler)
    srv.daemon_threads = True
    srv.serve_forever()


if __name__ == "__main__":
    main()

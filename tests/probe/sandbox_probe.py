"""The app of the sandbox-security tests (tests/integration/test_sandbox_security.py): a small
HTTP server on $PORT that runs what the test asks, inside the sandbox, as the sandbox's app.

  GET  /            {"instance", "uid", "gid"}
  POST /run         {"argv": [...], "timeout": s, "stdin": "..."} -> {"code", "stdout", "stderr"}
                    (outputs cut at 64 KiB; a command still running at timeout is killed, code -9)

It is a test fixture that deliberately runs arbitrary commands: only test templates use it."""
import json
import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CUT = 64 << 10


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.reply(200, {"instance": os.environ.get("BERTH_INSTANCE_ID"), "uid": os.getuid(),
                         "gid": os.getgid(), "path": self.path})

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        try:
            req = json.loads(self.rfile.read(n) or b"{}")
            argv = [str(a) for a in req["argv"]]
        except (ValueError, KeyError, TypeError) as e:
            self.reply(400, {"error": {"code": "bad_request", "message": str(e)}})
            return
        try:
            p = subprocess.run(argv, input=req.get("stdin", "").encode(), capture_output=True,
                               timeout=float(req.get("timeout", 20)))
            out = {"code": p.returncode, "stdout": p.stdout[:CUT].decode(errors="replace"),
                   "stderr": p.stderr[:CUT].decode(errors="replace")}
        except subprocess.TimeoutExpired as e:
            out = {"code": -9, "stdout": (e.stdout or b"")[:CUT].decode(errors="replace"),
                   "stderr": "timeout"}
        except OSError as e:
            out = {"code": 127, "stdout": "", "stderr": str(e)}
        self.reply(200, out)


if __name__ == "__main__":
    srv = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    srv.daemon_threads = True
    print("probe listening", file=sys.stderr, flush=True)
    srv.serve_forever()

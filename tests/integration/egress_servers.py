"""Servers for the egress tests, run in network namespaces the test made (stdlib only):

    egress_servers.py dns  ADDR  name=ip ...     a DNS server on ADDR:53 (UDP): A records for
                                                 the names given, no AAAA, NXDOMAIN otherwise
    egress_servers.py web  ADDR NAME [CERT KEY]  HTTP on ADDR:80 (and HTTPS on ADDR:443 with
                                                 CERT/KEY): every answer is JSON naming the
                                                 server, the Host it was asked for, the path and
                                                 the request's headers; GET /bytes/N
                                                 answers N bytes
"""
import http.server
import json
import socket
import socketserver
import ssl
import struct
import sys
import threading


def dns(addr, records):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, 53))
    print("ready", flush=True)
    while True:
        q, peer = s.recvfrom(512)
        if len(q) < 12:
            continue
        qid, flags, qd = struct.unpack(">HHH", q[:6])
        i, labels = 12, []
        while i < len(q) and q[i]:
            n = q[i]
            labels.append(q[i + 1:i + 1 + n].decode(errors="replace").lower())
            i += 1 + n
        i += 1
        if i + 4 > len(q):
            continue
        qtype, qclass = struct.unpack(">HH", q[i:i + 4])
        question = q[12:i + 4]
        name = ".".join(labels)
        answers = b""
        rcode = 0
        if name in records:
            if qtype == 1:
                ip = socket.inet_aton(records[name])
                answers = struct.pack(">HHHIH", 0xC00C, 1, 1, 5, 4) + ip
        else:
            rcode = 3
        ancount = 1 if answers else 0
        hdr = struct.pack(">HHHHHH", qid, 0x8180 | rcode, 1, ancount, 0, 0)
        s.sendto(hdr + question + answers, peer)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_name_ = "web"

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.startswith("/bytes/"):
            n = int(self.path[7:])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            self.wfile.write(b"x" * n)
            return
        out = json.dumps({"server": self.server_name_, "host": self.headers.get("Host"),
                          "path": self.path, "method": self.command,
                          "headers": {k.lower(): v for k, v in self.headers.items()},
                          "body_bytes": len(body)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = answer

    def log_message(self, *a):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def web(addr, name, cert=None, key=None):
    Handler.server_name_ = name
    servers = [Server((addr, 80), Handler)]
    if cert:
        tls = Server((addr, 443), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
        servers.append(tls)
    for s in servers[1:]:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("ready", flush=True)
    servers[0].serve_forever()


if __name__ == "__main__":
    if sys.argv[1] == "dns":
        dns(sys.argv[2], dict(kv.split("=", 1) for kv in sys.argv[3:]))
    else:
        web(*sys.argv[2:])

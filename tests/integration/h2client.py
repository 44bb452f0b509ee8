"""A raw HTTP/2 client for tests (python3-h2): frames sent as the test says, events read with
deadlines. Used where curl and nghttp cannot go: many sessions on one connection, windows held
shut, resets, floods, and frames no well-behaved client sends."""

import socket
import ssl
import time

import h2.config
import h2.connection
import h2.events
import h2.settings

from conftest import SLOW


class H2:
    def __init__(self, port, tls_ca=None, host="localhost", settings=None, timeout=10,
                 rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout * SLOW)
        self.sock.connect(("127.0.0.1", port))
        if tls_ca:
            ctx = ssl.create_default_context(cafile=str(tls_ca))
            ctx.set_alpn_protocols(["h2"])
            self.sock = ctx.wrap_socket(self.sock, server_hostname=host)
            assert self.sock.selected_alpn_protocol() == "h2"
        self.authority = host
        self.conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                             validate_inbound_headers=True))
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.flush()
        self.streams = {}  # id -> dict(headers, data, trailers, ended, reset)
        self.goaway = None
        self.closed = False
        self.got_settings = False  # the gateway's SETTINGS arrived

    def flush(self):
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def send_raw(self, data):
        self.sock.sendall(data)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    # -- requests
    def new_stream(self):
        """The next stream id, and its record of what the gateway sent:
        headers, informational heads, data, trailers, ended, reset (its code), t_first and
        t_end (monotonic times of the first DATA and of the end); hold_window True keeps
        the stream's window shut."""
        sid = self.conn.get_next_available_stream_id()
        self.streams[sid] = {"headers": None, "informational": [], "data": b"",
                             "trailers": None, "ended": False, "reset": None, "t_first": None,
                             "t_end": None, "hold_window": False}
        return sid

    def request(self, path, headers=(), body=None, end=True, method=None):
        sid = self.new_stream()
        hdrs = [(":method", method or ("POST" if body is not None else "GET")),
                (":scheme", "https" if isinstance(self.sock, ssl.SSLSocket) else "http"),
                (":authority", self.authority), (":path", path)] + list(headers)
        self.conn.send_headers(sid, hdrs, end_stream=(body is None and end))
        if body is not None:
            self.send_body(sid, body, end=end)
        self.flush()
        return sid

    def send_body(self, sid, body, end=True):
        while body:
            n = min(len(body), self.conn.local_flow_control_window(sid),
                    self.conn.max_outbound_frame_size)
            if n <= 0:
                self.wait(lambda: self.conn.local_flow_control_window(sid) > 0,
                          what="window for stream %d" % sid)
                continue
            self.conn.send_data(sid, body[:n])
            body = body[n:]
            self.flush()
        if end:
            self.conn.end_stream(sid)
        self.flush()

    # -- reading
    def pump(self, timeout):
        """Reads once (up to <timeout> s) and handles the events. False on EOF or timeout."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return False
        except (ConnectionResetError, ssl.SSLError, OSError):
            self.closed = True
            return False
        if not data:
            self.closed = True
            return False
        try:
            evs = self.conn.receive_data(data)
        except Exception as e:  # the server broke the protocol: a test failure to show
            raise AssertionError("h2 protocol error from the gateway: %r" % e)
        now = time.monotonic()
        for ev in evs:
            st = self.streams.get(getattr(ev, "stream_id", None))
            if isinstance(ev, h2.events.ResponseReceived):
                st["headers"] = dict(ev.headers)
            elif isinstance(ev, h2.events.InformationalResponseReceived):
                st["informational"].append(dict(ev.headers))
            elif isinstance(ev, h2.events.DataReceived):
                if st is not None:
                    if st["t_first"] is None:
                        st["t_first"] = now
                    st["data"] += ev.data
                    if not st["hold_window"]:
                        self.conn.acknowledge_received_data(ev.flow_controlled_length,
                                                            ev.stream_id)
                    elif ev.flow_controlled_length:
                        # the connection's window is opened again, the stream's is not
                        self.conn.increment_flow_control_window(ev.flow_controlled_length)
                else:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length,
                                                        ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                st["trailers"] = dict(ev.headers)
            elif isinstance(ev, h2.events.StreamEnded):
                st["ended"] = True
                st["t_end"] = now
            elif isinstance(ev, h2.events.StreamReset):
                if st is not None:
                    st["reset"] = ev.error_code
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev
            elif isinstance(ev, h2.events.SettingsAcknowledged):
                pass
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                self.got_settings = True
        try:
            self.flush()
        except OSError:
            self.closed = True
        return True

    def wait(self, pred, timeout=10, what="condition"):
        deadline = time.monotonic() + timeout * SLOW
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out waiting for %s" % what)
            if not self.pump(min(left, 0.5)) and self.closed and not pred():
                raise AssertionError("connection closed waiting for %s (goaway %r)" % (
                    what, self.goaway))

    def wait_done(self, sid, timeout=10):
        self.wait(lambda: self.streams[sid]["ended"] or self.streams[sid]["reset"] is not None,
                  timeout, "stream %d to end" % sid)
        return self.streams[sid]

"""What the tests' HTTP stand-ins share: a server that takes a burst of connections, and a handler with
JSON answers and no access log."""
from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JsonHandler(BaseHTTPRequestHandler):
    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        return None


class LocalHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a listen backlog for a client's whole pool. socketserver's default of 5
    drops the SYNs of the sixth and later of 8 concurrent connections (the gate's scoring threads), and
    the kernel resends them a second later: the tests then wait, not work."""

    request_queue_size = 128
    daemon_threads = True

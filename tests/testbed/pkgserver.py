"""A package server for agent upgrades: serves a directory over HTTP with Range support
(http.server has none), from a thread, on a chosen address (loopback, or a test bridge
that containers reach). It records every request's path and Range header, and can cut a
response off after ``cut_after`` bytes, as a flaky link does, to test resumed downloads.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-$")


@dataclass
class PackageServer:
    root: Path
    host: str
    port: int = 0
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    """(path, Range header) of every GET, in order."""
    cut_after: int | None = None
    """Send at most this many body bytes per response, then drop the connection (once)."""

    def url(self, name: str) -> str:
        return f"http://{self.host}:{self.port}/{name}"


def _handler(server: PackageServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            rng = self.headers.get("Range")
            server.requests.append((self.path, rng))
            path = server.root / self.path.lstrip("/")
            if not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            start = 0
            if rng is not None:
                m = _RANGE.match(rng)
                if m is None or int(m.group(1)) >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = int(m.group(1))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if server.cut_after is not None:
                body, server.cut_after = body[: server.cut_after], None
                self.wfile.write(body)
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@contextmanager
def package_server(root: Path, host: str = "127.0.0.1") -> Iterator[PackageServer]:
    server = PackageServer(root=root, host=host)
    httpd = ThreadingHTTPServer((host, 0), _handler(server))
    httpd.daemon_threads = True
    server.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, name="pkgserver", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)

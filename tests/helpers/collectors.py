"""OTLP/HTTP collectors on loopback ports for the exporter tests: one that answers every
export (at once or after a delay) and keeps the bodies it received, and dead ones (a port
that refuses connections, or one that accepts them and never answers)."""

from __future__ import annotations

import gzip
import http.server
import socket
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal


@dataclass
class Collector:
    url: str
    bodies: list[bytes] = field(default_factory=list)  # decompressed, in arrival order


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    collector: Collector
    delay_s: float
    stop: threading.Event

    def do_POST(self) -> None:  # the stdlib names it so
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        self.collector.bodies.append(body)
        if self.stop.wait(self.delay_s):
            return  # the test is over: hang up instead of answering late
        self.send_response(200)  # an empty protobuf answer means: all accepted
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # an exporter that gave up on a slow answer is what some tests are about


@contextmanager
def otlp_collector(delay_s: float = 0.0) -> Iterator[Collector]:
    """A collector that accepts every export, answering after ``delay_s`` seconds."""
    server = _QuietServer(("127.0.0.1", 0), _Handler)
    collector = Collector(f"http://127.0.0.1:{server.server_address[1]}")
    stop = threading.Event()
    server.RequestHandlerClass = type("Handler", (_Handler,), {
        "collector": collector, "delay_s": delay_s, "stop": stop})
    thread = threading.Thread(target=server.serve_forever, name="otlp-collector", daemon=True)
    thread.start()
    try:
        yield collector
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


@contextmanager
def dead_endpoint(kind: Literal["refused", "black-holed"]) -> Iterator[str]:
    """The URL of a loopback port where nothing listens (connections are refused), or where
    the kernel completes handshakes and nobody ever reads or answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if kind == "refused":
        sock.close()
    else:
        sock.listen(1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        sock.close()

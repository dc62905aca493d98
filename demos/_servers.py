"""What the demos share: loopback servers that answer at chosen speeds, and a recorder that
gives each variant of a demo its own looptrace verdict.

Nothing here touches the network beyond 127.0.0.1. Every server runs in daemon threads of
the demo's own process and stops when the ``with`` block ends.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import looptrace
from looptrace import Session
from looptrace.session import BlockEvent, LoopSummary

# -- a web server whose sites answer at different speeds


@dataclass(frozen=True)
class Site:
    """One site of :func:`paced_sites`: ``GET /site/<name>`` sends ``size`` bytes at
    ``rate`` bytes per second (the headers go out at once)."""

    name: str
    size: int
    rate: float

    @property
    def seconds(self) -> float:
        """How long the body takes to arrive when the client keeps reading."""
        return self.size / self.rate


_CHUNK = 16 * 1024
# A small send buffer on the server side, so a body is not parked in the kernel while the
# client is not reading: as on a real network, a download only makes progress while
# somebody reads its socket (TCP flow control).
_SEND_BUFFER = 16 * 1024


class _PacedHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    sites: ClassVar[dict[str, Site]] = {}

    def setup(self) -> None:
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
        super().setup()

    def do_GET(self) -> None:
        site = self.sites.get(self.path.rsplit("/", 1)[-1])
        if site is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(site.size))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        self.wfile.flush()
        chunk = b"x" * _CHUNK
        pause = _CHUNK / site.rate
        sent = 0
        try:
            while sent < site.size:
                piece = chunk[: site.size - sent]
                # sendall waits while the client's receive window is full: the pacing
                # clock only runs while the client reads.
                self.wfile.write(piece)
                sent += len(piece)
                time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    # The default backlog (5) drops the connections a burst of clients opens at once (a
    # pool of 16 workers), and a dropped SYN is sent again only after a second.
    request_queue_size = 128


@contextmanager
def serve(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """Run ``handler`` on a threaded loopback HTTP server; yield its base URL."""
    server = _Server(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="demo-http", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield f"http://{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def paced_sites(sites: list[Site]) -> Iterator[dict[str, str]]:
    """Serve each site on one loopback server; yield ``{name: url}``."""
    handler = type("PacedSites", (_PacedHandler,), {"sites": {s.name: s for s in sites}})
    with serve(handler) as base:
        yield {site.name: f"{base}/site/{site.name}" for site in sites}


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of one TCP connection over 127.0.0.1: (the receiver, the sender)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        sender = socket.create_connection(listener.getsockname()[:2])
        receiver, _ = listener.accept()
    return receiver, sender


class Sender:
    """Another program sending messages: a thread, started *before* the event loop (starting
    a thread waits for it to boot, which is no business of the loop's), that waits for
    :meth:`go` and then calls ``send(n)`` for n in 0..count-1, one every ``interval_s``."""

    def __init__(self, send: Callable[[int], None], count: int, interval_s: float) -> None:
        self._go = threading.Event()

        def run() -> None:
            self._go.wait()
            for number in range(count):
                time.sleep(interval_s)
                send(number)

        self._thread = threading.Thread(target=run, name="sender", daemon=True)
        self._thread.start()

    def go(self) -> None:
        """Start sending (never waits: safe on the loop thread)."""
        self._go.set()

    def join(self) -> None:
        self._go.set()
        self._thread.join()


# -- one looptrace verdict per variant


def milliseconds(value_ms: float) -> str:
    """``1234 ms``, ``12 ms``, ``0.4 ms``: as many digits as the size deserves."""
    return f"{value_ms:.0f} ms" if value_ms >= 10 else f"{value_ms:.1f} ms"


@dataclass
class Recorded:
    """What looptrace saw during one variant: its blocks and the loops it created (and the
    variant's wall time, which the demo measures itself)."""

    label: str
    wall_s: float = 0.0
    blocks: list[BlockEvent] = field(default_factory=list)
    loops: list[LoopSummary] = field(default_factory=list)
    session: Session | None = None

    def blocks_at(self, filename: str) -> list[BlockEvent]:
        """The blocks whose site is in ``filename``."""
        return [b for b in self.blocks if b.site is not None and b.site.file == filename]

    @property
    def loop(self) -> LoopSummary | None:
        """The variant's loop on the main thread (the one the demo runs its tasks on)."""
        main = [loop for loop in self.loops if loop.thread == threading.main_thread().name]
        candidates = main or self.loops
        return candidates[-1] if candidates else None

    def loop_line(self) -> str:
        """How the loop spent the variant: busy (running steps) vs waiting in select/epoll."""
        loop = self.loop
        if loop is None or loop.busy_ms is None or loop.io_wait_ms is None:
            return "loop figures not available"
        total = loop.busy_ms + loop.io_wait_ms
        return (f"loop busy {loop.busy_ms / total * 100 if total else 0:.1f}% "
                f"({milliseconds(loop.busy_ms)} running steps, {milliseconds(loop.io_wait_ms)} "
                "waiting in "
                f"{loop.kind.removeprefix('selector:')}, {loop.iterations} iterations)")

    def verdict(self) -> str:
        """One line per blocking site (call, site, count, total), or the all-clear."""
        if not self.blocks:
            return "no block of the loop"
        groups: dict[tuple[str, str], list[float]] = {}
        for block in self.blocks:
            site = block.site
            where = f"line {site.line} in {site.function}" if site else "(site unknown)"
            groups.setdefault((block.call or block.kind, where), []).append(block.duration_ms)
        lines = []
        for (call, where), durations in sorted(groups.items(), key=lambda g: -sum(g[1])):
            lines.append(f"{len(durations)} block{'s' if len(durations) != 1 else ''} "
                         f"{call} at {where}, {sum(durations):.0f} ms in all, "
                         f"longest {max(durations):.0f} ms")
        return "\n".join(lines)


@contextmanager
def recorded(label: str, **options: Any) -> Iterator[Recorded]:
    """Record one variant of a demo with looptrace.

    Run as ``python demos/X.py``, each variant gets its own installation (and so its own
    report), with ``options`` and, for the others, the ``LOOPTRACE_*`` environment and the
    defaults: the same threshold (100 ms) as ``looptrace run``. Under ``looptrace run``, the
    whole program is already recorded with the command's options: the variant's blocks are
    then the ones that started while it ran, and its loops the ones created meanwhile.
    """
    result = Recorded(label)
    if looptrace.is_installed():
        before = {loop.id for loop in looptrace.snapshot().loops}
        started_ns = time.time_ns()
        yield result
        ended_ns = time.time_ns()
        session = looptrace.snapshot()
        result.blocks = [b for b in session.blocks if started_ns <= b.start_unix_ns <= ended_ns]
        result.loops = [loop for loop in session.loops if loop.id not in before]
    else:
        with looptrace.installed(**options) as tracing:
            yield result
        session = tracing.snapshot()
        result.blocks = list(session.blocks)
        result.loops = list(session.loops)
    result.session = session

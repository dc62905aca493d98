"""The configurations the benchmark compares: no tracer, looptrace, and the peers.

Each tool is applied the way perf-anchors.md describes: installed before the loop exists,
started right before the timed region and stopped after it (inside the loop, for the tools
that must be started there). Saving traces, reading stats and flushing spans are not timed.
``SCALE`` shrinks a workload for the tools that are too slow to run it whole; the baseline
of the pair runs at the same size, so per-operation ratios are unaffected.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

# Tools, in table order.
LOOPTRACE_TOOLS = ("looptrace", "looptrace_full")
PEER_TOOLS = ("asyncio_debug", "aiodebug", "blockbuster", "otel_asyncio", "yappi",
              "pyinstrument")
ALL_TOOLS = LOOPTRACE_TOOLS + PEER_TOOLS

DESCRIPTIONS = {
    "none": "no tracer (the baseline of every pair)",
    "looptrace": "`looptrace.install()`: default configuration (blocks, select waits, loop "
                 "figures; C step hook and select timer)",
    "looptrace_full": "`looptrace.install(mode=\"full\", buffer_size=1_000_000)`: every step "
                      "and every select wait recorded, and exported by an in-process sink "
                      "thread (benchmarks/sink.py) that copies them out of the rings every "
                      "50 ms; rings of a million records, because a loop that selects every "
                      "millisecond can keep another thread from the GIL for most of a second",
    "asyncio_debug": "`PYTHONASYNCIODEBUG=1` + `loop.set_debug(True)`",
    "aiodebug": "`log_slow_callbacks.enable(0.05)` + `monitor_loop_lag.enable(statsd, "
                "interval=0.25)`",
    "blockbuster": "`BlockBuster()` (all modules scanned), `activate()`",
    "otel_asyncio": "SDK `TracerProvider` + `BatchSpanProcessor` into a counting exporter, "
                    "`AsyncioInstrumentor().instrument()`, "
                    "`OTEL_PYTHON_ASYNCIO_COROUTINE_NAMES_TO_TRACE` = the workload's coroutines",
    "yappi": "`yappi.set_clock_type(\"wall\")`, `yappi.start()`",
    "pyinstrument": "`Profiler(async_mode=\"enabled\", interval=0.001)`, started in the loop",
}

SCALE: dict[str, dict[str, float]] = {
    "asyncio_debug": {"callback_chain": 0.25, "task_pingpong": 0.25, "socket_echo": 0.5},
    "yappi": {"callback_chain": 0.5, "task_pingpong": 0.25},
    "pyinstrument": {"callback_chain": 0.25, "task_pingpong": 0.5},
}

# OpenTelemetry's asyncio instrumentation makes spans only for coroutines named here.
OTEL_TRACED = {
    "task_pingpong": "pingpong_worker",
    "socket_echo": "echo_client",
    "aiohttp": "part_a,part_b",
    "callback_chain": "",
}

# Full mode's rings for the benchmark: a busy loop that releases the GIL only for short
# selects starves a waiting thread (CPython's GIL hand-off restarts the waiter's 5 ms
# timeout at every release), so the sink may not run for several hundred milliseconds; a
# million records cover that at a microsecond per step. Records lost anyway are counted.
FULL_MODE_BUFFER = 1_000_000

# glibc's dynamic mmap threshold makes `sock.recv(256 KiB)` either a heap allocation or an
# mmap/munmap pair per read depending on what the process allocated before: importing a
# tracer can flip it and fake a 2.8x "overhead" (perf-anchors.md). Pin it in every run.
MALLOC_PINNED = "glibc.malloc.mmap_threshold=1048576:glibc.malloc.trim_threshold=4194304"


def scale_for(tool: str, workload: str) -> float:
    return SCALE.get(tool, {}).get(workload, 1.0)


def environment(tool: str, workload: str) -> dict[str, str]:
    """Variables a tool needs in the workload process (on top of the pinned malloc)."""
    env = {"GLIBC_TUNABLES": MALLOC_PINNED}
    if tool == "asyncio_debug":
        env["PYTHONASYNCIODEBUG"] = "1"
    if tool == "otel_asyncio":
        env["OTEL_PYTHON_ASYNCIO_COROUTINE_NAMES_TO_TRACE"] = OTEL_TRACED.get(workload, "")
    return env


class ToolRun:
    """One tool in one workload process: ``install`` before the loop, ``start``/``stop``
    inside it around the timed region, ``finish`` after it (returns extra figures)."""

    debug = False

    def install(self) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def finish(self) -> dict[str, Any]:
        return {}


class NoTool(ToolRun):
    pass


class Looptrace(ToolRun):
    def __init__(self, full: bool) -> None:
        self.full = full
        self.sink: Any = None

    def install(self) -> None:
        import looptrace

        if self.full:
            looptrace.install(mode="full", buffer_size=FULL_MODE_BUFFER)
            from sink import FullTraceSink

            self.sink = FullTraceSink()
            self.sink.start()
        else:
            looptrace.install()

    def stop(self) -> None:
        if self.sink is not None:
            self.extra = self.sink.stop()

    def finish(self) -> dict[str, Any]:
        import looptrace
        from looptrace import _api

        installation = _api._current
        accelerated = installation.tracer.accelerated if installation is not None else None
        session = looptrace.uninstall()
        extra: dict[str, Any] = dict(getattr(self, "extra", {}))
        extra["accelerated"] = accelerated
        if session is not None:
            data = session.to_dict()
            extra["hotspots"] = len(data.get("hotspots", ()))
            extra["faults"] = data.get("faults")
            extra["dropped"] = data.get("dropped")
        return extra


class AsyncioDebug(ToolRun):
    debug = True

    def start(self) -> None:
        asyncio.get_running_loop().set_debug(True)


class Aiodebug(ToolRun):
    def install(self) -> None:
        from aiodebug import log_slow_callbacks  # type: ignore[import-untyped]

        log_slow_callbacks.enable(0.05, on_slow_callback=lambda name, duration: None)

    def start(self) -> None:
        from aiodebug import monitor_loop_lag

        class Statsd:
            def __init__(self) -> None:
                self.timings: list[float] = []

            def timing(self, metric: str, value: float) -> None:
                self.timings.append(value)

        monitor_loop_lag.enable(Statsd(), interval=0.25, loop=asyncio.get_running_loop())


class Blockbuster(ToolRun):
    def install(self) -> None:
        from blockbuster import BlockBuster

        self.buster = BlockBuster()
        self.buster.activate()

    def finish(self) -> dict[str, Any]:
        self.buster.deactivate()
        return {}


class OtelAsyncio(ToolRun):
    def install(self) -> None:
        from opentelemetry import trace
        from opentelemetry.instrumentation.asyncio import AsyncioInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class CountingExporter(SpanExporter):
            def __init__(self) -> None:
                self.spans = 0

            def export(self, spans: Any) -> SpanExportResult:
                self.spans += len(spans)
                return SpanExportResult.SUCCESS

        self.exporter = CountingExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(BatchSpanProcessor(self.exporter))
        trace.set_tracer_provider(self.provider)
        AsyncioInstrumentor().instrument()

    def finish(self) -> dict[str, Any]:
        self.provider.force_flush()
        self.provider.shutdown()
        return {"spans_exported": self.exporter.spans}


class Yappi(ToolRun):
    def start(self) -> None:
        import yappi  # type: ignore[import-untyped]

        yappi.set_clock_type("wall")
        yappi.start()

    def stop(self) -> None:
        import yappi

        yappi.stop()


class Pyinstrument(ToolRun):
    def start(self) -> None:
        from pyinstrument import Profiler

        self.profiler = Profiler(async_mode="enabled", interval=0.001)
        self.profiler.start()

    def stop(self) -> None:
        self.profiler.stop()


FACTORIES: dict[str, Callable[[], ToolRun]] = {
    "none": NoTool,
    "looptrace": lambda: Looptrace(full=False),
    "looptrace_full": lambda: Looptrace(full=True),
    "asyncio_debug": AsyncioDebug,
    "aiodebug": Aiodebug,
    "blockbuster": Blockbuster,
    "otel_asyncio": OtelAsyncio,
    "yappi": Yappi,
    "pyinstrument": Pyinstrument,
}


def make(tool: str) -> ToolRun:
    try:
        return FACTORIES[tool]()
    except KeyError:
        raise SystemExit(f"unknown tool {tool!r}; known: {', '.join(FACTORIES)}") from None


def pinned_malloc_active() -> bool:
    return os.environ.get("GLIBC_TUNABLES", "") == MALLOC_PINNED

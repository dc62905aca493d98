"""One measurement in a fresh process: ``python child.py '<json spec>'``.

The spec names the workload, the tool and the sizes. The process applies the tool, runs the
workload once, and prints one line ``RESULT {json}`` with the operations, the timed
nanoseconds, peak RSS and the garbage collector's figures. The aiohttp server prints
``READY <port>`` when it listens, then serves until its standard input closes.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tools
import workloads


def _helper_threads_cpu_ms() -> dict[str, float]:
    """CPU time used so far by the tracers' own threads (looptrace's watchdog, the
    benchmark's full-mode sink...), from /proc, by thread name."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.native_id is None:
            continue
        try:
            with open(f"/proc/self/task/{thread.native_id}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[thread.name] = (int(fields[11]) + int(fields[12])) * 1000 / ticks
    return out


def _memory() -> dict[str, Any]:
    with open("/proc/self/statm") as f:
        rss_pages = int(f.read().split()[1])
    return {
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "rss_kb": rss_pages * (os.sysconf("SC_PAGE_SIZE") // 1024),
        "gc_objects": len(gc.get_objects()),
        "gc_collections": [s["collections"] for s in gc.get_stats()],
    }


class Timed:
    """Starts and stops the tool around the timed region, and reads the process's CPU time
    there too: unlike wall time, it does not count the time the process waited for a CPU
    on a busy machine (it does count looptrace's own threads)."""

    def __init__(self, tool: tools.ToolRun) -> None:
        self.tool = tool
        self.cpu_ns = 0
        self._cpu_start = 0

    def start(self) -> None:
        self.tool.start()
        self._cpu_start = time.process_time_ns()

    def stop(self) -> None:
        self.cpu_ns = time.process_time_ns() - self._cpu_start
        self.tool.stop()


async def _run(spec: dict[str, Any], tool: Timed) -> tuple[int, int]:
    name = spec["workload"]
    start, stop = tool.start, tool.stop
    if name == "callback_chain":
        return await workloads.callback_chain(spec["hops"], start, stop)
    if name == "task_pingpong":
        return await workloads.task_pingpong(spec["tasks"], spec["steps"], start, stop)
    if name == "started_pingpong":
        return await workloads.started_pingpong(spec["tasks"], spec["steps"], start, stop)
    if name == "socket_echo":
        return await workloads.socket_echo(spec["clients"], spec["round_trips"], start, stop)
    if name == "aiohttp":
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()

        def ready(port: int) -> None:
            print(f"READY {port}", flush=True)

        def wait_for_eof() -> None:
            sys.stdin.read()
            loop.call_soon_threadsafe(stopping.set)

        threading.Thread(target=wait_for_eof, daemon=True).start()
        began = time.perf_counter_ns()
        await workloads.aiohttp_server(ready, stopping, start, stop)
        return 0, time.perf_counter_ns() - began
    raise SystemExit(f"unknown workload {name!r}")


def _memory_soak(spec: dict[str, Any]) -> tuple[int, int, list[dict[str, int]]]:
    """RSS and GC-tracked objects sampled along many steps."""
    trace: list[dict[str, int]] = []

    def sample(steps: int) -> None:
        with open("/proc/self/statm") as f:
            rss_pages = int(f.read().split()[1])
        trace.append({"steps": steps, "rss_kb": rss_pages * (os.sysconf("SC_PAGE_SIZE") // 1024),
                      "gc_objects": len(gc.get_objects()),
                      "t_ns": time.perf_counter_ns()})

    ops, elapsed = asyncio.run(workloads.memory_soak(
        spec["total_steps"], spec["tasks"], spec["steps_per_task"], spec["samples"], sample))
    return ops, elapsed, trace


def main() -> None:
    spec = json.loads(sys.argv[1])
    tool = tools.make(spec["tool"])
    tool.install()
    trace = None
    timed = Timed(tool)
    if spec["workload"] == "threaded_pingpong":
        ops, elapsed = workloads.threaded_pingpong(spec["threads"], spec["tasks"],
                                                   spec["steps"], timed.start, timed.stop)
    elif spec["workload"] == "memory_soak":
        timed.start()
        ops, elapsed, trace = _memory_soak(spec)
        timed.stop()
    else:
        ops, elapsed = asyncio.run(_run(spec, timed), debug=tool.debug or None)
    result: dict[str, Any] = {"ops": ops, "elapsed_ns": elapsed, "cpu_ns": timed.cpu_ns,
                              "malloc_pinned": tools.pinned_malloc_active()}
    # Memory while the workload ran (the tool still installed, its report not built yet).
    result.update(_memory())
    result["helper_threads_cpu_ms"] = _helper_threads_cpu_ms()
    result["tool_figures"] = tool.finish()
    result["peak_rss_with_report_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if trace is not None:
        result["trace"] = trace
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

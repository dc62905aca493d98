"""Advice: one line per hotspot that names the fix.

Small rules over a hotspot's kind and call, most specific first, in the spirit of
tokio-console's warnings: each rule is a check and a sentence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .events import CPU_STARVED


@dataclass(frozen=True, slots=True)
class Rule:
    applies: Callable[[str, str | None], bool]
    advice: str


def _call_starts(*prefixes: str) -> Callable[[str, str | None], bool]:
    return lambda kind, call: call is not None and call.startswith(prefixes)


RULES: tuple[Rule, ...] = (
    Rule(lambda kind, call: kind == "gil-stall",
         "another thread held the GIL while the loop waited for it: moving GIL-holding work "
         "(pure Python, or C code that keeps the GIL such as re, json, pickle) to a thread "
         "does not free the loop; run it in a ProcessPoolExecutor, or use a library that "
         "releases the GIL"),
    Rule(_call_starts(CPU_STARVED),
         "the loop thread was ready to run but had no CPU (other processes or threads, or a "
         "container CPU limit): give the service more CPU or move the competing work away"),
    Rule(_call_starts("gc.collect"),
         "a garbage collection paused the loop, not a line of yours: keep fewer long-lived "
         "container objects, or call `gc.freeze()` once start-up allocations are done"),
    Rule(_call_starts("http.client.HTTPResponse."),
         "the HTTP body is read on the loop thread: read it in the executor too "
         "(`await loop.run_in_executor(None, resp.read)`), or use an async client such as "
         "aiohttp"),
    Rule(_call_starts("http.client.HTTPConnection.", "urllib.request.", "urllib3."),
         "a synchronous HTTP request runs on the loop thread: use an async client such as "
         "aiohttp, or run the whole request, body included, in an executor"),
    Rule(_call_starts("requests."),
         "requests is synchronous: use an async client such as aiohttp, or "
         "`await asyncio.to_thread(...)` for the whole call"),
    Rule(_call_starts("time.sleep"), "use `await asyncio.sleep(...)` instead of time.sleep"),
    Rule(_call_starts("subprocess.", "os.system", "os.waitpid"),
         "use `asyncio.create_subprocess_exec(...)` and await the process"),
    Rule(_call_starts("socket.getaddrinfo", "socket.gethostby"),
         "resolve names with `await loop.getaddrinfo(...)`"),
    Rule(_call_starts("socket.create_connection"),
         "connect with `await asyncio.open_connection(...)`"),
    Rule(_call_starts("select.select"),
         "wait for readiness with `loop.add_reader`/asyncio streams, not select.select"),
    Rule(_call_starts("concurrent.futures."),
         "waiting on an executor future blocks the loop: `await asyncio.wrap_future(fut)` "
         "or `await loop.run_in_executor(...)`"),
    Rule(_call_starts("threading.", "queue."),
         "waiting on a thread primitive blocks the loop: use the asyncio equivalent "
         "(asyncio.Event/Queue) or `await asyncio.to_thread(...)`"),
    Rule(_call_starts("builtins.input"), "read input with `await asyncio.to_thread(input)`"),
    Rule(_call_starts("os.read"),
         "read files and pipes with `await asyncio.to_thread(...)` or `loop.connect_read_pipe`"),
    # A call named by the samples, not by a probe: the samples show the line ran it, not
    # whether it waited or computed, nor whether it kept the GIL (sorted, re, json do;
    # hashlib, zlib and I/O release it), so the advice covers both.
    Rule(lambda kind, call: kind == "slow-step" and call is not None,
         "the loop thread was in this call (computing or waiting): if it waits for I/O or "
         "releases the GIL (hashlib, zlib, file and socket calls), `await "
         "asyncio.to_thread(...)` frees the loop; if it keeps the GIL (pure Python, sorted, "
         "re, json, pickle), run it in a ProcessPoolExecutor, or split it and "
         "`await asyncio.sleep(0)` between chunks"),
    Rule(lambda kind, call: kind == "slow-step",
         "CPU-bound or unprobed blocking work runs on the loop thread: move it to "
         "`asyncio.to_thread` (I/O, GIL-releasing code) or a ProcessPoolExecutor (pure-Python "
         "CPU), or yield with `await asyncio.sleep(0)` between chunks"),
)


def advise(kind: str, call: str | None) -> str:
    for rule in RULES:
        if rule.applies(kind, call):
            return rule.advice
    return ""

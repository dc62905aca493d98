"""Run a program under ``looptrace run`` with one fault injected inside looptrace.

    python fault_runner.py FAULT [looptrace run arguments...]

FAULT names an internal of looptrace that is replaced by a function that raises
:class:`InjectedFault` (see ``_inject``). The exit status and the output are those of
``looptrace run``, so a test can compare them with the program run on its own.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any


class InjectedFault(RuntimeError):
    """The error a fault-injection test plants inside looptrace."""


def _raiser(name: str) -> Callable[..., Any]:
    def fail(*args: object, **kwargs: object) -> Any:
        raise InjectedFault(f"injected into {name}")

    return fail


def _failing_sink(options: Any) -> Any:
    from looptrace.sinks import LiveSink

    def listener(block: object) -> None:
        raise InjectedFault("injected into the exporter's listener")

    def close(timeout_s: float) -> None:
        raise InjectedFault("injected into the exporter's close")

    return LiveSink("failing-exporter", listener, close)


def _inject(fault: str) -> None:
    """Plant the fault in its named seam (``looptrace._seams``)."""
    if fault == "none":
        return
    from looptrace import _seams

    if fault not in _seams.SEAMS:
        raise SystemExit(f"fault_runner: unknown fault {fault!r}")
    _seams.replace(fault, _failing_sink if fault == "exporter" else _raiser(fault))


def main() -> int:
    fault, *arguments = sys.argv[1:]
    # As an application that configured logging would: looptrace's warnings reach this
    # handler, marked so the test can tell them from the program's own output. Into a file
    # of their own when asked: the dispatch thread's lines and the program's own stderr
    # would otherwise interleave mid-line.
    log_path = os.environ.get("FAULT_RUNNER_LOG")
    stream = open(log_path, "a", encoding="utf-8") if log_path else sys.stderr  # noqa: SIM115
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("LOGGED %(name)s %(levelname)s %(message)s"))
    logging.getLogger("looptrace").addHandler(handler)
    _inject(fault)
    from looptrace.cli import main as looptrace_main

    return looptrace_main(["run", *arguments])


if __name__ == "__main__":
    sys.exit(main())

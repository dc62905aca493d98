"""Named seams for fault injection: the internals a reliability test may replace.

``tests/reliability/fault_runner.py`` plants an exception inside each hook of looptrace to
show that the program never sees it. It used to replace private functions by their
module and attribute names, so a rename silently turned a fault test into a test of
nothing. Each seam is named here once, with the place it stands for; :func:`replace`
refuses a seam that no longer resolves, and ``tests/test_seams.py`` resolves them all.

Nothing in looptrace calls this module: it costs nothing unless a test imports it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

SEAMS: dict[str, tuple[str, str]] = {
    # what the select timer calls back after a long iteration
    "selector-callback": ("looptrace._recorder", "LoopRecord.on_long_iteration"),
    # inside the pure-Python select timer itself
    "selector-internal": ("looptrace._hooks.selector", "bucket_index"),
    # what the step hook calls after a long step
    "steps-callback": ("looptrace._hooks.longsteps", "LongSteps.on_long_step"),
    # inside the long-step handling
    "steps-internal": ("looptrace._hooks.longsteps", "task_of"),
    # who a long step delayed, read from the loop's queues when it ends
    "victims": ("looptrace._hooks.longsteps", "collect"),
    # where every sample of a long step is kept, the watchdog's own and the native
    # sampler's alike
    "watchdog-sampling": ("looptrace._hooks.watchdog", "Watchdog._record"),
    "watchdog-blocks": ("looptrace._hooks.watchdog", "build_block"),
    "probes": ("looptrace._hooks.probes", "ProbeBuffer.record"),
    # the factory of a live sink: a replacement returns a looptrace.sinks.LiveSink
    "exporter": ("looptrace.sinks.logs", "live_sink"),
    # the loop doors' attach
    "doors": ("looptrace._hooks.doors", "Doors.attach"),
}
"""seam name -> (module, attribute path in it)."""


def resolve(name: str) -> tuple[Any, str, Any]:
    """(the object that holds the seam, its attribute name, what it holds now). Raises
    ``LookupError`` naming the seam when it does not resolve any more."""
    if name not in SEAMS:
        raise LookupError(f"no fault seam named {name!r} (known: {', '.join(SEAMS)})")
    module_name, path = SEAMS[name]
    owner: Any = importlib.import_module(module_name)
    *parents, attribute = path.split(".")
    try:
        for part in parents:
            owner = getattr(owner, part)
        current = getattr(owner, attribute)
    except AttributeError:
        raise LookupError(f"fault seam {name!r}: {module_name}.{path} does not exist any more; "
                          "update looptrace/_seams.py") from None
    return owner, attribute, current


def replace(name: str, replacement: Callable[..., Any]) -> Callable[[], None]:
    """Put ``replacement`` in the seam's place; returns the function that puts the
    original back."""
    owner, attribute, original = resolve(name)
    setattr(owner, attribute, replacement)
    return lambda: setattr(owner, attribute, original)

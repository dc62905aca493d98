"""The native sampler's samples, turned into lines and calls (the sampler is in _sampler.c).

The accelerator's sampler thread reads a loop thread's frames without the GIL, so it sees
the line that calls C code holding the GIL (``sorted``, ``re``, ``json``, ``pickle``,
``hashlib``, ``zlib``, ``sqlite3``...) while that code runs, where the Python watchdog
could sample only after the call returned. It also sees when the loop thread waits for the
GIL held by another thread, and that thread's stack.

It hands over raw ``(code key, instruction offset)`` pairs with copies of each code
object's file name, qualified name, first line and line table, made while the object
was on the stack. Lines are decoded here from those copies: the code object itself may be
gone by now, so nothing here touches it. The called function is the Python frame below
the site when there is one; else, for C code called from the site, the call expression
at the sampled instruction (its source text through ``linecache``), resolved to the C
function when the name leads there through the module's globals without running code.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import linecache
import os
import sys
from dataclasses import dataclass
from typing import Any

from looptrace.events import CallSource, CodeLocation

from .frames import LIBRARY, LOOPTRACE, STDLIB, USER, CodeMap

Positions = tuple[int | None, int | None, int | None, int | None]
RawStack = tuple[tuple[int, int], ...]
CodeInfo = tuple[str, str, int, bytes] | None

_SUPPORTED = ((3, 11), (3, 12), (3, 13))
_CACHE = 512


def _varint(table: bytes, i: int) -> tuple[int, int]:
    byte = table[i]
    value, shift = byte & 63, 0
    while byte & 64:
        i += 1
        byte = table[i]
        shift += 6
        value |= (byte & 63) << shift
    return value, i + 1


def _svarint(table: bytes, i: int) -> tuple[int, int]:
    value, i = _varint(table, i)
    return (-(value >> 1) if value & 1 else value >> 1), i


def positions(table: bytes, firstlineno: int, offset: int) -> Positions | None:
    """``(line, end_line, col, end_col)`` of the instruction at byte ``offset``, from a
    copy of ``co_linetable`` (the format of CPython 3.11-3.13, Objects/locations.md), as
    ``code.co_positions()`` gives it; None when the table (maybe cut short) ends first."""
    target, address, line, i = offset // 2, 0, firstlineno, 0
    try:
        while i < len(table):
            first = table[i]
            i += 1
            code, length = (first >> 3) & 15, (first & 7) + 1
            entry: Positions
            if code == 15:
                entry = (None, None, None, None)
            elif code == 14:
                delta, i = _svarint(table, i)
                line += delta
                end, i = _varint(table, i)
                col, i = _varint(table, i)
                end_col, i = _varint(table, i)
                entry = (line, line + end, col - 1 if col else None,
                         end_col - 1 if end_col else None)
            elif code == 13:
                delta, i = _svarint(table, i)
                line += delta
                entry = (line, line, None, None)
            elif code >= 10:
                line += code - 10
                entry = (line, line, table[i], table[i + 1])
                i += 2
            else:
                second = table[i]
                i += 1
                col = code * 8 + ((second >> 4) & 7)
                entry = (line, line, col, col + (second & 15))
            if address <= target < address + length:
                return entry
            address += length
    except IndexError:  # a table cut at the copy limit
        return None
    return None


@dataclass(frozen=True, slots=True)
class Located:
    """One raw stack, resolved: the site, what it called and how that was known, and the
    stack outermost first (without looptrace's frames)."""

    site: CodeLocation | None
    call: str | None
    call_source: CallSource | None
    stack: tuple[CodeLocation, ...]


@dataclass(frozen=True, slots=True)
class NativeSample:
    """One look of the native sampler at a loop thread."""

    seq: int
    t_ns: int
    in_step: bool
    waiting: bool
    holder: int
    """The GIL holder's thread ident while ``waiting``, else 0."""
    loop: Located
    held: Located | None
    """The GIL holder's stack while ``waiting``."""
    sched: tuple[int, int] | None
    """(ns on a CPU, ns waiting for one) of the loop thread, at a step's first sample."""
    held_cpu_ns: int | None
    """The GIL holder's time on a CPU so far (Linux), while ``waiting``."""


class Resolver:
    """Raw frames to lines and calls; keeps a small cache of file -> module name."""

    def __init__(self, codemap: CodeMap) -> None:
        self._codemap = codemap
        self._modules: dict[str, str] = {}
        self._modules_seen = -1
        # The samples of one block repeat a few stacks: each is resolved once. The key is
        # the copied descriptions, never an address alone (an address may be reused).
        self._located: dict[tuple[tuple[CodeInfo, int], ...], Located] = {}

    def locate(self, raw: RawStack, codes: dict[int, CodeInfo]) -> Located:
        key = tuple((codes.get(code), offset) for code, offset in raw)
        found = self._located.get(key)
        if found is None:
            if len(self._located) >= _CACHE:
                self._located.clear()
            found = self._located[key] = self._locate(key)
        return found

    def _locate(self, raw: tuple[tuple[CodeInfo, int], ...]) -> Located:
        frames: list[tuple[CodeLocation, str, Positions | None]] = []
        for info, offset in raw:
            if info is None:
                continue
            filename, qualname, firstlineno, table = info
            where = positions(table, firstlineno, offset)
            line = where[0] if where is not None and where[0] is not None else firstlineno
            path = filename if filename.startswith("<") else os.path.abspath(filename)
            frames.append((CodeLocation(path, line, qualname), filename, where))
        categories = [self._codemap.category(filename) for _, filename, _ in frames]
        # Only the step's frames, above the loop's own (see frames.py): never the frame
        # that started the loop.
        loop_names = self._codemap.loop_names
        step_end = next((i for i, (loc, filename, _) in enumerate(frames)
                         if (filename, loc.function) in loop_names), len(frames))
        chosen = next((index for wanted in (USER, LIBRARY, STDLIB)
                       for index in range(step_end) if categories[index] == wanted), -1)
        stack = tuple(loc for (loc, _, _), category in zip(reversed(frames),
                                                           reversed(categories), strict=True)
                      if category != LOOPTRACE)
        if chosen < 0:
            return Located(None, None, None, stack)
        site, filename, where = frames[chosen]
        if chosen > 0 and categories[chosen - 1] != LOOPTRACE:
            below, below_file, _ = frames[chosen - 1]
            return Located(site, f"{self.module_of(below_file)}.{below.function}",
                           "python-frame", stack)
        # C code runs above the site, or looptrace's own Python does on its behalf (a gc
        # callback inside gc.collect(), a probe's wrapper): the site's own call names it.
        if categories[chosen] != USER:
            # A library or the standard library calls C code directly (a worker thread
            # in re.match): its own function is the most telling name.
            return Located(site, f"{self.module_of(filename)}.{site.function}",
                           "python-frame", stack)
        call, source = self._called(filename, where)
        return Located(site, call, source, stack)

    def module_of(self, filename: str) -> str:
        """The name of the module a file was imported as (``__main__`` for the script)."""
        found = self._modules.get(filename)
        if found is None and len(sys.modules) != self._modules_seen:
            self._modules_seen = len(sys.modules)
            for name, module in list(sys.modules.items()):
                path = getattr(module, "__file__", None)
                if isinstance(path, str):
                    self._modules.setdefault(path, name)
            found = self._modules.get(filename)
        return found if found is not None else "?"

    def _called(self, filename: str, where: Positions | None
                ) -> tuple[str | None, CallSource | None]:
        """The callee of the call expression at ``where`` in ``filename``."""
        expression = _source(filename, where)
        if expression is None:
            return None, None
        try:
            tree = ast.parse(f"(\n{expression}\n)", mode="eval")
        except SyntaxError:
            return None, None
        if not isinstance(tree.body, ast.Call):
            return None, None
        callee = ast.unparse(tree.body.func)
        resolved = self._resolve(filename, tree.body.func)
        if resolved is not None and resolved != callee:
            return resolved, "resolved"
        return callee, "call-expression"

    def _resolve(self, filename: str, func: ast.expr) -> str | None:
        """``module.Type.method`` of a C method reached from a global through attributes
        (``PATTERN.match`` -> ``re.Pattern.match``), looked up without running any code."""
        names: list[str] = []
        node = func
        while isinstance(node, ast.Attribute):
            names.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name) or not names:
            return None
        module = sys.modules.get(self.module_of(filename))
        namespace: dict[str, Any] = getattr(module, "__dict__", {})
        missing = object()
        obj = namespace.get(node.id, vars(builtins).get(node.id, missing))
        for name in reversed(names[1:]):
            if obj is missing:
                return None
            obj = inspect.getattr_static(obj, name, missing)
        if obj is missing or inspect.ismodule(obj) or inspect.isclass(obj):
            return None
        method = inspect.getattr_static(type(obj), names[0], None)
        if not inspect.ismethoddescriptor(method):
            return None
        owner = type(obj)
        return f"{owner.__module__}.{owner.__qualname__}.{names[0]}"


def _source(filename: str, where: Positions | None) -> str | None:
    """The source text at ``where`` (columns are UTF-8 byte offsets)."""
    if where is None or None in where:
        return None
    line, end_line, col, end_col = where
    assert line is not None and end_line is not None and col is not None
    assert end_col is not None
    lines = [linecache.getline(filename, n).encode() for n in range(line, end_line + 1)]
    if not lines or not lines[0] or end_line - line > 20:
        return None
    if len(lines) == 1:
        text = lines[0][col:end_col]
    else:
        text = b"".join([lines[0][col:], *lines[1:-1], lines[-1][:end_col]])
    return text.decode(errors="replace")


def unavailable() -> str | None:
    """Why the native sampler cannot run in this process, or None when it can."""
    if sys.version_info[:2] not in _SUPPORTED:
        return "native sampler: off on this Python (3.11-3.13 only)"
    try:
        from looptrace import _speedups
    except ImportError:
        return "native sampler: off (the accelerator is not built)"
    status = getattr(_speedups, "native_status", None)
    if status is None:
        return "native sampler: off (the accelerator predates it)"
    reason: str | None = status()
    return reason


class NativeSampler:
    """The accelerator's sampler thread: started with the watchdog, stopped with it."""

    def __init__(self, codemap: CodeMap) -> None:
        from looptrace import _speedups
        self._speedups = _speedups
        self._resolver = Resolver(codemap)
        self.running = False
        self.dropped = 0

    def start(self, poll_ns: int, arm_ns: int, interval_ns: int) -> bool:
        self.running = bool(self._speedups.native_start(poll_ns, arm_ns, interval_ns))
        return self.running

    def stop(self) -> None:
        if self.running:
            self.running = False
            self._speedups.native_stop()

    def take(self, thread_id: int) -> list[NativeSample]:
        """The samples of a loop thread since the last take, oldest first."""
        raw, codes, dropped = self._speedups.native_take(thread_id)
        self.dropped += dropped
        out = []
        for (seq, t_ns, in_step, waiting, holder, frames, held, run_ns, wait_ns,
             held_run_ns) in raw:
            out.append(NativeSample(
                seq=seq, t_ns=t_ns, in_step=bool(in_step), waiting=bool(waiting),
                holder=holder, loop=self._resolver.locate(frames, codes),
                held=self._resolver.locate(held, codes) if waiting else None,
                sched=(run_ns, wait_ns) if run_ns >= 0 else None,
                held_cpu_ns=held_run_ns if held_run_ns >= 0 else None))
        return out

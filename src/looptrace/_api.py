"""install(), uninstall(), installed(), is_installed(), snapshot(), loop_factory().

One installation at a time, process-wide. ``install`` validates every option before it
touches anything, then patches all-or-nothing; ``uninstall`` restores what is still ours
and returns the final report.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from . import _outputs, _sigterm, _subprocesses, analysis, pools
from ._clock import epoch_offset_ns
from ._config import OUTPUT_OPTIONS, Options, resolve
from ._dispatch import Dispatcher
from ._hooks.tracer import Tracer
from ._recorder import Recorder
from ._sources import fingerprints
from ._version import __version__
from .events import LoopNow
from .session import BlockEvent, Session
from .sinks import LiveSink, SinkInputs

logger = logging.getLogger("looptrace")

_EXIT_FLUSH_S = 2.0
"""The longest looptrace may delay the program's exit (exporters flushing)."""

_closers: list[threading.Thread] = []
"""Outputs being closed off a loop thread (uninstall() in a coroutine); the exit waits for
them within the same bound."""

class _Installation:
    _count = 0

    def __init__(self, options: Options, explicit: dict[str, Any]) -> None:
        _Installation._count += 1
        self.id = _Installation._count
        self.options = options
        self.explicit = explicit
        self.recorder = Recorder(options, epoch_offset_ns())
        self.tracer = Tracer(options, self.recorder)
        self.sinks: list[LiveSink] = []
        self.dispatcher: Dispatcher[BlockEvent] | None = None
        self.role = _subprocesses.Role()
        self.release_sigterm: Callable[[], None] = lambda: None

    def start(self) -> None:
        try:
            self.tracer.start()
            recorder = self.recorder
            inputs = SinkInputs(loops=recorder, count_dropped=recorder.drop,
                                snapshot=self.snapshot,
                                executors=self.tracer.executors
                                if self.options.mode == "full" else None,
                                live_span=self.tracer.long_steps.live_spans.get,
                                tasks=self.tracer.owners)
            self.sinks = _live_sinks(self.options, inputs)
            if self.sinks:
                # Each block is converted once, on the dispatch thread, into the record
                # every sink reads (the report's BlockEvent).
                convert = functools.partial(analysis.block_event, started_ns=recorder.started_ns,
                                            epoch_offset_ns=recorder.epoch_offset_ns)
                self.dispatcher = Dispatcher(convert, recorder.fault)
                for sink in self.sinks:
                    self.dispatcher.add(sink.name, sink.on_block)
                recorder.publish = self.dispatcher.publish
            self.role = _subprocesses.start(self.options)
            if self.role.directory is not None or self.sinks or _writes_at_stop(self.options):
                self.release_sigterm = _sigterm.report_on_sigterm(_at_exit)
        except BaseException:
            self.tracer.stop()
            raise

    def snapshot(self) -> Session:
        self.tracer.flush()
        dispatcher = self.dispatcher
        extra = {"published_blocks": dispatcher.dropped} if dispatcher is not None else {}
        watchdog = self.tracer.watchdog
        if watchdog is not None:
            extra["sample_sites"] = watchdog.dropped_sample_sites
        executors = self.tracer.executors
        executor_figures = executors.figures()
        if executors.dropped:
            extra["executor_calls"] = executors.dropped
        recording = self.recorder.recording(
            accelerated=self.tracer.accelerated,
            probes=self.tracer.probes.installed if self.tracer.probes is not None else 0,
            owners=self.tracer.owners, step_ring=self.tracer.step_ring(), extra_dropped=extra)
        session = analysis.session_from(recording, __version__)
        # Which source ran, read here (a snapshot, never a hook): the HTML report shows a
        # site's lines only from a file that still matches.
        files = {h.site.file for h in session.hotspots if h.site is not None}
        files.update(b.site.file for b in session.blocks if b.site is not None)
        return dataclasses.replace(
            session, sources=fingerprints(sorted(files)),
            executors=pools.executor_rows(executor_figures, session.threshold_ms))

    def stop(self, timeout_s: float = _EXIT_FLUSH_S) -> Session:
        self.release_sigterm()
        self.tracer.stop()
        if asyncio.events._get_running_loop() is not None and (self.dispatcher or self.sinks):
            # On a loop thread nothing may wait: the last blocks may still be on their way
            # to a live sink (one still importing OpenTelemetry, say), so delivering and
            # closing run on a thread of their own, and the report is what was recorded.
            closer = threading.Thread(target=self._close_outputs, args=(timeout_s,),
                                      name="looptrace-close", daemon=True)
            closer.start()
            _closers.append(closer)
            return self._leave(self.snapshot())
        self._close_outputs(timeout_s)
        # What the sinks could not deliver while closing (spans) joins ``dropped``.
        return self._leave(self.snapshot())

    def _close_outputs(self, timeout_s: float) -> None:
        """Deliver the published blocks to the live sinks, then close them, within
        ``timeout_s`` in all."""
        dispatcher = self.dispatcher
        if dispatcher is not None:
            dispatcher.close(timeout_s / 2)
        for sink in self.sinks:
            try:
                sink.close(timeout_s / 2)
            except Exception as exc:
                logger.warning("looptrace: closing %s failed: %s: %s", sink.name,
                               type(exc).__name__, exc)

    def _leave(self, session: Session) -> Session:
        """Write what the options ask for; a child of a traced process leaves its report
        to the root, which combines them (the returned report is the combined one)."""
        options = self.options
        if self.role.child:
            _subprocesses.leave_report(self.role, session)
            _outputs.write_reports(options, session, None)
            return session
        combined, lines = _subprocesses.combine(self.role, session, options.max_blocks)
        _outputs.write_reports(options, session, combined)
        if options.summary:
            _outputs.print_summary(combined, lines)
        return combined

    def abandon(self) -> None:
        """In a forked child: switch every hook off without taking any lock (a lock held by
        a thread of the parent at fork time would never be released here)."""
        self.tracer.abandon()


def _writes_at_stop(options: Options) -> bool:
    return options.summary or any(getattr(options, name) for name in OUTPUT_OPTIONS)


def _live_sinks(options: Options, inputs: SinkInputs) -> list[LiveSink]:
    """Outputs that receive each block as it is found (OpenTelemetry spans, logs).

    Each integration is imported only when it may be needed, so ``import looptrace`` and a
    plain ``install()`` never import OpenTelemetry or structlog.
    """
    sinks: list[LiveSink] = []
    if options.otlp or "opentelemetry.trace" in sys.modules:
        from .sinks import otel

        sink = otel.live_sink(options, inputs)
        if sink is not None:
            sinks.append(sink)
    if options.log is not None:
        from .sinks import logs

        sink = logs.live_sink(options)
        if sink is not None:
            sinks.append(sink)
    return sinks


_lock = threading.RLock()
_current: _Installation | None = None
_last_session: Session | None = None
_atexit_registered = False


def install(**options: Any) -> None:
    """Start recording every asyncio loop of this process.

    Options (see ``docs/configuration.md``): ``threshold_ms`` (default 100), ``mode``
    (``"default"`` or ``"full"``), ``probes``, ``sample_interval_ms``, ``max_blocks``,
    ``max_sites``, ``max_tasks``, ``buffer_size``, ``accelerator``, ``otlp``, ``log``.
    ``LOOPTRACE_*`` environment variables set the options not given here.

    Idempotent: a second call while installed changes nothing (and warns if it asked for
    different options). All-or-nothing: if anything fails, nothing stays patched.
    Raises ``TypeError``/``ValueError`` naming a bad option.
    """
    global _current, _atexit_registered
    resolved = resolve(options)
    with _lock:
        if _current is not None:
            if resolved != _current.options:
                logger.warning("looptrace: already installed with other options; call "
                               "looptrace.uninstall() first to change them")
            return
        _current = _start(resolved, dict(options))
        if not _atexit_registered:
            atexit.register(_at_exit)
            _register_before_thread_shutdown(_before_thread_shutdown)
            if hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=_after_fork_in_child)
            _atexit_registered = True


def _start(options: Options, explicit: dict[str, Any]) -> _Installation:
    installation = _Installation(options, explicit)
    installation.start()
    return installation


def uninstall() -> Session | None:
    """Stop recording and restore asyncio; return the final report (None if not installed)."""
    global _current, _last_session
    with _lock:
        installation = _current
        if installation is None:
            return None
        _current = None
        _last_session = installation.stop()
        return _last_session


def is_installed() -> bool:
    """Whether looptrace is recording now."""
    return _current is not None


# -- the internal query surface: what looptrace's own front ends (the structlog processors,
# the pytest plugin) read of the installation, so that none of them reaches into it.


def installation_id() -> int | None:
    """An identity of the current installation (None when not installed): a front end that
    installed looptrace compares it later to know whether its installation is still the
    one running (the program may have uninstalled and installed again meanwhile)."""
    installation = _current
    return installation.id if installation is not None else None


def loop_now(loop: object) -> LoopNow | None:
    """What the current installation knows of ``loop`` right now, from its live counters
    (no snapshot, safe on the loop's own thread); None when not installed or not recorded."""
    installation = _current
    return installation.recorder.loop_now(loop) if installation is not None else None


def snapshot() -> Session:
    """The report of what was recorded so far (or the final report of the last
    installation, once uninstalled). Raises ``RuntimeError`` if looptrace never ran."""
    installation = _current
    if installation is not None:
        return installation.snapshot()
    if _last_session is not None:
        return _last_session
    raise RuntimeError("looptrace is not installed: call looptrace.install() first")


class Tracing:
    """What :func:`installed` yields: the report so far, or the final one after the block."""

    def __init__(self) -> None:
        self.session: Session | None = None

    def snapshot(self) -> Session:
        return self.session if self.session is not None else snapshot()


@contextmanager
def installed(**options: Any) -> Iterator[Tracing]:
    """``with looptrace.installed(threshold_ms=50) as tracing: ...``

    Installs for the duration of the block and uninstalls after it. Inside an existing
    installation it records with that one and leaves it installed.
    """
    owned = not is_installed()
    install(**options)
    tracing = Tracing()
    try:
        yield tracing
    finally:
        if owned:
            tracing.session = uninstall()
        else:
            tracing.session = snapshot()


def loop_factory() -> asyncio.AbstractEventLoop:
    """A new event loop, recorded: ``asyncio.run(main(), loop_factory=looptrace.loop_factory)``.

    Installs looptrace first (options from ``LOOPTRACE_*``) if it is not installed.
    """
    install()
    if sys.platform == "win32":
        loop: asyncio.AbstractEventLoop = asyncio.ProactorEventLoop()
    else:
        loop = asyncio.SelectorEventLoop()
    installation = _current
    if installation is not None:
        installation.tracer.attach(loop)
    return loop


def _at_exit() -> None:
    """Bound the exit: flush exporters for at most two seconds, never hang."""
    try:
        uninstall()
    except Exception as exc:
        logger.warning("looptrace: shutting down failed: %s: %s", type(exc).__name__, exc)
    _join_closers(_EXIT_FLUSH_S)


def _join_closers(timeout_s: float) -> None:
    """Let outputs still closing off a loop thread finish, within ``timeout_s`` in all."""
    deadline = time.monotonic() + timeout_s
    while _closers:
        closer = _closers.pop()
        if closer is not threading.current_thread():
            closer.join(max(deadline - time.monotonic(), 0.0))


def _register_before_thread_shutdown(callback: Callable[[], None]) -> None:
    # Python runs atexit callbacks after threading's shutdown, and from 3.12 a thread can
    # no longer be started there ("can't create new thread at interpreter shutdown"); the
    # exporters need one to bound their flush. threading's own exit hooks run before it.
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        with contextlib.suppress(RuntimeError):  # already shutting down: atexit it is
            register(callback)


def _before_thread_shutdown() -> None:
    """The main thread has ended: flush the live exporters (OTLP) while threads can still
    start, unless another thread of the program still runs and may still block a loop
    (then the atexit flush is the one)."""
    installation = _current
    if installation is None or not installation.sinks:
        _join_closers(_EXIT_FLUSH_S)  # uninstalled in a coroutine: let its closing finish
        return
    main = threading.main_thread()
    if any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate()):
        return
    _at_exit()


def _after_fork_in_child() -> None:
    """Drop the parent's recording; with ``subprocesses`` on, record this child afresh
    with the same options (see :mod:`looptrace._subprocesses`)."""
    global _current, _lock
    _lock = threading.RLock()
    installation = _current
    _current = None
    if installation is None:
        return
    installation.abandon()
    if not installation.options.subprocesses:
        return
    try:
        _current = _start(installation.options, installation.explicit)
        _subprocesses.register_multiprocessing_exit(_at_exit)
    except Exception as exc:  # the child runs on untraced rather than not at all
        logger.warning("looptrace: cannot trace forked process %d: %s: %s", os.getpid(),
                       type(exc).__name__, exc)

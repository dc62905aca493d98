"""Options: their defaults, their validation, and the ``LOOPTRACE_*`` environment variables.

Every option is defined once, here, with the environment variable that sets it and the
sentence that documents it; ``docs/configuration.md`` shows this table and a test keeps the
two in step. Explicit arguments win over the environment, the environment over defaults.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal
from urllib.parse import urlsplit

Mode = Literal["default", "full"]
LogTarget = Literal["stdlib", "structlog"]

_MAX_THRESHOLD_MS = 3_600_000.0  # an hour: anything longer is a typo, not a budget
_MAX_COUNT = 100_000_000


@dataclass(frozen=True, slots=True)
class Options:
    """Validated settings of one installation. Build it with :func:`resolve`."""

    threshold_ms: float = 100.0
    mode: Mode = "default"
    probes: bool = True
    sample_interval_ms: float | None = None
    max_blocks: int = 1000
    max_sites: int = 500
    max_tasks: int = 1000
    buffer_size: int = 100_000
    accelerator: bool = True
    otlp: bool | str = False
    log: LogTarget | None = None
    otel_spans: str = "blocks"
    json: str | None = None
    html: str | None = None
    chrome_trace: str | None = None
    jaeger_json: str | None = None
    summary: bool = False
    subprocesses: bool = False

    @property
    def threshold_ns(self) -> int:
        return int(self.threshold_ms * 1_000_000)

    @property
    def sample_interval_ns(self) -> int:
        """How often the watchdog samples a long step: a twentieth of the threshold, kept
        between 0.5 ms (cost) and 10 ms (enough samples to find the line)."""
        if self.sample_interval_ms is not None:
            return int(self.sample_interval_ms * 1_000_000)
        return min(max(self.threshold_ns // 20, 500_000), 10_000_000)


@dataclass(frozen=True, slots=True)
class EnvVar:
    """One ``LOOPTRACE_*`` environment variable and the option it sets."""

    name: str
    option: str
    parse: Callable[[str], Any]
    doc: str


def _parse_float(text: str) -> float:
    return float(text.strip())


def _parse_int(text: str) -> int:
    return int(text.strip())


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _parse_otlp(text: str) -> bool | str:
    value = text.strip()
    if value.startswith(("http://", "https://")):
        return value
    return _parse_bool(value)


def _parse_log(text: str) -> str | None:
    value = text.strip().lower()
    return value or None


def _parse_path(text: str) -> str | None:
    # Surrounding blanks are kept: a file name may have them. An empty value is "no file".
    return text or None


OUTPUT_OPTIONS = ("json", "html", "chrome_trace", "jaeger_json")
"""The options that name a report file, in the order they are written."""

COLLECT_VARIABLE = "LOOPTRACE_COLLECT"
"""Internal, set by a traced process for the Python processes it starts: ``<pid>:<dir>``,
the process that combines the reports and the directory where each child leaves its own.
Not an option: nobody sets it by hand."""

_PATH_DOC = ("`{pid}` in the path becomes the process id; a path ending with `/` (or an "
             "existing directory) gets one `looptrace-<pid>` file per process.")


ENVIRONMENT: tuple[EnvVar, ...] = (
    EnvVar("LOOPTRACE_THRESHOLD_MS", "threshold_ms", _parse_float,
           "A step that runs this long or longer is a block (milliseconds, default 100)."),
    EnvVar("LOOPTRACE_MODE", "mode", str.strip,
           "`default` (blocks, select waits and loop figures) or `full` (also every step "
           "and every select wait, for timelines)."),
    EnvVar("LOOPTRACE_PROBES", "probes", _parse_bool,
           "Wrap known blocking functions (`time.sleep`, `HTTPResponse.read`...) to name "
           "them in blocks (default on)."),
    EnvVar("LOOPTRACE_SAMPLE_INTERVAL_MS", "sample_interval_ms", _parse_float,
           "How often the watchdog samples the stack of a blocked loop (default: threshold/20, "
           "between 0.5 and 10 ms)."),
    EnvVar("LOOPTRACE_MAX_BLOCKS", "max_blocks", _parse_int,
           "How many individual blocks the report keeps (the most recent; default 1000). "
           "Hotspot figures count every block."),
    EnvVar("LOOPTRACE_MAX_SITES", "max_sites", _parse_int,
           "How many distinct hotspot sites are aggregated (default 500); blocks at further "
           "sites are counted as dropped."),
    EnvVar("LOOPTRACE_MAX_TASKS", "max_tasks", _parse_int,
           "How many tasks the per-task table keeps (default 1000)."),
    EnvVar("LOOPTRACE_BUFFER_SIZE", "buffer_size", _parse_int,
           "Full mode: how many steps and select waits each loop's ring buffer keeps "
           "(default 100000)."),
    EnvVar("LOOPTRACE_ACCELERATOR", "accelerator", _parse_bool,
           "Use the C step hook when it was built (default on); 0 forces the pure-Python one."),
    EnvVar("LOOPTRACE_OTLP", "otlp", _parse_otlp,
           "Export blocks as OpenTelemetry spans over OTLP/HTTP: 1, or an endpoint URL "
           "(default off; an application's own TracerProvider is always used when set)."),
    EnvVar("LOOPTRACE_LOG", "log", _parse_log,
           "Also log every block: `stdlib` (the `looptrace` logger) or `structlog`."),
    EnvVar("LOOPTRACE_OTEL_SPANS", "otel_spans", str.strip,
           "OpenTelemetry spans to emit: `blocks` (default), or `blocks,loops` (plus a span "
           "per loop with its figures) or `blocks,loops,tasks` (plus a span per task, with "
           "its steps' busy time in full mode), sent when looptrace stops."),
    EnvVar("LOOPTRACE_JSON", "json", _parse_path,
           f"Write the JSON report here when looptrace stops. {_PATH_DOC}"),
    EnvVar("LOOPTRACE_HTML", "html", _parse_path,
           f"Write the HTML report here when looptrace stops. {_PATH_DOC}"),
    EnvVar("LOOPTRACE_CHROME_TRACE", "chrome_trace", _parse_path,
           f"Write a Chrome/Perfetto trace here when looptrace stops. {_PATH_DOC}"),
    EnvVar("LOOPTRACE_JAEGER_JSON", "jaeger_json", _parse_path,
           "Write a trace file for the Jaeger UI's JSON upload here when looptrace stops. "
           f"{_PATH_DOC}"),
    EnvVar("LOOPTRACE_SUMMARY", "summary", _parse_bool,
           "Print the summary on stderr when looptrace stops (default off; on for "
           "`looptrace run`)."),
    EnvVar("LOOPTRACE_SUBPROCESSES", "subprocesses", _parse_bool,
           "Trace the Python processes this one starts, forked, spawned or executed "
           "(uvicorn/gunicorn workers, multiprocessing), with the same options; the first "
           "process combines their reports (default off; on for `looptrace run`)."),
)

_OPTION_NAMES = tuple(f.name for f in fields(Options))
OPTION_NAMES = frozenset(_OPTION_NAMES)
"""Every option ``install()`` takes (the instrumentor passes these on, and only these)."""


def _shown(value: object) -> str:
    """``repr(value)`` for an error message: short, and never an error itself (a huge
    integer cannot be printed in full, and a broken ``__repr__`` must not hide the problem)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    try:
        text = repr(value)
    except Exception:  # any failure of a foreign __repr__
        return f"<unprintable {type(value).__name__}>"
    return text if len(text) <= 80 else f"{text[:77]}..."


def _check_number(name: str, value: object, *, low: float, high: float, integer: bool) -> None:
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"looptrace: {name} must be {kind}, "
                        f"got {type(value).__name__} {_shown(value)}")
    if integer and not isinstance(value, int):
        raise TypeError(f"looptrace: {name} must be an integer, got {_shown(value)}")
    # Compared as they are: math.isfinite() of a huge int would raise OverflowError.
    if (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high:
        raise ValueError(f"looptrace: {name} must be between {low:g} and {high:g}, "
                         f"got {_shown(value)}")


def _is_endpoint(text: str) -> bool:
    """An http(s) URL with a host (and a valid port, if any): the exporter would fail
    later, and far from the typo, on anything else."""
    if any(c.isspace() or not c.isprintable() for c in text):
        return False
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is no port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"looptrace: {name} must be True or False, got {_shown(value)}")


def _check_path(name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"looptrace: {name} must be a path (str) or None, got {_shown(value)}")
    if not value or "\0" in value:
        raise ValueError(f"looptrace: {name} must be a file path, got {_shown(value)}")


def validate(options: Options) -> Options:
    """Raise ``TypeError``/``ValueError`` naming the first bad option; return the options."""
    _check_number("threshold_ms", options.threshold_ms, low=0.001, high=_MAX_THRESHOLD_MS,
                  integer=False)
    if options.mode not in ("default", "full"):
        raise ValueError(f"looptrace: mode must be 'default' or 'full', "
                         f"got {_shown(options.mode)}")
    _check_bool("probes", options.probes)
    if options.sample_interval_ms is not None:
        _check_number("sample_interval_ms", options.sample_interval_ms, low=0.1, high=10_000.0,
                      integer=False)
    _check_number("max_blocks", options.max_blocks, low=1, high=_MAX_COUNT, integer=True)
    _check_number("max_sites", options.max_sites, low=1, high=_MAX_COUNT, integer=True)
    _check_number("max_tasks", options.max_tasks, low=1, high=_MAX_COUNT, integer=True)
    _check_number("buffer_size", options.buffer_size, low=16, high=_MAX_COUNT, integer=True)
    _check_bool("accelerator", options.accelerator)
    otlp = options.otlp
    if not isinstance(otlp, bool) and (not isinstance(otlp, str) or not _is_endpoint(otlp)):
        raise ValueError("looptrace: otlp must be True, False or an http(s):// endpoint, "
                         f"got {_shown(otlp)}")
    spans = options.otel_spans.split(",") if isinstance(options.otel_spans, str) else None
    if spans is None or "blocks" not in spans or not set(spans) <= {"blocks", "loops", "tasks"}:
        raise ValueError("looptrace: otel_spans must list 'blocks' and optionally 'loops' "
                         f"and 'tasks', comma-separated, got {_shown(options.otel_spans)}")
    if options.log not in (None, "stdlib", "structlog"):
        raise ValueError(
            f"looptrace: log must be None, 'stdlib' or 'structlog', got {_shown(options.log)}"
        )
    for name in OUTPUT_OPTIONS:
        _check_path(name, getattr(options, name))
    _check_bool("summary", options.summary)
    _check_bool("subprocesses", options.subprocesses)
    return options


def from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """Options set by ``LOOPTRACE_*`` variables; a malformed value is a ``ValueError``
    naming the variable."""
    found: dict[str, Any] = {}
    for var in ENVIRONMENT:
        text = environ.get(var.name)
        if text is None:
            continue
        try:
            found[var.option] = var.parse(text)
        except ValueError as exc:
            raise ValueError(f"looptrace: {var.name}={_shown(text)} is not valid: {exc}"
                             ) from None
    return found


def _as_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(value) if isinstance(value, float) else str(value)


def to_environment(options: Options) -> dict[str, str | None]:
    """The ``LOOPTRACE_*`` variables that make :func:`resolve` give these options again in
    a child process (``None``: the variable must be unset, the option is at its default)."""
    defaults = Options()
    environment: dict[str, str | None] = {}
    for var in ENVIRONMENT:
        value = getattr(options, var.option)
        environment[var.name] = (None if value == getattr(defaults, var.option)
                                 else _as_text(value))
    return environment


def resolve(explicit: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Options:
    """Merge defaults, the environment and explicit arguments, then validate.

    An unknown option name is a ``TypeError``, as for any Python function.
    """
    unknown = sorted(set(explicit) - set(_OPTION_NAMES))
    if unknown:
        raise TypeError(f"looptrace: unknown option {unknown[0]!r}; "
                        f"valid options are {', '.join(_OPTION_NAMES)}")
    merged = from_environment(os.environ if environ is None else environ)
    merged.update(explicit)
    options = replace(Options(), **merged)
    try:
        return validate(options)
    except (TypeError, ValueError) as exc:
        # Name the environment variable when the bad value came from there.
        for var in ENVIRONMENT:
            if var.option not in explicit and var.option in merged and var.option in str(exc):
                raise type(exc)(f"{exc} (from {var.name})") from None
        raise

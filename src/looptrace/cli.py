"""The command line.

    looptrace run [options] script.py [args...]     run a program under looptrace
    looptrace run [options] -m module [args...]     the same for ``python -m module``
    looptrace run [options] -c code [args...]       ... for ``python -c``, and ``-`` for stdin
    looptrace report FILE [--format F] [-o OUT]     render a saved JSON report

looptrace's own options come before the program; everything from the program on is the
program's (as with ``python -m cProfile``). The program runs as it would under ``python``
(see ``_runner``). The summary goes to stderr at exit, and report files are written even
when the program raises. Bad looptrace options get one line on stderr and exit status 2;
a program that cannot start gets python's own line and status.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import _runner
from ._runner import Program
from ._version import __version__
from .session import ReportError, Session

# Output formats: option, format name, renderer module (each has render(session) -> str).
RENDERERS = {
    "text": "looptrace.exporters.text",
    "json": "looptrace.exporters.json",
    "html": "looptrace.exporters.html",
    "chrome": "looptrace.exporters.chrome",
    "jaeger": "looptrace.exporters.jaeger_json",
}
FILE_OPTIONS = (("json", "json"), ("html", "html"), ("chrome_trace", "chrome"),
                ("jaeger_json", "jaeger"))


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"threshold must be a number of milliseconds, "
                                         f"got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"threshold must be a positive number of "
                                         f"milliseconds, got {text!r}")
    return value


def _output_path(text: str) -> str:
    """A path we will be able to write at exit; checked now, before the program runs."""
    if not text:
        raise argparse.ArgumentTypeError("empty output path")
    path = os.path.abspath(text)
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory, not a file")
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: directory {directory!r} "
                                         "does not exist")
    if not os.access(directory, os.W_OK) or (os.path.exists(path)
                                             and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: permission denied")
    return path


def _otlp(text: str) -> bool | str:
    if text == "true":
        return True
    if text.startswith(("http://", "https://")):
        return text
    raise argparse.ArgumentTypeError(f"--otlp takes an http(s):// endpoint, got {text!r}")


def build_parser() -> _Parser:
    parser = _Parser(prog="looptrace", description="Find where an asyncio program loses its "
                     "time: select waits, steps, and every block of the event loop.")
    parser.add_argument("--version", action="version", version=f"looptrace {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = commands.add_parser("run", help="run a Python program under looptrace",
                              usage="looptrace run [options] (script.py | -m module | "
                                    "-c code | -) [args...]",
                              description="Everything from the program on (the script, "
                                          "-m module, -c code or -) is the program's, as "
                                          "with python.",
                              allow_abbrev=False)
    run.add_argument("--threshold-ms", type=_threshold, metavar="N",
                     help="a step this long or longer is a block (default 100)")
    run.add_argument("--mode", choices=("default", "full"),
                     help="full: also record every step and wait, for timelines")
    run.add_argument("--no-probes", action="store_true",
                     help="do not wrap known blocking functions")
    run.add_argument("--json", type=_output_path, metavar="PATH", help="write the JSON report")
    run.add_argument("--html", type=_output_path, metavar="PATH", help="write the HTML report")
    run.add_argument("--chrome-trace", type=_output_path, metavar="PATH",
                     help="write a Chrome/Perfetto trace")
    run.add_argument("--jaeger-json", type=_output_path, metavar="PATH",
                     help="write a trace file for the Jaeger UI's JSON upload")
    run.add_argument("--otlp", type=_otlp, metavar="ENDPOINT", nargs="?", const=True,
                     help="export blocks as OpenTelemetry spans over OTLP/HTTP "
                          "(default endpoint from OTEL_EXPORTER_OTLP_ENDPOINT)")
    run.add_argument("--quiet", action="store_true", help="no summary on stderr")

    report = commands.add_parser("report", help="render a saved JSON report",
                                 usage="looptrace report FILE [--format F] [-o OUT]")
    report.add_argument("file", metavar="FILE")
    report.add_argument("--format", choices=tuple(RENDERERS), default="text")
    report.add_argument("-o", "--output", type=_output_path, metavar="OUT",
                        help="write here instead of standard output")
    return parser


def _takes_value(parser: argparse.ArgumentParser) -> dict[str, bool]:
    """Each option string of ``parser``: whether it takes a value (``--otlp``'s is
    optional and handled apart)."""
    return {option: action.nargs != 0 for action in parser._actions
            for option in action.option_strings}


def _run_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            run: argparse.ArgumentParser = action.choices["run"]
            return run
    raise AssertionError("no run command")


def split_run(args: Sequence[str], takes_value: dict[str, bool]) -> tuple[list[str],
                                                                          Program | None]:
    """``looptrace run``'s own options, and the program: as ``python`` and
    ``python -m cProfile`` do, looptrace's options end at the script, ``-m module``,
    ``-c code``, ``-`` or ``--``; everything after belongs to the program, untouched."""
    own: list[str] = []
    index = 0
    while index < len(args):
        token = args[index]
        rest = tuple(args[index + 2:])
        if token == "--":
            return own, (Program("script", args[index + 1], rest)
                         if index + 1 < len(args) else None)
        if token == "-":
            return own, Program("stdin", "-", tuple(args[index + 1:]))
        for flag, kind in (("-m", "module"), ("-c", "code")):
            if token == flag:
                if index + 1 >= len(args):
                    raise UsageError(f"argument {flag}: expected one argument")
                return own, Program(kind, args[index + 1], rest)  # type: ignore[arg-type]
            if token.startswith(flag) and not token.startswith("--"):
                return own, Program(kind, token[2:], tuple(args[index + 1:]))  # type: ignore[arg-type]
        if not token.startswith("-"):
            return own, Program("script", token, tuple(args[index + 1:]))
        if token == "--otlp":
            # An optional endpoint: taken only when it looks like a URL (then checked), so a
            # bare ``--otlp`` before the script never swallows the script's name.
            following = args[index + 1] if index + 1 < len(args) else ""
            if "://" in following:
                own.extend((token, following))
                index += 2
            else:
                own.append("--otlp=true")
                index += 1
            continue
        own.append(token)
        if takes_value.get(token, False) and index + 1 < len(args):
            own.append(args[index + 1])
            index += 1
        index += 1
    return own, None


def render(session: Session, fmt: str) -> str:
    module_name = RENDERERS[fmt]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"the {fmt} format is not available in this installation "
                         f"({exc})") from None
    text: str = module.render(session)
    return text


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    # A name that was not UTF-8 (an argv item, a file path) is a lone surrogate in Python:
    # written as `\udcff`, which in a JSON string is the escape that reads back the same.
    with open(tmp, "w", encoding="utf-8", errors="backslashreplace") as f:
        f.write(text)
    os.replace(tmp, path)


def _write_outputs(session: Session, ns: argparse.Namespace) -> None:
    for option, fmt in FILE_OPTIONS:
        path = getattr(ns, option)
        if path:
            try:
                _write(path, render(session, fmt))
            except (OSError, UsageError) as exc:
                print(f"looptrace: could not write {path}: {exc}", file=sys.stderr)


def _options(ns: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if ns.threshold_ms is not None:
        options["threshold_ms"] = ns.threshold_ms
    if ns.mode is not None:
        options["mode"] = ns.mode
    if ns.no_probes:
        options["probes"] = False
    if ns.otlp is not None:
        options["otlp"] = ns.otlp
    return options


def _finisher(ns: argparse.Namespace) -> Callable[[], None]:
    """Stop recording, then write the report files and the summary: once, whichever of
    normal exit, exception, Ctrl-C or SIGTERM comes first."""
    import looptrace

    done = False

    def finish() -> None:
        nonlocal done
        if done:
            return
        done = True
        try:
            session = looptrace.uninstall()
        except Exception as exc:  # a bug of ours must not become the program's traceback
            with contextlib.suppress(Exception):
                sys.stderr.write(f"looptrace: no report: {type(exc).__name__}: "
                                 f"{_one_line(str(exc))}\n")
            return
        if session is None:
            return
        _write_outputs(session, ns)
        if not ns.quiet:
            # The program may have closed its streams, or set them to None: then the
            # summary is lost, never the program's exit status.
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stdout.flush()
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.write("\n" + render(session, "text"))
                sys.stderr.flush()

    return finish


def _report_on_sigterm(finish: Callable[[], None]) -> Callable[[], None]:
    """Services stop on SIGTERM, which would end the process before any report is written.
    While the program leaves SIGTERM to its default (death), write the report first, then
    die of SIGTERM as it would have. A program that handles SIGTERM itself replaces this."""
    if not hasattr(signal, "SIGTERM") or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return lambda: None

    def on_sigterm(signum: int, frame: object) -> None:
        with contextlib.suppress(Exception):
            finish()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return restore


def _die_of_sigint() -> int:
    """Exit as Python does after an uncaught KeyboardInterrupt: killed by SIGINT (status
    130 in a shell), so the caller sees an interrupt, not an error."""
    for stream in (sys.stdout, sys.stderr):  # as python's finalisation does, first
        with contextlib.suppress(Exception):
            stream.flush()
    if hasattr(signal, "SIGINT") and hasattr(os, "kill"):
        with contextlib.suppress(OSError, ValueError):
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
    return 130


def run_command(ns: argparse.Namespace) -> int:
    import looptrace
    from looptrace._hooks.frames import treat_as_looptrace

    if ns.program is None:
        raise UsageError("nothing to run: give a script, -m module, -c code or - "
                         "(see 'looptrace run --help')")
    treat_as_looptrace(sys.argv[0])  # the launcher, before the program's argv replaces it
    try:
        run = _runner.prepare(ns.program)
    except _runner.ProgramNotFound as exc:  # python's own line and status
        print(str(exc), file=sys.stderr)
        return exc.status
    try:
        looptrace.install(**_options(ns))
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc).removeprefix("looptrace: ")) from None

    finish = _finisher(ns)
    restore_sigterm = _report_on_sigterm(finish)
    try:
        ending = _runner.execute(run)
    finally:
        restore_sigterm()
        finish()
    if ending.exit_request is not None:
        raise ending.exit_request
    if ending.interrupted:
        return _die_of_sigint()
    return ending.status


def report_command(ns: argparse.Namespace) -> int:
    try:
        session = Session.load(ns.file)
    except ReportError as exc:
        raise UsageError(str(exc)) from None
    text = render(session, ns.format)
    if ns.output:
        try:
            _write(ns.output, text)
        except OSError as exc:  # a name too long, a full disk: checked too late to foresee
            raise UsageError(f"cannot write {ns.output!r}: {exc.strerror or exc}") from None
    else:
        try:
            sys.stdout.write(text)
        except UnicodeEncodeError:  # a name that was not UTF-8, or a narrower terminal
            encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
            sys.stdout.write(text.encode(encoding, "backslashreplace").decode(encoding))
    return 0


def _one_line(text: str) -> str:
    """An error message as one line: a newline or a control character in a file name or
    an argument is shown escaped, never printed."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        if args and args[0] == "run":
            own, program = split_run(args[1:], _takes_value(_run_parser(parser)))
            ns = parser.parse_args(["run", *own])
            ns.program = program
        else:
            ns = parser.parse_args(args)
        if ns.command == "run":
            return run_command(ns)
        if ns.command == "report":
            return report_command(ns)
        parser.print_help(sys.stderr)
        return 2
    except UsageError as exc:
        print(f"looptrace: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 1

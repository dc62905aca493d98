"""The command line.

    looptrace run [options] script.py [args...]     run a program under looptrace
    looptrace run [options] -m module [args...]     the same for ``python -m module``
    looptrace run [options] -c code [args...]       ... for ``python -c``, and ``-`` for stdin
    looptrace report FILE... [--format F] [-o OUT]  render saved JSON reports (combined)

looptrace's own options come before the program; everything from the program on is the
program's (as with ``python -m cProfile``). The program runs as it would under ``python``
(see ``_runner``). The summary goes to stderr at exit, and report files are written even
when the program raises. Bad looptrace options get one line on stderr and exit status 2;
a program that cannot start gets python's own line and status.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import _exit, _outputs, _runner, _subprocesses
from ._files import write_text
from ._outputs import RENDERERS
from ._runner import Program
from ._version import __version__
from .session import ReportError, Session

# The file options and the format each writes (formats: RENDERERS).
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
    # An existing file, FIFO or device only needs to be writable (see _files); a new
    # file needs a directory we can create it in.
    writable = (os.access(path, os.W_OK) if os.path.exists(path)
                else os.access(directory, os.W_OK))
    if not writable:
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
    run.add_argument("--no-subprocesses", action="store_true",
                     help="do not trace the Python processes the program starts (workers)")

    report = commands.add_parser("report", help="render a saved JSON report",
                                 usage="looptrace report FILE [--format F] [-o OUT]")
    report.add_argument("files", metavar="FILE", nargs="+")
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
    try:
        return _outputs.render(session, fmt)
    except ImportError as exc:
        raise UsageError(f"the {fmt} format is not available in this installation "
                         f"({exc})") from None


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _write_outputs(session: Session, ns: argparse.Namespace) -> int:
    """Write each report file asked for; the number that could not be written."""
    failed = 0
    for option, fmt in FILE_OPTIONS:
        path = getattr(ns, option)
        if path and not _outputs.per_process(path):
            try:
                write_text(path, render(session, fmt))
            except (OSError, UsageError) as exc:
                failed += 1
                print(f"looptrace: could not write {_one_line(path)}: {_one_line(_why(exc))}",
                      file=sys.stderr)
    return failed


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
    # `looptrace run` follows the program's workers unless told not to (flag or
    # LOOPTRACE_SUBPROCESSES). A report path with {pid} or a directory is written by each
    # process itself (see _outputs); other paths are written here, with the combined report.
    if ns.no_subprocesses or "LOOPTRACE_SUBPROCESSES" not in os.environ:
        options["subprocesses"] = not ns.no_subprocesses
    for option, _ in FILE_OPTIONS:
        path = getattr(ns, option)
        if path and _outputs.per_process(path):
            options[option] = path
    return options


def _report_writer(ns: argparse.Namespace, failures: list[int]) -> Callable[[], None]:
    """Stop recording, then write the report files and the summary; the number of files
    that could not be written goes to ``failures``."""
    import looptrace

    def write() -> None:
        try:
            session = looptrace.uninstall()
        except Exception as exc:  # a bug of ours must not become the program's traceback
            with contextlib.suppress(Exception):
                sys.stderr.write(f"looptrace: no report: {type(exc).__name__}: "
                                 f"{_one_line(str(exc))}\n")
            return
        if session is None:
            return
        failures.append(_write_outputs(session, ns))
        if not ns.quiet:
            # The program may have closed its streams, or set them to None: then the
            # summary is lost, never the program's exit status.
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stdout.flush()
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.write("\n" + render(session, "text"))
                notes = _subprocesses.LAST_PROCESS_LINES
                sys.stderr.write("".join(f"\n{line}" for line in notes) + ("\n" if notes else ""))
                sys.stderr.flush()

    return write


def run_command(ns: argparse.Namespace) -> int:
    import looptrace
    from looptrace._hooks.frames import treat_as_looptrace

    if ns.program is None:
        raise UsageError("nothing to run: give a script, -m module, -c code or - "
                         "(see 'looptrace run --help')")
    treat_as_looptrace(sys.argv[0])  # the launcher, before the program's argv replaces it
    try:
        run = _runner.prepare(ns.program)
    except _runner.ProgramNotFound as exc:  # python's own line and status (escaped)
        print(_one_line(str(exc)), file=sys.stderr)
        return exc.status
    try:
        looptrace.install(**_options(ns))
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc).removeprefix("looptrace: ")) from None

    failures: list[int] = []
    finish = _exit.Finisher(_report_writer(ns, failures))
    restore_sigterm = _exit.report_on_sigterm(finish)
    try:
        ending = _runner.execute(run)
        if not ending.started and ending.exit_request is not None:
            # python's one line only (escaped), no summary of nothing
            ns.quiet = True
            ending.exit_request = SystemExit(_one_line(str(ending.exit_request.code)))
    finally:
        finish()
        restore_sigterm()
    if finish.deferred is not None:  # Ctrl-C or SIGTERM while the report was written
        return _exit.die_of(finish.deferred)
    if ending.interrupted:
        return _exit.die_of(signal.SIGINT)
    succeeded = ending.status == 0 and (ending.exit_request is None
                                        or ending.exit_request.code in (None, 0))
    if succeeded and any(failures):
        return 1  # the program succeeded; the report asked for is missing: say so
    if ending.exit_request is not None:
        raise ending.exit_request
    return ending.status


def _load_reports(paths: list[str]) -> Session:
    """One report, or several combined (each process's loops kept apart by its pid)."""
    sessions = []
    for path in paths:
        try:
            sessions.append(Session.load(path))
        except ReportError as exc:
            raise UsageError(str(exc)) from None
    if len(sessions) == 1:
        return sessions[0]
    from ._combine import Combined

    combined = Combined(max_blocks=max(sum(len(s.blocks) for s in sessions), 1))
    several_processes = len({s.pid for s in sessions}) > 1
    for session in sessions:
        combined.add(session, process=session.pid if several_processes else None)
    return combined.session()


def report_command(ns: argparse.Namespace) -> int:
    session = _load_reports(ns.files)
    text = render(session, ns.format)
    if ns.output:
        try:
            write_text(ns.output, text)
        except OSError as exc:  # a name too long, a full disk: checked too late to foresee
            raise UsageError(f"cannot write {ns.output!r}: {_why(exc)}") from None
    else:
        _print(text)
    return 0


def _print(text: str) -> None:
    """The rendered report on standard output; a full disk or a closed pipe is one line."""
    try:
        try:
            sys.stdout.write(text)
        except UnicodeEncodeError:  # a name that was not UTF-8, or a narrower terminal
            encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
            sys.stdout.write(text.encode(encoding, "backslashreplace").decode(encoding))
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        # What is still buffered would fail again at exit, with a traceback of its own.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise UsageError(f"cannot write to standard output: {_why(exc)}") from None


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

"""Bad input, fuzzed: every option of ``install()``, every ``LOOPTRACE_*`` variable, every
argument of ``looptrace run`` and ``looptrace report``, and corrupt or truncated report
files. The API answers ``TypeError``/``ValueError`` naming the input; the command line
answers one line on stderr naming it, and exit status 2; neither ever shows a traceback
from inside looptrace."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import fields
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import looptrace
from looptrace import cli
from looptrace._config import ENVIRONMENT, OUTPUT_OPTIONS, Options, resolve
from looptrace.session import ReportError, Session

# Output options take any text as a file name and write it when looptrace stops (fuzzed
# names could land anywhere, "/" included): their types are checked in tests/test_workers.py.
OPTION_NAMES = [f.name for f in fields(Options) if f.name not in OUTPUT_OPTIONS]
# Variables that name a report file take any text (any text is a file name): they have no
# malformed value to test here; tests/test_workers.py checks them.
ENV_NAMES = [var.name for var in ENVIRONMENT if var.option not in OUTPUT_OPTIONS]

# FUZZ_EXAMPLES=5000 for a longer hunt than CI's.
FUZZ = settings(deadline=None, max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
                suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])

# Values a caller may pass by mistake: wrong types, negative, huge, malformed.
TRICKY_TEXT = st.sampled_from([
    "", " ", "full", "default", "FULL", "stdlib", "structlog", "blocks", "blocks,loops",
    "loops", "http://", "https://collector:4318", "http://127.0.0.1:1", "http://[::1",
    "http://host:99999", "ftp://x", "1", "0", "true", "yes", "off", "nan", "inf", "-inf",
    "-1", "1e400", "1_000", "0x10", "٣", "\t5\n", "9" * 30, "9" * 5000,
])
WILD = st.one_of(
    st.none(), st.booleans(), st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([10**400, -(10**400), 2**63, -(2**63), 0, -1, 1, 16, 100_000_000]),
    st.floats(), st.sampled_from([0.0, -0.0, 1e-300, 1e300, 0.001, 0.1, 5e-324]),
    st.text(max_size=20), TRICKY_TEXT, st.binary(max_size=8),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(),
                                                         max_size=2),
    st.sampled_from([object(), float, Decimal("1.5"), Fraction(1, 3), complex(1, 2),
                     Decimal("NaN"), range(3), ...]),
)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LOOPTRACE_"):
            monkeypatch.delenv(name)


def _check_api_error(exc: BaseException, names: list[str]) -> None:
    message = str(exc)
    assert isinstance(exc, TypeError | ValueError), f"{type(exc).__name__}: {message}"
    assert message.startswith("looptrace: "), message
    assert "\n" not in message, message
    assert len(message) < 400, message
    assert any(name in message for name in names), f"{message!r} does not name {names}"


def _install_or_reject(options: dict[str, Any]) -> bool:
    """Install with ``options``; True if accepted (then uninstalled), False if rejected with
    a proper error. Anything else fails the test."""
    try:
        looptrace.install(**options)
    except Exception as exc:  # classify every error
        _check_api_error(exc, list(options))
        return False
    # A text given to an output option (json=, html=...) is a file name, written when
    # looptrace stops: in a scratch directory, never in the checkout.
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        try:
            looptrace.uninstall()
        finally:
            os.chdir(cwd)
    return True


# -- the API


@pytest.mark.parametrize("name", OPTION_NAMES)
@FUZZ
@given(value=WILD)
def test_every_install_option_rejects_bad_values_with_an_error_naming_it(
        clean_environment: None, name: str, value: object) -> None:
    """install(<option>=<anything>) either installs, or raises TypeError/ValueError whose
    one-line message names the option; never another exception."""
    _install_or_reject({name: value})


@FUZZ
@given(options=st.dictionaries(st.sampled_from(OPTION_NAMES), WILD, min_size=2, max_size=5))
def test_several_options_at_once_fail_cleanly(clean_environment: None,
                                              options: dict[str, Any]) -> None:
    """Several options together: the first bad one is named; nothing stays installed."""
    _install_or_reject(options)
    assert not looptrace.is_installed()


@FUZZ
@given(name=st.text(min_size=1, max_size=20).filter(
    lambda n: n not in {f.name for f in fields(Options)}))
def test_an_unknown_option_is_a_type_error_naming_it(clean_environment: None,
                                                     name: str) -> None:
    """An option that does not exist is a TypeError naming it, as for any function."""
    with pytest.raises(TypeError) as caught:
        looptrace.install(**{name: 1})
    _check_api_error(caught.value, [repr(name)])


@pytest.mark.parametrize("option", ["threshold_ms", "max_blocks", "buffer_size"])
def test_huge_integers_are_a_value_error_not_an_overflow(clean_environment: None,
                                                         option: str) -> None:
    """Regression: math.isfinite(10**400) raised OverflowError out of install()."""
    with pytest.raises(ValueError, match=f"looptrace: {option} must be between") as caught:
        looptrace.install(**{option: 10**400})
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize("endpoint", ["http://", "https://", "http://[::1", "http://h:99999",
                                      "http://a b:4318", "http://x:port"])
def test_a_malformed_otlp_endpoint_is_rejected_at_install(clean_environment: None,
                                                          endpoint: str) -> None:
    """Regression: any string starting with http:// was accepted as an endpoint, so a typo
    failed later, inside the exporter, far from its cause."""
    with pytest.raises(ValueError, match="looptrace: otlp must be"):
        looptrace.install(otlp=endpoint)


# -- the environment

ENV_TEXT = st.one_of(
    TRICKY_TEXT,
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
            max_size=20),
)


@pytest.mark.parametrize("variable", ENV_NAMES)
@FUZZ
@given(text=ENV_TEXT)
def test_every_environment_variable_rejects_bad_values_naming_it(variable: str,
                                                                 text: str) -> None:
    """A malformed LOOPTRACE_* value is a ValueError/TypeError naming the variable."""
    try:
        resolve({}, {variable: text})
    except Exception as exc:  # classify every error
        _check_api_error(exc, [variable])


@pytest.mark.parametrize("variable", ENV_NAMES)
def test_install_names_the_bad_environment_variable(monkeypatch: pytest.MonkeyPatch,
                                                    clean_environment: None,
                                                    variable: str) -> None:
    """install() with a malformed LOOPTRACE_* variable raises a ValueError naming it, and
    leaves nothing installed."""
    monkeypatch.setenv(variable, "not-a-valid-value\u00a0")
    with pytest.raises(ValueError) as caught:
        looptrace.install()
    _check_api_error(caught.value, [variable])
    assert not looptrace.is_installed()


@pytest.mark.parametrize("variable", ENV_NAMES)
def test_looptrace_run_names_the_bad_environment_variable(
        monkeypatch: pytest.MonkeyPatch, clean_environment: None, tmp_path: Path,
        variable: str) -> None:
    """looptrace run with a malformed LOOPTRACE_* variable: one line naming it, exit 2,
    and the program does not run."""
    monkeypatch.setenv(variable, "not-a-valid-value")
    script = tmp_path / "prog.py"
    script.write_text("print('the program ran')\n")
    result = _main(["run", str(script)], tmp_path)
    assert result.status == 2
    assert result.stdout == ""
    _check_cli_error(result, [variable])


# -- the command line


class Result:
    def __init__(self, status: int, stdout: str, stderr: str) -> None:
        self.status = status
        self.stdout = stdout
        self.stderr = stderr


@contextlib.contextmanager
def _saved_interpreter_state() -> Iterator[None]:
    """``looptrace run`` in this process sets sys.argv and sys.path[0], as python does."""
    argv, path = list(sys.argv), list(sys.path)
    modules = set(sys.modules)
    main = sys.modules["__main__"]  # the program runs in a __main__ of its own
    try:
        yield
    finally:
        sys.argv[:] = argv
        sys.path[:] = path
        sys.modules["__main__"] = main
        for name in set(sys.modules) - modules:
            if name.startswith("fuzz_"):
                del sys.modules[name]


def _main(argv: list[str], cwd: Path) -> Result:
    """``looptrace ARGS`` in this process (fast enough to fuzz), from a new directory
    inside ``cwd`` (so a file one example writes is never the program of the next)."""
    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    os.chdir(tempfile.mkdtemp(dir=cwd))
    try:
        with _saved_interpreter_state(), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            try:
                status = cli.main(argv)
            except SystemExit as exc:  # --help, --version, or the program's sys.exit()
                code = exc.code
                status = code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        os.chdir(previous)
        if looptrace.is_installed():
            looptrace.uninstall()
            pytest.fail(f"looptrace {argv} left looptrace installed")
    return Result(status, out.getvalue(), err.getvalue())


def _check_cli_error(result: Result, names: list[str]) -> None:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{result.stderr}"
    assert lines[0].startswith("looptrace: error: "), lines[0]
    assert "Traceback" not in result.stderr
    if names:
        assert any(name in lines[0] for name in names), f"{lines[0]!r} names none of {names}"


def _check_cli(argv: list[str], result: Result) -> None:
    assert "Traceback" not in result.stderr, f"looptrace {argv}:\n{result.stderr}"
    assert result.status in (0, 1, 2), \
        f"looptrace {argv}: status {result.status}\n{result.stderr}"
    if result.stderr.startswith(f"{sys.executable}: "):
        # A program that cannot start: python's own line and status, as `python` gives.
        assert len(result.stderr.splitlines()) == 1, result.stderr
        return
    if result.status == 1:
        # runpy's own exit for a module or app it cannot run (`-m a..b`, a directory with
        # no __main__): python's message is the SystemExit's, printed by the interpreter
        # at exit (not in this process); tests/test_run_like_python.py compares it.
        assert len(result.stderr.splitlines()) <= 1, result.stderr
        return
    if result.status == 2 and not result.stderr.startswith("usage: looptrace [-h]"):
        _check_cli_error(result, [])  # (no command at all: the help, as git does)


ARG_TEXT = st.one_of(
    TRICKY_TEXT.filter(lambda t: "/" not in t),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/"),
            max_size=12),
)
VALUE_OPTIONS = ["--threshold-ms", "--mode", "--format", "--otlp", "-m", "-o", "--output",
                 "--json", "--html", "--chrome-trace", "--jaeger-json"]
FLAGS = ["--no-probes", "--quiet", "--help", "--version", "--otlp", "--", "-", "-x",
         "--bogus", "--threshold-ms=5", "--mode=full", "--format=json"]


@st.composite
def _paths(draw: st.DrawFn, base: Path) -> str:
    """Output paths: fine, in a missing directory, a directory, empty, unwritable."""
    kind = draw(st.sampled_from(["file", "missing-dir", "dir", "empty", "readonly", "text"]))
    if kind == "file":
        return str(base / "out" / draw(st.sampled_from(["r.json", "r.html", "t.json"])))
    if kind == "missing-dir":
        return str(base / "nowhere" / "r.json")
    if kind == "dir":
        return str(base / "out")
    if kind == "readonly":
        return str(base / "readonly" / "r.json")
    if kind == "empty":
        return ""
    return draw(ARG_TEXT)


@st.composite
def _run_argv(draw: st.DrawFn, base: Path) -> list[str]:
    argv = ["run"]
    for _ in range(draw(st.integers(0, 4))):
        option = draw(st.sampled_from(VALUE_OPTIONS + FLAGS))
        argv.append(option)
        if option in ("--json", "--html", "--chrome-trace", "--jaeger-json", "-o", "--output"):
            argv.append(draw(_paths(base)))
        elif option in VALUE_OPTIONS and draw(st.booleans()):
            argv.append(draw(ARG_TEXT))
    program = draw(st.sampled_from(["script", "missing", "module", "bad-module", "none",
                                    "dir"]))
    if program == "script":
        argv += [str(base / "fuzz_ok.py"), *draw(st.lists(ARG_TEXT, max_size=2))]
    elif program == "missing":
        argv.append(str(base / "missing.py"))
    elif program == "module":
        argv += ["-m", "fuzz_ok"]
    elif program == "bad-module":
        argv += ["-m", draw(st.sampled_from(["", ".", ".x", "a..b", "fuzz_missing", "-",
                                             "fuzz_ok.", " ", "fuzz ok", "9x"]))]
    elif program == "dir":
        argv.append(str(base / "out"))
    return argv


@st.composite
def _report_argv(draw: st.DrawFn, base: Path) -> list[str]:
    argv = ["report"]
    source = draw(st.sampled_from(["good", "missing", "dir", "text", "none", "garbage"]))
    if source == "good":
        argv.append(str(base / "good.json"))
    elif source == "missing":
        argv.append(str(base / "missing.json"))
    elif source == "dir":
        argv.append(str(base))
    elif source == "garbage":
        argv.append(str(base / "garbage.json"))
    elif source == "text":
        argv.append(draw(ARG_TEXT))
    for _ in range(draw(st.integers(0, 3))):
        option = draw(st.sampled_from(["--format", "-o", "--output", *FLAGS]))
        argv.append(option)
        if option == "--format":
            argv.append(draw(st.one_of(st.sampled_from(list(cli.RENDERERS)), ARG_TEXT)))
        elif option in ("-o", "--output"):
            argv.append(draw(_paths(base)))
    return argv


@pytest.fixture(scope="module")
def cli_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a program, a module, a good report and some bad files."""
    base = tmp_path_factory.mktemp("cli")
    (base / "fuzz_ok.py").write_text("import sys\nprint('ok', len(sys.argv))\n")
    (base / "out").mkdir()
    (base / "readonly").mkdir(mode=0o555)
    (base / "garbage.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with looptrace.installed(threshold_ms=5):
        pass
    looptrace.snapshot().save(base / "good.json")
    return base


@FUZZ
@given(data=st.data())
def test_looptrace_run_arguments_fuzzed(cli_sandbox: Path, data: st.DataObject) -> None:
    """Any argument list for `looptrace run`: the program runs (status 0), or one line on
    stderr and exit status 2; never a traceback."""
    argv = data.draw(_run_argv(cli_sandbox))
    if argv[-1] == str(cli_sandbox / "out") and "-m" not in argv:
        assume(False)  # a directory as the program: see the dedicated test below
    _check_cli(argv, _main(argv, cli_sandbox))


@FUZZ
@given(data=st.data())
def test_looptrace_report_arguments_fuzzed(cli_sandbox: Path, data: st.DataObject) -> None:
    """Any argument list for `looptrace report`: a rendering (status 0) or one line on
    stderr and exit status 2; never a traceback."""
    argv = data.draw(_report_argv(cli_sandbox))
    _check_cli(argv, _main(argv, cli_sandbox))


@FUZZ
@given(argv=st.lists(st.one_of(ARG_TEXT, st.sampled_from(VALUE_OPTIONS + FLAGS
                                                         + ["run", "report"])), max_size=6))
def test_any_argument_list_fails_cleanly(cli_sandbox: Path, argv: list[str]) -> None:
    """Random tokens (no program that exists): usage errors are one line, exit 2."""
    _check_cli(argv, _main(argv, cli_sandbox))


@pytest.mark.parametrize("module", [".x", "..", "a..b", "", "-"])
def test_a_malformed_module_name_is_one_line(cli_sandbox: Path, module: str) -> None:
    """`looptrace run -m .x` (a relative name): python's own line and status, as
    `python -m .x` gives them (issue 11: the program's errors are python's)."""
    import subprocess

    def run(*command: str) -> tuple[int, str]:
        done = subprocess.run([sys.executable, *command], cwd=cli_sandbox, text=True,
                              capture_output=True, timeout=120, check=False)
        return done.returncode, done.stderr

    expected = run("-m", module)
    assert expected[0] == 1 and len(expected[1].splitlines()) == 1
    assert run("-m", "looptrace", "run", "--quiet", "-m", module) == expected


def test_a_directory_as_the_program_fails_as_python_does(cli_sandbox: Path) -> None:
    """`looptrace run DIR` with no __main__.py: one line and status 1, as `python DIR`."""
    result = _main(["run", "--quiet", str(cli_sandbox / "out")], cli_sandbox)
    assert result.status in (1, 2)
    assert "__main__" in result.stderr
    assert "Traceback" not in result.stderr


# -- report files

@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real report with loops, hotspots, blocks, tasks and a timeline."""
    import asyncio
    import time

    async def main() -> None:
        await asyncio.sleep(0)
        time.sleep(0.03)
        await asyncio.gather(asyncio.sleep(0.001), asyncio.sleep(0))

    with looptrace.installed(threshold_ms=10, mode="full") as tracing:
        asyncio.run(main())
    session = tracing.snapshot()
    assert session.hotspots and session.blocks and session.timeline is not None
    return session.to_json()


def _paths_in(node: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths_in(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node[:3]):
            found += _paths_in(value, (*prefix, index))
    return found


JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from([10**30, -1, 0, 2**64]),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10),
    st.sampled_from(["", "<script>alert(1)</script>", "\u202e", "a\nb", "looptrace.report/1",
                     "caf\udcff.py", "\ud800"]),  # lone surrogates: names that were not UTF-8
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(),
                                                         max_size=2),
)


def _render_report(text: str | bytes, directory: Path, fmt: str) -> Result:
    path = directory / "report.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return _main(["report", str(path), "--format", fmt], directory)


def _check_report_result(result: Result) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.status in (0, 2), result.stderr
    if result.status == 2:
        _check_cli_error(result, ["report.json"])


@FUZZ
@given(data=st.data(), fmt=st.sampled_from(list(cli.RENDERERS)))
def test_a_mutated_report_renders_or_fails_with_one_line(
        full_report: str, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject,
        fmt: str) -> None:
    """A report with any field replaced by any JSON value, or any key removed, renders in
    every format or is refused in one line naming the file (exit 2)."""
    document = json.loads(full_report)
    path = data.draw(st.sampled_from(_paths_in(document)[1:]))
    parent: Any = document
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(JSON_VALUES)
    directory = tmp_path_factory.mktemp("mutated")
    _check_report_result(_render_report(json.dumps(document), directory, fmt))


@FUZZ
@given(data=st.data(), fmt=st.sampled_from(list(cli.RENDERERS)))
def test_a_truncated_report_fails_with_one_line(
        full_report: str, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject,
        fmt: str) -> None:
    """A report cut anywhere (a crash while writing, a full disk) is refused in one line."""
    cut = data.draw(st.integers(0, len(full_report) - 2))
    directory = tmp_path_factory.mktemp("truncated")
    result = _render_report(full_report[:cut], directory, fmt)
    assert result.status == 2
    _check_cli_error(result, ["report.json"])


@pytest.mark.parametrize("content", [
    b"", b"\x00\x01\x02", b"\xff\xfe{", b"\xef\xbb\xbf{}", b"[" * 100_000, b"1" * 5000,
    b'{"schema": "looptrace.report/2"}', b"null", b"[]", b'"text"',
    b'{"schema": "looptrace.report/1"}', b"{" + b'"a":' * 10 + b"1" + b"}" * 10,
], ids=["empty", "binary", "utf16", "bom", "deep", "huge-number", "other-schema", "null",
        "list", "string", "only-schema", "nested"])
def test_corrupt_report_files_are_one_line_errors(tmp_path: Path, content: bytes) -> None:
    """Regression (deep, huge-number): json's RecursionError and int-limit ValueError
    escaped as tracebacks. Every corrupt file is one line naming it, exit 2."""
    result = _render_report(content, tmp_path, "text")
    assert result.status == 2
    _check_cli_error(result, ["report.json"])
    with pytest.raises(ReportError):
        Session.load(tmp_path / "report.json")


def _numeric_paths(node: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    found: list[tuple[object, ...]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _numeric_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node[:3]):
            found += _numeric_paths(value, (*prefix, index))
    elif isinstance(node, int | float) and not isinstance(node, bool):
        found.append(prefix)
    return found


EXTREME_NUMBERS = st.sampled_from([1e306, -1e306, 1e20, -1e20, 1e13 + 1, 2**70, -(2**70),
                                   2**63, 2**64, -(2**63) - 1, -5, -0.5, 1e-300, 0])


@FUZZ
@given(data=st.data(), fmt=st.sampled_from(list(cli.RENDERERS)))
def test_a_report_with_extreme_numbers_renders_or_fails_with_one_line(
        full_report: str, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject,
        fmt: str) -> None:
    """Issue 11, item 13: any number of a report (a duration, a start, a count, a line)
    set to 1e306, -1e306, 2**70...: every renderer (chrome and jaeger turn milliseconds
    into integer microseconds) renders it or the reader refuses it in one line."""
    document = json.loads(full_report)
    paths = _numeric_paths(document)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent: Any = document
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = data.draw(EXTREME_NUMBERS)
    directory = tmp_path_factory.mktemp("extreme")
    _check_report_result(_render_report(json.dumps(document), directory, fmt))


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_an_endless_file_is_refused_at_once(cli_sandbox: Path, device: str) -> None:
    """Issue 11, item 13: `looptrace report /dev/zero` is one line, not 24 GB of reading."""
    if not os.path.exists(device):
        pytest.skip(f"no {device} here")
    result = _main(["report", device], cli_sandbox)
    assert result.status == 2
    _check_cli_error(result, [device])


def test_a_report_over_the_size_limit_is_one_clear_line(tmp_path: Path) -> None:
    """Issue 11, item 13: a file larger than the limit is refused before it is parsed."""
    from looptrace.session import ReportError, Session

    path = tmp_path / "big.json"
    path.write_text(" " * 3_000_000 + "{}")
    with pytest.raises(ReportError, match="larger than 2 MB"):
        Session.load(path, max_bytes=2 * 1024 * 1024)

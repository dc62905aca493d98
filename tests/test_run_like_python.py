"""`looptrace run X` is `python X`: a differential suite.

Each case lays out a small program (script, package with ``__main__``, directory and zip
app, symlinked script, a program that changes directory, reads ``__file__``, parses its own
options, exits in each way, writes to stdout/stderr and to files), runs it under ``python``
and under ``looptrace run --quiet`` in fresh directories laid out the same way, and
compares stdout, stderr, the exit status and the files the program wrote. The programs
print their own ``sys.argv``, ``sys.path[0]``, ``__file__``, ``__spec__``, ``__loader__``
and ``__main__`` globals, so those are compared too. Paths are made relative to the
case's directory before comparing (the two runs have a directory each).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

SHOW = """
    import json, sys
    main = sys.modules["__main__"]
    g = main.__dict__
    spec = g.get("__spec__")
    loader = g.get("__loader__")
    print(json.dumps({
        "argv": sys.argv, "path0": sys.path[0], "name": g.get("__name__"),
        "file": g.get("__file__", "<absent>"), "cached": g.get("__cached__", "<absent>"),
        "package": g.get("__package__"),
        "spec": None if spec is None else [spec.name, spec.origin, spec.parent],
        "loader": loader.__name__ if isinstance(loader, type) else type(loader).__name__,
        "keys": sorted(k for k in g if k.startswith("__")),
        "is_main": g is globals(),
    }))
"""


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def layout_script(root: Path) -> None:
    write(root / "prog.py", SHOW)


def layout_package(root: Path) -> None:
    write(root / "pkg" / "__init__.py", "")
    write(root / "pkg" / "__main__.py", SHOW)
    write(root / "pkg" / "mod.py", SHOW)
    write(root / "mymod.py", SHOW)
    write(root / "nomain" / "__init__.py", "")


def layout_apps(root: Path) -> None:
    write(root / "app" / "__main__.py", textwrap.dedent(SHOW) + "import helper\nprint(helper.X)\n")
    write(root / "app" / "helper.py", "X = 'helper from the app'\n")
    # A fixed date in the archive: the layouts built for python and for looptrace are
    # compared file by file, and a file's mtime could fall in another second.
    with zipfile.ZipFile(root / "app.pyz", "w") as archive:
        for name in ("__main__.py", "helper.py"):
            entry = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            archive.writestr(entry, (root / "app" / name).read_bytes())
    (root / "empty").mkdir()


def layout_symlink(root: Path) -> None:
    write(root / "real" / "target.py",
          textwrap.dedent(SHOW) + "import neighbour\nprint(neighbour.X)\n")
    write(root / "real" / "neighbour.py", "X = 'the neighbour of the target'\n")
    (root / "bin").mkdir()
    (root / "bin" / "link.py").symlink_to(root / "real" / "target.py")


def layout_chdir(root: Path) -> None:
    write(root / "code" / "data.txt", "next to the script\n")
    write(root / "code" / "chdir.py", """
        import os, sys
        here = os.path.dirname(__file__)
        os.chdir(os.path.join(here, ".."))
        with open(os.path.join(here, "data.txt")) as f:
            print(f.read().strip(), __file__, sys.path[0])
        with open("written.txt", "w") as f:
            f.write("written after chdir\\n")
    """)


def layout_options(root: Path) -> None:
    write(root / "opts.py", """
        import argparse, sys
        parser = argparse.ArgumentParser()
        parser.add_argument("--json")
        parser.add_argument("--threshold-ms")
        parser.add_argument("-m")
        parser.add_argument("--quiet", action="store_true")
        parser.add_argument("rest", nargs="*")
        print(vars(parser.parse_args()))
        print(sys.argv[1:], file=sys.stderr)
    """)
    write(root / "in.json", '{"b": 1, "a": [1, 2]}\n')


def layout_exits(root: Path) -> None:
    write(root / "exits.py", """
        import os, sys
        how = sys.argv[1]
        print("out before", how)
        print("err before", how, file=sys.stderr)
        if how == "code":
            sys.exit(3)
        if how == "text":
            sys.exit("bye now")
        if how == "none":
            sys.exit()
        if how == "big":
            sys.exit(256 + 7)
        if how == "raise":
            def inner():
                raise ValueError("boom")
            inner()
        if how == "interrupt":
            raise KeyboardInterrupt
        if how == "os_exit":
            sys.stdout.flush()
            os._exit(5)
        if how == "syntax":
            exec("1 +")
        if how == "chained":
            try:
                1 / 0
            except ZeroDivisionError as exc:
                raise RuntimeError("while dividing") from exc
        print("end")
    """)
    write(root / "bad_syntax.py", "def broken(:\n    pass\n")
    write(root / "writes.py", """
        import sys
        with open(sys.argv[1], "w") as f:
            f.write("program output\\n")
        sys.stdout.write("no newline at the end")
    """)


LAYOUTS: dict[str, Callable[[Path], None]] = {
    "script": layout_script, "package": layout_package, "apps": layout_apps,
    "symlink": layout_symlink, "chdir": layout_chdir, "options": layout_options,
    "exits": layout_exits,
}

CASES: list[tuple[str, list[str], str]] = [
    # (layout, argv after `python` / `looptrace run --quiet`, subdirectory to run in)
    ("script", ["prog.py", "a", "--json", "x.json", "-m", "mod", "--", "-c"], "."),
    ("script", ["./prog.py"], "."),
    ("script", ["../prog.py", "--threshold-ms", "5"], "sub"),
    ("script", ["--", "prog.py", "--quiet"], "."),
    ("package", ["-m", "pkg", "--html", "h"], "."),
    ("package", ["-m", "pkg.mod", "x"], "."),
    ("package", ["-m", "mymod", "--", "y"], "."),
    ("package", ["-mmymod"], "."),
    ("package", ["-m", "nomain"], "."),
    ("package", ["-m", "no_such_module_here"], "."),
    ("package", ["-m", "pkg.no_such_submodule"], "."),
    ("apps", ["app", "arg"], "."),
    ("apps", ["./app"], "."),
    ("apps", ["app.pyz", "arg"], "."),
    ("apps", ["empty"], "."),
    ("symlink", ["bin/link.py"], "."),
    ("chdir", ["code/chdir.py"], "."),
    ("options", ["opts.py", "--json", "j", "--threshold-ms", "9", "-m", "m", "--quiet", "r"],
     "."),
    ("options", ["-m", "json.tool", "--sort-keys", "in.json"], "."),
    ("options", ["-c", "import sys; print(sys.argv, repr(sys.path[0]), __name__)", "--json",
                 "x"], "."),
    ("options", ["-cimport sys; print(sys.argv)"], "."),
    ("exits", ["exits.py", "code"], "."),
    ("exits", ["exits.py", "text"], "."),
    ("exits", ["exits.py", "none"], "."),
    ("exits", ["exits.py", "big"], "."),
    ("exits", ["exits.py", "raise"], "."),
    ("exits", ["exits.py", "interrupt"], "."),
    ("exits", ["exits.py", "os_exit"], "."),
    ("exits", ["exits.py", "syntax"], "."),
    ("exits", ["exits.py", "chained"], "."),
    ("exits", ["exits.py", "fine"], "."),
    ("exits", ["bad_syntax.py"], "."),
    ("exits", ["missing.py"], "."),
    ("exits", ["writes.py", "out.txt"], "."),
]


def _files(root: Path) -> dict[str, str]:
    """What the program left on disk (bytecode caches aside)."""
    return {str(p.relative_to(root)): p.read_text(errors="replace")
            for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink() and "__pycache__" not in p.parts}


def _run(command: list[str], root: Path, where: str, stdin: str | None = None
         ) -> tuple[int, str, str, dict[str, str]]:
    cwd = root / where
    cwd.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOPTRACE_", "PYTHON"))}
    result = subprocess.run(command, cwd=cwd, input=stdin, capture_output=True, text=True,
                            timeout=120, check=False, env=env)
    # The two runs live in two directories: compare paths relative to each.
    real = os.path.realpath(root)

    def clean(text: str) -> str:
        return text.replace(real, "<root>").replace(str(root), "<root>")

    return result.returncode, clean(result.stdout), clean(result.stderr), _files(root)


def _both(tmp_path: Path, layout: str, args: list[str], where: str,
          stdin: str | None = None) -> tuple[tuple[int, str, str, dict[str, str]],
                                             tuple[int, str, str, dict[str, str]]]:
    roots = {"python": tmp_path / "python", "looptrace": tmp_path / "looptrace"}
    for root in roots.values():
        root.mkdir()
        LAYOUTS[layout](root)
    expected = _run([sys.executable, *args], roots["python"], where, stdin)
    got = _run([sys.executable, "-m", "looptrace", "run", "--quiet", *args],
               roots["looptrace"], where, stdin)
    return expected, got


@pytest.mark.parametrize(("layout", "args", "where"), CASES,
                         ids=[f"{c[0]}:{' '.join(c[1])[:40]}" for c in CASES])
def test_looptrace_run_is_python(tmp_path: Path, layout: str, args: list[str],
                                 where: str) -> None:
    """Same stdout (argv, sys.path[0], __file__, __spec__, __main__ globals), same stderr
    (tracebacks, python's own error lines), same exit status, same files written."""
    expected, got = _both(tmp_path, layout, args, where)
    assert got == expected


def test_script_on_stdin_is_python(tmp_path: Path) -> None:
    """`looptrace run - args` reads the program from standard input, as `python -` does."""
    source = textwrap.dedent(SHOW)
    expected, got = _both(tmp_path, "script", ["-", "a", "--json", "b"], ".", stdin=source)
    assert expected[0] == 0
    assert got == expected


def test_a_symlinked_script_imports_the_modules_next_to_its_target(tmp_path: Path) -> None:
    """Item 4: python resolves the link for sys.path[0]; so does looptrace run."""
    (tmp_path / "python").mkdir()
    layout_symlink(tmp_path / "python")
    result = subprocess.run([sys.executable, "-m", "looptrace", "run", "--quiet",
                             str(tmp_path / "python" / "bin" / "link.py")],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "the neighbour of the target" in result.stdout
    shown = json.loads(result.stdout.splitlines()[0])
    assert shown["path0"] == os.path.realpath(tmp_path / "python" / "real")


def test_the_interrupted_status_is_pythons(tmp_path: Path) -> None:
    """An uncaught KeyboardInterrupt ends both as killed by SIGINT."""
    expected, got = _both(tmp_path, "exits", ["exits.py", "interrupt"], ".")
    assert expected[0] == got[0] == -signal.SIGINT


def test_looptrace_options_before_the_program_still_apply(tmp_path: Path) -> None:
    """The options before the program are looptrace's; the same words after it are the
    program's. The summary (without --quiet) goes to stderr after the program's output."""
    layout_options(tmp_path)
    report = tmp_path / "r.json"
    result = subprocess.run([sys.executable, "-m", "looptrace", "run", "--threshold-ms", "40",
                             "--json", str(report), "opts.py", "--json", "mine"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "'json': 'mine'" in result.stdout
    assert json.loads(report.read_text())["threshold_ms"] == 40
    assert "looptrace:" in result.stderr
    assert not (tmp_path / "mine").exists()


@pytest.mark.parametrize("statement", [
    "sys.argv = [pathlib.Path('p'), 3, b'\\xff', None]",
    "del sys.argv",
    "sys.argv = None",
    "sys.argv = 7",
])
def test_whatever_the_program_leaves_in_sys_argv_the_report_is_written(
        tmp_path: Path, statement: str) -> None:
    """Item 5: non-string argv items, a deleted or replaced sys.argv never lose a report."""
    script = write(tmp_path / "argv.py", f"""
        import asyncio, pathlib, sys, time
        async def main():
            await asyncio.sleep(0)
            time.sleep(0.12)
        asyncio.run(main())
        {statement}
    """)
    report = tmp_path / "r.json"
    result = subprocess.run([sys.executable, "-m", "looptrace", "run", "--threshold-ms", "50",
                             "--json", str(report), str(script)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    data = json.loads(report.read_text())
    assert all(isinstance(item, str) for item in data["argv"])
    assert data["hotspots"][0]["call"] == "time.sleep"


def test_a_task_whose_name_cannot_be_printed_keeps_the_report(tmp_path: Path) -> None:
    """Item 5: a task whose get_name() returns an object str() fails on."""
    script = write(tmp_path / "task.py", """
        import asyncio, time
        class Unprintable:
            def __str__(self):
                raise RuntimeError("no string for you")
            __repr__ = __str__
        class OddTask(asyncio.Task):
            def get_name(self):
                return Unprintable()
        async def blocker():
            await asyncio.sleep(0)
            time.sleep(0.12)
        async def main():
            loop = asyncio.get_running_loop()
            loop.set_task_factory(lambda loop, coro, **kw: OddTask(coro, loop=loop, **kw))
            await asyncio.create_task(blocker())
        asyncio.run(main())
    """)
    report = tmp_path / "r.json"
    result = subprocess.run([sys.executable, "-m", "looptrace", "run", "--threshold-ms", "50",
                             "--json", str(report), str(script)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    (hotspot,) = json.loads(report.read_text())["hotspots"]
    assert hotspot["task"] == "<unprintable Unprintable>"

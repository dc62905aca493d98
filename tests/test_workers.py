"""Every process of a traced program: fork, spawn, forkserver and exec'd children traced
with the same options, each writing its own report, the root combining them; outputs and
options from LOOPTRACE_* variables; ``looptrace report`` over several files."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import looptrace
from looptrace._config import Options, resolve, to_environment

LOOPTRACE = [sys.executable, "-m", "looptrace"]


def run(args: list[str], *, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ)
    environment.pop("PYTHONPATH", None)
    environment.update(env or {})
    return subprocess.run([*LOOPTRACE, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False, env=environment)


def write(path: Path, source: str) -> Path:
    path.write_text(textwrap.dedent(source))
    return path


WORKERS = """
    import asyncio, multiprocessing, sys, time

    async def work():
        await asyncio.sleep(0)
        time.sleep(0.12)  # WORKER_BLOCK
        await asyncio.sleep(0)

    def child():
        asyncio.run(work())

    if __name__ == "__main__":
        context = multiprocessing.get_context(sys.argv[1])
        processes = [context.Process(target=child) for _ in range(2)]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
        asyncio.run(work())
"""


def _line(path: Path, marker: str) -> int:
    return next(number for number, text in enumerate(path.read_text().splitlines(), start=1)
                if marker in text)


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_multiprocessing_workers_are_traced_and_combined(tmp_path: Path, method: str) -> None:
    """With each start method, both workers and the parent are traced; the combined report
    has each process's loop (named by its pid) and every block at the worker's line."""
    script = write(tmp_path / "workers.py", WORKERS)
    report = tmp_path / "all.json"
    result = run(["run", "--threshold-ms", "50", "--json", str(report), str(script), method],
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    threads = {loop["thread"] for loop in data["loops"]}
    assert len(threads) == 3, threads
    assert all(thread.startswith("pid ") for thread in threads)
    (hotspot,) = data["hotspots"]
    assert hotspot["site"]["line"] == _line(script, "WORKER_BLOCK")
    assert hotspot["count"] == 3
    assert "looptrace: 3 processes traced" in result.stderr
    assert "left no report" not in result.stderr


def test_an_executed_python_child_is_traced(tmp_path: Path) -> None:
    """``subprocess.run([sys.executable, ...])``: the child interpreter is traced through
    the bootstrap directory on PYTHONPATH, with the parent's options."""
    child = write(tmp_path / "child.py", """
        import asyncio, time
        async def main():
            time.sleep(0.08)  # CHILD_BLOCK
        asyncio.run(main())
    """)
    parent = write(tmp_path / "parent.py", f"""
        import subprocess, sys
        subprocess.run([sys.executable, {str(child)!r}], check=True)
    """)
    report = tmp_path / "all.json"
    result = run(["run", "--threshold-ms", "50", "--json", str(report), str(parent)],
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (hotspot,) = json.loads(report.read_text())["hotspots"]
    assert hotspot["site"]["file"] == str(child)
    assert hotspot["site"]["line"] == _line(child, "CHILD_BLOCK")
    assert "looptrace: 2 processes traced" in result.stderr


def test_an_existing_sitecustomize_still_runs(tmp_path: Path) -> None:
    """The bootstrap hides the program's own sitecustomize on PYTHONPATH: it imports it
    first, then traces the child."""
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    write(site_dir / "sitecustomize.py", """
        import os
        open(os.path.join(os.environ["MARKS"], f"{os.getpid()}.mark"), "w").close()
    """)
    marks = tmp_path / "marks"
    marks.mkdir()
    child = write(tmp_path / "child.py", """
        import asyncio, time
        async def main():
            time.sleep(0.08)
        asyncio.run(main())
    """)
    parent = write(tmp_path / "parent.py", f"""
        import subprocess, sys
        subprocess.run([sys.executable, {str(child)!r}], check=True)
    """)
    result = run(["run", "--threshold-ms", "50", str(parent)], cwd=tmp_path,
                 env={"PYTHONPATH": str(site_dir), "MARKS": str(marks)})
    assert result.returncode == 0, result.stderr
    assert len(list(marks.iterdir())) == 2  # the parent's and the child's interpreter
    assert "looptrace: 2 processes traced" in result.stderr
    assert "1. blocking-call  time.sleep" in result.stderr


def test_a_worker_that_dies_without_a_report_is_named(tmp_path: Path) -> None:
    """A worker killed before it could write its report is listed, not silently lost."""
    script = write(tmp_path / "killed.py", """
        import multiprocessing, os, signal

        def child():
            os.kill(os.getpid(), signal.SIGKILL)

        if __name__ == "__main__":
            process = multiprocessing.get_context("spawn").Process(target=child)
            process.start()
            process.join()
    """)
    result = run(["run", str(script)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "started, left no report" in result.stderr
    assert "looptrace: 1 process traced, 1 started but left no report" in result.stderr


def test_no_subprocesses_leaves_children_alone(tmp_path: Path) -> None:
    """``--no-subprocesses`` (or LOOPTRACE_SUBPROCESSES=0): only the program itself."""
    script = write(tmp_path / "workers.py", WORKERS)
    for args, env in ((["--no-subprocesses"], {}), ([], {"LOOPTRACE_SUBPROCESSES": "0"})):
        result = run(["run", "--threshold-ms", "50", *args, str(script), "spawn"],
                     cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        assert "1 loop, 1 block" in result.stderr
        assert "Processes" not in result.stderr


def test_per_process_report_paths(tmp_path: Path) -> None:
    """``{pid}`` in a path and a directory path give one file per process; a shared path
    gets the combined report."""
    script = write(tmp_path / "workers.py", WORKERS)
    reports = tmp_path / "reports"
    result = run(["run", "--threshold-ms", "50", str(script), "spawn"], cwd=tmp_path,
                 env={"LOOPTRACE_JSON": str(tmp_path / "r-{pid}.json"),
                      "LOOPTRACE_HTML": f"{reports}/"})
    assert result.returncode == 0, result.stderr
    per_pid = sorted(tmp_path.glob("r-*.json"))
    assert len(per_pid) == 3
    for path in per_pid:
        data = json.loads(path.read_text())
        assert path.name == f"r-{data['pid']}.json"
        assert len(data["loops"]) == 1  # its own loop only, nothing of the parent's
    assert len(list(reports.glob("looptrace-*.html"))) == 3


def test_report_combines_several_files(tmp_path: Path) -> None:
    """``looptrace report a.json b.json``: one summary, loops kept apart by process."""
    script = write(tmp_path / "workers.py", WORKERS)
    result = run(["run", "--threshold-ms", "50", "--quiet", str(script), "spawn"],
                 cwd=tmp_path, env={"LOOPTRACE_JSON": str(tmp_path / "r-{pid}.json")})
    assert result.returncode == 0, result.stderr
    files = sorted(str(p) for p in tmp_path.glob("r-*.json"))
    assert len(files) == 3
    combined = run(["report", *files], cwd=tmp_path)
    assert combined.returncode == 0, combined.stderr
    assert "3 loops, 3 blocks" in combined.stdout
    assert combined.stdout.count("  loop ") == 3
    out = tmp_path / "all.json"
    assert run(["report", *files, "--format", "json", "-o", str(out)],
               cwd=tmp_path).returncode == 0
    assert sum(h["count"] for h in json.loads(out.read_text())["hotspots"]) == 3
    bad = run(["report", files[0], str(tmp_path / "missing.json")], cwd=tmp_path)
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1


def test_environment_names_the_outputs_of_install(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``install()`` alone (as under opentelemetry-instrument) writes the files that
    LOOPTRACE_* ask for when it stops, with ``{pid}`` expanded."""
    monkeypatch.setenv("LOOPTRACE_JSON", str(tmp_path / "report-{pid}.json"))
    monkeypatch.setenv("LOOPTRACE_CHROME_TRACE", f"{tmp_path}/traces/")
    monkeypatch.setenv("LOOPTRACE_THRESHOLD_MS", "30")

    async def main() -> None:
        time.sleep(0.05)

    looptrace.install()
    asyncio.run(main())
    looptrace.uninstall()
    data = json.loads((tmp_path / f"report-{os.getpid()}.json").read_text())
    assert data["threshold_ms"] == 30
    assert len(data["blocks"]) == 1
    assert (tmp_path / "traces" / f"looptrace-{os.getpid()}.trace.json").exists()


def test_install_alone_changes_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Subprocess tracing is off for ``install()`` unless asked; when asked, what it set
    for the children is taken back when it stops."""
    before = dict(os.environ)
    looptrace.install()
    assert dict(os.environ) == before
    looptrace.uninstall()
    looptrace.install(subprocesses=True)
    assert "looptrace" in os.environ["PYTHONPATH"]
    assert os.environ["LOOPTRACE_SUBPROCESSES"] == "1"
    looptrace.uninstall()
    assert dict(os.environ) == before


def test_options_survive_the_trip_through_the_environment() -> None:
    """A child resolves the same options from the variables its parent set."""
    options = resolve({"threshold_ms": 12.5, "mode": "full", "probes": False,
                       "otlp": "http://127.0.0.1:4318", "json": "/tmp/r-{pid}.json",
                       "summary": True, "subprocesses": True, "log": "stdlib",
                       "otel_spans": "blocks,loops"}, environ={})
    environment = {k: v for k, v in to_environment(options).items() if v is not None}
    assert resolve({}, environ=environment) == options
    assert to_environment(Options()) == dict.fromkeys(to_environment(Options()))


def test_bad_output_variable_is_one_clear_error() -> None:
    """An empty-looking or wrong-typed path is refused naming the variable or option."""
    with pytest.raises(TypeError, match="json must be a path"):
        resolve({"json": 3}, environ={})
    with pytest.raises(ValueError, match="LOOPTRACE_SUMMARY"):
        resolve({}, environ={"LOOPTRACE_SUMMARY": "maybe"})

#!/usr/bin/env python3
"""The compatibility job: other projects' test suites, without looptrace and with it.

    scripts/compat.py [--python PYTHON] [--cache DIR] [--work DIR] [--suite NAME ...]

Installed process-wide (``sitecustomize``, a ``.pth`` file, ``opentelemetry-instrument``),
looptrace runs under code nobody wrote for it. This job takes the test suites of well-known
asyncio projects from their pinned sdists on PyPI, installs each with its test dependencies
(pinned too) in a virtualenv of its own, and runs each suite

- ``baseline``: without looptrace (not even importable), twice;
- ``sitecustomize``: looptrace installed at start-up of every Python process of the run
  (``tests/reliability/sitecustomize/sitecustomize.py`` on ``PYTHONPATH``, inherited by the
  suite's own subprocesses), each process writing its report at exit;
- ``plugin``: the pytest plugin recording every test with a budget
  (``--looptrace-max-block-ms 1000``).

looptrace itself is installed (``pip install --target``) into a directory that only the two
traced modes put on ``PYTHONPATH``, so the baseline runs with no trace of it, and its pytest
entry point is seen exactly as a user's installation would be.

Outcomes are compared per test case (JUnit XML: passed, failed, error, skipped; the
message is not compared). The job fails, listing the tests, when

- a test ends differently in a traced mode than in the baseline, and still does when that
  test is run again alone in both modes (a test that differed in the full run but not when
  run again is listed as "unstable", and does not fail the job: the suites have tests
  that depend on timing, and the machine is shared);
- a traced process reports a fault inside looptrace (a hook that disabled itself), or no
  traced process recorded a loop (looptrace was not really installed);
- a suite's run collected nothing or crashed (pytest exit status 2-5).

Honesty about the baselines: a test whose outcome differs between the two baseline runs is
flaky on its own; it is listed as such and left out of the comparison (it cannot tell us
anything). Tests that fail in the baseline because of the environment stay in: they must
fail the same way with looptrace. Known ones here: anyio's IPv6 and dual-stack tests fail
or error on a machine without IPv6 and leak sockets whose ResourceWarnings then surface in
whichever test runs when the garbage collector finds them (a different one with
looptrace's allocations in the process): on such a machine they are deselected, and the
report says so; a test that differs and whose baseline ends otherwise when it is run
again is flaky on its own and listed as such; anyio's ``network`` tests need the Internet and are
deselected (``-m "not network"``, as anyio's own CI marks them); trio is not installed, so
its parametrisations are deselected (``-k "not trio"``) instead of being reported skipped.

sdists and virtualenvs are cached outside the repository (``--cache``, default
``~/.cache/looptrace-compat``; never commit them). Exit status: 0 same outcomes, 1
differences or faults, 2 the job could not run (download, install).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SITECUSTOMIZE = REPO / "tests" / "reliability" / "sitecustomize"
PLUGIN_BUDGET_MS = "1000"
MODES = ("baseline", "sitecustomize", "plugin")
RUN_TIMEOUT_S = 1800


@dataclasses.dataclass(frozen=True)
class Suite:
    """One project's test suite: its sdist (pinned, with its sha256) and how to run it."""

    name: str
    project: str
    version: str
    sha256: str
    deps: tuple[str, ...]
    args: tuple[str, ...] = ()

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"


SUITES = (
    Suite("anyio", "anyio", "4.16.0",
          "59bb03251907983d1603d27c3087ddb1e93299ea2163adcdba37899a4fb12ffb",
          # anyio's dependency group "test", pinned (coverage left out: not run here)
          ("blockbuster==1.5.29", "hypothesis==6.170.15", "psutil==7.2.2", "pytest==9.2.0",
           "pytest-mock==3.17.0", "pytest-timeout==2.4.0", "trustme==1.2.1",
           "truststore==0.10.5", "uvloop==0.23.0"),
          ("-k", "not trio", "-m", "not network")),
    Suite("pytest-asyncio", "pytest-asyncio", "1.5.0",
          "92c8fa83ca419fd0d4bd6a34df6520dae435841d3733c319343249492adf37f7",
          ("hypothesis==6.170.15", "pytest==9.2.0")),
    Suite("asgiref", "asgiref", "3.13.0",
          "034cc8cbf72d00553b4be256703ac545120b4e50af13b49dec99da899aeeecb4",
          ("packaging==26.3", "pytest==9.2.0", "pytest-asyncio==1.5.0")),
)


def has_ipv6() -> bool:
    """Whether this machine has IPv6 as anyio's tests use it: a listening socket on the
    IPv6 loopback, and ``localhost`` resolving to it."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        socket.getaddrinfo("localhost", 0, socket.AF_INET6)
        return True
    except OSError:
        return False


def suite_args(suite: Suite) -> list[str]:
    """The suite's arguments, less what this machine cannot run: without IPv6, anyio's
    IPv6 and dual-stack parametrisations fail or error in every mode and leak sockets
    whose ResourceWarnings land in whichever test runs when they are collected, so they
    tell nothing about looptrace (deselected, and said in the report)."""
    args = list(suite.args)
    if suite.name == "anyio" and not has_ipv6():
        args[args.index("-k") + 1] += " and not ipv6 and not dualstack"
    return args


def log(message: str) -> None:
    print(f"compat: {message}", flush=True)


def run(command: list[str], env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False, env=env)


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without anything that would change a suite's run."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LOOPTRACE_", "PYTEST_", "PYTHON", "COV_"))}
    env.update(extra or {})
    return env


# -- preparing


def sdist(suite: Suite, cache: Path, python: str) -> Path:
    """The pinned sdist, downloaded once into the cache and checked against its sha256."""
    directory = cache / "sdists"
    directory.mkdir(parents=True, exist_ok=True)
    prefix = suite.project.replace("-", "_")
    found = list(directory.glob(f"{prefix}-{suite.version}.tar.gz"))
    if not found:
        result = run([python, "-m", "pip", "download", "--quiet", "--no-binary", ":all:",
                      "--no-deps", "--dest", str(directory), suite.requirement],
                     env=clean_env())
        if result.returncode != 0:
            raise SystemExit(f"compat: downloading {suite.requirement} failed:\n"
                             f"{result.stderr}")
        found = list(directory.glob(f"{prefix}-{suite.version}.tar.gz"))
    if len(found) != 1:
        raise SystemExit(f"compat: no sdist {prefix}-{suite.version}.tar.gz in {directory}")
    digest = hashlib.sha256(found[0].read_bytes()).hexdigest()
    if digest != suite.sha256:
        raise SystemExit(f"compat: {found[0]} has sha256 {digest}, pinned {suite.sha256}")
    return found[0]


def venv(suite: Suite, archive: Path, cache: Path, python: str) -> Path:
    """A virtualenv with the project and its test dependencies, reused while the pins
    (and the interpreter) are the same."""
    version = run([python, "-c", "import sys; print(sys.version)"]).stdout.strip()
    key = json.dumps([version, suite.requirement, suite.sha256, *suite.deps])
    path = cache / "venvs" / suite.name
    marker = path / "compat-pins.json"
    if marker.exists() and marker.read_text() == key:
        return path
    shutil.rmtree(path, ignore_errors=True)
    steps = [[python, "-m", "venv", str(path)],
             [str(path / "bin" / "python"), "-m", "pip", "install", "--quiet",
              "--upgrade", "pip"],
             [str(path / "bin" / "python"), "-m", "pip", "install", "--quiet",
              str(archive), *suite.deps]]
    for step in steps:
        result = run(step, env=clean_env())
        if result.returncode != 0:
            raise SystemExit(f"compat: {' '.join(step)} failed:\n{result.stderr}")
    marker.write_text(key)
    return path


def unpack(archive: Path, work: Path) -> Path:
    """A fresh copy of the sdist's tree (the suite's tests and configuration)."""
    target = work / "src"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    (tree,) = list(target.iterdir())
    return tree


def install_looptrace(python: str, work: Path) -> Path:
    """This checkout of looptrace, built and installed into a directory of its own.

    It is built from a copy of the sources: pip builds a local project in its tree (build/,
    egg-info, the C extension), and CI runs this job beside the test suites, whose editable
    installs build in the checkout at the same time."""
    target = work / "looptrace"
    sources = work / "looptrace-src"
    for directory in (target, sources):
        shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(REPO, sources, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "*.egg-info", "__pycache__", "*.so", ".pytest_cache"))
    result = run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
                  "--target", str(target), str(sources)], env=clean_env())
    if result.returncode != 0:
        raise SystemExit(f"compat: installing looptrace failed:\n{result.stderr}")
    return target


# -- running


Outcomes = dict[str, str]  # test id -> "passed" | "failed" | "error" | "skipped"


@dataclasses.dataclass
class Run:
    """One pytest run of a suite."""

    mode: str
    outcomes: Outcomes
    status: int
    seconds: float
    log: Path
    faults: list[str] = dataclasses.field(default_factory=list)
    recorded_loops: int = 0

    def counts(self) -> str:
        tally = Counter(self.outcomes.values())
        return ", ".join(f"{tally[k]} {k}" for k in ("passed", "failed", "error", "skipped")
                         if tally[k]) or "nothing"


def parse_junit(path: Path) -> Outcomes:
    """Test id (``classname::name``) -> outcome; a case with several results (a failure
    in the call and an error in teardown) keeps the worst."""
    rank = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}
    outcomes: Outcomes = {}
    if not path.exists():
        return outcomes
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '?')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped") and \
                    rank[child.tag if child.tag != "failure" else "failed"] > rank[outcome]:
                outcome = "failed" if child.tag == "failure" else child.tag
        if rank[outcome] >= rank[outcomes.get(test_id, "passed")]:
            outcomes[test_id] = outcome
    return outcomes


def run_suite(suite: Suite, env_dir: Path, tree: Path, mode: str, work: Path,
              looptrace_dir: Path, label: str, node_ids: list[str] | None = None) -> Run:
    """``pytest`` on the suite (or on ``node_ids``) in one mode, with JUnit XML."""
    out = work / "runs" / label
    shutil.rmtree(out, ignore_errors=True)
    (out / "reports").mkdir(parents=True)
    extra: dict[str, str] = {}
    args = [str(env_dir / "bin" / "python"), "-m", "pytest", "-p", "no:cacheprovider",
            "-q", f"--junitxml={out / 'junit.xml'}", *suite_args(suite)]
    if mode == "sitecustomize":
        extra["PYTHONPATH"] = f"{SITECUSTOMIZE}{os.pathsep}{looptrace_dir}"
        extra["ASYNCIO_SUITE_REPORTS"] = str(out / "reports")  # one report per process
    elif mode == "plugin":
        extra["PYTHONPATH"] = str(looptrace_dir)
        args += ["--looptrace-max-block-ms", PLUGIN_BUDGET_MS,
                 f"--looptrace-report={out / 'reports' / 'plugin.json'}"]
    args += node_ids or []
    started = time.monotonic()
    with open(out / "output.txt", "w", encoding="utf-8") as output:
        try:
            status = subprocess.run(args, cwd=tree, env=clean_env(extra), stdout=output,
                                    stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT_S,
                                    check=False).returncode
        except subprocess.TimeoutExpired:
            status = -1
    result = Run(mode, parse_junit(out / "junit.xml"), status, time.monotonic() - started,
                 out / "output.txt")
    read_reports(result, out / "reports")
    return result


def read_reports(result: Run, directory: Path) -> None:
    """The faults inside looptrace, and how many processes recorded a loop."""
    for path in sorted(directory.glob("*.json")):
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            result.faults.append(f"{path.name}: unreadable report ({exc})")
            continue
        result.recorded_loops += bool(report.get("loops"))
        for fault in report.get("faults", []):
            result.faults.append(f"{path.name}: hook {fault['hook']} disabled after "
                                 f"{fault['count']} error(s): {fault['error']}")


def node_id(test_id: str, tree: Path) -> str | None:
    """The pytest node id of a JUnit test id (``tests.test_x.TestA::test_b[p]`` ->
    ``tests/test_x.py::TestA::test_b[p]``), or None if no file matches."""
    classname, _, name = test_id.partition("::")
    parts = classname.split(".")
    for cut in range(len(parts), 0, -1):
        module = "/".join(parts[:cut]) + ".py"
        if (tree / module).is_file():
            return "::".join([module, *parts[cut:], name])
    return None


# -- comparing


@dataclasses.dataclass
class Verdict:
    """What one traced mode of one suite came to."""

    run: Run
    differ: list[str]  # still different when run again
    unstable: list[str]  # different in the full run, the same when run again
    problems: list[str]  # faults, a crashed run, nothing recorded


def differing(baseline: Outcomes, other: Outcomes, flaky: set[str]) -> list[str]:
    return sorted(t for t in baseline.keys() | other.keys()
                  if t not in flaky and baseline.get(t, "absent") != other.get(t, "absent"))


def judge(suite: Suite, context: tuple[Path, Path, Path, Path], baseline: Run,
          flaky: set[str], mode: str) -> Verdict:
    env_dir, tree, work, looptrace_dir = context
    traced = run_suite(suite, env_dir, tree, mode, work, looptrace_dir, f"{suite.name}-{mode}")
    log(f"{suite.name} {mode}: {traced.counts()} in {traced.seconds:.0f} s")
    problems = list(traced.faults)
    if traced.status not in (0, 1):
        problems.append(f"pytest exit status {traced.status} (see {traced.log})")
    if mode == "sitecustomize" and traced.recorded_loops == 0:
        problems.append("no traced process recorded a loop: looptrace was not installed")
    differ = differing(baseline.outcomes, traced.outcomes, flaky)
    unstable: list[str] = []
    if differ:
        ids = {t: node_id(t, tree) for t in differ}
        again = [i for i in ids.values() if i is not None]
        if again:
            label = f"{suite.name}-{mode}-again"
            base_again = run_suite(suite, env_dir, tree, "baseline", work, looptrace_dir,
                                   f"{label}-baseline", again)
            mode_again = run_suite(suite, env_dir, tree, mode, work, looptrace_dir,
                                   f"{label}-{mode}", again)
            problems.extend(mode_again.faults)
            # Same outcome in both modes when run again, or the baseline itself ended
            # otherwise than in its full run (flaky without looptrace): not looptrace's.
            unstable = [t for t in differ if ids[t] is not None and (
                base_again.outcomes.get(t, "absent") ==
                mode_again.outcomes.get(t, "absent") != "absent" or
                base_again.outcomes.get(t, "absent") != baseline.outcomes.get(t, "absent"))]
            differ = [t for t in differ if t not in unstable]
    return Verdict(traced, differ, unstable, problems)


def check_suite(suite: Suite, python: str, cache: Path, work: Path,
                looptrace_dir: Path) -> tuple[list[Run], set[str], dict[str, Verdict]]:
    archive = sdist(suite, cache, python)
    env_dir = venv(suite, archive, cache, python)
    suite_work = work / suite.name
    tree = unpack(archive, suite_work)
    first, second = (run_suite(suite, env_dir, tree, "baseline", suite_work, looptrace_dir,
                               f"{suite.name}-baseline-{n}") for n in (1, 2))
    for n, base in enumerate((first, second), start=1):
        log(f"{suite.name} baseline {n}: {base.counts()} in {base.seconds:.0f} s")
    flaky = set(differing(first.outcomes, second.outcomes, set()))
    context = (env_dir, tree, suite_work, looptrace_dir)
    verdicts = {mode: judge(suite, context, first, flaky, mode) for mode in MODES[1:]}
    for base in (first, second):
        if base.status not in (0, 1) or not base.outcomes:
            verdicts["sitecustomize"].problems.append(
                f"the baseline run could not run (exit status {base.status}, see {base.log})")
    return [first, second], flaky, verdicts


def report(results: dict[str, tuple[list[Run], set[str], dict[str, Verdict]]],
           seconds: float) -> tuple[str, bool]:
    """The Markdown report, and whether the job passed."""
    lines = ["| suite | baseline | baseline, again | looptrace in sitecustomize | "
             "plugin (--looptrace-max-block-ms 1000) |", "| --- | --- | --- | --- | --- |"]
    details: list[str] = []
    passed = True
    for name, (bases, flaky, verdicts) in results.items():
        cells = [f"{b.counts()} ({b.seconds:.0f} s)" for b in bases]
        for mode, verdict in verdicts.items():
            same = not verdict.differ and not verdict.problems
            passed &= same
            cells.append(f"{verdict.run.counts()} ({verdict.run.seconds:.0f} s): "
                         + ("same outcomes" if same else "DIFFERENT"))
            for title, items in (("differ from the baseline", verdict.differ),
                                 ("differed once; same when run again, or the baseline "
                                  "itself changed", verdict.unstable),
                                 ("problems", verdict.problems)):
                if items:
                    details.append(f"{name}, {mode}: {len(items)} {title}:")
                    details.extend(f"  - {item}" for item in items[:200])
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if flaky:
            details.append(f"{name}: {len(flaky)} flaky in the baseline itself "
                           "(left out of the comparison):")
            details.extend(f"  - {t}" for t in sorted(flaky))
    lines += ["", *details, "", f"total time {seconds / 60:.1f} min; "
              + ("PASSED: every test ends as in the baseline" if passed else "FAILED")]
    return "\n".join(lines) + "\n", passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter of the suites' virtualenvs (default: this one)")
    parser.add_argument("--cache", type=Path,
                        default=Path.home() / ".cache" / "looptrace-compat",
                        help="sdists and virtualenvs, kept between runs (outside the repo)")
    parser.add_argument("--work", type=Path, default=None,
                        help="runs, JUnit XML and the report (default: CACHE/work)")
    parser.add_argument("--suite", action="append", choices=[s.name for s in SUITES],
                        help="run only this suite (repeatable)")
    options = parser.parse_args(argv)
    cache = options.cache.resolve()
    work = (options.work or cache / "work").resolve()
    if REPO in (cache, *cache.parents) or REPO in (work, *work.parents):
        parser.error("--cache and --work must be outside the repository")
    started = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    looptrace_dir = install_looptrace(options.python, work)
    chosen = [s for s in SUITES if not options.suite or s.name in options.suite]
    results = {s.name: check_suite(s, options.python, cache, work, looptrace_dir)
               for s in chosen}
    text, passed = report(results, time.monotonic() - started)
    (work / "compat-report.md").write_text(text)
    print(text, end="")
    log(f"report: {work / 'compat-report.md'}; runs: {work}")
    return 0 if passed else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit as exc:
        if isinstance(exc.code, str):  # a preparation step failed: one line, status 2
            print(exc.code, file=sys.stderr)
            sys.exit(2)
        raise

"""Security: looptrace opens no listening socket, and what it writes (the JSON report, every
rendering of it, the OpenTelemetry spans it exports) names code (file, line, function,
call, task and thread names), never the values the code handled: no local variable, no
argument, no environment value. The HTML report escapes every string it shows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_helpers import run_python

from helpers.collectors import Collector, otlp_collector

SECRETS = {
    "argument": "SECRET-ARGUMENT-6f1d",
    "local": "SECRET-LOCAL-90ab",
    "environment": "SECRET-ENVIRONMENT-77c3",
    "closure": "SECRET-CLOSURE-c0de",
    "exception": "SECRET-EXCEPTION-5e5e",
}

def _hidden(value: str) -> str:
    """Source code that makes ``value`` at run time without spelling it: the HTML report
    shows the source lines around a block, and a literal there is code, not a value."""
    return f"bytes.fromhex({value.encode().hex()!r}).decode()"


# Blocks in functions whose arguments, locals and closures hold secrets; a secret in the
# environment; an exception carrying one; while every looptrace feature is on.
PROGRAM = f"""
import asyncio, os, socket, time, urllib.request

def blocking_helper(password):
    token = password + {_hidden(SECRETS['local'])}
    time.sleep(0.03)          # a probed call, with secrets in the frame
    return token

async def handler(api_key, *, credentials):
    secret_local = {_hidden(SECRETS['local'])}
    blocking_helper(api_key)
    await asyncio.sleep(0)
    spin = time.perf_counter() + 0.03
    while time.perf_counter() < spin:   # a sampled CPU block, same frame
        secret_local = secret_local[::-1]
    try:
        raise ValueError({_hidden(SECRETS['exception'])})
    except ValueError:
        pass
    await asyncio.sleep(0)

async def main():
    closure_secret = {_hidden(SECRETS['closure'])}
    async def inner():
        time.sleep(0.03)
        return closure_secret
    argument = {_hidden(SECRETS['argument'])}
    await asyncio.gather(handler(argument, credentials={{"pw": argument}}), inner())

assert os.environ["APP_TOKEN"] == {_hidden(SECRETS['environment'])}
asyncio.run(main())
print(LISTENING())
"""

LISTENING = '''
def LISTENING():
    """This process's sockets that listen (TCP LISTEN, bound UDP, listening unix)."""
    import os
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        with open(f"/proc/net/{table}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                state, inode = fields[3], fields[9]
                if inode in inodes and (table.startswith("udp") or state == "0A"):
                    found.append((table, fields[1]))
    with open("/proc/net/unix") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[6] in inodes and int(fields[3], 16) & 0x10000:  # __SO_ACCEPTCON
                found.append(("unix", fields[-1] if len(fields) > 7 else ""))
    return "listening: %r" % found
'''


@pytest.fixture
def collector() -> Iterator[Collector]:
    """A loopback collector that takes every export and keeps the request bodies."""
    with otlp_collector() as live:
        yield live


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[str, dict[str, object], dict[str, str]]:
    """Run the program under `looptrace run` with every output and feature on; return its
    stdout, the JSON report, and every rendering of the report."""
    directory = tmp_path_factory.mktemp("security")
    script = directory / "app.py"
    script.write_text(LISTENING + PROGRAM)
    outputs = {"json": directory / "r.json", "html": directory / "r.html",
               "chrome": directory / "r.chrome.json", "jaeger": directory / "r.jaeger.json"}
    result = run_python(
        ["-m", "looptrace", "run", "--threshold-ms", "10", "--mode", "full",
         "--json", str(outputs["json"]), "--html", str(outputs["html"]),
         "--chrome-trace", str(outputs["chrome"]), "--jaeger-json", str(outputs["jaeger"]),
         str(script)],
        env={"APP_TOKEN": SECRETS["environment"], "LOOPTRACE_LOG": "stdlib"})
    assert result.returncode == 0, result.stderr
    renderings = {fmt: path.read_text() for fmt, path in outputs.items()}
    renderings["summary"] = result.stderr  # the terminal summary and the block log lines
    return result.stdout, json.loads(renderings["json"]), renderings


def test_looptrace_opens_no_listening_socket(traced: tuple[str, object, object]) -> None:
    """With every feature on (full mode, probes, logs), the traced process listens on no
    TCP, UDP or unix socket."""
    stdout, _, _ = traced
    assert stdout.strip() == "listening: []"


def test_looptrace_opens_no_listening_socket_while_exporting(
        tmp_path: Path, collector: Collector) -> None:
    """Exporting spans over OTLP is a client: still no listening socket."""
    endpoint = collector.url
    script = tmp_path / "app.py"
    script.write_text(LISTENING + PROGRAM)
    result = run_python(["-m", "looptrace", "run", "--quiet", "--threshold-ms", "10",
                         "--otlp", endpoint, str(script)],
                        env={"APP_TOKEN": SECRETS["environment"]})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "listening: []"


@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_reports_never_carry_values(traced: tuple[str, dict[str, object], dict[str, str]],
                                    kind: str) -> None:
    """No argument, local, closure variable, exception message or environment value of the
    program appears in the JSON report, the HTML, the Chrome trace, the Jaeger file or the
    terminal output; the blocks are there, named by code."""
    _, report, renderings = traced
    assert report["hotspots"], "the program's blocks were not recorded"
    # A busy machine may add a hotspot with no site (a step that waited for a CPU, which
    # may be the sampled spin in handler itself); the probed calls are always named.
    hotspots: list[dict[str, dict[str, str] | None]] = report["hotspots"]  # type: ignore[assignment]
    functions = {h["site"]["function"] for h in hotspots if h["site"] is not None}
    expected = {"blocking_helper", "main.<locals>.inner"}
    if all(h["site"] is not None for h in hotspots):
        expected.add("handler")
    assert expected <= functions, functions
    for fmt, text in renderings.items():
        assert SECRETS[kind] not in text, f"the {kind} value leaked into the {fmt} output"


def test_spans_never_carry_values(tmp_path: Path, collector: Collector) -> None:
    """The OTLP spans (and metrics) sent to a collector name code, never values."""
    endpoint, bodies = collector.url, collector.bodies
    script = tmp_path / "app.py"
    script.write_text(LISTENING + PROGRAM)
    result = run_python(["-m", "looptrace", "run", "--quiet", "--threshold-ms", "10",
                         "--otlp", endpoint, str(script)],
                        env={"APP_TOKEN": SECRETS["environment"], "OTEL_SERVICE_NAME": "sec"})
    assert result.returncode == 0, result.stderr
    sent = b"".join(bodies)
    assert b"looptrace.block" in sent, "no span reached the collector"
    assert b"blocking_helper" in sent
    for kind, secret in SECRETS.items():
        assert secret.encode() not in sent, f"the {kind} value was exported"


def test_every_string_in_the_html_report_is_escaped(tmp_path: Path) -> None:
    """Task and thread names and file paths are the program's to choose: markup in them is
    shown as text, never run (the HTML has as many <script> tags as with plain names)."""
    payload = "</script><script>alert(1)</script><img src=x onerror=alert(2)>"
    program = f"""
import asyncio, threading, time

async def main():
    asyncio.current_task().set_name({payload!r})
    time.sleep(0.03)

def run():
    asyncio.run(main())

thread = threading.Thread(target=run, name={payload!r})
thread.start(); thread.join()
"""
    html = {}
    for name, directory in (("plain", tmp_path / "plain"),
                            ("markup", tmp_path / "<b>dir")):
        directory.mkdir()
        script = directory / "app.py"
        text = program if name == "markup" else program.replace(repr(payload), "'plain'")
        script.write_text(text)
        out = directory / "r.html"
        result = run_python(["-m", "looptrace", "run", "--quiet", "--threshold-ms", "10",
                             "--html", str(out), str(script)])
        assert result.returncode == 0, result.stderr
        html[name] = out.read_text()
    assert "<img" not in html["markup"]
    assert "<script>alert" not in html["markup"]
    assert "<b>dir" not in html["markup"]
    assert html["markup"].count("<script") == html["plain"].count("<script")
    assert html["markup"].count("</script") == html["plain"].count("</script")

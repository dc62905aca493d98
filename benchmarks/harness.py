"""Paired A/B runs: each measurement in a fresh process, the baseline and the tool in turn.

For every pair index, every workload and every tool, the baseline (no tracer) and the tool
run back to back at the same size, in alternating order (AB, then BA on the next pair) so a
drift of the machine does not favour either side. A cell of the table is the median over
pairs of the per-pair ratio, with its min and max, so the noise shows.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import tools

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "child.py")

# Sizes from perf-anchors.md (full) and a quarter of them (quick).
SIZES: dict[str, dict[str, dict[str, int]]] = {
    "full": {
        "callback_chain": {"hops": 1_000_000},
        "task_pingpong": {"tasks": 1000, "steps": 500},
        "socket_echo": {"clients": 10, "round_trips": 5000},
    },
    "quick": {
        "callback_chain": {"hops": 250_000},
        "task_pingpong": {"tasks": 1000, "steps": 125},
        "socket_echo": {"clients": 10, "round_trips": 1250},
    },
}
AIOHTTP_LOAD = {"full": {"warmup": 1, "duration": 3}, "quick": {"warmup": 1, "duration": 1}}
WORKLOADS = ("callback_chain", "task_pingpong", "socket_echo", "aiohttp")
ENDPOINTS = ("hello", "json")


class BenchError(RuntimeError):
    pass


@dataclass
class Config:
    python: str
    tools: tuple[str, ...]
    workloads: tuple[str, ...]
    pairs: int
    mode: str  # "full" or "quick"
    wrk_connections: int = 32
    log: Callable[[str], None] = print
    extra_env: dict[str, str] = field(default_factory=dict)


def scaled(workload: str, tool: str, mode: str) -> dict[str, int]:
    """The workload's sizes for this tool (slow tools run smaller; see tools.SCALE)."""
    factor = tools.scale_for(tool, workload)
    sizes = dict(SIZES[mode][workload])
    if "hops" in sizes:
        sizes["hops"] = max(1, int(sizes["hops"] * factor))
    if "steps" in sizes:
        sizes["steps"] = max(1, int(sizes["steps"] * factor))
    if "round_trips" in sizes:
        sizes["round_trips"] = max(1, int(sizes["round_trips"] * factor))
    return sizes


def _child_env(tool: str, workload: str, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LOOPTRACE_", "OTEL_", "PYTHONASYNCIODEBUG"))}
    env.update(tools.environment(tool, workload))
    env.update(extra)
    return env


def _parse_result(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT "):])
            return result
    raise BenchError("the workload process printed no RESULT line:\n" + stdout[-2000:])


def run_inprocess_workload(config: Config, workload: str, tool: str, sizes: dict[str, int]
                           ) -> dict[str, Any]:
    spec = {"workload": workload, "tool": tool, **sizes}
    proc = subprocess.run([config.python, CHILD, json.dumps(spec)], capture_output=True,
                          text=True, env=_child_env(tool, workload, config.extra_env),
                          timeout=900, check=False)
    if proc.returncode != 0:
        raise BenchError(f"{workload}/{tool} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    result = _parse_result(proc.stdout)
    result["per_op_ns"] = result["elapsed_ns"] / result["ops"]
    result["cpu_per_op_ns"] = result["cpu_ns"] / result["ops"]
    return result


_LATENCY = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_REQUESTS = re.compile(r"^\s*(\d+) requests in", re.M)
_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_wrk(output: str) -> dict[str, float]:
    rps = _RPS.search(output)
    if rps is None:
        raise BenchError("unexpected wrk output:\n" + output)
    figures: dict[str, float] = {"rps": float(rps.group(1))}
    requests = _REQUESTS.search(output)
    figures["requests"] = float(requests.group(1)) if requests else 0.0
    for pct, value, unit in _LATENCY.findall(output):
        figures[f"p{pct}_ms"] = float(value) * _UNIT_MS[unit]
    errors = 0
    match = _ERRORS.search(output)
    if match:
        errors += sum(int(g) for g in match.groups())
    match = _NON_2XX.search(output)
    if match:
        errors += int(match.group(1))
    figures["errors"] = errors
    return figures


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise BenchError("wrk is not installed: run scripts/setup-wrk.sh (Debian package wrk)")
    return path


def _wrk(url: str, seconds: int, connections: int) -> dict[str, float]:
    proc = subprocess.run([wrk_path(), "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                           "--timeout", "5s", url], capture_output=True, text=True, timeout=120,
                          check=False)
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode}): {proc.stderr}")
    return parse_wrk(proc.stdout)


def run_aiohttp(config: Config, tool: str) -> dict[str, Any]:
    """A server process with the tool applied, loaded by wrk from another process."""
    spec = {"workload": "aiohttp", "tool": tool}
    load = AIOHTTP_LOAD[config.mode]
    proc = subprocess.Popen([config.python, CHILD, json.dumps(spec)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_child_env(tool, "aiohttp", config.extra_env))
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            proc.kill()
            _, err = proc.communicate(timeout=30)
            raise BenchError(f"aiohttp server ({tool}) did not start: {line!r}\n{err[-3000:]}")
        port = int(line.split()[1])
        base = f"http://127.0.0.1:{port}"
        warmup = _wrk(f"{base}/hello", load["warmup"], config.wrk_connections)
        result: dict[str, Any] = {}
        for endpoint in ENDPOINTS:
            result[endpoint] = _wrk(f"{base}/{endpoint}", load["duration"],
                                    config.wrk_connections)
        out, err = proc.communicate(timeout=60)
        requests = warmup["requests"] + sum(result[e]["requests"] for e in ENDPOINTS)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise BenchError(f"aiohttp server ({tool}) exited {proc.returncode}:\n{err[-3000:]}")
    result.update(_parse_result(out))
    # The server's CPU time per request served (warm-up included, same mix on both sides).
    result["cpu_per_request_ns"] = result["cpu_ns"] / requests if requests else 0.0
    return result


def measure(config: Config, workload: str, tool: str, sizes: dict[str, int]) -> dict[str, Any]:
    if workload == "aiohttp":
        return run_aiohttp(config, tool)
    return run_inprocess_workload(config, workload, tool, sizes)


def run_pairs(config: Config, failures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every (pair, workload, tool): a baseline run and a tool run, in alternating order.
    Cells that failed are appended to ``failures`` instead."""
    runs: list[dict[str, Any]] = []
    total = config.pairs * len(config.workloads) * len(config.tools)
    done = 0
    for pair in range(config.pairs):
        for workload in config.workloads:
            for tool in config.tools:
                sizes = scaled(workload, tool, config.mode) if workload != "aiohttp" else {}
                order = ("none", tool) if pair % 2 == 0 else (tool, "none")
                measured: dict[str, dict[str, Any]] = {}
                try:
                    for name in order:
                        measured[name] = measure(config, workload, name, sizes)
                except (BenchError, subprocess.TimeoutExpired) as exc:
                    # One failed cell must not lose a long run: record it, go on.
                    done += 1
                    failures.append({"pair": pair, "workload": workload, "tool": tool,
                                     "error": str(exc)[-2000:]})
                    config.log(f"[{done}/{total}] pair {pair + 1} {workload:<14} {tool:<15} "
                               f"FAILED: {str(exc).splitlines()[0] if str(exc) else exc!r}")
                    continue
                done += 1
                runs.append({"pair": pair, "workload": workload, "tool": tool,
                             "sizes": sizes, "loadavg": os.getloadavg()[0],
                             "base": measured["none"], "tool_run": measured[tool]})
                config.log(f"[{done}/{total}] pair {pair + 1} {workload:<14} {tool:<15} "
                           f"{_pair_ratio_text(runs[-1])}")
    return runs


# -- statistics


def metrics_of(workload: str) -> list[tuple[str, str, bool]]:
    """(metric key, label, higher_is_worse) for a workload."""
    if workload == "aiohttp":
        out = []
        for endpoint in ENDPOINTS:
            out.append((f"{endpoint}.rps", f"aiohttp /{endpoint} req/s", False))
            out.append((f"{endpoint}.p50_ms", f"aiohttp /{endpoint} p50", True))
            out.append((f"{endpoint}.p99_ms", f"aiohttp /{endpoint} p99", True))
        out.append(("cpu_per_request_ns", "aiohttp server CPU/request", True))
        return out
    label = {"callback_chain": "callback_chain time/hop", "task_pingpong":
             "task_pingpong time/step", "socket_echo": "socket_echo time/round trip"}[workload]
    return [("per_op_ns", label, True), ("cpu_per_op_ns", label.replace("time", "CPU"), True)]


def value_of(run: dict[str, Any], key: str) -> float:
    node: Any = run
    for part in key.split("."):
        node = node[part]
    return float(node)


def _pair_ratio_text(run: dict[str, Any]) -> str:
    parts = []
    for key, label, worse_high in metrics_of(run["workload"]):
        if key.endswith("p50_ms") or key.startswith("cpu"):
            continue
        base, tool = value_of(run["base"], key), value_of(run["tool_run"], key)
        ratio = tool / base if worse_high else base / tool
        parts.append(f"{label.split()[-1] if run['workload'] != 'aiohttp' else key}"
                     f"={ratio:.3f}x")
    return " ".join(parts)


def summarize(runs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per (workload, tool, metric): median/min/max of per-pair ratios, the medians of both
    sides, the median added cost, and peak RSS."""
    cells: dict[str, dict[str, Any]] = {}
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        grouped.setdefault((run["workload"], run["tool"]), []).append(run)
    for (workload, tool), group in grouped.items():
        for key, label, worse_high in metrics_of(workload):
            base = [value_of(r["base"], key) for r in group]
            other = [value_of(r["tool_run"], key) for r in group]
            ratios = [(t / b if worse_high else b / t) for b, t in zip(base, other, strict=True)]
            if key.endswith("rps"):
                added = [(1 / t - 1 / b) * 1e9 for b, t in zip(base, other, strict=True)]
            else:
                added = [t - b for b, t in zip(base, other, strict=True)]
            cells[f"{workload}|{tool}|{key}"] = {
                "workload": workload, "tool": tool, "metric": key, "label": label,
                "pairs": len(group), "ratio_median": statistics.median(ratios),
                "ratio_min": min(ratios), "ratio_max": max(ratios),
                "base_median": statistics.median(base), "tool_median": statistics.median(other),
                "added_median": statistics.median(added),
            }
        base_rss = [r["base"]["peak_rss_kb"] for r in group]
        tool_rss = [r["tool_run"]["peak_rss_kb"] for r in group]
        cells[f"{workload}|{tool}|peak_rss_kb"] = {
            "workload": workload, "tool": tool, "metric": "peak_rss_kb", "label": "peak RSS",
            "pairs": len(group), "base_median": statistics.median(base_rss),
            "tool_median": statistics.median(tool_rss),
            "added_median": statistics.median(t - b for b, t in zip(base_rss, tool_rss,
                                                                   strict=True)),
        }
        figures = [r["tool_run"].get("tool_figures") or {} for r in group]
        if any("lost" in f for f in figures):
            cells[f"{workload}|{tool}|sink"] = {
                "workload": workload, "tool": tool, "metric": "sink",
                "steps_exported": sum(f.get("steps_exported", 0) for f in figures),
                "waits_exported": sum(f.get("waits_exported", 0) for f in figures),
                "lost": sum(f.get("lost", 0) for f in figures)}
    return cells


def noise(runs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Spread of all baseline runs of each metric: what 'no difference' looks like."""
    values: dict[tuple[str, str, str], list[float]] = {}
    for run in runs:
        for key, label, _ in metrics_of(run["workload"]):
            values.setdefault((run["workload"], key, label), []).append(
                value_of(run["base"], key))
    rows = []
    for (workload, key, label), vals in values.items():
        med = statistics.median(vals)
        rows.append({"workload": workload, "metric": key, "label": label, "n": len(vals),
                     "min": min(vals), "median": med, "max": max(vals),
                     "spread": (max(vals) - min(vals)) / med if med else 0.0})
    return rows


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        with open("/proc/meminfo") as f:
            mem_gib = int(f.readline().split()[1]) / 1024 / 1024
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "memory_gib": round(mem_gib, 1),
            "kernel": platform.release(), "loadavg_start": os.getloadavg()}


def python_info(python: str) -> dict[str, Any]:
    code = ("import json,platform,sys,asyncio; pkgs={}\n"
            "from importlib import metadata\n"
            "for n in ('looptrace','aiohttp','aiodebug','blockbuster','opentelemetry-sdk',"
            "'opentelemetry-instrumentation-asyncio','yappi','pyinstrument'):\n"
            "    try: pkgs[n]=metadata.version(n)\n"
            "    except Exception: pass\n"
            "print(json.dumps({'version': platform.python_version(), 'implementation': "
            "platform.python_implementation(), 'executable': sys.executable, 'packages': pkgs}))")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    info: dict[str, Any] = json.loads(out.stdout)
    return info


def wrk_version() -> str:
    try:
        out = subprocess.run([wrk_path(), "-v"], capture_output=True, text=True, check=False)
    except BenchError:
        return "missing"
    return (out.stdout + out.stderr).splitlines()[0].strip() if (out.stdout + out.stderr) else ""


def save(path: str, document: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(document, f, indent=1)
        f.write("\n")


def save_with_table(path: str, document: dict[str, Any], markdown: str) -> None:
    """The JSON results at ``path``, their Markdown table beside it (.md), the table printed."""
    save(path, document)
    with open(os.path.splitext(path)[0] + ".md", "w") as f:
        f.write(markdown)
    print()
    print(markdown)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def raise_priority(niceness: int) -> int:
    """Run this process and its children (workloads, wrk) at ``niceness`` (negative: ahead
    of the other work on a shared machine, which then steals less of the measured time).
    Needs root for a negative value; returns the niceness in force."""
    current = os.nice(0)
    if niceness < current:
        with contextlib.suppress(OSError):
            os.nice(niceness - current)
    return os.nice(0)


def python_of(argv_python: str | None) -> str:
    return argv_python or sys.executable

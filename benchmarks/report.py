"""Markdown tables from a results document of overhead.py (also: ``python report.py FILE``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import tools

BUDGETS = (
    # (tool, cell key, limit, sentence)
    ("looptrace", "task_pingpong|looptrace|per_op_ns", 1.10,
     "default configuration, task ping-pong: <= 1.10x per step"),
    ("looptrace", "aiohttp|looptrace|hello.rps", 1.02,
     "default configuration, aiohttp /hello: <= 2% fewer requests/s"),
    ("looptrace", "aiohttp|looptrace|json.rps", 1.02,
     "default configuration, aiohttp /json: <= 2% fewer requests/s"),
    ("looptrace", "aiohttp|looptrace|hello.p99_ms", 1.05,
     "default configuration, aiohttp /hello: <= 5% higher p99"),
    ("looptrace", "aiohttp|looptrace|json.p99_ms", 1.05,
     "default configuration, aiohttp /json: <= 5% higher p99"),
    ("looptrace_full", "task_pingpong|looptrace_full|per_op_ns", 2.0,
     "full mode, task ping-pong: <= 2x per step"),
    ("looptrace", "task_pingpong|looptrace|cpu_per_op_ns", 1.10,
     "default configuration, task ping-pong, CPU time: <= 1.10x per step"),
    ("looptrace", "aiohttp|looptrace|cpu_per_request_ns", 1.02,
     "default configuration, aiohttp server CPU time per request: <= 1.02x"),
    ("looptrace_full", "task_pingpong|looptrace_full|cpu_per_op_ns", 2.0,
     "full mode, task ping-pong, CPU time: <= 2x per step"),
)


def _ns(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:,.1f} µs"
    return f"{value:,.0f} ns"


def _ratio(cell: dict[str, Any]) -> str:
    return (f"**{cell['ratio_median']:.2f}×** ({cell['ratio_min']:.2f}–"
            f"{cell['ratio_max']:.2f})")


def _abs(cell: dict[str, Any]) -> str:
    metric = cell["metric"]
    if metric.endswith("rps"):
        added = cell["added_median"] / 1000
        return (f"{cell['base_median']:,.0f}/s → {cell['tool_median']:,.0f}/s "
                f"({added:+.1f} µs/req)")
    if metric.endswith("_ms"):
        return f"{cell['base_median']:.2f} ms → {cell['tool_median']:.2f} ms"
    return (f"{_ns(cell['base_median'])} → {_ns(cell['tool_median'])} "
            f"({'+' if cell['added_median'] >= 0 else '−'}{_ns(abs(cell['added_median']))})")


def _columns(document: dict[str, Any]) -> list[tuple[str, str]]:
    workloads = document["config"]["workloads"]
    cols = []
    for workload in workloads:
        if workload == "aiohttp":
            cols += [("aiohttp", "hello.rps"), ("aiohttp", "json.rps")]
        else:
            cols.append((workload, "per_op_ns"))
    return cols


_HEAD = {"callback_chain": "callback_chain<br>time/hop", "task_pingpong":
         "task_pingpong<br>time/step", "socket_echo": "socket_echo<br>time/round trip",
         "hello.rps": "aiohttp /hello<br>req/s", "json.rps": "aiohttp /json<br>req/s"}


def _head(workload: str, metric: str) -> str:
    return _HEAD.get(metric if workload == "aiohttp" else workload, f"{workload} {metric}")


def _tool_rows(tools: list[str], keys: list[tuple[str, str]], cells: dict[str, Any],
               show: Callable[[dict[str, Any]], str]) -> list[str]:
    """One table row per tool: for each (workload, metric) the summary cell shown by
    ``show``, or a dash where that run is missing."""
    rows = []
    for tool in tools:
        shown = [show(cell) if (cell := cells.get(f"{workload}|{tool}|{metric}")) else "–"
                 for workload, metric in keys]
        rows.append(f"| `{tool}` | " + " | ".join(shown) + " |")
    return rows


def render(document: dict[str, Any]) -> str:
    cells = document["summary"]
    config = document["config"]
    info = document["python"]
    mach = document["machine"]
    cols = _columns(document)
    tool_names = [t for t in config["tools"]]
    lines: list[str] = []
    lines.append(
        f"Run {document['started']} · {config['mode']} sizes · {config['pairs']} A/B pairs per "
        f"cell · Python {info['version']} · {mach['cpus']} CPUs ({mach['cpu']}) · load average "
        f"{mach['loadavg_start'][0]:.2f} at start, {document['loadavg_end'][0]:.2f} at end · "
        f"wall {document['wall_s'] / 60:.1f} min")
    lines.append("")
    lines.append("Slowdown: median over pairs of tool/baseline (time, latency) or "
                 "baseline/tool (req/s), (min–max) over pairs; 1.00× = no overhead.")
    lines.append("")
    lines.append("| tool | " + " | ".join(_head(w, m) for w, m in cols) + " |")
    lines.append("|---" * (len(cols) + 1) + "|")
    lines += _tool_rows(tool_names, cols, cells, _ratio)
    lines.append("")
    lines.append("Absolute medians, baseline → tool (added cost per operation, median of "
                 "per-pair differences; for req/s the extra server time per request):")
    lines.append("")
    lines.append("| tool | " + " | ".join(_head(w, m) for w, m in cols) + " |")
    lines.append("|---" * (len(cols) + 1) + "|")
    lines += _tool_rows(tool_names, cols, cells, _abs)
    cpu_cols = [(w, "cpu_per_request_ns" if w == "aiohttp" else "cpu_per_op_ns")
                for w in config["workloads"]]
    lines.append("")
    lines.append("CPU time of the workload process in the timed region (for aiohttp: the "
                 "server's CPU time per request served), tool/baseline, median (min–max) over "
                 "pairs. Unlike wall time it does not count time spent waiting for a CPU on a "
                 "busy machine; it does count looptrace's own threads.")
    lines.append("")
    lines.append("| tool | " + " | ".join(
        "aiohttp server<br>CPU/request" if w == "aiohttp" else _head(w, m).replace("time", "CPU")
        for w, m in cpu_cols) + " |")
    lines.append("|---" * (len(cpu_cols) + 1) + "|")
    lines += _tool_rows(tool_names, cpu_cols, cells,
                        lambda cell: f"{_ratio(cell)}<br>{_abs(cell)}")
    if "aiohttp" in config["workloads"]:
        lines.append("")
        lines.append("aiohttp latency under load (wrk, fixed connections): tool/baseline ratio "
                     "of p50 and p99, median (min–max) over pairs; baseline medians in the "
                     "first row.")
        lines.append("")
        keys = ["hello.p50_ms", "hello.p99_ms", "json.p50_ms", "json.p99_ms"]
        lines.append("| tool | /hello p50 | /hello p99 | /json p50 | /json p99 |")
        lines.append("|---|---|---|---|---|")
        first = [cells.get(f"aiohttp|{tool_names[0]}|{k}") for k in keys]
        lines.append("| (baseline) | " + " | ".join(
            f"{c['base_median']:.2f} ms" if c else "–" for c in first) + " |")
        lines += _tool_rows(tool_names, [("aiohttp", key) for key in keys], cells, _ratio)
    lines.append("")
    lines.append("Peak RSS of the workload process (median over pairs), baseline → tool:")
    lines.append("")
    workloads = config["workloads"]
    lines.append("| tool | " + " | ".join(workloads) + " |")
    lines.append("|---" * (len(workloads) + 1) + "|")
    lines += _tool_rows(tool_names, [(w, "peak_rss_kb") for w in workloads], cells,
                        lambda cell: f"{cell['base_median'] / 1024:.1f} → "
                                     f"{cell['tool_median'] / 1024:.1f} MB")
    sinks = [c for k, c in cells.items() if k.endswith("|sink")]
    if sinks:
        lines.append("")
        lines.append("Full mode's in-process sink, summed over the runs: "
                     + "; ".join(f"{c['workload']}: {c['steps_exported']:,} steps and "
                                 f"{c['waits_exported']:,} select waits exported, "
                                 f"{c['lost']:,} lost" for c in sinks) + ".")
    lines.append("")
    lines.append("Noise: spread of all baseline runs of a metric (min / median / max, and "
                 "(max−min)/median).")
    lines.append("")
    lines.append("| metric | n | min | median | max | spread |")
    lines.append("|---|---|---|---|---|---|")
    for row in document["noise"]:
        fmt = (lambda v: f"{v:,.0f}/s") if row["metric"].endswith("rps") else (
            (lambda v: f"{v:.2f} ms") if row["metric"].endswith("_ms") else _ns)
        lines.append(f"| {row['label']} | {row['n']} | {fmt(row['min'])} | "
                     f"{fmt(row['median'])} | {fmt(row['max'])} | {row['spread'] * 100:.0f}% |")
    if document.get("failures"):
        lines.append("")
        lines.append(f"{len(document['failures'])} cells failed and are left out: "
                     + "; ".join(f"{f['workload']}/{f['tool']} (pair {f['pair'] + 1})"
                                 for f in document["failures"]) + ".")
    verdicts = budget_verdicts(document)
    if verdicts:
        lines.append("")
        lines.append("Budgets (median of the per-pair ratios against the limit):")
        lines.append("")
        for verdict in verdicts:
            lines.append(f"- {verdict}")
    return "\n".join(lines) + "\n"


def budget_verdicts(document: dict[str, Any]) -> list[str]:
    cells = document["summary"]
    out = []
    for _tool, key, limit, sentence in BUDGETS:
        cell = cells.get(key)
        if cell is None:
            continue
        ok = cell["ratio_median"] <= limit
        out.append(f"{'met' if ok else 'MISSED'}: {sentence}: {cell['ratio_median']:.3f}× "
                   f"(pairs {cell['ratio_min']:.3f}–{cell['ratio_max']:.3f})")
    return out


def tool_descriptions(names: list[str]) -> str:
    return "\n".join(f"- `{name}`: {tools.DESCRIPTIONS[name]}" for name in names)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        sys.stdout.write(render(json.load(f)))

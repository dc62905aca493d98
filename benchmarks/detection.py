"""Detection benchmark: does looptrace name the exact line and the exact duration of every
block, on every Python, on asyncio and uvloop, on an idle machine and a saturated one?

Each pattern of ``detection_patterns.py`` blocks the loop on a known line for a measured
time, ``--runs`` times, in a child process that has looptrace installed (threshold 50 ms).
Each run's block is matched to the report's block that overlaps it most; a run counts as
*found* when there is one, *exact line* when its site is the pattern's line, and its
duration error is ``(reported - true) / true``. ``--loads busy`` runs the child beside one
``while True: pass`` process per CPU.

    benchmarks/detection.py          # 3.11-3.13 x asyncio, uvloop x idle, busy
    benchmarks/detection.py --pythons 3.11 --loops asyncio --loads idle --runs 3
    benchmarks/detection.py --calibrate   # each pattern's duration without looptrace

JSON goes to benchmarks/results/detection.json, the table to docs/detection.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import harness  # noqa: E402

THRESHOLD_MS = 50
GAP_S = 0.03
LOOPS = ("asyncio", "uvloop")
LOADS = ("idle", "busy")
PYTHONS = ("3.11", "3.12", "3.13")


# -- the child: run every pattern under looptrace, print one JSON line per run

class _DelayHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        delay_ms = int(self.path.rsplit("/", 1)[-1]) if self.path.startswith("/delay/") else 0
        time.sleep(delay_ms / 1000)
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve() -> int:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DelayHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return int(server.server_address[1])


def _available(p: Any) -> bool:
    if p.needs is None:
        return True
    try:
        __import__(p.needs)
    except ImportError:
        return False
    return True


def child(loop_kind: str, runs: int, threshold_ms: int, only: list[str] | None,
          use_looptrace: bool) -> None:
    import detection_patterns as dp

    patterns = [p for p in dp.PATTERNS if _available(p) and (not only or p.name in only)]
    with tempfile.TemporaryDirectory() as tmp:
        env = dp.make_env(_serve(), tmp)
        truths: list[tuple[str, int, int, int, int]] = []

        async def main() -> None:
            for p in patterns:
                for run in range(runs):
                    await asyncio.sleep(GAP_S)
                    truth = dp.Truth()
                    await p.run(truth, env)
                    truths.append((p.name, run, truth.start_ns, truth.duration_ns,
                                   truth.cpu_ns))
            await asyncio.sleep(GAP_S)

        offset = time.time_ns() - time.perf_counter_ns()
        runner = _runner(loop_kind)
        if not use_looptrace:
            runner(main())
            for name, run, _, duration, cpu in truths:
                print(json.dumps({"pattern": name, "run": run, "true_ms": duration / 1e6,
                                  "cpu_ms": cpu / 1e6}))
            return
        import looptrace

        with looptrace.installed(threshold_ms=threshold_ms) as tracing:
            runner(main())
        session = tracing.snapshot()
        by_name = {p.name: p for p in patterns}
        for name, run, start, duration, _ in truths:
            p = by_name[name]
            row = _match(session.blocks, start + offset, duration, dp.HERE, dp.expected_line(p))
            print(json.dumps({"pattern": name, "category": p.category, "run": run,
                              "true_ms": duration / 1e6, **row}))


def _runner(loop_kind: str) -> Any:
    if loop_kind == "uvloop":
        import uvloop

        return uvloop.run
    return asyncio.run


def _match(blocks: Any, start_unix: int, duration: int, file: str, line: int) -> dict[str, Any]:
    """The report's block that overlaps the true interval most (5 ms of slack each side)."""
    slack = 5_000_000
    best, best_overlap = None, 0
    for block in blocks:
        b_start = block.start_unix_ns
        b_end = b_start + int(block.duration_ms * 1e6)
        overlap = min(b_end, start_unix + duration + slack) - max(b_start, start_unix - slack)
        if overlap > best_overlap:
            best, best_overlap = block, overlap
    if best is None:
        return {"found": False}
    site = best.site
    return {
        "found": True, "reported_ms": best.duration_ms,
        "error": (best.duration_ms * 1e6 - duration) / duration if duration else 0.0,
        "exact_line": site is not None and site.file == file and site.line == line,
        "kind": best.kind, "call": best.call, "site_source": best.site_source,
        "site": f"{os.path.basename(site.file)}:{site.line}" if site else None,
        "expected": f"{os.path.basename(file)}:{line}",
        "duration_source": best.duration_source, "cpu_ms": best.cpu_ms,
        "cpu_wait_ms": best.cpu_wait_ms, "causes": list(best.causes),
    }


# -- the parent: the matrix, the table

@contextlib.contextmanager
def busy_cpus(count: int) -> Iterator[None]:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
             for _ in range(count)]
    try:
        time.sleep(0.2)
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def python_for(minor: str) -> str:
    path = os.path.join(ROOT, f".venv-{minor}", "bin", "python")
    if not os.path.exists(path):
        raise SystemExit(f"detection: no {path} (create it with PYTHON=... scripts/test.sh)")
    return path


def run_child(python: str, loop_kind: str, runs: int, threshold_ms: int,
              only: list[str] | None, use_looptrace: bool = True) -> list[dict[str, Any]]:
    cmd = [python, os.path.abspath(__file__), "--child", "--loops", loop_kind,
           "--runs", str(runs), "--threshold-ms", str(threshold_ms)]
    if only:
        cmd += ["--only", ",".join(only)]
    if not use_looptrace:
        cmd.append("--calibrate")
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=3600,
                         check=False)
    if out.returncode != 0:
        raise SystemExit(f"detection: child failed ({' '.join(cmd)}):\n{out.stderr[-3000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    found = [r for r in rows if r.get("found")]
    errors = [abs(r["error"]) for r in found]
    return {
        "runs": len(rows), "found": len(found),
        "exact_line": sum(1 for r in found if r["exact_line"]),
        "within_10pct": sum(1 for e in errors if e <= 0.10),
        "median_abs_error": statistics.median(errors) if errors else None,
        "max_abs_error": max(errors) if errors else None,
    }


def _cell(s: dict[str, Any]) -> str:
    if not s["runs"]:
        return "–"
    med = s["median_abs_error"]
    err = f"{med * 100:.0f}%" if med is not None else "–"
    return f"{s['exact_line']}/{s['runs']} · {err}"


def markdown(document: dict[str, Any]) -> str:
    combos = document["combos"]
    load = ", ".join(f"{x:.1f}" for x in document["machine"]["loadavg_start"])
    out = ["# Detection benchmark", "",
           "Does looptrace report every block at its exact line, with its exact duration? "
           "`benchmarks/detection.py` runs blocking patterns of real programs "
           "(`benchmarks/detection_patterns.py`: C code that holds the GIL, Python loops, "
           "sync HTTP clients, sockets, pipes, files, subprocesses, locks, queues, futures, "
           "garbage collection, a worker thread holding the GIL, and blocks in plain "
           "callbacks, timers, async generators and done-callbacks), each on a known line "
           "for a measured time, under looptrace (threshold "
           f"{document['threshold_ms']} ms) in a fresh process per Python, loop and load. "
           "A run's block is the reported block that overlaps it most; *exact line*: its "
           "site is the pattern's line; *error*: (reported − true) / true duration, the "
           "true duration being that of the blocking call itself (the step around it "
           "is a little longer). `busy`: one `while True: pass` process per CPU beside "
           "the program. The target is the exact line in every run and every duration "
           "within 10%.", "",
           f"This run: {document['runs']} runs per pattern, {document['date']}, "
           f"{document['machine']['cpus']} CPUs ({document['machine']['cpu']}), "
           f"load average at start {load} (a machine shared with other work: *idle* "
           "means no competitors added, not an idle machine)."
           + (f" {document['note']}" if document.get("note") else ""), "",
           "Each cell of the per-Python tables: runs at the exact line / runs, then the "
           "median absolute duration error.", ""]
    out += ["## Summary", "",
            "| Python | loop | load | found | exact line | duration within 10% "
            "| median error | worst error |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in combos:
        s = c["summary"]
        med = s["median_abs_error"]
        worst = s["max_abs_error"]
        out.append(f"| {c['python']} | {c['loop']} | {c['load']} | {s['found']}/{s['runs']} "
                   f"| {s['exact_line']}/{s['runs']} | {s['within_10pct']}/{s['runs']} "
                   f"| {'–' if med is None else f'{med * 100:.1f}%'} "
                   f"| {'–' if worst is None else f'{worst * 100:.0f}%'} |")
    names = document["patterns"]
    for python in dict.fromkeys(c["python"] for c in combos):
        mine = [c for c in combos if c["python"] == python]
        out += ["", f"## Python {python}", "",
                "| pattern | category | " + " | ".join(f"{c['loop']} {c['load']}" for c in mine)
                + " |", "| --- | --- |" + " --- |" * len(mine)]
        for name, category in names:
            cells = [_cell(c["by_pattern"].get(name, {"runs": 0})) for c in mine]
            out.append(f"| {name} | {category} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--pythons", default=",".join(PYTHONS))
    parser.add_argument("--loops", default=",".join(LOOPS))
    parser.add_argument("--loads", default=",".join(LOADS))
    parser.add_argument("--threshold-ms", type=int, default=THRESHOLD_MS)
    parser.add_argument("--only", default="", help="comma-separated pattern names")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "detection.json"))
    parser.add_argument("--doc", default=os.path.join(ROOT, "docs", "detection.md"))
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--note", default="", help="a sentence for the Markdown page")
    parser.add_argument("--render", metavar="JSON", help="only write --doc from saved results")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    only = [n for n in args.only.split(",") if n] or None
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.child:
        child(args.loops, args.runs, args.threshold_ms, only, not args.calibrate)
        return
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        if args.note:
            saved["note"] = args.note
        with open(args.doc, "w") as f:
            f.write(markdown(saved))
        return
    if args.calibrate:
        python = python_for(args.pythons.split(",")[0])
        for row in run_child(python, "asyncio", args.runs, args.threshold_ms, only, False):
            print(f"{row['pattern']:45} {row['true_ms']:8.1f} ms, {row['cpu_ms']:8.1f} ms CPU")
        return
    document: dict[str, Any] = {
        "date": harness.now_iso(), "machine": harness.machine(), "runs": args.runs,
        "threshold_ms": args.threshold_ms, "combos": [], "patterns": [], "note": args.note}
    for minor in args.pythons.split(","):
        python = python_for(minor)
        for loop_kind in args.loops.split(","):
            for load in args.loads.split(","):
                started = time.monotonic()
                with busy_cpus(os.cpu_count() or 2) if load == "busy" else contextlib.nullcontext():
                    rows = run_child(python, loop_kind, args.runs, args.threshold_ms, only)
                by_pattern: dict[str, list[dict[str, Any]]] = {}
                for row in rows:
                    by_pattern.setdefault(row["pattern"], []).append(row)
                    entry = (row["pattern"], row["category"])
                    if entry not in document["patterns"]:
                        document["patterns"].append(entry)
                combo = {"python": minor, "loop": loop_kind, "load": load,
                         "seconds": round(time.monotonic() - started, 1),
                         "loadavg": os.getloadavg(), "summary": summarize(rows),
                         "by_pattern": {k: summarize(v) for k, v in by_pattern.items()},
                         "rows": rows}
                document["combos"].append(combo)
                print(f"{minor} {loop_kind} {load}: {_cell(combo['summary'])} "
                      f"({combo['seconds']} s)", flush=True)
    table = markdown(document)
    harness.save_with_table(args.out, document, table)
    with open(args.doc, "w") as f:
        f.write(table)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""What looptrace costs, measured side by side with no tracer and with its peers.

    python benchmarks/overhead.py                      # looptrace (default, full) vs none
    python benchmarks/overhead.py --suite peers        # + asyncio debug, aiodebug, ...
    python benchmarks/overhead.py --quick              # smaller sizes, 1 s wrk runs

Every measurement runs in a fresh process with glibc's malloc thresholds pinned. For each
pair, each workload and each tool, a baseline run (no tracer) and a tool run alternate, at
the same size. Workloads: a callback chain, a task ping-pong of ``sleep(0)`` steps, a
streams echo over loopback, and an aiohttp server loaded by wrk from another process.
Writes a JSON document (every run, and the summary) and a Markdown table; prints the
budget verdicts. Needs the ``bench`` extra (``pip install -e .[bench]``) and wrk
(``scripts/setup-wrk.sh``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness
import report
import tools

SUITES = {
    "looptrace": ("looptrace", "looptrace_full"),
    "default": ("looptrace",),
    "peers": tools.ALL_TOOLS,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), default="looptrace",
                        help="which tools: looptrace (default and full mode; the default), "
                             "default (looptrace's default configuration only), peers "
                             "(looptrace and every peer)")
    parser.add_argument("--tools", help="comma-separated tools instead of a suite: "
                                        + ", ".join(tools.ALL_TOOLS))
    parser.add_argument("--workloads", default=",".join(harness.WORKLOADS),
                        help="comma-separated, default: all of " + ", ".join(harness.WORKLOADS))
    parser.add_argument("--pairs", type=int, default=7, help="A/B pairs per cell (default 7)")
    parser.add_argument("--quick", action="store_true",
                        help="a quarter of the sizes and 1 s wrk runs (noisier)")
    parser.add_argument("--python", help="the interpreter that runs the workloads (default: "
                                         "this one); it needs looptrace and the bench extra")
    parser.add_argument("--json", help="where to write the results (default: "
                                       "benchmarks/results/overhead-<suite>-<python>.json)")
    parser.add_argument("--nice", type=int, default=-10,
                        help="niceness for the runs (default -10: ahead of other work on a "
                             "shared machine; needs root, else ignored)")
    parser.add_argument("--markdown", help="where to write the tables (default: next to the "
                                           "JSON file, .md)")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = tuple(t for t in (args.tools.split(",") if args.tools else SUITES[args.suite]) if t)
    for name in names:
        if name not in tools.FACTORIES or name == "none":
            print(f"overhead: unknown tool {name!r}", file=sys.stderr)
            return 2
    workloads = tuple(w for w in args.workloads.split(",") if w)
    for workload in workloads:
        if workload not in harness.WORKLOADS:
            print(f"overhead: unknown workload {workload!r}", file=sys.stderr)
            return 2
    python = harness.python_of(args.python)
    niceness = harness.raise_priority(args.nice)
    info = harness.python_info(python)
    if "aiohttp" in workloads:
        harness.wrk_path()
    mode = "quick" if args.quick else "full"
    config = harness.Config(python=python, tools=names, workloads=workloads, pairs=args.pairs,
                            mode=mode, log=lambda line: print(line, flush=True))
    label = "custom" if args.tools else args.suite
    version = ".".join(info["version"].split(".")[:2])
    out_json = args.json or os.path.join(harness.HERE, "results",
                                         f"overhead-{label}-{mode}-py{version}.json")
    out_md = args.markdown or os.path.splitext(out_json)[0] + ".md"
    started = harness.now_iso()
    began = time.monotonic()
    machine = harness.machine()
    print(f"overhead: Python {info['version']}, tools {', '.join(names)}, workloads "
          f"{', '.join(workloads)}, {args.pairs} pairs, {mode} sizes; load average "
          f"{machine['loadavg_start'][0]:.2f}", flush=True)
    failures: list[dict[str, object]] = []
    runs = harness.run_pairs(config, failures)
    document = {
        "schema": "looptrace.bench.overhead/1",
        "started": started,
        "command": " ".join([os.path.basename(sys.executable), "benchmarks/overhead.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "wall_s": time.monotonic() - began,
        "machine": machine,
        "niceness": niceness,
        "loadavg_end": os.getloadavg(),
        "python": info,
        "wrk": harness.wrk_version() if "aiohttp" in workloads else None,
        "config": {"tools": list(names), "workloads": list(workloads), "pairs": args.pairs,
                   "mode": mode, "sizes": harness.SIZES[mode],
                   "aiohttp_load": harness.AIOHTTP_LOAD[mode], "scale": tools.SCALE,
                   "malloc": tools.MALLOC_PINNED,
                   "tool_descriptions": {n: tools.DESCRIPTIONS[n] for n in names}},
        "runs": runs,
        "failures": failures,
        "summary": harness.summarize(runs),
        "noise": harness.noise(runs),
    }
    harness.save(out_json, document)
    markdown = report.render(document)
    with open(out_md, "w") as f:
        f.write(markdown)
    print()
    print(markdown)
    print(f"overhead: wrote {out_json} and {out_md}")
    if failures:
        print(f"overhead: {len(failures)} cells failed (see 'failures' in the JSON)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

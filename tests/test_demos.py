"""Every demo, at a reduced size, tells the story its docs page tells.

The demos run in this process (their ``run()`` functions return what they measured and
what looptrace saw for each variant), on real loopback servers. One more test runs a demo
under ``looptrace run``, as the README does. Timed assertions leave a wide margin: the
machine is shared.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import looptrace
from looptrace.session import BlockEvent

ROOT = Path(__file__).resolve().parent.parent
DEMOS = ROOT / "demos"


@pytest.fixture(scope="module", autouse=True)
def demos_importable() -> Iterator[None]:
    """The demos import their shared module as ``_servers``, from their own directory."""
    sys.path.insert(0, str(DEMOS))
    yield
    sys.path.remove(str(DEMOS))


@pytest.fixture(autouse=True)
def small_heap() -> Iterator[None]:
    """Run each demo as if in its own small process: pytest's many objects are frozen out
    of the garbage collector, so a full collection (tens of milliseconds over pytest's heap)
    does not land in a demo's step and show up as a block the demo itself would not have."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


def by_the_code(blocks: list[BlockEvent]) -> list[BlockEvent]:
    """The blocks the program's code made: not those of a thread that waited for a CPU
    (``cpu.run_queue``), which a saturated machine gives any program (seen in CI's busy
    pass: a fixed demo's ``_read_from_self`` step starved for 107 ms)."""
    return [b for b in blocks if b.call != "cpu.run_queue"]


def demo(name: str) -> ModuleType:
    return importlib.import_module(name)


def line_of(module: ModuleType, marker: str) -> int:
    """The line of ``module``'s source that carries the comment ``# <marker>``."""
    lines = Path(module.__file__ or "").read_text().splitlines()
    found = [number for number, text in enumerate(lines, 1) if f"# {marker}" in text]
    assert len(found) == 1, f"marker {marker!r} found {len(found)} times"
    return found[0]


def assert_blocks_at(record: object, module: ModuleType, function: str, marker: str,
                     call: str | None, minimum: int) -> None:
    """Every block of the variant is at ``marker``'s line, in ``function``, named ``call``."""
    blocks = record.blocks  # type: ignore[attr-defined]
    where = {(b.site.file if b.site else None, b.site.line if b.site else None,
              b.site.function if b.site else None, b.call) for b in blocks}
    assert where == {(module.__file__, line_of(module, marker), function, call)}, where
    assert len(blocks) >= minimum, [b.duration_ms for b in blocks]


def test_async_blocking_read_is_the_hotspot_and_the_fixes_are_faster() -> None:
    """The blocking read() is a blocking-call at its line for every site; neither fix
    blocks the loop, and the fully async one is at least 2x faster."""
    async_blocking = demo("async_blocking")
    sites = async_blocking.make_sites(quick=True)
    blocking, in_executor, fully_async = async_blocking.run(sites)

    assert_blocks_at(blocking, async_blocking, "download_blocking", "BLOCKS",
                     "http.client.HTTPResponse.read", minimum=len(sites) - 1)
    assert all(b.kind == "blocking-call" for b in blocking.blocks)
    assert by_the_code(in_executor.blocks) == [], in_executor.blocks
    assert by_the_code(fully_async.blocks) == [], fully_async.blocks
    assert blocking.wall_s >= 2 * fully_async.wall_s, (blocking.wall_s, fully_async.wall_s)
    assert blocking.wall_s >= 1.5 * in_executor.wall_s, (blocking.wall_s, in_executor.wall_s)
    # The blocked loop hardly slept (it waits only for urlopen's headers); the fixed one
    # mostly did.
    assert blocking.loop is not None and blocking.loop.utilization is not None
    assert fully_async.loop is not None and fully_async.loop.utilization is not None
    assert blocking.loop.utilization > max(0.5, 2 * fully_async.loop.utilization)


def test_async_blocking_without_aiohttp_downloads_with_streams(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed without aiohttp (as by the README's first command), the fully async
    variant says so and downloads the same bytes with asyncio streams, never blocking."""
    async_blocking = demo("async_blocking")
    monkeypatch.setattr(async_blocking, "aiohttp", None)
    assert "asyncio streams" in async_blocking.variants()[2][0]
    servers = demo("_servers")
    with (servers.paced_sites([servers.Site("only", 300_000, 3e6)]) as urls,
          looptrace.installed(threshold_ms=50) as tracing):
        size = asyncio.run(async_blocking.download_async(urls["only"]))
    assert size == 300_000
    assert tracing.snapshot().blocks == ()


def test_busy_wait_burns_cpu_and_select_does_not() -> None:
    """For the same wall time, busy-waiting burns far more CPU time and polls than
    select; looptrace finds both blocking the loop at their lines, and asyncio not at all."""
    busy_wait_vs_select = demo("busy_wait_vs_select")
    count = 4
    (busy, busy_cost), (selecting, select_cost), (loop_way, loop_cost) = (
        busy_wait_vs_select.run(count, 0.1))

    for cost in (busy_cost, select_cost, loop_cost):
        assert 0.3 <= cost.wall_s < 2.0, cost
    assert math.isclose(busy_cost.wall_s, select_cost.wall_s, rel_tol=0.3)
    assert busy_cost.cpu_s >= 0.1 * busy_cost.wall_s, busy_cost  # even on a busy machine
    assert busy_cost.cpu_s >= 10 * max(select_cost.cpu_s, 0.002), (busy_cost, select_cost)
    assert busy_cost.polls >= 100 * select_cost.polls
    assert select_cost.polls == count

    # The native sampler names what the line was running (``sock.recv``, over and over);
    # the Python watchdog cannot see into C and names nothing. Either way a slow step.
    calls = {block.call for block in busy.blocks}
    assert calls <= {None, "sock.recv"}, calls
    assert_blocks_at(busy, busy_wait_vs_select, "receive_busy_waiting", "BUSY",
                     calls.pop(), 1)
    assert busy.blocks[0].kind == "slow-step"
    assert_blocks_at(selecting, busy_wait_vs_select, "receive_with_select", "SELECT",
                     "select.select", 1)
    assert by_the_code(loop_way.blocks) == [], loop_way.blocks
    # Only the loop that waited in epoll let the ticker run.
    assert busy_cost.ticks <= 1 and select_cost.ticks <= 1
    assert loop_cost.ticks >= 10


def test_select_scans_epoll_does_not_and_the_loop_sleeps_in_epoll() -> None:
    """select's cost grows with the number of sockets, epoll's does not; select refuses a
    descriptor past FD_SETSIZE; the asyncio loop sleeps through the wait, woken once per
    message, as the hand-written epoll loop is."""
    epoll_and_the_loop = demo("epoll_and_the_loop")
    count = 8
    results = epoll_and_the_loop.run([10, 1000], 300, 500, count, 0.02)

    small, large = results.costs
    assert large.select_us >= 5 * small.select_us, results.costs
    assert large.epoll_us <= 3 * small.epoll_us + 2, results.costs
    if "skipped" not in results.beyond:
        assert "ValueError: filedescriptor out of range in select()" in results.beyond
        assert "epoll.register accepted it" in results.beyond

    assert results.by_hand.wakeups == count and results.by_hand.events == count
    assert results.by_hand.slept_s >= 0.8 * results.by_hand.wall_s

    record = results.asyncio_record
    assert by_the_code(record.blocks) == [], record.blocks
    loop = record.loop
    assert loop is not None and loop.kind == "selector:EpollSelector"
    assert loop.io_wait_ms is not None and loop.events is not None
    assert loop.events >= count
    assert loop.io_wait_ms >= 0.7 * results.asyncio_wall_s * 1000


def test_cpu_bound_work_blocks_at_the_hot_line_and_a_process_pool_frees_the_loop() -> None:
    """Matrix products in coroutines are slow-steps at the hot line of ``multiply`` and
    starve a ticker; in a process pool they do not block the loop and the ticker runs."""
    cpu_bound = demo("cpu_bound")
    count = 3
    (inline, inline_ticks), (pooled, pooled_ticks) = cpu_bound.run(130, count)

    assert_blocks_at(inline, cpu_bound, "multiply", "HOT", None, count)
    assert all(b.kind == "slow-step" for b in inline.blocks)
    assert inline_ticks.count <= 1
    assert inline_ticks.longest_gap_s >= 0.9 * sum(b.duration_ms for b in inline.blocks) / 1000
    assert by_the_code(pooled.blocks) == [], pooled.blocks
    assert pooled_ticks.count >= 3
    assert pooled_ticks.longest_gap_s < inline_ticks.longest_gap_s / 2


def test_gather_waits_without_busy_waiting() -> None:
    """Tasks finish in the order of their sleeps and gather returns results in creation
    order; gather and its hand-written twin leave the loop asleep, polling spins it."""
    await_and_gather = demo("await_and_gather")
    count = 6
    (gathered, gather_wait), (by_hand, hand_wait), (polled, poll_wait) = (
        await_and_gather.run(count, 0.2))

    for waited in (gather_wait, hand_wait, poll_wait):
        assert waited.results == list(range(1, count + 1))
        assert waited.finished == gather_wait.finished
    assert gather_wait.finished != sorted(gather_wait.finished)  # not the creation order

    for record in (gathered, by_hand, polled):
        assert by_the_code(record.blocks) == []  # no single step was long: none of them blocks
    for record in (gathered, by_hand):
        assert record.loop is not None and record.loop.utilization is not None
        assert record.loop.utilization < 0.1
        assert record.loop.iterations is not None and record.loop.iterations < 100
    assert polled.loop is not None and polled.loop.utilization is not None
    assert gathered.loop is not None and gathered.loop.utilization is not None
    assert polled.loop.utilization > max(0.2, 5 * gathered.loop.utilization)
    assert polled.loop.iterations is not None and by_hand.loop is not None
    assert polled.loop.iterations >= 50 * (by_hand.loop.iterations or 1)
    assert poll_wait.cpu_s >= 10 * max(gather_wait.cpu_s, hand_wait.cpu_s, 0.002)


def test_web_service_blocking_handler_slows_every_endpoint() -> None:
    """The synchronous call in /report blocks the loop at its line (inside the handler),
    delays the requests in flight, and every endpoint's p99 rises; the 6 thumbnails of a
    gallery wait for the pool of 2 workers longer than they run (the pool verdict). The
    fixed round has no block, and no verdict (its pictures come from an async client)."""
    web_service = demo("web_service")
    blocking, fixed = web_service.run(1.0, 6)

    fetch_line = line_of(web_service, "SYNC CALL")
    handler_line = line_of(web_service, "BLOCKS")
    # One block per /report, at the call. (A saturated machine may add others: a starved
    # step.) Clients 0 and 1 ask for a /report first or second (their seeds' picks).
    blocks = [b for b in blocking.record.blocks
              if b.site is not None and b.site.file == web_service.__file__
              and b.site.line == fetch_line]
    assert 2 <= len(blocks) <= len(blocking.latencies.by_path["/report"]), \
        blocking.record.blocks
    for block in blocks:
        assert (block.kind, block.call) == ("blocking-call", "urllib.request.urlopen"), block
        assert block.site is not None and block.site.function == "fetch_report"
        assert any(frame.line == handler_line for frame in block.stack), block.stack
        assert 130 <= block.duration_ms < 5000, block  # the backend's 150 ms, and a busy machine
        # Who it delayed: requests in flight (no longer than the block kept them).
        assert block.victims is not None, block
        assert block.victim_max_delay_ms <= block.duration_ms + 1, block
    # (A victim may also be a callback: a connection's data arrived before the block.)
    assert any(v.kind == "task" and v.coroutine == "RequestHandler._handle_request"
               for block in blocks for v in block.victim_detail), blocks
    # The fixed round never blocks at the call. (On a saturated machine it may have other
    # blocks: a starved step, a thread's start waiting for its boot; not this demo's story.)
    assert not [b for b in fixed.record.blocks if b.call == "urllib.request.urlopen"
                or (b.site is not None and b.site.line == fetch_line)], fixed.record.blocks

    (saturated,) = [r for r in blocking.executors if r.function.endswith("fetch_picture")]
    assert saturated.site is not None and saturated.site.line == line_of(web_service, "WAITS")
    # Client 2 asks for a gallery first (its seed's first pick): 6 calls at least.
    assert saturated.workers == 2 and saturated.completed >= 6, saturated
    assert saturated.warning and "the pool, not the work, is the bottleneck" in \
        saturated.warning, saturated
    assert saturated.queue_ms >= saturated.run_ms / 2, saturated
    assert not [r for r in fixed.executors if r.function.endswith("fetch_picture")]
    assert fixed.executors and all(row.warning is None for row in fixed.executors), \
        fixed.executors

    # Latencies: presence only (a saturated machine slows the fixed round as much as any
    # block): a fast endpoint's request waited for a block, and every endpoint answered.
    slow, quick = blocking.latencies, fixed.latencies
    figures = {path: (len(slow.by_path[path]), slow.percentile(path, 0.99),
                      len(quick.by_path[path]), quick.percentile(path, 0.99))
               for path in web_service.MIX}
    assert max(slow.percentile("/hello", 0.99), slow.percentile("/orders", 0.99)) >= 0.1, \
        figures
    assert all(count for figure in figures.values() for count in figure[::2]), figures


def _entries(section: str) -> list[str]:
    """The numbered entries of a summary section (``  1. ...`` and its indented lines)."""
    return re.split(r"\n(?=  \d+\. )", "\n" + section)[1:]


def test_looptrace_run_full_mode_tells_the_web_service_story() -> None:
    """``looptrace run --mode full demos/web_service.py --quick``, as the docs say: the
    summary's urlopen hotspot says whom its blocks delayed; the executor section gives
    the pool of 2 the pool verdict, and no other site one; the demo's own lines say the same
    per round, and the fixed round has neither a block nor a verdict."""
    web_service = demo("web_service")
    completed = subprocess.run(
        [sys.executable, "-m", "looptrace", "run", "--mode", "full", "demos/web_service.py",
         "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr
    out, summary = completed.stdout, completed.stderr
    first, fixed = out.split("\n2. ")
    assert re.search(r"looptrace: \d+ blocks? urllib\.request\.urlopen at line "
                     rf"{line_of(web_service, 'SYNC CALL')} in fetch_report", first), out
    assert re.search(r"\n +delayed \d+ tasks? (and|or) callbacks? by ", first), out
    assert re.search(rf"\d+ fetch_picture calls at line {line_of(web_service, 'WAITS')} "
                     r"waited .* for 2 workers, .*: the pool, not the work, is the "
                     "bottleneck", first), out
    # (On a saturated machine the fixed round may have a starved step, and its victims.)
    assert "urlopen" not in fixed and "bottleneck" not in fixed, out
    assert "fetch_picture" not in fixed, out  # the async client: no thread
    assert re.search(r"\d+ fetch_report calls at line \d+ waited .* for 6 workers", fixed), out

    hotspots = _entries(summary.split("\nHotspots (by total time)\n")[1].split("\n\n")[0])
    at_the_call = [h for h in hotspots if "demos/web_service.py:" in h]
    assert len(at_the_call) == 1, summary  # the fixed round's to_thread never blocks
    (hotspot,) = at_the_call
    assert ". blocking-call  urllib.request.urlopen\n     at demos/web_service.py:" \
        f"{line_of(web_service, 'SYNC CALL')} in fetch_report\n" in hotspot, summary
    assert re.search(r"\n     delayed \d+ tasks? (and|or) callbacks? by [\d.]+ m?s in all, "
                     r"longest [\d.]+ ms\n", hotspot), summary

    executors = _entries(summary.split("\nExecutor calls (run_in_executor, to_thread; by "
                                       "queue wait)\n")[1].split("\n\n")[0])
    (saturated,) = [e for e in executors
                    if f"web_service.py:{line_of(web_service, 'WAITS')} " in e]
    assert "2 workers" in saturated and "WARNING: the pool, not the work, is the " \
        "bottleneck: 2 workers" in saturated, summary
    assert sum("WARNING" in e for e in executors) == 1, summary


def test_looptrace_run_tells_the_async_blocking_story() -> None:
    """Under ``looptrace run`` the demo's own verdicts still name the read() line for the
    first variant only, and the summary has that one hotspot."""
    async_blocking = demo("async_blocking")
    read_line = line_of(async_blocking, "BLOCKS")
    completed = subprocess.run(
        [sys.executable, "-m", "looptrace", "run", "demos/async_blocking.py", "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert completed.returncode == 0, completed.stderr
    out, summary = completed.stdout, completed.stderr
    assert re.search(rf"looptrace: [45] blocks http\.client\.HTTPResponse\.read at line "
                     rf"{read_line} in download_blocking", out), out
    assert out.count("looptrace: no block of the loop") == 2, out
    assert "Hotspots (by total time)\n  1. blocking-call  http.client.HTTPResponse.read\n" \
        f"     at demos/async_blocking.py:{read_line} in download_blocking\n" in summary
    assert "\n  2. " not in summary, summary


def test_fastapi_workers_blocks_of_every_worker_are_in_one_report() -> None:
    """uvicorn --workers 2 under looptrace run, stopped with SIGTERM: both workers served
    /checkout, and every /checkout blocked its worker's loop at render_receipt's line, in
    the combined report, with every process traced and none lost."""
    fastapi_workers = demo("fastapi_workers")
    result = fastapi_workers.run(quick=True)
    assert len(result.answered_by) == 2, result.answered_by
    service = demo("fastapi_service")
    line = line_of(service, "BLOCKS")
    blocks = [b for b in result.report["blocks"] if b["site"]
              and (b["site"]["file"], b["site"]["line"]) == (service.__file__, line)]
    # One block per /checkout at render_receipt's line; a worker's first /checkout may
    # share its step with first-request work (lazy imports, serialisers being built) that
    # on a starved machine outlasts the 120 ms sleep: that step is named for what took most
    # of it (a probed call is the headline only when it explains half of the block).
    for pid, answered in result.answered_by.items():
        own = [b for b in blocks if b["thread"].split(":")[0] == f"pid {pid}"]
        assert answered - 1 <= len(own) <= answered, (pid, answered, own)
    assert {b["thread"].split(":")[0] for b in blocks} == {
        f"pid {pid}" for pid in result.answered_by}
    assert all(b["call"] == "time.sleep" for b in blocks)
    verdict = fastapi_workers.verdict(result)
    # (A worker importing FastAPI on a busy machine may add an import block: another line.)
    assert any(f"at line {line} in render_receipt, in 2 of 2 workers" in v for v in verdict)
    assert "looptrace: 3 processes traced" in verdict

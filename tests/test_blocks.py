"""How a long step becomes a block: which evidence wins (probes, samples, GC, CPU waits).

These feed :func:`build_block` the records the hooks would produce, to pin its rules down;
the end-to-end behaviour on real loops is in test_recording.py."""

from __future__ import annotations

import asyncio
import time

import looptrace
from looptrace._hooks import schedstat
from looptrace._hooks.blocks import CPU_STARVED, LongStep, StepSamples, build_block
from looptrace.events import CodeLocation, ProbeCall
from looptrace.hotspots import advise

MS = 1_000_000
SITE = CodeLocation("/app/service.py", 12, "handler")
OTHER = CodeLocation("/app/service.py", 30, "render")


def step(duration_ms: int, **fields: object) -> LongStep:
    values: dict[str, object] = dict(
        loop_id=1, thread_id=7, thread_name="MainThread", start_ns=1_000 * MS,
        end_ns=(1_000 + duration_ms) * MS, sample_key=(7, 1), duration_source="step-timer",
        task="Task-3", coroutine="handler", callback=None, fallback_site=None,
        fallback_source="unknown", trace_id=None, span_id=None, probe_calls=[])
    values.update(fields)
    return LongStep(**values)  # type: ignore[arg-type]


def sampled_at(*sites: CodeLocation) -> StepSamples:
    samples = StepSamples()
    for site in sites:
        samples.add(site, None, (site,), None, None, None)
    return samples


def probe(call: str, start_ms: int, duration_ms: int, site: CodeLocation = SITE) -> ProbeCall:
    return ProbeCall(call, (1_000 + start_ms) * MS, duration_ms * MS, 7, site, (site,),
                     "Task-3", None, None)


def test_a_probe_that_explains_most_of_the_block_makes_a_blocking_call() -> None:
    """At least half of the block in one probed call: blocking-call at the call's site."""
    block = build_block(step(100, probe_calls=[probe("time.sleep", 10, 60)]),
                        sampled_at(OTHER, OTHER))
    assert (block.kind, block.call, block.site, block.site_source) == (
        "blocking-call", "time.sleep", SITE, "probe")


def test_a_probe_that_explains_little_leaves_a_slow_step_at_the_sampled_line() -> None:
    """Less than half: the samples' most frequent line wins, as a slow-step."""
    block = build_block(step(100, probe_calls=[probe("time.sleep", 10, 20)]),
                        sampled_at(OTHER, OTHER, SITE))
    assert (block.kind, block.site, block.site_source) == ("slow-step", OTHER, "samples")


def test_many_short_probed_calls_add_up() -> None:
    """Ten 8 ms calls of the same function explain an 100 ms block together."""
    calls = [probe("queue.Queue.get", 10 * i, 8) for i in range(10)]
    block = build_block(step(100, probe_calls=calls), sampled_at(OTHER))
    assert (block.kind, block.call) == ("blocking-call", "queue.Queue.get")


def test_a_block_spent_collecting_garbage_is_named_gc_without_a_site() -> None:
    """Mostly a garbage collection: no line is blamed."""
    block = build_block(step(100, gc_ns=70 * MS, gc_generation=2), sampled_at(OTHER))
    assert (block.kind, block.call, block.site, block.site_source) == (
        "slow-step", "gc.collect (generation 2)", None, "gc")


def test_a_block_spent_waiting_for_a_cpu_is_named_so_without_a_site() -> None:
    """The loop thread waited in the run queue for most of the block (measured from the
    first sample to the end, scaled to the whole block): no line is blamed."""
    samples = sampled_at(OTHER, OTHER)
    samples.sched = (1_020 * MS, 5 * MS, 100 * MS)          # first sample: 20 ms in
    block = build_block(step(100, sched_end=(1_100 * MS, 15 * MS, 160 * MS)), samples)
    assert (block.kind, block.call, block.site, block.site_source) == (
        "slow-step", CPU_STARVED, None, "cpu")
    assert block.cpu_wait_ns == 75 * MS
    assert "CPU" in advise(block.kind, block.call)


def test_a_little_cpu_waiting_does_not_hide_the_line() -> None:
    """Some waiting for a CPU, less than half: the sampled line stays the site."""
    samples = sampled_at(OTHER)
    samples.sched = (1_020 * MS, 5 * MS, 100 * MS)
    block = build_block(step(100, sched_end=(1_100 * MS, 70 * MS, 110 * MS)), samples)
    assert (block.site, block.call) == (OTHER, None)
    assert block.cpu_wait_ns == 12_500_000


def test_a_probed_call_wins_over_cpu_waiting() -> None:
    """A thread blocked in a probed call is asleep, not starved: the probe names it."""
    samples = sampled_at(SITE)
    samples.sched = (1_020 * MS, 5 * MS, 100 * MS)
    block = build_block(step(100, probe_calls=[probe("time.sleep", 5, 90)],
                             sched_end=(1_100 * MS, 6 * MS, 170 * MS)), samples)
    assert (block.kind, block.call) == ("blocking-call", "time.sleep")


def test_a_real_block_on_an_idle_machine_is_not_starvation() -> None:
    """On a real loop, a CPU-bound block records its CPU waiting (Linux) and keeps its
    line: the measurement does not invent starvation."""

    async def main() -> None:
        await asyncio.sleep(0)
        deadline = time.perf_counter() + 0.2
        while time.perf_counter() < deadline:
            pass

    with looptrace.installed(threshold_ms=50) as tracing:
        asyncio.run(main())
    (block,) = tracing.snapshot().blocks
    assert block.site is not None and block.call != CPU_STARVED
    if schedstat.of_this_thread() is not None:
        assert 0 <= block.cpu_wait_ms < block.duration_ms / 2

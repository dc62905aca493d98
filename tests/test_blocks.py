"""How a long step becomes a block: which evidence wins (probes, samples, GC, CPU waits).

These feed :func:`build_block` the records the hooks would produce, to pin its rules down;
the end-to-end behaviour on real loops is in test_recording.py."""

from __future__ import annotations

import asyncio

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


def test_a_block_made_by_a_garbage_collection_is_named_gc_and_keeps_its_line() -> None:
    """A collection that accounts for the block on its own (without it, 30 ms: no block)
    is the headline; the sampled line stays as the evidence of what triggered it."""
    block = build_block(step(100, gc_ns=70 * MS, gc_generation=2, threshold_ns=50 * MS),
                        sampled_at(OTHER))
    assert (block.kind, block.call, block.site, block.site_source) == (
        "slow-step", "gc.collect (generation 2)", OTHER, "samples")
    assert block.causes == ("gc",)


def test_a_collection_inside_long_work_is_a_cause_beside_the_line() -> None:
    """300 ms of work with a 160 ms collection in it: without the collection, still a
    block; the line is the verdict, the collection a cause."""
    block = build_block(step(300, gc_ns=160 * MS, gc_generation=2, threshold_ns=100 * MS),
                        sampled_at(OTHER))
    assert (block.call, block.site) == (None, OTHER) and block.causes == ("gc",)


def test_a_block_waiting_for_a_cpu_while_mostly_asleep_in_io_is_not_starved() -> None:
    """400 ms: 30 ms on a CPU, 250 ms waiting for one, the rest asleep in I/O (fsync on a
    loaded machine). Without the wait it would still be a 150 ms block: no CPU verdict."""
    samples = sampled_at(OTHER)
    samples.sched = (1_002 * MS, 0, 0)
    block = build_block(step(400, threshold_ns=50 * MS,
                             sched_end=(1_400 * MS, 30 * MS, 250 * MS)), samples)
    assert (block.call, block.site) == (None, OTHER) and block.causes == (CPU_STARVED,)


def test_a_block_spent_waiting_for_a_cpu_keeps_its_line_under_the_cpu_headline() -> None:
    """The loop thread waited in the run queue for most of the block and ran on a CPU for
    less than the threshold: starvation is the headline (call, advice), and the sampled
    line, stack and task stay the block's evidence."""
    samples = sampled_at(OTHER, OTHER)
    samples.sched = (1_005 * MS, 5 * MS, 100 * MS)          # first reading: 5 ms in
    block = build_block(step(100, threshold_ns=50 * MS,
                             sched_end=(1_100 * MS, 15 * MS, 180 * MS)), samples)
    assert (block.kind, block.call, block.site, block.site_source) == (
        "slow-step", CPU_STARVED, OTHER, "samples")
    assert block.stack == (OTHER,) and block.task == "Task-3"
    assert (block.cpu_wait_ns, block.cpu_ns) == (80 * MS, 10 * MS)
    assert block.causes == (CPU_STARVED,)
    assert "CPU" in advise(block.kind, block.call)


def test_cpu_work_slowed_by_waiting_keeps_its_line_and_names_the_wait_as_a_cause() -> None:
    """A 300 ms block with 150 ms on a CPU (over the threshold): the line is the verdict,
    the waiting a contributing cause beside it."""
    samples = sampled_at(OTHER)
    samples.sched = (1_010 * MS, 0, 0)
    block = build_block(step(300, threshold_ns=100 * MS,
                             sched_end=(1_300 * MS, 150 * MS, 140 * MS)), samples)
    assert (block.site, block.call, block.site_source) == (OTHER, None, "samples")
    assert (block.cpu_ns, block.cpu_wait_ns) == (150 * MS, 140 * MS)
    assert block.causes == (CPU_STARVED,)


def test_a_wait_seen_only_at_the_end_is_never_scaled_to_the_block() -> None:
    """The first reading came after 230 ms of a 232 ms block (C code held the GIL, the
    watchdog could not run): the 1.8 ms of waiting seen in the last 2 ms is reported as it
    is, not scaled to 230 ms, and the unmeasured head may have been on a CPU: no starvation
    verdict."""
    samples = sampled_at(OTHER)
    samples.sched = (1_230 * MS, 0, 0)
    block = build_block(step(232, threshold_ns=100 * MS,
                             sched_end=(1_232 * MS, 200_000, 1_800_000)), samples)
    assert (block.site, block.call) == (OTHER, None)
    assert block.cpu_wait_ns == 1_800_000 and block.causes == ()


def test_a_reading_taken_after_the_step_ended_is_ignored() -> None:
    """The watchdog read the thread's schedstat just after the step ended: no window."""
    samples = sampled_at(OTHER)
    samples.sched = (1_101 * MS, 0, 0)
    block = build_block(step(100, threshold_ns=50 * MS,
                             sched_end=(1_100 * MS, 0, 90 * MS)), samples)
    assert (block.cpu_ns, block.cpu_wait_ns, block.call) == (None, 0, None)


def test_a_little_cpu_waiting_does_not_hide_the_line() -> None:
    """Some waiting for a CPU, less than half: the sampled line stays the site."""
    samples = sampled_at(OTHER)
    samples.sched = (1_020 * MS, 5 * MS, 100 * MS)
    block = build_block(step(100, threshold_ns=50 * MS,
                             sched_end=(1_100 * MS, 70 * MS, 110 * MS)), samples)
    assert (block.site, block.call) == (OTHER, None)
    assert block.cpu_wait_ns == 10 * MS and block.causes == ()


def test_a_probed_call_wins_over_cpu_waiting() -> None:
    """A thread blocked in a probed call is asleep, not starved: the probe names it."""
    samples = sampled_at(SITE)
    samples.sched = (1_020 * MS, 5 * MS, 100 * MS)
    block = build_block(step(100, probe_calls=[probe("time.sleep", 5, 90)],
                             sched_end=(1_100 * MS, 6 * MS, 170 * MS)), samples)
    assert (block.kind, block.call) == ("blocking-call", "time.sleep")


def test_a_real_cpu_bound_block_is_not_starvation() -> None:
    """On a real loop, a CPU-bound block (a fixed amount of work, far over the threshold
    in CPU time however busy the machine) records its CPU figures (Linux) and keeps its
    line: the measurement does not invent starvation."""

    async def main() -> None:
        await asyncio.sleep(0)
        total = 0
        for i in range(3_000_000):
            total += i

    with looptrace.installed(threshold_ms=50) as tracing:
        asyncio.run(main())
    (block,) = tracing.snapshot().blocks
    assert block.site is not None and block.call is None
    if schedstat.of_this_thread() is not None:
        assert block.cpu_ms is not None and block.cpu_ms >= 50
        assert 0 <= block.cpu_wait_ms <= block.duration_ms

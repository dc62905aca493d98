"""Blocker -> victims: each block names the tasks and callbacks it kept waiting, with their
delays and requests, against ground truth the test builds (timers whose deadlines fall
inside a known ``time.sleep`` on the loop, callbacks queued before or during it, requests
as real OpenTelemetry spans of the SDK).

Timed bounds are generous: the test measures the block's ends itself, on the loop thread,
and a busy machine may stretch the gap between those readings and the step's own."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.trace import Tracer

import looptrace
from looptrace import _seams
from looptrace.exporters import chrome, html, jaeger_json, text
from looptrace.session import BlockEvent, Session
from otel_helpers import memory_otel
from test_chrome_trace import check_trace_rules

HERE = __file__
BLOCK_S = 0.5
THRESHOLD_MS = 100
MODES = ["default", "full"]
# The test's own readings and the step timer's differ by what runs between them (resuming
# the coroutine, a preemption on a busy machine).
EARLY_MS = 5.0
LATE_MS = 100.0


class Truth:
    """What the test knows of its block: loop-clock readings on the loop thread."""

    def __init__(self) -> None:
        self.start = 0.0
        self.end = 0.0
        self.deadlines: dict[str, float] = {}

    def expected_ms(self, name: str) -> float:
        return (self.end - max(self.deadlines[name], self.start)) * 1000


async def sleeper(truth: Truth, name: str, delay_s: float) -> None:
    truth.deadlines[name] = asyncio.get_running_loop().time() + delay_s
    await asyncio.sleep(delay_s)


def block(truth: Truth) -> None:
    loop = asyncio.get_running_loop()
    truth.start = loop.time()
    time.sleep(BLOCK_S)  # VICTIMS_BLOCK
    truth.end = loop.time()


def the_block(session: Session) -> BlockEvent:
    """The test's block (a busy machine may add others elsewhere)."""
    found = [b for b in session.blocks if b.site is not None and b.site.file == HERE
             and b.duration_ms >= BLOCK_S * 900]
    assert len(found) == 1, [(b.site, b.duration_ms) for b in session.blocks]
    return found[0]


def run(main: Callable[[], Any], mode: str = "default") -> Session:
    with looptrace.installed(threshold_ms=THRESHOLD_MS, mode=mode) as tracing:
        asyncio.run(main())
    return tracing.snapshot()


@pytest.mark.parametrize("mode", MODES)
def test_tasks_whose_timers_expired_during_a_block_are_its_victims(mode: str) -> None:
    """Five tasks sleep until 100-300 ms into a 500 ms block: the block lists exactly those
    five, each delayed from its deadline to the block's end; two whose deadlines fall
    after the block are not victims."""
    truth = Truth()

    async def main() -> None:
        due = [asyncio.create_task(sleeper(truth, f"due-{i}", 0.1 + 0.05 * i), name=f"due-{i}")
               for i in range(5)]
        late = [asyncio.create_task(sleeper(truth, f"late-{i}", BLOCK_S + 1.5),
                                    name=f"late-{i}") for i in range(2)]
        await asyncio.sleep(0)  # the tasks start their sleeps
        block(truth)
        await asyncio.gather(*due)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    event = the_block(run(main, mode))
    names = {v.name: v for v in event.victim_detail}
    assert event.victims == 5
    assert set(names) == {f"due-{i}" for i in range(5)}
    for name, victim in names.items():
        assert victim.kind == "task" and victim.coroutine == "sleeper"
        expected = truth.expected_ms(name)
        assert expected - EARLY_MS <= victim.delay_ms <= expected + LATE_MS, (name, victim)
    delays = [v.delay_ms for v in event.victim_detail]
    assert delays == sorted(delays, reverse=True), "longest first"
    assert event.victim_max_delay_ms == max(delays)
    assert event.victim_delay_ms == pytest.approx(sum(delays), abs=0.01)
    assert event.victim_requests == () and event.victim_request_count == 0


@pytest.mark.parametrize("mode", MODES)
def test_a_callback_queued_before_the_block_is_a_victim_one_it_queues_itself_is_not(
        mode: str) -> None:
    """A callback another task queued just before the block waits through all of it; one
    the blocking step queues half-way through was made ready by the block, not delayed."""
    truth = Truth()
    loop_ref: list[asyncio.AbstractEventLoop] = []

    def queued_before() -> None:
        pass

    def queued_during() -> None:
        pass

    async def neighbour() -> None:
        loop_ref[0].call_soon(queued_before)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop_ref.append(loop)
        other = asyncio.create_task(neighbour())
        await asyncio.sleep(0)  # next batch: the neighbour's step, then this one
        truth.start = loop.time()
        time.sleep(BLOCK_S / 2)  # VICTIMS_BLOCK
        loop.call_soon(queued_during)
        time.sleep(BLOCK_S / 2)  # VICTIMS_BLOCK
        truth.end = loop.time()
        await other

    event = the_block(run(main, mode))
    assert event.victims == 1, event.victim_detail
    (victim,) = event.victim_detail
    assert victim.kind == "callback" and victim.name.endswith("queued_before")
    expected = (truth.end - truth.start) * 1000
    assert expected - EARLY_MS <= victim.delay_ms <= expected + LATE_MS


@pytest.mark.parametrize("mode", MODES)
def test_a_request_that_arrived_during_a_block_is_its_victim(mode: str) -> None:
    """A client (its own thread, plain socket, loopback) sends a request 200 ms into a
    500 ms block: the server connection's reader is a victim, delayed from about when the
    bytes arrived to the block's end (within one watchdog look, a quarter of the
    threshold); a connection that stays silent is not."""
    truth = Truth()
    sent: list[float] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)  # the silent connection's handler stays here
        writer.close()

    def client(port: int, connected: threading.Event, go: threading.Event) -> None:
        with socket.create_connection(("127.0.0.1", port)) as silent, \
                socket.create_connection(("127.0.0.1", port)) as talker:
            connected.set()
            go.wait(5)
            time.sleep(BLOCK_S * 0.4)
            sent.append(time.monotonic())  # the loop's clock
            talker.sendall(b"GET / HTTP/1.0\r\n\r\n")
            talker.recv(100)  # until the server answers (closes)
            silent.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        connected, go = threading.Event(), threading.Event()
        thread = threading.Thread(target=client, args=(port, connected, go))
        thread.start()
        await asyncio.to_thread(connected.wait, 5)
        await asyncio.sleep(0.1)  # the loop accepts both connections; their readers wait
        go.set()
        block(truth)
        await asyncio.to_thread(thread.join, 5)
        server.close()

    event = the_block(run(main, mode))
    readers = [v for v in event.victim_detail if v.name.endswith("_read_ready")]
    assert len(readers) == 1, event.victim_detail
    (reader,) = readers
    look_ms = THRESHOLD_MS / 4
    expected = (truth.end - sent[0]) * 1000
    assert expected - look_ms - EARLY_MS <= reader.delay_ms <= expected + LATE_MS, \
        (reader, expected)


def test_a_block_with_nothing_waiting_has_no_victims() -> None:
    """Measured and none found: 0, not 'not measured'."""
    truth = Truth()

    async def main() -> None:
        block(truth)

    event = the_block(run(main))
    assert event.victims == 0 and event.victim_detail == ()


@pytest.fixture
def spans() -> Iterator[Any]:
    with memory_otel() as otel:
        yield otel


def test_victims_in_requests_link_the_block_span_and_back(spans: Any) -> None:
    """Victims running inside OpenTelemetry spans: the block gives their trace ids, its span
    links to each delayed request's span (with the delay), and each delayed span, still
    recording when the block's span is made, links back to it with its delay."""
    tracer: Tracer = spans.tracer_provider.get_tracer("test")
    truth = Truth()

    def block_span_made() -> bool:
        return any(s.name == "looptrace.block" for s in spans.finished())

    async def request(name: str, delay_s: float) -> None:
        with tracer.start_as_current_span(name):
            await sleeper(truth, name, delay_s)
            # The span stays open until the block's span exists: it must still record.
            for _ in range(1000):
                if block_span_made():
                    break
                await asyncio.sleep(0.01)

    async def main() -> None:
        requests = [asyncio.create_task(request(f"req-{i}", 0.1 + 0.05 * i), name=f"req-{i}")
                    for i in range(3)]
        await asyncio.sleep(0)
        block(truth)
        await asyncio.gather(*requests)

    session = run(main)
    event = the_block(session)
    finished = spans.finished()
    requests = {s.name: s for s in finished if s.name.startswith("req-")}
    assert event.victims == 3 and event.victim_request_count == 3
    assert set(event.victim_requests) == {f"{s.context.trace_id:032x}"
                                          for s in requests.values()}
    for victim in event.victim_detail:
        assert victim.span_id == f"{requests[victim.name].context.span_id:016x}"

    (block_span,) = [s for s in finished if s.name == "looptrace.block"
                     and s.start_time == event.start_unix_ns]
    attributes = dict(block_span.attributes or {})
    assert attributes["looptrace.victims"] == 3
    links = {link.context.span_id: dict(link.attributes or {}) for link in block_span.links}
    assert set(links) == {s.context.span_id for s in requests.values()}
    for name, span in requests.items():
        delay = links[span.context.span_id]["looptrace.victim.delay_ms"]
        assert truth.expected_ms(name) - EARLY_MS <= delay <= truth.expected_ms(name) + LATE_MS
        back = [link for link in span.links
                if link.context.span_id == block_span.context.span_id]
        assert len(back) == 1, "the delayed request points at the block that delayed it"
        assert dict(back[0].attributes or {})["looptrace.victim.delay_ms"] == delay
        assert dict(span.attributes or {})["looptrace.delayed_ms"] == pytest.approx(delay)
    # The Jaeger file shows the same links, as Jaeger shows OTLP links.
    spans_in_file = [span for trace in jaeger_json.document(session)["data"]
                     for span in trace["spans"]
                     if span["startTime"] == event.start_unix_ns // 1000]
    (in_file,) = spans_in_file
    assert {r["spanID"] for r in in_file["references"] if r["refType"] == "FOLLOWS_FROM"} \
        == {f"{s.context.span_id:016x}" for s in requests.values()}


def test_each_victim_delay_is_a_metric_record(spans: Any) -> None:
    """``looptrace.block.victim.delay``: one record per victim, in seconds."""
    truth = Truth()

    async def main() -> None:
        due = [asyncio.create_task(sleeper(truth, f"due-{i}", 0.1 + 0.05 * i))
               for i in range(4)]
        await asyncio.sleep(0)
        block(truth)
        await asyncio.gather(*due)

    session = run(main)
    event = the_block(session)
    points = []
    data = spans.metrics.get_metrics_data()
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "looptrace.block.victim.delay":
                    assert metric.unit == "s"
                    points.extend(metric.data.data_points)
    assert sum(p.count for p in points) >= 4  # a busy machine may add blocks of its own
    assert max(p.max for p in points) == pytest.approx(event.victim_max_delay_ms / 1e3)


def test_on_uvloop_victims_are_not_measured() -> None:
    """uvloop has none of asyncio's queues: the block is reported, its victims are None
    (not measured), and nothing fails."""
    uvloop = pytest.importorskip("uvloop")
    truth = Truth()

    async def main() -> None:
        due = [asyncio.create_task(sleeper(truth, f"due-{i}", 0.1)) for i in range(2)]
        await asyncio.sleep(0.01)
        block(truth)
        await asyncio.gather(*due)

    with looptrace.installed(threshold_ms=THRESHOLD_MS) as tracing:
        uvloop.run(main())
    session = tracing.snapshot()
    event = the_block(session)
    assert event.victims is None and event.victim_detail == ()
    assert session.faults == ()
    (loop,) = session.loops
    assert "victims" in loop.missing, "the report says what uvloop could not measure"
    assert "delayed" not in text.render(session)


def test_a_fault_in_victim_collection_keeps_the_block() -> None:
    """An error while reading the victims is counted as a fault of its own hook: the
    block is still reported (without victims), later blocks too, the program goes on."""
    truth = Truth()

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("planted")

    async def main() -> None:
        block(truth)
        await asyncio.sleep(0.01)
        time.sleep(0.2)

    undo = _seams.replace("victims", broken)
    try:
        session = run(main)
    finally:
        undo()
    event = the_block(session)
    assert event.victims is None
    assert len(session.blocks) >= 2
    assert [(f.hook, f.error) for f in session.faults] == [("victims", "RuntimeError: planted")]


def _session_with_victims() -> Session:
    truth = Truth()

    async def main() -> None:
        due = [asyncio.create_task(sleeper(truth, f"due-{i}", 0.1 + 0.05 * i), name=f"due-{i}")
               for i in range(3)]
        await asyncio.sleep(0)
        block(truth)
        await asyncio.gather(*due)

    return run(main, "full")


def test_every_output_shows_the_victims() -> None:
    """The JSON report round-trips them; the summary says how many, how long and the
    longest; the HTML's block row lists them; the Perfetto trace has an arrow from the
    block to each delayed task's next step (full mode keeps every step)."""
    session = _session_with_victims()
    event = the_block(session)
    again = Session.from_json(session.to_json())
    assert the_block(again) == event

    summary = text.render(session)
    assert "delayed 3 tasks and callbacks by" in summary
    assert f"longest {text.duration(event.victim_max_delay_ms)}" in summary

    page = html.render(session)
    assert all(f"due-{i}" in page for i in range(3))
    assert "delayed 3" in page

    events = check_trace_rules(json.loads(chrome.render(session)))
    starts = [e for e in events if e["ph"] == "s"]
    finishes = {e["id"]: e for e in events if e["ph"] == "f"}
    assert len(starts) == 3 and set(finishes) == {e["id"] for e in starts}
    names = {e["tid"]: e["args"]["name"] for e in events
             if e["ph"] == "M" and e["name"] == "thread_name"}
    block_end_us = (event.start_ms + event.duration_ms) * 1000
    for start in starts:
        finish = finishes[start["id"]]
        assert "sleeper" in names[finish["tid"]]
        assert finish["ts"] >= block_end_us - 2


def test_an_old_report_without_victims_still_loads() -> None:
    """Reports written before victims existed read as 'not measured'."""
    session = _session_with_victims()
    data = json.loads(session.to_json())
    for block_data in data["blocks"]:
        for key in [k for k in block_data if k.startswith("victim")]:
            del block_data[key]
    old = Session.from_json(json.dumps(data))
    assert all(b.victims is None and b.victim_detail == () for b in old.blocks)
    assert "delayed" not in text.render(old)

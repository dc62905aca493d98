"""Every field of a block reaches every output that describes blocks one by one: the span
attributes (OTLP and the Jaeger JSON file), the log event (stdlib logging, structlog) and
the Perfetto trace's slice arguments, as the JSON report has them.

A field added to :class:`looptrace.session.BlockEvent` and forgotten in one mapping fails
here (the mappings disagreed before: ``cpu_wait_ms`` and ``gc_ms`` once reached the JSON
report only).
"""

from __future__ import annotations

import dataclasses
import json

from looptrace.exporters import chrome, jaeger_json
from looptrace.exporters._spans import block_attributes
from looptrace.session import BlockEvent, CodeLocation, VictimEvent
from looptrace.sinks.logs import block_fields

SITE = CodeLocation("/srv/app/handlers.py", 42, "handle")
HOLDER = CodeLocation("/srv/app/reports.py", 7, "render")

# Fields every output shows in a form of its own (the site as code.* or "file:line", the
# loop and thread as ids and names, the start as the slice's or span's start), or that
# decide where the block goes rather than what it says (its span's parent).
STRUCTURAL = {"loop", "thread", "thread_id", "start_ms", "start_unix_ns", "site", "stack",
              "trace_id", "span_id", "trace_sampled"}


def _every_field_set() -> BlockEvent:
    return BlockEvent(
        loop=1, thread="MainThread", thread_id=11, start_ms=5.0,
        start_unix_ns=1_700_000_000_000_000_000, duration_ms=180.0,
        duration_source="step-timer", kind="gil-stall", call="re.Pattern.match", site=SITE,
        site_source="native-samples", task="Task-3", coroutine="handle", callback=None,
        samples=9, trace_id="0af7651916cd43dd8448eb211c80319c", span_id="b7ad6b7169203331",
        stack=(SITE,), gc_ms=3.5, trace_sampled=True, cpu_wait_ms=12.0, cpu_ms=160.0,
        causes=("gil",), in_progress=True, call_source="call-expression", gil_wait_ms=150.0,
        gil_holder="worker-1", gil_holder_call="re.Pattern.match", gil_holder_site=HOLDER,
        victims=3, victim_delay_ms=400.0, victim_max_delay_ms=180.0,
        victim_requests=("1af7651916cd43dd8448eb211c80319c",), victim_request_count=1,
        victim_detail=(VictimEvent("task", "fast-1", "fast", 180.0,
                                   "1af7651916cd43dd8448eb211c80319c", "c7ad6b7169203331"),))


def _described_fields() -> set[str]:
    event = _every_field_set()
    return {f.name for f in dataclasses.fields(event)
            if f.name not in STRUCTURAL and getattr(event, f.name) is not None}


def test_a_span_carries_every_field_of_its_block() -> None:
    names = {key.removeprefix("looptrace.") for key in block_attributes(_every_field_set())}
    assert _described_fields() - names == set()


def test_a_log_event_carries_every_field_of_its_block() -> None:
    fields = block_fields(_every_field_set())
    assert _described_fields() - set(fields) == set()
    assert fields["site"] == "/srv/app/handlers.py:42"
    assert fields["gil_holder_site"] == "/srv/app/reports.py:7"
    assert fields["causes"] == ("gil",)


def test_a_perfetto_slice_carries_every_field_of_its_block() -> None:
    args = chrome._block_args(_every_field_set())
    assert _described_fields() - set(args) == set()
    json.dumps(args)  # written as JSON: every value must serialise


def test_the_jaeger_file_shows_a_list_as_jaeger_shows_an_otlp_array() -> None:
    tag = jaeger_json._tag("looptrace.causes", ("gil", "gc"))
    assert tag == {"key": "looptrace.causes", "type": "string", "value": '["gil", "gc"]'}


def test_values_that_say_nothing_are_left_out() -> None:
    """A block that ended, with no GIL holder, no CPU reading and no cause."""
    quiet = dataclasses.replace(
        _every_field_set(), gc_ms=0.0, cpu_wait_ms=0.0, cpu_ms=None, causes=(),
        in_progress=False, call_source=None, gil_wait_ms=0.0, gil_holder=None,
        gil_holder_call=None, gil_holder_site=None, victims=None, victim_delay_ms=0.0,
        victim_max_delay_ms=0.0, victim_requests=(), victim_request_count=0, victim_detail=())
    absent = {"gc_ms", "cpu_wait_ms", "cpu_ms", "causes", "in_progress", "call_source",
              "gil_wait_ms", "gil_holder", "gil_holder_call", "gil_holder_site", "victims",
              "victim_delay_ms", "victim_max_delay_ms", "victim_requests",
              "victim_request_count", "victim_detail"}
    spans = {key.removeprefix("looptrace.") for key in block_attributes(quiet)}
    for shown in (spans, set(block_fields(quiet)), set(chrome._block_args(quiet))):
        assert shown & absent == set()


def test_a_block_that_delayed_nothing_says_so_everywhere() -> None:
    """Victims measured and none found is a fact (0), unlike not measured (absent)."""
    none = dataclasses.replace(_every_field_set(), victims=0, victim_delay_ms=0.0,
                               victim_max_delay_ms=0.0, victim_requests=(),
                               victim_request_count=0, victim_detail=())
    spans = {key.removeprefix("looptrace."): value
             for key, value in block_attributes(none).items()}
    for shown in (spans, block_fields(none), chrome._block_args(none)):
        assert shown["victims"] == 0
        assert "victim_delay_ms" not in shown and "victim_detail" not in shown

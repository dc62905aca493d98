"""The loop timeline of the HTML report: one inline SVG per loop, no script needed.

The x axis is the whole recording (``0`` to ``wall_ms``), the same for every loop, so
loops line up. In full mode the upper lane shows, per column of time, how much of it the
loop spent running steps (busy) and how much waiting in select (io-wait); a loop runs
tens of thousands of steps a second, so columns aggregate them rather than drawing each.
The lower lane marks every block at its exact start and duration, each a link to its row
in the blocks table, with a tooltip naming call, site, duration and task. Without a
per-step timeline (default mode), the lower lane is all there is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from looptrace.session import BlockEvent, LoopTimeline

from .text import short_path

WIDTH = 1000.0
"""SVG user units across the time axis; the SVG scales to the page width."""
COLUMNS = 500
_LEFT = 70.0
_ACTIVITY_TOP = 8.0
_ACTIVITY_HEIGHT = 40.0
_BLOCK_TOP = 56.0
_BLOCK_HEIGHT = 18.0
_AXIS_TOP = 84.0
_HEIGHT = 104.0
_MIN_BLOCK_WIDTH = 1.5


def _fmt(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _tick_step(span_ms: float) -> float:
    """A round tick spacing giving about 4 to 10 ticks."""
    raw = span_ms / 6 if span_ms > 0 else 1.0
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return float(factor * power)
    return float(10 * power)


def _label_ms(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g} s"
    return f"{value:g} ms"


def activity_columns(timeline: LoopTimeline, span_ms: float,
                     columns: int = COLUMNS) -> list[tuple[float, float]]:
    """Per column of the time axis: (busy fraction, io-wait fraction) of that column."""
    width = span_ms / columns if span_ms > 0 else 1.0
    busy = [0.0] * columns
    idle = [0.0] * columns

    def spread(into: list[float], start: float, duration: float) -> None:
        end = min(start + duration, span_ms)
        start = max(start, 0.0)
        if end <= start:
            return
        first = min(int(start / width), columns - 1)
        last = min(int(end / width), columns - 1)
        for column in range(first, last + 1):
            low = max(start, column * width)
            high = min(end, (column + 1) * width)
            if high > low:
                into[column] += high - low

    for start, duration, _, _ in timeline.selects:
        spread(idle, start, duration)
    for start, duration, _ in timeline.steps:
        spread(busy, start, duration)
    result = []
    for b, i in zip(busy, idle, strict=True):
        total = b + i
        scale = 1.0 / max(total, width) if total > 0 else 0.0
        result.append((b * scale, i * scale))
    return result


def block_title(number: int, block: BlockEvent) -> str:
    """The tooltip of a block mark (plain text; escaped where it is written)."""
    what = block.call or "slow step (no blocking function named)"
    site = (f"{short_path(block.site.file)}:{block.site.line} in {block.site.function}"
            if block.site is not None else "site unknown")
    task = block.task or block.callback or "?"
    causes = "".join(f"\n{name} {value:.1f} ms" for name, value in
                     (("garbage collection", block.gc_ms), ("waiting for a CPU",
                                                            block.cpu_wait_ms)) if value)
    return (f"block #{number}: {block.duration_ms:.1f} ms at +{block.start_ms:.1f} ms\n"
            f"{what}\n{site}\ntask {task}{causes}")


def render_svg(loop_id: int, span_ms: float, timeline: LoopTimeline | None,
               blocks: Sequence[tuple[int, BlockEvent]]) -> str:
    """The SVG for one loop; ``blocks`` are (number in the blocks table, block)."""
    span = span_ms if span_ms > 0 else 1.0
    scale = (WIDTH - _LEFT) / span
    parts = [
        f'<svg class="timeline" viewBox="0 0 {_fmt(WIDTH)} {_fmt(_HEIGHT)}" '
        f'role="img" aria-label="timeline of loop {loop_id}" '
        f'xmlns="http://www.w3.org/2000/svg">',
        f'<text class="lane" x="0" y="{_fmt(_ACTIVITY_TOP + 24)}">activity</text>',
        f'<text class="lane" x="0" y="{_fmt(_BLOCK_TOP + 13)}">blocks</text>',
        f'<rect class="lane-bg" x="{_fmt(_LEFT)}" y="{_fmt(_ACTIVITY_TOP)}" '
        f'width="{_fmt(WIDTH - _LEFT)}" height="{_fmt(_ACTIVITY_HEIGHT)}"/>',
        f'<rect class="lane-bg" x="{_fmt(_LEFT)}" y="{_fmt(_BLOCK_TOP)}" '
        f'width="{_fmt(WIDTH - _LEFT)}" height="{_fmt(_BLOCK_HEIGHT)}"/>',
    ]
    if timeline is not None:
        column_width = (WIDTH - _LEFT) / COLUMNS
        for index, (busy, idle) in enumerate(activity_columns(timeline, span)):
            x = _LEFT + index * column_width
            busy_height = busy * _ACTIVITY_HEIGHT
            idle_height = idle * _ACTIVITY_HEIGHT
            bottom = _ACTIVITY_TOP + _ACTIVITY_HEIGHT
            if busy_height >= 0.05:
                parts.append(f'<rect class="busy" x="{_fmt(x)}" '
                             f'y="{_fmt(bottom - busy_height)}" width="{_fmt(column_width)}" '
                             f'height="{_fmt(busy_height)}"/>')
            if idle_height >= 0.05:
                parts.append(f'<rect class="idle" x="{_fmt(x)}" '
                             f'y="{_fmt(bottom - busy_height - idle_height)}" '
                             f'width="{_fmt(column_width)}" height="{_fmt(idle_height)}"/>')
    else:
        parts.append(f'<text class="note" x="{_fmt(_LEFT + 6)}" '
                     f'y="{_fmt(_ACTIVITY_TOP + 24)}">per-step activity is recorded in full '
                     'mode (--mode full)</text>')
    for number, block in blocks:
        x = _LEFT + max(block.start_ms, 0.0) * scale
        width = max(block.duration_ms * scale, _MIN_BLOCK_WIDTH)
        width = min(width, WIDTH - x) if x < WIDTH else _MIN_BLOCK_WIDTH
        parts.append(
            f'<a href="#block-{number}"><rect class="block" x="{_fmt(x)}" '
            f'y="{_fmt(_BLOCK_TOP)}" width="{_fmt(width)}" height="{_fmt(_BLOCK_HEIGHT)}">'
            f'<title>{escape(block_title(number, block))}</title></rect></a>')
    step = _tick_step(span)
    tick = 0.0
    while tick <= span + 1e-9:
        x = _LEFT + tick * scale
        anchor = "end" if x > WIDTH - 30 else ("start" if tick == 0 else "middle")
        parts.append(f'<line class="tick" x1="{_fmt(x)}" y1="{_fmt(_AXIS_TOP - 4)}" '
                     f'x2="{_fmt(x)}" y2="{_fmt(_AXIS_TOP)}"/>')
        parts.append(f'<text class="axis" x="{_fmt(x)}" y="{_fmt(_AXIS_TOP + 14)}" '
                     f'text-anchor="{anchor}">{escape(_label_ms(round(tick, 6)))}</text>')
        tick += step
    parts.append("</svg>")
    return "".join(parts)

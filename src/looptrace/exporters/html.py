"""The HTML report: one self-contained file to open in a browser.

No CDN, no font, no image, no request of any kind: styles and the one small script are
inline, and a Content-Security-Policy allows exactly those two (by hash) and nothing else,
so even a string that slipped past escaping could neither run nor fetch anything. Every
table is plain HTML, readable with JavaScript off; the script only makes columns
sortable. Every string that comes from the traced program (task and thread names, paths,
source lines, argv, call names) is escaped.

Sections: summary, loops (figures and a timeline: busy vs io-wait, blocks marked), hotspots
with the source lines around each site (read from the file when the report is rendered,
and only if it is still the source that ran: see ``looptrace._sources``),
individual blocks, the per-task table, allow-list exemptions (pytest), and notes (drops,
faults).
"""

from __future__ import annotations

import base64
import hashlib
import io
import tokenize
from collections.abc import Iterable, Sequence
from html import escape

from looptrace._sources import matching_source
from looptrace.events import CodeLocation
from looptrace.session import BlockEvent, Hotspot, LoopSummary, Session, TaskSummary

from ._html_assets import SCRIPT as _SCRIPT
from ._html_assets import STYLE as _STYLE
from ._spans import victim_line
from ._timeline_svg import render_svg
from .text import duration as _ms
from .text import short_path, victim_summary

CONTEXT_LINES = 3
"""Source lines shown above and below a hotspot's site."""
MAX_BLOCK_ROWS = 500
"""The blocks table shows the longest blocks up to this many (all are in the JSON)."""
MAX_TIMELINES = 20
"""Loops drawn as timelines (those with the most blocked time)."""
MAX_LOOP_ROWS = 200
"""Rows of the loops table (a pytest run has a loop per test); all are in the JSON."""

def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _num(value: float | None, text: str | None = None) -> str:
    """A numeric cell, sortable by its value."""
    shown = text if text is not None else ("n/a" if value is None else _e(value))
    data = "" if value is None else f' data-v="{value}"'
    return f'<td class="num"{data}>{shown}</td>'


def _site_html(site: CodeLocation | None) -> str:
    if site is None:
        return '<span class="none">site unknown</span>'
    return (f'<code title="{_e(site.file)}">{_e(short_path(site.file))}:{site.line}</code>'
            f' in <code>{_e(site.function)}</code>')


def source_excerpt(site: CodeLocation, recorded: str | None,
                   context: int = CONTEXT_LINES) -> list[tuple[int, str]]:
    """The lines around ``site`` as (number, text), read now; empty unless the file is
    Python source whose fingerprint is still ``recorded`` (the one the report was made
    from): an edited file, another machine, a crafted report naming any other file."""
    data = matching_source(site.file, recorded)
    if data is None:
        return []
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        lines = data.decode(encoding).splitlines()
    except (SyntaxError, UnicodeDecodeError, LookupError, ValueError):
        return []
    first = max(site.line - context, 1)
    last = min(site.line + context, len(lines))
    return [(n, lines[n - 1]) for n in range(first, last + 1)]


def _source_html(site: CodeLocation | None, sources: dict[str, str]) -> str:
    if site is None:
        return ""
    excerpt = source_excerpt(site, sources.get(site.file))
    if not excerpt:
        return (f'<p class="none">source of {_e(short_path(site.file))} not shown: not '
                "readable here, or not the source that ran</p>")
    rows = []
    for number, text in excerpt:
        hit = " hit" if number == site.line else ""
        rows.append(f'<span class="line{hit}"><span class="no">{number}</span>'
                    f"{_e(text.expandtabs(4))}</span>")
    return f'<pre class="source">{"".join(rows)}</pre>'


def _stack_html(stack: Sequence[CodeLocation]) -> str:
    if not stack:
        return ""
    items = "".join(f'<li><code title="{_e(frame.file)}">{_e(short_path(frame.file))}:'
                    f"{frame.line}</code> in <code>{_e(frame.function)}</code></li>"
                    for frame in stack)
    return (f"<details><summary>stack ({len(stack)} frames, innermost last)</summary>"
            f'<ol class="stack">{items}</ol></details>')


def _cards(session: Session) -> str:
    blocks = sum(h.count for h in session.hotspots)
    blocked = sum(h.total_ms for h in session.hotspots)
    worst = max((h.max_ms for h in session.hotspots), default=None)
    utilizations = [loop.utilization for loop in session.loops if loop.utilization is not None]
    lags = [loop.lag_ms.p99 for loop in session.loops if loop.lag_ms.p99 is not None]
    cards = [
        (_ms(session.wall_ms), "wall time recorded"),
        (str(len(session.loops)), "loops"),
        (str(blocks), f"blocks \u2265 {_ms(session.threshold_ms)}"),
        (_ms(blocked), "loop blocked, in total"),
        (_ms(worst), "longest block"),
        (f"{max(utilizations) * 100:.1f}%" if utilizations else "n/a",
         "utilisation (busiest loop)"),
        (_ms(max(lags)) if lags else "n/a", "lag p99 (worst loop)"),
    ]
    return '<div class="cards">' + "".join(
        f'<div class="card"><b>{_e(value)}</b><span>{_e(label)}</span></div>'
        for value, label in cards) + "</div>"


def _summary(session: Session) -> str:
    program = " ".join(session.argv) or "(unknown program)"
    rows = [
        ("program", f"<code>{_e(program)}</code>"),
        ("started", _e(session.started_at)),
        ("wall time", _e(_ms(session.wall_ms))),
        ("threshold", f"{_e(_ms(session.threshold_ms))} (a step this long or longer is a "
                      "block)"),
        ("mode", _e(session.mode)),
        ("Python", f"{_e(session.implementation)} {_e(session.python)} on "
                   f"{_e(session.platform)}, pid {session.pid}"),
        ("looptrace", f"{_e(session.looptrace_version)}"
                      f"{' (C accelerator)' if session.accelerated else ''}, "
                      f"{session.probes} probes"),
    ]
    table = "".join(f"<tr><th>{k}</th><td class=\"wrap\">{v}</td></tr>" for k, v in rows)
    return (f'<section id="summary"><h2>Summary</h2>{_cards(session)}'
            f'<table class="summary">{table}</table></section>')


def _ratio(loop: LoopSummary) -> str:
    if loop.busy_ms is None or loop.io_wait_ms is None:
        return ""
    total = loop.busy_ms + loop.io_wait_ms
    if total <= 0:
        return ""
    busy = loop.busy_ms / total * 100
    return (f'<div class="ratio" role="img" aria-label="busy {busy:.1f}%">'
            f'<svg viewBox="0 0 100 10" preserveAspectRatio="none" width="100%" height="10" '
            f'xmlns="http://www.w3.org/2000/svg"><rect x="0" y="0" width="{busy:.3f}" '
            f'height="10" fill="#e8710a"/><rect x="{busy:.3f}" y="0" '
            f'width="{100 - busy:.3f}" height="10" fill="#7baaf7"/></svg></div>')


def _loops(session: Session, numbered: Sequence[tuple[int, BlockEvent]]) -> str:
    if not session.loops:
        return ('<section id="loops"><h2>Loops</h2><p class="none">No event loop ran while '
                "looptrace was recording.</p></section>")
    head = ("<tr><th>loop</th><th>thread</th><th>kind</th><th class=\"num\">utilisation</th>"
            "<th class=\"num\">busy</th><th class=\"num\">io-wait</th>"
            "<th class=\"num\">iterations</th><th class=\"num\">steps</th>"
            "<th class=\"num\">blocks</th><th class=\"num\">lag p50</th>"
            "<th class=\"num\">lag p99</th><th class=\"num\">lag max</th>"
            "<th>not measurable</th></tr>")
    rows = []
    shown = session.loops
    if len(shown) > MAX_LOOP_ROWS:
        shown = tuple(sorted(sorted(shown, key=lambda loop: -loop.block_ms)[:MAX_LOOP_ROWS],
                             key=lambda loop: loop.id))
    for loop in shown:
        utilization = loop.utilization
        rows.append(
            f'<tr id="loop-{loop.id}"><td>{loop.id}</td><td>{_e(loop.thread)}</td>'
            f"<td>{_e(loop.kind)}</td>"
            + _num(utilization, f"{utilization * 100:.1f}%" if utilization is not None else None)
            + _num(loop.busy_ms, _ms(loop.busy_ms)) + _num(loop.io_wait_ms, _ms(loop.io_wait_ms))
            + _num(loop.iterations) + _num(loop.steps) + _num(loop.blocks)
            + _num(loop.lag_ms.p50, _ms(loop.lag_ms.p50))
            + _num(loop.lag_ms.p99, _ms(loop.lag_ms.p99))
            + _num(loop.lag_ms.max, _ms(loop.lag_ms.max))
            + f"<td>{_e(', '.join(loop.missing)) or '&mdash;'}</td></tr>")
    table = (f'<div class="scroll"><table class="sortable" id="loop-table"><thead>{head}'
             f"</thead><tbody>{''.join(rows)}</tbody></table></div>")
    timelines = session.timeline.loops if session.timeline is not None else ()
    by_loop = {t.loop: t for t in timelines}
    drawn = sorted(session.loops, key=lambda loop: (-loop.block_ms, -(loop.busy_ms or 0.0),
                                                    loop.id))[:MAX_TIMELINES]
    figures = []
    for loop in sorted(drawn, key=lambda loop: loop.id):
        own = [(n, b) for n, b in numbered if b.loop == loop.id]
        figures.append(
            f"<h3>Loop {loop.id} <small>({_e(loop.thread)}, {_e(loop.kind)})</small></h3>"
            + _ratio(loop)
            + render_svg(loop.id, session.wall_ms, by_loop.get(loop.id), own))
    legend = ('<div class="legend"><span><i class="busy"></i>busy (running steps)</span>'
              '<span><i class="idle"></i>io-wait (in select)</span>'
              '<span><i class="block"></i>block (hover for details, click for its row)'
              "</span></div>")
    more = ""
    if len(shown) < len(session.loops):
        more += (f'<p class="none">The table shows the {MAX_LOOP_ROWS} loops with the most '
                 f"blocked time of {len(session.loops)}; the JSON report has them all.</p>")
    if len(session.loops) > MAX_TIMELINES:
        more += (f'<p class="none">Timelines of the {MAX_TIMELINES} loops with the most '
                 f"blocked time are drawn.</p>")
    return (f'<section id="loops"><h2>Loops</h2>{table}<h2 id="timeline">Timeline</h2>'
            f"{legend}{''.join(figures)}{more}</section>")


def _hotspots(hotspots: Sequence[Hotspot], threshold_ms: float,
              sources: dict[str, str]) -> str:
    if not hotspots:
        return (f'<section id="hotspots"><h2>Hotspots</h2><p class="none">No block of the '
                f"loop at or over {_e(_ms(threshold_ms))}.</p></section>")
    head = ("<tr><th class=\"num\">#</th><th>kind</th><th>call</th><th>site</th>"
            "<th class=\"num\">count</th><th class=\"num\">total</th><th class=\"num\">max</th>"
            "<th class=\"num\">p50</th><th>task</th></tr>")
    rows = []
    for number, hotspot in enumerate(hotspots, start=1):
        task = hotspot.task or "?"
        if hotspot.coroutine:
            task += f" ({hotspot.coroutine})"
        call = (f"<code>{_e(hotspot.call)}</code>" if hotspot.call
                else '<span class="none">no blocking function named</span>')
        rows.append(
            f'<tr id="hotspot-{number}">' + _num(number)
            + f'<td class="kind-{_e(hotspot.kind)}">{_e(hotspot.kind)}</td><td>{call}</td>'
            f'<td class="wrap site">{_site_html(hotspot.site)}</td>'
            + _num(hotspot.count) + _num(hotspot.total_ms, _ms(hotspot.total_ms))
            + _num(hotspot.max_ms, _ms(hotspot.max_ms)) + _num(hotspot.p50_ms, _ms(hotspot.p50_ms))
            + f'<td class="wrap">{_e(task)}</td></tr>')
        advice = (f'<p class="advice"><b>fix:</b> {_e(hotspot.advice)}</p>'
                  if hotspot.advice else "")
        rows.append(f'<tr class="detail"><td></td><td colspan="8">{advice}'
                    f"{_source_html(hotspot.site, sources)}{_stack_html(hotspot.stack)}</td></tr>")
    return (f'<section id="hotspots"><h2>Hotspots <small>(by total time)</small></h2>'
            f'<div class="scroll"><table class="sortable" id="hotspot-table"><thead>{head}'
            f"</thead><tbody>{''.join(rows)}</tbody></table></div></section>")


def numbered_blocks(blocks: Iterable[BlockEvent]) -> list[tuple[int, BlockEvent]]:
    """Blocks in time order, numbered from 1 (the numbers link timeline and table)."""
    return list(enumerate(sorted(blocks, key=lambda b: b.start_ms), start=1))


def _blocks(numbered: Sequence[tuple[int, BlockEvent]], dropped: int) -> str:
    if not numbered:
        return ""
    shown = numbered
    note = ""
    if len(numbered) > MAX_BLOCK_ROWS:
        shown = sorted(sorted(numbered, key=lambda nb: -nb[1].duration_ms)[:MAX_BLOCK_ROWS])
        note = (f'<p class="none">The {MAX_BLOCK_ROWS} longest of {len(numbered)} blocks; '
                "the JSON report has them all.</p>")
    if dropped:
        note += (f'<p class="none">{dropped} older blocks were not kept individually '
                 "(max_blocks); the hotspot figures count them.</p>")
    head = ("<tr><th class=\"num\">#</th><th class=\"num\">start</th>"
            "<th class=\"num\">duration</th><th>kind</th><th>call</th><th>site</th>"
            "<th>task</th><th class=\"num\">loop</th><th>trace</th>"
            "<th class=\"num\">delayed</th></tr>")
    rows = []
    for number, block in shown:
        task = block.task or block.callback or "?"
        trace = (f'<code title="span {_e(block.span_id)}">{_e(block.trace_id)}</code>'
                 if block.trace_id else "")
        rows.append(
            f'<tr id="block-{number}">' + _num(number)
            + _num(block.start_ms, f"+{_ms(block.start_ms)}")
            + _num(block.duration_ms, _ms(block.duration_ms))
            + f'<td class="kind-{_e(block.kind)}">{_e(block.kind)}</td>'
            f"<td>{_e(block.call or '')}</td><td class=\"wrap\">{_site_html(block.site)}</td>"
            f'<td class="wrap">{_e(task)}</td>' + _num(block.loop)
            + f"<td>{trace}</td>" + _victims_cell(block) + "</tr>")
    return (f'<section id="blocks"><h2>Blocks</h2>{note}<div class="scroll"><table '
            f'class="sortable" id="block-table"><thead>{head}</thead><tbody>{"".join(rows)}'
            "</tbody></table></div>"
            "</section>")


def _victims_cell(block: BlockEvent) -> str:
    """Who the block delayed: the count, opening to the figures and the longest delayed
    (sortable by the count; "n/a" where not measured, e.g. on uvloop)."""
    if block.victims is None:
        return _num(None)
    if not block.victims:
        return _num(0, "0")
    items = "".join(f"<li>{_e(victim_line(v))}</li>" for v in block.victim_detail)
    more = block.victims - len(block.victim_detail)
    if more > 0:
        items += f'<li class="none">and {more} more</li>'
    summary = victim_summary([block]) or ""
    return (f'<td class="num wrap" data-v="{block.victims}"><details><summary>'
            f"{block.victims}</summary><p>{_e(summary)}</p><ol>{items}</ol></details></td>")


_TASK_TIME_HEAD = "".join(
    f'<th class="num">{name}</th>' for name in (
        "scheduled", "idle", "longest step", "self-wakes", "created", "done", "cancelled",
        "pending at close", "destroyed pending", "exception never retrieved")) + "<th>warnings</th>"


def _ms_cell(value: float | None) -> str:
    return _num(value, _ms(value) if value is not None else None)


def _task_time_cells(task: TaskSummary) -> str:
    """Full mode's columns: where the task's time went besides its steps, its life, and
    its warnings (tokio-console's)."""
    return (_ms_cell(task.scheduled_ms) + _ms_cell(task.idle_ms) + _ms_cell(task.max_step_ms)
            + "".join(_num(n) for n in (
                task.self_wakes, task.created, task.done, task.cancelled,
                task.pending_at_close, task.destroyed_pending,
                task.exception_never_retrieved))
            + f'<td class="wrap">{_e(", ".join(task.warnings))}</td>')


def _tasks(session: Session) -> str:
    if not session.tasks:
        return ""
    full = session.mode == "full"
    head = ("<tr><th>task</th><th>kind</th><th>coroutine</th><th class=\"num\">steps</th>"
            "<th class=\"num\">busy</th><th class=\"num\">blocks</th>"
            "<th class=\"num\">blocked</th><th class=\"num\">longest block</th>"
            + (_TASK_TIME_HEAD if full else "") + "</tr>")
    rows = [
        f'<tr><td class="wrap task-name">{_e(task.name)}</td><td>{_e(task.kind)}</td>'
        f'<td class="wrap">{_e(task.coroutine or "")}</td>'
        + _num(task.steps) + _ms_cell(task.busy_ms)
        + _num(task.blocks) + _num(task.block_ms, _ms(task.block_ms))
        + _num(task.max_block_ms, _ms(task.max_block_ms))
        + (_task_time_cells(task) if full else "") + "</tr>"
        for task in session.tasks
    ]
    note = ("" if session.mode == "full" else
            '<p class="none">Steps and busy time per task are recorded in full mode; '
            "default mode counts blocks only.</p>")
    return (f'<section id="tasks"><h2>Tasks</h2>{note}<div class="scroll"><table '
            f'class="sortable" id="task-table"><thead>{head}</thead><tbody>{"".join(rows)}'
            "</tbody></table></div>"
            "</section>")


def _executors(session: Session) -> str:
    """The executor calls per site (most queue wait first), each with the pool verdict."""
    if not session.executors:
        return ""
    head = ("<tr><th>function</th><th>site</th><th class=\"num\">calls</th>"
            "<th class=\"num\">queue wait</th><th class=\"num\">longest wait</th>"
            "<th class=\"num\">run</th><th class=\"num\">longest run</th>"
            "<th class=\"num\">workers</th><th class=\"num\">peak queue</th>"
            "<th>task</th><th>trace</th></tr>")
    rows = []
    for row in session.executors:
        trace = (f'<code title="span {_e(row.span_id)}">{_e(row.trace_id)}</code>'
                 if row.trace_id else "")
        rows.append(
            f'<tr><td class="wrap"><code>{_e(row.function)}</code></td>'
            f'<td class="wrap site">{_site_html(row.site)}</td>' + _num(row.calls)
            + _num(row.queue_ms, _ms(row.queue_ms)) + _num(row.max_queue_ms, _ms(row.max_queue_ms))
            + _num(row.run_ms, _ms(row.run_ms)) + _num(row.max_run_ms, _ms(row.max_run_ms))
            + _num(row.workers) + _num(row.peak_queue_depth)
            + f'<td class="wrap">{_e(", ".join(row.tasks) or row.task or "")}</td>'
            f"<td>{trace}</td></tr>")
        if row.warning:
            rows.append(f'<tr class="detail"><td colspan="11"><p class="advice"><b>warning:</b> '
                        f"{_e(row.warning)}</p></td></tr>")
    return ('<section id="executors"><h2>Executor calls <small>(run_in_executor, to_thread; '
            'by queue wait)</small></h2><p class="none">Queue wait: from the call to a free '
            "worker starting it; run: the function itself; tasks: the awaiting tasks; trace: "
            'the request of the call that waited longest.</p><div class="scroll">'
            f'<table class="sortable" id="executor-table"><thead>{head}</thead>'
            f'<tbody>{"".join(rows)}</tbody></table>'
            "</div></section>")


def _exemptions(session: Session) -> str:
    if not session.exemptions:
        return ""
    rows = "".join(f"<tr><td><code>{_e(x.rule)}</code></td>" + _num(x.count)
                   + f'<td class="wrap">{_e(x.test or "")}</td></tr>'
                   for x in session.exemptions)
    return ('<section id="exemptions"><h2>Exemptions used</h2><p>Blocks over a test\'s '
            "budget that an <code>allow=</code> rule let pass.</p>"
            '<table class="sortable"><thead><tr><th>rule</th><th class="num">blocks</th>'
            f"<th>test</th></tr></thead><tbody>{rows}</tbody></table></section>")


def _notes(session: Session) -> str:
    items = [f"<li>{_e(what)}: {count} dropped (bounded buffers)</li>"
             for what, count in sorted(session.dropped.items()) if count]
    items += [f"<li>hook <code>{_e(f.hook)}</code> failed {f.count}\u00d7 and was disabled: "
              f"{_e(f.error)}</li>" for f in session.faults]
    if not items:
        return ""
    return f'<section id="notes"><h2>Notes</h2><ul>{"".join(items)}</ul></section>'


def render(session: Session) -> str:
    """The HTML document for ``session``."""
    numbered = numbered_blocks(session.blocks)
    csp = (f"default-src 'none'; style-src {_csp_hash(_STYLE)}; "
           f"script-src {_csp_hash(_SCRIPT)}; img-src data:; base-uri 'none'; "
           "form-action 'none'")
    program = " ".join(session.argv) or "python"
    body = "".join([
        f"<h1>looptrace report</h1><p class=\"sub\"><code>{_e(program)}</code> &middot; "
        f"{_e(session.started_at)}</p>",
        '<nav class="sub"><a href="#summary">summary</a> &middot; <a href="#loops">loops</a>'
        ' &middot; <a href="#timeline">timeline</a> &middot; <a href="#hotspots">hotspots</a>'
        ' &middot; <a href="#blocks">blocks</a> &middot; <a href="#tasks">tasks</a></nav>',
        _summary(session),
        _loops(session, numbered),
        _hotspots(session.hotspots, session.threshold_ms, session.sources),
        _blocks(numbered, session.dropped.get("blocks", 0)),
        _tasks(session),
        _executors(session),
        _exemptions(session),
        _notes(session),
        f"<footer>looptrace {_e(session.looptrace_version)}, report schema "
        f"{_e(session.schema)}</footer>",
    ])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>looptrace: {_e(program)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}<script>{_SCRIPT}</script></body></html>\n"
    )

"""The HTML report's inline style sheet and its one script (sorting only).

Both are written into the page as they are; the page's Content-Security-Policy allows
exactly these two by their SHA-256, so any change here is picked up by the hash.
"""

STYLE = """
:root { --busy: #e8710a; --idle: #7baaf7; --block: #d93025; --ink: #202124;
  --muted: #5f6368; --rule: #dadce0; --bg: #ffffff; --band: #f8f9fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--ink); background: var(--bg); margin: 0 auto; padding: 16px 24px 48px;
  max-width: 1280px; }
h1 { font-size: 22px; margin: 8px 0 4px; }
h2 { font-size: 18px; margin: 32px 0 8px; border-bottom: 1px solid var(--rule);
  padding-bottom: 4px; }
h3 { font-size: 15px; margin: 16px 0 4px; }
code, pre, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas,
  monospace; font-size: 12.5px; }
.sub { color: var(--muted); margin: 0 0 12px; overflow-wrap: anywhere; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0; }
.card { border: 1px solid var(--rule); border-radius: 8px; padding: 8px 14px;
  min-width: 140px; background: var(--band); }
.card b { display: block; font-size: 20px; }
.card span { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; width: 100%; margin: 8px 0; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--rule);
  vertical-align: top; }
th { background: var(--band); font-weight: 600; }
th.sortable { cursor: pointer; }
th.sortable::after { content: "\\00a0\\2195"; color: var(--muted); font-size: 11px; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
td.wrap { overflow-wrap: anywhere; min-width: 10em; }
.scroll { overflow-x: auto; }
tr.detail td { background: var(--band); border-bottom: 2px solid var(--rule); }
.kind-blocking-call { color: var(--block); font-weight: 600; white-space: nowrap; }
.kind-slow-step { color: var(--busy); font-weight: 600; white-space: nowrap; }
pre.source { margin: 6px 0; padding: 6px 0; background: #fff;
  border: 1px solid var(--rule); border-radius: 6px; overflow-x: auto; }
pre.source span.line { display: block; padding: 0 10px; white-space: pre; }
pre.source span.hit { background: #fce8e6; font-weight: 600; }
pre.source span.no { display: inline-block; min-width: 4em; color: var(--muted);
  user-select: none; }
details summary { cursor: pointer; color: var(--muted); }
ol.stack { margin: 4px 0; padding-left: 24px; }
.advice { margin: 4px 0; }
.legend { display: flex; gap: 16px; color: var(--muted); font-size: 12px; margin: 4px 0; }
.legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px;
  vertical-align: -2px; border-radius: 2px; }
.legend .busy { background: var(--busy); } .legend .idle { background: var(--idle); }
.legend .block { background: var(--block); }
svg.timeline { width: 100%; height: auto; display: block; margin: 4px 0 12px; }
svg.timeline .lane { font-size: 11px; fill: var(--muted); }
svg.timeline .note { font-size: 11px; fill: var(--muted); }
svg.timeline .axis { font-size: 10px; fill: var(--muted); }
svg.timeline .tick { stroke: var(--muted); stroke-width: 1; }
svg.timeline .lane-bg { fill: var(--band); stroke: var(--rule); stroke-width: 0.5; }
svg.timeline .busy { fill: var(--busy); }
svg.timeline .idle { fill: var(--idle); }
svg.timeline .block { fill: var(--block); }
svg.timeline a:hover .block { fill: #a50e0e; }
.ratio { display: flex; height: 10px; border-radius: 5px; overflow: hidden;
  background: var(--rule); max-width: 420px; margin: 4px 0; }
.ratio .busy { background: var(--busy); } .ratio .idle { background: var(--idle); }
.none { color: var(--muted); font-style: italic; }
tr:target td { background: #fef7e0; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""

# Sorting only: every table is complete without it. Numbers sort by data-v when present.
SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.querySelectorAll("thead th");
  heads.forEach(function (th, column) {
    th.classList.add("sortable");
    th.addEventListener("click", function () {
      var body = table.tBodies[0];
      var groups = [];
      Array.prototype.forEach.call(body.rows, function (row) {
        if (row.classList.contains("detail") && groups.length) {
          groups[groups.length - 1].push(row);
        } else {
          groups.push([row]);
        }
      });
      var descending = th.getAttribute("data-order") !== "desc";
      heads.forEach(function (h) { h.removeAttribute("data-order"); });
      th.setAttribute("data-order", descending ? "desc" : "asc");
      function key(group) {
        var cell = group[0].cells[column];
        if (!cell) { return ""; }
        var v = cell.getAttribute("data-v");
        return v === null ? cell.textContent.trim().toLowerCase() : parseFloat(v);
      }
      groups.sort(function (a, b) {
        var x = key(a), y = key(b);
        var order = x < y ? -1 : (x > y ? 1 : 0);
        return descending ? -order : order;
      });
      groups.forEach(function (group) {
        group.forEach(function (row) { body.appendChild(row); });
      });
    });
  });
});
"""

"""The fixed text of report.html: the page template, its style sheet, the error guard and the page's script.

:mod:`sweep.results.report` fills the template (``str.format`` fields: ``title``, ``style``, ``guard``,
``header``, ``controls``, ``details``, ``table``, ``count``, ``data``, ``plotly``, ``script``; so the CSS and
the script are inserted as values, never formatted themselves). The script reads the page's JSON payload
(``views``, ``trials``, ``curves``, ``curve_keys``, ``initial``) and draws it with Plotly.
"""

from __future__ import annotations

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
<script>{guard}</script>
</head>
<body>
<div id="errors" hidden></div>
{header}
<main>
<section id="fronts">
{controls}
<div class="fronts-row">
<div id="plot"></div>
<aside id="detail">
<p class="note">Hover a point for its trial; click a point or a table row to pin it (click again to unpin).</p>
<div id="detail-body">{details}</div>
<div class="curve-controls"><b>Learning curve</b> <select id="curve-key"></select>
<span id="no-curves" class="note" hidden>none in this report: its per-step metrics were not collected</span></div>
<div id="curves"></div>
</aside>
</div>
</section>
<section id="trials">
<h2>Trials ({count})</h2>
<p class="note">Click a column header to sort; means ± 95 % half-width over the replicates.</p>
{table}
</section>
</main>
<script id="report-data" type="application/json">{data}</script>
<script>{plotly}</script>
<script>{script}</script>
</body>
</html>
"""

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 16px 32px; color: #222; }
h1 { font-size: 20px; margin: 12px 0 8px; }
h2 { font-size: 17px; margin: 20px 0 4px; }
h3 { font-size: 15px; margin: 4px 0; }
h4 { font-size: 13px; margin: 10px 0 2px; color: #444; }
code, pre { font: 12px/1.35 ui-monospace, monospace; }
.header-grid { display: grid; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); gap: 16px; align-items: start; }
table.facts th { text-align: left; padding-right: 12px; white-space: nowrap; vertical-align: top; color: #555; }
table.facts td { word-break: break-word; }
table.volumes { border-collapse: collapse; }
table.volumes th, table.volumes td { padding: 1px 8px; border-bottom: 1px solid #ddd; text-align: right; }
table.volumes td:first-child, table.volumes th:first-child { text-align: left; }
details pre { max-height: 300px; overflow: auto; background: #f6f6f6; padding: 6px; }
.note { color: #666; font-size: 12px; }
.controls { display: flex; flex-wrap: wrap; gap: 6px 24px; align-items: center; margin: 12px 0 4px; }
.controls label { margin-right: 10px; white-space: nowrap; cursor: pointer; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin: 0 4px 0 2px; }
.fronts-row { display: flex; gap: 16px; align-items: flex-start; }
#plot { flex: 3 1 0; min-width: 0; }
#detail { flex: 2 1 0; min-width: 320px; border-left: 1px solid #ddd; padding-left: 12px; }
#detail-body { max-height: 360px; overflow: auto; }
#detail.pinned { border-left: 3px solid #0072B2; }
pre.prompt { background: #f6f6f6; padding: 4px 6px; white-space: pre-wrap; word-break: break-all; margin: 4px 0; }
table.kv { border-collapse: collapse; font-size: 12px; }
table.kv th { text-align: left; font-weight: normal; color: #444; padding-right: 10px; }
table.kv td { text-align: right; padding: 0 6px; font-variant-numeric: tabular-nums; }
table.kv td.note { text-align: left; }
.badge { display: inline-block; font-size: 11px; padding: 0 6px; border-radius: 8px; margin-right: 4px; }
.badge.front { background: #dbeafe; } .badge.all { background: #dcfce7; } .badge.gamed { background: #fde2e2; }
.badge.stopped { background: #eeeeee; }
.curve-controls { margin-top: 8px; }
#trials-table { border-collapse: collapse; font-size: 12px; width: 100%; }
#trials-table th { position: sticky; top: 0; background: #f0f0f0; cursor: pointer; padding: 3px 6px; text-align: left; }
#trials-table th[data-dir="asc"]::after { content: " ▲"; } #trials-table th[data-dir="desc"]::after { content: " ▼"; }
#trials-table td { padding: 2px 6px; border-bottom: 1px solid #eee; white-space: nowrap; }
#trials-table td[data-v]:not(:nth-child(-n+3)) { font-variant-numeric: tabular-nums; }
#trials-table tbody tr { cursor: pointer; } #trials-table tbody tr:hover { background: #f5f9ff; }
#trials-table tr.pinned { background: #dbeafe; }
#trials-table tr.stopped { color: #888; }
#errors { background: #fde2e2; color: #900; padding: 8px; margin: 8px 0; }
"""

# Runs before anything else: a failure of the charts shows on the page (and in data-errors, for the tests).
GUARD = """
window.reportErrors = [];
function reportError(message) {
  window.reportErrors.push(String(message));
  document.documentElement.dataset.errors = String(window.reportErrors.length);
  var box = document.getElementById("errors");
  if (box) { box.hidden = false; box.textContent = "This page failed to draw: " + window.reportErrors.join("; "); }
}
window.addEventListener("error", function (e) { reportError(e.message); });
window.addEventListener("unhandledrejection", function (e) { reportError(e.reason); });
"""

SCRIPT = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var section = document.getElementById("fronts"), plot = document.getElementById("plot");
  var curves = document.getElementById("curves"), keySelect = document.getElementById("curve-key");
  var config = {responsive: true, displaylogo: false, modeBarButtonsToRemove: ["select2d", "lasso2d"]};
  // report.html#dev opens on the dev view, so a link can point at either.
  document.querySelectorAll("input[name=view]").forEach(function (radio) {
    if ("#" + radio.value === location.hash) radio.checked = true;
  });
  var hidden = new Set(), view = document.querySelector("input[name=view]:checked").value;
  var shown = data.initial, pinned = null;
  // Trials a scheduler stopped at a rung: shown (faded, dev view) unless their box is cleared.
  var stoppedBox = document.getElementById("show-stopped"), showStopped = !stoppedBox || stoppedBox.checked;

  function visible(t) { return !hidden.has(t.meta.group) && (showStopped || !t.meta.stopped); }
  var DASHES = ["solid", "dot", "dash"];  // one per replicate, so overlapping curves stay apart

  // The pinned trial gets a ring on each of its points in the current view.
  function ring() {
    var x = [], y = [];
    data.views[view].data.forEach(function (t) {
      if (pinned === null || !t.meta.counts || !visible(t)) return;
      t.customdata.forEach(function (row, i) { if (row === pinned) { x.push(t.x[i]); y.push(t.y[i]); } });
    });
    return {type: "scatter", mode: "markers", x: x, y: y, hoverinfo: "skip", showlegend: false, meta: {},
            marker: {size: 20, color: "rgba(0,0,0,0)", line: {color: "#222", width: 2}}};
  }

  function countDrawn() {
    var rows = new Set();
    data.views[view].data.forEach(function (t) {
      if (!t.meta.counts || !visible(t)) return;
      t.customdata.forEach(function (row, i) { if (row >= 0 && t.x[i] !== null && t.y[i] !== null) rows.add(row); });
    });
    section.dataset.view = view;
    section.dataset.drawnTrials = String(rows.size);
    section.dataset.drawnPoints = String(plot.querySelectorAll(".scatterlayer path.point").length);
    document.getElementById("drawn-note").textContent = rows.size + " of " + data.trials.length + " trials drawn";
  }

  function draw() {
    var traces = data.views[view].data.map(function (t) {
      return Object.assign({}, t, {visible: visible(t)});
    });
    traces.push(ring());
    return Plotly.react(plot, traces, data.views[view].layout, config).then(countDrawn);
  }

  function drawCurves() {
    if (!data.curve_keys.length) return;
    var key = keySelect.value, traces = [], series = (shown !== null && data.curves[shown]) || {};
    Object.keys(series).sort().forEach(function (name) {
      if (name.replace(/^rep\\d+\\//, "") !== key) return;
      var replicate = Number((name.match(/^rep(\\d+)\\//) || [0, 0])[1]);
      traces.push({type: "scatter", mode: "lines+markers", name: name.split("/")[0], x: series[name][0],
                   y: series[name][1], line: {color: data.trials[shown].color, dash: DASHES[replicate % 3]}});
    });
    var empty = shown === null ? "no trial" : "no per-step " + key + " for this trial (baselines train nothing)";
    var drawn = traces.length > 0;
    curves.dataset.lines = String(traces.length);
    Plotly.react(curves, traces, {
      template: "plotly_white", height: 260, margin: {l: 55, r: 10, t: 10, b: 40}, showlegend: traces.length > 1,
      xaxis: {title: {text: "step"}, visible: drawn}, yaxis: {title: {text: key}, visible: drawn},
      annotations: traces.length ? [] : [{text: empty, showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5}]
    }, {responsive: true, displayModeBar: false});
  }

  function show(row) {
    shown = row;
    document.querySelectorAll("#detail-body .trial").forEach(function (div) {
      div.hidden = Number(div.dataset.row) !== row;
    });
    drawCurves();
  }

  function pin(row) {
    pinned = pinned === row ? null : row;
    show(row);
    document.getElementById("detail").classList.toggle("pinned", pinned !== null);
    document.querySelectorAll("#trials-table tbody tr").forEach(function (tr) {
      tr.classList.toggle("pinned", Number(tr.dataset.row) === pinned);
    });
    draw();
  }

  function filterRows() {
    document.querySelectorAll("#trials-table tbody tr").forEach(function (tr) {
      tr.hidden = hidden.has(tr.dataset.group) || (!showStopped && tr.dataset.stopped === "1");
    });
  }

  function pointRow(event) { return event.points.length ? event.points[0].customdata : -1; }

  data.curve_keys.forEach(function (key) { keySelect.append(new Option(key, key)); });
  keySelect.hidden = curves.hidden = !data.curve_keys.length;
  document.getElementById("no-curves").hidden = data.curve_keys.length > 0;
  keySelect.addEventListener("change", drawCurves);
  document.querySelectorAll("input[name=view]").forEach(function (radio) {
    radio.addEventListener("change", function () { view = radio.value; draw(); });
  });
  document.querySelectorAll(".tuner-toggle").forEach(function (box) {
    box.addEventListener("change", function () {
      if (box.checked) { hidden.delete(box.value); } else { hidden.add(box.value); }
      filterRows();
      draw();
    });
  });
  if (stoppedBox) {
    stoppedBox.addEventListener("change", function () { showStopped = stoppedBox.checked; filterRows(); draw(); });
  }
  document.querySelectorAll("#trials-table tbody tr").forEach(function (tr) {
    tr.addEventListener("click", function () { pin(Number(tr.dataset.row)); });
  });
  document.querySelectorAll("#trials-table th").forEach(function (th, column) {
    th.addEventListener("click", function () {
      var body = th.closest("table").tBodies[0], numeric = th.dataset.type === "num";
      var sign = th.dataset.dir === "asc" ? -1 : 1;
      th.parentNode.querySelectorAll("th").forEach(function (other) { delete other.dataset.dir; });
      th.dataset.dir = sign === 1 ? "asc" : "desc";
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var p = a.cells[column].dataset.v, q = b.cells[column].dataset.v;
        if (!numeric) return sign * p.localeCompare(q);
        // Missing values last in either direction.
        if (p === "" || q === "") return (p === "") - (q === "");
        return sign * (Number(p) - Number(q));
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });

  draw().then(function () {
    plot.on("plotly_hover", function (e) { var row = pointRow(e); if (pinned === null && row >= 0) show(row); });
    plot.on("plotly_click", function (e) { var row = pointRow(e); if (row >= 0) pin(row); });
    show(data.initial);
  });
})();
"""

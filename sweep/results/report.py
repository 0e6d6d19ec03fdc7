"""The sweep report: ``report.html``, one self-contained page per sweep that a reader opens in any browser.

:func:`write_report` draws what :func:`sweep.results.report_data.compute_report` computes from the annotated
trials table and its :class:`~sweep.results.pareto.Fronts`: a header (config, package versions, git commit,
timings, hypervolumes), the fronts of every tuner with the baselines and the replicate intervals in the
figure's two views (the same :class:`~sweep.results.figure.ParetoPlot` the paper figure draws, so both show the
same points; :mod:`sweep.results.report_plotly`), a sortable trials table, and each trial's learning curves from
the per-step MLflow metrics that :func:`sweep.mlflow_log.collect_curves` reads. Hovering a point shows its
trial (prompt, weights, every metric, the proxy-gaming signals); a click pins it. Nothing is loaded at view
time: the charting library, the data and the page's own script (:mod:`sweep.results.report_assets`) are inline.

The charts use Plotly (``plotly.js`` from the ``plotly`` wheel, inlined). It is the larger option (about
4.8 MB of JavaScript per page, where Vega-Lite would need about 1 MB), but Vega-Lite's inline bundle comes
only through ``vl-convert-python``, a far heavier dependency than the page it saves, and Plotly's event API
(hover, click, redraw) lets the hand-written script stay a plain page script of about a hundred lines.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sweep.mlflow_log import Curves
from sweep.results.columns import TUNER
from sweep.results.pareto import Fronts
from sweep.results.report_assets import GUARD, PAGE, SCRIPT, STYLE
from sweep.results.report_data import Header, ReportData, Style, Trial, compute_report
from sweep.results.report_plotly import plotly_views

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"


def write_report(
    table: pd.DataFrame,
    fronts: Fronts,
    out: Path,
    *,
    curves: Curves | None,
    header: Mapping[str, Any],
    labels: Mapping[str, str] | None = None,
    stopped: pd.DataFrame | None = None,
) -> Path:
    """Write ``out/report.html`` (``out`` is created) and return its path.

    ``table`` is the annotated trials table of :func:`sweep.results.exports.write_exports` (``beats/*`` and
    ``vs/*`` columns are shown where present) and ``fronts`` its fronts; ``curves`` maps MLflow run ids to their
    per-step metrics (:func:`sweep.mlflow_log.collect_curves`; ``None``: no learning curves); ``header`` holds
    what ``sweep.json`` holds (every key optional: ``config``, ``versions``, ``git_commit``, ``timings``,
    ``status``, ``trials_*``, ``summary_metrics`` ...). ``labels`` override the axis labels. ``stopped``: the
    trials a scheduler stopped at a rung, listed after the others and drawn faded on the dev view (a toggle hides
    them), never on a front. NaN and infinite values are shown as missing.
    """
    data = compute_report(table, fronts, curves=curves, header=header, labels=labels, stopped=stopped)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT_FILE
    path.write_text(page_html(data), encoding="utf-8")
    logger.info("wrote %s (%.1f MB, %d trials)", path, path.stat().st_size / 1e6, len(data.trials))
    return path


def page_html(data: ReportData) -> str:
    """The whole page of ``data``: every text escaped here, once, as it is written into HTML or JSON."""
    from plotly.offline import get_plotlyjs

    views = plotly_views(data)
    payload = {
        "views": views,
        "trials": [{TUNER: t.tuner, "color": t.color} for t in data.trials],
        "curves": data.curves,
        "curve_keys": list(data.curve_keys),
        "initial": data.initial,
    }
    return PAGE.format(
        title=_esc(data.title),
        style=STYLE,
        guard=GUARD,
        header=_header_html(data.header),
        controls=_controls_html(data.styles, list(views), sum(t.stopped_at is not None for t in data.trials)),
        details="".join(_detail_html(t) for t in data.trials),
        table=_trials_table_html(data),
        count=len(data.trials),
        data=_script_json(payload),
        plotly=get_plotlyjs(),
        script=SCRIPT,
    )


# --- JSON for the page -----------------------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    """``value`` with every non-finite float as ``None`` (JSON has no NaN) and numpy scalars as Python ones."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else None
    if value is None or value is pd.NA or isinstance(value, str):
        return None if value is pd.NA else value
    return str(value)


def _script_json(value: Any) -> str:
    """JSON that is safe inside ``<script>``: ``<``, ``>`` and ``&`` escaped, so a prompt holding
    ``</script>`` cannot end the element, and the two line separators JavaScript once rejected escaped too."""
    text = json.dumps(_json_safe(value), allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028")):
        text = text.replace(char, escape)
    return text.replace("\u2029", "\\u2029")


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _pretty(value: Any) -> str:
    return json.dumps(_json_safe(value), indent=2, ensure_ascii=False, allow_nan=False)


# --- HTML ------------------------------------------------------------------------------------------------------


def _header_html(header: Header) -> str:
    rows = "".join(
        f"<tr><th>{label}</th><td>{f'<code>{_esc(text)}</code>' if code else _esc(text)}</td></tr>"
        for label, text, code in header.facts
    )
    volume_html = ""
    if header.volumes:
        head, *body = header.volumes
        volume_html = (
            '<table class="volumes"><tr>'
            + "".join(f"<th>{_esc(h)}</th>" for h in head)
            + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in cells) + "</tr>" for cells in body)
            + "</table>"
            f'<p class="note">Reference point: {_esc(header.reference)}. Baselines are references, never part of '
            "an area. “Front beats”: the share of a tuner's front prompts whose test accuracy beats the baseline "
            "beyond the paired 95 % interval."
            + (
                " “Training gain”: the final greedy prompt's dev accuracy minus the untrained policy's, mean ± 95 % "
                "interval over replicates (each averaged over the tuner's trials): what training gained apart "
                "from selection."
                if header.learns
                else ""
            )
            + "</p>"
        )
    elif header.note:
        volume_html = f'<p class="note">{_esc(header.note)}</p>'
    details = ""
    if header.config:
        details += f"<details><summary>config</summary><pre>{_esc(_pretty(header.config))}</pre></details>"
    if header.rest:
        details += f"<details><summary>all sweep fields</summary><pre>{_esc(_pretty(header.rest))}</pre></details>"
    return (
        f"<header><h1>Sweep <code>{_esc(header.name)}</code></h1>"
        f'<div class="header-grid"><table class="facts">{rows}</table><div>{volume_html}{details}</div></div>'
        "</header>"
    )


def _controls_html(styles: Mapping[str, Style], views: Sequence[str], stopped: int) -> str:
    names = {"test": "test (held-out)", "dev": "dev (searched)"}
    radios = "".join(
        f'<label><input type="radio" name="view" value="{v}"{" checked" if i == 0 else ""}> {names[v]}</label>'
        for i, v in enumerate(views)
    )
    boxes = "".join(
        f'<label><input type="checkbox" class="tuner-toggle" value="{_esc(t)}" checked>'
        f'<span class="swatch" style="background:{_esc(style.color)}"></span>{_esc(style.label)}</label>'
        for t, style in styles.items()
    )
    if stopped:
        # Shown by default: what the scheduler cut is part of what the search did, faded so no one reads a front.
        boxes += (
            '<label title="trials the scheduler stopped at a rung, at their values there (dev view only)">'
            f'<input type="checkbox" id="show-stopped" checked> {stopped} stopped at a rung</label>'
        )
    return (
        f'<div class="controls"><span class="group"><b>View</b> {radios}</span>'
        f'<span class="group"><b>Show</b> {boxes}</span><span id="drawn-note" class="note"></span></div>'
    )


def _kv(rows: Sequence[Sequence[str]], *, note_last: bool = False) -> str:
    """``<tr><th>first</th><td>rest</td>...</tr>`` rows, escaped; ``note_last`` marks the last cell a note."""
    out = ""
    for first, *rest in rows:
        cells = [
            f"<td class='note'>{_esc(c)}</td>" if note_last and i == len(rest) - 1 else f"<td>{_esc(c)}</td>"
            for i, c in enumerate(rest)
        ]
        out += f"<tr><th>{_esc(first)}</th>{''.join(cells)}</tr>"
    return out


def _detail_html(trial: Trial) -> str:
    """Everything about one trial, written here (escaped once) and shown by the page's script."""
    badges = [("front", "on its front")] if trial.on_front else []
    badges += [("all", "on the front across tuners")] if trial.on_front_all else []
    badges += [("gamed", "proxy gamed")] if trial.gamed else []
    badges += [("stopped", f"stopped at step {trial.stopped_at}")] if trial.stopped_at is not None else []
    badge_html = "".join(f'<span class="badge {kind}">{text}</span>' for kind, text in badges)
    parts = [
        f'<h3><span class="swatch" style="background:{_esc(trial.color)}"></span>{_esc(trial.label)} · trial '
        f"{_esc(trial.trial_id or '?')}</h3>",
        f'<p class="badges">{badge_html}</p>' if badges else "",
        f'<pre class="prompt">{_esc(repr(trial.prompt)) if trial.prompt else "(no prompt)"}</pre>',
    ]
    if trial.stopped_at is not None:
        parts.append(
            f'<p class="note">The scheduler stopped this trial at step {trial.stopped_at} ({_esc(trial.steps_done)} '
            "steps done): its values are those at that rung, so it is on no front and in no hypervolume.</p>"
        )
    elif trial.steps_done:
        parts.append(f'<p class="note">{_esc(trial.steps_done)} steps done.</p>')
    if trial.replicate_prompts:
        items = "".join(f"<li><code>{_esc(repr(r))}</code></li>" for r in trial.replicate_prompts)
        parts.append(f'<p class="sub">Prompt of each replicate:</p><ol class="replicates" start="0">{items}</ol>')
    if trial.weights:
        parts.append(f'<h4>Weights</h4><table class="kv">{_kv(trial.weights)}</table>')
    parts.append(f'<h4>Proxy-gaming signals</h4><table class="kv">{_kv(trial.signals, note_last=True)}</table>')
    parts.append(
        '<h4>Metrics</h4><table class="kv metrics"><tr><th></th><th>mean</th><th>95 % CI</th><th>std</th></tr>'
        f"{_kv(trial.metrics)}</table>"
    )
    if trial.versus:
        parts.append(
            "<h4>Test accuracy against the baselines (paired 95 % interval)</h4>"
            f'<table class="kv">{_kv(trial.versus)}</table>'
        )
    if trial.run_id:
        parts.append(f'<p class="note">MLflow run <code>{_esc(trial.run_id)}</code></p>')
    return f'<div class="trial" data-row="{trial.row}" hidden>{"".join(parts)}</div>'


def _trials_table_html(data: ReportData) -> str:
    header = "".join(f'<th data-type="{kind}" title="sort">{_esc(name)}</th>' for name, kind in data.columns)
    body = []
    for trial in data.trials:
        (label, label_text), trial_id, (prompt, _), *rest = trial.cells
        shown = repr(prompt) if prompt else "(no prompt)"
        cells = [
            (label, f'<span class="swatch" style="background:{_esc(trial.color)}"></span>{_esc(label_text)}'),
            (trial_id[0], _esc(trial_id[1])),
            (prompt, f'<code title="{_esc(shown)}">{_esc(shown if len(shown) <= 60 else shown[:59] + "…")}</code>'),
            *((v, _esc(text)) for v, text in rest),
        ]
        tds = "".join(f'<td data-v="{_esc(v)}">{h}</td>' for v, h in cells)
        stopped = ' class="stopped" data-stopped="1"' if trial.stopped_at is not None else ""
        body.append(f'<tr data-row="{trial.row}" data-group="{_esc(trial.tuner)}"{stopped}>{tds}</tr>')
    return '<table id="trials-table"><thead><tr>' + header + "</tr></thead><tbody>" + "".join(body) + "</tbody></table>"

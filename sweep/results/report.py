"""The sweep report: ``report.html``, one self-contained page per sweep that a reader opens in any browser.

:func:`write_report` writes it from the annotated trials table and its
:class:`~sweep.results.pareto.Fronts`: a header (config, package versions, git commit, timings, hypervolumes),
the fronts of every tuner with the baselines and the replicate intervals in the figure's two views (the same
:class:`~sweep.results.figure.ParetoPlot` the paper figure draws, so both show the same points), a sortable
trials table, and each trial's learning curves from the per-step MLflow metrics that
:func:`sweep.mlflow_log.collect_curves` reads. Hovering a point shows its trial (prompt, weights, every metric,
the proxy-gaming signals); a click pins it. Nothing is loaded at view time: the charting library, the data and
the page's own script are inline.

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
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from objectives.metrics import METRICS
from objectives.stats import CI95, REPLICATE, STD
from sweep.mlflow_log import Curves
from sweep.results.columns import (
    BASELINE_NAMES,
    BASELINE_STYLES,
    BEATS_PREFIX,
    FLAG_COLUMNS,
    GAMED_COLOR,
    GAMED_COLUMNS,
    GREY,
    LEARN_METRIC,
    LOG_PPL,
    PARAM_PREFIX,
    PROMPT_TEXT,
    PROXY_GAMED,
    REPLICATE_PROMPTS,
    RUN_ID,
    TEST_METRIC,
    TEXT_COLUMNS,
    TRIAL_ID,
    TUNER,
    VS_PREFIX,
    WORD_FRAC,
    arrow,
    beats_column,
    cell_text,
    cell_value,
    diff_columns,
    duration,
    formatted,
    rgba,
    tuner_order,
    tuner_styles,
    tuners_of,
)
from sweep.results.compare import learning_text
from sweep.results.figure import VIEWS, ParetoPlot, TunerSeries, held_out_metric, pareto_plot, short_prompt
from sweep.results.pareto import ALL_KEY, Fronts, objective_matrix
from tuners.baselines import BASELINES

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
# Columns that are neither metrics nor weights: they are shown as text or flags, never as numbers.
_NOT_METRICS = (*TEXT_COLUMNS, *FLAG_COLUMNS)
_REPLICATE_COLUMN = re.compile(re.escape(REPLICATE) + r"\d+$")
_REPLICATE_KEY = re.compile(r"^rep(\d+)/")
# matplotlib markers of sweep.results.figure -> Plotly symbols, so a tuner looks the same in the figure and the page.
_SYMBOLS = {
    "o": "circle",
    "s": "square",
    "^": "triangle-up",
    "D": "diamond",
    "v": "triangle-down",
    "P": "cross",
    "<": "triangle-left",
    ">": "triangle-right",
    "h": "hexagon",
    "*": "star",
    "d": "diamond-tall",
}
_VIEW_TITLES = {
    "test": "Test view: held-out metrics of the prompts each search selected on dev",
    "dev": "Dev view: the objectives the search optimised, with each tuner's front",
}

# A "-thin" symbol is drawn by its outline alone, so the colour goes on the line.
_GAMED_MARKER = {"color": GAMED_COLOR, "symbol": "x-thin", "size": 12, "line": {"width": 2, "color": GAMED_COLOR}}


# --- values of the table ---------------------------------------------------------------------------------------


def _texts(table: pd.DataFrame, column: str, row: int) -> list[str]:
    if column not in table.columns:
        return []
    value = table[column].iloc[row]
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value]
    return []


def _is_metric(table: pd.DataFrame, column: Any) -> bool:
    name = str(column)
    if name in _NOT_METRICS or name.startswith((PARAM_PREFIX, VS_PREFIX, BEATS_PREFIX)):
        return False
    if name.endswith((STD, CI95)) or _REPLICATE_COLUMN.search(name):
        return False
    dtype = table[column].dtype
    return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)


def _metric_names(table: pd.DataFrame, fronts: Fronts) -> list[str]:
    """Every metric column (means only): the objectives with their held-out counterparts first, then the
    proxy-gaming signals, then the registry's order, then any other numeric column by name."""
    present = [str(c) for c in table.columns if _is_metric(table, c)]
    first = [n for o in fronts.objectives for n in (o, held_out_metric(o, table))]
    first += [TEST_METRIC, *GAMED_COLUMNS, WORD_FRAC, LOG_PPL]
    order = {name: i for i, name in enumerate(dict.fromkeys(first + list(METRICS)))}
    return sorted(present, key=lambda n: (order.get(n, len(order)), n))


def _table_metrics(table: pd.DataFrame, fronts: Fronts) -> list[str]:
    """The metrics the trials table shows (the rest are in each trial's details)."""
    wanted = [n for o in fronts.objectives for n in (o, held_out_metric(o, table))]
    wanted += [TEST_METRIC, LOG_PPL, WORD_FRAC, *GAMED_COLUMNS]
    return [n for n in dict.fromkeys(wanted) if n in table.columns]


def _measured(table: pd.DataFrame, column: str, row: int) -> float:
    """``column``'s value, NaN where there is nothing to measure: with no prompt there is no text to read,
    so its readability and faithfulness columns (0 by convention) are not shown as a score."""
    if cell_text(table, TUNER, row) == "no_prompt" and not column.startswith(("task/", "baseline/")):
        return math.nan
    return cell_value(table, column, row)


def _mean_ci(table: pd.DataFrame, name: str, row: int) -> str:
    mean, ci = _measured(table, name, row), _measured(table, name + CI95, row)
    if not math.isfinite(mean):
        return "–"
    return formatted(mean) + (f" ± {formatted(ci)}" if math.isfinite(ci) else "")


def _direction(name: str) -> str:
    if name not in METRICS:
        return ""
    return f" {arrow(name)}"


def _styles(table: pd.DataFrame) -> dict[str, tuple[str, str, str]]:
    """``(label, colour, plotly symbol)`` per tuner and baseline present, learned tuners first."""
    present = list(dict.fromkeys(tuners_of(table).tolist()))
    learned = tuner_order([t for t in present if t not in BASELINES])
    out = {t: (t, color, _SYMBOLS.get(marker, "circle")) for t, (color, marker) in tuner_styles(learned).items()}
    out = {t: out[t] for t in learned}
    for baseline in BASELINES:
        if baseline in present:
            color, marker = BASELINE_STYLES.get(baseline, (GREY, "o"))
            out[baseline] = (BASELINE_NAMES[baseline], color, _SYMBOLS.get(marker, "circle"))
    return out


def _beaten(table: pd.DataFrame, row: int) -> list[str]:
    beaten = []
    for baseline in BASELINES:
        column = beats_column(baseline)
        if column in table.columns:
            flag = table[column].iloc[row]
            # Only a real True: a missing flag (NaN after a join) must not read as a win.
            if isinstance(flag, (bool, np.bool_)) and flag:
                beaten.append(BASELINE_NAMES[baseline])
    return beaten


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


# --- the fronts as Plotly figures ------------------------------------------------------------------------------


def _hover(table: pd.DataFrame, fronts: Fronts, row: int, axes: Sequence[str], labels: Sequence[str]) -> str:
    """The tooltip of one trial: Plotly's small HTML subset, every value escaped (no quotes are escaped:
    Plotly shows entities of ``<``, ``>`` and ``&`` only, and a prompt's quotes must show as quotes)."""

    def esc(text: str) -> str:
        return html.escape(text, quote=False)

    tuner = cell_text(table, TUNER, row)
    head = f"<b>{esc(BASELINE_NAMES.get(tuner, tuner))}</b> · trial {esc(cell_text(table, TRIAL_ID, row) or '?')}"
    if fronts.is_pareto[row] and tuner not in BASELINES:
        head += " · on its front"
    prompt = cell_text(table, PROMPT_TEXT, row)
    lines = [head, esc(short_prompt(prompt, 60)) if prompt else "<i>(no prompt)</i>"]
    weights = [
        f"{esc(str(c).removeprefix(PARAM_PREFIX))} = {formatted(cell_value(table, str(c), row), '.3g')}"
        for c in table.columns
        if str(c).startswith(PARAM_PREFIX) and math.isfinite(cell_value(table, str(c), row))
    ]
    if weights:
        lines.append("weights: " + ", ".join(weights))
    for axis, label in zip(axes, labels, strict=True):
        lines.append(f"{esc(label)}: {_mean_ci(table, axis, row)}")
    if fronts.gamed[row]:
        signals = ", ".join(f"{c.split('/')[-1]} {formatted(cell_value(table, c, row), '.2f')}" for c in GAMED_COLUMNS)
        lines.append(f"<span style='color:{GAMED_COLOR}'>proxy gamed: {esc(signals)}</span>")
    lines.append("<i>click to pin</i>")
    return "<br>".join(lines)


def _errors(values: np.ndarray, err: np.ndarray, bounds: tuple[float, float], color: str) -> dict[str, Any] | None:
    """Plotly error bars of ±ci95 stopped at the metric's bounds (as in the figure); ``None`` with no bar."""
    if not np.isfinite(err).any():
        return None
    with np.errstate(invalid="ignore"):
        plus = np.clip(np.minimum(err, bounds[1] - values), 0.0, None)
        minus = np.clip(np.minimum(err, values - bounds[0]), 0.0, None)
    return {
        "type": "data",
        "symmetric": False,
        "array": plus.tolist(),
        "arrayminus": minus.tolist(),
        # Translucent: with few replicates the t-intervals are wide, and opaque bars would bury the points.
        "color": rgba(color, 0.45),
        "thickness": 1,
        "width": 0,
    }


def _points(
    plot: ParetoPlot,
    s: TunerSeries,
    points: np.ndarray,
    hovers: Sequence[str],
    *,
    kind: str,
    symbol: str,
    size: float = 9,
    **style: Any,
) -> dict[str, Any]:
    trace: dict[str, Any] = {
        "type": "scatter",
        "x": s.x[points].tolist(),
        "y": s.y[points].tolist(),
        "customdata": s.rows[points].tolist(),
        "text": [hovers[r] for r in s.rows[points].tolist()],
        "hovertemplate": "%{text}<extra></extra>",
        "name": s.label,
        "legendgroup": s.tuner,
        "meta": {"group": s.tuner, "kind": kind, "counts": True},
        "mode": "markers",
        "marker": {"color": s.color, "symbol": symbol, "size": size, "line": {"width": 0.5, "color": "white"}},
    }
    if kind != "dominated":
        for axis, values, err, bounds in (("x", s.x, s.x_err, plot.x_range), ("y", s.y, s.y_err, plot.y_range)):
            bars = _errors(values[points], err[points], bounds, s.color)
            if bars is not None:
                trace[f"error_{axis}"] = bars
    trace.update(style)
    return trace


def _span(plot: ParetoPlot, axis: str) -> tuple[float, float]:
    """The extent of the drawn points on ``axis`` (with their bars and a margin): how far a reference line
    reaches across the plot. (0, 1) when nothing is drawn."""
    values = []
    for s in (*plot.series, *plot.baselines):
        drawn = np.concatenate([s.front, s.dominated]).astype(int)
        v = (s.x if axis == "x" else s.y)[drawn]
        e = np.nan_to_num((s.x_err if axis == "x" else s.y_err)[drawn], nan=0.0)
        values += [v - e, v + e]
    flat = np.concatenate(values) if values else np.zeros(0)
    flat = flat[np.isfinite(flat)]
    if not len(flat):
        return 0.0, 1.0
    low, high = float(flat.min()), float(flat.max())
    pad = 0.05 * (high - low) if high > low else 0.05 * max(abs(low), 1.0)
    return low - pad, high + pad


def _no_prompt_traces(plot: ParetoPlot, table: pd.DataFrame, hovers: Sequence[str]) -> list[dict[str, Any]]:
    """The no-prompt reference as a dashed line with its ±ci95 band (traces, not shapes, so the tuner toggle
    and the hover reach it like any point)."""
    vertical = plot.x_baseline is not None
    value = plot.x_baseline if vertical else plot.y_baseline
    if value is None:
        return []
    err = (plot.x_baseline_err if vertical else plot.y_baseline_err) or 0.0
    bounds = plot.x_range if vertical else plot.y_range
    axis = plot.axes[0] if vertical else plot.axes[1]
    rows = np.flatnonzero(tuners_of(table) == "no_prompt")
    finite = [int(r) for r in rows if math.isfinite(cell_value(table, axis, int(r)))]
    # -1: the line comes from the baseline/acc_* column of an older sweep, with no no_prompt trial to show.
    row = finite[0] if finite else -1
    low, high = _span(plot, "y" if vertical else "x")
    across = np.linspace(low, high, 25).tolist()
    along = [value] * len(across)
    meta = {"group": "no_prompt", "kind": "reference", "counts": True}
    line: dict[str, Any] = {
        "type": "scatter",
        "mode": "lines",
        "x": along if vertical else across,
        "y": across if vertical else along,
        "customdata": [row] * len(across),
        "text": [hovers[row] if row >= 0 else f"no prompt: {formatted(value)}"] * len(across),
        "hovertemplate": "%{text}<extra></extra>",
        "name": plot.baseline_label,
        "legendgroup": "no_prompt",
        "meta": meta,
        "line": {"color": GREY, "dash": "dash", "width": 1.5},
    }
    traces = [line]
    if err > 0:
        a, b = max(value - err, bounds[0]), min(value + err, bounds[1])
        band_along, band_across = [a, b, b, a, a], [low, low, high, high, low]
        traces.insert(
            0,
            {
                "type": "scatter",
                "mode": "lines",
                "x": band_along if vertical else band_across,
                "y": band_across if vertical else band_along,
                "fill": "toself",
                "fillcolor": rgba(GREY, 0.12),
                "line": {"width": 0},
                "hoverinfo": "skip",
                "showlegend": False,
                "legendgroup": "no_prompt",
                "meta": {**meta, "kind": "band", "counts": False},
            },
        )
    return traces


def _figure(plot: ParetoPlot, table: pd.DataFrame, fronts: Fronts, styles: Mapping[str, tuple[str, str, str]]) -> dict:
    """One view of the fronts as a Plotly figure (plain dicts): per tuner its dominated points faded and its
    front with bars and the figure's line style, the baselines as markers, proxy-gamed points crossed, the
    no-prompt reference line, and legend keys for the faded and crossed points."""
    hovers = [_hover(table, fronts, r, plot.axes, (plot.x_label, plot.y_label)) for r in range(len(table))]
    traces: list[dict[str, Any]] = []
    if plot.step_where:
        # matplotlib's steps-pre (vertical first at each x) is Plotly's "vh"; steps-post is "hv".
        line = {"shape": "vh" if plot.step_where == "pre" else "hv", "width": 1.5}
        mode = "lines+markers"
    else:
        line = {"width": 1.0 if plot.join_front else 0.0}
        mode = "lines+markers" if plot.join_front else "markers"
    any_dominated = False
    for s in plot.series:
        symbol = styles[s.tuner][2]
        if len(s.dominated):
            any_dominated = True
            traces.append(
                _points(plot, s, s.dominated, hovers, kind="dominated", symbol=symbol, opacity=0.3, showlegend=False)
            )
        if len(s.front):
            traces.append(_points(plot, s, s.front, hovers, kind="front", symbol=symbol, mode=mode, line=line))
    for b in plot.baselines:
        if len(b.front):
            # Larger than the tuners' markers, as in the figure: a star reads small at the size of a circle.
            size = 15 if b.marker == "*" else 11
            traces.append(_points(plot, b, b.front, hovers, kind="baseline", symbol=styles[b.tuner][2], size=size))
    traces += _no_prompt_traces(plot, table, hovers)
    for s in (*plot.series, *plot.baselines):
        if len(s.gamed):
            traces.append(
                {
                    "type": "scatter",
                    "mode": "markers",
                    "x": s.x[s.gamed].tolist(),
                    "y": s.y[s.gamed].tolist(),
                    "marker": _GAMED_MARKER,
                    "hoverinfo": "skip",
                    "showlegend": False,
                    "legendgroup": s.tuner,
                    "meta": {"group": s.tuner, "kind": "gamed", "counts": False},
                }
            )
    keys = [("dominated", {"color": GREY, "symbol": "circle", "size": 9, "opacity": 0.3})] if any_dominated else []
    keys.append((plot.gamed_label, _GAMED_MARKER))
    for name, marker in keys:
        # Legend keys only: never toggled, never hovered.
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "x": [None],
                "y": [None],
                "name": name,
                "marker": marker,
                "hoverinfo": "skip",
                "meta": {"group": "_key", "kind": "key", "counts": False},
            }
        )
    layout = {
        "template": "plotly_white",
        "title": {"text": _esc(_VIEW_TITLES[plot.view]), "font": {"size": 14}, "x": 0.01},
        "xaxis": {"title": {"text": _esc(plot.x_label)}, "zeroline": False},
        "yaxis": {"title": {"text": _esc(plot.y_label)}, "zeroline": False},
        "hovermode": "closest",
        "hoverlabel": {"align": "left"},
        # The page's checkboxes toggle tuners: a legend click would hide a trace behind their back.
        "legend": {"orientation": "h", "y": -0.14, "itemclick": False, "itemdoubleclick": False},
        "margin": {"l": 70, "r": 20, "t": 40, "b": 40},
        "height": 600,
    }
    return {"data": traces, "layout": layout}


def _validated(figure: dict) -> dict:
    """``figure`` checked by Plotly's own schema, so a misspelt attribute fails here and not silently in the
    browser; the figure itself is kept as plain dicts."""
    import plotly.graph_objects as go

    go.Figure(figure)
    return figure


# --- HTML ------------------------------------------------------------------------------------------------------


def _header_html(header: Mapping[str, Any], table: pd.DataFrame, fronts: Fronts) -> str:
    config = header.get("config") if isinstance(header.get("config"), Mapping) else {}
    name = header.get("experiment") or config.get("name") or "sweep"
    facts: list[tuple[str, str]] = []
    if header.get("status"):
        facts.append(("status", _esc(header["status"])))
    finished = header.get("trials_finished", len(table))
    trials = f"{finished} finished" + (f" of {header['trials_expected']}" if "trials_expected" in header else "")
    for key in ("failed", "killed", "retried"):
        if header.get(f"trials_{key}"):
            trials += f", {header[f'trials_{key}']} {key}"
    facts.append(("trials", _esc(trials)))
    if header.get("first_error"):
        facts.append(("first failure", _esc(header["first_error"])))
    objectives = ", ".join(f"{o}{_direction(o)}" for o in fronts.objectives)
    facts.append(("objectives", _esc(objectives) + " (fronts and hypervolumes on these, dev data)"))
    if header.get("git_commit"):
        facts.append(("git commit", f"<code>{_esc(header['git_commit'])}</code>"))
    for key, label in (("parent_run_id", "MLflow parent run"), ("tracking_uri", "MLflow tracking URI")):
        if header.get(key):
            facts.append((label, f"<code>{_esc(header[key])}</code>"))
    timings = header.get("timings")
    if isinstance(timings, Mapping) and timings:
        facts.append(("timings", _esc(" · ".join(f"{k.removesuffix('_s')} {duration(v)}" for k, v in timings.items()))))
    versions = header.get("versions")
    if isinstance(versions, Mapping) and versions:
        facts.append(("versions", _esc(" · ".join(f"{k} {v}" for k, v in versions.items()))))
    rows = "".join(f"<tr><th>{label}</th><td>{value}</td></tr>" for label, value in facts)

    summary = header.get("summary_metrics") if isinstance(header.get("summary_metrics"), Mapping) else {}
    baselines = [b for b in BASELINES if any(str(k).startswith(f"front_beats/{b}/") for k in summary)]
    volumes = sorted(fronts.hypervolume.items(), key=lambda kv: kv[0] == ALL_KEY)
    volume_html = ""
    if volumes:
        head = "<tr><th>tuner</th><th>hypervolume</th>"
        head += "".join(f"<th>front beats {_esc(BASELINE_NAMES[b])}</th>" for b in baselines)
        learns = any(str(k).startswith(f"{LEARN_METRIC}/") for k in summary)
        head += "<th>training gain (dev)</th>" if learns else ""
        head += "</tr>"
        body = ""
        for tuner, volume in volumes:
            cells = [_esc("all tuners" if tuner == ALL_KEY else tuner), formatted(volume, ".4f")]
            for b in baselines:
                share = summary.get(f"front_beats/{b}/{tuner}")
                cells.append(f"{float(share):.0%}" if isinstance(share, (int, float)) and math.isfinite(share) else "")
            if learns:
                cells.append(_esc(learning_text(summary, tuner)))
            body += "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
        reference = ", ".join(
            f"{o} = {formatted(r, '.4f')}" for o, r in zip(fronts.objectives, fronts.original_reference, strict=True)
        )
        volume_html = (
            f'<table class="volumes">{head}{body}</table>'
            f'<p class="note">Reference point: {_esc(reference)}. Baselines are references, never part of an area. '
            "“Front beats”: the share of a tuner's front prompts whose test accuracy beats the baseline beyond "
            "the paired 95 % interval."
            + (
                " “Training gain”: the final greedy prompt's dev accuracy minus the untrained policy's, mean ± 95 % "
                "interval over replicates (each averaged over the tuner's trials): what training gained apart "
                "from selection."
                if learns
                else ""
            )
            + "</p>"
        )
    elif len(fronts.objectives) != 2:
        volume_html = '<p class="note">No hypervolume: it is computed for exactly two objectives.</p>'
    rest = {k: v for k, v in header.items() if k != "config"}
    details = ""
    if config:
        details += f"<details><summary>config</summary><pre>{_esc(_pretty(config))}</pre></details>"
    if rest:
        details += f"<details><summary>all sweep fields</summary><pre>{_esc(_pretty(rest))}</pre></details>"
    return (
        f"<header><h1>Sweep <code>{_esc(name)}</code></h1>"
        f'<div class="header-grid"><table class="facts">{rows}</table><div>{volume_html}{details}</div></div>'
        "</header>"
    )


def _pretty(value: Any) -> str:
    return json.dumps(_json_safe(value), indent=2, ensure_ascii=False, allow_nan=False)


def _controls_html(styles: Mapping[str, tuple[str, str, str]], views: Sequence[str]) -> str:
    names = {"test": "test (held-out)", "dev": "dev (searched)"}
    radios = "".join(
        f'<label><input type="radio" name="view" value="{v}"{" checked" if i == 0 else ""}> {names[v]}</label>'
        for i, v in enumerate(views)
    )
    boxes = "".join(
        f'<label><input type="checkbox" class="tuner-toggle" value="{_esc(t)}" checked>'
        f'<span class="swatch" style="background:{_esc(color)}"></span>{_esc(label)}</label>'
        for t, (label, color, _) in styles.items()
    )
    return (
        f'<div class="controls"><span class="group"><b>View</b> {radios}</span>'
        f'<span class="group"><b>Show</b> {boxes}</span><span id="drawn-note" class="note"></span></div>'
    )


def _detail_html(table: pd.DataFrame, fronts: Fronts, row: int, metrics: Sequence[str], color: str) -> str:
    """Everything about one trial, rendered here (escaped once, in Python) and shown by the page's script."""
    tuner = cell_text(table, TUNER, row)
    label = BASELINE_NAMES.get(tuner, tuner)
    prompt = cell_text(table, PROMPT_TEXT, row)
    badges = []
    if tuner not in BASELINES and fronts.is_pareto[row]:
        badges.append('<span class="badge front">on its front</span>')
    if fronts.is_pareto_all[row]:
        badges.append('<span class="badge all">on the front across tuners</span>')
    if fronts.gamed[row]:
        badges.append('<span class="badge gamed">proxy gamed</span>')
    parts = [
        f'<h3><span class="swatch" style="background:{_esc(color)}"></span>{_esc(label)} · trial '
        f"{_esc(cell_text(table, TRIAL_ID, row) or '?')}</h3>",
        f'<p class="badges">{"".join(badges)}</p>' if badges else "",
        f'<pre class="prompt">{_esc(repr(prompt)) if prompt else "(no prompt)"}</pre>',
    ]
    replicates = _texts(table, REPLICATE_PROMPTS, row)
    if replicates and any(r != prompt for r in replicates):
        items = "".join(f"<li><code>{_esc(repr(r))}</code></li>" for r in replicates)
        parts.append(f'<p class="sub">Prompt of each replicate:</p><ol class="replicates" start="0">{items}</ol>')
    weights = [
        (str(c).removeprefix(PARAM_PREFIX), cell_value(table, str(c), row))
        for c in table.columns
        if str(c).startswith(PARAM_PREFIX)
    ]
    weights = [(w, v) for w, v in weights if math.isfinite(v)]
    if weights:
        cells = "".join(f"<tr><th>{_esc(w)}</th><td>{formatted(v, '.3g')}</td></tr>" for w, v in weights)
        parts.append(f'<h4>Weights</h4><table class="kv">{cells}</table>')
    threshold = f"{fronts.gamed_threshold:g}"
    signals = [(PROXY_GAMED, "yes" if fronts.gamed[row] else "no", f"repeat or special share over {threshold}")]
    for column in (*GAMED_COLUMNS, WORD_FRAC, LOG_PPL):
        if column in table.columns:
            signals.append((column, _mean_ci(table, column, row), ""))
    cells = "".join(
        f"<tr><th>{_esc(n)}</th><td>{_esc(v)}</td><td class='note'>{_esc(h)}</td></tr>" for n, v, h in signals
    )
    parts.append(f'<h4>Proxy-gaming signals</h4><table class="kv">{cells}</table>')
    rows = ""
    for name in metrics:
        mean, ci, std = (_measured(table, name + s, row) for s in ("", CI95, STD))
        rows += (
            f"<tr><th>{_esc(name)}{_direction(name)}</th><td>{formatted(mean)}</td>"
            f"<td>{'± ' + formatted(ci) if math.isfinite(ci) else ''}</td>"
            f"<td>{formatted(std) if math.isfinite(std) else ''}</td></tr>"
        )
    parts.append(
        '<h4>Metrics</h4><table class="kv metrics"><tr><th></th><th>mean</th><th>95 % CI</th><th>std</th></tr>'
        f"{rows}</table>"
    )
    versus = ""
    for baseline in BASELINES:
        diff, low, high = (cell_value(table, c, row) for c in diff_columns(baseline))
        if math.isfinite(diff):
            beats = "beats it" if BASELINE_NAMES[baseline] in _beaten(table, row) else ""
            versus += (
                f"<tr><th>{_esc(BASELINE_NAMES[baseline])}</th>"
                f"<td>{diff:+.3f} [{formatted(low)}, {formatted(high)}]</td><td>{beats}</td></tr>"
            )
    if versus:
        parts.append(
            f'<h4>Test accuracy against the baselines (paired 95 % interval)</h4><table class="kv">{versus}</table>'
        )
    run_id = cell_text(table, RUN_ID, row)
    if run_id:
        parts.append(f'<p class="note">MLflow run <code>{_esc(run_id)}</code></p>')
    return f'<div class="trial" data-row="{row}" hidden>{"".join(parts)}</div>'


def _trials_table_html(
    table: pd.DataFrame, fronts: Fronts, metrics: Sequence[str], styles: Mapping[str, tuple[str, str, str]]
) -> str:
    params = [str(c) for c in table.columns if str(c).startswith(PARAM_PREFIX)]
    head = [(TUNER, "text"), ("trial", "text"), ("prompt", "text")]
    head += [(p.removeprefix(PARAM_PREFIX), "num") for p in params]
    head += [(m + _direction(m), "num") for m in metrics]
    head += [("front", "num"), ("all", "num"), ("gamed", "num"), ("beats", "text")]
    header = "".join(f'<th data-type="{kind}" title="sort">{_esc(name)}</th>' for name, kind in head)
    body = []
    for row in range(len(table)):
        tuner = cell_text(table, TUNER, row)
        label, color, _ = styles.get(tuner, (tuner, GREY, ""))
        prompt = cell_text(table, PROMPT_TEXT, row)
        shown = repr(prompt) if prompt else "(no prompt)"
        cells = [
            (label, f'<span class="swatch" style="background:{_esc(color)}"></span>{_esc(label)}'),
            (cell_text(table, TRIAL_ID, row), _esc(cell_text(table, TRIAL_ID, row))),
            (prompt, f'<code title="{_esc(shown)}">{_esc(shown if len(shown) <= 60 else shown[:59] + "…")}</code>'),
        ]
        for p in params:
            value = cell_value(table, p, row)
            cells.append((repr(value) if math.isfinite(value) else "", formatted(value, ".3g")))
        for m in metrics:
            value = _measured(table, m, row)
            cells.append((repr(value) if math.isfinite(value) else "", _esc(_mean_ci(table, m, row))))
        for flag in (fronts.is_pareto[row] and tuner not in BASELINES, fronts.is_pareto_all[row], fronts.gamed[row]):
            cells.append(("1" if flag else "0", "yes" if flag else ""))
        beaten = ", ".join(_beaten(table, row))
        cells.append((beaten, _esc(beaten)))
        tds = "".join(f'<td data-v="{_esc(v)}">{h}</td>' for v, h in cells)
        body.append(f'<tr data-row="{row}" data-group="{_esc(tuner)}">{tds}</tr>')
    return '<table id="trials-table"><thead><tr>' + header + "</tr></thead><tbody>" + "".join(body) + "</tbody></table>"


def _initial_row(table: pd.DataFrame, fronts: Fronts) -> int | None:
    """The trial the details show before any hover: the best point of the front across tuners on the first
    objective, so the page opens on something worth reading."""
    rows = np.flatnonzero(fronts.is_pareto_all)
    if len(rows) and fronts.objectives[0] in table.columns:
        values = objective_matrix(table, fronts.objectives[:1])[rows, 0]  # larger is better
        if np.isfinite(values).any():
            return int(rows[int(np.nanargmax(values))])
    return 0 if len(table) else None


def _curve_payload(table: pd.DataFrame, curves: Curves | None) -> tuple[dict[str, Any], list[str]]:
    """Curves by table row (``{row: {key: [steps, values]}}``) and the metric names without the replicate
    prefix, ``dev/acc`` first (what the search selected on), then dev, then train metrics."""
    by_row: dict[str, Any] = {}
    names: set[str] = set()
    for row in range(len(table)):
        run = (curves or {}).get(cell_text(table, RUN_ID, row))
        if not run:
            continue
        by_row[str(row)] = {key: [[p[0] for p in points], [p[1] for p in points]] for key, points in run.items()}
        names.update(_REPLICATE_KEY.sub("", key) for key in run)
    order = sorted(names, key=lambda n: (n != "dev/acc", not n.startswith("dev/"), n))
    return by_row, order


def write_report(
    table: pd.DataFrame,
    fronts: Fronts,
    out: Path,
    *,
    curves: Curves | None,
    header: Mapping[str, Any],
    labels: Mapping[str, str] | None = None,
) -> Path:
    """Write ``out/report.html`` (``out`` is created) and return its path.

    ``table`` is the annotated trials table of :func:`sweep.results.exports.write_exports` (``beats/*`` and ``vs/*``
    columns are shown where present) and ``fronts`` its fronts; ``curves`` maps MLflow run ids to their
    per-step metrics (:func:`sweep.mlflow_log.collect_curves`; ``None``: no learning curves); ``header`` holds what
    ``sweep.json`` holds (every key optional: ``config``, ``versions``, ``git_commit``, ``timings``,
    ``status``, ``trials_*``, ``summary_metrics`` ...). ``labels`` override the axis labels. NaN and
    infinite values are shown as missing.
    """
    from plotly.offline import get_plotlyjs

    if len(fronts.is_pareto) != len(table):
        raise ValueError(f"fronts cover {len(fronts.is_pareto)} trials but the table has {len(table)} rows")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = table.reset_index(drop=True)
    styles = _styles(table)
    views = {
        v: _validated(_figure(pareto_plot(table, fronts, view=v, labels=labels), table, fronts, styles)) for v in VIEWS
    }
    metrics = _metric_names(table, fronts)
    curve_rows, curve_keys = _curve_payload(table, curves)
    colors = {t: c for t, (_, c, _) in styles.items()}
    trials = [
        {TUNER: cell_text(table, TUNER, r), "color": colors.get(cell_text(table, TUNER, r), GREY)}
        for r in range(len(table))
    ]
    payload = {
        "views": views,
        "trials": trials,
        "curves": curve_rows,
        "curve_keys": curve_keys,
        "initial": _initial_row(table, fronts),
    }
    details = "".join(_detail_html(table, fronts, r, metrics, trials[r]["color"]) for r in range(len(table)))
    config = header.get("config") if isinstance(header.get("config"), Mapping) else {}
    title = f"Sweep {header.get('experiment') or config.get('name') or ''} report".replace("  ", " ")
    page = _PAGE.format(
        title=_esc(title),
        style=_STYLE,
        guard=_GUARD,
        header=_header_html(header, table, fronts),
        controls=_controls_html(styles, list(views)),
        details=details,
        table=_trials_table_html(table, fronts, _table_metrics(table, fronts), styles),
        count=len(table),
        data=_script_json(payload),
        plotly=get_plotlyjs(),
        script=_SCRIPT,
    )
    path = out / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    logger.info("wrote %s (%.1f MB, %d trials)", path, path.stat().st_size / 1e6, len(table))
    return path


# --- the page ----------------------------------------------------------------------------------------------------

_PAGE = """<!DOCTYPE html>
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

_STYLE = """
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
.curve-controls { margin-top: 8px; }
#trials-table { border-collapse: collapse; font-size: 12px; width: 100%; }
#trials-table th { position: sticky; top: 0; background: #f0f0f0; cursor: pointer; padding: 3px 6px; text-align: left; }
#trials-table th[data-dir="asc"]::after { content: " ▲"; } #trials-table th[data-dir="desc"]::after { content: " ▼"; }
#trials-table td { padding: 2px 6px; border-bottom: 1px solid #eee; white-space: nowrap; }
#trials-table td[data-v]:not(:nth-child(-n+3)) { font-variant-numeric: tabular-nums; }
#trials-table tbody tr { cursor: pointer; } #trials-table tbody tr:hover { background: #f5f9ff; }
#trials-table tr.pinned { background: #dbeafe; }
#errors { background: #fde2e2; color: #900; padding: 8px; margin: 8px 0; }
"""

# Runs before anything else: a failure of the charts shows on the page (and in data-errors, for the tests).
_GUARD = """
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

_SCRIPT = """
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
  var DASHES = ["solid", "dot", "dash"];  // one per replicate, so overlapping curves stay apart

  // The pinned trial gets a ring on each of its points in the current view.
  function ring() {
    var x = [], y = [];
    data.views[view].data.forEach(function (t) {
      if (pinned === null || !t.meta.counts || hidden.has(t.meta.group)) return;
      t.customdata.forEach(function (row, i) { if (row === pinned) { x.push(t.x[i]); y.push(t.y[i]); } });
    });
    return {type: "scatter", mode: "markers", x: x, y: y, hoverinfo: "skip", showlegend: false, meta: {},
            marker: {size: 20, color: "rgba(0,0,0,0)", line: {color: "#222", width: 2}}};
  }

  function countDrawn() {
    var rows = new Set();
    data.views[view].data.forEach(function (t) {
      if (!t.meta.counts || hidden.has(t.meta.group)) return;
      t.customdata.forEach(function (row, i) { if (row >= 0 && t.x[i] !== null && t.y[i] !== null) rows.add(row); });
    });
    section.dataset.view = view;
    section.dataset.drawnTrials = String(rows.size);
    section.dataset.drawnPoints = String(plot.querySelectorAll(".scatterlayer path.point").length);
    document.getElementById("drawn-note").textContent = rows.size + " of " + data.trials.length + " trials drawn";
  }

  function draw() {
    var traces = data.views[view].data.map(function (t) {
      return Object.assign({}, t, {visible: !hidden.has(t.meta.group)});
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
      document.querySelectorAll("#trials-table tbody tr").forEach(function (tr) {
        tr.hidden = hidden.has(tr.dataset.group);
      });
      draw();
    });
  });
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

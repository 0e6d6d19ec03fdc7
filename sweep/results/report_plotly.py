"""The report's fronts drawn with Plotly: each :class:`~sweep.results.figure.ParetoPlot` view of a
:class:`~sweep.results.report_data.ReportData` as a Plotly figure of plain dicts (checked by Plotly's schema).

The same points as the paper figure, in the same styles: per tuner its dominated points faded and its front
with ±ci95 bars and the figure's line, the baselines as larger markers, proxy-gamed points crossed, the
no-prompt reference as a dashed line over its band, and legend keys. Every trace's ``meta`` tells the page's
script what it is (``group``: the tuner toggle it follows; ``kind``; ``counts``: whether its points are trials).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sweep.results.columns import GAMED_COLOR, GREY, formatted, rgba
from sweep.results.figure import ParetoPlot, TunerSeries, View, short_prompt
from sweep.results.report_data import ReportData, StoppedPoints, Style, Trial

# matplotlib markers of the figure -> Plotly symbols, so a tuner looks the same in the figure and the page.
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
# Trials stopped at a rung: open and faded, so they read as context and never as a front.
_STOPPED_MARKER = {"size": 8, "opacity": 0.45, "line": {"width": 1}}
# A "-thin" symbol is drawn by its outline alone, so the colour goes on the line.
_GAMED_MARKER = {"color": GAMED_COLOR, "symbol": "x-thin", "size": 12, "line": {"width": 2, "color": GAMED_COLOR}}


def plotly_views(data: ReportData) -> dict[View, dict[str, Any]]:
    """Each view of ``data`` as a Plotly figure, ``{"data": traces, "layout": layout}``, schema-checked."""
    return {view: _validated(_figure(plot, data, view)) for view, plot in data.plots.items()}


def symbol(style: Style | StoppedPoints) -> str:
    """The Plotly symbol of a style's matplotlib marker (a circle for one Plotly lacks)."""
    return _SYMBOLS.get(style.marker, "circle")


def _hover(trial: Trial, axes: Sequence[str], labels: Sequence[str]) -> str:
    """The tooltip of one trial: Plotly's small HTML subset, every value escaped (no quotes are escaped:
    Plotly shows entities of ``<``, ``>`` and ``&`` only, and a prompt's quotes must show as quotes)."""

    def esc(text: str) -> str:
        return html.escape(text, quote=False)

    head = f"<b>{esc(trial.label)}</b> · trial {esc(trial.trial_id or '?')}"
    if trial.on_front:
        head += " · on its front"
    lines = [head, esc(short_prompt(trial.prompt, 60)) if trial.prompt else "<i>(no prompt)</i>"]
    if trial.weights:
        lines.append("weights: " + ", ".join(f"{esc(w)} = {v}" for w, v in trial.weights))
    for axis, label in zip(axes, labels, strict=True):
        lines.append(f"{esc(label)}: {trial.values[axis]}")
    if trial.gamed:
        lines.append(f"<span style='color:{GAMED_COLOR}'>proxy gamed: {esc(trial.gamed_signals)}</span>")
    if trial.stopped_at is not None:
        lines.append(f"stopped at step {trial.stopped_at}: its values there, never on a front")
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


def _no_prompt_traces(plot: ParetoPlot, row: int, hovers: Sequence[str]) -> list[dict[str, Any]]:
    """The no-prompt reference as a dashed line with its ±ci95 band (traces, not shapes, so the tuner toggle
    and the hover reach it like any point); ``row`` is the no-prompt trial it shows (-1: none)."""
    vertical = plot.x_baseline is not None
    value = plot.x_baseline if vertical else plot.y_baseline
    if value is None:
        return []
    err = (plot.x_baseline_err if vertical else plot.y_baseline_err) or 0.0
    bounds = plot.x_range if vertical else plot.y_range
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


def _figure(plot: ParetoPlot, data: ReportData, view: View) -> dict[str, Any]:
    """One view of the fronts as a Plotly figure (plain dicts): the tuners' points and fronts, the baselines,
    the no-prompt reference, the crosses on proxy-gamed points, and legend keys for the faded and crossed ones."""
    hovers = [_hover(t, plot.axes, (plot.x_label, plot.y_label)) for t in data.trials]
    # Stopped trials first, under everything else: context for the fronts, on the axes they were stopped on.
    stopped = data.stopped if view == "dev" else ()
    traces = [_stopped_trace(s, hovers) for s in stopped]
    traces += _tuner_traces(plot, data.styles, hovers)
    traces += _no_prompt_traces(plot, data.no_prompt_row[view], hovers)
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
    any_dominated = any(len(s.dominated) for s in plot.series)
    dominated_key = {"color": GREY, "symbol": "circle", "size": 9, "opacity": 0.3}
    stopped_key = {**_STOPPED_MARKER, "color": GREY, "symbol": "circle-open"}
    # (name, marker, whether the stopped toggle hides it)
    keys = [("dominated", dominated_key, False)] if any_dominated else []
    keys.append((plot.gamed_label, _GAMED_MARKER, False))
    keys += [("stopped at a rung", stopped_key, True)] if stopped else []
    for name, marker, of_stopped in keys:
        # Legend keys only: never toggled by a tuner, never hovered (the stopped key follows the stopped toggle).
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "x": [None],
                "y": [None],
                "name": name,
                "marker": marker,
                "hoverinfo": "skip",
                "meta": {"group": "_key", "kind": "key", "counts": False, "stopped": of_stopped},
            }
        )
    return {"data": traces, "layout": _layout(plot)}


def _stopped_trace(points: StoppedPoints, hovers: Sequence[str]) -> dict[str, Any]:
    """A tuner's stopped trials as open, faded markers of its colour: they follow its toggle and the stopped
    one (``meta.stopped``), and count as drawn trials."""
    return {
        "type": "scatter",
        "mode": "markers",
        "x": points.x.tolist(),
        "y": points.y.tolist(),
        "customdata": points.rows.tolist(),
        "text": [hovers[r] for r in points.rows.tolist()],
        "hovertemplate": "%{text}<extra></extra>",
        "name": f"{points.label} (stopped)",
        "legendgroup": points.tuner,
        "showlegend": False,
        "meta": {"group": points.tuner, "kind": "stopped", "counts": True, "stopped": True},
        "marker": {**_STOPPED_MARKER, "color": points.color, "symbol": symbol(points) + "-open"},
    }


def _tuner_traces(plot: ParetoPlot, styles: Mapping[str, Style], hovers: Sequence[str]) -> list[dict[str, Any]]:
    """Per tuner its dominated points faded and its front in the figure's line style; the baselines' markers."""
    if plot.step_where:
        # matplotlib's steps-pre (vertical first at each x) is Plotly's "vh"; steps-post is "hv".
        line = {"shape": "vh" if plot.step_where == "pre" else "hv", "width": 1.5}
        mode = "lines+markers"
    else:
        line = {"width": 1.0 if plot.join_front else 0.0}
        mode = "lines+markers" if plot.join_front else "markers"
    traces: list[dict[str, Any]] = []
    for s in plot.series:
        shape = symbol(styles[s.tuner])
        if len(s.dominated):
            traces.append(
                _points(plot, s, s.dominated, hovers, kind="dominated", symbol=shape, opacity=0.3, showlegend=False)
            )
        if len(s.front):
            traces.append(_points(plot, s, s.front, hovers, kind="front", symbol=shape, mode=mode, line=line))
    for b in plot.baselines:
        if len(b.front):
            # Larger than the tuners' markers, as in the figure: a star reads small at the size of a circle.
            size = 15 if b.marker == "*" else 11
            traces.append(_points(plot, b, b.front, hovers, kind="baseline", symbol=symbol(styles[b.tuner]), size=size))
    return traces


def _layout(plot: ParetoPlot) -> dict[str, Any]:
    return {
        "template": "plotly_white",
        "title": {"text": html.escape(_VIEW_TITLES[plot.view]), "font": {"size": 14}, "x": 0.01},
        "xaxis": {"title": {"text": html.escape(plot.x_label)}, "zeroline": False},
        "yaxis": {"title": {"text": html.escape(plot.y_label)}, "zeroline": False},
        "hovermode": "closest",
        "hoverlabel": {"align": "left"},
        # The page's checkboxes toggle tuners: a legend click would hide a trace behind their back.
        "legend": {"orientation": "h", "y": -0.14, "itemclick": False, "itemdoubleclick": False},
        "margin": {"l": 70, "r": 20, "t": 40, "b": 40},
        "height": 600,
    }


def _validated(figure: dict[str, Any]) -> dict[str, Any]:
    """``figure`` checked by Plotly's own schema, so a misspelt attribute fails here and not silently in the
    browser; the figure itself is kept as plain dicts."""
    import plotly.graph_objects as go

    go.Figure(figure)
    return figure

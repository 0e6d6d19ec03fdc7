"""The Pareto figure of a sweep: :func:`pareto_plot` computes what to draw, :func:`draw` draws it.

Tests assert on the computed :class:`ParetoPlot`; :func:`draw` only turns it into paper-ready files (one
column wide, TrueType fonts embedded in the PDF, text kept as text in the SVG, a 300 dpi PNG). Values are
in the metrics' original units: the sign flip of :func:`sweep.pareto.objective_matrix` stays inside the
front computation.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from objectives.metrics import metric_info
from sweep.pareto import Fronts

logger = logging.getLogger(__name__)

# Fixed styles so a tuner keeps its colour and marker across figures and papers (Okabe-Ito palette,
# readable in greyscale and by colour-blind readers). Red is kept for the proxy-gaming overlay.
TUNER_STYLES: dict[str, tuple[str, str]] = {
    "pez": ("#0072B2", "o"),
    "rlprompt": ("#009E73", "s"),
    "soft": ("#E69F00", "^"),
}
_EXTRA_STYLES: tuple[tuple[str, str], ...] = (
    ("#CC79A7", "D"),
    ("#56B4E9", "v"),
    ("#000000", "P"),
    ("#8C564B", "<"),
    ("#999999", ">"),
    ("#7F3C8D", "h"),
)
GAMED_COLOR = "#D00000"
FIGURE_SIZE = (3.4, 2.6)  # inches: one column of a two-column paper
DPI = 300

_RC: dict[str, Any] = {
    "font.size": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 6,
    # TrueType (Type 42) fonts in PDF/PS: Type 3 fonts are rejected by several publishers' checks.
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    # Text stays text in the SVG, so it can be edited and searched; a fixed salt keeps ids reproducible.
    "svg.fonttype": "none",
    "svg.hashsalt": "promptsweep",
}
# No timestamps, so re-exporting the same sweep gives the same bytes.
_METADATA: dict[str, dict[str, Any]] = {"pdf": {"CreationDate": None}, "svg": {"Date": None}, "png": {}}
FORMATS = ("pdf", "svg", "png")


@dataclass(frozen=True, eq=False)
class TunerSeries:
    """One tuner's points; ``m`` is its number of trials.

    ``rows`` ``(m,)`` are positional row indices into the trials table; ``x``, ``y`` ``(m,)`` the first two
    objectives in original units (NaN where missing; those points are not drawn). ``front``, ``dominated``
    and ``gamed`` index into ``x``/``y``: ``front`` the tuner's Pareto points sorted by ``x`` (then ``y``),
    ``dominated`` the other drawable points, ``gamed`` the drawable points flagged as proxy gaming.
    """

    tuner: str
    rows: np.ndarray
    x: np.ndarray
    y: np.ndarray
    front: np.ndarray
    dominated: np.ndarray
    gamed: np.ndarray
    color: str
    marker: str


@dataclass(frozen=True, eq=False)
class ParetoPlot:
    """Everything :func:`draw` needs, computed from a trials table and its :class:`Fronts`.

    ``step_where`` is the matplotlib step style that draws the staircase bounding the dominated region of
    points sorted by ``x`` (``"pre"`` when larger ``x`` is better, ``"post"`` when smaller is); ``None``
    when the fronts use more than two objectives, whose projection is no staircase, so only markers are
    drawn.
    """

    objectives: tuple[str, str]
    x_label: str
    y_label: str
    series: tuple[TunerSeries, ...]
    step_where: Literal["pre", "post"] | None
    gamed_label: str
    dominated_alpha: float = 0.25
    # Accuracy with no prompt at all, drawn as a reference line when the x objective is an accuracy.
    x_baseline: float | None = None

    def tuner(self, name: str) -> TunerSeries:
        """The series of tuner ``name``; ``KeyError`` listing the tuners when absent."""
        for series in self.series:
            if series.tuner == name:
                return series
        raise KeyError(f"no tuner {name!r} in the plot; tuners: {[s.tuner for s in self.series]}")


def axis_label(name: str) -> str:
    """``"task/acc_dev ↑"`` for a higher-is-better metric, ``"interp/log_ppl ↓"`` for a lower-is-better one."""
    return f"{name} {'↑' if metric_info(name).higher_is_better else '↓'}"


def tuner_order(tuners: Sequence[str]) -> list[str]:
    """Known tuners in :data:`TUNER_STYLES` order, then any others sorted by name."""
    known = [t for t in TUNER_STYLES if t in tuners]
    return known + sorted(set(tuners) - set(known))


def tuner_styles(tuners: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``(colour, marker)`` per tuner: fixed for known tuners, from a hash of the name for others.

    The hash (CRC-32, stable across processes, unlike ``hash``) keeps an unknown tuner's style the same in
    every figure; a clash inside one figure moves to the next free style.
    """
    styles = {t: TUNER_STYLES[t] for t in tuners if t in TUNER_STYLES}
    used = set(styles.values())
    for tuner in sorted(set(tuners) - set(styles)):
        start = zlib.crc32(tuner.encode("utf-8")) % len(_EXTRA_STYLES)
        for step in range(len(_EXTRA_STYLES)):
            style = _EXTRA_STYLES[(start + step) % len(_EXTRA_STYLES)]
            if style not in used:
                break
        else:
            style = _EXTRA_STYLES[start]  # more unknown tuners than styles: reuse
        styles[tuner] = style
        used.add(style)
    return styles


def _column(table: pd.DataFrame, name: str) -> np.ndarray:
    if len(table) == 0:
        return np.zeros(0)
    return table[name].to_numpy(dtype=np.float64, na_value=np.nan)


def pareto_plot(table: pd.DataFrame, fronts: Fronts) -> ParetoPlot:
    """Compute the Pareto figure of ``table``: x = ``fronts.objectives[0]``, y = ``fronts.objectives[1]``.

    Points are grouped by tuner in :func:`tuner_order`; each tuner's front is its own (``fronts.is_pareto``).
    """
    if len(fronts.objectives) < 2:
        raise ValueError(f"a Pareto plot needs at least 2 objectives, got {fronts.objectives}")
    if len(fronts.is_pareto) != len(table):
        raise ValueError(f"fronts cover {len(fronts.is_pareto)} trials but the table has {len(table)} rows")
    x_name, y_name = fronts.objectives[0], fronts.objectives[1]
    x_all, y_all = _column(table, x_name), _column(table, y_name)
    drawable = np.isfinite(x_all) & np.isfinite(y_all)
    tuner_of_row = table["tuner"].astype(str).to_numpy(dtype=object) if len(table) else np.zeros(0, dtype=object)
    order = tuner_order(list(dict.fromkeys(tuner_of_row.tolist())))
    styles = tuner_styles(order)

    series = []
    for tuner in order:
        rows = np.flatnonzero(tuner_of_row == tuner)
        x, y = x_all[rows], y_all[rows]
        on_front = fronts.is_pareto[rows] & drawable[rows]
        front = np.flatnonzero(on_front)
        front = front[np.lexsort((y[front], x[front]))]
        color, marker = styles[tuner]
        series.append(
            TunerSeries(
                tuner=tuner,
                rows=rows,
                x=x,
                y=y,
                front=front,
                dominated=np.flatnonzero(~on_front & drawable[rows]),
                gamed=np.flatnonzero(fronts.gamed[rows] & drawable[rows]),
                color=color,
                marker=marker,
            )
        )

    step_where: Literal["pre", "post"] | None = None
    if len(fronts.objectives) == 2:
        step_where = "pre" if metric_info(x_name).higher_is_better else "post"
    x_baseline = None
    baseline_column = "baseline/" + x_name.removeprefix("task/")
    if x_name.startswith("task/acc_") and baseline_column in table and len(table):
        values = _column(table, baseline_column)
        if np.isfinite(values).any():
            x_baseline = float(np.nanmean(values))
    return ParetoPlot(
        objectives=(x_name, y_name),
        x_label=axis_label(x_name),
        y_label=axis_label(y_name),
        series=tuple(series),
        step_where=step_where,
        gamed_label=f"proxy gamed (repeat/special > {fronts.gamed_threshold:g})",
        x_baseline=x_baseline,
    )


def _draw_axes(ax: Axes, plot: ParetoPlot) -> None:
    ax.set_xlabel(plot.x_label)
    ax.set_ylabel(plot.y_label)
    ax.grid(True, linewidth=0.3, alpha=0.5)
    any_dominated = any_gamed = False
    for s in plot.series:
        if len(s.dominated):
            any_dominated = True
            ax.scatter(
                s.x[s.dominated],
                s.y[s.dominated],
                color=s.color,
                marker=s.marker,
                s=10,
                linewidths=0,
                alpha=plot.dominated_alpha,
            )
        drawstyle = f"steps-{plot.step_where}" if plot.step_where else "default"
        ax.plot(
            s.x[s.front],
            s.y[s.front],
            color=s.color,
            marker=s.marker,
            markersize=3.5,
            linewidth=1.0 if plot.step_where else 0.0,
            drawstyle=drawstyle,
            label=s.tuner,
            zorder=3,
        )
        if len(s.gamed):
            any_gamed = True
            ax.scatter(s.x[s.gamed], s.y[s.gamed], color=GAMED_COLOR, marker="x", s=14, linewidths=0.8, zorder=4)
    if plot.x_baseline is not None:
        ax.axvline(plot.x_baseline, color="0.45", linestyle="--", linewidth=0.8, label="no prompt", zorder=1)
    if not plot.series:
        return
    # Proxy artists: legend entries that explain the faded and crossed points without repeating per tuner.
    if any_dominated:
        ax.plot(
            [],
            [],
            linestyle="none",
            marker="o",
            markersize=3.5,
            color="0.4",
            alpha=plot.dominated_alpha,
            label="dominated",
        )
    # Shown even with no crossed point, so a figure without crosses says that no prompt gamed the proxy.
    ax.plot([], [], linestyle="none", marker="x", markersize=4, color=GAMED_COLOR, label=plot.gamed_label)
    # A light box rather than none: "best" may still have to overlap a step line in a crowded figure.
    ax.legend(
        loc="best",
        frameon=True,
        framealpha=0.85,
        edgecolor="none",
        fancybox=False,
        handlelength=1.5,
        borderaxespad=0.3,
        labelspacing=0.3,
    )
    logger.debug("drew %d tuners (dominated shown: %s, gamed shown: %s)", len(plot.series), any_dominated, any_gamed)


def draw(plot: ParetoPlot, stem: Path, *, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``stem.pdf``, ``stem.svg`` and ``stem.png`` (or the given ``formats``); returns their paths.

    Uses a standalone :class:`~matplotlib.figure.Figure` on an Agg canvas, so no pyplot state is touched and
    it is safe in Ray workers. An empty plot still gives valid files with labelled axes.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=FIGURE_SIZE, layout="constrained")
        FigureCanvasAgg(figure)
        _draw_axes(figure.add_subplot(), plot)
        for fmt in formats:
            # Not with_suffix: a stem like "pareto.v2" would lose its ".v2".
            path = stem.parent / f"{stem.name}.{fmt}"
            figure.savefig(path, format=fmt, dpi=DPI, metadata=_METADATA.get(fmt, {}))
            paths.append(path)
    logger.info("wrote %s", ", ".join(str(p) for p in paths))
    return paths

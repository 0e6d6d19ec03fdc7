"""The Pareto figure of a sweep: :func:`pareto_plot` computes what to draw, :func:`draw` draws it.

Tests assert on the computed :class:`ParetoPlot`; :func:`render` turns it into a matplotlib figure and
:func:`draw` into paper-ready files (one column wide, TrueType fonts embedded in the PDF, text kept as text in
the SVG, a 300 dpi PNG). Values are in the metrics' original units: the sign flip of
:func:`sweep.results.pareto.objective_matrix` stays inside the front computation.

A figure has two views of the same points. The fronts are always the search's own (dev-side objectives);
the *test* view puts the held-out counterpart of each dev metric on its axis (``task/acc_dev`` ->
``task/acc_test``), so a reader sees how the selected prompts generalise; the *dev* view shows what the search
optimised, with the staircase of each front.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Annotation
from matplotlib.transforms import Bbox

from objectives.metrics import METRICS
from objectives.stats import CI95
from sweep.results.columns import (
    BASELINE_NAMES,
    BASELINE_STYLES,
    GAMED_COLOR,
    GREY,
    PROMPT_TEXT,
    TEST_METRIC,
    arrow,
    cell_text,
    higher_is_better,
    tuner_order,
    tuner_styles,
    tuners_of,
)
from sweep.results.pareto import Fronts
from tuners.baselines import BASELINES

logger = logging.getLogger(__name__)

View = Literal["test", "dev"]
VIEWS: tuple[View, ...] = ("test", "dev")

FIGURE_WIDTH = 3.4  # inches: one column of a two-column paper
AXES_HEIGHT = 2.35  # inches for the axes with their tick labels and axis labels, before the legend
LEGEND_ROW_HEIGHT = 0.12  # inches per legend row (6 pt text plus spacing)
DPI = 300
LABEL_CHARS = 18  # prompt characters shown beside a point
LABEL_SIZE = 4.5  # points: beside-the-point prompt text, the smallest size still legible in print
MARKER_SIZE = 3.5  # points
_LABEL_BOX: dict[str, Any] = {"boxstyle": "square,pad=0.08", "facecolor": "white", "edgecolor": "none", "alpha": 0.7}

# Default axis labels a reader understands without the metric registry. Users override them per sweep.
AXIS_LABELS: dict[str, str] = {
    TEST_METRIC: "Test accuracy",
    "task/acc_dev": "Dev accuracy",
    "task/acc_train": "Train accuracy",
    "task/acc_test_soft": "Test accuracy (soft prompt)",
    "task/acc_dev_soft": "Dev accuracy (soft prompt)",
    "task/ce": "Task cross-entropy",
    "interp/scrutability": "Readability (\u2212log perplexity)",
    "interp/log_ppl": "Prompt log-perplexity",
    "interp/word_frac": "Real-word share",
    "interp/repeat_frac": "Repeated-token share",
    "interp/special_frac": "Special-token share",
    "faith/dist": "Faithfulness: distance to vocabulary",
    "faith/output": "Faithfulness: logit gap (soft vs. discrete)",
    "faith/perf": "Faithfulness: accuracy gap (soft vs. discrete)",
    "faith/perf_ce": "Faithfulness: cross-entropy gap (soft vs. discrete)",
}

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
    """One tuner's (or one baseline's) points; ``m`` is its number of trials.

    ``rows`` ``(m,)`` are positional row indices into the trials table; ``x``, ``y`` ``(m,)`` the plotted
    metrics in original units and ``x_err``, ``y_err`` ``(m,)`` their replicate 95 % half-widths (NaN: no bar).
    A point is drawable when ``x`` and ``y`` are finite. ``front``, ``dominated`` and ``gamed`` index into
    ``x``/``y`` and hold drawable points only: ``front`` the tuner's Pareto points (on the dev objectives) in
    the order of the dev front (by the first objective, then the second), ``dominated`` the other drawable
    points, ``gamed`` the drawable points flagged as proxy gaming. For a baseline every drawable point is in
    ``front``. ``texts`` ``(m,)`` are the short prompt texts drawn beside front points; ``label`` names the
    series in the legend.
    """

    tuner: str
    label: str
    rows: np.ndarray
    x: np.ndarray
    y: np.ndarray
    x_err: np.ndarray
    y_err: np.ndarray
    front: np.ndarray
    dominated: np.ndarray
    gamed: np.ndarray
    texts: tuple[str, ...]
    color: str
    marker: str


@dataclass(frozen=True, eq=False)
class ParetoPlot:
    """Everything :func:`draw` needs, computed from a trials table and its :class:`Fronts`.

    ``objectives`` are the searched (dev-side) metrics the fronts are computed on; ``axes`` the metrics on x
    and y in this ``view`` (equal to ``objectives`` in the dev view; their test counterparts where they exist
    in the test view). ``series`` are the learned tuners, ``baselines`` the hand-written and LM-sampled
    prompts (markers, never fronts); the no-prompt baseline is a reference line at ``x_baseline`` (when x is
    an accuracy) or ``y_baseline`` (when only y is), with its half-width ``*_baseline_err`` drawn as a band.

    ``step_where`` is the matplotlib step style of the staircase bounding the dominated region of front
    points sorted by x (``"pre"`` when larger x is better, ``"post"`` when smaller is); it is ``None`` when
    the axes are not the front's own objectives (the test view: the points no longer form a staircase, and
    ``join_front`` joins them with a thin line in dev-front order instead) or when the fronts use more than
    two objectives (no staircase and no order: markers only).
    """

    objectives: tuple[str, str]
    view: View
    axes: tuple[str, str]
    x_label: str
    y_label: str
    series: tuple[TunerSeries, ...]
    baselines: tuple[TunerSeries, ...]
    step_where: Literal["pre", "post"] | None
    join_front: bool
    gamed_label: str
    dominated_alpha: float = 0.25
    x_baseline: float | None = None
    x_baseline_err: float | None = None
    y_baseline: float | None = None
    y_baseline_err: float | None = None
    baseline_label: str = BASELINE_NAMES["no_prompt"]
    # What the plotted metrics can take (:func:`value_range`); error bars and bands are clipped to them.
    x_range: tuple[float, float] = (-math.inf, math.inf)
    y_range: tuple[float, float] = (-math.inf, math.inf)

    def tuner(self, name: str) -> TunerSeries:
        """The series of tuner ``name``; ``KeyError`` listing the tuners when absent."""
        for series in self.series:
            if series.tuner == name:
                return series
        raise KeyError(f"no tuner {name!r} in the plot; tuners: {[s.tuner for s in self.series]}")

    def baseline(self, name: str) -> TunerSeries:
        """The markers of baseline ``name`` (``manual``, ``lm_sample``); ``KeyError`` listing them when absent."""
        for series in self.baselines:
            if series.tuner == name:
                return series
        raise KeyError(f"no baseline {name!r} drawn as markers; baselines: {[s.tuner for s in self.baselines]}")


def axis_label(name: str, labels: Mapping[str, str] | None = None) -> str:
    """The axis label of metric ``name``: ``labels[name]``, else :data:`AXIS_LABELS`, else the key with its
    direction (``"task/acc_dev ↑"``, ``"interp/log_ppl ↓"``)."""
    if labels and name in labels:
        return labels[name]
    if name in AXIS_LABELS:
        return AXIS_LABELS[name]
    return f"{name} {arrow(name)}"


def held_out_metric(name: str, table: pd.DataFrame | None = None) -> str:
    """The held-out metric of dev metric ``name`` (``task/acc_dev`` -> ``task/acc_test``), else ``name``.

    With a non-empty ``table`` the counterpart must be one of its columns (an older table without test
    accuracy keeps the dev metric, so its axis is honestly labelled dev).
    """
    if "_dev" not in name:
        return name
    candidate = name.replace("_dev", "_test")
    if candidate not in METRICS:
        return name
    if table is not None and len(table) and candidate not in table.columns:
        return name
    return candidate


def value_range(name: str) -> tuple[float, float]:
    """The values metric ``name`` can take: accuracies and shares lie in [0, 1], perplexities and distances
    are >= 0, readability (−log perplexity) <= 0; anything else is unbounded. Error bars stop at these bounds:
    with few replicates a t-interval can reach past them, and the part beyond says nothing."""
    if is_accuracy(name) or name.endswith("_frac") or name == "faith/perf":
        return 0.0, 1.0
    if name in ("interp/log_ppl", "task/ce") or name.startswith("faith/"):
        return 0.0, math.inf
    if name == "interp/scrutability":
        return -math.inf, 0.0
    return -math.inf, math.inf


def is_accuracy(name: str) -> bool:
    return name.startswith(("task/acc_", "baseline/acc_"))


def short_prompt(text: str, limit: int = LABEL_CHARS) -> str:
    """``text`` as a short ``repr``-like label: quoted so that leading and repeated spaces show, control
    characters escaped, cut to ``limit`` characters with ``…``. Characters past Latin Extended-A are escaped
    (``\\u4e2d``) too: the figure's font may lack their glyphs, and a missing glyph prints as an empty box."""
    if limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    cut = len(text) > limit
    body = repr(text[:limit])
    body = "".join(
        c if ord(c) <= 0x17F else f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}" for c in body
    )
    return body[:-1] + "…" + body[-1] if cut else body


def _column(table: pd.DataFrame, name: str) -> np.ndarray:
    if len(table) == 0:
        return np.zeros(0)
    return table[name].to_numpy(dtype=np.float64, na_value=np.nan)


def _half_width(table: pd.DataFrame, name: str) -> np.ndarray:
    """``name.ci95`` (NaN where absent, negative or not finite: no bar)."""
    if name + CI95 not in table.columns:
        return np.full(len(table), np.nan)
    values = _column(table, name + CI95)
    return np.where(np.isfinite(values) & (values >= 0), values, np.nan)


def _texts(table: pd.DataFrame) -> list[str]:
    return [short_prompt(cell_text(table, PROMPT_TEXT, row)) for row in range(len(table))]


def _reference(table: pd.DataFrame, rows: np.ndarray, name: str) -> tuple[float | None, float | None]:
    """Mean of the finite values of ``name`` over ``rows`` and its half-width (the single row's ``ci95``)."""
    values = _column(table, name)[rows]
    finite = np.isfinite(values)
    if not finite.any():
        return None, None
    errors = _half_width(table, name)[rows][finite]
    error = float(errors[0]) if len(errors) == 1 and np.isfinite(errors[0]) else None
    return float(values[finite].mean()), error


def _no_prompt_line(table: pd.DataFrame, tuner_of_row: np.ndarray, name: str) -> tuple[float | None, float | None]:
    """Where the no-prompt reference line goes on an accuracy axis ``name``: the ``no_prompt`` row's value,
    else the mean of the ``baseline/acc_*`` column every result carries (older sweeps); ``None`` if neither."""
    if not is_accuracy(name) or len(table) == 0:
        return None, None
    rows = np.flatnonzero(tuner_of_row == "no_prompt")
    if len(rows):
        value, error = _reference(table, rows, name)
        if value is not None:
            return value, error
    column = "baseline/" + name.removeprefix("task/")
    if column in table.columns:
        return _reference(table, np.arange(len(table)), column)
    return None, None


def pareto_plot(
    table: pd.DataFrame,
    fronts: Fronts,
    *,
    view: View = "test",
    labels: Mapping[str, str] | None = None,
) -> ParetoPlot:
    """Compute the Pareto figure of ``table`` in ``view``: the fronts of ``fronts.objectives[:2]`` with x, y
    the objectives themselves (``"dev"``) or their held-out counterparts (``"test"``, the default).

    Learned tuners are series in :func:`tuner_order`, each front its own (``fronts.is_pareto``); the
    baselines of :data:`tuners.baselines.BASELINES` are not fronts: ``manual`` and ``lm_sample`` become
    marker series, ``no_prompt`` a reference line. ``labels`` override the axis labels per metric.
    """
    if len(fronts.objectives) < 2:
        raise ValueError(f"a Pareto plot needs at least 2 objectives, got {fronts.objectives}")
    if len(fronts.is_pareto) != len(table):
        raise ValueError(f"fronts cover {len(fronts.is_pareto)} trials but the table has {len(table)} rows")
    if view not in VIEWS:
        raise ValueError(f"view={view!r}; choose from {list(VIEWS)}")
    objectives = (fronts.objectives[0], fronts.objectives[1])
    axes = (
        objectives if view == "dev" else (held_out_metric(objectives[0], table), held_out_metric(objectives[1], table))
    )
    stuck = [o for o, a in zip(objectives, axes, strict=True) if view == "test" and "_dev" in o and a == o]
    if stuck and len(table):
        logger.warning("the test view shows %s on dev data: the table has no test counterpart", stuck)
    x_all, y_all = _column(table, axes[0]), _column(table, axes[1])
    x_err, y_err = _half_width(table, axes[0]), _half_width(table, axes[1])
    # The dev-front order: what the search traded off, kept in every view so a test-view line reads the same.
    order_x, order_y = _column(table, objectives[0]), _column(table, objectives[1])
    # Both views draw the same points: one whose dev objectives are missing was never placed by the search.
    drawable = np.isfinite(x_all) & np.isfinite(y_all) & np.isfinite(order_x) & np.isfinite(order_y)
    tuner_of_row = tuners_of(table)
    texts = np.array(_texts(table), dtype=object)
    present = list(dict.fromkeys(tuner_of_row.tolist()))
    learned = tuner_order([t for t in present if t not in BASELINES])
    styles = tuner_styles(learned)

    def series_of(tuner: str, label: str, color: str, marker: str, *, baseline: bool) -> TunerSeries:
        rows = np.flatnonzero(tuner_of_row == tuner)
        on_front = drawable[rows] if baseline else fronts.is_pareto[rows] & drawable[rows]
        front = np.flatnonzero(on_front)
        if not baseline:
            # Ascending on the first objective in its own units; a lower-is-better one is ascending too, so a
            # dev-view staircase is drawn left to right.
            front = front[np.lexsort((order_y[rows][front], order_x[rows][front]))]
        return TunerSeries(
            tuner=tuner,
            label=label,
            rows=rows,
            x=x_all[rows],
            y=y_all[rows],
            x_err=x_err[rows],
            y_err=y_err[rows],
            front=front,
            dominated=np.flatnonzero(~on_front & drawable[rows]),
            gamed=np.flatnonzero(fronts.gamed[rows] & drawable[rows]),
            texts=tuple(texts[rows].tolist()),
            color=color,
            marker=marker,
        )

    series = tuple(series_of(t, t, *styles[t], baseline=False) for t in learned)
    baselines = tuple(
        series_of(b, BASELINE_NAMES[b], *BASELINE_STYLES[b], baseline=True) for b in BASELINE_STYLES if b in present
    )

    two = len(fronts.objectives) == 2
    step_where: Literal["pre", "post"] | None = None
    if two and axes == objectives:
        step_where = "pre" if higher_is_better(axes[0]) else "post"
    x_line, x_line_err = _no_prompt_line(table, tuner_of_row, axes[0])
    y_line, y_line_err = (None, None) if x_line is not None else _no_prompt_line(table, tuner_of_row, axes[1])
    return ParetoPlot(
        objectives=objectives,
        view=view,
        axes=axes,
        x_label=axis_label(axes[0], labels),
        y_label=axis_label(axes[1], labels),
        series=series,
        baselines=baselines,
        step_where=step_where,
        join_front=two and axes != objectives,
        gamed_label=f"proxy gamed (repeat/special > {fronts.gamed_threshold:g})",
        x_baseline=x_line,
        x_baseline_err=x_line_err,
        y_baseline=y_line,
        y_baseline_err=y_line_err,
        x_range=value_range(axes[0]),
        y_range=value_range(axes[1]),
    )


# --- drawing ------------------------------------------------------------------------------------------------

# Where a prompt label may go around its point: (dx, dy) in points, the text's alignment, and whether it is
# far enough to need a leader line back to its point. Tried in order: right of the point first (reading
# order), then left, above, below, the diagonals, then the same ring farther out twice.
_NEAR: tuple[tuple[float, float, str, str], ...] = (
    (3.5, 1.0, "left", "bottom"),
    (3.5, -1.0, "left", "top"),
    (-3.5, 1.0, "right", "bottom"),
    (-3.5, -1.0, "right", "top"),
    (0.0, 3.5, "center", "bottom"),
    (0.0, -3.5, "center", "top"),
    (2.5, 2.5, "left", "bottom"),
    (2.5, -2.5, "left", "top"),
    (-2.5, 2.5, "right", "bottom"),
    (-2.5, -2.5, "right", "top"),
)
_Candidate = tuple[float, float, str, str, bool]
_RINGS: tuple[tuple[_Candidate, ...], ...] = tuple(
    tuple((scale * dx, scale * dy, ha, va, scale > 1) for dx, dy, ha, va in _NEAR) for scale in (1.0, 2.5, 4.5)
)
# The order rings are tried in, and whether the soft obstacles (faded points, front lines) count: a label
# close to its point over a line beats one far away on a long leader, but only up to the middle ring.
_SEARCH: tuple[tuple[tuple[_Candidate, ...], bool], ...] = (
    (_RINGS[0], True),
    (_RINGS[1], True),
    (_RINGS[0], False),
    (_RINGS[1], False),
    (_RINGS[2], True),
    (_RINGS[2], False),
)


def _marker_size(s: TunerSeries, plot: ParetoPlot) -> float:
    """Points; baseline markers are drawn larger (a star reads small at the size of a circle)."""
    if any(s is b for b in plot.baselines):
        return MARKER_SIZE * (1.6 if s.marker == "*" else 1.2)
    return MARKER_SIZE


def _errorbars(ax: Axes, plot: ParetoPlot, s: TunerSeries, points: np.ndarray, *, alpha: float) -> int:
    """Bars of ±ci95 on x and y of ``points`` where the half-width is finite, stopped at the metric's bounds;
    returns how many were drawn."""
    drawn = 0
    for err, values, (low, high), axis in ((s.x_err, s.x, plot.x_range, "x"), (s.y_err, s.y, plot.y_range, "y")):
        keep = points[np.isfinite(err[points])]
        if not len(keep):
            continue
        below = np.clip(np.minimum(err[keep], values[keep] - low), 0.0, None)
        above = np.clip(np.minimum(err[keep], high - values[keep]), 0.0, None)
        kwargs = {"xerr" if axis == "x" else "yerr": np.vstack([below, above])}
        ax.errorbar(
            s.x[keep], s.y[keep], fmt="none", ecolor=s.color, elinewidth=0.5, capsize=0, alpha=alpha, zorder=2, **kwargs
        )
        drawn += len(keep)
    return drawn


def _mathtext_safe(label: str) -> str:
    """``label`` as given when its ``$`` pair up (a user may write mathtext, ``"$-\\log p$"``), else with every
    ``$`` escaped: an unpaired one would make matplotlib fail at save time, after the sweep has run."""
    dollars = re.findall(r"(?<!\\)\$", label)
    return label if len(dollars) % 2 == 0 else re.sub(r"(?<!\\)\$", r"\\$", label)


def _draw_axes(ax: Axes, plot: ParetoPlot) -> tuple[list[tuple[float, float, str, str]], list[Line2D]]:
    """Draw the data of ``plot`` on ``ax``; returns the prompt labels to place, ``(x, y, text, colour)``, and
    the front lines (staircases or dev-order joins) that labels should not cross.

    Front and baseline points carry their ±ci95 bars; dominated points are faded context without bars (their
    bars would bury the fronts) and without labels."""
    ax.set_xlabel(_mathtext_safe(plot.x_label))
    ax.set_ylabel(_mathtext_safe(plot.y_label))
    ax.grid(True, linewidth=0.3, alpha=0.5)
    requests: list[tuple[float, float, str, str]] = []
    lines: list[Line2D] = []
    seen: set[tuple[float, float, str]] = set()
    any_dominated = False

    def request(s: TunerSeries, points: np.ndarray) -> None:
        # One label per distinct (point, text): duplicate trials sit on each other and would stack labels.
        for i in points.tolist():
            key = (float(s.x[i]), float(s.y[i]), s.texts[i])
            if key not in seen:
                seen.add(key)
                requests.append((key[0], key[1], s.texts[i], s.color))

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
                zorder=2,
            )
        _errorbars(ax, plot, s, s.front, alpha=0.6)
        if plot.step_where:
            style: dict[str, Any] = {"linewidth": 1.0, "drawstyle": f"steps-{plot.step_where}"}
        else:
            style = {"linewidth": 0.6 if plot.join_front else 0.0}
        (line,) = ax.plot(
            s.x[s.front],
            s.y[s.front],
            color=s.color,
            marker=s.marker,
            markersize=MARKER_SIZE,
            label=s.tuner,
            zorder=3,
            **style,
        )
        if style["linewidth"] > 0:
            lines.append(line)
    for s in plot.baselines:
        _errorbars(ax, plot, s, s.front, alpha=0.8)
        ax.plot(
            s.x[s.front],
            s.y[s.front],
            linestyle="none",
            color=s.color,
            marker=s.marker,
            markersize=_marker_size(s, plot),
            label=s.label,
            zorder=4,
        )
    # Baselines are labelled first: they are few and the reader looks for them by name.
    for s in plot.baselines:
        request(s, s.front)
    for s in plot.series:
        request(s, s.front)
    any_gamed = False
    for s in (*plot.series, *plot.baselines):
        if len(s.gamed):
            any_gamed = True
            ax.scatter(s.x[s.gamed], s.y[s.gamed], color=GAMED_COLOR, marker="x", s=14, linewidths=0.8, zorder=5)
    if plot.x_baseline is not None:
        if plot.x_baseline_err:
            ax.axvspan(
                max(plot.x_baseline - plot.x_baseline_err, plot.x_range[0]),
                min(plot.x_baseline + plot.x_baseline_err, plot.x_range[1]),
                color=GREY,
                alpha=0.12,
                linewidth=0,
                zorder=0,
            )
        ax.axvline(plot.x_baseline, color=GREY, linestyle="--", linewidth=0.8, label=plot.baseline_label)
    if plot.y_baseline is not None:
        if plot.y_baseline_err:
            ax.axhspan(
                max(plot.y_baseline - plot.y_baseline_err, plot.y_range[0]),
                min(plot.y_baseline + plot.y_baseline_err, plot.y_range[1]),
                color=GREY,
                alpha=0.12,
                linewidth=0,
                zorder=0,
            )
        ax.axhline(plot.y_baseline, color=GREY, linestyle="--", linewidth=0.8, label=plot.baseline_label)
    if plot.series or plot.baselines:
        # Proxy artists: legend entries that explain the faded and crossed points without repeating per tuner.
        if any_dominated:
            ax.plot(
                [],
                [],
                linestyle="none",
                marker="o",
                markersize=MARKER_SIZE,
                color=GREY,
                alpha=plot.dominated_alpha,
                label="dominated",
            )
        # Shown even with no crossed point, so a figure without crosses says that no prompt gamed the proxy.
        ax.plot([], [], linestyle="none", marker="x", markersize=4, color=GAMED_COLOR, label=plot.gamed_label)
    logger.debug("drew %d tuners (dominated shown: %s, gamed shown: %s)", len(plot.series), any_dominated, any_gamed)
    return requests, lines


def _boxes(centres: np.ndarray, radius: float) -> np.ndarray:
    """``(n, 4)`` boxes ``x0, y0, x1, y1`` of half-width ``radius`` around display points ``(n, 2)``."""
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    return np.hstack([centres - radius, centres + radius])


def _point_boxes(ax: Axes, plot: ParetoPlot) -> tuple[np.ndarray, np.ndarray]:
    """Display-space boxes ``(n, 4)`` of the drawn markers, so that no prompt label covers a point: those of
    front and baseline points, and those of the faded dominated points (which a label may cover as a last
    resort)."""
    marked, faded = [np.zeros((0, 4))], [np.zeros((0, 4))]
    for s in (*plot.series, *plot.baselines):
        # Half the drawn marker size (a size is a diameter) plus half a pixel of margin.
        radius = _marker_size(s, plot) / 2 * ax.figure.dpi / 72.0 + 0.5
        for points, boxes in ((s.front, marked), (s.dominated, faded)):
            if len(points):
                boxes.append(_boxes(ax.transData.transform(np.column_stack([s.x[points], s.y[points]])), radius))
    return np.vstack(marked), np.vstack(faded)


def _line_boxes(lines: Sequence[Line2D], *, step: float = 3.0) -> np.ndarray:
    """Small boxes every ``step`` pixels along each line as drawn (steps included), ``(n, 4)``."""
    boxes = [np.zeros((0, 4))]
    for line in lines:
        vertices = line.get_transform().transform_path(line.get_path()).vertices
        for start, end in zip(vertices[:-1], vertices[1:], strict=True):
            count = max(2, int(np.hypot(*(end - start)) // step) + 1)
            boxes.append(_boxes(np.linspace(start, end, count), 0.75))
    return np.vstack(boxes)


def _hits(box: Bbox, boxes: np.ndarray) -> bool:
    """Whether ``box`` overlaps any of ``boxes`` ``(n, 4)``."""
    return bool(
        ((box.x0 < boxes[:, 2]) & (box.x1 > boxes[:, 0]) & (box.y0 < boxes[:, 3]) & (box.y1 > boxes[:, 1])).any()
    )


def _place_labels(
    ax: Axes,
    renderer: RendererBase,
    requests: Sequence[tuple[float, float, str, str]],
    obstacles: np.ndarray,
    soft: np.ndarray,
) -> int:
    """Put each prompt label at the first spot around its point that stays inside the axes and overlaps no
    obstacle (marked points, the reference line, labels placed before) and nothing ``soft`` (faded points,
    front lines); failing that, the first spot clear of the obstacles alone. A label with no free spot is left
    out (the table lists every prompt). Greedy and in a fixed order, so the same plot always gives the same
    figure. Returns how many were placed."""
    frame = ax.get_window_extent(renderer)
    placed = 0
    for x, y, text, color in requests:
        spot = None
        for candidates, strict in _SEARCH:
            for dx, dy, ha, va, far in candidates:
                label = _label(ax, x, y, text, color, (dx, dy), ha, va, leader=False)
                box = label.get_window_extent(renderer)
                label.remove()
                inside = box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0 and box.y1 <= frame.y1
                if inside and not _hits(box, obstacles) and not (strict and _hits(box, soft)):
                    spot = (dx, dy, ha, va, far, box)
                    break
            if spot:
                break
        if spot is None:
            logger.debug("no free spot for the label %s at (%g, %g)", text, x, y)
            continue
        dx, dy, ha, va, far, box = spot
        # Measured without its leader: the line starts at the point, so it would always "overlap" it.
        _label(ax, x, y, text, color, (dx, dy), ha, va, leader=far)
        obstacles = np.vstack([obstacles, [box.extents]])
        placed += 1
    return placed


def _label(
    ax: Axes,
    x: float,
    y: float,
    text: str,
    color: str,
    offset: tuple[float, float],
    ha: str,
    va: str,
    *,
    leader: bool,
) -> Annotation:
    label = ax.annotate(
        text,
        (x, y),
        xytext=offset,
        textcoords="offset points",
        ha=ha,
        va=va,
        fontsize=LABEL_SIZE,
        color=color,
        annotation_clip=False,
        parse_math=False,  # a prompt is text: "$" must not start mathtext
        zorder=6,
        # A light backing keeps the text readable where it crosses a staircase or an error bar.
        bbox=_LABEL_BOX,
        arrowprops={"arrowstyle": "-", "color": color, "linewidth": 0.3, "shrinkA": 0.5, "shrinkB": MARKER_SIZE * 0.6}
        if leader
        else None,
    )
    # Outside the layout: constrained layout must not move the axes for a label it cannot see yet.
    label.set_in_layout(False)
    return label


def _legend_columns(labels: Sequence[str]) -> int:
    # Two columns fit the column width when no entry is long; the gamed entry (~35 characters) needs its own.
    return 2 if max((len(t) for t in labels), default=0) <= 40 else 1


def render(plot: ParetoPlot) -> Figure:
    """The figure of ``plot`` on an Agg canvas (no pyplot state): axes on top, the legend below them.

    One paper column wide (:data:`FIGURE_WIDTH`); the height grows with the legend so the axes keep their
    size. Prompt labels are placed after the layout is final, in display space.
    """
    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=(FIGURE_WIDTH, AXES_HEIGHT), layout="constrained")
        FigureCanvasAgg(figure)
        ax = figure.add_subplot()
        requests, lines = _draw_axes(ax, plot)
        handles, names = ax.get_legend_handles_labels()
        if handles:
            columns = _legend_columns(names)
            rows = -(-len(handles) // columns)
            figure.set_size_inches(FIGURE_WIDTH, AXES_HEIGHT + rows * LEGEND_ROW_HEIGHT + 0.05)
            # Outside the axes, so it never covers a point; constrained layout makes room below the x label.
            figure.legend(
                handles,
                names,
                loc="outside lower center",
                ncols=columns,
                frameon=False,
                handlelength=1.8,
                columnspacing=1.2,
                labelspacing=0.25,
            )
        figure.draw_without_rendering()
        renderer = figure.canvas.get_renderer()
        obstacles, faded = _point_boxes(ax, plot)
        extra: list[Bbox] = []
        for line_value, vertical in ((plot.x_baseline, True), (plot.y_baseline, False)):
            if line_value is None:
                continue
            # Named on the line itself as well as in the legend: the reader should not have to look down.
            text = ax.text(
                *((line_value, 0.985) if vertical else (0.985, line_value)),
                f" {plot.baseline_label} ",
                transform=ax.get_xaxis_transform() if vertical else ax.get_yaxis_transform(),
                rotation=90 if vertical else 0,
                ha="right",
                va="top" if vertical else "bottom",
                fontsize=LABEL_SIZE + 0.5,
                color=GREY,
                bbox=_LABEL_BOX,
                zorder=6,
            )
            text.set_in_layout(False)
            extra.append(text.get_window_extent(renderer))
            # The line itself too: a label across it would hide where the reference is.
            frame = ax.get_window_extent(renderer)
            at = ax.transData.transform((line_value, line_value))[0 if vertical else 1]
            extra.append(
                Bbox.from_extents(at - 1, frame.y0, at + 1, frame.y1)
                if vertical
                else Bbox.from_extents(frame.x0, at - 1, frame.x1, at + 1)
            )
        obstacles = np.vstack([obstacles, *([b.extents] for b in extra)])
        placed = _place_labels(ax, renderer, requests, obstacles, np.vstack([faded, _line_boxes(lines)]))
        logger.debug("placed %d of %d prompt labels", placed, len(requests))
    return figure


def draw(plot: ParetoPlot, stem: Path, *, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``stem.pdf``, ``stem.svg`` and ``stem.png`` (or the given ``formats``); returns their paths.

    Uses a standalone :class:`~matplotlib.figure.Figure` (see :func:`render`), so no pyplot state is touched
    and it is safe in Ray workers. An empty plot still gives valid files with labelled axes.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with matplotlib.rc_context(_RC):
        figure = render(plot)
        for fmt in formats:
            # Not with_suffix: a stem like "pareto.v2" would lose its ".v2".
            path = stem.parent / f"{stem.name}.{fmt}"
            figure.savefig(path, format=fmt, dpi=DPI, metadata=_METADATA.get(fmt, {}))
            paths.append(path)
    logger.info("wrote %s", ", ".join(str(p) for p in paths))
    return paths


def legend_entries(figure: Figure) -> list[str]:
    """The texts of ``figure``'s legend (the figure-level one :func:`render` draws), for tests and checks."""
    return [t.get_text() for legend in figure.legends for t in legend.get_texts()]

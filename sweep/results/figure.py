"""The Pareto figure of a sweep, computed: :func:`pareto_plot` says what to draw as a :class:`ParetoPlot`.

Tests assert on the computed plot; :mod:`sweep.results.render` draws it into paper-ready files and the report
page draws the same plot with Plotly, so both show the same points. Values are in the metrics' original units:
the sign flip of :func:`sweep.results.pareto.objective_matrix` stays inside the front computation.

A figure has two views of the same points. The fronts are always the search's own (dev-side objectives);
the *test* view puts the held-out counterpart of each dev metric on its axis (``task/acc_dev`` ->
``task/acc_test``), so a reader sees how the selected prompts generalise; the *dev* view shows what the search
optimised, with the staircase of each front.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from objectives.metrics import METRICS
from objectives.stats import CI95
from sweep.results.columns import (
    BASELINE_NAMES,
    BASELINE_STYLES,
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
from tuners.base import BASELINES

logger = logging.getLogger(__name__)

View = Literal["test", "dev"]
VIEWS: tuple[View, ...] = ("test", "dev")

LABEL_CHARS = 18  # prompt characters shown beside a point

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
    """Everything a drawing needs, computed from a trials table and its :class:`Fronts`.

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


def _view_axes(objectives: tuple[str, str], view: View, table: pd.DataFrame) -> tuple[str, str]:
    """The metrics on x and y in ``view``: the objectives (dev), or their held-out counterparts (test)."""
    if view == "dev":
        return objectives
    axes = (held_out_metric(objectives[0], table), held_out_metric(objectives[1], table))
    stuck = [o for o, a in zip(objectives, axes, strict=True) if "_dev" in o and a == o]
    if stuck and len(table):
        logger.warning("the test view shows %s on dev data: the table has no test counterpart", stuck)
    return axes


@dataclass(frozen=True, eq=False)
class _Points:
    """Every row's place in one view, ``(n,)`` each: ``x``, ``y`` and their half-widths, the dev objectives
    ``order_x``, ``order_y`` (the front order), whether the row is ``drawable``, its ``tuner`` and label text."""

    x: np.ndarray
    y: np.ndarray
    x_err: np.ndarray
    y_err: np.ndarray
    order_x: np.ndarray
    order_y: np.ndarray
    drawable: np.ndarray
    tuner: np.ndarray
    texts: np.ndarray


def _points(table: pd.DataFrame, objectives: tuple[str, str], axes: tuple[str, str]) -> _Points:
    x, y = _column(table, axes[0]), _column(table, axes[1])
    # The dev-front order: what the search traded off, kept in every view so a test-view line reads the same.
    order_x, order_y = _column(table, objectives[0]), _column(table, objectives[1])
    return _Points(
        x=x,
        y=y,
        x_err=_half_width(table, axes[0]),
        y_err=_half_width(table, axes[1]),
        order_x=order_x,
        order_y=order_y,
        # Both views draw the same points: one whose dev objectives are missing was never placed by the search.
        drawable=np.isfinite(x) & np.isfinite(y) & np.isfinite(order_x) & np.isfinite(order_y),
        tuner=tuners_of(table),
        texts=np.array(_texts(table), dtype=object),
    )


def _series(
    points: _Points, fronts: Fronts, tuner: str, label: str, color: str, marker: str, *, baseline: bool
) -> TunerSeries:
    """The points of ``tuner``: a learned tuner's front in dev-front order, a baseline's points all as front."""
    rows = np.flatnonzero(points.tuner == tuner)
    drawable = points.drawable[rows]
    on_front = drawable if baseline else fronts.is_pareto[rows] & drawable
    front = np.flatnonzero(on_front)
    if not baseline:
        # Ascending on the first objective in its own units; a lower-is-better one is ascending too, so a
        # dev-view staircase is drawn left to right.
        front = front[np.lexsort((points.order_y[rows][front], points.order_x[rows][front]))]
    return TunerSeries(
        tuner=tuner,
        label=label,
        rows=rows,
        x=points.x[rows],
        y=points.y[rows],
        x_err=points.x_err[rows],
        y_err=points.y_err[rows],
        front=front,
        dominated=np.flatnonzero(~on_front & drawable),
        gamed=np.flatnonzero(fronts.gamed[rows] & drawable),
        texts=tuple(points.texts[rows].tolist()),
        color=color,
        marker=marker,
    )


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
    axes = _view_axes(objectives, view, table)
    points = _points(table, objectives, axes)
    present = list(dict.fromkeys(points.tuner.tolist()))
    learned = tuner_order([t for t in present if t not in BASELINES])
    styles = tuner_styles(learned)
    series = tuple(_series(points, fronts, t, t, *styles[t], baseline=False) for t in learned)
    baselines = tuple(
        _series(points, fronts, b, BASELINE_NAMES[b], *BASELINE_STYLES[b], baseline=True)
        for b in BASELINE_STYLES
        if b in present
    )

    two = len(fronts.objectives) == 2
    step_where: Literal["pre", "post"] | None = None
    if two and axes == objectives:
        step_where = "pre" if higher_is_better(axes[0]) else "post"
    x_line, x_line_err = _no_prompt_line(table, points.tuner, axes[0])
    y_line, y_line_err = (None, None) if x_line is not None else _no_prompt_line(table, points.tuner, axes[1])
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

"""The Pareto figure drawn for a paper: :func:`render` turns a computed
:class:`~sweep.results.figure.ParetoPlot` into a matplotlib figure, :func:`draw` into files.

One paper column wide, TrueType fonts embedded in the PDF, text kept as text in the SVG, a 300 dpi PNG, and no
timestamps, so re-exporting a sweep gives the same bytes. Prompt labels are placed after the layout is final,
in display space, clear of the points, the lines and each other.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Annotation
from matplotlib.transforms import Bbox

from sweep.results.columns import GAMED_COLOR, GREY
from sweep.results.figure import ParetoPlot, TunerSeries

logger = logging.getLogger(__name__)

FIGURE_WIDTH = 3.4  # inches: one column of a two-column paper
AXES_HEIGHT = 2.35  # inches for the axes with their tick labels and axis labels, before the legend
LEGEND_ROW_HEIGHT = 0.12  # inches per legend row (6 pt text plus spacing)
DPI = 300
LABEL_SIZE = 4.5  # points: beside-the-point prompt text, the smallest size still legible in print
MARKER_SIZE = 3.5  # points
_LABEL_BOX: dict[str, Any] = {"boxstyle": "square,pad=0.08", "facecolor": "white", "edgecolor": "none", "alpha": 0.7}

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

# Prompt labels a figure tries to place at most (the table lists every prompt).
MAX_LABELS = 60
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
# A prompt label to place: the point (x, y) in data units, the text, its colour.
_Request = tuple[float, float, str, str]
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


def _draw_axes(ax: Axes, plot: ParetoPlot) -> tuple[list[_Request], list[Line2D]]:
    """Draw the data of ``plot`` on ``ax``; returns the prompt labels to place, ``(x, y, text, colour)``, and
    the front lines (staircases or dev-order joins) that labels should not cross.

    Front and baseline points carry their ±ci95 bars; dominated points are faded context without bars (their
    bars would bury the fronts) and without labels."""
    ax.set_xlabel(_mathtext_safe(plot.x_label))
    ax.set_ylabel(_mathtext_safe(plot.y_label))
    ax.grid(True, linewidth=0.3, alpha=0.5)
    # Drawn in this order (the SVG and PDF keep it): fronts, baselines, crosses, the reference, legend keys.
    lines = _draw_series(ax, plot)
    _draw_baselines(ax, plot)
    any_gamed = _draw_gamed(ax, plot)
    _draw_reference(ax, plot)
    any_dominated = any(len(s.dominated) for s in plot.series)
    if plot.series or plot.baselines:
        _draw_keys(ax, plot, dominated=any_dominated)
    logger.debug("drew %d tuners (dominated shown: %s, gamed shown: %s)", len(plot.series), any_dominated, any_gamed)
    return _label_requests(plot), lines


def _draw_series(ax: Axes, plot: ParetoPlot) -> list[Line2D]:
    """Each learned tuner's dominated points, faded, and its front with bars and its line; returns the lines."""
    if plot.step_where:
        style: dict[str, Any] = {"linewidth": 1.0, "drawstyle": f"steps-{plot.step_where}"}
    else:
        style = {"linewidth": 0.6 if plot.join_front else 0.0}
    lines: list[Line2D] = []
    for s in plot.series:
        if len(s.dominated):
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
    return lines


def _draw_baselines(ax: Axes, plot: ParetoPlot) -> None:
    """The hand-written and LM-sampled prompts: markers with their bars, never a front."""
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


def _draw_gamed(ax: Axes, plot: ParetoPlot) -> bool:
    """A red cross on every proxy-gamed point; whether there was one."""
    any_gamed = False
    for s in (*plot.series, *plot.baselines):
        if len(s.gamed):
            any_gamed = True
            ax.scatter(s.x[s.gamed], s.y[s.gamed], color=GAMED_COLOR, marker="x", s=14, linewidths=0.8, zorder=5)
    return any_gamed


def _draw_reference(ax: Axes, plot: ParetoPlot) -> None:
    """The no-prompt reference: a dashed line across the axes (vertical at an x value, horizontal at a y value)
    over its ±ci95 band, the band stopped at the metric's bounds."""
    for value, err, (low, high), vertical in (
        (plot.x_baseline, plot.x_baseline_err, plot.x_range, True),
        (plot.y_baseline, plot.y_baseline_err, plot.y_range, False),
    ):
        if value is None:
            continue
        if err:
            span = ax.axvspan if vertical else ax.axhspan
            span(max(value - err, low), min(value + err, high), color=GREY, alpha=0.12, linewidth=0, zorder=0)
        line = ax.axvline if vertical else ax.axhline
        line(value, color=GREY, linestyle="--", linewidth=0.8, label=plot.baseline_label)


def _draw_keys(ax: Axes, plot: ParetoPlot, *, dominated: bool) -> None:
    """Proxy artists: legend entries that explain the faded and crossed points without repeating per tuner."""
    if dominated:
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


def _label_requests(plot: ParetoPlot) -> list[_Request]:
    """The prompt labels to place, ``(x, y, text, colour)``: the baselines' first (they are few and the reader
    looks for them by name), then each front's; one per distinct (point, text), since duplicate trials sit on
    each other and would stack their labels."""
    seen: set[tuple[float, float, str]] = set()
    groups: list[list[_Request]] = []
    for series in (plot.baselines, plot.series):
        group: list[_Request] = []
        for s in series:
            for i in s.front.tolist():
                key = (float(s.x[i]), float(s.y[i]), s.texts[i])
                if key not in seen:
                    seen.add(key)
                    group.append((key[0], key[1], s.texts[i], s.color))
        groups.append(group)
    baselines, fronts = groups
    room = max(1, MAX_LABELS - len(baselines))
    if len(fronts) > room:
        # A front of hundreds of points (a 1,000-trial sweep) cannot carry a label each, and every label with no
        # free spot costs dozens of measured tries (most of a long sweep's export time): an even share is tried.
        keep = np.unique(np.linspace(0, len(fronts) - 1, room).round().astype(int))
        fronts = [fronts[i] for i in keep.tolist()]
    return baselines + fronts


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
    requests: Sequence[_Request],
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
        extra = _name_reference(ax, plot, renderer)
        obstacles = np.vstack([obstacles, *([b.extents] for b in extra)])
        placed = _place_labels(ax, renderer, requests, obstacles, np.vstack([faded, _line_boxes(lines)]))
        logger.debug("placed %d of %d prompt labels", placed, len(requests))
    return figure


def _name_reference(ax: Axes, plot: ParetoPlot, renderer: RendererBase) -> list[Bbox]:
    """Name the no-prompt line on itself as well as in the legend (the reader should not have to look down);
    returns the display boxes of the name and of the line, which prompt labels keep clear of."""
    extra: list[Bbox] = []
    for line_value, vertical in ((plot.x_baseline, True), (plot.y_baseline, False)):
        if line_value is None:
            continue
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
    return extra


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

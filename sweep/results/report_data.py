"""What the report page shows, computed without a browser: :func:`compute_report` turns the annotated trials table,
its fronts, the learning curves and the sweep record into a :class:`ReportData` of text and numbers.

Nothing here is HTML: :mod:`sweep.results.report` draws this (escaping every text once, where it writes it) and
:mod:`sweep.results.report_plotly` turns its :class:`~sweep.results.figure.ParetoPlot` views into Plotly figures.
Tests assert on this object, as Optuna's tests assert on a computed plot rather than on pixels.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
    GAMED_COLUMNS,
    GREY,
    LOG_PPL,
    PARAM_PREFIX,
    PROMPT_TEXT,
    PROXY_GAMED,
    REPLICATE_PROMPTS,
    RUN_ID,
    STEPS_DONE,
    STOPPED_AT,
    TEST_METRIC,
    TEXT_COLUMNS,
    TRIAL_ID,
    TUNER,
    VS_PREFIX,
    WORD_FRAC,
    beats_column,
    cell_text,
    cell_value,
    diff_columns,
    formatted,
    tuner_order,
    tuner_styles,
    tuners_of,
)
from sweep.results.figure import VIEWS, ParetoPlot, View, held_out_metric, pareto_plot
from sweep.results.pareto import Fronts, gamed_mask, objective_matrix
from sweep.results.report_header import Header, compute_header, direction
from tuners.base import BASELINES

# Columns that are neither metrics nor weights: text, flags, and how far a trial got (shown on their own).
_NOT_METRICS = (*TEXT_COLUMNS, *FLAG_COLUMNS, STEPS_DONE, STOPPED_AT)
_REPLICATE_COLUMN = re.compile(re.escape(REPLICATE) + r"\d+$")
_REPLICATE_KEY = re.compile(r"^rep(\d+)/")


@dataclass(frozen=True)
class Style:
    """How a tuner or baseline looks everywhere on the page: its name, colour and the figure's marker."""

    label: str
    color: str
    marker: str


@dataclass(frozen=True)
class Trial:
    """One row of the trials table as the page shows it, every value already written as text.

    ``on_front``: on its own tuner's front (never for a baseline); ``weights`` the finite searched weights,
    ``(knob, value)``; ``signals`` the proxy-gaming rows of the details, ``(name, value, help)``; ``metrics``
    every metric as ``(name with its arrow, mean, ± half-width, std)``; ``versus`` the paired test differences,
    ``(baseline, difference [low, high], "beats it" or "")``; ``values`` each shown metric's ``mean ± ci95``
    (the tooltips' and the table's text); ``cells`` the trials table's ``(sort key, text)`` per column of
    :attr:`ReportData.columns`. ``steps_done``: the steps every replicate completed (``""`` unknown);
    ``stopped_at``: the rung step where the scheduler stopped the trial, ``None`` for a full-budget trial.
    """

    row: int
    tuner: str
    label: str
    color: str
    trial_id: str
    prompt: str
    replicate_prompts: tuple[str, ...]
    weights: tuple[tuple[str, str], ...]
    on_front: bool
    on_front_all: bool
    gamed: bool
    gamed_signals: str
    signals: tuple[tuple[str, str, str], ...]
    metrics: tuple[tuple[str, str, str, str], ...]
    versus: tuple[tuple[str, str, str], ...]
    beaten: tuple[str, ...]
    run_id: str
    values: Mapping[str, str]
    cells: tuple[tuple[str, str], ...]
    steps_done: str = ""
    stopped_at: int | None = None


@dataclass(frozen=True, eq=False)
class StoppedPoints:
    """A tuner's trials stopped at a rung, placed on the dev view's axes by their values at that rung: faded
    context, never a front. ``rows`` ``(m,)`` index :attr:`ReportData.trials`; ``x``, ``y`` ``(m,)``."""

    tuner: str
    label: str
    color: str
    marker: str
    rows: np.ndarray
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class ReportData:
    """Everything the page shows. ``styles`` per tuner present (learned tuners first, then the baselines);
    ``plots`` the figure in each view; ``columns`` the trials table's ``(heading, "text" | "num")``;
    ``curves`` each trial's learning curves by row (``{row: {key: [steps, values]}}``) with ``curve_keys``
    the metric names without their replicate prefix; ``initial`` the trial shown before any hover;
    ``no_prompt_row`` per view the trial behind the no-prompt line (-1: none). ``trials`` are the table's
    full-budget rows in order, then the trials a scheduler stopped at a rung, which ``stopped`` places on the
    dev view (the figures, fronts and hypervolumes never hold them)."""

    title: str
    header: Header
    styles: Mapping[str, Style]
    plots: Mapping[View, ParetoPlot]
    trials: tuple[Trial, ...]
    columns: tuple[tuple[str, str], ...]
    curves: Mapping[str, Any]
    curve_keys: tuple[str, ...]
    initial: int | None
    no_prompt_row: Mapping[View, int]
    stopped: tuple[StoppedPoints, ...] = ()


def compute_report(
    table: pd.DataFrame,
    fronts: Fronts,
    *,
    curves: Curves | None,
    header: Mapping[str, Any],
    labels: Mapping[str, str] | None = None,
    stopped: pd.DataFrame | None = None,
) -> ReportData:
    """What the page of ``table`` (the annotated trials table, positional rows) and its ``fronts`` shows.

    ``curves`` (MLflow run id -> per-step metrics; ``None``: no curves), ``header`` (what ``sweep.json`` holds,
    every key optional) and ``labels`` (axis labels) as :func:`sweep.results.report.write_report` takes them.
    ``stopped``: the trials a scheduler stopped at a rung (rows of trials.parquet with ``stopped_at_step``),
    shown after the others in the table and faded on the dev view, never on a front.
    """
    if len(fronts.is_pareto) != len(table):
        raise ValueError(f"fronts cover {len(fronts.is_pareto)} trials but the table has {len(table)} rows")
    table = table.reset_index(drop=True)
    plots = {v: pareto_plot(table, fronts, view=v, labels=labels) for v in VIEWS}
    rows, flags = _with_stopped(table, fronts, stopped)
    styles = _styles(rows)
    layout = _layout(rows, fronts, plots)
    trials = tuple(_trial(rows, flags, row, styles, layout) for row in range(len(rows)))
    curve_rows, curve_keys = _curve_payload(rows, curves)
    config = header.get("config") if isinstance(header.get("config"), Mapping) else {}
    return ReportData(
        title=f"Sweep {header.get('experiment') or config.get('name') or ''} report".replace("  ", " "),
        header=compute_header(header, table, fronts),
        styles=styles,
        plots=plots,
        trials=trials,
        columns=_columns(layout),
        curves=curve_rows,
        curve_keys=tuple(curve_keys),
        initial=_initial_row(table, fronts),
        no_prompt_row={v: _no_prompt_row(plot, table) for v, plot in plots.items()},
        stopped=_stopped_points(rows, len(table), plots["dev"].axes, styles),
    )


def _with_stopped(table: pd.DataFrame, fronts: Fronts, stopped: pd.DataFrame | None) -> tuple[pd.DataFrame, Fronts]:
    """The rows the page lists, the stopped trials after the full-budget ones, and their flags as a
    :class:`Fronts` covering every row: a stopped trial is on no front, proxy gaming is flagged as for any."""
    if stopped is None or not len(stopped):
        return table, fronts
    kept = stopped.reset_index(drop=True)
    none = np.zeros(len(kept), dtype=bool)
    gamed = gamed_mask(kept, threshold=fronts.gamed_threshold)
    flags = dataclasses.replace(
        fronts,
        is_pareto=np.concatenate([fronts.is_pareto, none]),
        is_pareto_all=np.concatenate([fronts.is_pareto_all, none]),
        gamed=np.concatenate([fronts.gamed, gamed]),
    )
    return pd.concat([table, kept], ignore_index=True), flags


@dataclass(frozen=True)
class _Layout:
    """The columns the page shows of every trial: the searched weights, the details' metrics, the table's
    metrics, the metrics whose text the tooltips need, and whether the table has steps and stopped columns."""

    params: tuple[str, ...]
    metrics: tuple[str, ...]
    shown: tuple[str, ...]
    texts: tuple[str, ...]
    steps: bool
    stops: bool


def _layout(rows: pd.DataFrame, fronts: Fronts, plots: Mapping[View, ParetoPlot]) -> _Layout:
    metrics = _metric_names(rows, fronts)
    shown = _table_metrics(rows, fronts)
    return _Layout(
        params=tuple(str(c) for c in rows.columns if str(c).startswith(PARAM_PREFIX)),
        metrics=tuple(metrics),
        shown=tuple(shown),
        texts=tuple(dict.fromkeys([*metrics, *shown, *(a for plot in plots.values() for a in plot.axes)])),
        steps=STEPS_DONE in rows.columns,
        stops=bool(_stopped_at(rows).notna().any()),
    )


def _columns(layout: _Layout) -> tuple[tuple[str, str], ...]:
    """The trials table's headings and kinds; ``steps`` and ``stopped`` where the sweep recorded them."""
    columns = [(TUNER, "text"), ("trial", "text"), ("prompt", "text")]
    columns += [(p.removeprefix(PARAM_PREFIX), "num") for p in layout.params]
    columns += [(m + direction(m), "num") for m in layout.shown]
    columns += [("front", "num"), ("all", "num"), ("gamed", "num"), ("beats", "text")]
    columns += [("steps", "num")] if layout.steps else []
    columns += [("stopped", "text")] if layout.stops else []
    return tuple(columns)


def _stopped_at(rows: pd.DataFrame) -> pd.Series:
    """The rung step each row was stopped at, NaN for a full-budget trial (or a sweep without a scheduler)."""
    if STOPPED_AT not in rows.columns:
        return pd.Series(math.nan, index=rows.index)
    return pd.to_numeric(rows[STOPPED_AT], errors="coerce")


def _stopped_points(
    rows: pd.DataFrame, full: int, axes: tuple[str, str], styles: Mapping[str, Style]
) -> tuple[StoppedPoints, ...]:
    """Per tuner (page order) its stopped trials (rows past the first ``full``) with finite values on ``axes``."""
    tuner_of_row = tuners_of(rows)
    x, y = (pd.to_numeric(rows.get(a, pd.Series(math.nan, index=rows.index)), errors="coerce") for a in axes)
    drawable = _stopped_at(rows).notna().to_numpy() & np.isfinite(x.to_numpy()) & np.isfinite(y.to_numpy())
    drawable[:full] = False
    points = []
    for tuner, style in styles.items():
        at = np.flatnonzero(drawable & (tuner_of_row == tuner))
        if len(at):
            values = (x.to_numpy(dtype=np.float64)[at], y.to_numpy(dtype=np.float64)[at])
            points.append(StoppedPoints(tuner, style.label, style.color, style.marker, at, *values))
    return tuple(points)


# --- metrics and their values ---------------------------------------------------------------------------------


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


def _styles(table: pd.DataFrame) -> dict[str, Style]:
    """The :class:`Style` of each tuner and baseline present, learned tuners first."""
    present = list(dict.fromkeys(tuners_of(table).tolist()))
    learned = tuner_order([t for t in present if t not in BASELINES])
    colours = tuner_styles(learned)
    out = {t: Style(t, *colours[t]) for t in learned}
    for baseline in BASELINES:
        if baseline in present:
            out[baseline] = Style(BASELINE_NAMES[baseline], *BASELINE_STYLES.get(baseline, (GREY, "o")))
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


# --- one trial ------------------------------------------------------------------------------------------------


def _trial(table: pd.DataFrame, fronts: Fronts, row: int, styles: Mapping[str, Style], layout: _Layout) -> Trial:
    tuner = cell_text(table, TUNER, row)
    style = styles.get(tuner, Style(tuner, GREY, ""))
    trial_id, prompt = cell_text(table, TRIAL_ID, row), cell_text(table, PROMPT_TEXT, row)
    replicates = tuple(_texts(table, REPLICATE_PROMPTS, row))
    weights = [(p.removeprefix(PARAM_PREFIX), cell_value(table, p, row)) for p in layout.params]
    flags = (bool(fronts.is_pareto[row]) and tuner not in BASELINES, bool(fronts.is_pareto_all[row]))
    flags += (bool(fronts.gamed[row]),)
    beaten = tuple(_beaten(table, row))
    values = {name: _mean_ci(table, name, row) for name in layout.texts}
    steps, stop = cell_value(table, STEPS_DONE, row), cell_value(table, STOPPED_AT, row)
    return Trial(
        row=row,
        tuner=tuner,
        label=BASELINE_NAMES.get(tuner, tuner),
        color=style.color,
        trial_id=trial_id,
        prompt=prompt,
        replicate_prompts=replicates if any(r != prompt for r in replicates) else (),
        weights=tuple((w, formatted(v, ".3g")) for w, v in weights if math.isfinite(v)),
        on_front=flags[0],
        on_front_all=flags[1],
        gamed=flags[2],
        gamed_signals=", ".join(
            f"{c.split('/')[-1]} {formatted(cell_value(table, c, row), '.2f')}" for c in GAMED_COLUMNS
        ),
        signals=_signals(table, fronts, row),
        metrics=tuple(_metric_row(table, name, row) for name in layout.metrics),
        versus=_versus(table, row, beaten),
        beaten=beaten,
        run_id=cell_text(table, RUN_ID, row),
        values=values,
        cells=_cells(table, row, (style.label, trial_id, prompt), layout, values, flags, beaten),
        steps_done=formatted(steps, ".0f", missing=""),
        stopped_at=int(stop) if math.isfinite(stop) else None,
    )


def _texts(table: pd.DataFrame, column: str, row: int) -> list[str]:
    if column not in table.columns:
        return []
    value = table[column].iloc[row]
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value]
    return []


def _signals(table: pd.DataFrame, fronts: Fronts, row: int) -> tuple[tuple[str, str, str], ...]:
    threshold = f"{fronts.gamed_threshold:g}"
    signals = [(PROXY_GAMED, "yes" if fronts.gamed[row] else "no", f"repeat or special share over {threshold}")]
    for column in (*GAMED_COLUMNS, WORD_FRAC, LOG_PPL):
        if column in table.columns:
            signals.append((column, _mean_ci(table, column, row), ""))
    return tuple(signals)


def _metric_row(table: pd.DataFrame, name: str, row: int) -> tuple[str, str, str, str]:
    mean, ci, std = (_measured(table, name + s, row) for s in ("", CI95, STD))
    return (
        name + direction(name),
        formatted(mean),
        "± " + formatted(ci) if math.isfinite(ci) else "",
        formatted(std) if math.isfinite(std) else "",
    )


def _versus(table: pd.DataFrame, row: int, beaten: Sequence[str]) -> tuple[tuple[str, str, str], ...]:
    rows = []
    for baseline in BASELINES:
        diff, low, high = (cell_value(table, c, row) for c in diff_columns(baseline))
        if math.isfinite(diff):
            name = BASELINE_NAMES[baseline]
            interval = f"{diff:+.3f} [{formatted(low)}, {formatted(high)}]"
            rows.append((name, interval, "beats it" if name in beaten else ""))
    return tuple(rows)


def _cells(
    table: pd.DataFrame,
    row: int,
    texts: tuple[str, str, str],
    layout: _Layout,
    values: Mapping[str, str],
    flags: tuple[bool, ...],
    beaten: Sequence[str],
) -> tuple[tuple[str, str], ...]:
    """The trials-table row: ``(sort key, text)`` per column; numbers sort by their value, missing as ``""``."""
    cells = [(text, text) for text in texts]
    for p in layout.params:
        value = cell_value(table, p, row)
        cells.append((repr(value) if math.isfinite(value) else "", formatted(value, ".3g")))
    for m in layout.shown:
        value = _measured(table, m, row)
        cells.append((repr(value) if math.isfinite(value) else "", values[m]))
    for flag in flags:
        cells.append(("1" if flag else "0", "yes" if flag else ""))
    cells.append((", ".join(beaten), ", ".join(beaten)))
    if layout.steps:
        steps = cell_value(table, STEPS_DONE, row)
        cells.append((repr(steps) if math.isfinite(steps) else "", formatted(steps, ".0f", missing="")))
    if layout.stops:
        stop = cell_value(table, STOPPED_AT, row)
        cells.append((repr(stop), f"stopped at step {stop:.0f}") if math.isfinite(stop) else ("", ""))
    return tuple(cells)


# --- the page's openers: its first trial, the no-prompt line's trial, the curves -------------------------------


def _initial_row(table: pd.DataFrame, fronts: Fronts) -> int | None:
    """The trial the details show before any hover: the best point of the front across tuners on the first
    objective, so the page opens on something worth reading."""
    rows = np.flatnonzero(fronts.is_pareto_all)
    if len(rows) and fronts.objectives[0] in table.columns:
        values = objective_matrix(table, fronts.objectives[:1])[rows, 0]  # larger is better
        if np.isfinite(values).any():
            return int(rows[int(np.nanargmax(values))])
    return 0 if len(table) else None


def _no_prompt_row(plot: ParetoPlot, table: pd.DataFrame) -> int:
    """The no-prompt trial whose value the reference line shows (its tooltip), -1 when the line comes from the
    ``baseline/acc_*`` column of an older sweep, with no no-prompt trial to show, or when there is no line."""
    axis = plot.axes[0] if plot.x_baseline is not None else plot.axes[1]
    rows = np.flatnonzero(tuners_of(table) == "no_prompt")
    finite = [int(r) for r in rows if math.isfinite(cell_value(table, axis, int(r)))]
    return finite[0] if finite else -1


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

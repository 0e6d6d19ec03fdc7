"""Exports of a sweep's trials: ``trials.parquet``, the Pareto figure, a LaTeX table of the fronts
(``sweep.results.tables``) and the interactive ``report.html`` (``sweep.results.report``).

:func:`write_exports` is what a sweep (and ``sweep.export``, rebuilding from MLflow) calls at the end. The
fronts are the search's own (dev-side objectives); every export also shows the held-out test accuracy of the
same points, their replicate spread, and the baselines (no prompt, hand-written, LM-sampled) as references
with which of them each point beats on test.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from objectives.metrics import METRICS
from sweep.mlflow_log import Curves
from sweep.results.columns import (
    BEATS_PREFIX,
    FLAG_COLUMNS,
    IS_PARETO,
    IS_PARETO_ALL,
    PARAM_PREFIX,
    PROMPT_IDS,
    PROXY_GAMED,
    REPLICATE_PROMPTS,
    STOPPED_AT,
    TEXT_COLUMNS,
    VS_PREFIX,
)
from sweep.results.compare import compare_to_baselines, front_beats_share, learning_margin
from sweep.results.figure import VIEWS, pareto_plot
from sweep.results.pareto import Fronts, annotate, compute_fronts, gamed_mask
from sweep.results.render import draw
from sweep.results.report import REPORT_FILE, write_report
from sweep.results.tables import front_latex

logger = logging.getLogger(__name__)

# The figure's views and their file stems: the test view is the default figure a paper shows.
PLOT_STEMS = {"test": "pareto", "dev": "pareto_dev"}


def _prompt_ids(value: Any) -> list[int] | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return [int(i) for i in value]


def _texts(value: Any) -> list[str] | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return [str(v) for v in value]


def _arrow_table(table: pd.DataFrame) -> pa.Table:
    """``table`` as Arrow with stable types even when empty: text as string, ``prompt_ids`` list<int64>."""
    frame = table.reset_index(drop=True)
    forced: dict[str, pa.DataType] = dict.fromkeys(TEXT_COLUMNS, pa.string())
    forced.update(dict.fromkeys(FLAG_COLUMNS, pa.bool_()))
    forced.update({c: pa.bool_() for c in frame.columns if str(c).startswith(BEATS_PREFIX)})
    forced.update(
        {c: pa.float64() for c in frame.columns if str(c).startswith((PARAM_PREFIX, VS_PREFIX)) or _is_metric_column(c)}
    )
    # List columns are built apart: pandas keeps no list dtype, and an empty column would come out as float64.
    lists = {
        name: (kind, [convert(v) for v in frame[name]])
        for name, kind, convert in (
            (PROMPT_IDS, pa.list_(pa.int64()), _prompt_ids),
            (REPLICATE_PROMPTS, pa.list_(pa.string()), _texts),
        )
        if name in frame.columns
    }
    rest = frame.drop(columns=list(lists))
    schema = pa.Schema.from_pandas(rest, preserve_index=False)
    for name, kind in forced.items():
        index = schema.get_field_index(name)
        if index >= 0:
            schema = schema.set(index, pa.field(name, kind))
    arrow = pa.Table.from_pandas(rest, schema=schema, preserve_index=False)
    for name in [c for c in frame.columns if c in lists]:
        kind, values = lists[name]
        arrow = arrow.add_column(list(frame.columns).index(name), pa.field(name, kind), pa.array(values, kind))
    return arrow


def _is_metric_column(name: str) -> bool:
    """A metric or one of its replicate statistics (``m``, ``m.std``, ``m.ci95``, ``m.r<i>``)."""
    return str(name).split(".")[0] in METRICS


@dataclass(frozen=True)
class Exported:
    """What :func:`write_exports` wrote: the annotated table, its fronts, the file names (relative to the
    output folder) and the sweep-level metrics for the parent run (hypervolumes, shares of front points that
    beat each baseline)."""

    table: pd.DataFrame
    fronts: Fronts
    files: list[str]
    summary_metrics: dict[str, float]


def write_exports(
    table: pd.DataFrame,
    out: Path,
    objectives: Sequence[str],
    *,
    labels: Mapping[str, str] | None = None,
    curves: Curves | None = None,
    header: Mapping[str, Any] | None = None,
) -> Exported:
    """Compute the fronts of ``table``; write ``out/trials.parquet``, the figure in its two views
    (``out/pareto.{pdf,svg,png}``: held-out test metrics on the axes; ``out/pareto_dev.{pdf,svg,png}``: the
    dev objectives the search optimised), ``out/front.tex`` and ``out/report.html``.

    ``out`` is created. ``trials.parquet`` holds every column of the returned table: ``table`` (not
    modified) plus bool ``is_pareto``, ``is_pareto_all`` and ``proxy_gamed``, the paired comparisons with
    every baseline (``vs/<baseline>/{diff,low,high}``, ``beats/<baseline>``, see ``sweep.results.compare``), with
    ``prompt_ids`` as ``list<int64>``. ``labels`` (metric -> text) override the figure's axis labels. Needs
    at least two objectives (the figure plots the first two). ``curves`` (MLflow run id -> per-step metrics,
    :func:`sweep.mlflow_log.collect_curves`) and ``header`` (what ``sweep.json`` holds) go into the report, whose
    header also gets this call's ``summary_metrics``. A report that cannot be written is logged as an error
    and left out of ``files``: it is a view of the exports, and must not cost a finished sweep its record.
    Trials a scheduler stopped at a rung (``stopped_at_step`` set) are in ``trials.parquet`` (on no front) and
    in the report (listed, and faded on its dev view), nowhere else; the returned table holds the others.
    """
    objectives = tuple(objectives)
    if len(objectives) < 2:
        raise ValueError(f"exports need at least 2 objectives, got {objectives}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Trials a scheduler stopped at a rung are kept in trials.parquet (with how far they got), and take no part
    # in the fronts, hypervolumes, comparisons, figure or table: those compare full-budget results. The report
    # lists them and draws them faded on its dev view.
    stopped = table[STOPPED_AT].notna() if STOPPED_AT in table.columns else pd.Series(False, index=table.index)
    full = table[~stopped].reset_index(drop=True)
    fronts = compute_fronts(full, objectives)
    annotated = compare_to_baselines(annotate(full, fronts))
    kept = table[stopped].assign(**{IS_PARETO: False, IS_PARETO_ALL: False})
    kept[PROXY_GAMED] = gamed_mask(kept, threshold=fronts.gamed_threshold)
    recorded = pd.concat([annotated, kept], ignore_index=True) if len(kept) else annotated

    pq.write_table(_arrow_table(recorded), out / "trials.parquet")
    plots = _figures(annotated, fronts, out, labels)
    (out / "front.tex").write_text(front_latex(annotated, fronts), encoding="ascii")
    summary = _summary_metrics(annotated, fronts)
    logger.info(
        "exports in %s: %d trials, %d on a tuner front, hypervolume %s (reference %s)",
        out,
        len(annotated),
        int(fronts.is_pareto.sum()),
        fronts.hypervolume,
        fronts.reference,
    )
    files = ["trials.parquet", *(p.name for p in plots), "front.tex"]
    # Fresh sweep-level metrics over any in ``header``: a sweep.json read back may predate this export.
    known = dict((header or {}).get("summary_metrics") or {})
    header = {**(header or {}), "summary_metrics": {**known, **summary}}
    if _report(annotated, fronts, out, curves=curves, header=header, labels=labels, stopped=kept):
        files.append(REPORT_FILE)
    return Exported(table=annotated, fronts=fronts, files=files, summary_metrics=summary)


def _figures(annotated: pd.DataFrame, fronts: Fronts, out: Path, labels: Mapping[str, str] | None) -> list[Path]:
    """The figure in both views: ``pareto.*`` (held-out test metrics) and ``pareto_dev.*`` (the objectives)."""
    plots = (pareto_plot(annotated, fronts, view=view, labels=labels) for view in VIEWS)
    return [path for plot in plots for path in draw(plot, out / PLOT_STEMS[plot.view])]


def _summary_metrics(annotated: pd.DataFrame, fronts: Fronts) -> dict[str, float]:
    """The sweep-level metrics of the parent run: hypervolumes, front shares beating each baseline, learning."""
    summary = {f"hypervolume/{k}": float(v) for k, v in fronts.hypervolume.items()}
    summary.update(front_beats_share(annotated, fronts.is_pareto, fronts.tuners))
    summary.update(learning_margin(annotated))
    return summary


def _report(
    annotated: pd.DataFrame,
    fronts: Fronts,
    out: Path,
    *,
    curves: Curves | None,
    header: Mapping[str, Any],
    labels: Mapping[str, str] | None,
    stopped: pd.DataFrame,
) -> bool:
    """Write report.html; whether it was written. A failure is logged, never raised: the page is a view of
    the exports, and must not cost a finished sweep its record."""
    try:
        write_report(annotated, fronts, out, curves=curves, header=header, labels=labels, stopped=stopped)
    except Exception:
        logger.exception("%s not written; the other exports in %s are complete", REPORT_FILE, out)
        return False
    return True

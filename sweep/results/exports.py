"""Exports of a sweep's trials: ``trials.parquet``, the Pareto figure, a LaTeX table of the fronts and the
interactive ``report.html`` (``sweep.results.report``).

:func:`write_exports` is what a sweep (and ``sweep.export``, rebuilding from MLflow) calls at the end;
:func:`front_latex` and :func:`front_table_text` render the fronts for a paper and for a terminal. The fronts
are the search's own (dev-side objectives); every export also shows the held-out test accuracy of the same
points, their replicate spread, and the baselines (no prompt, hand-written, LM-sampled) as references with
which of them each point beats on test.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from objectives.metrics import METRICS
from objectives.stats import CI95, REPLICATE, STD
from sweep.mlflow_log import Curves
from sweep.results.columns import (
    BASELINE_ABBREVIATIONS,
    BASELINE_NAMES,
    BEATS_PREFIX,
    FLAG_COLUMNS,
    IS_PARETO,
    IS_PARETO_ALL,
    PARAM_PREFIX,
    PROMPT_IDS,
    PROMPT_TEXT,
    PROXY_GAMED,
    REPLICATE_PROMPTS,
    STOPPED_AT,
    TEST_METRIC,
    TEXT_COLUMNS,
    TUNER,
    VS_PREFIX,
    arrow,
    beats_column,
    cell_text,
    cell_value,
    diff_columns,
    direction_words,
    formatted,
    tuner_order,
    tuners_of,
)
from sweep.results.compare import compare_to_baselines, front_beats_share, learning_margin
from sweep.results.figure import VIEWS, held_out_metric, pareto_plot
from sweep.results.pareto import ALL_KEY, Fronts, annotate, compute_fronts, gamed_mask, objective_matrix
from sweep.results.render import draw
from sweep.results.report import REPORT_FILE, write_report
from tuners.baselines import BASELINES

logger = logging.getLogger(__name__)

# The figure's views and their file stems: the test view is the default figure a paper shows.
PLOT_STEMS = {"test": "pareto", "dev": "pareto_dev"}

_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    # Under pdflatex's default OT1 encoding these three print as other glyphs (¡, ¿, an em dash).
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
}
_LATEX_CONTROL = {"\n": "n", "\t": "t", "\r": "r"}


def latex_escape(text: str, *, keep_spaces: bool = False) -> str:
    """``text`` as LaTeX that pdflatex compiles in any font encoding, every character visible.

    LaTeX specials are escaped; newline, tab and carriage return print as ``\\n``, ``\\t``, ``\\r``; other
    ASCII control characters as ``<0xHH>``; every non-ASCII character (printable or not) as ``<U+XXXX>``,
    since pdflatex without extra packages cannot set it. ``keep_spaces`` turns spaces into ties (``~``) so
    that leading and repeated spaces, which matter in a prompt, are not collapsed.
    """
    out = []
    for char in text:
        code = ord(char)
        if char in _LATEX_SPECIALS:
            out.append(_LATEX_SPECIALS[char])
        elif char in _LATEX_CONTROL:
            out.append(r"\textbackslash{}" + _LATEX_CONTROL[char])
        elif char == " " and keep_spaces:
            out.append("~")
        elif code < 0x20 or code == 0x7F:
            out.append(rf"\textless{{}}0x{code:02x}\textgreater{{}}")
        elif code > 0x7F:
            out.append(rf"\textless{{}}U+{code:04X}\textgreater{{}}")
        else:
            out.append(char)
    return "".join(out)


def _truncate(text: str, limit: int) -> tuple[str, bool]:
    if limit < 1:
        raise ValueError(f"max_prompt_chars must be positive, got {limit}")
    return (text[:limit], True) if len(text) > limit else (text, False)


def _is_baseline(tuner: str) -> bool:
    return tuner in BASELINES


def _front_rows(table: pd.DataFrame, fronts: Fronts) -> list[tuple[str, list[int]]]:
    """Per learned tuner (plot order), positional indices of its front, best first on the first objective.

    Baselines are left out: they are references, listed in their own block (:func:`_baseline_rows`).
    """
    if len(fronts.is_pareto) != len(table):
        raise ValueError(f"fronts cover {len(fronts.is_pareto)} trials but the table has {len(table)} rows")
    if len(table) == 0:
        return []
    values = objective_matrix(table, fronts.objectives)
    tuner_of_row = tuners_of(table)
    groups = []
    for tuner in tuner_order([t for t in dict.fromkeys(tuner_of_row.tolist()) if not _is_baseline(t)]):
        rows = np.flatnonzero((tuner_of_row == tuner) & fronts.is_pareto)
        # Descending on every objective in turn (maximisation space), stable so ties keep table order.
        keys = tuple(-values[rows, j] for j in reversed(range(values.shape[1])))
        rows = rows[np.lexsort(keys)] if len(rows) else rows
        if len(rows):
            groups.append((tuner, rows.tolist()))
    return groups


def _baseline_rows(table: pd.DataFrame) -> list[tuple[str, list[int]]]:
    """Per baseline present (:data:`BASELINES` order), all its rows in table order: every hand-written prompt
    is a reference of its own, not only the best one."""
    if len(table) == 0:
        return []
    tuner_of_row = tuners_of(table)
    groups = []
    for baseline in BASELINES:
        rows = np.flatnonzero(tuner_of_row == baseline)
        if len(rows):
            groups.append((baseline, rows.tolist()))
    return groups


def _shown_metrics(table: pd.DataFrame, fronts: Fronts, extra: Sequence[str] = ()) -> list[str]:
    """The metric columns of the tables: each objective followed by its held-out counterpart (the test
    accuracy of the same prompts, next to the dev objective it was selected on), then ``extra`` columns the
    table has. A table without test accuracy columns shows the objectives alone."""
    columns: list[str] = []
    for name in fronts.objectives:
        for column in (name, held_out_metric(name, table)):
            if column not in columns and (column == name or column in table.columns):
                columns.append(column)
    if TEST_METRIC in table.columns and TEST_METRIC not in columns:
        columns.append(TEST_METRIC)
    columns += [c for c in extra if c in table.columns and c not in columns]
    return columns


def _dedupe(table: pd.DataFrame, rows: Sequence[int], columns: Sequence[str]) -> list[tuple[int, int]]:
    """``(first row, count)`` per group of rows with the same tuner, prompt and values of ``columns`` (means,
    stds and half-widths; NaN equals NaN): trials that ended on the same prompt with the same scores are one
    result to a reader, however many weight settings led there. Order of first appearance."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for row in rows:
        key = (cell_text(table, TUNER, row), cell_text(table, PROMPT_TEXT, row)) + tuple(
            repr(cell_value(table, c + suffix, row)) for c in columns for suffix in ("", STD, CI95)
        )
        groups.setdefault(key, []).append(row)
    return [(members[0], len(members)) for members in groups.values()]


def _beaten(table: pd.DataFrame, row: int) -> str:
    """Abbreviations of the baselines ``row`` beats on test beyond the intervals (``"NP, LM"``); ``"none"``
    when it beats none it was compared with; ``"--"`` when it could be compared with none (one replicate,
    or only its own baseline)."""
    beaten, compared = [], False
    for baseline in BASELINES:
        if beats_column(baseline) not in table.columns:
            continue
        compared |= math.isfinite(cell_value(table, diff_columns(baseline)[1], row))
        flag = table[beats_column(baseline)].iloc[row]
        # Only a real True: a missing flag (NaN after a join, say) must not read as a win.
        if isinstance(flag, (bool, np.bool_)) and flag:
            beaten.append(BASELINE_ABBREVIATIONS[baseline])
    if beaten:
        return ", ".join(beaten)
    return "none" if compared else "--"


def _has_beats(table: pd.DataFrame) -> bool:
    return any(beats_column(b) in table.columns for b in BASELINES)


def _replicates(table: pd.DataFrame, name: str) -> int:
    """R, the number of replicates behind the means of ``name`` (its ``name.r<i>`` columns); 0 if unknown."""
    count = 0
    while f"{name}{REPLICATE}{count}" in table.columns:
        count += 1
    return count


def _unmeasured(table: pd.DataFrame, column: str, row: int) -> bool:
    """With no prompt there is nothing to read: its readability columns (0 by convention) are not shown."""
    return cell_text(table, TUNER, row) == "no_prompt" and not column.startswith("task/")


def _mean_std_latex(table: pd.DataFrame, column: str, row: int) -> str:
    """``0.712 $\\pm$ 0.031`` (mean ± sample std over replicates), the mean alone when there is no std."""
    mean, std = cell_value(table, column, row), cell_value(table, column + STD, row)
    if not math.isfinite(mean) or _unmeasured(table, column, row):
        return "--"
    return f"{mean:.3f}" + (rf" $\pm$ {std:.3f}" if math.isfinite(std) else "")


def front_latex(table: pd.DataFrame, fronts: Fronts, *, max_prompt_chars: int = 60) -> str:
    """A booktabs LaTeX ``table`` of each tuner's Pareto-optimal trials and of the baselines, compilable with
    plain pdflatex.

    Needs ``\\usepackage{booktabs}`` in the preamble. Columns: tuner, prompt (``\\texttt``, truncated to
    ``max_prompt_chars`` characters with an ellipsis), each objective as mean $\\pm$ std over the replicates
    with its held-out counterpart next to it (``task/acc_test`` beside ``task/acc_dev``), and, when the table
    holds baselines, which of them the prompt beats on test beyond the 95 % paired intervals (``NP``, ``HW``,
    ``LM``). A dagger marks proxy-gamed prompts; identical results (same prompt and values) are one row with
    their count. Learned tuners' rows are grouped by tuner, best first on the first objective; the baselines
    (no prompt, each hand-written prompt, the LM-sampled prompt) follow in a block of their own. The caption
    gives the objectives, their directions, the hypervolume reference point (original units), the
    hypervolumes and the abbreviations.
    """
    columns = _shown_metrics(table, fronts)
    beats = _has_beats(table)
    header = ["Tuner", "Prompt"] + [f"{latex_escape(name)} {arrow(name, latex=True)}" for name in columns]
    header += ["Beats"] if beats else []
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{ll" + "r" * len(columns) + ("l" if beats else "") + "}",
        r"\toprule",
        " & ".join(header) + r" \\",
        r"\midrule",
    ]
    any_gamed = any_repeated = False

    def body(groups: list[tuple[str, list[int]]], names: Mapping[str, str]) -> list[str]:
        nonlocal any_gamed, any_repeated
        out = []
        for index, (tuner, rows) in enumerate(groups):
            if index:
                out.append(r"\midrule")
            for position, (row, count) in enumerate(_dedupe(table, rows, columns)):
                text = cell_text(table, PROMPT_TEXT, row)
                if text:
                    text, cut = _truncate(text, max_prompt_chars)
                    prompt = r"\texttt{" + latex_escape(text, keep_spaces=True) + (r"\ldots{}" if cut else "") + "}"
                else:
                    prompt = "--"
                if fronts.gamed[row]:
                    any_gamed = True
                    prompt += r"\textsuperscript{\dag}"
                if count > 1:
                    any_repeated = True
                    prompt += rf" ($\times${count})"
                cells = [latex_escape(names.get(tuner, tuner)) if position == 0 else "", prompt]
                cells += [_mean_std_latex(table, name, row) for name in columns]
                cells += [latex_escape(_beaten(table, row))] if beats else []
                out.append(" & ".join(cells) + r" \\")
        return out

    learned = body(_front_rows(table, fronts), {})
    references = body(_baseline_rows(table), BASELINE_NAMES)
    lines += learned
    if references:
        if learned:
            lines.append(r"\midrule")
        lines.append(r"\multicolumn{" + str(len(header)) + r"}{l}{\emph{Baselines}} \\")
        lines += references
    if not learned and not references:
        lines.append(r"\multicolumn{" + str(len(header)) + r"}{c}{(no trials)} \\")
    caption = _caption(table, fronts, columns, any_gamed=any_gamed, any_repeated=any_repeated, beats=beats)
    lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + caption + "}"]
    lines += [r"\label{tab:pareto-front}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _caption(
    table: pd.DataFrame,
    fronts: Fronts,
    columns: Sequence[str],
    *,
    any_gamed: bool,
    any_repeated: bool,
    beats: bool,
) -> str:
    objectives = ", ".join(f"{latex_escape(n)} ({direction_words(n)})" for n in fronts.objectives)
    reference = ", ".join(
        f"{latex_escape(n)} = {formatted(r, '.4f', missing='--')}"
        for n, r in zip(fronts.objectives, fronts.original_reference, strict=True)
    )
    parts = [f"Pareto-optimal prompts of each tuner, selected on dev. Objectives: {objectives}."]
    held_out = [c for c in columns if c not in fronts.objectives]
    if held_out:
        parts.append(
            f"{', '.join(latex_escape(c) for c in held_out)}: the same prompts on held-out test data, never used to "
            "select them."
        )
    replicates = _replicates(table, fronts.objectives[0])
    over = f"over {replicates} replicates" if replicates else "over the replicates"
    parts.append(rf"Values are mean $\pm$ sample standard deviation {over} (the mean alone for a single run).")
    parts.append(f"Hypervolume reference point: {reference}.")
    if fronts.hypervolume:
        # Baselines are references, not searches: sweep.results.pareto leaves them out of every area.
        volumes = ", ".join(
            f"{latex_escape(k)} {formatted(v, '.4f', missing='--')}"
            for k, v in sorted(fronts.hypervolume.items(), key=lambda kv: kv[0] == ALL_KEY)
        )
        parts.append(f"Hypervolume: {volumes}.")
    if beats:
        legend = ", ".join(f"{BASELINE_ABBREVIATIONS[b]}: {BASELINE_NAMES[b]}" for b in BASELINES)
        parts.append(
            "Beats: the baselines whose test accuracy the prompt exceeds beyond the 95\\% interval of the paired "
            f"per-replicate difference ({legend}; against the best hand-written prompt); none: it beats none of "
            "them; --: no interval (a single replicate)."
        )
    if any_gamed:
        parts.append(
            rf"\textsuperscript{{\dag}}Proxy gamed: repeated or special tokens over {fronts.gamed_threshold:g}"
            " of the prompt."
        )
    if any_repeated:
        parts.append(r"($\times$n): n trials ended on this same prompt with the same scores.")
    return " ".join(parts)


def _mean_ci_text(table: pd.DataFrame, column: str, row: int) -> str:
    mean, ci = cell_value(table, column, row), cell_value(table, column + CI95, row)
    if not math.isfinite(mean) or _unmeasured(table, column, row):
        return "-"
    return f"{mean:.3f}" + (f"±{ci:.3f}" if math.isfinite(ci) else "")


def front_table_text(table: pd.DataFrame, fronts: Fronts, *, max_prompt_chars: int = 40) -> str:
    """A fixed-width plain-text table for a terminal: each learned tuner's front, then the baselines.

    Columns: tuner, prompt (its Python ``repr``, so spaces and control characters are visible, cut to
    ``max_prompt_chars`` characters with ``...``), ``n`` (how many trials ended on this same prompt with the
    same scores: shown once), the searched weights (``param/*`` without the prefix), the objectives with
    their test counterparts and ``interp/log_ppl`` as mean±ci95, ``gamed`` (``yes`` for proxy-gamed
    prompts), ``all`` (``yes`` on the front across tuners) and ``beats`` (the baselines beaten on test beyond
    the intervals: ``NP`` no prompt, ``HW`` best hand-written, ``LM`` LM-sampled) when there are baselines.
    """
    metrics = _shown_metrics(table, fronts, extra=("interp/log_ppl",))
    params = [str(c) for c in table.columns if str(c).startswith(PARAM_PREFIX)]
    beats = _has_beats(table)
    header = [TUNER, "prompt", "n", *(p.removeprefix(PARAM_PREFIX) for p in params), *metrics, "gamed", "all"]
    header += ["beats"] if beats else []

    def cells_of(rows: Sequence[int]) -> list[list[str]]:
        out = []
        for row, count in _dedupe(table, rows, metrics):
            prompt = repr(cell_text(table, PROMPT_TEXT, row))
            if len(prompt) > max_prompt_chars:
                prompt = prompt[: max(1, max_prompt_chars - 3)] + "..."
            cells = [cell_text(table, TUNER, row), prompt, str(count)]
            cells += [formatted(cell_value(table, p, row), ".3g", missing="") for p in params]
            cells += [_mean_ci_text(table, m, row) for m in metrics]
            cells += ["yes" if fronts.gamed[row] else "", "yes" if fronts.is_pareto_all[row] else ""]
            cells += [_beaten(table, row)] if beats else []
            out.append(cells)
        return out

    learned = [cells for _, rows in _front_rows(table, fronts) for cells in cells_of(rows)]
    references = [cells for _, rows in _baseline_rows(table) for cells in cells_of(rows)]
    rows = [header, *learned, *references]
    widths = [max(len(r[j]) for r in rows) for j in range(len(header))]
    numeric = set(range(2, 3 + len(params) + len(metrics)))

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if j in numeric else c.ljust(w) for j, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "  ".join("-" * w for w in widths)
    lines = [line(header), rule]
    lines += [line(cells) for cells in learned] if learned else ([] if references else ["(no trials)"])
    if references:
        lines += [rule, "baselines"]
        lines += [line(cells) for cells in references]
    return "\n".join(s.rstrip() for s in lines) + "\n"


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
    """
    objectives = tuple(objectives)
    if len(objectives) < 2:
        raise ValueError(f"exports need at least 2 objectives, got {objectives}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Trials a scheduler stopped at a rung are kept in trials.parquet (with how far they got), and take no part
    # in the fronts, hypervolumes, comparisons, figure, table or report: those compare full-budget results.
    stopped = table[STOPPED_AT].notna() if STOPPED_AT in table.columns else pd.Series(False, index=table.index)
    full = table[~stopped].reset_index(drop=True)
    fronts = compute_fronts(full, objectives)
    annotated = compare_to_baselines(annotate(full, fronts))
    kept = table[stopped].assign(**{IS_PARETO: False, IS_PARETO_ALL: False})
    kept[PROXY_GAMED] = gamed_mask(kept, threshold=fronts.gamed_threshold)
    recorded = pd.concat([annotated, kept], ignore_index=True) if len(kept) else annotated

    pq.write_table(_arrow_table(recorded), out / "trials.parquet")
    plots = [
        path
        for view in VIEWS
        for path in draw(pareto_plot(annotated, fronts, view=view, labels=labels), out / PLOT_STEMS[view])
    ]
    (out / "front.tex").write_text(front_latex(annotated, fronts), encoding="ascii")
    summary = {f"hypervolume/{k}": float(v) for k, v in fronts.hypervolume.items()}
    summary.update(front_beats_share(annotated, fronts.is_pareto, fronts.tuners))
    summary.update(learning_margin(annotated))
    logger.info(
        "exports in %s: %d trials, %d on a tuner front, hypervolume %s (reference %s)",
        out,
        len(annotated),
        int(fronts.is_pareto.sum()),
        fronts.hypervolume,
        fronts.reference,
    )
    files = ["trials.parquet", *(p.name for p in plots), "front.tex"]
    try:
        # Fresh sweep-level metrics over any in ``header``: a sweep.json read back may predate this export.
        known = dict((header or {}).get("summary_metrics") or {})
        write_report(
            annotated,
            fronts,
            out,
            curves=curves,
            header={**(header or {}), "summary_metrics": {**known, **summary}},
            labels=labels,
        )
        files.append(REPORT_FILE)
    except Exception:
        logger.exception("%s not written; the other exports in %s are complete", REPORT_FILE, out)
    return Exported(table=annotated, fronts=fronts, files=files, summary_metrics=summary)

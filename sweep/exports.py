"""Exports of a sweep's trials: ``trials.parquet``, the Pareto figure and a LaTeX table of the fronts.

:func:`write_exports` is what a sweep (and ``sweep.export``, rebuilding from MLflow) calls at the end;
:func:`front_latex` and :func:`front_table_text` render the fronts for a paper and for a terminal.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from objectives.metrics import METRICS, metric_info
from sweep.pareto import ALL_KEY, Fronts, annotate, compute_fronts, objective_matrix
from sweep.plots import draw, pareto_plot, tuner_order

logger = logging.getLogger(__name__)

TEST_METRIC = "task/acc_test"
TEXT_COLUMNS = ("tuner", "trial_id", "mlflow_run_id", "prompt_text")
FLAG_COLUMNS = ("is_pareto", "is_pareto_all", "proxy_gamed")

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


def _number(value: Any, *, digits: int = 3) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "--"
    return f"{number:.{digits}f}" if math.isfinite(number) else "--"


def _front_rows(table: pd.DataFrame, fronts: Fronts) -> list[tuple[str, list[int]]]:
    """Per tuner (plot order), positional indices of its front, best first on the first objective."""
    if len(fronts.is_pareto) != len(table):
        raise ValueError(f"fronts cover {len(fronts.is_pareto)} trials but the table has {len(table)} rows")
    if len(table) == 0:
        return []
    values = objective_matrix(table, fronts.objectives)
    tuner_of_row = table["tuner"].astype(str).to_numpy(dtype=object)
    groups = []
    for tuner in tuner_order(list(dict.fromkeys(tuner_of_row.tolist()))):
        rows = np.flatnonzero((tuner_of_row == tuner) & fronts.is_pareto)
        # Descending on every objective in turn (maximisation space), stable so ties keep table order.
        keys = tuple(-values[rows, j] for j in reversed(range(values.shape[1])))
        rows = rows[np.lexsort(keys)] if len(rows) else rows
        if len(rows):
            groups.append((tuner, rows.tolist()))
    return groups


def _prompt(table: pd.DataFrame, row: int) -> str:
    if "prompt_text" not in table.columns:
        return ""
    value = table["prompt_text"].iloc[row]
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _direction(name: str) -> str:
    return "higher is better" if metric_info(name).higher_is_better else "lower is better"


def _reference_original(fronts: Fronts) -> list[float]:
    """The hypervolume reference in the metrics' original units (the sign flip undone)."""
    return [
        r if metric_info(n).higher_is_better else -r for n, r in zip(fronts.objectives, fronts.reference, strict=True)
    ]


def front_latex(table: pd.DataFrame, fronts: Fronts, *, max_prompt_chars: int = 60) -> str:
    """A booktabs LaTeX ``table`` of each tuner's Pareto-optimal trials, compilable with plain pdflatex.

    Needs ``\\usepackage{booktabs}`` in the preamble. Columns: tuner, prompt (``\\texttt``, truncated to
    ``max_prompt_chars`` characters with an ellipsis), each objective, and ``task/acc_test`` when the table
    has it and it is not an objective already; a dagger marks proxy-gamed prompts. Rows are grouped by
    tuner, best first on the first objective. The caption gives the objectives, their directions, the
    hypervolume reference point (original units) and the hypervolumes.
    """
    columns = list(fronts.objectives)
    if TEST_METRIC in table.columns and TEST_METRIC not in columns:
        columns.append(TEST_METRIC)
    header = ["Tuner", "Prompt"] + [
        latex_escape(name) + (r" $\uparrow$" if metric_info(name).higher_is_better else r" $\downarrow$")
        for name in columns
    ]
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{ll" + "r" * len(columns) + "}",
        r"\toprule",
        " & ".join(header) + r" \\",
        r"\midrule",
    ]
    groups = _front_rows(table, fronts)
    any_gamed = False
    for index, (tuner, rows) in enumerate(groups):
        if index:
            lines.append(r"\midrule")
        for position, row in enumerate(rows):
            text, cut = _truncate(_prompt(table, row), max_prompt_chars)
            prompt = r"\texttt{" + latex_escape(text, keep_spaces=True) + (r"\ldots{}" if cut else "") + "}"
            if fronts.gamed[row]:
                any_gamed = True
                prompt += r"\textsuperscript{\dag}"
            cells = [latex_escape(tuner) if position == 0 else "", prompt]
            cells += [_number(table[name].iloc[row]) for name in columns]
            lines.append(" & ".join(cells) + r" \\")
    if not groups:
        lines.append(r"\multicolumn{" + str(len(header)) + r"}{c}{(no trials)} \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + _caption(fronts, any_gamed) + "}"]
    lines += [r"\label{tab:pareto-front}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _caption(fronts: Fronts, any_gamed: bool) -> str:
    objectives = ", ".join(f"{latex_escape(n)} ({_direction(n)})" for n in fronts.objectives)
    reference = ", ".join(
        f"{latex_escape(n)} = {_number(r, digits=4)}"
        for n, r in zip(fronts.objectives, _reference_original(fronts), strict=True)
    )
    parts = [
        f"Pareto-optimal prompts of each tuner. Objectives: {objectives}.",
        f"Hypervolume reference point: {reference}.",
    ]
    if fronts.hypervolume:
        volumes = ", ".join(
            f"{latex_escape(k)} {_number(v, digits=4)}"
            for k, v in sorted(fronts.hypervolume.items(), key=lambda kv: kv[0] == ALL_KEY)
        )
        parts.append(f"Hypervolume: {volumes}.")
    if any_gamed:
        parts.append(
            rf"\textsuperscript{{\dag}}Proxy gamed: repeated or special tokens over {fronts.gamed_threshold:g}"
            " of the prompt."
        )
    return " ".join(parts)


def front_table_text(table: pd.DataFrame, fronts: Fronts, *, max_prompt_chars: int = 48) -> str:
    """A fixed-width plain-text table of each tuner's front for a terminal: tuner, prompt repr, objectives.

    The prompt is shown as its Python ``repr`` (so spaces and control characters are visible), cut to
    ``max_prompt_chars`` characters with ``...``. ``gamed`` says ``yes`` for proxy-gamed prompts, and
    ``all`` says ``yes`` for trials also on the front across tuners.
    """
    names = list(fronts.objectives)
    header = ["tuner", "prompt", *names, "gamed", "all"]
    body = []
    for tuner, rows in _front_rows(table, fronts):
        for row in rows:
            prompt = repr(_prompt(table, row))
            if len(prompt) > max_prompt_chars:
                prompt = prompt[: max(1, max_prompt_chars - 3)] + "..."
            cells = [tuner, prompt] + [f"{float(table[n].iloc[row]):.4g}" for n in names]
            cells += ["yes" if fronts.gamed[row] else "", "yes" if fronts.is_pareto_all[row] else ""]
            body.append(cells)
    widths = [max(len(r[j]) for r in [header, *body]) for j in range(len(header))]
    numeric = set(range(2, 2 + len(names)))

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if j in numeric else c.ljust(w) for j, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [line(header), "  ".join("-" * w for w in widths)]
    lines += [line(cells) for cells in body] if body else ["(no trials)"]
    return "\n".join(s.rstrip() for s in lines) + "\n"


def _prompt_ids(value: Any) -> list[int] | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return [int(i) for i in value]


def _arrow_table(table: pd.DataFrame) -> pa.Table:
    """``table`` as Arrow with stable types even when empty: text as string, ``prompt_ids`` list<int64>."""
    frame = table.reset_index(drop=True)
    forced: dict[str, pa.DataType] = dict.fromkeys(TEXT_COLUMNS, pa.string())
    forced.update(dict.fromkeys(FLAG_COLUMNS, pa.bool_()))
    forced.update({c: pa.float64() for c in frame.columns if str(c).startswith("param/") or c in METRICS})
    # prompt_ids is built apart: pandas keeps no list dtype, and an empty column would come out as float64.
    ids = [_prompt_ids(v) for v in frame["prompt_ids"]] if "prompt_ids" in frame.columns else None
    rest = frame.drop(columns=["prompt_ids"]) if ids is not None else frame
    schema = pa.Schema.from_pandas(rest, preserve_index=False)
    for name, kind in forced.items():
        index = schema.get_field_index(name)
        if index >= 0:
            schema = schema.set(index, pa.field(name, kind))
    arrow = pa.Table.from_pandas(rest, schema=schema, preserve_index=False)
    if ids is not None:
        position = list(frame.columns).index("prompt_ids")
        arrow = arrow.add_column(
            position, pa.field("prompt_ids", pa.list_(pa.int64())), pa.array(ids, pa.list_(pa.int64()))
        )
    return arrow


def write_exports(table: pd.DataFrame, out: Path, objectives: Sequence[str]) -> pd.DataFrame:
    """Compute the fronts of ``table``; write ``out/trials.parquet``, ``out/pareto.{pdf,svg,png}``, ``out/front.tex``.

    ``out`` is created. ``trials.parquet`` holds every column of the returned table: ``table`` (not
    modified) plus bool ``is_pareto``, ``is_pareto_all`` and ``proxy_gamed``, with ``prompt_ids`` as
    ``list<int64>``. Needs at least two objectives (the figure plots the first two).
    """
    objectives = tuple(objectives)
    if len(objectives) < 2:
        raise ValueError(f"exports need at least 2 objectives, got {objectives}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fronts = compute_fronts(table, objectives)
    annotated = annotate(table, fronts)

    pq.write_table(_arrow_table(annotated), out / "trials.parquet")
    draw(pareto_plot(table, fronts), out / "pareto")
    (out / "front.tex").write_text(front_latex(table, fronts), encoding="ascii")
    logger.info(
        "exports in %s: %d trials, %d on a tuner front, hypervolume %s (reference %s)",
        out,
        len(annotated),
        int(fronts.is_pareto.sum()),
        fronts.hypervolume,
        fronts.reference,
    )
    return annotated

"""The fronts as tables: :func:`front_latex` for a paper (``front.tex``), :func:`front_table_text` for a terminal.

Both list each learned tuner's front (the search's own, on dev), best first on the first objective, then the
baselines (no prompt, each hand-written prompt, the LM-sampled prompt) as references; every row shows the
held-out test accuracy of the same prompt, its replicate spread, and which baselines it beats on test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from objectives.stats import CI95, REPLICATE, STD
from sweep.results.columns import (
    BASELINE_ABBREVIATIONS,
    BASELINE_NAMES,
    PARAM_PREFIX,
    PROMPT_TEXT,
    TEST_METRIC,
    TUNER,
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
from sweep.results.figure import held_out_metric
from sweep.results.pareto import ALL_KEY, Fronts, objective_matrix
from tuners.base import BASELINES

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


class _LatexRows:
    """The body rows of :func:`front_latex`; remembers whether any row was proxy gamed or stood for several
    trials, so the caption explains only the marks the table uses."""

    def __init__(
        self, table: pd.DataFrame, fronts: Fronts, columns: Sequence[str], *, beats: bool, max_prompt_chars: int
    ) -> None:
        self.table, self.fronts, self.columns = table, fronts, columns
        self.beats, self.max_prompt_chars = beats, max_prompt_chars
        self.any_gamed = self.any_repeated = False

    def body(self, groups: list[tuple[str, list[int]]], names: Mapping[str, str]) -> list[str]:
        """One row per distinct result of each group, the tuner named on its first row; groups apart."""
        out = []
        for index, (tuner, rows) in enumerate(groups):
            if index:
                out.append(r"\midrule")
            for position, (row, count) in enumerate(_dedupe(self.table, rows, self.columns)):
                cells = [latex_escape(names.get(tuner, tuner)) if position == 0 else "", self.prompt(row, count)]
                cells += [_mean_std_latex(self.table, name, row) for name in self.columns]
                cells += [latex_escape(_beaten(self.table, row))] if self.beats else []
                out.append(" & ".join(cells) + r" \\")
        return out

    def prompt(self, row: int, count: int) -> str:
        """The prompt cell: ``\\texttt`` text cut to ``max_prompt_chars``, a dagger if gamed, ``(×n)`` if repeated."""
        text = cell_text(self.table, PROMPT_TEXT, row)
        if text:
            text, cut = _truncate(text, self.max_prompt_chars)
            prompt = r"\texttt{" + latex_escape(text, keep_spaces=True) + (r"\ldots{}" if cut else "") + "}"
        else:
            prompt = "--"
        if self.fronts.gamed[row]:
            self.any_gamed = True
            prompt += r"\textsuperscript{\dag}"
        if count > 1:
            self.any_repeated = True
            prompt += rf" ($\times${count})"
        return prompt


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
    rows = _LatexRows(table, fronts, columns, beats=beats, max_prompt_chars=max_prompt_chars)
    learned = rows.body(_front_rows(table, fronts), {})
    references = rows.body(_baseline_rows(table), BASELINE_NAMES)
    lines += learned
    if references:
        if learned:
            lines.append(r"\midrule")
        lines.append(r"\multicolumn{" + str(len(header)) + r"}{l}{\emph{Baselines}} \\")
        lines += references
    if not learned and not references:
        lines.append(r"\multicolumn{" + str(len(header)) + r"}{c}{(no trials)} \\")
    caption = _caption(table, fronts, columns, any_gamed=rows.any_gamed, any_repeated=rows.any_repeated, beats=beats)
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

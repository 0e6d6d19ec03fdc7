"""Does a prompt beat the baselines on held-out data, beyond the replicate intervals?

Every trial and every baseline is measured on the same replicates (same data splits, same test set), so a
row and a baseline are compared *paired*: per replicate ``i``, ``d_i = row.r_i - baseline.r_i`` on test
accuracy; the row beats the baseline when the 95 % interval of the mean of ``d`` lies above 0
(``objectives.stats.paired_difference``). With one replicate there is no interval and nothing is claimed.

A baseline tuner with several rows (``manual``: one per hand-written prompt) is represented by its best row
on the compared metric, so "beats manual" means "beats the best hand-written prompt" — the strictest
reading, chosen on test because it is the reference a reader would pick, never a prompt we report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from objectives.stats import CI95, paired_difference, replicate_values, summarise
from sweep.results.columns import LEARN_METRIC, TEST_METRIC, TUNER, beats_column, diff_columns, tuners_of
from tuners.base import BASELINES


def baselines_in(table: pd.DataFrame) -> list[str]:
    """Baseline tuners present in ``table``, in :data:`BASELINES` order."""
    present = set(tuners_of(table))
    return [b for b in BASELINES if b in present]


def reference_row(table: pd.DataFrame, baseline: str, metric: str = TEST_METRIC) -> int | None:
    """Positional index of ``baseline``'s best row on ``metric`` (first on ties); ``None`` when absent."""
    rows = np.flatnonzero(tuners_of(table) == baseline)
    if not len(rows) or metric not in table:
        return None
    values = table[metric].to_numpy(dtype=np.float64, na_value=np.nan)[rows]
    if not np.isfinite(values).any():
        return None
    return int(rows[int(np.nanargmax(values))])


def compare_to_baselines(table: pd.DataFrame, metric: str = TEST_METRIC) -> pd.DataFrame:
    """``table`` with, per baseline present, the paired difference columns and a bool ``beats/<baseline>``.

    Rows of the baseline itself get NaN differences and ``False``.
    """
    out = table.copy()
    records = out.to_dict("records")
    for baseline in baselines_in(table):
        ref = reference_row(table, baseline, metric)
        reference = replicate_values(records[ref], metric) if ref is not None else []
        diffs: list[tuple[float, float, float]] = []
        for row in records:
            values = replicate_values(row, metric)
            if str(row[TUNER]) == baseline or not reference or len(values) != len(reference):
                diffs.append((math.nan, math.nan, math.nan))
                continue
            d = paired_difference(values, reference)
            diffs.append((d.mean, d.low, d.high))
        for column, values in zip(diff_columns(baseline), zip(*diffs, strict=True), strict=True):
            out[column] = np.array(values, dtype=np.float64)
        low = out[diff_columns(baseline)[1]].to_numpy(dtype=np.float64)
        out[beats_column(baseline)] = np.nan_to_num(low, nan=-1.0) > 0
    return out


def front_beats_share(table: pd.DataFrame, is_pareto: Sequence[bool], tuners: Sequence[str]) -> dict[str, float]:
    """``front_beats/<baseline>/<tuner>``: the share of a learned tuner's front points that beat ``baseline``."""
    shares: dict[str, float] = {}
    tuner_of_row = tuners_of(table)
    mask = np.asarray(is_pareto, dtype=bool)
    for baseline in baselines_in(table):
        column = beats_column(baseline)
        if column not in table:
            continue
        for tuner in tuners:
            if tuner in BASELINES:
                continue
            front = mask & (tuner_of_row == tuner)
            if front.any():
                shares[f"front_beats/{baseline}/{tuner}"] = float(table[column].to_numpy()[front].mean())
    return shares


def learning_margin(table: pd.DataFrame) -> dict[str, float]:
    """``learn/acc_dev_gain/<tuner>`` (mean), ``.ci95``, ``.n`` (replicates) and ``.trials``: what training
    itself gained in a sweep, for each tuner that reports ``learn/acc_dev_gain`` (RLPrompt: its final greedy
    prompt's dev accuracy minus the untrained policy's, so selection among evaluations is not in it).

    The unit is the replicate, not the trial: replicate ``i`` of every trial shares its data split and init
    seed, and close configurations often end on the same prompt, so the trials' values within a replicate are
    not independent draws. Each replicate's values are averaged over the tuner's trials first, and the mean
    and interval are taken over those replicate means (the conservative reading: pooling the trials' values
    as independent would narrow the interval without more evidence). Each trial's own mean ± ci95 is in
    ``trials.parquet``.
    """
    out: dict[str, float] = {}
    if LEARN_METRIC not in table.columns or not len(table):
        return out
    for tuner, rows in table.groupby(table[TUNER].astype(str), sort=True):
        by_replicate: dict[int, list[float]] = {}
        trials = 0
        for _, row in rows.iterrows():
            values = replicate_values(row.to_dict(), LEARN_METRIC)
            trials += bool(values)
            for i, value in enumerate(values):
                by_replicate.setdefault(i, []).append(value)
        if not by_replicate:
            continue
        summary = summarise([sum(v) / len(v) for _, v in sorted(by_replicate.items())])
        key = f"{LEARN_METRIC}/{tuner}"
        out[key] = summary.mean
        out[key + ".n"] = float(summary.n)
        out[key + ".trials"] = float(trials)
        if summary.n > 1:
            out[key + CI95] = summary.ci95
    return out


def learning_text(summary: Mapping[str, object], tuner: str) -> str:
    """``+0.097 ± 0.108`` for ``tuner``'s ``learning_margin`` entries in ``summary``; empty where it has none."""
    mean = summary.get(f"{LEARN_METRIC}/{tuner}")
    if not isinstance(mean, (int, float)) or not math.isfinite(mean):
        return ""
    ci = summary.get(f"{LEARN_METRIC}/{tuner}{CI95}")
    return f"{mean:+.3f}" + (f" ± {ci:.3f}" if isinstance(ci, (int, float)) and math.isfinite(ci) else "")

"""The vocabulary of a sweep's results, defined once: column and metric names, prefixes, directions, colours,
and how a direction, a number or a duration is written.

Everything that reads or writes ``trials.parquet``, draws the figure, writes the tables or the report page
imports these names from here (``sweep.mlflow_log`` and ``sweep.trainable`` too), so a renamed column or a
new colour is one edit. No torch at import (the metric registry is read where a direction is asked for):
trial workers and ``python -m sweep.export --help`` import this module.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

# --- columns of trials.parquet (the output contract, README "Outputs") --------------------------------------------

TUNER = "tuner"
TRIAL_ID = "trial_id"
RUN_ID = "mlflow_run_id"
PROMPT_TEXT = "prompt_text"
PROMPT_IDS = "prompt_ids"
# The prompt each replicate ended on (a list); the row's prompt_text is the one the replicates agree on most.
REPLICATE_PROMPTS = "replicate_prompts"
IS_PARETO = "is_pareto"
IS_PARETO_ALL = "is_pareto_all"
PROXY_GAMED = "proxy_gamed"
# How far a trial got (steps every replicate completed), and the rung step a scheduler stopped it at (NaN for a
# trial that ran its full budget): stopped trials are kept in trials.parquet and never on a front.
STEPS_DONE = "steps_done"
STOPPED_AT = "stopped_at_step"
# A searched weight ``w`` is the column ``param/w``.
PARAM_PREFIX = "param/"
TEXT_COLUMNS = (TUNER, TRIAL_ID, RUN_ID, PROMPT_TEXT)
FLAG_COLUMNS = (IS_PARETO, IS_PARETO_ALL, PROXY_GAMED)
VS_PREFIX = "vs/"
BEATS_PREFIX = "beats/"


def beats_column(baseline: str) -> str:
    """``beats/<baseline>``: whether a row beats ``baseline`` on test beyond the paired 95 % interval."""
    return f"{BEATS_PREFIX}{baseline}"


def diff_columns(baseline: str) -> tuple[str, str, str]:
    """Columns of the paired difference against ``baseline``: mean, low and high of its 95 % interval."""
    return f"{VS_PREFIX}{baseline}/diff", f"{VS_PREFIX}{baseline}/low", f"{VS_PREFIX}{baseline}/high"


# --- metrics (their directions live in objectives.metrics.METRICS) ----------------------------------------------

# The held-out accuracy every export shows next to the dev objectives; test data never selects anything.
TEST_METRIC = "task/acc_test"
LOG_PPL = "interp/log_ppl"
WORD_FRAC = "interp/word_frac"
# Signals of the paper's "odd behaviour": a perplexity proxy optimised into repeated or special tokens.
GAMED_COLUMNS = ("interp/repeat_frac", "interp/special_frac")
# RLPrompt's training gain (final greedy prompt minus the untrained policy, dev accuracy), per trial and, as
# ``learn/acc_dev_gain/<tuner>``, per sweep.
LEARN_METRIC = "learn/acc_dev_gain"


def higher_is_better(name: str) -> bool:
    """The direction of metric ``name`` from the registry; an unknown name raises ``KeyError`` with close names."""
    from objectives.metrics import metric_info

    return metric_info(name).higher_is_better


def arrow(name: str, *, latex: bool = False) -> str:
    """``↑`` where higher is better for metric ``name``, else ``↓`` (``latex``: ``$\\uparrow$``, ``$\\downarrow$``)."""
    up = higher_is_better(name)
    if latex:
        return r"$\uparrow$" if up else r"$\downarrow$"
    return "↑" if up else "↓"


def direction_words(name: str) -> str:
    """``"higher is better"`` or ``"lower is better"`` for metric ``name``."""
    return "higher is better" if higher_is_better(name) else "lower is better"


# --- colours and markers ----------------------------------------------------------------------------------------

# Fixed styles so a tuner keeps its colour and marker across figures, pages and papers (Okabe-Ito palette,
# readable in greyscale and by colour-blind readers). Red is kept for the proxy-gaming overlay. Markers are
# matplotlib's; the report maps them to Plotly's symbols.
TUNER_STYLES: dict[str, tuple[str, str]] = {
    "pez": ("#0072B2", "o"),
    "rlprompt": ("#009E73", "s"),
    "soft": ("#E69F00", "^"),
}
_EXTRA_STYLES: tuple[tuple[str, str], ...] = (
    ("#CC79A7", "D"),
    ("#56B4E9", "v"),
    ("#D55E00", "P"),  # was black, which is now the hand-written baseline's colour; same slot, same hashes
    ("#8C564B", "<"),
    ("#999999", ">"),
    ("#7F3C8D", "h"),
)
# Baselines are references, not fronts: black/grey markers no tuner style uses, so they never read as a tuner.
BASELINE_STYLES: dict[str, tuple[str, str]] = {"manual": ("#000000", "*"), "lm_sample": ("#555555", "d")}
BASELINE_NAMES: dict[str, str] = {"no_prompt": "no prompt", "manual": "hand-written", "lm_sample": "LM-sampled"}
# Short names of the baselines in the tables' "beats" columns; the LaTeX caption spells them out.
BASELINE_ABBREVIATIONS: dict[str, str] = {"no_prompt": "NP", "manual": "HW", "lm_sample": "LM"}
GAMED_COLOR = "#D00000"
# The neutral grey: the no-prompt reference line, the legend key of faded points, a trial without a style
# (matplotlib's "0.4": 102/255 = 0.4 exactly, so the figure's bytes do not change with the spelling).
GREY = "#666666"


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


def rgba(color: str, alpha: float) -> str:
    """``#RRGGBB`` as a CSS ``rgba()`` with ``alpha``; any other colour as given."""
    if re.fullmatch(r"#[0-9a-fA-F]{6}", color):
        red, green, blue = (int(color[i : i + 2], 16) for i in (1, 3, 5))
        return f"rgba({red},{green},{blue},{alpha})"
    return color


# --- reading and writing values ---------------------------------------------------------------------------------


def formatted(value: Any, spec: str = ".3f", *, missing: str = "–") -> str:
    """``value`` as a number in format ``spec``; ``missing`` where it is no finite number (NaN, None, text)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return missing
    return format(number, spec) if math.isfinite(number) else missing


def duration(seconds: Any) -> str:
    """A wall time as a reader says it: ``9.6`` -> ``9.6 s``, ``75.4`` -> ``1 min 15 s``, ``3725`` -> ``1 h 02 min``.

    Not a number: as given (a record written by hand may hold text); NaN or infinite: ``–``.
    """
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        return str(seconds)
    if not math.isfinite(value):
        return "–"
    if value < 59.95:
        return f"{value:.1f} s"
    minutes, secs = divmod(int(round(value)), 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min {secs:02d} s"


def tuners_of(table: pd.DataFrame) -> np.ndarray:
    """The ``tuner`` column as an object array of ``str`` ``(n,)``; an empty table gives an empty array."""
    if len(table) == 0:
        return np.zeros(0, dtype=object)
    return table[TUNER].astype(str).to_numpy(dtype=object)


def cell_value(table: pd.DataFrame, column: str, row: int) -> float:
    """The float in ``column`` of positional ``row``; NaN where the column is missing or holds no number."""
    if column not in table.columns:
        return math.nan
    try:
        return float(table[column].iloc[row])
    except (TypeError, ValueError):
        return math.nan


def cell_text(table: pd.DataFrame, column: str, row: int) -> str:
    """The text in ``column`` of positional ``row``; ``""`` where the column is missing or the cell empty."""
    if column not in table.columns:
        return ""
    value = table[column].iloc[row]
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)

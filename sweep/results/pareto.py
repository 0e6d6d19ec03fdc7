"""Pareto fronts and hypervolumes of a sweep's trials, in pure numpy: the fronts of the exports, and the
ranking of the trials at a rung that the early-stopping scheduler (``sweep/scheduler.py``) decides by.

Every function past :func:`objective_matrix` works on *maximisation*: :func:`_signs` is the one place where a
lower-is-better metric (``METRICS[name].higher_is_better`` is False) has its sign flipped, by
:func:`objective_matrix` on the way in and by :func:`original_units` on the way back (a hypervolume reference
shown to a reader); :func:`signed` does the same for values that come with Tune's modes (``"min"``/``"max"``)
instead of metric names. Other modules never flip a sign.

Shape letters: ``n`` trials (rows of the trials table), ``k`` objectives.

Arrays in :class:`Fronts` are aligned with the table's rows by *position*, not by index label, so a table
with any index works; :func:`annotate` copies them back onto the table.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sweep.results.columns import (
    GAMED_COLUMNS,
    IS_PARETO,
    IS_PARETO_ALL,
    PROXY_GAMED,
    TUNER,
    higher_is_better,
    tuners_of,
)
from tuners.base import BASELINES

logger = logging.getLogger(__name__)

ALL_KEY = "all"

# Bounds the (block, n, k) comparison tensor of pareto_mask to about this many elements.
_MAX_BLOCK_ELEMENTS = 1 << 22
_TIE_RTOL = 1e-12  # select_top: contributions closer than this (relative to the front's hypervolume) are equal


def _signs(objectives: Sequence[str]) -> np.ndarray:
    """``(k,)``: +1 for a higher-is-better objective, -1 for a lower-is-better one (its sign is flipped)."""
    if len(objectives) == 0:
        raise ValueError("need at least one objective")
    return np.array([1.0 if higher_is_better(name) else -1.0 for name in objectives])


def objective_matrix(table: pd.DataFrame, objectives: Sequence[str]) -> np.ndarray:
    """Objective columns of ``table`` as ``(n, k)`` float64, signed so that larger is better in every column.

    Column ``j`` is ``table[objectives[j]]`` if ``METRICS[objectives[j]].higher_is_better``, else its
    negation. NaN stays NaN. An unregistered name raises ``KeyError`` suggesting close names; a registered
    name missing from a non-empty table raises ``KeyError`` naming the columns it has.
    """
    signs = _signs(objectives)
    if len(table) == 0:
        return np.zeros((0, len(objectives)), dtype=np.float64)
    missing = [name for name in objectives if name not in table.columns]
    if missing:
        raise KeyError(f"trials table has no column for objective(s) {missing}; columns: {list(table.columns)}")
    values = table[list(objectives)].to_numpy(dtype=np.float64, na_value=np.nan)
    return values * signs


def original_units(objectives: Sequence[str], values: Sequence[float] | np.ndarray) -> np.ndarray:
    """``values`` ``(..., k)`` in maximisation space back in the metrics' own units (the flip undone)."""
    return np.asarray(values, dtype=np.float64) * _signs(objectives)


def _as_matrix(values: np.ndarray) -> np.ndarray:
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"values must be (n, k), got shape {matrix.shape}")
    return matrix


def pareto_mask(values: np.ndarray) -> np.ndarray:
    """Non-dominated rows of ``values`` ``(n, k)`` under maximisation -> bool ``(n,)``.

    Row ``i`` is dominated when some row ``j`` is ``>=`` in every column and ``>`` in at least one, so exact
    duplicates do not dominate each other and are both kept. Rows holding a NaN (or an infinity, which no
    metric should produce and which would otherwise dominate everything) are never on the front and never
    dominate. ``n = 0`` gives an empty mask.
    """
    matrix = _as_matrix(values)
    valid = np.isfinite(matrix).all(axis=1)
    points = matrix[valid]
    m, k = points.shape
    on_front = np.ones(m, dtype=bool)
    # Blocks of rows keep the broadcast comparison in bounded memory for large sweeps.
    block = max(1, _MAX_BLOCK_ELEMENTS // max(1, m * k))
    for start in range(0, m, block):
        rows = points[start : start + block, None, :]  # (b, 1, k)
        at_least = (points[None, :, :] >= rows).all(axis=-1)  # (b, m): row j >= row i everywhere
        better = (points[None, :, :] > rows).any(axis=-1)  # (b, m): row j > row i somewhere
        on_front[start : start + block] = ~(at_least & better).any(axis=1)
    mask = np.zeros(matrix.shape[0], dtype=bool)
    mask[valid] = on_front
    return mask


def hypervolume_2d(values: np.ndarray, reference: Sequence[float]) -> float:
    """Area dominated by the points ``(n, 2)`` (maximisation) and bounded below by ``reference`` ``(2,)``.

    Only points strictly better than ``reference`` in both coordinates (and finite) contribute; with none
    the result is 0.0. Dominated points may be included: they add no area.
    """
    matrix = _as_matrix(values)
    if matrix.shape[1] != 2:
        raise ValueError(f"hypervolume_2d needs (n, 2) values, got shape {matrix.shape}")
    ref = np.asarray(reference, dtype=np.float64)
    if ref.shape != (2,):
        raise ValueError(f"reference must have 2 coordinates, got {ref.shape}")
    return hypervolume(matrix[np.isfinite(matrix).all(axis=1)], ref)


def reference_point(values: np.ndarray) -> np.ndarray:
    """The default hypervolume reference ``(k,)`` for ``values`` ``(n, k)`` in maximisation space.

    Per column: the minimum over finite values minus 10% of the column's range, or minus
    ``1e-9 * max(1, |min|)`` when the range is 0, so that every finite point is strictly better than the
    reference and adds area. A column with no finite value gives NaN (and a hypervolume of 0). Because it
    depends on the sweep's own points, hypervolumes from different sweeps are only comparable when the
    reference is the same; the exports state it next to every hypervolume.
    """
    matrix = _as_matrix(values)
    reference = np.full(matrix.shape[1], np.nan)
    for j in range(matrix.shape[1]):
        column = matrix[:, j][np.isfinite(matrix[:, j])]
        if column.size == 0:
            continue
        low, span = float(column.min()), float(column.max() - column.min())
        reference[j] = low - 0.1 * span if span > 0 else low - 1e-9 * max(1.0, abs(low))
    return reference


@dataclass(frozen=True, eq=False)
class Fronts:
    """Pareto fronts of a trials table; arrays are ``(n,)`` aligned with the table's rows by position.

    ``is_pareto`` marks rows non-dominated among their own tuner's trials, ``is_pareto_all`` among all
    trials. ``hypervolume`` holds one area per tuner and one under ``"all"``, all against the same
    ``reference`` (maximisation space: lower-is-better objectives negated); it is empty unless there are
    exactly 2 objectives. ``gamed`` flags prompts whose ``interp/repeat_frac`` or ``interp/special_frac``
    exceeds ``gamed_threshold``. ``eq=False``: arrays have no single truth value, so identity equality.
    """

    objectives: tuple[str, ...]
    is_pareto: np.ndarray
    is_pareto_all: np.ndarray
    hypervolume: dict[str, float]
    reference: tuple[float, ...]
    gamed: np.ndarray
    gamed_threshold: float = 0.3
    tuners: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        # Read-only copies, so that a shared Fronts cannot be edited behind the plot or export built from it.
        for name in ("is_pareto", "is_pareto_all", "gamed"):
            array = np.array(getattr(self, name), dtype=bool)
            array.setflags(write=False)
            object.__setattr__(self, name, array)

    @property
    def original_reference(self) -> tuple[float, ...]:
        """:attr:`reference` in the metrics' own units, as a reader is shown it."""
        return tuple(float(r) for r in original_units(self.objectives, self.reference))


def gamed_mask(table: pd.DataFrame, *, threshold: float = 0.3) -> np.ndarray:
    """Bool ``(n,)``: ``interp/repeat_frac > threshold`` or ``interp/special_frac > threshold``.

    A missing column or a NaN value counts as 0 (not gamed).
    """
    flags = np.zeros(len(table), dtype=bool)
    for name in GAMED_COLUMNS:
        if name in table.columns:
            column = table[name].to_numpy(dtype=np.float64, na_value=np.nan)
            flags |= np.nan_to_num(column, nan=0.0) > threshold
    return flags


def _tuner_names(table: pd.DataFrame) -> np.ndarray:
    if len(table) and TUNER not in table.columns:
        raise KeyError(f"trials table has no {TUNER!r} column; columns: {list(table.columns)}")
    return tuners_of(table)


def compute_fronts(table: pd.DataFrame, objectives: Sequence[str], *, gamed_threshold: float = 0.3) -> Fronts:
    """Per-tuner and overall fronts, hypervolumes and proxy-gaming flags of ``table`` (one row per trial).

    Baseline rows (``tuners.baselines.BASELINES``) are references, not searches: they get their own per-tuner
    ``is_pareto`` but take no part in ``is_pareto_all``, the hypervolumes or their reference (the empty
    prompt's readability of 0 would otherwise dominate every learned point). The hypervolume reference is
    :func:`reference_point` of all learned trials together, so per-tuner areas are comparable with each other
    and with ``"all"``.
    """
    objectives = tuple(objectives)
    values = objective_matrix(table, objectives)
    tuner_of_row = _tuner_names(table)
    tuners = tuple(dict.fromkeys(tuner_of_row.tolist()))  # first-appearance order
    learned = ~np.isin(tuner_of_row, BASELINES) if len(table) else np.zeros(0, dtype=bool)

    is_pareto = np.zeros(len(table), dtype=bool)
    for tuner in tuners:
        rows = np.flatnonzero(tuner_of_row == tuner)
        is_pareto[rows] = pareto_mask(values[rows])
    is_pareto_all = np.zeros(len(table), dtype=bool)
    is_pareto_all[learned] = pareto_mask(values[learned])

    reference = reference_point(values[learned])
    hypervolume: dict[str, float] = {}
    if len(objectives) == 2:
        for tuner in tuners:
            if tuner not in BASELINES:
                hypervolume[tuner] = hypervolume_2d(values[tuner_of_row == tuner], reference)
        hypervolume[ALL_KEY] = hypervolume_2d(values[learned], reference)

    fronts = Fronts(
        objectives=objectives,
        is_pareto=is_pareto,
        is_pareto_all=is_pareto_all,
        hypervolume=hypervolume,
        reference=tuple(float(r) for r in reference),
        gamed=gamed_mask(table, threshold=gamed_threshold),
        gamed_threshold=float(gamed_threshold),
        tuners=tuners,
    )
    logger.debug(
        "fronts over %s: %d trials, %d per-tuner front, %d overall front, %d gamed",
        objectives,
        len(table),
        int(is_pareto.sum()),
        int(is_pareto_all.sum()),
        int(fronts.gamed.sum()),
    )
    return fronts


def annotate(table: pd.DataFrame, fronts: Fronts) -> pd.DataFrame:
    """Copy of ``table`` with bool columns ``is_pareto``, ``is_pareto_all`` and ``proxy_gamed`` from ``fronts``."""
    if len(fronts.is_pareto) != len(table):
        raise ValueError(f"fronts cover {len(fronts.is_pareto)} trials but the table has {len(table)} rows")
    annotated = table.copy()
    annotated[IS_PARETO] = np.array(fronts.is_pareto, dtype=bool)
    annotated[IS_PARETO_ALL] = np.array(fronts.is_pareto_all, dtype=bool)
    annotated[PROXY_GAMED] = np.array(fronts.gamed, dtype=bool)
    return annotated


# ----- ranking the trials at a rung (sweep/scheduler.py): any number of objectives ----------------------------


def signed(values: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """``values`` ``(n, k)`` with every ``"min"`` column negated, so that larger is better everywhere."""
    matrix = np.asarray(values, dtype=np.float64).reshape(-1, len(modes))
    bad = [m for m in modes if m not in ("max", "min")]
    if bad:
        raise ValueError(f"modes {list(modes)}: each must be 'max' or 'min', got {bad}")
    return matrix * np.array([1.0 if m == "max" else -1.0 for m in modes])


def nondominated_ranks(points: np.ndarray) -> np.ndarray:
    """Front index ``(n,)`` of each row of ``points`` ``(n, k)`` (maximisation): 0 for the non-dominated rows,
    1 for those non-dominated once front 0 is removed, and so on. Equal rows do not dominate each other."""
    points = np.asarray(points, dtype=np.float64)
    n = points.shape[0]
    at_least = (points[None, :, :] >= points[:, None, :]).all(axis=-1)  # [i, j]: j >= i everywhere
    better = (points[None, :, :] > points[:, None, :]).any(axis=-1)  # [i, j]: j > i somewhere
    dominated_by = at_least & better  # [i, j]: j dominates i
    # Peel fronts by counting dominators (Deb et al.'s fast non-dominated sort): O(n^2) in all.
    count = dominated_by.sum(axis=1)
    ranks = np.full(n, -1, dtype=np.int64)
    current = count == 0
    front = 0
    while current.any():
        ranks[current] = front
        count = count - dominated_by[:, current].sum(axis=1)
        current = (count == 0) & (ranks < 0)
        front += 1
    return ranks


def hypervolume(points: np.ndarray, reference: Sequence[float]) -> float:
    """Volume dominated by ``points`` ``(n, k)`` (maximisation) above ``reference`` ``(k,)``, exactly.

    Only points strictly better than ``reference`` in every coordinate count. Slices along the last objective
    and recurses (``O(n^(k-1) log n)``): meant for the few trials of one rung, with 2 or 3 objectives.
    """
    points = np.asarray(points, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    points = points[(points > ref).all(axis=1)]
    if points.shape[0] == 0:
        return 0.0
    if points.shape[1] == 1:
        return float(points[:, 0].max() - ref[0])
    if points.shape[1] == 2:
        # Sweep from the largest x: each point adds the strip of height it gains over the points to its right.
        area, top = 0.0, ref[1]
        for x, y in points[np.lexsort((-points[:, 1], -points[:, 0]))]:
            if y > top:
                area += (x - ref[0]) * (y - top)
                top = y
        return float(area)
    # Slices between consecutive values of the last coordinate, highest first: slice i is covered by the
    # projections of the points whose last coordinate reaches it.
    order = np.argsort(-points[:, -1], kind="stable")
    levels = np.append(points[order, -1], ref[-1])
    volume = 0.0
    for i in range(len(order)):
        height = levels[i] - levels[i + 1]
        if height > 0:
            volume += height * hypervolume(points[order[: i + 1], :-1], ref[:-1])
    return float(volume)


def hv_contributions(points: np.ndarray, reference: Sequence[float]) -> np.ndarray:
    """Exclusive hypervolume of each row ``(n,)``: what the set loses without it (0 for a dominated row)."""
    points = np.asarray(points, dtype=np.float64)
    total = hypervolume(points, reference)
    mask = np.ones(points.shape[0], dtype=bool)
    out = np.zeros(points.shape[0])
    for i in range(points.shape[0]):
        mask[i] = False
        out[i] = total - hypervolume(points[mask], reference)
        mask[i] = True
    return out


def nadir_reference(points: np.ndarray) -> np.ndarray:
    """``(k,)``: each column's minimum less 10 % of its range (``1e-9 * max(1, |min|)`` for a zero range), the
    rule of :func:`reference_point`, so every point, the ends of the front too, adds volume."""
    points = np.asarray(points, dtype=np.float64)
    low, high = points.min(axis=0), points.max(axis=0)
    span = high - low
    return np.where(span > 0, low - 0.1 * span, low - 1e-9 * np.maximum(1.0, np.abs(low)))


def select_top(points: np.ndarray, n_keep: int, reference: Sequence[float] | None = None) -> np.ndarray:
    """Bool ``(n,)``: the ``n_keep`` best rows of ``points`` ``(n, k)`` (maximisation).

    Whole non-dominated fronts are taken while they fit; in the first front that does not, the row whose
    removal loses least hypervolume (within that front, against ``reference``, default :func:`nadir_reference`
    of all rows) is dropped, then the next, until the front fits. Equal contributions drop the later row, so
    earlier rows (trials recorded first) win exact ties.
    """
    points = np.asarray(points, dtype=np.float64)
    n = points.shape[0]
    keep = np.zeros(n, dtype=bool)
    if n_keep <= 0 or n == 0:
        return keep
    if n_keep >= n:
        return ~keep
    ref = nadir_reference(points) if reference is None else np.asarray(reference, dtype=np.float64)
    ranks = nondominated_ranks(points)
    for front in range(int(ranks.max()) + 1):
        members = list(np.flatnonzero(ranks == front))
        room = n_keep - int(keep.sum())
        if len(members) <= room:
            keep[members] = True
            if len(members) == room:
                break
            continue
        while len(members) > room:
            contrib = hv_contributions(points[members], ref)
            scale = max(hypervolume(points[members], ref), 1e-300)
            least = contrib.min()
            # Among the (numerically) least contributors drop the one recorded last.
            tied = [m for m, c in zip(members, contrib, strict=True) if c - least <= _TIE_RTOL * scale]
            members.remove(max(tied))
        keep[members] = True
        break
    return keep

"""Closed-form tests of sweep.results.pareto: fronts, hypervolumes, sign normalisation and proxy-gaming flags."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sweep.results.pareto import (
    Fronts,
    annotate,
    compute_fronts,
    gamed_mask,
    hypervolume_2d,
    objective_matrix,
    original_units,
    pareto_mask,
    reference_point,
)

NAN = float("nan")


# --- pareto_mask ------------------------------------------------------------------------------------------


def test_pareto_mask_drops_dominated_points():
    values = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [1.0, 1.0], [2.0, 1.5]])
    assert pareto_mask(values).tolist() == [True, True, True, False, False]


def test_pareto_mask_weak_dominance_counts():
    # Equal in one column and better in the other is enough to dominate.
    values = np.array([[1.0, 2.0], [1.0, 3.0]])
    assert pareto_mask(values).tolist() == [False, True]


def test_pareto_mask_keeps_exact_duplicates():
    values = np.array([[2.0, 2.0], [2.0, 2.0], [1.0, 1.0]])
    assert pareto_mask(values).tolist() == [True, True, False]


def test_pareto_mask_nan_rows_neither_on_front_nor_dominating():
    # Row 0 would dominate everything if its NaN were ignored; row 2 would otherwise be dominated by it.
    values = np.array([[10.0, NAN], [NAN, NAN], [1.0, 1.0], [0.0, 0.5]])
    assert pareto_mask(values).tolist() == [False, False, True, False]


def test_pareto_mask_single_row_and_empty():
    assert pareto_mask(np.array([[0.3, -2.0]])).tolist() == [True]
    empty = pareto_mask(np.zeros((0, 2)))
    assert empty.shape == (0,) and empty.dtype == bool


def test_pareto_mask_three_objectives():
    values = np.array(
        [
            [1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 0.0, 1.0],
            [0.5, 0.5, 0.5],  # on the front: no single point beats it everywhere
            [0.4, 0.4, 0.4],  # dominated by the row above
            [1.0, 0.0, -1.0],  # dominated by row 0
        ]
    )
    assert pareto_mask(values).tolist() == [True, True, True, True, False, False]


def test_pareto_mask_blocks_match_unblocked(monkeypatch):
    # Many rows force several blocks; the answer must not depend on where the blocks split.
    rng = np.random.default_rng(0)
    values = rng.normal(size=(300, 2))
    expected = pareto_mask(values)
    from sweep.results import pareto

    monkeypatch.setattr(pareto, "_MAX_BLOCK_ELEMENTS", 7 * 300 * 2)
    assert pareto_mask(values).tolist() == expected.tolist()
    # Brute force on the same points.
    brute = [
        not any((values[j] >= values[i]).all() and (values[j] > values[i]).any() for j in range(len(values)))
        for i in range(len(values))
    ]
    assert expected.tolist() == brute


# --- hypervolume ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_hypervolume_staircase(n):
    points = np.array([[i + 1, n - i] for i in range(n)], dtype=float)  # (1, n), (2, n-1), ..., (n, 1)
    assert hypervolume_2d(points, (0.0, 0.0)) == pytest.approx(n * n - n * (n - 1) / 2)


def test_hypervolume_single_point_is_a_rectangle():
    assert hypervolume_2d(np.array([[3.0, 0.5]]), (0.0, 0.0)) == pytest.approx(1.5)
    assert hypervolume_2d(np.array([[3.0, 0.5]]), (1.0, -0.5)) == pytest.approx(2.0)


def test_hypervolume_ignores_points_not_beyond_the_reference():
    base = hypervolume_2d(np.array([[2.0, 2.0]]), (0.0, 0.0))
    extra = np.array([[2.0, 2.0], [-1.0, 5.0], [5.0, 0.0], [0.0, 0.0], [NAN, 9.0]])
    assert hypervolume_2d(extra, (0.0, 0.0)) == pytest.approx(base) == pytest.approx(4.0)
    assert hypervolume_2d(np.array([[-1.0, -1.0]]), (0.0, 0.0)) == 0.0
    assert hypervolume_2d(np.zeros((0, 2)), (0.0, 0.0)) == 0.0


def test_hypervolume_dominated_and_duplicate_points_add_nothing():
    front = np.array([[1.0, 2.0], [2.0, 1.0]])
    with_extra = np.vstack([front, [[1.0, 1.0], [2.0, 1.0], [0.5, 0.5]]])
    assert hypervolume_2d(with_extra, (0.0, 0.0)) == pytest.approx(hypervolume_2d(front, (0.0, 0.0))) == 3.0


def test_hypervolume_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        hypervolume_2d(np.zeros((2, 3)), (0.0, 0.0))
    with pytest.raises(ValueError, match="reference"):
        hypervolume_2d(np.zeros((2, 2)), (0.0, 0.0, 0.0))


# --- reference point --------------------------------------------------------------------------------------


def test_reference_point_is_min_minus_tenth_of_range():
    values = np.array([[0.5, -4.0], [0.9, -2.0], [NAN, -12.0]])
    ref = reference_point(values)
    assert ref[0] == pytest.approx(0.5 - 0.1 * 0.4)
    assert ref[1] == pytest.approx(-12.0 - 0.1 * 10.0)


def test_reference_point_zero_range_and_empty_column():
    values = np.array([[5.0, NAN], [5.0, NAN]])
    ref = reference_point(values)
    assert ref[0] == pytest.approx(5.0 - 5e-9) and ref[0] < 5.0
    assert math.isnan(ref[1])
    assert reference_point(np.array([[0.0], [0.0]]))[0] == pytest.approx(-1e-9)
    # Every finite point is strictly beyond the reference, so a lone point still has an area.
    single = np.array([[0.7, 0.2]])
    assert hypervolume_2d(single, reference_point(single)) > 0.0


# --- sign normalisation -----------------------------------------------------------------------------------


def test_objective_matrix_negates_lower_is_better():
    table = pd.DataFrame({"task/acc_dev": [0.5, 0.75], "interp/log_ppl": [3.0, NAN], "interp/scrutability": [-3.0, 1]})
    values = objective_matrix(table, ["task/acc_dev", "interp/log_ppl", "interp/scrutability"])
    assert values.shape == (2, 3) and values.dtype == np.float64
    assert values[:, 0].tolist() == [0.5, 0.75]
    assert values[0, 1] == -3.0 and math.isnan(values[1, 1])
    assert values[:, 2].tolist() == [-3.0, 1.0]


def test_original_units_undo_the_flip_and_nothing_else():
    objectives = ["task/acc_dev", "interp/log_ppl"]
    table = pd.DataFrame({"task/acc_dev": [0.5, 0.75], "interp/log_ppl": [3.0, 4.5]})
    back = original_units(objectives, objective_matrix(table, objectives))
    assert back.tolist() == table.to_numpy().tolist()
    assert original_units(objectives, (0.35, -6.4)).tolist() == [0.35, 6.4]
    # The reference a reader is shown: log_ppl back in its own units (lower is better, so it was negated).
    fronts = compute_fronts(_table(), objectives)
    assert fronts.original_reference == pytest.approx((0.4 - 0.05, 6.0 + 0.4))


def test_objective_matrix_unknown_metric_suggests_close_names():
    table = pd.DataFrame({"task/acc_dev": [0.5]})
    with pytest.raises(KeyError, match="task/acc_dev"):
        objective_matrix(table, ["task/acc_dve"])


def test_objective_matrix_missing_column_and_empty_table():
    with pytest.raises(KeyError, match="interp/log_ppl"):
        objective_matrix(pd.DataFrame({"task/acc_dev": [0.5]}), ["task/acc_dev", "interp/log_ppl"])
    assert objective_matrix(pd.DataFrame(), ["task/acc_dev", "interp/log_ppl"]).shape == (0, 2)


# --- compute_fronts / annotate ----------------------------------------------------------------------------


def _table() -> pd.DataFrame:
    """Two tuners on (acc_dev up, log_ppl down); positions noted in comments are maximisation space."""
    return pd.DataFrame(
        {
            "tuner": ["pez", "pez", "pez", "soft", "soft"],
            "trial_id": ["t0", "t1", "t2", "t3", "t4"],
            "task/acc_dev": [0.9, 0.6, 0.5, 0.8, 0.4],
            "interp/log_ppl": [6.0, 3.0, 4.0, 2.0, 5.0],
            "interp/repeat_frac": [0.0, 0.5, 0.0, 0.3, NAN],
            "interp/special_frac": [0.0, 0.0, 0.31, 0.0, 0.0],
        },
        index=[10, 11, 12, 13, 14],  # a non-default index: fronts align by position
    )


def test_compute_fronts_per_tuner_vs_all():
    fronts = compute_fronts(_table(), ["task/acc_dev", "interp/log_ppl"])
    # pez: (0.9,6) and (0.6,3) trade off; (0.5,4) is dominated by (0.6,3). soft: (0.8,2) dominates (0.4,5).
    assert fronts.is_pareto.tolist() == [True, True, False, True, False]
    # Across tuners soft's (0.8, 2) dominates pez's (0.6, 3): on pez's own front but not the overall one.
    assert fronts.is_pareto_all.tolist() == [True, False, False, True, False]
    assert fronts.objectives == ("task/acc_dev", "interp/log_ppl")
    assert fronts.tuners == ("pez", "soft")


def test_compute_fronts_hypervolume_against_shared_reference():
    fronts = compute_fronts(_table(), ["task/acc_dev", "interp/log_ppl"])
    # Maximisation space: x = acc in [0.4, 0.9], y = -log_ppl in [-6, -2].
    rx, ry = 0.4 - 0.05, -6.0 - 0.4
    assert fronts.reference == pytest.approx((rx, ry))
    pez = (0.9 - rx) * (-6.0 - ry) + (0.6 - rx) * (-3.0 - -6.0)
    soft = (0.8 - rx) * (-2.0 - ry)
    overall = (0.9 - rx) * (-6.0 - ry) + (0.8 - rx) * (-2.0 - -6.0)
    assert fronts.hypervolume == pytest.approx({"pez": pez, "soft": soft, "all": overall})


def test_compute_fronts_three_objectives_has_no_hypervolume():
    fronts = compute_fronts(_table(), ["task/acc_dev", "interp/log_ppl", "interp/repeat_frac"])
    assert fronts.hypervolume == {}
    assert len(fronts.reference) == 3
    # The NaN repeat_frac row (t4) cannot be on any front.
    assert not fronts.is_pareto[4] and not fronts.is_pareto_all[4]


def test_gamed_flag_threshold_and_missing_columns():
    table = _table()
    # repeat 0.5 > 0.3 (t1), special 0.31 > 0.3 (t2); exactly 0.3 (t3) and NaN (t4) are not gamed.
    assert gamed_mask(table).tolist() == [False, True, True, False, False]
    assert compute_fronts(table, ["task/acc_dev", "interp/log_ppl"]).gamed.tolist() == [0, 1, 1, 0, 0]
    assert gamed_mask(table, threshold=0.2).tolist() == [False, True, True, True, False]
    no_signals = table.drop(columns=["interp/repeat_frac", "interp/special_frac"])
    assert not gamed_mask(no_signals).any()


def test_fronts_arrays_are_read_only_copies():
    fronts = compute_fronts(_table(), ["task/acc_dev", "interp/log_ppl"])
    with pytest.raises(ValueError):
        fronts.is_pareto[0] = False
    mine = np.array([True])
    made = Fronts(("task/acc_dev",), mine, mine, {}, (0.0,), np.array([False]))
    mine[0] = False
    assert made.is_pareto.tolist() == [True]


def test_annotate_adds_bool_columns_and_keeps_the_table():
    table = _table()
    fronts = compute_fronts(table, ["task/acc_dev", "interp/log_ppl"])
    annotated = annotate(table, fronts)
    assert "is_pareto" not in table.columns
    assert list(annotated.index) == list(table.index)
    for name in ("is_pareto", "is_pareto_all", "proxy_gamed"):
        assert annotated[name].dtype == bool
    assert annotated["is_pareto"].tolist() == fronts.is_pareto.tolist()
    assert annotated.loc[11, "proxy_gamed"]
    with pytest.raises(ValueError, match="rows"):
        annotate(table.iloc[:2], fronts)


def test_compute_fronts_on_an_empty_table():
    fronts = compute_fronts(pd.DataFrame(), ["task/acc_dev", "interp/scrutability"])
    assert fronts.is_pareto.shape == (0,) and fronts.gamed.shape == (0,)
    assert fronts.hypervolume == {"all": 0.0}
    assert all(math.isnan(r) for r in fronts.reference)


def test_baselines_are_references_not_part_of_the_overall_front_or_areas():
    table = pd.DataFrame(
        {
            "tuner": ["pez", "pez", "no_prompt", "manual"],
            "task/acc_dev": [0.8, 0.6, 0.9, 0.7],
            "interp/scrutability": [-8.0, -4.0, 0.0, -5.0],
        }
    )
    fronts = compute_fronts(table, ("task/acc_dev", "interp/scrutability"))
    # No prompt (0.9, 0) would dominate both pez points; as a reference it takes no part.
    assert fronts.is_pareto_all.tolist() == [True, True, False, False]
    assert fronts.is_pareto.tolist() == [True, True, True, True]
    assert set(fronts.hypervolume) == {"pez", "all"} and fronts.hypervolume["all"] == fronts.hypervolume["pez"]
    assert fronts.reference == compute_fronts(table.iloc[:2], ("task/acc_dev", "interp/scrutability")).reference

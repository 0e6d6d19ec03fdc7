"""Replicate statistics against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from objectives.stats import aggregate, paired_difference, replicate_values, summarise, t_quantile


def test_t_quantiles_are_the_textbook_values():
    assert t_quantile(1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile(2) == pytest.approx(4.3027, abs=1e-4)
    assert t_quantile(4) == pytest.approx(2.7764, abs=1e-4)
    assert math.isnan(t_quantile(0))


def test_summary_of_three_replicates():
    # mean 0.75; deviations -0.25, 0, 0.25 -> sample variance 0.0625 / 1 -> std 0.25;
    # half-width t(2) * 0.25 / sqrt(3) = 4.302653 * 0.144338 = 0.621034
    s = summarise([0.5, 0.75, 1.0])
    assert (s.mean, s.std, s.n) == (0.75, 0.25, 3)
    assert s.ci95 == pytest.approx(0.621034, abs=1e-6)
    assert s.low == pytest.approx(0.75 - 0.621034, abs=1e-6)


def test_one_replicate_has_no_spread_rather_than_zero_spread():
    s = summarise([0.6])
    assert s.mean == 0.6 and math.isnan(s.std) and math.isnan(s.ci95)


@pytest.mark.parametrize("values", [[], [0.5, float("nan")], [float("inf")]])
def test_bad_values_are_errors(values):
    with pytest.raises(ValueError):
        summarise(values)


def test_aggregate_names_and_values():
    out = aggregate([{"task/acc_test": 0.5, "only/first": 1.0}, {"task/acc_test": 0.7}])
    # mean 0.6; std sqrt(0.02) = 0.141421; half-width t(1) * 0.141421 / sqrt(2) = 12.7062 * 0.1 = 1.27062
    assert out["task/acc_test"] == pytest.approx(0.6)
    assert out["task/acc_test.std"] == pytest.approx(0.141421, abs=1e-6)
    assert out["task/acc_test.ci95"] == pytest.approx(1.270620, abs=1e-5)
    assert (out["task/acc_test.r0"], out["task/acc_test.r1"]) == (0.5, 0.7)
    assert "only/first" not in out  # not measured on every replicate
    assert replicate_values(out, "task/acc_test") == [0.5, 0.7]


def test_paired_difference_removes_the_shared_split_noise():
    # Differences 0.1, 0.2, 0.3: mean 0.2, std 0.1, half-width 4.302653 * 0.1 / sqrt(3) = 0.248414.
    d = paired_difference([0.7, 0.8, 0.9], [0.6, 0.6, 0.6])
    assert d.mean == pytest.approx(0.2) and d.std == pytest.approx(0.1)
    assert d.ci95 == pytest.approx(0.248414, abs=1e-6)
    assert d.low < 0 < d.high  # not beaten beyond the interval with three replicates
    assert paired_difference([0.8, 0.9, 0.85], [0.6, 0.7, 0.65]).low > 0  # a constant 0.2 gain is
    with pytest.raises(ValueError, match="same replicates"):
        paired_difference([0.1], [0.1, 0.2])

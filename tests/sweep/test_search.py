"""Optuna side of the sweep: the search space reaches 0, the unregularised trial comes first, tuners take
turns, and a configuration already measured is not measured again."""

from __future__ import annotations

import optuna
import pytest

from sweep.search import MultiTunerSearch, define_space, directions, make_searcher, weights_from_params


def _searcher(tmp_path, name, ranges, sampler="random"):
    return make_searcher(
        ranges=ranges,
        objectives=["task/acc_dev", "interp/log_ppl"],
        sampler=sampler,
        seed=0,
        storage_path=tmp_path / "optuna.db",
        study_name=name,
    )


def test_directions_come_from_the_metric_registry():
    assert directions(["task/acc_dev", "interp/log_ppl", "interp/scrutability"]) == ["max", "min", "max"]


def test_space_reaches_exact_zero_and_log_scale():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(40):
        trial = study.ask()
        define_space(trial, ranges={"lambda_ppl": [0.01, 10.0]})
        seen.append(weights_from_params(trial.params, ["lambda_ppl"])["lambda_ppl"])
        study.tell(trial, 0.0)
    assert 0.0 in seen
    assert all(v == 0.0 or 0.01 <= v <= 10.0 for v in seen)
    sampled = [t for t in study.trials if "lambda_ppl" in t.distributions]
    assert sampled and all(t.distributions["lambda_ppl"].log for t in sampled)


def test_tuners_take_turns_start_unregularised_and_finish(tmp_path):
    search = MultiTunerSearch(
        {
            "pez": _searcher(tmp_path, "a", {"lambda_ppl": [0.01, 10]}),
            "soft": _searcher(tmp_path, "b", {"lambda_ppl": [0.01, 10], "lambda_dist": [0.1, 1]}),
        },
        weights={"pez": ["lambda_ppl"], "soft": ["lambda_ppl", "lambda_dist"]},
        num_samples=3,
    )
    suggestions = [search.suggest(f"t{i}") for i in range(6)]
    assert [s["tuner"] for s in suggestions] == ["pez", "soft"] * 3
    assert weights_from_params(suggestions[0]["params"], ["lambda_ppl"]) == {"lambda_ppl": 0.0}
    assert weights_from_params(suggestions[1]["params"], ["lambda_ppl", "lambda_dist"]) == {
        "lambda_ppl": 0.0,
        "lambda_dist": 0.0,
    }
    assert search.suggest("t6") == MultiTunerSearch.FINISHED


def test_measured_configuration_is_not_run_again(tmp_path):
    inner = _searcher(tmp_path, "c", {"lambda_ppl": [0.01, 10]})
    search = MultiTunerSearch({"pez": inner}, weights={"pez": ["lambda_ppl"]}, num_samples=30)
    first = search.suggest("t0")
    result = {"task/acc_dev": 0.8, "interp/log_ppl": 9.0}
    search.on_trial_complete("t0", result=result)
    zero = {"lambda_ppl": 0.0}
    # A random sampler turns the switch off about half the time: every such draw must be answered from memory.
    for i in range(1, 25):
        params = search.suggest(f"t{i}")["params"]
        assert weights_from_params(params, ["lambda_ppl"]) != zero
        search.on_trial_complete(f"t{i}", result={"task/acc_dev": 0.5, "interp/log_ppl": 5.0 + i})
    assert weights_from_params(first["params"], ["lambda_ppl"]) == zero
    assert search._redraws > 0
    # The study was told the known result for every redrawn duplicate, so it learned from them.
    study = optuna.load_study(study_name="c", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 25 + search._redraws
    assert sum(1 for t in complete if t.values == [0.8, 9.0]) == 1 + search._redraws


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "random"])
def test_every_sampler_builds(tmp_path, sampler):
    search = _searcher(tmp_path, sampler, {"lambda_ppl": [0.01, 10]}, sampler=sampler)
    assert search.suggest("x") is not None

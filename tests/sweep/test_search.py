"""Optuna side of the sweep: knobs reach 0, fixed trials come first and count in the budget, the zero
configuration is measured and counted once, a configuration is never measured twice, samplers are sized to
their budget, studies name their objectives, and the searcher survives Tune's checkpoints."""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass

import optuna
import pytest
from optuna.trial import TrialState

from sweep.search import MultiTunerSearch, make_searcher, sampled_budget
from sweep.space import (
    FIXED_ATTR,
    KNOBS_ON,
    define_space,
    directions,
    integer_knobs_of,
    knob_subsets,
    knobs_from_params,
    make_sampler,
    sampler_plan,
    space_filling_start,
)

OBJECTIVES = ["task/acc_dev", "interp/log_ppl"]
PPL = {"lambda_ppl": [0.01, 10.0]}
PPL_DIST = {"lambda_ppl": [0.01, 10.0], "lambda_dist": [0.1, 1.0]}


def _searcher(tmp_path, name, ranges, *, sampler="random", budget, integer_knobs=frozenset(), storage=False):
    return make_searcher(
        ranges=ranges,
        objectives=OBJECTIVES,
        sampler=sampler,
        seed=0,
        budget=budget,
        storage_path=tmp_path / "optuna.db" if storage else None,
        study_name=name,
        integer_knobs=integer_knobs,
    )


def _result(i: int) -> dict[str, float]:
    return {"task/acc_dev": 0.5 + 0.01 * i, "interp/log_ppl": 9.0 - 0.1 * i}


def _drive(search: MultiTunerSearch, *, concurrent: int = 1, limit: int = 200) -> list[dict]:
    """Suggest and complete as Tune would, ``concurrent`` trials in flight; returns the suggestions."""
    suggestions, in_flight, i = [], [], 0
    while i < limit:
        while len(in_flight) < concurrent:
            s = search.suggest(f"t{i}")
            if not isinstance(s, dict):
                break
            suggestions.append(s)
            in_flight.append(f"t{i}")
            i += 1
        if not in_flight:
            break
        trial_id = in_flight.pop(0)
        search.on_trial_complete(trial_id, result=_result(int(trial_id[1:])))
    return suggestions


def _complete(searcher) -> list[optuna.trial.FrozenTrial]:
    return [t for t in searcher.study.trials if t.state == TrialState.COMPLETE]


def test_directions_come_from_the_metric_registry():
    assert directions(["task/acc_dev", "interp/log_ppl", "interp/scrutability"]) == ["max", "min", "max"]


def test_space_never_yields_all_off_but_reaches_zero_per_knob_on_a_log_scale():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(60):
        trial = study.ask()
        define_space(trial, ranges=PPL_DIST)
        seen.append(knobs_from_params(trial.params, list(PPL_DIST)))
        study.tell(trial, 0.0)
    assert all(any(v > 0 for v in s.values()) for s in seen), "the all-zero configuration is a fixed trial"
    assert any(s["lambda_ppl"] == 0.0 for s in seen) and any(s["lambda_dist"] == 0.0 for s in seen)
    assert all(s["lambda_ppl"] == 0.0 or 0.01 <= s["lambda_ppl"] <= 10.0 for s in seen)
    assert all(t.distributions[n].log for t in study.trials for n in PPL_DIST if n in t.distributions)
    assert knob_subsets(["a", "b"]) == ["a", "b", "a+b"]
    # One knob: no switch at all, just its log-uniform value.
    trial = study.ask()
    define_space(trial, ranges=PPL)
    assert set(trial.params) == {"lambda_ppl"}


def test_integer_knobs_stay_integers_and_reach_zero():
    ranges = {"lambda_ppl": [0.01, 10.0], "fluent_top_k": [1, 50]}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = []
    for _ in range(40):
        trial = study.ask()
        define_space(trial, ranges=ranges, integer_knobs={"fluent_top_k"})
        seen.append(knobs_from_params(trial.params, list(ranges), {"fluent_top_k"}))
        study.tell(trial, 0.0)
    assert all(type(s["fluent_top_k"]) is int and type(s["lambda_ppl"]) is float for s in seen)
    assert any(s["fluent_top_k"] == 0 for s in seen) and any(1 <= s["fluent_top_k"] <= 50 for s in seen)
    zero = knobs_from_params({}, list(ranges), {"fluent_top_k"})
    assert zero == {"lambda_ppl": 0.0, "fluent_top_k": 0} and type(zero["fluent_top_k"]) is int
    # The space-filling start draws integers too.
    start = space_filling_start(ranges, {"fluent_top_k"}, 9, seed=0)
    assert all(type(p["fluent_top_k"]) is int for p in start if "fluent_top_k" in p)

    @dataclass
    class Config:
        lambda_ppl: float = 0.0
        fluent_top_k: int = 0

    assert integer_knobs_of(Config, ["lambda_ppl", "fluent_top_k"]) == frozenset({"fluent_top_k"})


@pytest.mark.parametrize(
    ("budget", "tpe_start", "population"),
    [(0, 0, 2), (3, 3, 2), (7, 5, 2), (15, 5, 4), (31, 11, 8), (100, 34, 25)],
)
def test_samplers_are_sized_to_their_budget(budget, tpe_start, population):
    tpe = sampler_plan("tpe", budget)
    assert tpe.n_start == tpe_start and tpe.n_startup_trials == max(1, tpe_start)
    # Optuna's default start-up (10) and population (50) would leave every preset's search random: past the
    # design's 5 trials, TPE models within the budget.
    assert tpe.n_start <= budget and (budget <= 5 or tpe.n_startup_trials < budget)
    sampler = make_sampler("tpe", 0, budget)
    assert sampler._n_startup_trials == tpe.n_startup_trials
    assert sampler._constant_liar
    nsga2 = make_sampler("nsga2", 0, budget)
    assert nsga2.population_size == population == sampler_plan("nsga2", budget).population_size
    assert sampler_plan("random", budget).n_start == 0
    with pytest.raises(ValueError, match="not one of"):
        sampler_plan("cmaes", budget)


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "random"])
def test_every_sampler_builds_and_names_its_objectives(tmp_path, sampler):
    search = _searcher(tmp_path, sampler, PPL, sampler=sampler, budget=3)
    assert search.suggest("x") is not None
    assert search.study.metric_names == OBJECTIVES  # optuna-dashboard shows these, not "Objective 0/1"


def test_fixed_trials_come_first_count_in_the_budget_and_tuners_take_turns(tmp_path):
    search = MultiTunerSearch(
        {
            "pez": _searcher(tmp_path, "a", PPL, budget=sampled_budget(4, [{"steps": 5}])),
            "soft": _searcher(tmp_path, "b", PPL_DIST, budget=sampled_budget(4)),
        },
        fixed={"pez": [{"steps": 5}]},
        knobs={"pez": list(PPL), "soft": list(PPL_DIST)},
        num_samples=4,
    )
    suggestions = [search.suggest(f"t{i}") for i in range(8)]
    assert [s["tuner"] for s in suggestions] == ["pez", "soft"] * 4
    pez = [s for s in suggestions if s["tuner"] == "pez"]
    soft = [s for s in suggestions if s["tuner"] == "soft"]
    # The zero configuration first (added for every searched tuner), then the listed fixed trials, then samples.
    assert pez[0] == {"tuner": "pez", "params": {}, "fixed": {}}
    assert pez[1] == {"tuner": "pez", "params": {}, "fixed": {"steps": 5}}
    assert all(s["params"] and s["fixed"] == {} for s in pez[2:])
    assert soft[0] == {"tuner": "soft", "params": {}, "fixed": {}}
    assert knobs_from_params(soft[0]["params"], list(PPL_DIST)) == {"lambda_ppl": 0.0, "lambda_dist": 0.0}
    assert search.suggest("t8") == MultiTunerSearch.FINISHED


def test_baseline_tuners_run_exactly_their_fixed_trials(tmp_path):
    manual = [{"prompt_text": " It was"}, {"prompt_text": " My rating: the film is"}]
    search = MultiTunerSearch(
        {"pez": _searcher(tmp_path, "p", PPL, budget=sampled_budget(3))},
        fixed={"manual": manual, "no_prompt": [{}]},
        knobs={"pez": list(PPL)},
        num_samples=3,
    )
    suggestions = _drive(search, concurrent=2)
    by_tuner = {name: [s for s in suggestions if s["tuner"] == name] for name in ("pez", "manual", "no_prompt")}
    assert [s["tuner"] for s in suggestions[:3]] == ["pez", "manual", "no_prompt"]
    assert [s["fixed"] for s in by_tuner["manual"]] == manual
    assert by_tuner["no_prompt"] == [{"tuner": "no_prompt", "params": {}, "fixed": {}}]
    assert len(by_tuner["pez"]) == 3
    assert search.suggest("again") == MultiTunerSearch.FINISHED


def test_zero_configuration_is_measured_once_and_counted_once(tmp_path):
    inner = _searcher(tmp_path, "z", PPL_DIST, sampler="tpe", budget=sampled_budget(8))
    search = MultiTunerSearch({"pez": inner}, knobs={"pez": list(PPL_DIST)}, num_samples=8)
    suggestions = _drive(search, concurrent=2)
    zeros = [s for s in suggestions if not any(knobs_from_params(s["params"], list(PPL_DIST)).values())]
    assert len(suggestions) == 8 and zeros == [suggestions[0]]
    complete = _complete(inner)
    assert len(complete) == 8  # one study trial per Tune trial
    fixed = [t for t in complete if t.params == {}]
    assert len(fixed) == 1 and fixed[0].user_attrs[FIXED_ATTR] == "zero"
    assert fixed[0].values == [_result(0)["task/acc_dev"], _result(0)["interp/log_ppl"]]


def test_a_repeated_configuration_adds_no_study_trial(tmp_path, caplog):
    # An integer knob with three values: a random sampler repeats itself all the time.
    ranges = {"fluent_top_k": [1, 3]}
    inner = _searcher(tmp_path, "dup", ranges, budget=sampled_budget(4), integer_knobs={"fluent_top_k"})
    search = MultiTunerSearch({"rlprompt": inner}, knobs={"rlprompt": list(ranges)}, num_samples=4)
    suggestions = _drive(search, concurrent=2)
    configs = [knobs_from_params(s["params"], ["fluent_top_k"], {"fluent_top_k"})["fluent_top_k"] for s in suggestions]
    assert sorted(configs) == [0, 1, 2, 3]
    assert len(_complete(inner)) == len(suggestions) == 4
    assert search.redraws > 0
    duplicates = [t for t in inner.study.trials if "duplicate_of_tune_trial" in t.user_attrs]
    assert len(duplicates) == search.redraws and all(t.state == TrialState.FAIL for t in duplicates)
    assert {t.state for t in inner.study.trials} <= {TrialState.COMPLETE, TrialState.FAIL}


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_an_exhausted_space_stops_its_tuner_instead_of_looping(tmp_path, caplog, sampler):
    ranges = {"fluent_top_k": [1, 2]}
    inner = _searcher(
        tmp_path, f"ex-{sampler}", ranges, sampler=sampler, budget=sampled_budget(6), integer_knobs={"fluent_top_k"}
    )
    search = MultiTunerSearch({"rlprompt": inner}, knobs={"rlprompt": list(ranges)}, num_samples=6)
    with caplog.at_level(logging.WARNING, logger="sweep.search"):
        suggestions = _drive(search)
    assert len(suggestions) == 3  # 0, 1 and 2: all there is
    assert len(_complete(inner)) == 3
    assert "exhausted" in caplog.text
    assert search.suggest("more") == MultiTunerSearch.FINISHED


def test_in_flight_configurations_are_not_suggested_twice(tmp_path):
    ranges = {"fluent_top_k": [1, 4]}
    inner = _searcher(tmp_path, "fly", ranges, budget=sampled_budget(5), integer_knobs={"fluent_top_k"})
    search = MultiTunerSearch({"rlprompt": inner}, knobs={"rlprompt": list(ranges)}, num_samples=5)
    suggestions = [search.suggest(f"t{i}") for i in range(5)]  # all in flight at once
    values = [knobs_from_params(s["params"], ["fluent_top_k"])["fluent_top_k"] for s in suggestions]
    assert sorted(values) == [0, 1, 2, 3, 4]


def test_a_failed_trial_is_told_as_fail_and_frees_its_configuration(tmp_path):
    inner = _searcher(tmp_path, "fail", PPL, budget=sampled_budget(3))
    search = MultiTunerSearch({"pez": inner}, knobs={"pez": list(PPL)}, num_samples=3)
    search.suggest("t0")
    search.suggest("t1")
    search.on_trial_complete("t0", result={"task/acc_dev": 0.7})  # an objective missing: nothing to add
    search.on_trial_complete("t1", error=True)
    assert inner.study.trials[0].state == TrialState.FAIL
    assert not _complete(inner)
    assert len(search._measured) == 0


def test_wiring_mistakes_are_errors_that_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="sampled_budget"):
        MultiTunerSearch({"pez": _searcher(tmp_path, "w1", PPL, budget=4)}, knobs={"pez": list(PPL)}, num_samples=4)
    with pytest.raises(ValueError, match="sets knobs"):
        MultiTunerSearch(
            {"pez": _searcher(tmp_path, "w2", PPL, budget=2)},
            fixed={"pez": [{"lambda_ppl": 1.0}]},
            knobs={"pez": list(PPL)},
            num_samples=4,
        )
    with pytest.raises(ValueError, match="listed twice"):
        sampled_budget(4, [{"steps": 1}, {"steps": 1}])
    with pytest.raises(ValueError, match="nothing to search"):
        _searcher(tmp_path, "w3", {}, budget=1)


def test_nsga2_evolves_despite_the_param_less_zero_trial():
    sampler = make_sampler("nsga2", 0, 8)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.add_trial(
        optuna.trial.create_trial(values=[1.0, 1.0], params={}, distributions={}, user_attrs={FIXED_ATTR: "zero"})
    )
    for _ in range(3):
        trial = study.ask()
        define_space(trial, ranges=PPL)
        study.tell(trial, [0.5, 0.5])
    assert set(sampler.infer_relative_search_space(study, study.trials[-1])) == {"lambda_ppl"}


def test_pickles_and_resumes_from_a_checkpoint(tmp_path):
    def build():
        return MultiTunerSearch(
            {"pez": _searcher(tmp_path, "ck", PPL_DIST, sampler="tpe", budget=sampled_budget(5), storage=True)},
            fixed={"manual": [{"prompt_text": " It was"}]},
            knobs={"pez": list(PPL_DIST)},
            num_samples=5,
        )

    search = build()
    first = [search.suggest(f"t{i}") for i in range(3)]
    search.on_trial_complete("t0", result=_result(0))
    search.on_trial_complete("t1", result=_result(1))
    assert pickle.loads(pickle.dumps(search)).suggest("probe") is not None  # a copy; the original is untouched
    path = tmp_path / "searcher.pkl"
    search.save(str(path))

    fresh = build()  # as Tune does on resume: the searcher is built again, then restored
    fresh.restore(str(path))
    fresh.on_trial_complete("t2", result=_result(2))  # a trial in flight at the checkpoint finishes after it
    rest = _drive_from(fresh, start=3)
    assert first[0]["tuner"] == "pez" and first[1]["tuner"] == "manual"
    assert len([s for s in first + rest if s["tuner"] == "pez"]) == 5
    study = optuna.load_study(study_name="ck", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 5 and sum(1 for t in complete if t.params == {}) == 1
    assert study.metric_names == OBJECTIVES  # persisted for optuna-dashboard


def _drive_from(search: MultiTunerSearch, *, start: int) -> list[dict]:
    suggestions, i = [], start
    while isinstance(s := search.suggest(f"t{i}"), dict):
        suggestions.append(s)
        search.on_trial_complete(f"t{i}", result=_result(i))
        i += 1
    assert s == MultiTunerSearch.FINISHED
    return suggestions


def test_suggestions_carry_the_fields_the_trainable_reads(tmp_path):
    search = MultiTunerSearch(
        {"pez": _searcher(tmp_path, "f", PPL_DIST, budget=sampled_budget(3))},
        knobs={"pez": list(PPL_DIST)},
        num_samples=3,
    )
    for s in _drive(search):
        assert set(s) == {"tuner", "params", "fixed"}
        assert set(s["params"]) <= {KNOBS_ON, *PPL_DIST}

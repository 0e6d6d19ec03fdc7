"""A resumed sweep rebuilt from MLflow's runs and the Optuna study alone (sweep/ledger.py + MultiTunerSearch)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import optuna
from optuna.trial import TrialState

from sweep import ledger, mlflow_log
from sweep.results.columns import STOPPED_AT
from sweep.search import MultiTunerSearch, make_searcher, sampled_budget
from sweep.space import knobs_from_params, trial_key

OBJECTIVES = ["task/acc_dev", "interp/log_ppl"]
PPL_DIST = {"lambda_ppl": [0.01, 10.0], "lambda_dist": [0.1, 1.0]}
KNOBS = {"pez": tuple(PPL_DIST), "manual": ()}
FIXED = {"manual": [{"prompt_text": " It was"}, {"prompt_text": " Overall"}]}
NUM_SAMPLES = 5


def _search(tmp_path, resumed=None, seed=0) -> MultiTunerSearch:
    searcher = make_searcher(
        ranges=PPL_DIST,
        objectives=OBJECTIVES,
        sampler="tpe",
        seed=seed,
        budget=sampled_budget(NUM_SAMPLES),
        storage_path=tmp_path / "optuna.db",
        study_name="s",
    )
    return MultiTunerSearch(
        {"pez": searcher}, fixed=FIXED, knobs=KNOBS, num_samples=NUM_SAMPLES, seed=seed, resumed=resumed
    )


def _result(i: int) -> dict[str, float]:
    return {"task/acc_dev": 0.5 + 0.01 * i, "interp/log_ppl": 9.0 - 0.1 * i}


def _run(suggestion: dict, status: str, i: int) -> SimpleNamespace:
    """A stand-in for an MLflow run as the trainable leaves it (the tags the ledger reads)."""
    knobs = knobs_from_params(suggestion["params"], KNOBS[suggestion["tuner"]])
    tags = {
        "tuner": suggestion["tuner"],
        "trial_id": f"t{i}",
        mlflow_log.TRIAL_KEY: trial_key(suggestion["tuner"], suggestion["fixed"], knobs),
        mlflow_log.TRIAL_PARAMS: json.dumps(suggestion["params"]),
        mlflow_log.TRIAL_FIXED: json.dumps(suggestion["fixed"]),
    }
    return SimpleNamespace(info=SimpleNamespace(status=status, run_id=f"run{i}"), data=SimpleNamespace(tags=tags))


def keys(suggestions: list[dict]) -> list[str]:
    return [trial_key(s["tuner"], s["fixed"], knobs_from_params(s["params"], KNOBS[s["tuner"]])) for s in suggestions]


def test_a_resumed_search_continues_every_unfinished_configuration_and_repeats_none(tmp_path, monkeypatch):
    first = _search(tmp_path)
    suggestions = {f"t{i}": first.suggest(f"t{i}") for i in range(6)}
    # The driver dies with: t0..t2 finished and told, t3 finished in MLflow but never told to the search,
    # t4 interrupted mid-trial, t5 suggested (its study trial RUNNING) but never started.
    for i in range(3):
        first.on_trial_complete(f"t{i}", result=_result(i))
    runs = [_run(suggestions[f"t{i}"], "FINISHED", i) for i in range(4)] + [_run(suggestions["t4"], "KILLED", 4)]
    by_key = {r.data.tags[mlflow_log.TRIAL_KEY]: r for r in runs}
    monkeypatch.setattr(mlflow_log, "tune_result", lambda uri, run: _result(int(run.info.run_id[3:])))

    second = _search(tmp_path, seed=1)
    searchers = dict(second._searchers)
    resumed = ledger.resume(
        tracking_uri="unused",
        tuners=["pez", "manual"],
        knobs=KNOBS,
        searchers=searchers,
        objectives=OBJECTIVES,
        runs=by_key,
    )
    again = MultiTunerSearch(searchers, fixed=FIXED, knobs=KNOBS, num_samples=NUM_SAMPLES, seed=1, resumed=resumed)
    assert again.done_before == 4 and again.total_trials == NUM_SAMPLES + 2 - 4
    later = []
    while isinstance(s := again.suggest(f"r{len(later)}"), dict):
        later.append(s)
        again.on_trial_complete(f"r{len(later) - 1}", result=_result(10 + len(later)))
    started = list(suggestions.values())
    # The interrupted and the never-started configurations run again, first; no finished one does.
    assert set(keys(later[:2])) == set(keys([suggestions["t4"], suggestions["t5"]]))
    assert not set(keys(later)) & set(keys(started[:4]))
    assert len(set(keys(started[:4]) + keys(later))) == NUM_SAMPLES + 2, "every configuration exactly once"

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states, states
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == NUM_SAMPLES and sum(1 for t in complete if t.params == {}) == 1


def test_a_trial_stopped_at_a_rung_is_pruned_in_its_study_never_complete(tmp_path):
    search = _search(tmp_path)
    suggestions = [search.suggest(f"t{i}") for i in range(3)]
    sampled = [f"t{i}" for i, s in enumerate(suggestions) if s["params"]]
    search.on_trial_complete(sampled[0], result={**_result(0), STOPPED_AT: 4})
    study = search._searchers["pez"].study
    assert [t.state for t in study.trials if t.params] == [TrialState.PRUNED] + [TrialState.RUNNING] * (
        len(sampled) - 1
    )
    assert all(t.state != TrialState.COMPLETE for t in study.trials)

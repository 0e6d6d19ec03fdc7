"""What a sweep already holds, read from its durable records: MLflow's trial runs and the Optuna studies.

A resumed sweep is rebuilt from these two alone, never from Tune's experiment state: Tune writes that state
every few seconds, not atomically (a kill mid-write leaves a file no restore can read), and it may name a
checkpoint already deleted. MLflow's runs are written as each trial goes (one run per configuration, found by
its trial key, its checkpoints inside it) and an Optuna study is a database: both are whole after any kill.

For each tuner the ledger says which configurations are *done* (a final outcome: FINISHED, stopped at a rung,
or FAILED by itself; never run again, counted against the budget) and which are *unfinished* (started, then
interrupted: run again first, each from its newest checkpoint). It also brings the studies up to date with
what MLflow knows, so that no configuration is told twice and none is left RUNNING:

- a study trial still RUNNING whose run FINISHED (the driver died before Tune told the search) is told its
  values now (PRUNED if it was stopped at a rung), one whose run FAILED is told FAIL;
- a study trial still RUNNING without a finished run is handed back to the same configuration when it runs
  again (``MultiTunerSearch`` reattaches it), so the study keeps one trial per configuration;
- the unregularised (zero) trial that finished but never reached its study is added once.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from optuna.trial import TrialState

from sweep import mlflow_log
from sweep.results.columns import STOPPED_AT
from sweep.search import Resumed, TunerSearch, Unfinished
from sweep.space import FIXED_ATTR, ZERO, knobs_from_params, trial_key

logger = logging.getLogger(__name__)

FINAL = ("FINISHED", "FAILED")  # MLflow statuses of a configuration with a final outcome


def read_runs(tracking_uri: str, parent_run_id: str) -> dict[str, Any]:
    """The trial runs of a sweep by trial key (runs of sweeps recorded before trial keys are skipped)."""
    runs: dict[str, Any] = {}
    for run in mlflow_log.trial_runs(tracking_uri, parent_run_id):
        key = run.data.tags.get(mlflow_log.TRIAL_KEY)
        if key is None:
            continue
        if key in runs and runs[key].info.status in FINAL and run.info.status not in FINAL:
            continue  # keep the run with an outcome should a configuration have two
        runs[key] = run
    return runs


def resume(
    *,
    tracking_uri: str,
    tuners: Sequence[str],
    knobs: Mapping[str, Sequence[str]],
    searchers: Mapping[str, TunerSearch],
    objectives: Sequence[str],
    runs: Mapping[str, Any],
) -> dict[str, Resumed]:
    """Per tuner, what is done and what is unfinished; brings each searched tuner's study up to date first."""
    out: dict[str, Resumed] = {}
    for tuner in tuners:
        searcher = searchers.get(tuner)
        integer = searcher.integer_knobs if searcher is not None else frozenset()
        done: dict[str, int | None] = {}
        unfinished: list[Unfinished] = []
        if searcher is not None:
            done, unfinished = _reconcile(tracking_uri, tuner, knobs[tuner], integer, searcher, objectives, runs)
        queued = {trial_key(tuner, u.fixed, knobs_from_params(u.params, knobs[tuner], integer)) for u in unfinished}
        for key, run in runs.items():
            if run.data.tags.get("tuner") != tuner or key in done or key in queued:
                continue
            if run.info.status in FINAL:
                done[key] = None
            else:
                # Interrupted, and its study trial (if any) already closed: it runs again as a new study trial.
                params = json.loads(run.data.tags.get(mlflow_log.TRIAL_PARAMS, "{}"))
                fixed = json.loads(run.data.tags.get(mlflow_log.TRIAL_FIXED, "{}"))
                unfinished.append(Unfinished(params=params, fixed=fixed))
        out[tuner] = Resumed(done=done, unfinished=tuple(unfinished))
        if done or unfinished:
            logger.info("%s: %d configurations done, %d to continue", tuner, len(done), len(unfinished))
    return out


def _reconcile(
    tracking_uri: str,
    tuner: str,
    knobs: Sequence[str],
    integer: frozenset[str],
    searcher: TunerSearch,
    objectives: Sequence[str],
    runs: Mapping[str, Any],
) -> tuple[dict[str, int | None], list[Unfinished]]:
    study = searcher.study
    done: dict[str, int | None] = {}
    unfinished: list[Unfinished] = []
    for trial in study.get_trials(deepcopy=False):
        if FIXED_ATTR in trial.user_attrs or trial.state == TrialState.WAITING:
            continue  # the zero trial is handled below; a waiting one is the next suggestion
        key = trial_key(tuner, {}, knobs_from_params(trial.params, knobs, integer))
        run = runs.get(key)
        if trial.state == TrialState.RUNNING:
            if run is not None and run.info.status == "FINISHED":
                told = mlflow_log.tune_result(tracking_uri, run)
                values = _values(told, objectives)
                if told.get(STOPPED_AT) is not None:
                    study.tell(trial.number, state=TrialState.PRUNED)
                elif values is not None:
                    study.tell(trial.number, values)
                else:
                    study.tell(trial.number, state=TrialState.FAIL)
                done[key] = trial.number
            elif run is not None and run.info.status == "FAILED":
                study.tell(trial.number, state=TrialState.FAIL)
                done[key] = trial.number
            else:
                unfinished.append(Unfinished(params=dict(trial.params), fixed={}, number=trial.number))
        elif trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            done[key] = trial.number
        elif run is not None and run.info.status in FINAL:
            done[key] = trial.number  # FAIL in the study, FAILED (by itself) in MLflow
    zero = trial_key(tuner, {}, knobs_from_params({}, knobs, integer))
    run = runs.get(zero)
    if run is not None and run.info.status == "FINISHED":
        number = searcher.fixed_number(ZERO)
        if number is None:
            values = _values(mlflow_log.tune_result(tracking_uri, run), objectives)
            if values is not None:
                number = searcher.add_fixed(values, label=ZERO, tune_trial_id=run.data.tags.get("trial_id", ""))
        done[zero] = number
    return done, unfinished


def _values(told: Mapping[str, Any], objectives: Sequence[str]) -> list[float] | None:
    values = [told.get(m) for m in objectives]
    if any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
        return None
    return [float(v) for v in values]  # type: ignore[arg-type]

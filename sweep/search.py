"""The Optuna side: search spaces over interpretability weights, samplers, and the Ray Tune searcher.

Each weight ``w`` with range ``[low, high]`` is two Optuna parameters: a switch ``w_on`` and, when on, a
log-uniform ``w``. A log scale never reaches 0 by itself, and the unregularised tuner (every weight 0) must
be reachable: it anchors the accuracy end of every front. It is also the first point evaluated.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search import Searcher

from objectives.metrics import METRICS

SWITCH = "_on"


def define_space(trial: optuna.Trial, *, ranges: Mapping[str, Sequence[float]]) -> None:
    """Define-by-run space. Module-level (with ``functools.partial``) because Tune pickles the searcher."""
    for weight, (low, high) in ranges.items():
        if trial.suggest_categorical(weight + SWITCH, [False, True]):
            trial.suggest_float(weight, float(low), float(high), log=True)


def weights_from_params(params: Mapping[str, Any], weights: Sequence[str]) -> dict[str, float]:
    """The effective weight values of a sampled configuration (0.0 where the switch is off)."""
    return {w: float(params[w]) if params.get(w + SWITCH) else 0.0 for w in weights}


def directions(objectives: Sequence[str]) -> list[str]:
    """Optuna/Tune modes of the objectives, from the metric registry's ``higher_is_better``."""
    return ["max" if METRICS[name].higher_is_better else "min" for name in objectives]


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"sampler={name!r} is not one of tpe, nsga2, random")


def make_searcher(
    *,
    ranges: Mapping[str, Sequence[float]],
    objectives: Sequence[str],
    sampler: str,
    seed: int,
    storage_path: Path,
    study_name: str,
) -> Any:
    """An ``OptunaSearch`` for one tuner, its study persisted in SQLite for ``optuna-dashboard``.

    ``metric``/``mode`` lists go on the searcher, never on ``TuneConfig`` (that raises for lists).
    """
    from ray.tune.search.optuna import OptunaSearch

    storage = optuna.storages.RDBStorage(f"sqlite:///{storage_path}")
    return OptunaSearch(
        space=functools.partial(define_space, ranges={k: list(v) for k, v in ranges.items()}),
        metric=list(objectives),
        mode=directions(objectives),
        sampler=make_sampler(sampler, seed),
        storage=storage,
        study_name=study_name,
        points_to_evaluate=[{w + SWITCH: False for w in ranges}] if ranges else None,
    )


class MultiTunerSearch(Searcher):
    """One Tune run for every tuner of a sweep, each tuner keeping its own Optuna study.

    Suggestions come from the tuners' searchers in turn (those with samples left), as
    ``{"tuner": name, "params": {...}}``; results go back to the searcher that made the suggestion. One run
    instead of one per tuner keeps the cluster busy across tuners and lets Ray reuse the trial actors.

    A trial is deterministic for its configuration (tuners are seeded), so a suggestion whose effective
    weights were already measured is not run again: its study is told the known result at once and asked
    for another. Without this, a sampler that likes the unregularised end (every switch off) spends half
    a sweep re-running one configuration.
    """

    MAX_REDRAWS = 25

    def __init__(self, searchers: Mapping[str, Any], *, weights: Mapping[str, Sequence[str]], num_samples: int) -> None:
        super().__init__(metric=None, mode=None)
        self._searchers = dict(searchers)
        self._weights = {name: tuple(weights.get(name, ())) for name in self._searchers}
        self._left = {name: num_samples for name in self._searchers}
        # Tune trial id -> (tuner, effective-weights key, the id its study knows the trial by)
        self._owner: dict[str, tuple[str, tuple, str]] = {}
        self._known: dict[tuple, dict] = {}
        self._turn = 0
        self._redraws = 0

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # every inner searcher was built with its own objectives and space

    def _key(self, name: str, params: Mapping[str, Any]) -> tuple:
        return (name, tuple(sorted(weights_from_params(params, self._weights[name]).items())))

    def suggest(self, trial_id: str) -> dict | str | None:
        names = list(self._searchers)
        for offset in range(len(names)):
            name = names[(self._turn + offset) % len(names)]
            if self._left[name] <= 0:
                continue
            params, probe = self._suggest_new(name, trial_id)
            if params == self.FINISHED:
                self._left[name] = 0
                continue
            if params is None:
                continue
            self._turn = (self._turn + offset + 1) % len(names)
            self._left[name] -= 1
            self._owner[trial_id] = (name, self._key(name, params), probe)
            return {"tuner": name, "params": params}
        return self.FINISHED if all(v <= 0 for v in self._left.values()) else None

    def _suggest_new(self, name: str, trial_id: str) -> tuple[dict | str | None, str]:
        """A suggestion of tuner ``name`` not measured yet, and the id its searcher knows it by."""
        searcher = self._searchers[name]
        for attempt in range(self.MAX_REDRAWS):
            probe = trial_id if attempt == 0 else f"{trial_id}-redraw{attempt}"
            params = searcher.suggest(probe)
            if not isinstance(params, dict):
                return params, probe
            known = self._known.get(self._key(name, params))
            if known is None:
                return params, probe
            searcher.on_trial_complete(probe, result=known)
            self._redraws += 1
        return params, probe  # the sampler insists; measuring it again costs time, not correctness

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._owner:
            name, _, probe = self._owner[trial_id]
            self._searchers[name].on_trial_result(probe, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._owner:
            name, key, probe = self._owner.pop(trial_id)
            if result and not error:
                self._known[key] = dict(result)
            self._searchers[name].on_trial_complete(probe, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))

"""The Tune searcher: one Optuna study per tuner (``TunerSearch``) behind one Tune searcher (``MultiTunerSearch``)
that runs each tuner's fixed trials first, then its sampled ones; the space and samplers are in ``sweep/space.py``.

**Duplicates.** A trial's result is a function of its configuration: bitwise on the CPU (one torch version and
thread count), up to float noise on a GPU (bitwise there only with ``PROMPTSWEEP_DETERMINISTIC=1``, see
``objectives/models.py``). So a configuration already measured (or in flight) is never run again: a rerun would
only re-measure that noise. Should a sampler propose one (integer knobs make that possible), the probe is
finished as FAIL with user attrs ``duplicate_of`` (the study trial number, where known) and
``duplicate_of_tune_trial``: FAIL trials count nowhere (not in ``best_trials``, not in TPE's or NSGA-II's
models), so nothing is counted twice; the sampler is asked again, up to ``MAX_REDRAWS`` times, and then a
configuration drawn at random among those not measured is run instead, so a sampler that insists cannot
loop. When a finite (integer-only) space is exhausted, that tuner stops early with a warning.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from sweep.results.columns import STOPPED_AT
from sweep.space import (
    DESIGN_ATTR,
    FIXED_ATTR,
    ZERO,
    check_ranges,
    define_space,
    directions,
    knobs_from_params,
    make_sampler,
    random_params,
    sampler_plan,
    space_filling_start,
    trial_key,
)

logger = logging.getLogger(__name__)

# Key of an intermediate result a trial reports at a rung (its replicates' means at equal steps). A trial whose
# last result is one was stopped there: one that finishes always reports its full-budget result last.
AT_RUNG = "at_rung"


# ----- one tuner's searcher --------------------------------------------------------------------------------


class TunerSearch(OptunaSearch):
    """``OptunaSearch`` for one tuner, with what the sweep needs on top.

    It names the study's objectives (Tune's searcher creates its study in ``_setup_study``), runs the
    space-filling start before the sampler's own suggestions, takes the zero trial's result as a param-less
    COMPLETE trial (``add_fixed``), finishes a duplicate probe as FAIL (``discard``), and tells Optuna FAIL
    rather than a ``None`` objective when a result lacks one (Optuna would refuse the values and leave the
    trial RUNNING, which the constant liar then avoids forever).
    """

    def __init__(
        self,
        *,
        ranges: Mapping[str, Sequence[float]],
        integer_knobs: Collection[str],
        budget: int,
        start: Sequence[Mapping[str, Any]],
        **kwargs: Any,
    ) -> None:
        self.ranges = {k: tuple(v) for k, v in ranges.items()}
        self.integer_knobs = frozenset(integer_knobs)
        self.budget = budget
        self._start = [(i, dict(p)) for i, p in enumerate(start)]
        super().__init__(**kwargs)

    @property
    def knobs(self) -> tuple[str, ...]:
        return tuple(self.ranges)

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    def _setup_study(self, mode: str | list) -> None:
        super()._setup_study(mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._ot_study.set_metric_names(list(self._metric))
        # A resumed sweep loads its study (load_if_exists): the design points it already enqueued are not
        # enqueued again, the rest of the design still comes before the sampler's own suggestions.
        used = {t.user_attrs.get(DESIGN_ATTR) for t in self._ot_study.get_trials(deepcopy=False)}
        self._start = [(i, p) for i, p in self._start if i not in used]

    def suggest(self, trial_id: str) -> dict | None:
        if self._start:
            index, params = self._start.pop(0)
            self._ot_study.enqueue_trial(params, user_attrs={DESIGN_ATTR: index}, skip_if_exists=False)
        return super().suggest(trial_id)

    def reattach(self, trial_id: str, number: int) -> dict[str, Any]:
        """Hand the study's RUNNING trial ``number`` (one a lost driver had started) to Tune trial ``trial_id``:
        when it completes, that same study trial is told. Returns its params."""
        storage = self._ot_study._storage
        storage_id = storage.get_trial_id_from_study_id_trial_number(self._ot_study._study_id, number)
        trial = optuna.Trial(self._ot_study, storage_id)
        self._ot_trials[trial_id] = trial
        return dict(storage.get_trial(storage_id).params)

    def suggest_params(self, trial_id: str, params: Mapping[str, Any]) -> dict | None:
        """A trial with exactly ``params`` (enqueued, so the study records it as an ordinary trial)."""
        self._ot_study.enqueue_trial(dict(params), skip_if_exists=False)
        return super().suggest(trial_id)

    def number(self, trial_id: str) -> int:
        """The study's number for the trial suggested as ``trial_id``."""
        return self._ot_trials[trial_id].number

    def values(self, result: Mapping[str, Any] | None) -> list[float] | None:
        """The objectives in ``result``, or None where one is missing or not finite."""
        if not result:
            return None
        values = [result.get(m) for m in self._metric]
        if any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
            return None
        return [float(v) for v in values]

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if not error and result is not None and (result.get(STOPPED_AT) is not None or result.get(AT_RUNG)):
            # Stopped at a rung: its values are not a full-budget result. No result and no error is PRUNED.
            result = None
        elif not error and result is not None and self.values(result) is None:
            logger.warning("trial %s reported no finite %s; told to Optuna as FAIL", trial_id, self._metric)
            result, error = None, True
        super().on_trial_complete(trial_id, result=result, error=error)

    def fixed_number(self, label: str) -> int | None:
        """The study number of the fixed trial ``label``, when the study has one."""
        for trial in self._ot_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if trial.user_attrs.get(FIXED_ATTR) == label:
                return trial.number
        return None

    def add_fixed(self, values: Sequence[float], *, label: str, tune_trial_id: str) -> int:
        """Add a fixed trial's result as a COMPLETE trial with no params; returns its study number.

        Once per label: a resumed sweep that learns the same result again gets the number it already has.
        """
        known = self.fixed_number(label)
        if known is not None:
            return known
        self._ot_study.add_trial(
            optuna.trial.create_trial(
                values=list(values),
                params={},
                distributions={},
                user_attrs={FIXED_ATTR: label, "tune_trial_id": tune_trial_id},
            )
        )
        return self._ot_study.get_trials(deepcopy=False)[-1].number

    def add_fixed_failure(self, *, label: str, tune_trial_id: str) -> None:
        """Record that a fixed trial failed, as a FAIL trial with no params (counted nowhere, but in the study's
        record), once per label."""
        if any(t.user_attrs.get(FIXED_ATTR) == label for t in self._ot_study.get_trials(deepcopy=False)):
            return
        self._ot_study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.FAIL,
                params={},
                distributions={},
                user_attrs={FIXED_ATTR: label, "tune_trial_id": tune_trial_id},
            )
        )

    def discard(self, trial_id: str, *, duplicate_of: int | None, duplicate_of_tune_trial: str) -> None:
        """Finish a probe that repeats a measured configuration as FAIL, so it counts nowhere."""
        ot_trial = self._ot_trials.pop(trial_id)
        if duplicate_of is not None:
            ot_trial.set_user_attr("duplicate_of", duplicate_of)
        ot_trial.set_user_attr("duplicate_of_tune_trial", duplicate_of_tune_trial)
        self._ot_study.tell(ot_trial, state=TrialState.FAIL)


def make_searcher(
    *,
    ranges: Mapping[str, Sequence[float]],
    objectives: Sequence[str],
    sampler: str,
    seed: int,
    budget: int,
    storage_path: Path | None,
    study_name: str,
    integer_knobs: Collection[str] = frozenset(),
) -> TunerSearch:
    """The searcher of one tuner: its study persisted in SQLite for ``optuna-dashboard`` (in memory for None).

    ``budget`` is the number of trials this searcher will be asked for (``sampled_budget``); it sizes the
    sampler. ``metric``/``mode`` lists go on the searcher, never on ``TuneConfig`` (that raises for lists).
    """
    integer_knobs = frozenset(integer_knobs)
    check_ranges(ranges, integer_knobs)
    plan = sampler_plan(sampler, budget)
    ranges = {k: [float(v) for v in b] for k, b in ranges.items()}
    storage = optuna.storages.RDBStorage(f"sqlite:///{storage_path}") if storage_path is not None else None
    return TunerSearch(
        ranges=ranges,
        integer_knobs=integer_knobs,
        budget=budget,
        start=space_filling_start(ranges, integer_knobs, plan.n_start, seed),
        space=functools.partial(define_space, ranges=ranges, integer_knobs=integer_knobs),
        metric=list(objectives),
        mode=directions(objectives),
        sampler=make_sampler(sampler, seed, budget),
        storage=storage,
        study_name=study_name,
    )


# ----- every tuner of a sweep ------------------------------------------------------------------------------


def fixed_trials(fixed: Sequence[Mapping[str, Any]], *, searched: bool) -> list[dict[str, Any]]:
    """A tuner's fixed trials in the order they run: a searched tuner's zero configuration ``{}`` first."""
    trials = [dict(f) for f in fixed]
    for i, config in enumerate(trials):
        if config in trials[:i]:
            raise ValueError(f"fixed trial {config} is listed twice; each configuration is measured once")
    if searched:
        trials = [{}] + [c for c in trials if c]
    return trials


def sampled_budget(num_samples: int, fixed: Sequence[Mapping[str, Any]] = ()) -> int:
    """Trials a searched tuner's sampler draws: ``num_samples`` less its fixed trials (the zero one included)."""
    budget = num_samples - len(fixed_trials(fixed, searched=True))
    if budget < 0:
        raise ValueError(f"num_samples={num_samples} leaves no room for the {num_samples - budget} fixed trials")
    return budget


@dataclass(frozen=True)
class _Pending:
    tuner: str
    key: str
    probe: str | None  # the id the tuner's searcher knows the trial by; None for a fixed trial
    fixed: dict[str, Any]


@dataclass(frozen=True)
class Unfinished:
    """A configuration a lost driver had started and not finished: a resumed sweep runs it again first (the
    trial continues from its own checkpoint)."""

    params: dict[str, Any]  # Optuna's params; {} for a fixed trial
    fixed: dict[str, Any]
    number: int | None = None  # the study's still RUNNING trial to tell when it ends; None: a new study trial


@dataclass(frozen=True)
class Resumed:
    """What one tuner of a resumed sweep already has, read from MLflow and its study (``sweep/ledger.py``).

    ``done`` maps the trial key of every configuration with a final outcome (finished, stopped at a rung,
    failed by itself) to its study number (None for a fixed trial outside the study); each counts against the
    tuner's budget and is never run again. ``unfinished`` run before anything new is drawn.
    """

    done: dict[str, int | None] = field(default_factory=dict)
    unfinished: tuple[Unfinished, ...] = ()


class MultiTunerSearch(Searcher):
    """One Tune run for every tuner of a sweep, each searched tuner keeping its own Optuna study.

    Every suggestion is ``{"tuner": name, "params": {...}, "fixed": {...}}``: ``params`` are Optuna's params
    (``{}`` for a fixed trial), ``fixed`` the config values of a fixed trial (``{}`` for a sampled one). The
    trainable builds the tuner config as ``{**preset values, **fixed, **knobs_from_params(params, knobs)}``.

    A tuner's fixed trials (``fixed[name]``) run before its searcher is asked, in order. A searched tuner's
    first fixed trial is always the zero configuration ``{}`` (added when missing), and its budget is
    ``num_samples`` including its fixed trials; a tuner with fixed trials and no searcher (baselines that
    train nothing) has exactly its fixed list as budget. Tuners take turns (round robin over those with budget
    left), results go back to the searcher that made the suggestion, and the searcher is ``FINISHED`` when
    every budget is spent. One run instead of one per tuner keeps the cluster busy across tuners and lets Ray
    reuse the trial actors. Configurations already measured or in flight are not run again (module docstring).
    """

    MAX_REDRAWS = 8  # sampler proposals of measured configurations before a random unmeasured one is taken
    MAX_RANDOM = 200  # random draws looking for an unmeasured configuration before a space counts as exhausted

    def __init__(
        self,
        searchers: Mapping[str, TunerSearch],
        *,
        fixed: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
        knobs: Mapping[str, Sequence[str]],
        num_samples: int,
        seed: int = 0,
        resumed: Mapping[str, Resumed] | None = None,
    ) -> None:
        super().__init__(metric=None, mode=None)
        fixed = dict(fixed or {})
        resumed = dict(resumed or {})
        self._searchers = dict(searchers)
        self._tuners = list(dict.fromkeys([*self._searchers, *fixed]))
        self._knobs = {name: tuple(knobs.get(name, ())) for name in self._tuners}
        self._integer = {
            name: self._searchers[name].integer_knobs if name in self._searchers else frozenset()
            for name in self._tuners
        }
        self._fixed: dict[str, list[dict[str, Any]]] = {}
        self._left: dict[str, int] = {}
        self._unfinished: dict[str, list[Unfinished]] = {}
        # trial key -> (Tune trial id, study number or None) of every configuration measured or in flight, so
        # none runs twice
        self._measured: dict[str, tuple[str, int | None]] = {}
        self.dropped: dict[str, int] = {}  # trials of a tuner whose space ran out of unmeasured configurations
        for name in self._tuners:
            searched = name in self._searchers
            trials = fixed_trials(fixed.get(name, ()), searched=searched)
            if searched:
                searcher = self._searchers[name]
                if set(self._knobs[name]) != set(searcher.knobs):
                    raise ValueError(
                        f"knobs[{name!r}]={list(self._knobs[name])} but its searcher searches {list(searcher.knobs)}"
                    )
                for config in trials:
                    overlap = sorted(set(config) & set(self._knobs[name]))
                    if overlap:
                        raise ValueError(
                            f"fixed trial {config} of {name!r} sets knobs {overlap}: fixed trials of "
                            "a searched tuner run with every knob 0 (they would be overwritten)"
                        )
                budget = sampled_budget(num_samples, trials)
                if searcher.budget != budget:
                    raise ValueError(
                        f"the searcher of {name!r} was sized for budget={searcher.budget}, but "
                        f"num_samples={num_samples} less {len(trials)} fixed trials leaves {budget}; "
                        "build it with make_searcher(budget=sampled_budget(num_samples, fixed))"
                    )
                self._left[name] = num_samples
            else:
                if not trials:
                    raise ValueError(f"tuner {name!r} has neither a searcher nor fixed trials")
                self._left[name] = len(trials)
            before = resumed.get(name, Resumed())
            for key, number in before.done.items():
                self._measured[key] = ("", number)
            self._left[name] = max(0, self._left[name] - len(before.done))
            # Fixed trials left to run, those a lost driver had started first.
            started = [u.fixed for u in before.unfinished if not u.params]
            left = [c for c in trials if self._key(name, c, {}) not in before.done]
            self._fixed[name] = [c for c in left if c in started] + [c for c in left if c not in started]
            self._unfinished[name] = [u for u in before.unfinished if u.params]
        self.done_before = sum(len(r.done) for r in resumed.values())  # configurations a resumed sweep keeps
        self.total_trials = sum(self._left.values())  # Tune's ``num_samples`` for this run of the sweep
        self._owner: dict[str, _Pending] = {}  # Tune trial id -> what it is
        self._rng = random.Random(seed)
        self._turn = 0
        self.redraws = 0  # sampler proposals answered "already measured"

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # every inner searcher was built with its own objectives and space

    def _key(self, name: str, fixed: Mapping[str, Any], params: Mapping[str, Any]) -> str:
        return trial_key(name, fixed, knobs_from_params(params, self._knobs[name], self._integer[name]))

    def suggest(self, trial_id: str) -> dict | str | None:
        for offset in range(len(self._tuners)):
            name = self._tuners[(self._turn + offset) % len(self._tuners)]
            if self._left[name] <= 0:
                continue
            params: dict[str, Any]
            probe: str | None
            if self._unfinished[name]:
                # A configuration a lost driver had started: the same study trial where it is still RUNNING.
                unfinished = self._unfinished[name].pop(0)
                searcher = self._searchers[name]
                if unfinished.number is not None:
                    params = searcher.reattach(trial_id, unfinished.number)
                else:
                    params = searcher.suggest_params(trial_id, unfinished.params) or dict(unfinished.params)
                config, probe = {}, trial_id
            elif self._fixed[name]:
                config, params, probe = self._fixed[name].pop(0), {}, None
            else:
                drawn, probe = self._suggest_new(name, trial_id)
                if drawn == self.FINISHED:
                    self._left[name] = 0
                    continue
                if not isinstance(drawn, dict):
                    continue  # that searcher has nothing right now; the next tuner's turn
                config, params = {}, drawn
            self._turn = (self._turn + offset + 1) % len(self._tuners)
            self._left[name] -= 1
            key = self._key(name, config, params)
            number = self._searchers[name].number(probe) if probe is not None else None
            self._measured[key] = (trial_id, number)
            self._owner[trial_id] = _Pending(tuner=name, key=key, probe=probe, fixed=config)
            return {"tuner": name, "params": params, "fixed": dict(config)}
        return self.FINISHED if all(v <= 0 for v in self._left.values()) else None

    def _suggest_new(self, name: str, trial_id: str) -> tuple[dict | str | None, str]:
        """A suggestion of tuner ``name`` not measured yet, and the id its searcher knows it by."""
        searcher = self._searchers[name]
        for attempt in range(self.MAX_REDRAWS):
            probe = trial_id if attempt == 0 else f"{trial_id}-redraw{attempt}"
            params = searcher.suggest(probe)
            if not isinstance(params, dict):
                return params, probe
            known = self._measured.get(self._key(name, {}, params))
            if known is None:
                return params, probe
            searcher.discard(probe, duplicate_of=known[1], duplicate_of_tune_trial=known[0])
            self.redraws += 1
        # The sampler insists on measured configurations (a small integer space, a collapsed model): take one
        # drawn at random among those not measured, as an ordinary trial of the study.
        for _ in range(self.MAX_RANDOM):
            params = random_params(searcher.ranges, searcher.integer_knobs, self._rng)
            if self._key(name, {}, params) not in self._measured:
                probe = f"{trial_id}-random"
                return searcher.suggest_params(probe, params), probe
        logger.warning(
            "%s: every configuration drawn is measured already (the space looks exhausted); its remaining %d "
            "trials are dropped",
            name,
            self._left[name],
        )
        self.dropped[name] = self.dropped.get(name, 0) + self._left[name]
        return self.FINISHED, trial_id

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pending = self._owner.get(trial_id)
        if pending is not None and pending.probe is not None:
            self._searchers[pending.tuner].on_trial_result(pending.probe, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pending = self._owner.pop(trial_id, None)
        if pending is None:
            return
        searcher = self._searchers.get(pending.tuner)
        values = searcher.values(result) if searcher is not None and not error else None
        if values is None:
            # Not measured after all: the configuration may be drawn again.
            self._measured.pop(pending.key, None)
        if pending.probe is not None:
            assert searcher is not None
            searcher.on_trial_complete(pending.probe, result=result, error=error)
        elif searcher is not None and not pending.fixed and values is not None:
            # The zero configuration: the study learns it once, as a param-less trial (module docstring).
            number = searcher.add_fixed(values, label=ZERO, tune_trial_id=trial_id)
            self._measured[pending.key] = (trial_id, number)
        elif searcher is not None and not pending.fixed:
            searcher.add_fixed_failure(label=ZERO, tune_trial_id=trial_id)

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))

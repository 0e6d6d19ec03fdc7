"""The search space over interpretability knobs, a configuration's key, and samplers sized to their budget.

**Knobs.** A knob is a tuner config field the sweep searches: a float knob (the λ weights) is 0 or
log-uniform in ``[low, high]``; an integer knob (``fluent_top_k``, where 0 means "no restriction") is 0 or a
log-uniform integer in ``[low, high]``. A log scale never reaches 0, and 0 matters: it switches a term off.

**The space never holds the all-zero configuration.** With several knobs, the space is a categorical
``knobs_on`` over the *non-empty* subsets of knobs (``"lambda_ppl"``, ``"lambda_dist"``,
``"lambda_ppl+lambda_dist"``) and then a value for each knob that is on; with one knob it is just that knob's
value. The unregularised tuner (every knob 0) anchors the accuracy end of every front, so it is measured
exactly once per tuner, first, as a *fixed* trial outside the space (``MultiTunerSearch``); when it completes
it is added to the study as a COMPLETE trial with no params (``params={}``, user attr ``fixed="zero"``): the
dashboard and ``best_trials`` count it once, and TPE ranks the other trials against it. It gets no marker
param because a param's value must lie in its distribution, and a distribution that holds "all off" is one
the sampler can draw again.

**Sizing rule** (``sampler_plan``). ``budget`` is the number of trials the *sampler* will draw for a study
(the tuner's ``num_samples`` minus its fixed trials; the zero trial is added on top of them):

- ``tpe``: the first ``n_start = min(budget, max(5, ceil(budget / 3)))`` trials are a Latin hypercube over
  the space (subset choice and each knob's log scale), then TPE with ``n_startup_trials = n_start``. Optuna's
  default of 10 random start-up trials is more than the smoke and demo budgets (2 drawn trials per tuner),
  so TPE never modelled there; a stratified start covers the λ range evenly where a few random draws
  cluster, and counting the zero trial as one of the start-up trials lets TPE model as soon as the design
  has come back. Why at least 5, measured with ``benchmarks/search_efficiency.py``'s problem on the demo's
  space (100 seeds, hypervolume minus random's, ± s.e.): with the earlier ``max(3, ceil(budget / 5))``, TPE
  modelled from 4 trials and clustered round its first good one, *worse* than random at 5 and 7 drawn trials
  (-0.091 ± 0.043, -0.047 ± 0.040); with this rule +0.076 ± 0.041 and +0.065 ± 0.037 there, and the same as
  before from 15 drawn trials on (+0.142 ± 0.026 at 11, +0.124 ± 0.014 at 31). At 2 drawn trials (the demo)
  no rule does better than random beyond noise (+0.018 ± 0.038 over 200 seeds): two points are a design,
  not a search. ``constant_liar=True`` (Optuna 5's default, set explicitly) because Tune runs trials
  concurrently: running trials are treated as bad so concurrent suggestions spread out. ``multivariate`` is
  left off (Optuna 5's default for multi-objective studies): on this conditional space ``multivariate=True``
  models nothing jointly (the subset switch and the param-less zero trial empty the intersection space, and
  Optuna falls back to independent sampling with a warning per param), and ``group=True`` (experimental)
  measured no better on the problem of ``benchmarks/search_efficiency.py``.
- ``nsga2``: ``population_size = max(2, ceil(budget / 4))`` (Optuna's default of 50 exceeds even the paper's
  31 drawn trials, which left NSGA-II random), so a budget sees about four generations; the first generation
  is the same Latin hypercube. NSGA-II evolves the intersection of the sampled trials' params, computed here
  without the zero trial (which has none); with several knobs that intersection is the subset switch alone.
- ``random``: nothing to size; the baseline of the benchmark.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import typing
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

KNOBS_ON = "knobs_on"  # the categorical param naming the subset of knobs that is on (two knobs or more)
_JOIN = "+"
FIXED_ATTR = "fixed"  # user attr of a fixed trial added to a study; its value names the configuration
ZERO = "zero"
DESIGN_ATTR = "design"  # user attr of a space-filling start point: its index in the design


def trial_key(tuner: str, fixed: Mapping[str, Any], knobs: Mapping[str, Any]) -> str:
    """A configuration's stable name across attempts and resumed sweeps (Tune's trial ids are per run).

    Built from the tuner, a fixed trial's values and every knob's effective value (``knobs_from_params``), so
    the driver, the trainable and a resumed sweep's ledger name one configuration alike.
    """
    # Knob values as floats: an integer knob reads 10 from Optuna and may read 10.0 elsewhere.
    values = sorted((k, float(v)) for k, v in knobs.items())
    text = json.dumps([tuner, sorted(fixed.items()), values], default=str)
    return f"{tuner}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"


# ----- the space -------------------------------------------------------------------------------------------


def knob_subsets(knobs: Sequence[str]) -> list[str]:
    """The choices of ``knobs_on``: every non-empty subset of ``knobs``, smallest first, joined by ``+``."""
    return [_JOIN.join(c) for r in range(1, len(knobs) + 1) for c in itertools.combinations(knobs, r)]


def define_space(
    trial: optuna.Trial, *, ranges: Mapping[str, Sequence[float]], integer_knobs: Collection[str] = frozenset()
) -> None:
    """Define-by-run space (module-level, bound with ``functools.partial``, because Tune pickles the searcher).

    Never yields the all-zero configuration: one knob is always on (see the module docstring).
    """
    names = list(ranges)
    on = trial.suggest_categorical(KNOBS_ON, knob_subsets(names)).split(_JOIN) if len(names) > 1 else names
    for name in on:
        low, high = ranges[name]
        if name in integer_knobs:
            trial.suggest_int(name, int(low), int(high), log=True)
        else:
            trial.suggest_float(name, float(low), float(high), log=True)


def knobs_from_params(
    params: Mapping[str, Any], knobs: Iterable[str], integer_knobs: Collection[str] = frozenset()
) -> dict[str, float | int]:
    """Every knob's effective value in a suggestion's ``params``: 0 (int knobs) / 0.0 where off or absent.

    ``{}`` (a fixed trial) gives every knob 0. A knob is on where its param is present; ``knobs_on`` is
    checked too, so params of a trial that names its subset decode the same way.
    """
    on = set(str(params[KNOBS_ON]).split(_JOIN)) if KNOBS_ON in params else None
    out: dict[str, float | int] = {}
    for name in knobs:
        value = params.get(name) if on is None or name in on else None
        integer = name in integer_knobs or (isinstance(value, int) and not isinstance(value, bool))
        if value is None:
            out[name] = 0 if integer else 0.0
        else:
            out[name] = int(value) if integer else float(value)
    return out


def integer_knobs_of(config_cls: type, knobs: Iterable[str]) -> frozenset[str]:
    """The knobs whose field in ``config_cls`` (a tuner config dataclass) is typed ``int``."""
    hints = typing.get_type_hints(config_cls)
    return frozenset(k for k in knobs if hints.get(k) is int)


def directions(objectives: Sequence[str]) -> list[str]:
    """Optuna/Tune modes of the objectives, from the metric registry's ``higher_is_better``."""
    from objectives.metrics import METRICS  # its tensor functions load torch, which a trial's worker may not need

    return ["max" if METRICS[name].higher_is_better else "min" for name in objectives]


def check_ranges(ranges: Mapping[str, Sequence[float]], integer_knobs: Collection[str]) -> None:
    if not ranges:
        raise ValueError("ranges is empty: a tuner with nothing to search has no searcher (give it fixed trials)")
    for name, bounds in ranges.items():
        if _JOIN in name or "/" in name:
            raise ValueError(f"knob {name!r}: names may not contain {_JOIN!r} or '/'")
        if len(bounds) != 2 or not 0 < bounds[0] < bounds[1]:
            raise ValueError(f"{name}={list(bounds)} must be [low, high] with 0 < low < high (log scale)")
        if name in integer_knobs and (int(bounds[0]) != bounds[0] or int(bounds[1]) != bounds[1]):
            raise ValueError(f"{name}={list(bounds)} is an integer knob: its bounds must be whole numbers")
    unknown = set(integer_knobs) - set(ranges)
    if unknown:
        raise ValueError(f"integer_knobs {sorted(unknown)} are not among the searched knobs {sorted(ranges)}")


def _log_scale(u: float, low: float, high: float, integer: bool) -> float | int:
    """The point at fraction ``u`` in [0, 1) of ``[low, high]`` on a log scale (rounded for integer knobs)."""
    if integer:
        # Widen by half a step each side so the end values get their share, as Optuna's log int does.
        lo, hi = math.log(low - 0.5 if low > 0.5 else low), math.log(high + 0.5)
        return int(min(high, max(low, round(math.exp(lo + u * (hi - lo))))))
    return float(math.exp(math.log(low) + u * (math.log(high) - math.log(low))))


def _params_at(
    u: Sequence[float], ranges: Mapping[str, Sequence[float]], integer_knobs: Collection[str]
) -> dict[str, Any]:
    """The params at a point ``u`` of the unit cube: coordinate 0 picks the subset (two knobs or more), the
    next ones the knobs' values in ``ranges`` order (coordinates of knobs left off are unused)."""
    names = list(ranges)
    params: dict[str, Any] = {}
    offset = 0
    on = names
    if len(names) > 1:
        subsets = knob_subsets(names)
        params[KNOBS_ON] = subsets[min(int(u[0] * len(subsets)), len(subsets) - 1)]
        on = params[KNOBS_ON].split(_JOIN)
        offset = 1
    for i, name in enumerate(names):
        if name in on:
            params[name] = _log_scale(u[offset + i], *ranges[name], integer=name in integer_knobs)
    return params


def space_filling_start(
    ranges: Mapping[str, Sequence[float]], integer_knobs: Collection[str], n: int, seed: int
) -> list[dict[str, Any]]:
    """``n`` params on a Latin hypercube of the space: each coordinate's ``n`` strata hold one point each."""
    if n <= 0:
        return []
    rng = np.random.default_rng(seed)
    dims = len(ranges) + (1 if len(ranges) > 1 else 0)
    cube = np.stack([(rng.permutation(n) + rng.random(n)) / n for _ in range(dims)], axis=1)  # (n, dims)
    return [_params_at(row, ranges, integer_knobs) for row in cube]


def random_params(
    ranges: Mapping[str, Sequence[float]], integer_knobs: Collection[str], rng: random.Random
) -> dict[str, Any]:
    """One configuration drawn uniformly over the space's encoding (subset, then log-uniform values)."""
    return _params_at([rng.random() for _ in range(len(ranges) + 1)], ranges, integer_knobs)


# ----- samplers --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplerPlan:
    """How a sampler is sized for ``budget`` drawn trials (the rule is in the module docstring)."""

    name: str
    budget: int
    n_start: int  # trials from the space-filling design, drawn before the sampler's own
    n_startup_trials: int | None = None  # TPE: complete trials (the zero trial included) before it models
    population_size: int | None = None  # NSGA-II


def sampler_plan(name: str, budget: int) -> SamplerPlan:
    if budget < 0:
        raise ValueError(f"budget={budget} must be >= 0")
    if name == "tpe":
        n_start = min(budget, max(5, math.ceil(budget / 3)))
        return SamplerPlan(name, budget, n_start=n_start, n_startup_trials=max(1, n_start))
    if name == "nsga2":
        population = max(2, math.ceil(budget / 4))
        return SamplerPlan(name, budget, n_start=min(budget, population), population_size=population)
    if name == "random":
        return SamplerPlan(name, budget, n_start=0)
    raise ValueError(f"sampler={name!r} is not one of tpe, nsga2, random")


class _SampledNSGAIISampler(optuna.samplers.NSGAIISampler):
    """NSGA-II whose search space is the intersection over the trials it could have drawn.

    Optuna intersects the params of every complete trial; the zero trial has none, so that intersection is
    empty and NSGA-II would sample everything at random. Fixed trials (user attr ``fixed``) are left out.
    """

    def infer_relative_search_space(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial
    ) -> dict[str, optuna.distributions.BaseDistribution]:
        space: dict[str, optuna.distributions.BaseDistribution] | None = None
        for done in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if FIXED_ATTR in done.user_attrs:
                continue
            if space is None:
                space = dict(done.distributions)
            else:
                space = {k: d for k, d in space.items() if done.distributions.get(k) == d}
        return {k: d for k, d in (space or {}).items() if not d.single()}


def make_sampler(name: str, seed: int, budget: int) -> optuna.samplers.BaseSampler:
    plan = sampler_plan(name, budget)
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=plan.n_startup_trials or 1, multivariate=False, constant_liar=True
        )
    if name == "nsga2":
        return _SampledNSGAIISampler(seed=seed, population_size=plan.population_size or 2)
    return optuna.samplers.RandomSampler(seed=seed)

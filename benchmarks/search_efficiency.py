"""Search efficiency: the configured sampler against random sampling at each preset's budget (single
fidelity), and early stopping (MO-ASHA) against running every trial in full at equal compute (multi-fidelity).

    python benchmarks/search_efficiency.py [--seeds 50] [--presets smoke,demo,paper] [--samplers tpe,nsga2]
                                           [--fluent-top-k 1,50]
    python benchmarks/search_efficiency.py --section multi [--seeds 50] [--levels demo,demo:9,paper]
                                           [--eta 3] [--rungs 2] [--asha-spend 1.0]

**Single fidelity** (``--section single``, the default). The real search path (``make_searcher`` +
``MultiTunerSearch``, Optuna studies in memory) is driven the way Tune drives it, without a Ray cluster or an
LM: up to ``max_concurrent`` trials are in flight (all tuners together, the preset's value) and a random one of
them finishes next. A trial is a cheap synthetic problem with the real one's shape: ``task/acc_dev`` (max) and
``interp/scrutability`` (max, ``-log_ppl``) as functions of the knobs, with a real trade-off and noise (sd 0.03
and 0.2). λ_ppl raises scrutability from about 40 % of its log range on, and accuracy collapses to chance past
about 62 %: the good trade-offs lie in a band the search has to find. λ_dist costs a little accuracy for a
little scrutability; ``fluent_top_k`` (``--fluent-top-k``, searched for rlprompt) buys scrutability with
accuracy at small k.

Both arms run the same tuners, budgets, fixed zero trial and concurrency; only ``sampler`` differs. The
hypervolume of each tuner's observed trials (its zero trial included) is taken against one fixed reference,
(0.45, -10.0): below chance accuracy and below the unregularised tuner's scrutability. ``noise-free diff``
is the same comparison on the configurations' noise-free values (what the search found, without measurement
luck). Presets, budgets and concurrency are read from ``sweep/presets.py`` and the configured sampler from the
preset (else the ``SweepConfig`` default), so this stays in sync with what the sweep runs. ``paired diff`` is
the mean over seeds of (sampler - random), each seed's two arms sharing a noise stream, with its standard
error; ``wins`` counts the seeds where the sampler is ahead. It also checks that every Tune trial is exactly
one COMPLETE study trial (the zero trial included).

**Multi fidelity** (``--section multi``). The same final objectives, reached along learning curves: after a
fraction ``t`` of its steps a configuration measures ``start + (final - start) * (1 - e^(-r t)) / (1 - e^(-r))``
per objective (start: chance accuracy 0.5 and scrutability -9.5), with its own rate ``r`` per objective,
log-uniform in ``ACC_RATES`` / ``SCRUT_RATES`` and independent of where it ends, plus the same noise at every
report. A slow configuration looks worse early than it ends, so the early ranking only partly predicts the final
one. How the correlation was chosen: the project's own runs say accuracy is the slow objective (PEZ on SST-2
needs about 200 of its steps to leave chance, README's SST-2 check) while the fluency term moves log-perplexity
from the first steps, and learning-curve benchmarks put the rank correlation of a 1/27-to-1/9 budget with the
final one between about 0.3 and 0.8; the rates give Spearman about 0.45 (accuracy) and 0.75 (scrutability) at 4 %
of the budget, 0.6 / 0.9 at 11 %, 0.7 / 0.95 at 33 % (printed for each preset, over 2,000 random configurations:
a rung's noisy values against the final noisy values).

Four arms per compute level: ``fifo`` or ``mo_asha`` (the real ``sweep.scheduler.MOASHA``) with ``random`` or
the real TPE searcher. A compute level is a preset: its tuners, search spaces, step budgets
(``tuners/presets.py``), ``max_concurrent`` workers, and compute = what ``fifo`` spends with the preset's
``num_samples`` full-length trials per tuner (``demo:9`` for 9). ``mo_asha`` arms draw more configurations
for the same steps (``asha_num_samples``: the synchronous successive-halving cost per configuration, the
anchor in full). The simulation is event by event: each worker runs one trial a step at a time (a step of a
tuner takes its full budget's share of one time unit, ±25 % per trial), a trial reports at every rung and at
its full budget, the scheduler answers each report, and a stopped trial is told to its study as PRUNED. Steps
spent count every trial's steps, stopped and unfinished ones included; the hypervolume at a point is that of
the full-budget trials finished by then (as the sweep's fronts are). Printed per tuner: configurations
started, full-budget trials, steps spent by the end (% of compute), hypervolume at the compute ± s.e., the
paired difference to ``fifo+random``, the median steps (% of compute) at which an arm first reaches
``fifo+random``'s final hypervolume of the same seed (with how many seeds did so within 50 %), and the paired
difference between the arm's hypervolume at 50 % of the compute and ``fifo+random``'s at 100 %: the target's
target is that difference above 0 by more than 2 standard errors. It checks that every stopped trial is PRUNED
and every full-budget one COMPLETE in its study.

Measured (50 seeds, η = 3, 3 rungs, grace ``ceil(steps / 27)``; ``--levels demo,demo:9,paper``, 13 minutes on
one core): the target is missed at every level. At the paper's compute (32 full trials per tuner, 16 workers,
275 configurations for MO-ASHA) ``mo_asha+tpe`` ends +0.12 to +0.17 above ``fifo+random`` (beyond 2 s.e.) and
reaches its final hypervolume at a median 67-71 % of the steps (11-14 seeds of 50 within 50 %), but at 50 % it is
0.13-0.19 below it; ``fifo+tpe`` ends as high (+0.13 to +0.15) and gets there later (79-85 %). At the demo's
compute (3 full trials per tuner, 2 workers) MO-ASHA loses 0.18-0.27: 2 drawn trials' worth of steps buys about
3 rung-0 screenings and the anchor takes a third of it; at 9 trials per tuner it is level with FIFO within
noise. Why not 50 %: a front's hypervolume grows slowly with configurations (PEZ's paper space, noise-free: 16
random full trials give 1.67 of a 2.30 maximum, 32 give 1.89, 128 give 2.10), so halving the steps has to be
bought with much better configurations, and successive halving finishes its best trials last: with perfectly
predictive rungs (one rate for every configuration) PEZ alone on 16 workers reached ``fifo+random``'s final
hypervolume by 75 % of the steps and was far below it at 50 % (-0.6, 10 seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OBJECTIVES = ("task/acc_dev", "interp/scrutability")
REFERENCE = (0.45, -10.0)  # below chance accuracy (0.5) and the unregularised scrutability (-9)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, x))))


def _frac(value: float, bounds: Sequence[float]) -> float:
    """Where ``value`` lies in ``bounds`` on a log scale, 0 at the low end and 1 at the high end."""
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    return (math.log(value) - lo) / (hi - lo)


def true_objectives(knobs: Mapping[str, float], ranges: Mapping[str, Sequence[float]]) -> tuple[float, float]:
    """Noise-free (acc_dev, scrutability) of a configuration; every knob 0 is the unregularised tuner."""
    acc, scrut = 0.85, -9.0
    for name, value in knobs.items():
        if not value:
            continue
        f = _frac(value, ranges[name])
        if name == "lambda_ppl":
            scrut += 4.0 * _sigmoid((f - 0.40) / 0.08)
            acc -= 0.35 * _sigmoid((f - 0.62) / 0.04)
        elif name == "lambda_dist":
            scrut += 0.4 * _sigmoid((f - 0.5) / 0.1)
            acc -= 0.10 * _sigmoid((f - 0.5) / 0.1)
        elif name == "fluent_top_k":  # small k (f near 0) restricts most
            scrut += 1.5 * (1.0 - f)
            acc -= 0.15 * (1.0 - f) ** 2
        else:
            raise ValueError(f"no synthetic effect is defined for knob {name!r}")
    return acc, scrut


@dataclasses.dataclass
class Arm:
    hv: dict[str, float]  # tuner -> observed hypervolume
    hv_true: dict[str, float]  # tuner -> hypervolume of the same configurations without noise
    study_complete: dict[str, int]
    tune_trials: dict[str, int]


def run_arm(preset: Mapping[str, Any], sampler: str, seed: int) -> Arm:
    """One sweep of ``preset`` with ``sampler``, driven as Tune would, on the synthetic problem."""
    import optuna

    from sweep.results.pareto import hypervolume_2d
    from sweep.search import MultiTunerSearch, make_searcher, sampled_budget
    from sweep.space import integer_knobs_of, knobs_from_params
    from tuners import get_tuner

    tuners = list(preset["tuners"])
    search = {t: dict(preset["search"][t]) for t in tuners}
    num_samples = int(preset["num_samples"])
    searchers = {
        t: make_searcher(
            ranges=search[t],
            objectives=OBJECTIVES,
            sampler=sampler,
            seed=seed,
            budget=sampled_budget(num_samples),
            storage_path=None,
            study_name=f"{t}-{sampler}-{seed}",
            integer_knobs=integer_knobs_of(get_tuner(t).config_cls, search[t]),
        )
        for t in tuners
    }
    multi = MultiTunerSearch(searchers, knobs={t: list(search[t]) for t in tuners}, num_samples=num_samples, seed=seed)
    # One noise stream per seed shared by both arms; which trial finishes next is drawn from its own stream.
    noise = np.random.default_rng([seed, 1])
    order = np.random.default_rng([seed, 2])
    in_flight: list[tuple[str, dict[str, Any]]] = []
    observed: dict[str, list[tuple[float, float]]] = {t: [] for t in tuners}
    clean: dict[str, list[tuple[float, float]]] = {t: [] for t in tuners}
    counter = 0
    finished = False
    while True:
        while not finished and len(in_flight) < int(preset["max_concurrent"]):
            suggestion = multi.suggest(f"t{counter}")
            if suggestion == MultiTunerSearch.FINISHED:
                finished = True
                break
            if suggestion is None:
                break
            in_flight.append((f"t{counter}", suggestion))
            counter += 1
        if not in_flight:
            break
        trial_id, suggestion = in_flight.pop(int(order.integers(len(in_flight))))
        tuner = suggestion["tuner"]
        knobs = knobs_from_params(suggestion["params"], search[tuner], searchers[tuner].integer_knobs)
        acc, scrut = true_objectives(knobs, search[tuner])
        values = (acc + noise.normal(0.0, 0.03), scrut + noise.normal(0.0, 0.2))
        observed[tuner].append(values)
        clean[tuner].append((acc, scrut))
        multi.on_trial_complete(trial_id, result=dict(zip(OBJECTIVES, values, strict=True)))
    complete = {
        t: sum(1 for tr in s.study.trials if tr.state == optuna.trial.TrialState.COMPLETE) for t, s in searchers.items()
    }
    return Arm(
        hv={t: hypervolume_2d(np.array(v), REFERENCE) for t, v in observed.items()},
        hv_true={t: hypervolume_2d(np.array(v), REFERENCE) for t, v in clean.items()},
        study_complete=complete,
        tune_trials={t: len(v) for t, v in observed.items()},
    )


# ----- multi-fidelity: early stopping (MO-ASHA) against FIFO at equal compute ---------------------------------

START = (0.5, -9.5)  # what every trial starts from: chance accuracy, the initial prompt's scrutability
# Learning-curve rates, log-uniform per configuration and independent of where it ends (module docstring).
ACC_RATES = (0.3, 30.0)
SCRUT_RATES = (3.0, 60.0)
NOISE = (0.03, 0.2)  # sd of a replicate mean on dev, at every report, as the single-fidelity problem
ARMS = (("fifo", "random"), ("fifo", "tpe"), ("mo_asha", "random"), ("mo_asha", "tpe"))


def progress(t: float, rate: float) -> float:
    """Fraction of its final gain a curve of ``rate`` has at fraction ``t`` of the budget: 0 at 0, 1 at 1."""
    return (1.0 - math.exp(-rate * t)) / (1.0 - math.exp(-rate))


def curve_rates(seed: int, tuner: str, knobs: Mapping[str, float]) -> tuple[float, float]:
    """(accuracy, scrutability) rates of a configuration: fixed per (seed, tuner, configuration), so every arm
    of a seed that measures the same configuration (the unregularised anchor) sees the same curve."""
    import hashlib
    import json

    text = json.dumps([tuner, sorted((k, float(v)) for k, v in knobs.items())])
    rng = np.random.default_rng([seed, 3, int(hashlib.sha1(text.encode()).hexdigest()[:12], 16)])
    return tuple(float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) for lo, hi in (ACC_RATES, SCRUT_RATES))


def curve_objectives(
    knobs: Mapping[str, float], ranges: Mapping[str, Sequence[float]], rates: Sequence[float], t: float
) -> tuple[float, float]:
    """Noise-free (acc_dev, scrutability) after fraction ``t`` of the budget: from ``START`` to
    :func:`true_objectives` along each objective's curve."""
    final = true_objectives(knobs, ranges)
    acc, scrut = (s + (f - s) * progress(t, r) for s, f, r in zip(START, final, rates, strict=True))
    return acc, scrut


def tuner_steps(preset: Mapping[str, Any], tuner: str) -> int:
    """A tuner's full step budget in ``preset`` (its ``tuner_config`` override, else the tuner preset's)."""
    from tuners.presets import preset_values

    override = preset.get("tuner_config", {}).get(tuner, {})
    return int(override.get("steps", preset_values(str(preset["preset"]), tuner)["steps"]))


def asha_grace(steps: int, eta: float, rungs: int) -> int:
    """The grace that puts ``rungs`` rungs below ``steps``: ``ceil(steps / eta**rungs)``. Rounded up, since
    rounding down can leave a useless extra rung just below the budget (1000 / 27 -> 37: a rung at 999)."""
    return max(1, math.ceil(steps / eta**rungs - 1e-9))


def asha_num_samples(
    fifo_trials: int, steps: Mapping[str, int], grace: Mapping[str, int], eta: float, spend: float = 1.0
) -> int:
    """Configurations per tuner an MO-ASHA sweep can afford with the compute of ``fifo_trials`` full runs.

    The anchor runs in full; every other configuration costs what synchronous successive halving expects,
    ``r_0 + sum_k eta^-k (r_k - r_{k-1}) + eta^-K (steps - r_{K-1})``, as a share of its tuner's budget. A
    sweep has one ``num_samples`` for all its tuners, so the dearest tuner's share sizes it (rounded rungs make
    the shares differ: the demo's 12 RLPrompt steps have rungs at 1, 3, 9). ``spend`` scales the result.
    """
    from sweep.scheduler import rung_steps

    share = 0.0
    for tuner, budget in steps.items():
        edges = [0, *rung_steps(grace[tuner], eta, budget), budget]
        cost = sum((edges[k + 1] - edges[k]) * eta ** (-k) for k in range(len(edges) - 1))
        share = max(share, cost / budget)
    return 1 + max(1, round(spend * (fifo_trials - 1) / share))


@dataclasses.dataclass
class MFArm:
    """One multi-fidelity sweep: per tuner, the hypervolume of its full-budget trials after each one finished,
    against the steps that tuner had spent by then (stopped and unfinished trials' steps included)."""

    curve: dict[str, list[tuple[float, float]]]
    spent: dict[str, float]  # steps each tuner spent in all
    configs: dict[str, int]  # configurations started
    full: dict[str, int]  # configurations that reached the full budget
    study: dict[str, tuple[int, int]]  # (COMPLETE, PRUNED) trials in each study
    stopped: dict[str, int]  # Tune trials the scheduler stopped

    def hv_at(self, tuner: str, steps: float) -> float:
        """Hypervolume once ``steps`` were spent: of the trials finished by then."""
        hv = 0.0
        for spent, value in self.curve[tuner]:
            if spent > steps * (1 + 1e-9):
                break
            hv = value
        return hv

    def reach(self, tuner: str, target: float) -> float:
        """Steps spent when the hypervolume first reached ``target`` (inf if it never did)."""
        return next((spent for spent, value in self.curve[tuner] if value >= target - 1e-12), math.inf)


@dataclasses.dataclass
class _Run:
    trial_id: str
    config: dict[str, Any]
    tuner: str
    knobs: dict[str, float]
    start: float  # simulated time it started
    per_step: float  # simulated time one step takes
    reports: list[int]  # steps still to report at: the rungs (mo_asha), then the full budget

    @property
    def next_time(self) -> float:
        return self.start + self.reports[0] * self.per_step

    def steps_by(self, now: float) -> float:
        return min((now - self.start) / self.per_step, self.reports[-1])


def run_mf_arm(
    preset: Mapping[str, Any],
    scheduler: str,
    sampler: str,
    seed: int,
    *,
    num_samples: int,
    steps: Mapping[str, int],
    grace: Mapping[str, int],
    eta: float,
) -> MFArm:
    """One sweep on the multi-fidelity problem, driven as Tune drives it: the preset's ``max_concurrent``
    workers, each trial a step at a time (a trial's step time is the tuner's full budget's share of one time
    unit, jittered ±25 %, so tuners interleave and trials finish out of order), reporting at every rung of
    the real :class:`~sweep.scheduler.MOASHA` (``mo_asha``) and at its full budget; the real searchers."""
    import optuna

    from sweep.results.pareto import hypervolume_2d
    from sweep.scheduler import MOASHA
    from sweep.search import MultiTunerSearch, make_searcher, sampled_budget
    from sweep.space import integer_knobs_of, knobs_from_params
    from tuners import get_tuner

    tuners = list(preset["tuners"])
    search = {t: dict(preset["search"][t]) for t in tuners}
    searchers = {
        t: make_searcher(
            ranges=search[t],
            objectives=OBJECTIVES,
            sampler=sampler,
            seed=seed,
            budget=sampled_budget(num_samples),
            storage_path=None,
            study_name=f"{t}-{scheduler}-{sampler}-{seed}",
            integer_knobs=integer_knobs_of(get_tuner(t).config_cls, search[t]),
        )
        for t in tuners
    }
    multi = MultiTunerSearch(searchers, knobs={t: list(search[t]) for t in tuners}, num_samples=num_samples, seed=seed)
    asha = (
        MOASHA(objectives=OBJECTIVES, modes=("max", "max"), max_steps=steps, grace_steps=grace, reduction_factor=eta)
        if scheduler == "mo_asha"
        else None
    )
    noise = np.random.default_rng([seed, 1])
    jitter = np.random.default_rng([seed, 2])
    running: list[_Run] = []
    done = {t: 0.0 for t in tuners}
    full: dict[str, list[tuple[float, float]]] = {t: [] for t in tuners}
    arm = MFArm(
        curve={t: [] for t in tuners},
        spent=done,
        configs=dict.fromkeys(tuners, 0),
        full=dict.fromkeys(tuners, 0),
        study={},
        stopped=dict.fromkeys(tuners, 0),
    )
    now, counter, finished = 0.0, 0, False
    while True:
        while not finished and len(running) < int(preset["max_concurrent"]):
            suggestion = multi.suggest(f"t{counter}")
            if suggestion == MultiTunerSearch.FINISHED:
                finished = True
                break
            if suggestion is None:
                break
            tuner = suggestion["tuner"]
            knobs = knobs_from_params(suggestion["params"], search[tuner], searchers[tuner].integer_knobs)
            reports = [*(asha.rungs(tuner) if asha is not None else []), steps[tuner]]
            per_step = float(np.exp(jitter.uniform(math.log(0.75), math.log(1.25)))) / steps[tuner]
            running.append(_Run(f"t{counter}", suggestion, tuner, knobs, now, per_step, reports))
            arm.configs[tuner] += 1
            counter += 1
        if not running:
            break
        run = min(running, key=lambda r: r.next_time)
        now = run.next_time
        step = run.reports.pop(0)
        rates = curve_rates(seed, run.tuner, run.knobs)
        clean = curve_objectives(run.knobs, search[run.tuner], rates, step / steps[run.tuner])
        values = tuple(v + noise.normal(0.0, sd) for v, sd in zip(clean, NOISE, strict=True))
        result = {"steps": step, "trial_key": run.trial_id, **dict(zip(OBJECTIVES, values, strict=True))}
        decision = asha.on_trial_result(None, run, result) if asha is not None else "CONTINUE"
        at_full = step >= steps[run.tuner]
        if not at_full and decision != "STOP":
            continue
        running.remove(run)
        done[run.tuner] += step
        if asha is not None:
            asha.on_trial_complete(None, run, result)
        if at_full:
            multi.on_trial_complete(run.trial_id, result=result)
            full[run.tuner].append(values)
            arm.full[run.tuner] += 1
            spent = done[run.tuner] + sum(r.steps_by(now) for r in running if r.tuner == run.tuner)
            arm.curve[run.tuner].append((spent, hypervolume_2d(np.array(full[run.tuner]), REFERENCE)))
        else:
            arm.stopped[run.tuner] += 1
            _tell_stopped(multi, run.trial_id, result)
    for t, searcher in searchers.items():
        states = [tr.state for tr in searcher.study.trials]
        arm.study[t] = (states.count(optuna.trial.TrialState.COMPLETE), states.count(optuna.trial.TrialState.PRUNED))
    return arm


def _tell_stopped(multi: Any, trial_id: str, result: dict[str, Any]) -> None:
    """Tell the searcher a trial was stopped at a rung: PRUNED in its study, never COMPLETE."""
    from sweep.results.columns import STOPPED_AT

    multi.on_trial_complete(trial_id, result={**result, STOPPED_AT: result["steps"]})


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def rank_correlations(
    preset: Mapping[str, Any], tuner: str, fractions: Sequence[float], seed: int = 0, n: int = 2000
) -> list[tuple[float, float]]:
    """Spearman correlation, per objective, between what a rung at each of ``fractions`` of the budget observes
    (noisy) and the final observed values, over ``n`` configurations drawn at random from the tuner's space."""
    import random

    from sweep.space import integer_knobs_of, knobs_from_params, random_params
    from tuners import get_tuner

    ranges = dict(preset["search"][tuner])
    integer = integer_knobs_of(get_tuner(tuner).config_cls, ranges)
    draw = random.Random(seed)
    noise = np.random.default_rng([seed, 4])
    configs = [knobs_from_params(random_params(ranges, integer, draw), ranges, integer) for _ in range(n)]
    rates = [curve_rates(seed, tuner, k) for k in configs]

    def observe(t: float) -> np.ndarray:
        clean = np.array([curve_objectives(k, ranges, r, t) for k, r in zip(configs, rates, strict=True)])
        return clean + noise.normal(0.0, NOISE, size=clean.shape)

    final = observe(1.0)
    out = []
    for t in fractions:
        early = observe(t)
        out.append((_spearman(early[:, 0], final[:, 0]), _spearman(early[:, 1], final[:, 1])))
    return out


def multi_fidelity(args: argparse.Namespace) -> None:
    """The multi-fidelity section: every arm of ``ARMS`` at each compute level, paired by seed."""
    from sweep.presets import SWEEP_PRESETS
    from sweep.scheduler import rung_steps

    eta, n_rungs = float(args.eta), int(args.rungs)
    print(
        f"\nmulti-fidelity: hypervolume of full-budget trials against steps spent, {args.seeds} seeds, reference "
        f"{REFERENCE}; MO-ASHA eta={eta:g}, {n_rungs} rungs (grace = ceil(steps / eta^{n_rungs})); noise sd {NOISE}"
    )
    print(f"learning-curve rates log-uniform: accuracy {ACC_RATES}, scrutability {SCRUT_RATES}, from {START}")
    verdicts = []
    for level in args.levels.split(","):
        name, _, trials = level.partition(":")
        preset = SWEEP_PRESETS[name]
        tuners = list(preset["tuners"])
        fifo_trials = int(trials or preset["num_samples"])
        steps = {t: tuner_steps(preset, t) for t in tuners}
        grace = {t: asha_grace(steps[t], eta, n_rungs) for t in tuners}
        asha_trials = asha_num_samples(fifo_trials, steps, grace, eta, args.asha_spend)
        print(
            f"\n== {level}: compute = {fifo_trials} full-length trials per tuner (fifo); mo_asha draws {asha_trials} "
            f"configurations; {preset['max_concurrent']} workers"
        )
        for t in tuners:
            rungs = rung_steps(grace[t], eta, steps[t])
            corr = rank_correlations(preset, t, [r / steps[t] for r in rungs])
            cells = ", ".join(
                f"{r} ({r / steps[t]:.0%}): acc {a:+.2f} scrut {b:+.2f}" for r, (a, b) in zip(rungs, corr, strict=True)
            )
            print(f"  {t}: {steps[t]} steps, rungs {rungs}; Spearman rung vs final, random configs: {cells}")
        started = time.perf_counter()
        runs: dict[tuple[str, str], list[MFArm]] = {}
        for scheduler, sampler in ARMS:
            n = fifo_trials if scheduler == "fifo" else asha_trials
            runs[scheduler, sampler] = [
                run_mf_arm(preset, scheduler, sampler, seed, num_samples=n, steps=steps, grace=grace, eta=eta)
                for seed in range(args.seeds)
            ]
            for arm in runs[scheduler, sampler]:
                for t in tuners:
                    # A stopped trial is PRUNED in its study, never COMPLETE; the anchor is one COMPLETE trial too.
                    assert arm.study[t] == (arm.full[t], arm.stopped[t]), (t, arm.study[t], arm.full[t], arm.stopped[t])
        header = (
            f"  {'tuner':9s} {'arm':16s} {'configs':>7s} {'full':>5s} {'spent':>6s} {'HV at compute':>15s} "
            f"{'vs fifo+random':>16s} {'reach fifo+rnd HV':>18s} {'HV@50% - fifo+rnd HV@100%':>27s}  verdict"
        )
        print(header)
        print("  " + "-" * (len(header) - 2))
        for t in tuners:
            compute = fifo_trials * steps[t]
            base = runs["fifo", "random"]
            target = np.array([r.hv_at(t, compute) for r in base])
            for scheduler, sampler in ARMS:
                arms = runs[scheduler, sampler]
                hv = np.array([r.hv_at(t, compute) for r in arms])
                diff = hv - target
                reach = np.array([r.reach(t, target[i]) / compute for i, r in enumerate(arms)])
                half = np.array([r.hv_at(t, 0.5 * compute) for r in arms]) - target
                se_d, se_h = _se(diff), _se(half)
                verdict = (
                    "reaches it at <= 50 % (> 2 se)"
                    if half.mean() > 2 * se_h
                    else ("at <= 50 %, within 2 se" if half.mean() >= 0 else "misses 50 %")
                )
                if (scheduler, sampler) != ("fifo", "random"):
                    verdicts.append(f"{level}/{t}/{scheduler}+{sampler}: {verdict}")
                print(
                    f"  {t:9s} {scheduler + '+' + sampler:16s} {np.mean([r.configs[t] for r in arms]):7.1f} "
                    f"{np.mean([r.full[t] for r in arms]):5.1f} {np.mean([r.spent[t] for r in arms]) / compute:6.0%} "
                    f"{hv.mean():7.3f} ± {_se(hv):5.3f} {diff.mean():+7.3f} ± {se_d:5.3f} "
                    f"{np.median(reach):7.0%} med {int((reach <= 0.5).sum()):3d}/{len(reach):<3d} "
                    f"{half.mean():+10.3f} ± {se_h:5.3f}se  {verdict}"
                )
        print(f"  ({time.perf_counter() - started:.0f} s)")
    print(f"\ntarget: fifo+random's final hypervolume with <= 50 % of its steps (eta={eta:g}, {n_rungs} rungs)")
    print("\n".join(verdicts))


def _se(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / math.sqrt(len(x)))


def single_fidelity(args: argparse.Namespace) -> None:
    from sweep.config import SweepConfig
    from sweep.presets import SWEEP_PRESETS
    from sweep.search import sampled_budget
    from sweep.space import sampler_plan

    default_sampler = next(f.default for f in dataclasses.fields(SweepConfig) if f.name == "sampler")

    print(f"hypervolume after each preset's budget, mean ± std over {args.seeds} seeds (reference {REFERENCE})")
    header = (
        f"{'preset':7s} {'tuner':9s} {'trials':>6s} {'conc':>4s} {'sampler':8s} {'sampler HV':>15s} "
        f"{'random HV':>15s} {'paired diff':>16s} {'wins':>6s} {'noise-free diff':>16s}"
    )
    print(header)
    print("-" * len(header))
    verdicts = []
    for preset_name in args.presets.split(","):
        preset = SWEEP_PRESETS[preset_name]
        if args.fluent_top_k and "rlprompt" in preset["tuners"]:
            low, high = (int(v) for v in args.fluent_top_k.split(","))
            preset = {**preset, "search": {**preset["search"]}}
            preset["search"]["rlprompt"] = {**preset["search"]["rlprompt"], "fluent_top_k": [low, high]}
        configured = preset.get("sampler", default_sampler)
        samplers = [s for s in args.samplers.split(",") if s] or [configured]
        runs = {s: [run_arm(preset, s, seed) for seed in range(args.seeds)] for s in {*samplers, "random"}}
        for arm in runs.values():
            for r in arm:
                # Every Tune trial, the zero trial included, is one COMPLETE study trial: nothing counts twice.
                assert r.study_complete == r.tune_trials, (r.study_complete, r.tune_trials)
        for sampler in samplers:
            ahead = []
            for tuner in preset["tuners"]:
                hv = np.array([r.hv[tuner] for r in runs[sampler]])
                base = np.array([r.hv[tuner] for r in runs["random"]])
                diff = hv - base
                true_diff = np.array([r.hv_true[tuner] for r in runs[sampler]]) - np.array(
                    [r.hv_true[tuner] for r in runs["random"]]
                )
                se = diff.std(ddof=1) / math.sqrt(len(diff))
                ahead.append(diff.mean() > 2 * se)
                print(
                    f"{preset_name:7s} {tuner:9s} {preset['num_samples']:6d} {preset['max_concurrent']:4d} "
                    f"{sampler:8s} {hv.mean():7.3f} ± {hv.std(ddof=1):5.3f} "
                    f"{base.mean():7.3f} ± {base.std(ddof=1):5.3f} "
                    f"{diff.mean():+7.3f} ± {se:5.3f}se {int((diff > 0).sum()):3d}/{len(diff):<2d} "
                    f"{true_diff.mean():+7.3f} ± {true_diff.std(ddof=1) / math.sqrt(len(diff)):5.3f}se"
                )
            plan = sampler_plan(sampler, sampled_budget(int(preset["num_samples"])))
            verdict = (
                "ahead of random (> 2 se) on every tuner"
                if all(ahead)
                else (f"ahead of random (> 2 se) on {sum(ahead)} of {len(ahead)} tuners")
            )
            verdicts.append(f"{preset_name}/{sampler}: {verdict}; plan {plan}")
    print()
    print("\n".join(verdicts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument(
        "--section", default="single", choices=["single", "multi", "both"], help="single- or multi-fidelity, or both"
    )
    parser.add_argument("--presets", default="smoke,demo,paper")
    parser.add_argument("--samplers", default="", help="samplers to compare with random (default: the configured)")
    parser.add_argument(
        "--fluent-top-k",
        default="",
        metavar="LOW,HIGH",
        help="also search the integer knob fluent_top_k in [LOW, HIGH] for rlprompt (exercises integer knobs)",
    )
    parser.add_argument(
        "--levels",
        default="demo,paper",
        metavar="PRESET[:N],...",
        help="multi-fidelity: compute levels: presets (N full-length trials per tuner, default num_samples)",
    )
    parser.add_argument("--eta", type=float, default=3.0, help="multi-fidelity: MO-ASHA's reduction factor")
    parser.add_argument("--rungs", type=int, default=3, help="multi-fidelity: rungs below the full budget")
    parser.add_argument(
        "--asha-spend", type=float, default=1.0, help="multi-fidelity: scales the configurations MO-ASHA draws"
    )
    args = parser.parse_args()
    assert args.seeds >= 2, f"--seeds={args.seeds}: need at least 2 for a standard deviation"

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("sweep.search").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    started = time.perf_counter()
    if args.section in ("single", "both"):
        single_fidelity(args)
    if args.section in ("multi", "both"):
        multi_fidelity(args)
    print(f"\n{time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()

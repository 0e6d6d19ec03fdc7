"""Search efficiency: the configured sampler against random sampling, at each preset's budget.

    python benchmarks/search_efficiency.py [--seeds 50] [--presets smoke,demo,paper] [--samplers tpe,nsga2]
                                           [--fluent-top-k 1,50]

The real search path (``make_searcher`` + ``MultiTunerSearch``, Optuna studies in memory) is driven the way
Tune drives it, without a Ray cluster or an LM: up to ``max_concurrent`` trials are in flight (all tuners
together, the preset's value) and a random one of them finishes next. A trial is a cheap synthetic problem
with the real one's shape: ``task/acc_dev`` (max) and ``interp/scrutability`` (max, ``-log_ppl``) as
functions of the knobs, with a real trade-off and noise (sd 0.03 and 0.2). λ_ppl raises scrutability from
about 40 % of its log range on, and accuracy collapses to chance past about 62 %: the good trade-offs lie in
a band the search has to find. λ_dist costs a little accuracy for a little scrutability; ``fluent_top_k``
(``--fluent-top-k``, searched for rlprompt) buys scrutability with accuracy at small k.

Both arms run the same tuners, budgets, fixed zero trial and concurrency; only ``sampler`` differs. The
hypervolume of each tuner's observed trials (its zero trial included) is taken against one fixed reference,
(0.45, -10.0): below chance accuracy and below the unregularised tuner's scrutability. ``noise-free diff``
is the same comparison on the configurations' noise-free values (what the search found, without measurement
luck). Presets, budgets and concurrency are read from ``sweep/presets.py`` and the configured sampler from the
preset (else the ``SweepConfig`` default), so this stays in sync with what the sweep runs. ``paired diff`` is
the mean over seeds of (sampler - random), each seed's two arms sharing a noise stream, with its standard
error; ``wins`` counts the seeds where the sampler is ahead. It also checks that every Tune trial is exactly
one COMPLETE study trial (the zero trial included).
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

    from sweep.pareto import hypervolume_2d
    from sweep.search import MultiTunerSearch, integer_knobs_of, knobs_from_params, make_searcher, sampled_budget
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--presets", default="smoke,demo,paper")
    parser.add_argument("--samplers", default="", help="samplers to compare with random (default: the configured)")
    parser.add_argument(
        "--fluent-top-k",
        default="",
        metavar="LOW,HIGH",
        help="also search the integer knob fluent_top_k in [LOW, HIGH] for rlprompt (exercises integer knobs)",
    )
    args = parser.parse_args()
    assert args.seeds >= 2, f"--seeds={args.seeds}: need at least 2 for a standard deviation"

    import optuna

    from sweep.config import SweepConfig
    from sweep.presets import PRESETS
    from sweep.search import sampled_budget, sampler_plan

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("sweep.search").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    default_sampler = next(f.default for f in dataclasses.fields(SweepConfig) if f.name == "sampler")

    started = time.perf_counter()
    print(f"hypervolume after each preset's budget, mean ± std over {args.seeds} seeds (reference {REFERENCE})")
    header = (
        f"{'preset':7s} {'tuner':9s} {'trials':>6s} {'conc':>4s} {'sampler':8s} {'sampler HV':>15s} "
        f"{'random HV':>15s} {'paired diff':>16s} {'wins':>6s} {'noise-free diff':>16s}"
    )
    print(header)
    print("-" * len(header))
    verdicts = []
    for preset_name in args.presets.split(","):
        preset = PRESETS[preset_name]
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
    print(f"\n{time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()

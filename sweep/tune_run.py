"""The Tune run of a sweep: every trial still to run, all tuners and baselines together, in one Tune run.

What is done and what to continue comes from MLflow and the Optuna studies (``sweep/ledger.py``), never from
Tune's experiment state: each run of the driver is a fresh Tune run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sweep import failpoints
from sweep.config import SweepConfig
from sweep.driver import SCHEDULER_STATE, Outcome, Plan

logger = logging.getLogger("sweep.run")


def run_trials(config: SweepConfig, out: Path, plan: Plan, outcome: Outcome, *, verbose: bool = True) -> None:
    """One Tune run for every trial still to run, all tuners and baselines together: the configurations a lost
    driver had started first, then the fixed trials left, then each tuner's Optuna search."""
    scheduler = make_scheduler(config, out)
    rungs = {tuner: tuple(scheduler.rungs(tuner)) for tuner in config.rung_plan()} if scheduler is not None else {}
    search = make_search(config, out, plan)
    if search.total_trials + search.done_before != config.total_trials():
        raise AssertionError(f"{search.total_trials} + {search.done_before} trials != {config.total_trials()} planned")
    if search.total_trials == 0:
        logger.info("every trial of this sweep has its outcome already; nothing to run")
        return
    tuner = _tuner(config, out, plan, search, scheduler, rungs, verbose=verbose)
    try:
        grid = tuner.fit()
    finally:
        outcome.dropped = sum(search.dropped.values())
    outcome.errors.extend(f"{type(r.error).__name__}: {r.error}" for r in grid if r.error is not None)
    if outcome.errors:
        logger.warning("%d trials gave up after their retries; first error: %s", len(outcome.errors), outcome.errors[0])


def knobs_of(config: SweepConfig) -> tuple[dict[str, tuple[str, ...]], dict[str, frozenset[str]]]:
    """Per tuner of the sweep: the knobs it searches, and which of them are integers."""
    from sweep.space import integer_knobs_of
    from tuners import get_tuner

    knobs = {tuner: tuple(config.search.get(tuner, {})) for tuner in config.runs()}
    integers = {tuner: integer_knobs_of(get_tuner(tuner).config_cls, knobs[tuner]) for tuner in config.runs()}
    return knobs, integers


def make_search(config: SweepConfig, out: Path, plan: Plan) -> Any:
    """The sweep's ``MultiTunerSearch``: one Optuna study per searched tuner (in ``out/optuna.db``); a resumed
    sweep's built from what MLflow and the studies hold (``sweep/ledger.py``)."""
    from sweep import ledger
    from sweep.search import MultiTunerSearch, make_searcher, sampled_budget

    fixed = config.fixed_trials()
    knobs, integers = knobs_of(config)
    searchers = {
        tuner: make_searcher(
            ranges=config.search[tuner],
            objectives=config.objectives,
            sampler=config.sampler,
            seed=config.seed + plan.attempt - 1,  # a resumed sampler draws on from the study, not a replay
            budget=sampled_budget(config.num_samples, fixed[tuner]),
            storage_path=out / "optuna.db",
            study_name=f"{config.name}-{tuner}-{plan.parent[:8]}",
            integer_knobs=integers[tuner],
        )
        for tuner in config.tuners
        if config.search.get(tuner)
    }
    resumed = None
    if plan.resumed:
        resumed = ledger.resume(
            tracking_uri=plan.tracking_uri,
            tuners=config.runs(),
            knobs=knobs,
            searchers=searchers,
            objectives=config.objectives,
            runs=ledger.read_runs(plan.tracking_uri, plan.parent),
        )
        failpoints.hit("resumed")
    return MultiTunerSearch(
        searchers, fixed=fixed, knobs=knobs, num_samples=config.num_samples, seed=config.seed, resumed=resumed
    )


def _tuner(
    config: SweepConfig,
    out: Path,
    plan: Plan,
    search: Any,
    scheduler: Any,
    rungs: dict[str, tuple[int, ...]],
    *,
    verbose: bool,
) -> Any:
    from ray import tune

    from sweep.progress import SweepProgress
    from sweep.trainable import RungStops, TrialContext, run_trial

    knobs, integers = knobs_of(config)
    contexts = {
        tuner: TrialContext(
            tuner=tuner,
            values=config.trial_values(tuner),
            weights=knobs[tuner],
            integer_knobs=integers[tuner],
            tracking_uri=plan.tracking_uri,
            experiment_id=plan.experiment_id,
            parent_run_id=plan.parent,
            objectives=config.objectives,
            replicates=config.replicates,
            checkpoint_every=config.checkpoint_every,
            tags=plan.tags,
            rungs=rungs.get(tuner, ()),
            gpus_per_trial=config.gpus_per_trial,
        )
        for tuner in config.runs()
    }
    resources = {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(run_trial, contexts=contexts), resources)
    progress = SweepProgress(config.total_trials(), already_done=search.done_before)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=search,
            num_samples=search.total_trials,
            max_concurrent_trials=config.max_concurrent,
            scheduler=scheduler,
            # Trials share an actor process one after another, so the model and data loaded by the first
            # (cached per process) serve the rest.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=config.name,
            storage_path=str(out / "ray"),
            verbose=1 if verbose else 0,
            callbacks=[RungStops(plan.tracking_uri), *([] if verbose else [progress])],
            # A trial whose worker died (or whose machine failed it) is retried, from its own checkpoint; one
            # that failed by itself reports its failure instead of raising (sweep/trainable.py).
            failure_config=tune.FailureConfig(max_failures=config.max_retries, fail_fast=False),
        ),
    )


def make_scheduler(config: SweepConfig, out: Path) -> Any:
    """The ``mo_asha`` scheduler of a sweep (None under ``fifo``), on the sweep's objectives and directions,
    its decisions kept in ``out/scheduler.json`` (written whole with every decision, read back by a resumed
    sweep, so that no trial is judged twice at a rung)."""
    plan = config.rung_plan()
    if not plan:
        return None
    from sweep.scheduler import MOASHA
    from sweep.space import directions

    return MOASHA(
        objectives=config.objectives,
        modes=directions(config.objectives),
        max_steps={tuner: steps for tuner, (_, steps) in plan.items()},
        grace_steps={tuner: grace for tuner, (grace, _) in plan.items()},
        reduction_factor=config.reduction_factor,
        state_path=out / SCHEDULER_STATE,
    )

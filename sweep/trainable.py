"""The Ray Tune trainable: one trial = one configuration (a fixed one, or the knobs Optuna chose), measured
on the sweep's replicates.

The tuner knows nothing of Ray or MLflow; its ``report`` callback is adapted here to the trial's MLflow
child run (per-step metrics under ``rep<i>/``) and its ``Checkpointing`` to Tune checkpoints. Tune is told
once, at the end, with the replicate means (and their spreads): Optuna only learns a trial's last result,
so that result must carry the final objectives.

What befalls a trial:

- its worker dies (preemption, OOM kill): Tune retries it (``FailureConfig``) from its last checkpoint, on
  any node; the new attempt reopens the same MLflow run;
- the sweep's driver dies and the sweep is resumed: a trial that had finished (its MLflow run FINISHED) is
  not run again, Tune is told what it measured; an unfinished one continues from its last checkpoint;
- it fails by itself (a bad value, a loss that became NaN): the run is FAILED with the reason, the search is
  told the trial failed (no finite objectives), and Tune does not retry what would fail the same way.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from objectives.errors import DivergedError, UserError
from sweep import mlflow_log
from sweep.mlflow_log import TrialRun
from sweep.search import knobs_from_params
from tuners import get_tuner, make_config
from tuners.base import Checkpointing
from tuners.replicates import run_replicates

logger = logging.getLogger(__name__)

STATE_FILE = "trial_state.pt"


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one tuner shares; passed with ``tune.with_parameters`` (pickled once per run)."""

    tuner: str
    values: dict[str, Any]
    weights: tuple[str, ...]
    integer_knobs: frozenset[str]
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    objectives: tuple[str, ...] = ()
    replicates: int = 1
    checkpoint_every: int = 50
    tags: Mapping[str, str] = field(default_factory=dict)  # the sweep's source tags (user, git commit)


def run_trial(config: dict[str, Any], contexts: dict[str, TrialContext]) -> None:
    """``config`` is ``{"tuner": name, "params": {...Optuna's sample...}, "fixed": {...config values...}}``
    (see ``MultiTunerSearch``): a fixed trial has no params, a sampled one no fixed values."""
    import ray
    from ray import tune

    context = contexts[config["tuner"]]
    tuner = get_tuner(context.tuner)
    weights = knobs_from_params(config.get("params", {}), context.weights, context.integer_knobs)
    trial_id = tune.get_context().get_trial_id() or "local"
    existing = mlflow_log.find_trial_run(context.tracking_uri, context.experiment_id, context.parent_run_id, trial_id)
    if existing is not None and existing.info.status == "FINISHED":
        told = mlflow_log.tune_result(context.tracking_uri, existing.info.run_id)
        if told is not None:
            logger.info("trial %s finished before the sweep was interrupted; not run again", trial_id)
            tune.report(told)
            return
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    tags = {
        **context.tags,
        "ray.node_id": ray.get_runtime_context().get_node_id(),
        "ray.node_ip": ray.util.get_node_ip_address(),
        "host": socket.gethostname(),
        "gpu_ids": ",".join(gpu_ids),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }
    run: TrialRun | None = None
    try:
        tuner_config = make_config(tuner.config_cls, {**context.values, **config.get("fixed", {}), **weights})
        run = TrialRun(
            tracking_uri=context.tracking_uri,
            experiment_id=context.experiment_id,
            parent_run_id=context.parent_run_id,
            tuner=context.tuner,
            trial_id=trial_id,
            params={k: list(v) if isinstance(v, tuple) else v for k, v in vars(tuner_config).items()},
            searched=context.weights,
            tags=tags,
            existing=existing,
        )
        state = _restore()
        if state is not None:
            logger.info("trial %s resumes from its checkpoint (attempt %d)", trial_id, run.attempts)
        checkpoint = Checkpointing(every=context.checkpoint_every, save=_save, state=state)

        def report(replicate: int, step: int, metrics: Mapping[str, float]) -> None:
            run.log_metrics({f"rep{replicate}/{k}": v for k, v in metrics.items()}, step)

        result = run_replicates(tuner, tuner_config, context.replicates, report=report, checkpoint=checkpoint)
    except (UserError, DivergedError) as err:
        # Fails by itself: recorded, told to the search as a failure, not retried.
        logger.error("trial %s failed: %s", trial_id, err)
        if run is not None:
            run.fail(err)
        tune.report(_failed(context, err, run))
        return
    except (KeyboardInterrupt, SystemExit) as err:
        # Tune stopping the trial (the sweep was interrupted): resumable, not a failure of the trial.
        if run is not None:
            run.fail(err, status="KILLED")
        raise
    except BaseException as err:
        if run is not None:
            run.fail(err)
        raise
    prompt = result.prompt
    told = {
        **result.metrics,
        **{f"param/{w}": v for w, v in weights.items()},
        "prompt_text": prompt.prompt_text,
        "mlflow_run_id": run.run_id,
        "wall_s": result.wall_s,
    }
    run.log_metrics(result.metrics, max(r.steps for r in result.results))
    run.finish(
        prompt_text=prompt.prompt_text,
        prompt_ids=prompt.prompt_ids,
        result=result.to_json(),
        tune_result=told,
        replicate_prompts=result.prompt_texts,
    )
    tune.report(told)


def _failed(context: TrialContext, err: BaseException, run: TrialRun | None) -> dict[str, Any]:
    """The last result of a trial that failed by itself: NaN objectives (the search records a failure)."""
    return {
        **dict.fromkeys(context.objectives, math.nan),
        "error": f"{type(err).__name__}: {err}"[:2000],
        "mlflow_run_id": run.run_id if run is not None else "",
    }


def _save(state: dict[str, Any]) -> None:
    """Hand the trial's state to Tune as a checkpoint (copied to the run's storage path before returning)."""
    import torch
    from ray import tune

    with tempfile.TemporaryDirectory(prefix="promptsweep-ckpt-") as folder:
        torch.save(state, Path(folder) / STATE_FILE)
        tune.report({"checkpoint": 1.0}, checkpoint=tune.Checkpoint.from_directory(folder))


def _restore() -> dict[str, Any] | None:
    """The state of the trial's last checkpoint, when an earlier attempt saved one."""
    import torch
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)

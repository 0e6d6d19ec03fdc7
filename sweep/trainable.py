"""The Ray Tune trainable: one trial = one configuration (a fixed one, or the knobs Optuna chose), measured
on the sweep's replicates.

The tuner knows nothing of Ray or MLflow; its ``report`` callback is adapted here to the trial's MLflow
child run (per-step metrics under ``rep<i>/``) and its ``Checkpointing`` to checkpoints kept in that run
(``TrialRun.save_checkpoint``), not Tune's: Tune's experiment state is saved every few seconds and not
atomically, and a checkpoint it still names may already be deleted when the driver dies. A configuration
is named by its trial key (``sweep.space.trial_key``), the same in every attempt and resumed sweep. Tune is
told once, at the end, with the replicate means (and their spreads): Optuna only learns a trial's last
result, so that result must carry the final objectives.

What befalls a trial:

- its worker dies (preemption, OOM kill) or the machine fails it (a full disk, a tracking server away): the
  attempt is KILLED, Tune retries it (``FailureConfig``) on any node, and the new attempt reopens the same
  MLflow run and continues from its newest checkpoint;
- the sweep's driver dies and the sweep is resumed: a configuration that had finished (its MLflow run
  FINISHED) is not run again; an unfinished one continues from its newest checkpoint;
- it fails by itself (a bad value, a loss that became NaN, an overflow): the run is FAILED with the reason,
  the search is told the trial failed (no finite objectives), and nothing retries what would fail the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback

from objectives.errors import DivergedError, UserError
from sweep import failpoints, mlflow_log
from sweep.devices import resolve_device
from sweep.mlflow_log import TrialRun
from sweep.results.columns import PARAM_PREFIX, REPLICATE_PROMPTS
from sweep.search import AT_RUNG
from sweep.space import knobs_from_params, trial_key
from tuners import get_tuner, make_config
from tuners.base import Checkpointing
from tuners.replicates import ReplicatedResult, replicate_configs, run_replicates

logger = logging.getLogger(__name__)


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
    rungs: tuple[int, ...] = ()  # steps where the replicates meet and report to the scheduler (mo_asha)
    gpus_per_trial: float = 0.0


def run_trial(config: dict[str, Any], contexts: dict[str, TrialContext]) -> None:
    """``config`` is ``{"tuner": name, "params": {...Optuna's sample...}, "fixed": {...config values...}}``
    (see ``MultiTunerSearch``): a fixed trial has no params, a sampled one no fixed values."""
    from ray import tune

    context = contexts[config["tuner"]]
    weights = knobs_from_params(config.get("params", {}), context.weights, context.integer_knobs)
    key = trial_key(context.tuner, config.get("fixed", {}), weights)
    trial_id = tune.get_context().get_trial_id() or "local"
    existing = mlflow_log.find_trial_run(context.tracking_uri, context.experiment_id, context.parent_run_id, key)
    if existing is not None and existing.info.status == "FINISHED":
        logger.info("trial %s (%s) finished before the sweep was interrupted; not run again", trial_id, key)
        tune.report({**mlflow_log.tune_result(context.tracking_uri, existing), "trial_key": key})
        return
    run: TrialRun | None = None
    rung = _RungReport(context, weights, key)
    try:
        run, tuner_config = _open_run(context, config, key, trial_id, weights, existing)
        state = _restore(run)
        if state is not None:
            logger.info("trial %s resumes from its checkpoint (attempt %d)", trial_id, run.attempts)
        rung.run = run
        result = run_replicates(
            get_tuner(context.tuner),
            tuner_config,
            context.replicates,
            report=functools.partial(_log_step, run),
            checkpoint=Checkpointing(every=context.checkpoint_every, save=functools.partial(_save, run), state=state),
            rungs=context.rungs,
            at_rung=rung if context.rungs else None,
        )
    except (KeyboardInterrupt, SystemExit) as err:
        if rung.stopped is not None:
            logger.info("trial %s stopped at its rung at step %d", trial_id, rung.stopped)
        elif run is not None:
            # Tune stopping the trial (the sweep was interrupted): resumable, not a failure of the trial.
            run.fail(err, status="KILLED")
        raise
    except Exception as err:
        if is_infrastructure_fault(err):
            # Not the trial's fault (a full disk, a tracking server away): the attempt is interrupted, Tune
            # retries it (from its checkpoint) and a resumed sweep continues it.
            if run is not None:
                _quietly(run.fail, err, status="KILLED")
            raise
        # Fails by itself (a bad value, a loss that became NaN, an overflow, an index out of range): recorded,
        # told to the search as a failure, not retried (it would fail the same way).
        logger.error("trial %s failed: %s: %s", trial_id, type(err).__name__, err)
        if run is not None:
            run.fail(err)
        tune.report(_failed(context, err, run, key))
        return
    tune.report(_record_result(run, result, weights, key))


def _open_run(
    context: TrialContext,
    config: dict[str, Any],
    key: str,
    trial_id: str,
    weights: Mapping[str, float],
    existing: Any,
) -> tuple[TrialRun, Any]:
    """The trial's tuner config (its device resolved from the GPUs Ray gave it) and its MLflow run (the one an
    earlier attempt created, reopened, or a new one)."""
    import ray

    tuner = get_tuner(context.tuner)
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    if not gpu_ids:
        # Given no GPU, the trial sees none (Ray 2.60 hides none from it), before anything touches CUDA.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    values = {**context.values, **config.get("fixed", {}), **weights}
    if "device" in {f.name for f in dataclasses.fields(tuner.config_cls)} and getattr(tuner, "uses_device", True):
        # "auto" means CUDA only where Ray gave this trial a GPU.
        values["device"] = resolve_device(str(values.get("device", "auto")), gpu_ids, bool(gpu_ids) and _cuda())
        if values["device"].startswith("cuda") and context.gpus_per_trial > 0:
            values["gpu_share"] = min(context.gpus_per_trial, 1.0)  # sizes the input caches to its share
    tuner_config = make_config(tuner.config_cls, values)
    # A reused worker keeps the models and caches of its earlier trials: those this one does not need go. A
    # worker that never loaded a model has none (and a synthetic trial's worker must not import torch for it).
    if "objectives.models" in sys.modules:
        from objectives.memory import release_caches

        release_caches(keep=replicate_configs(tuner_config, context.replicates))
    tags = {
        **context.tags,
        "ray.node_id": ray.get_runtime_context().get_node_id(),
        "ray.node_ip": ray.util.get_node_ip_address(),
        "host": socket.gethostname(),
        "gpu_ids": ",".join(gpu_ids),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }
    run = TrialRun(
        tracking_uri=context.tracking_uri,
        experiment_id=context.experiment_id,
        parent_run_id=context.parent_run_id,
        tuner=context.tuner,
        trial_id=trial_id,
        key=key,
        suggestion=config,
        params={k: list(v) if isinstance(v, tuple) else v for k, v in vars(tuner_config).items()},
        searched=context.weights,
        tags=tags,
        existing=existing,
    )
    return run, tuner_config


def _log_step(run: TrialRun, replicate: int, step: int, metrics: Mapping[str, float]) -> None:
    run.log_metrics({f"rep{replicate}/{k}": v for k, v in metrics.items()}, step)


class _RungReport:
    """``at_rung`` of ``run_replicates``: tells the scheduler the replicates' means at a rung."""

    def __init__(self, context: TrialContext, weights: Mapping[str, float], key: str) -> None:
        self.context, self.weights, self.key = context, weights, key
        self.run: TrialRun | None = None
        self.stopped: int | None = None  # the rung step where the scheduler stopped this trial

    def __call__(self, step: int, partial: ReplicatedResult) -> bool:
        from ray import tune

        assert self.run is not None
        objectives = [m for m in self.context.objectives if m in partial.metrics]
        self.run.log_metrics({mlflow_log.RUNG_PREFIX + m: partial.metrics[m] for m in objectives}, step)
        try:
            tune.report({**_rung_result(partial, self.weights, self.run, self.key), "steps": step})
        except SystemExit:
            # Tune stops a function trial by raising SystemExit in its pending report: the scheduler's STOP.
            # The driver records the stop in this run (RungStops): this worker may be torn down now. SystemExit
            # must end the function (one that returns is waited on for a last report; its actor is not reused).
            self.stopped = step
            raise
        return True


def _record_result(run: TrialRun, result: ReplicatedResult, weights: Mapping[str, float], key: str) -> dict[str, Any]:
    """Close the trial's run with its result; returns what Tune is told (the search learns it)."""
    prompt = result.prompt
    told = {
        **result.metrics,
        **{f"{PARAM_PREFIX}{w}": v for w, v in weights.items()},
        "prompt_text": prompt.prompt_text,
        "mlflow_run_id": run.run_id,
        "wall_s": result.wall_s,
    }
    steps = max(r.steps for r in result.results)
    run.log_metrics(result.metrics, steps)
    run.finish(
        prompt_text=prompt.prompt_text,
        prompt_ids=prompt.prompt_ids,
        result=result.to_json(),
        tune_result=told,
        replicate_prompts=result.prompt_texts,
        steps_done=steps,
    )
    failpoints.hit("trial_finished")
    run.drop_checkpoints()
    return {**told, "trial_key": key, "steps": steps}


def _rung_result(partial: ReplicatedResult, weights: Mapping[str, float], run: TrialRun, key: str) -> dict[str, Any]:
    """What a trial tells Tune at a rung: everything its final result would hold at this step (the driver
    records it as the trial's result if the scheduler stops it here), flagged ``AT_RUNG``."""
    prompt = partial.prompt
    return {
        **partial.metrics,
        **{f"{PARAM_PREFIX}{w}": v for w, v in weights.items()},
        "prompt_text": prompt.prompt_text,
        "prompt_ids": json.dumps(prompt.prompt_ids),
        REPLICATE_PROMPTS: json.dumps(partial.prompt_texts),
        "mlflow_run_id": run.run_id,
        "wall_s": partial.wall_s,
        "trial_key": key,
        AT_RUNG: True,
    }


class RungStops(Callback):
    """Driver side of the rung protocol: when the scheduler has stopped a trial at a rung (its last result is a
    rung result), record the stop in the trial's MLflow run (``mlflow_log.record_stop``). A record lost with
    the driver is made again: the resumed trial re-reports its rung and is stopped again by the same decision."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        if not result.get(AT_RUNG):
            return
        try:
            mlflow_log.record_stop(self.tracking_uri, result)
        except Exception as err:  # the run stays open: closed as interrupted, and the resumed trial stops again
            logger.warning("could not record that trial %s stopped at step %s: %s", trial, result.get("steps"), err)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def is_infrastructure_fault(err: BaseException) -> bool:
    """Whether ``err`` comes from the machine or the services around the trial rather than from the trial.

    OS errors (a full disk, a lost connection), MLflow's and Ray's own errors, and torch's failed file writes
    (torch raises them as RuntimeError) are; anything else raised by the tuner (ValueError, IndexError, an
    overflow's RuntimeError, ``UserError``, ``DivergedError``) is the trial's own.
    """
    from mlflow.exceptions import MlflowException
    from ray.exceptions import RayError

    if isinstance(err, (UserError, DivergedError)):
        return False
    if isinstance(err, (OSError, MlflowException, RayError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("write failed" in text or "No space left" in text)


def _quietly(call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Record what can be recorded while the infrastructure is failing; the original error is what counts."""
    try:
        call(*args, **kwargs)
    except Exception as err:
        logger.warning("could not record the interrupted attempt: %s", err)


def _failed(context: TrialContext, err: BaseException, run: TrialRun | None, key: str) -> dict[str, Any]:
    """The last result of a trial that failed by itself: NaN objectives (the search records a failure)."""
    return {
        **dict.fromkeys(context.objectives, math.nan),
        "error": f"{type(err).__name__}: {err}"[:2000],
        "mlflow_run_id": run.run_id if run is not None else "",
        "trial_key": key,
    }


def _save(run: TrialRun, state: dict[str, Any]) -> None:
    """Write the trial's state as a checkpoint in its MLflow run (``TrialRun.save_checkpoint``)."""
    import torch

    with tempfile.TemporaryDirectory(prefix="promptsweep-ckpt-") as folder:
        path = Path(folder) / mlflow_log.STATE_FILE
        torch.save(state, path)
        run.save_checkpoint(path)
    failpoints.hit("checkpoint_saved")


def _restore(run: TrialRun) -> dict[str, Any] | None:
    """The state of the trial's newest checkpoint, when an earlier attempt saved one (loaded on the CPU: the
    tuner moves it to its model's device)."""
    import torch

    with tempfile.TemporaryDirectory(prefix="promptsweep-ckpt-") as folder:
        path = run.load_checkpoint(Path(folder))
        if path is None:
            return None
        return torch.load(path, map_location="cpu", weights_only=True)
